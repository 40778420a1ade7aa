"""The per-site errors of a conversion (``spiking_report.site_errors``) by operator type and by layer:
where the digits run out at a low T."""
from __future__ import annotations

import re
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from spikingjelly_mbe.conversion.fidelity import SiteError

from .tables import Row

LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_of(path: str) -> Optional[int]:
    """The first integer component of a module path (the block index), ``None`` outside the blocks."""
    found = LAYER.search(path)
    return int(found.group(1)) if found else None


def by_type(sites: Sequence[SiteError]) -> List[Row]:
    """One row per operator type: its sites, the median and the worst own relative RMS error and
    where the worst is; worst type first."""
    groups: Dict[str, List[SiteError]] = {}
    for site in sites:
        groups.setdefault(site.operator, []).append(site)
    rows = [{"operator": kind, "sites": len(group),
             "median_error": statistics.median(s.relative_rms for s in group),
             "worst_error": max(s.relative_rms for s in group),
             "worst_site": max(group, key=lambda s: s.relative_rms).path}
            for kind, group in groups.items()]
    return sorted(rows, key=lambda r: -r["median_error"])


def by_layer(sites: Sequence[SiteError]) -> Tuple[List[str], List[int], List[List[float]]]:
    """The median own error of each operator type (rows, worst median first) in each block (columns,
    by index; ``nan`` where a block has no site of that type)."""
    kinds = [r["operator"] for r in by_type(sites)]
    layers = sorted({layer for s in sites if (layer := layer_of(s.path)) is not None})
    cells: Dict[Tuple[str, int], List[float]] = {}
    for s in sites:
        layer = layer_of(s.path)
        if layer is not None:
            cells.setdefault((s.operator, layer), []).append(s.relative_rms)
    matrix = [[statistics.median(cells[(kind, layer)]) if (kind, layer) in cells else float("nan")
               for layer in layers] for kind in kinds]
    return kinds, layers, matrix
