"""The console scripts ``sjmbe-fit``, ``sjmbe-convert`` and ``sjmbe-report`` (``setup.cfg``): each runs
its Hydra entry point, or, when the ``experiments`` extra is not installed, exits with a message
naming what is missing and the command that installs it (instead of Hydra's bare ``ImportError``)."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Dict, List

# the modules of the ``experiments`` extra the entry points import, each with the distribution it comes from
EXTRA_MODULES: Dict[str, str] = {"hydra": "hydra-core", "omegaconf": "hydra-core", "wandb": "wandb",
                                 "matplotlib": "matplotlib"}
INSTALL = 'pip install -e ".[experiments]"'


def missing_distributions() -> List[str]:
    """The distributions of the ``experiments`` extra whose modules cannot be imported."""
    return sorted({dist for module, dist in EXTRA_MODULES.items() if importlib.util.find_spec(module) is None})


def entry_point(job: str) -> Callable[[], object]:
    """The console script ``sjmbe-<job>``: ``experiments.<job>.main`` once the extra is there."""
    def run() -> object:
        missing = missing_distributions()
        if missing:
            raise SystemExit(f"sjmbe-{job} needs the 'experiments' extra (Hydra, W&B, matplotlib), which is not "
                             f"installed (missing: {', '.join(missing)}). Install it from the repository root with "
                             f"{INSTALL} (or pip install \"spikingjelly_mbe[experiments]\").")
        return importlib.import_module(f"experiments.{job}").main()
    run.__name__ = job
    return run


fit, convert, report = entry_point("fit"), entry_point("convert"), entry_point("report")
