"""Energy accounting: spike, SOP and FLOP counts of the spiking operators."""
from .stats import OpStats, collect_stats

__all__ = ["OpStats", "collect_stats"]
