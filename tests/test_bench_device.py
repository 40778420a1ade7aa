"""The benchmarks take ``--device auto|cpu|cuda`` (``auto``: CUDA when present), their ``main()`` run as
``python <script> <args>`` runs it: a tiny conversion benchmark on the CPU, and a clear error naming the fix
when CUDA is asked for and absent."""
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow  # a conversion and its timing passes
def test_conversion_bench_runs_where_auto_points_without_cuda(script_main, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    script_main(BENCHMARKS / "conversion_bench.py", "--part", "speed", "--layers", "1", "--hidden", "32", "--heads",
                "2", "--sequences", "4", "--length", "8", "--batch-size", "2", "--device", "auto")
    out = capsys.readouterr().out
    assert "fast mode, on cpu, 1 thread(s)" in out and "process CPU time ratio" in out
    cosine = float(out.split("min cosine ")[1].split(",")[0])
    assert cosine > 0.99


@pytest.mark.parametrize("script", ["conversion_bench.py", "ops_bench.py"])
def test_cuda_asked_without_a_device_is_an_error_naming_the_fix(script, tmp_path, script_main, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        script_main(BENCHMARKS / script, "--device", "cuda", *(["--out", str(tmp_path)] if script == "ops_bench.py" else []))
    assert exit_.value.code == 2
    assert "device=cuda, but torch sees no CUDA device: pass device=cpu or device=auto" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
