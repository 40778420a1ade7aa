"""What a conversion did, from what ran: every nonlinear operation per module path, what replaced it,
and what stayed float and why."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Tuple


class UnsupportedNonlinearityError(TypeError):
    """Nonlinear operations (or activation x activation products) no building block covers, each
    named by the module path it ran in and the operation."""

    def __init__(self, items: Iterable[Tuple[str, str]]) -> None:
        self.items = list(items)
        lines = "\n".join(f"  {path or '<root>'}: {kind}" for path, kind in self.items)
        super().__init__(f"no spiking operator for {len(self.items)} nonlinear operation(s) of the model:\n{lines}\n"
                         "Register a building block for them (README, 'How conversion decides'), or pass "
                         "allow_float_fallback=True to keep them in float (listed in snn.mbe_report.fallback).")


@dataclass(frozen=True)
class Entry:
    """One module path: the ANN operation or module type, what it is now, and why."""

    path: str
    source: str
    target: str
    note: str = ""


@dataclass
class ConversionReport:
    """``replaced``: every nonlinear module or call that ran during calibration and its spiking
    operator; ``kept``: modules a rule keeps as they are (linear); ``fallback``: what runs in float."""

    replaced: List[Entry] = field(default_factory=list)
    kept: List[Entry] = field(default_factory=list)
    fallback: List[Entry] = field(default_factory=list)

    @property
    def fully_spiking(self) -> bool:
        """No nonlinear operation of the model runs in float: spike-driven end to end."""
        return not self.fallback

    def __str__(self) -> str:
        def block(title: str, entries: List[Entry]) -> List[str]:
            rows = [f"{title} ({len(entries)})"]
            rows += [f"  {e.path or '<root>'}: {e.source} -> {e.target}" + (f"  [{e.note}]" if e.note else "")
                     for e in entries]
            return rows
        return "\n".join(block("replaced by spiking operators", self.replaced)
                         + block("kept (linear)", self.kept)
                         + block("left in float (fallback allowed)", self.fallback)
                         + [f"fully spike-driven: {self.fully_spiking}"])
