"""One W&B run per job: config in full, metrics as history and summary, tables, images, artifacts."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple

import wandb

from .config import LoggerConfig
from .tables import Row, columns


def open_run(logger: LoggerConfig, out_dir: Path, name: str, group: str, job_type: str,
             config: Dict[str, Any]) -> Any:
    """Start a run whose files lie in ``out_dir/wandb`` (``mode=disabled`` gives a no-op run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(mode=logger.mode.value, project=logger.project, entity=logger.entity,
                      group=logger.group or group, tags=list(logger.tags), name=name, job_type=job_type,
                      dir=str(out_dir), config=config, reinit="finish_previous",
                      settings=wandb.Settings(quiet=True))


def log_results(run: Any, metrics: Mapping[str, float], tables: Mapping[str, Sequence[Row]],
                images: Mapping[str, Path], artifacts: Sequence[Tuple[str, str, Path]] = ()) -> None:
    """Log ``metrics``, each table as ``wandb.Table`` and each PNG as ``wandb.Image`` as one
    history step (metrics also kept in the summary), and each ``(name, type, path)`` file as an
    artifact."""
    step: Dict[str, Any] = dict(metrics)
    for key, rows in tables.items():
        cols = columns(rows)
        step[key] = wandb.Table(columns=cols, data=[[row.get(c) for c in cols] for row in rows])
    step.update({key: wandb.Image(str(path)) for key, path in images.items()})
    run.log(step)
    run.summary.update(dict(metrics))
    for name, kind, path in artifacts:
        artifact = wandb.Artifact(name, type=kind)
        artifact.add_file(str(path))
        run.log_artifact(artifact)
