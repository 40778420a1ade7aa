"""benchmarks/gpu_bench.py, its ``main()`` run as ``python benchmarks/gpu_bench.py <args>`` runs it: the CPU
smoke run (the triton backend in the Triton interpreter) and the clean exit without a CUDA device."""
import csv
import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
                    reason="needs triton and TRITON_INTERPRET=1 (tests/conftest.py sets it)")
def test_cpu_interpret_smoke_run_measures_a_converted_llama_like_the_torch_backend(tmp_path, script_main,
                                                                                    quiet_clamp_warnings):
    script_main(SCRIPT, "--cpu-interpret", "--out", str(tmp_path))
    with (tmp_path / "gpu_bench.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert not row.get("error"), row
    assert row["backend"] == "triton" and row["same_as_torch"] == "True" and float(row["cos_min"]) > 0.9
    assert int(row["snn_launches"]) > int(row["ann_launches"]) > 0
    assert float(row["snn_ms"]) > 0 and float(row["ann_ms"]) > 0
    assert float(row["snn_over_ann"]) == pytest.approx(float(row["snn_ms"]) / float(row["ann_ms"]), rel=1e-3)
    assert "| tiny | fp32 | 8 | triton |" in (tmp_path / "gpu_bench.md").read_text()


def test_without_cuda_it_says_so_and_measures_nothing(tmp_path, script_main, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    script_main(SCRIPT, "--out", str(tmp_path))
    assert "no CUDA device" in capsys.readouterr().out and not any(tmp_path.iterdir())
