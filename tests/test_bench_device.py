"""The benchmarks take ``--device auto|cpu|cuda`` (``auto``: CUDA when present), run as users run them:
a tiny conversion benchmark on the CPU, and a clear error naming the fix when CUDA is asked for and absent."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.slow
def test_conversion_bench_runs_where_auto_points_without_cuda():
    done = run("conversion_bench.py", "--part", "speed", "--layers", "1", "--hidden", "32", "--heads", "2",
               "--sequences", "4", "--length", "8", "--batch-size", "2", "--device", "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fast mode, on cpu, 1 thread(s)" in done.stdout and "process CPU time ratio" in done.stdout
    cosine = float(done.stdout.split("min cosine ")[1].split(",")[0])
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
