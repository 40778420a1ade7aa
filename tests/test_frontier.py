"""``experiment=frontier``: per model, loss against strict energy over T and per-operator T, the Pareto
front found by the report's gather code checked against hand-made points and against a brute-force
dominance check of a tiny synthetic model's sweep."""
import csv
import json
import sys
from pathlib import Path

import pytest

from test_experiments import PNG, REPO, multirun

# (model, T, T_ops, strict energy, loss, on the front): hand-made, the front marked by hand
POINTS = [
    ("gpt2-L2-D16", 3, "", 0.10, 50.0, True),
    ("gpt2-L2-D16", 4, "", 0.14, 20.0, True),
    ("gpt2-L2-D16", 4, "softmax=6, norm=6", 0.16, 19.0, True),
    ("gpt2-L2-D16", 4, "matmul=6", 0.15, 25.0, False),   # more energy and more loss than T=4
    ("gpt2-L2-D16", 5, "", 0.20, 5.0, True),
    ("gpt2-L2-D16", 6, "", 0.26, 5.0, False),           # T=5's loss for more energy
    ("gpt2-L2-D16", 8, "", 0.33, 1.0, True),
    ("gpt2-L2-D16", 16, "", 0.50, 1.5, False),
    ("vit-L2-D16", 4, "", 0.20, 3.0, True),              # would dominate gpt2's T=5: fronts are per model
    ("vit-L2-D16", 8, "", 0.30, 0.5, True),
    ("vit-L2-D16", 16, "", 0.50, 0.5, False),
]


def write_sweep(root: Path) -> Path:
    for i, (model, T, ops, energy, loss, _) in enumerate(POINTS):
        job = root / str(i)
        job.mkdir(parents=True)
        row = {"entry": "convert", "model": model, "data": "synthetic", "method": "mbe", "T": T, "T_ops": ops,
               "metric": "perplexity", "ann": 100.0, "snn": 100.0 + loss, "loss": loss, "energy_strict": energy,
               **({"loss_lo": loss - 1.0, "loss_hi": loss + 2.0} if model.startswith("vit") else {}),
               "energy_paper": energy / 2, "firing_rate": 0.1, "group": "frontier-test"}
        (job / "metrics.json").write_text(json.dumps(row))
    return root


def read_frontier(report: Path) -> list:
    with (report / "frontier.csv").open() as f:
        return list(csv.DictReader(f))


def test_the_report_finds_each_models_front_of_hand_made_points(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from experiments.config import LoggerConfig, WandbMode
    from experiments.report import build_report
    report = build_report(write_sweep(tmp_path / "sweep"), LoggerConfig(mode=WandbMode.disabled))
    found = {(r["model"], int(r["T"]), r["T_ops"]): r["on_front"] == "True" for r in read_frontier(report)}
    assert found == {(m, T, ops): front for m, T, ops, _, _, front in POINTS}
    bounds = {(r["model"], r["loss_lo"], r["loss_hi"]) for r in read_frontier(report)}  # carried where measured
    assert {b for b in bounds if b[0].startswith("vit")} == {("vit-L2-D16", f"{l - 1.0}", f"{l + 2.0}")
                                                               for m, _, _, _, l, _ in POINTS if m.startswith("vit")}
    assert {b[1:] for b in bounds if b[0].startswith("gpt2")} == {("", "")}
    for model in ("gpt2-L2-D16", "vit-L2-D16"):
        assert (report / f"frontier_{model}.png").read_bytes()[:8] == PNG
    assert "on_front" in (report / "frontier.md").read_text()


def dominated(point: dict, others: list) -> bool:
    return any(o["energy_strict"] <= point["energy_strict"] and o["loss"] <= point["loss"]
               and (o["energy_strict"] < point["energy_strict"] or o["loss"] < point["loss"]) for o in others)


@pytest.mark.slow
def test_the_frontier_preset_on_a_tiny_synthetic_model(tmp_path):
    """The preset's sweep with a tiny local GPT-2 on generated tokens instead of the real models, two
    of its points: every job metered, the report's front the brute-force non-dominated set."""
    sweep = multirun("experiments.convert", tmp_path, "experiment=frontier", "data=tiny", "logger=disabled",
                     "model=gpt2", "model.hidden=16", "conversion.T=8,{default:8,softmax:16}",
                     "conversion.code=signed")  # beat the preset's sweeps
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("[0-9]*/metrics.json"))]
    assert len(jobs) == 2 and {(j["T"], j["T_ops"]) for j in jobs} == {(8, ""), (8, "softmax=16")}
    mixed = next(j for j in jobs if j["T_ops"])
    assert 8 < mixed["T_mean"] < 16
    rows = read_frontier(sweep / "report")
    assert len(rows) == 2
    for row in rows:
        job = next(j for j in jobs if (j["T"], j["T_ops"]) == (int(row["T"]), row["T_ops"]))
        assert (row["on_front"] == "True") == (not dominated(job, jobs))
    assert (sweep / "report" / "frontier_gpt2-L2-D16.png").read_bytes()[:8] == PNG


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
