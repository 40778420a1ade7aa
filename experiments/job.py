"""What every job shares: its Hydra output folder, W&B group, thread count and ``metrics.json``."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .tables import Row, write_text

METRICS_FILE = "metrics.json"
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # absolute: also found from console scripts


@dataclass
class Job:
    """A running job: its typed config, output folder, W&B group and config as a plain dict."""

    cfg: Any
    out_dir: Path
    group: str
    config: Dict[str, Any]


def start(cfg: DictConfig) -> Job:
    """Resolve the Hydra job behind ``cfg`` and limit torch to ``cfg.threads`` threads.

    In a multirun the W&B group is ``<name>-<sweep folder>``, so a sweep's runs stay together."""
    typed = OmegaConf.to_object(cfg)
    torch.set_num_threads(typed.threads)
    hydra = HydraConfig.get()
    sweep = hydra.mode == RunMode.MULTIRUN
    group = f"{typed.name}-{Path(hydra.sweep.dir).name}" if sweep else typed.name
    plain: Dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    plain["overrides"] = list(hydra.overrides.task)
    return Job(typed, Path(hydra.runtime.output_dir), group, plain)


def write_metrics(out_dir: Path, row: Row) -> Path:
    """The job's result row, read back by :mod:`experiments.report`."""
    return write_text(out_dir / METRICS_FILE, json.dumps(row, indent=1) + "\n")
