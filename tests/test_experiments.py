"""Hydra entry points end to end: a 2-job multirun with offline W&B runs, the report, config errors."""
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException
from wandb.proto import wandb_internal_pb2

REPO = Path(__file__).resolve().parents[1]
TINY = ["fit.budget=200", "fit.samples=1000", "fit.restarts=1", "plot.points=200", "plot.raster_inputs=2"]
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def wandb_history(run_file: Path) -> List[Dict]:
    """History rows of an offline ``.wandb`` file: a LevelDB-style log (32 KiB blocks of records
    with a 7-byte header: crc, length, type) after a 7-byte W&B file header, holding protobuf
    ``Record`` messages."""
    data, block, pos = run_file.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, chunk = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: skip to the next block
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            records.append(chunk)
            chunk = b""
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    done = run_cli("experiments.fit", "-m", "neuron.N=1,2", f"hydra.sweep.dir={sweep_dir}", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_multirun_jobs_write_metrics_plots_and_offline_wandb_runs(sweep):
    for job in ("0", "1"):
        out = sweep / job
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["target"] == "gelu" and metrics["N"] == int(job) + 1 and math.isfinite(metrics["mse"])
        assert "| gelu |" in (out / "fit_table.md").read_text()
        for png in ("fit.png", "raster.png"):
            assert (out / png).read_bytes()[:8] == PNG
        assert json.loads((out / f"gelu-mbe-N{metrics['N']}-T16.json").read_text())["N"] == metrics["N"]
        (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
        history = wandb_history(run_file)
        assert any(row.get("mse") == pytest.approx(metrics["mse"]) for row in history)
        assert metrics["group"] == f"fit-{sweep.name}"
    report = sweep / "report"
    assert (report / "mse_vs_N.png").read_bytes()[:8] == PNG
    assert len((report / "report.csv").read_text().strip().splitlines()) == 3
    assert list((report / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_report_entry_point_gathers_a_sweep_folder(sweep):
    (sweep / "report" / "report.md").unlink()
    done = run_cli("experiments.report", f"sweep_dir={sweep}", "logger=disabled")
    assert done.returncode == 0, done.stderr[-3000:]
    text = (sweep / "report" / "report.md").read_text()
    assert "MBE N=1" in text and "MBE N=2" in text and "mse_vs_N.png" in text
    assert "| MBE N=2 |" in done.stdout


@pytest.mark.slow
def test_wrong_key_fails_at_start_up_naming_it():
    done = run_cli("experiments.fit", "neuron.Nn=3")
    assert done.returncode != 0
    assert "Nn" in done.stderr and "outputs" not in done.stdout


@pytest.fixture
def compose_fit(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import experiments.config  # noqa: F401  (registers the schemas)

    def compose_with(*overrides: str, config: str = "fit"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(config_name=config, overrides=list(overrides), return_hydra_config=True)
    return compose_with


@pytest.mark.parametrize("override, named", [
    ("neuron.kind=lif", "lif"),
    ("neuron.N=four", "four"),
    ("neuron.decay=maybe", "maybe"),
    ("target=softplus", "softplus"),
    ("target.name=softplus", "softplus"),
    ("logger=offlien", "offlien"),
    ("logger.mode=sync", "sync"),
    ("fit.budgett=10", "budgett"),
    ("experiment=fig7", "fig7"),
])
def test_wrong_value_fails_composition_naming_it(compose_fit, override, named):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as err:
        compose_fit(override)
    message = f"{err.value} {err.value.__cause__}"
    assert named in message


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_preset_composes(compose_fit, preset):
    cfg = compose_fit(f"experiment={preset}")
    assert cfg.name == preset and cfg.logger.mode.value == "offline"
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params
