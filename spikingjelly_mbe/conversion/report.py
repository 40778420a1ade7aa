"""What a conversion did, from what ran: every nonlinear operation per module path, what replaced it,
and what stayed float and why."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .fidelity import SiteError

SHOWN_SITES = 10  # the worst sites the report's text lists


class UnsupportedNonlinearityError(TypeError):
    """Nonlinear operations (or activation x activation products) no building block covers, each
    named by the module path it ran in and the operation."""

    def __init__(self, items: Iterable[Tuple[str, str]]) -> None:
        self.items = list(items)
        lines = "\n".join(f"  {path or '<root>'}: {kind}" for path, kind in self.items)
        super().__init__(f"no spiking operator for {len(self.items)} nonlinear operation(s) of the model:\n{lines}\n"
                         "Register a building block for them (README, 'How conversion decides'), or pass "
                         "allow_float_fallback=True to keep them in float (listed in snn.spiking_report.fallback).")


def note_of(op: Any, note: str) -> str:
    """The report's note for the operator ``op``: its own ``report_note`` when its method's operator
    describes itself, else the engine's ``note`` (which describes MBE's operator of that site)."""
    return getattr(op, "report_note", None) or note


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
    operator; ``kept``: modules a rule keeps as they are (linear); ``fallback``: what runs in float;
    ``site_errors``: every site's own output error against its float reference on the calibration
    batches (relative RMS, :mod:`~spikingjelly_mbe.conversion.fidelity`), worst first; ``rotation``:
    whether and how the weights were rotated before calibration (:mod:`~.rotation`); ``channel_ranges``:
    how the weight inputs' channel ranges were chosen (:mod:`~.channel_ranges`); ``digits``: per
    operator type (:data:`~spikingjelly_mbe.ops.digits.OPERATOR_TYPES`) how many operators run at each
    ``T``; ``digit_allocation``: the per-site ``T`` mapping ``digit_budget`` or ``energy_budget`` allocated from calibration
    (:mod:`~.allocation`; empty without it); ``ranges_fell_short``: what ``energy_by='ranges'`` reached before the
    digits were allocated instead (empty otherwise)."""

    replaced: List[Entry] = field(default_factory=list)
    kept: List[Entry] = field(default_factory=list)
    fallback: List[Entry] = field(default_factory=list)
    float_operations: List[str] = field(default_factory=list)  # what the method itself keeps float (ECMT)
    site_errors: List[SiteError] = field(default_factory=list)
    rotation: str = "not rotated"
    channel_ranges: str = "calibrated"  # the weight inputs' channel ranges (.channel_ranges: fisher_ranges)
    digits: Dict[str, Dict[int, int]] = field(default_factory=dict)  # operator type -> {T: operators}
    digit_allocation: Dict[str, int] = field(default_factory=dict)  # the T mapping digit_budget / energy_budget chose
    digit_budget: Optional[float] = None
    energy_budget: Optional[float] = None
    energy_reached: bool = True  # whether the channel ranges met energy_budget (.channel_ranges.aim_channel_ranges)
    ranges_fell_short: str = ""  # energy_by='ranges' that could not meet energy_budget, before the digits were allocated

    def mean_digits(self) -> Dict[str, float]:
        """The mean ``T`` of each operator type's operators (where a per-operator ``T`` puts the digits)."""
        return {kind: sum(t * n for t, n in counts.items()) / sum(counts.values())
                for kind, counts in self.digits.items()}

    def allocation_line(self) -> str:
        """How many sites ``digit_budget`` (or ``energy_budget``) moved off the default ``T``, and the mean
        digits per type."""
        moved = len({key.rpartition(":")[0] for key in self.digit_allocation if key != "default"})
        means = ", ".join(f"{kind} {mean:.2f}" for kind, mean in self.mean_digits().items())
        fell_short = (f"; energy_by='ranges' fell short of it first (the ranges {self.ranges_fell_short})"
                      if self.ranges_fell_short else "")
        return (f"digits allocated from calibration ({self.budget_setting()}{fell_short}): {moved} site(s) below "
                f"T={self.digit_allocation.get('default')}; mean digits per type: {means}")

    def budget_setting(self) -> str:
        """``'digit_budget=0.5'`` or ``'energy_budget=0.15'``: what allocated the digits."""
        return (f"digit_budget={self.digit_budget:g}" if self.digit_budget is not None
                else f"energy_budget={self.energy_budget:g}")

    @property
    def fully_spiking(self) -> bool:
        """No nonlinear operation of the model runs in float: spike-driven end to end."""
        return not self.fallback and not self.float_operations

    def __str__(self) -> str:
        def block(title: str, entries: List[Entry]) -> List[str]:
            rows = [f"{title} ({len(entries)})"]
            rows += [f"  {e.path or '<root>'}: {e.source} -> {e.target}" + (f"  [{e.note}]" if e.note else "")
                     for e in entries]
            return rows
        return "\n".join([f"rotation: {self.rotation}", f"weight-input channel ranges: {self.channel_ranges}"]
                         + block("replaced by spiking operators", self.replaced)
                         + block("kept (linear)", self.kept)
                         + block("left in float (fallback allowed)", self.fallback)
                         + [f"float by the method ({len(self.float_operations)})"]
                         + [f"  {op}" for op in self.float_operations]
                         + [f"fully spike-driven: {self.fully_spiking}"]
                         + ["digits per operator type: " + ", ".join(
                             f"{kind} " + " ".join(f"T={t} x{n}" for t, n in sorted(counts.items()))
                             for kind, counts in self.digits.items())]
                         + ([self.allocation_line()] if self.digit_allocation else [])
                         + [f"site errors against the float reference on the calibration batches, worst "
                            f"{min(SHOWN_SITES, len(self.site_errors))} of {len(self.site_errors)}"]
                         + [f"  {row}" for row in self.site_errors[:SHOWN_SITES]]
                         + [f"routing: {row}" for row in self.site_errors if row.selection_agreement is not None])
