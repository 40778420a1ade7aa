"""benchmarks/zoo_sweep.py: its settings parsed as convert's keyword arguments, each row's cosine and agreement
against the same conversion compared by plain PyTorch, a refused setting recorded with its error, and the files."""
import csv
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from zoo_sweep import converted_rows, main, parse_setting, sweep  # noqa: E402

from spikingjelly_mbe import convert  # noqa: E402
from spikingjelly_mbe.conversion.zoo import build, make_batch  # noqa: E402


def test_a_setting_is_convert_keyword_arguments_and_a_bad_one_names_its_item():
    assert parse_setting("T=6 energy_budget=0.2 energy_by='ranges' T2={'default':4}") == {
        "T": 6, "energy_budget": 0.2, "energy_by": "ranges", "T2": {"default": 4}}
    with pytest.raises(ValueError, match=r"'T6' in 'T6' is not key=value"):
        parse_setting("T6")
    with pytest.raises(ValueError, match=r"the value of energy_by in .* must be a Python literal, got 'ranges'"):
        parse_setting("T=6 energy_by=ranges")
    with pytest.raises(ValueError, match="not key=value"):
        sweep(["gelu_mlp"], ["T=4", "=4"])  # before any conversion


def test_a_row_is_the_conversion_compared_with_its_ann_and_a_refusal_is_recorded():
    row, refused = converted_rows("gelu_mlp", ["T=4", "T=0"])
    ann = build("gelu_mlp")
    snn = convert(ann, [make_batch("gelu_mlp", 4, seed=s) for s in (1, 2)], T=4)
    x = make_batch("gelu_mlp", 4, seed=9)
    with torch.no_grad():
        a, s = ann(x), snn(x)
    cosine = F.cosine_similarity(a.flatten(1).double(), s.flatten(1).double(), dim=1).min().item()
    assert row["converted"] and row["fully_spiking"] and row["error"] == ""
    assert row["cosine"] == pytest.approx(cosine, abs=1e-5) and 0.9 < cosine < 1.0
    assert row["argmax"] == pytest.approx((a.argmax(-1) == s.argmax(-1)).double().mean().item(), abs=1e-4)
    assert not refused["converted"] and refused["error"].startswith("ValueError: T must be a positive integer")


def test_the_sweep_writes_its_table_and_heatmap(tmp_path):
    stem = main(["--families", "gelu_mlp", "torch_encoder", "--settings", "T=4", "T=0", "--out", str(tmp_path)])
    with open(stem.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["family"], r["setting"], r["converted"]) for r in rows] == [
        ("gelu_mlp", "T=4", "True"), ("gelu_mlp", "T=0", "False"),
        ("torch_encoder", "T=4", "True"), ("torch_encoder", "T=0", "False")]
    assert stem.with_suffix(".md").read_text().count("\n| ") == 4
    assert stem.with_suffix(".png").stat().st_size > 0
