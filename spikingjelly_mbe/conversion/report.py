"""What a conversion did: which module paths became which spiking operator, which stayed float and why."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Tuple


class UnsupportedNonlinearityError(TypeError):
    """The model holds modules (or graph nodes) no rule knows; each is named by path and type."""

    def __init__(self, items: Iterable[Tuple[str, str]]) -> None:
        self.items = list(items)
        lines = "\n".join(f"  {path or '<root>'}: {kind}" for path, kind in self.items)
        super().__init__(f"no MBE conversion rule for {len(self.items)} module(s):\n{lines}\n"
                         "Add a rule, or pass allow_float_fallback=True to keep them in float.")


@dataclass(frozen=True)
class Entry:
    """One module path: its ANN type, what it is now, and why."""

    path: str
    source: str
    target: str
    note: str = ""


@dataclass
class ConversionReport:
    """Replaced modules, modules kept because their computation is linear, and float fallbacks."""

    replaced: List[Entry] = field(default_factory=list)
    kept: List[Entry] = field(default_factory=list)
    fallback: List[Entry] = field(default_factory=list)

    def __str__(self) -> str:
        def block(title: str, entries: List[Entry]) -> List[str]:
            rows = [f"{title} ({len(entries)})"]
            rows += [f"  {e.path or '<root>'}: {e.source} -> {e.target}" + (f"  [{e.note}]" if e.note else "")
                     for e in entries]
            return rows
        return "\n".join(block("replaced by spiking operators", self.replaced)
                         + block("kept (linear)", self.kept)
                         + block("left in float (fallback allowed)", self.fallback))
