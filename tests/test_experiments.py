"""Hydra entry points end to end: a 2-job multirun with offline W&B runs, the report, config errors."""
import importlib
import inspect
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

from spikingjelly_mbe import fit_neuron

REPO = Path(__file__).resolve().parents[1]
TINY = ["fit.budget=200", "fit.samples=1000", "fit.restarts=1", "plot.points=200", "plot.raster_inputs=2"]
PRESETS = {"quick": "fit", "fig6bc": "fit", "fig6a": "fit", "table4": "convert", "real_quick": "convert",
           "real_table": "convert", "ablation_activation_N": "convert", "ablation_percentile": "convert", "ablation_split_bits": "convert",
           "ablation_headroom": "convert", "ablation_exact_activations": "convert", "recipes": "convert",
           "pareto": "convert", "methods": "convert", "ablation_code": "convert", "ablation_budget": "convert",
           "ablation_center": "convert",
           "ablation_rectified": "convert",
           "ablation_norm_exponents": "convert", "ablation_centered_codes": "convert", "ablation_bias_correction": "convert",
           "ablation_fisher_ranges": "convert", "frontier": "convert",
           "digit_budget": "convert", "energy_budget": "convert", "energy_by": "convert"}
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


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


def multirun(module: str, sweep_dir: Path, *args: str) -> Path:
    done = run_cli(module, "-m", f"hydra.sweep.dir={sweep_dir}", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


def logged_metric(out: Path, key: str) -> List[float]:
    """Values of ``key`` in the history of the job's only offline W&B run."""
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    return [row[key] for row in wandb_history(run_file) if key in row]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return multirun("experiments.fit", tmp_path_factory.mktemp("sweep"), "neuron.N=1,2", *TINY)


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
        assert logged_metric(out, "mse") == [pytest.approx(metrics["mse"])]
        assert metrics["group"] == f"fit-{sweep.name}"
    report = sweep / "report"
    assert (report / "mse_vs_N.png").read_bytes()[:8] == PNG
    assert len((report / "report.csv").read_text().strip().splitlines()) == 3
    assert list((report / "wandb").glob("offline-run-*/run-*.wandb"))


def run_app(module: str, *args: str) -> None:
    """Run an entry point's Hydra main in this process, as ``python -m <module> <args>`` runs it (without a
    fresh interpreter's imports); ``sys.argv``, torch's thread count (a job sets its own) and the root
    logger's level and handlers (a job's logging replaces them) come back afterwards."""
    import logging

    import torch

    root = logging.getLogger()
    argv, threads, level, handlers = sys.argv, torch.get_num_threads(), root.level, list(root.handlers)
    sys.argv = [module, *args]
    try:
        importlib.import_module(module).main()
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        sys.argv = argv
        torch.set_num_threads(threads)
        root.setLevel(level)


@pytest.fixture
def app(monkeypatch):
    """:func:`run_app`, with the repository on ``sys.path``."""
    monkeypatch.syspath_prepend(str(REPO))
    return run_app


@pytest.mark.slow  # runs a two-job fitting sweep first
def test_report_entry_point_gathers_a_sweep_folder(sweep, app, capsys):
    (sweep / "report" / "report.md").unlink()
    app("experiments.report", f"sweep_dir={sweep}", "logger=disabled")
    text = (sweep / "report" / "report.md").read_text()
    assert "MBE N=1" in text and "MBE N=2" in text and "mse_vs_N.png" in text
    assert "| MBE N=2 |" in capsys.readouterr().out


def test_a_one_job_sweep_gets_its_report_folder_and_files_written_whole(monkeypatch, tmp_path):
    """A multirun of one job draws no figure, which used to be what created ``report/`` when the
    multirun's callback gathers it: the report creates it, and every file is written through a
    temporary file and a rename (none left over)."""
    monkeypatch.syspath_prepend(str(REPO))
    from experiments.config import LoggerConfig, WandbMode
    from experiments.report import build_report
    row = {"entry": "convert", "model": "smollm2", "data": "lee", "method": "mbe", "T": 8, "metric": "perplexity",
           "ann": 31.65, "snn": 32.82, "energy_strict": 0.2983, "group": "g"}
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(row))
    report = build_report(tmp_path, LoggerConfig(mode=WandbMode.disabled))
    assert report == tmp_path / "report"
    assert "| 0 | smollm2 | lee | mbe | 8 |" in (report / "report.md").read_text()
    assert (report / "report.csv").read_text().splitlines()[1].startswith("0,")
    assert sorted(p.name for p in report.iterdir()) == ["report.csv", "report.md"]


@pytest.mark.slow
def test_convert_multirun_compares_ann_and_snn_and_reports_vs_T(tmp_path):
    sweep_dir = multirun("experiments.convert", tmp_path, "model=gpt2", "model.hidden=16", "data=tiny",
                         "conversion.T=8,16")
    for job in ("0", "1"):
        out = sweep_dir / job
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["metric"] == "perplexity" and metrics["snn"] == pytest.approx(metrics["ann"], rel=0.2)
        assert metrics["firing_rate"] > 0 and metrics["energy_strict"] > metrics["energy_paper"] > 0
        assert (out / "layers.png").read_bytes()[:8] == PNG and "SpikingSoftmax" in (out / "conversion.txt").read_text()
        assert logged_metric(out, "snn") == [pytest.approx(metrics["snn"])]
    for png in ("perplexity_vs_T.png", "energy_vs_T.png"):
        assert (sweep_dir / "report" / png).read_bytes()[:8] == PNG


@pytest.mark.parametrize("module, override, message", [
    ("experiments.fit", "neuron.Nn=3", "Key 'Nn' not in 'NeuronConfig'"),
    ("experiments.convert", "conversion.N=sixteen", "'sixteen'"),
])
def test_wrong_key_or_value_stops_the_entry_point_at_start_up(app, capsys, tmp_path, module, override, message):
    with pytest.raises(SystemExit) as stop:
        app(module, override, f"hydra.run.dir={tmp_path}")
    assert stop.value.code != 0 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("override, message", [
    ("conversion.T=sixteen", "T must be a positive integer"),
    ("conversion.T={default:4,sofmax:6}", "unknown key 'sofmax'"),
    ("conversion.T=24 conversion.code=ternary", "code='ternary' holds at most T=20"),
])
def test_a_bad_T_stops_the_job_before_anything_loads(app, capsys, tmp_path, override, message):
    """``conversion.T`` is an int or a mapping (the schema takes any value): the job checks it first."""
    with pytest.raises(SystemExit) as stop:
        app("experiments.convert", *override.split(), f"hydra.run.dir={tmp_path}", "logger=disabled")
    assert stop.value.code != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "wandb").exists()


def test_conversion_T_takes_an_int_or_a_mapping(compose_app):
    from omegaconf import OmegaConf
    job = OmegaConf.to_object(compose_app("conversion.T={default:4,softmax:6,model.layers.0.*:8}",
                                          config="convert").conversion)
    assert job.T == {"default": 4, "softmax": 6, "model.layers.0.*": 8}
    assert OmegaConf.to_object(compose_app("conversion.T=6", config="convert").conversion).T == 6


@pytest.fixture
def compose_app(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import experiments.config  # noqa: F401  (registers the schemas)

    def compose_with(*overrides: str, config: str = "fit"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(config_name=config, overrides=list(overrides), return_hydra_config=True)
    return compose_with


@pytest.mark.parametrize("app, override, named", [
    ("fit", "neuron.kind=lif", "lif"),
    ("fit", "neuron.N=four", "four"),
    ("fit", "neuron.decay=maybe", "maybe"),
    ("fit", "target=softplus", "softplus"),
    ("fit", "target.name=softplus", "softplus"),
    ("fit", "logger=offlien", "offlien"),
    ("fit", "logger.mode=sync", "sync"),
    ("fit", "fit.budgett=10", "budgett"),
    ("fit", "experiment=fig7", "fig7"),
    ("convert", "model=bart", "bart"),
    ("convert", "model.family=t5", "t5"),
    ("convert", "conversion.mode=slow", "slow"),
    ("convert", "conversion.calibration.method=mean", "mean"),
    ("convert", "conversion.method=snn_magic", "snn_magic"),
    ("convert", "conversion.neuron=lif", "lif"),
    ("convert", "model=gpt3", "gpt3"),
    ("convert", "model.task=translation", "translation"),
    ("convert", "data=imagenet", "imagenet"),
    ("convert", "device=gpu", "gpu"),
    ("report", "sweep_dirr=x", "sweep_dirr"),
])
def test_wrong_value_fails_composition_naming_it(compose_app, app, override, named):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as err:
        compose_app(override, config=app)
    message = f"{err.value} {err.value.__cause__}"
    assert named in message


@pytest.mark.parametrize("kind", ["mbe", "fs"])
def test_a_fit_jobs_neuron_and_fit_settings_are_fit_neurons_defaults(compose_app, kind):
    """The neuron and fit settings of a fit job come from ``fit_neuron``'s own defaults (FS: one basis)."""
    defaults = {name: p.default for name, p in inspect.signature(fit_neuron).parameters.items()}
    cfg = compose_app(f"neuron={kind}")
    assert (cfg.neuron.T, cfg.neuron.N) == (defaults["T"], defaults["N"] if kind == "mbe" else 1)
    assert (cfg.neuron.dt, cfg.neuron.decay) == (defaults["dt"], defaults["decay"])
    assert (cfg.fit.samples, cfg.fit.restarts, cfg.fit.seed) == (defaults["samples"], defaults["restarts"], defaults["seed"])


def test_every_preset_is_known_here():
    assert sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("preset, app", sorted(PRESETS.items()))
def test_every_preset_composes(compose_app, preset, app):
    cfg = compose_app(f"experiment={preset}", config=app)
    assert cfg.name == preset and cfg.logger.mode.value == "offline"
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params


@pytest.mark.parametrize("model, source, data", [("minilm", "reviews", 1000), ("dinov2", "mnist", None),
                                                 ("gpt2_small", "lee", None), ("smollm2", "lee", 2048)])
def test_pretrained_models_bring_their_data_and_the_readme_table_caps(compose_app, model, source, data):
    cfg = compose_app(f"model={model}", config="convert")
    assert cfg.model.source.value == "pretrained" and cfg.data.source.value == source
    assert (cfg.data.samples if cfg.data.samples is not None else cfg.model.samples) == data
    assert compose_app(f"model={model}", "data=text_file", config="convert").data.source.value == "text_file"


def test_slurm_launcher_config_composes_with_the_pinned_submitit_plugin(compose_app):
    cfg = compose_app("hydra/launcher=slurm", "hydra.launcher.partition=cpu", config="convert")
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.partition == "cpu" and cfg.hydra.launcher.cpus_per_task == 2


def test_a_jobs_conversion_options_are_converts_at_its_defaults_and_overrides_reach_them(compose_app):
    """The Hydra schema of ``conversion`` is ``convert``'s ConversionConfig: every option with the same
    default; ``operator_options()`` and ``method_options()``, what every entry point passes to ``convert``,
    carry the options beside T, N and activation_N, and a Hydra override arrives."""
    import dataclasses

    from omegaconf import OmegaConf

    from spikingjelly_mbe.conversion import DEFAULTS
    job = OmegaConf.to_object(compose_app(config="convert").conversion)
    for f in dataclasses.fields(DEFAULTS):
        value = getattr(job, f.name)
        assert getattr(value, "value", value) == getattr(DEFAULTS, f.name), f.name
    default = job.operator_options()
    assert set(default) == {"rotate", "split_bits", "code", "operand_code", "budget", "center_inputs",
                            "rectified_activations", "norm_exponents", "centered_codes", "probability_exponents",
                            "neuron", "bias_correction", "fisher_ranges", "digit_budget", "energy_budget", "energy_by"}
    assert job.method_options() == {"n": DEFAULTS.n, "percentile": DEFAULTS.percentile}
    assert job.method_columns() == {"ecmt_n": DEFAULTS.n, "ecmt_percentile": DEFAULTS.percentile}
    chosen = OmegaConf.to_object(compose_app("conversion.code=binary", "conversion.budget=0.01", "conversion.split_bits=2",
                                             "conversion.norm_exponents=false", "conversion.neuron=fs",
                                             "conversion.probability_exponents=false", "conversion.rotate=hadamard", "conversion.digit_budget=0.25",
                                             "conversion.operand_code=ternary", config="convert").conversion)
    assert chosen.operator_options() == {**default, "code": "binary", "budget": 0.01, "split_bits": 2,
                                         "norm_exponents": False, "probability_exponents": False, "neuron": "fs",
                                         "rotate": "hadamard", "digit_budget": 0.25, "operand_code": "ternary"}


def test_an_ecmt_jobs_n_and_percentile_are_result_columns_apart_from_the_calibration_percentile(compose_app):
    """ECMT's ``n`` and ``percentile`` are columns of a convert job's row and table (``ecmt_n``,
    ``ecmt_percentile``), beside the calibration's ``percentile``, and a sweep may vary them."""
    from omegaconf import OmegaConf, open_dict

    from experiments.convert import TABLE_COLUMNS, result_row
    from experiments.evaluation import Result
    from experiments.report import SETTINGS
    cfg = compose_app("conversion.method=ecmt", "conversion.n=3", "conversion.percentile=95",
                      "conversion.calibration.method=percentile", "conversion.calibration.percentile=99.5",
                      config="convert")
    with open_dict(cfg):
        del cfg["hydra"]
    job = OmegaConf.to_object(cfg)
    row = result_row(job, None, 8, "ok", 1.0, Result("cosine", 1.0, 0.9, {}, None, 1.0, 4, 1), "g")
    assert (row["method"], row["ecmt_n"], row["ecmt_percentile"], row["percentile"]) == ("ecmt", 3, 95.0, 99.5)
    assert {"ecmt_n", "ecmt_percentile"} <= set(TABLE_COLUMNS) & set(SETTINGS)
    assert job.conversion.method_options() == {"n": 3, "percentile": 95.0}


def test_a_convert_job_runs_where_device_says(compose_app, monkeypatch):
    """``device=auto`` is CUDA when present, else the CPU; ``device=cuda`` without CUDA names the fix;
    the task's model, calibration and held-out batches move to the device."""
    import torch
    from experiments.evaluation import on_device, resolve_device
    from spikingjelly_mbe.models.tasks import EvalBatch, EvalTask
    assert compose_app(config="convert").device.name == "auto"
    assert compose_app("device=cpu", config="convert").device.name == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="device=cpu or device=auto"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    task = EvalTask("t", torch.nn.Linear(2, 2).double(), "agreement", [{"x": torch.ones(2)}],
                    [EvalBatch(torch.ones(1, 2), torch.zeros(1))], lambda out, batch: out)
    moved = on_device(task, torch.device("meta"))
    assert moved.model.weight.is_meta and moved.calib[0]["x"].is_meta
    assert moved.batches[0].inputs.is_meta and moved.batches[0].labels.is_meta


def test_gather_orders_jobs_by_number_beside_stray_named_folders(tmp_path):
    """Job folders sort numerically (2 before 10), and a folder with a name among them (a copied
    sweep, a report) neither breaks the sort nor comes first."""
    from experiments.report import METRICS_FILE, gather
    for job in ("10", "2", "extra/0"):
        (tmp_path / job).mkdir(parents=True)
        (tmp_path / job / METRICS_FILE).write_text(json.dumps({"value": job}))
    assert [row["job"] for row in gather(tmp_path)] == ["2", "10", "extra/0"]
