"""benchmarks/gpu_bench.py: the CPU smoke run (the triton backend in the Triton interpreter) and the
clean exit without a CUDA device."""
import importlib.util
import os

import pytest
import torch


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
                    reason="needs triton and TRITON_INTERPRET=1 (tests/conftest.py sets it)")
def test_cpu_interpret_smoke_run_measures_a_converted_llama_like_the_torch_backend(benchmark_script, tmp_path):
    bench = benchmark_script("gpu_bench")
    (row,) = bench.main(["--cpu-interpret", "--out", str(tmp_path)])
    assert row.get("error") is None, row
    assert row["backend"] == "triton" and row["same_as_torch"] is True and row["cos_min"] > 0.9
    assert row["snn_launches"] > row["ann_launches"] > 0 and row["snn_ms"] > 0 and row["ann_ms"] > 0
    assert row["snn_over_ann"] == pytest.approx(row["snn_ms"] / row["ann_ms"])
    assert "| tiny | fp32 | 8 | triton |" in (tmp_path / "gpu_bench.md").read_text()
    assert (tmp_path / "gpu_bench.csv").read_text().startswith("model,dtype,T,backend")


def test_without_cuda_it_says_so_and_measures_nothing(benchmark_script, monkeypatch, capsys, tmp_path):
    bench = benchmark_script("gpu_bench")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path)]) == []
    assert "no CUDA device" in capsys.readouterr().out and not any(tmp_path.iterdir())
