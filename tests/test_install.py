"""The install: the core package works without the `experiments` extra, its console scripts say how to
install the extra, and CI runs README command 2 only after the offline assets installed."""
import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import EXTRA_MODULES, INSTALL

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT_PACKAGES = tuple(EXTRA_MODULES)

# Runs in a fresh interpreter where the experiment packages cannot be imported (a None entry in
# sys.modules is what Python itself reads as "not installed", for `import` and importlib.util.find_spec).
CORE_ONLY = f"""
import pkgutil, sys
for name in {EXPERIMENT_PACKAGES!r}:
    sys.modules[name] = None
import torch
import spikingjelly_mbe
from spikingjelly_mbe import convert
for module in pkgutil.walk_packages(spikingjelly_mbe.__path__, "spikingjelly_mbe."):
    if not module.name.endswith("__main__"):
        __import__(module.name)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
x = torch.randn(32, 8)
snn = convert(model, T=16, calib_data=[x])
with torch.no_grad():
    print(snn.spiking_report.fully_spiking, float((snn(x) - model(x)).abs().max() / model(x).abs().max()))
"""


@pytest.mark.slow  # a fresh interpreter imports every module of the package
def test_the_core_package_imports_and_converts_without_the_experiment_packages():
    done = subprocess.run([sys.executable, "-c", CORE_ONLY], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    fully_spiking, error = done.stdout.split()
    assert fully_spiking == "True" and float(error) < 0.02


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config


def console_scripts() -> dict:
    lines = setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_the_console_scripts_go_through_the_extras_check_and_it_names_the_extras_distributions():
    assert console_scripts() == {f"sjmbe-{job}": f"experiments.cli:{job}" for job in ("fit", "convert", "report")}
    extra = {line.split("==")[0].strip() for line in setup_cfg()["options.extras_require"]["experiments"].split("\n")
             if line.strip()}
    assert set(EXTRA_MODULES.values()) <= extra


# a console script, as pip writes it, run where ``missing`` cannot be imported (None in sys.modules)
SCRIPT = """
import sys
for name in {missing!r}:
    sys.modules[name] = None
from experiments.cli import {job}
sys.argv = ["sjmbe-{job}", "--help"]
sys.exit({job}())
"""


def run_script(job: str, missing: tuple) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(missing=missing, job=job)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("job, missing, named", [("convert", ("hydra",), "hydra-core"),
                                                 ("fit", ("wandb", "matplotlib"), "matplotlib, wandb"),
                                                 ("report", ("omegaconf",), "hydra-core")])
def test_a_console_script_without_the_experiments_extra_exits_naming_the_extra_and_its_install(job, missing, named):
    done = run_script(job, missing)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"sjmbe-{job} needs the 'experiments' extra" in done.stderr
    assert f"(missing: {named})" in done.stderr and INSTALL in done.stderr


def test_a_console_script_with_the_extra_runs_its_hydra_entry_point(monkeypatch, capsys):
    """The console script's function, called as pip's wrapper calls it (in this process: the extra is here)."""
    from experiments.cli import report
    monkeypatch.setattr(sys, "argv", ["sjmbe-report", "--help"])
    with pytest.raises(SystemExit) as stop:
        report()
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out
    assert "report is powered by Hydra" in out and "sweep_dir" in out


def readme_command(number: int) -> list:
    """README command ``number`` (the line after ``# <number>.`` in its bash block), split at ``&&``
    into argument lists as the shell would pass them."""
    text = (REPO / "README.md").read_text()
    line = re.search(rf"^# {number}\..*\n(.+)$", text, re.MULTILINE).group(1)
    return [shlex.split(part) for part in line.split("&&")]


def logging_tool(path: Path, log: Path, then: str = "") -> None:
    """An executable that appends its name (as invoked) and its arguments to ``log``, then runs ``then``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/usr/bin/env bash\necho "$0 $*" >> "{log}"\n{then}\n')
    path.chmod(0o755)


def run_ci(tmp_path: Path, assets_exit: int) -> tuple:
    """``.ci/run`` copied into a scratch checkout whose ``install_assets``, ``python3`` and virtualenv
    tools only log their calls; ``install_assets`` exits with ``assets_exit``. Returns the exit status
    and the calls, each as its argument list."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    log, tool = tmp_path / "calls.log", tmp_path / "tool"
    logging_tool(tool, log)
    logging_tool(tmp_path / ".ci" / "install_assets", log, then=f"exit {assets_exit}")
    logging_tool(tmp_path / "bin" / "python3", log, then=f'mkdir -p .venv/bin && cp "{tool}" .venv/bin/pip && cp "{tool}" .venv/bin/python')
    environment = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=60)
    calls = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return done.returncode, [[str(Path(name).relative_to(tmp_path)) if name.startswith("/") else name, *args]
                             for name, *args in calls]


def test_ci_runs_the_readme_test_command_after_the_assets(tmp_path):
    returncode, calls = run_ci(tmp_path, assets_exit=0)
    assert returncode == 0
    assert calls == [[".ci/install_assets"], *[["bin/python3", *args[1:]] if args[0] == "python3" else args
                                                for args in readme_command(2)]]


def test_ci_fails_without_running_the_tests_when_the_assets_fail(tmp_path):
    returncode, calls = run_ci(tmp_path, assets_exit=1)
    assert returncode != 0 and calls == [[".ci/install_assets"]]


def test_readme_command_1_installs_the_experiments_and_command_2_the_test_tools():
    install_1 = next(args for args in readme_command(1) if args[1:3] == ["install", "-q"])
    install_2 = next(args for args in readme_command(2) if args[1:3] == ["install", "-q"])
    assert install_1[-1] == ".[experiments]" and install_2[-1] == ".[dev]"
