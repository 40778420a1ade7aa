"""The operators' counts, as the energy report reads them (they live with the operators, one layer down)."""
from ..ops.stats import OpStats, collect_stats

__all__ = ["OpStats", "collect_stats"]
