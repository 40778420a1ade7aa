"""CONTRIBUTING.md's walkthroughs, performed as written: each test copies the package to a scratch folder,
makes the edits CONTRIBUTING's code blocks show (each block headed ``# <file>: <where>``), imports the
copy in a fresh interpreter and converts a model with the new thing, against the float computation."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
FIT_BUDGET = 600  # candidate evaluations of a fit on first use in the copy (a small, deterministic fit)


def documented_edits(section: str) -> List[Tuple[str, str, str]]:
    """``(file, where, code)`` of every code block of CONTRIBUTING's ``section`` headed ``# <file>: <where>``."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    body = text.split(f"\n## {section}")[1].split("\n## ")[0]
    edits = []
    for indent, block in re.findall(r"^( *)```python\n(.*?)^\1```", body, re.MULTILINE | re.DOTALL):
        header, _, code = textwrap.dedent(block).partition("\n")
        found = re.fullmatch(r"# (\S+): (.+)", header)
        if found:
            edits.append((found[1], found[2], code))
    assert edits, f"CONTRIBUTING.md's {section!r} shows no edit"
    return edits


def assignment(tree: ast.Module, name: str) -> ast.stmt:
    return next(n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and
                name in [t.id for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)])


def apply_edit(root: Path, file: str, where: str, code: str) -> None:
    """One documented edit of the copy at ``root``: a new file, an import, a method of a class, an
    entry of a table (list, tuple or dict) or a statement before an assignment."""
    path = root / file
    if where == "new file":
        path.write_text(code)
        return
    source = path.read_text()
    lines, tree = source.splitlines(keepends=True), ast.parse(source)
    kind, _, name = where.partition(" ")
    if kind == "imports":
        last = max(n.end_lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
        lines.insert(last, code)
    elif kind == "class":
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
        lines.insert(node.end_lineno, "\n" + textwrap.indent(code, "    "))
    elif kind == "before":
        lines.insert(assignment(tree, name).lineno - 1, code + "\n\n")
    elif kind == "table":
        table = next(n for n in ast.walk(assignment(tree, name).value) if isinstance(n, (ast.List, ast.Tuple, ast.Dict)))
        at = sum(len(line) for line in lines[:table.end_lineno - 1]) + table.end_col_offset - 1  # its closing bracket
        before, entry = source[:at], code.strip().rstrip(",")
        separator = "" if before.rstrip().endswith((",", "[", "(", "{")) else ", "
        if before.endswith("\n"):  # one entry a line: the new one on lines of its own, indented like the last
            last = (table.keys if isinstance(table, ast.Dict) else table.elts)[-1]
            entry = textwrap.indent(entry, " " * last.col_offset) + ",\n"
        lines = [before + separator + entry + source[at:]]
    else:
        raise ValueError(f"unknown place {where!r} in CONTRIBUTING.md")
    path.write_text("".join(lines))


def scratch_copy(tmp_path: Path, *sections: str, files: Dict[str, str] = {}) -> Path:
    """The package copied to ``tmp_path`` with ``files`` (``{path: text}``, the new thing's own
    modules) and the edits of CONTRIBUTING's ``sections``."""
    shutil.copytree(REPO / "spikingjelly_mbe", tmp_path / "spikingjelly_mbe", ignore=shutil.ignore_patterns("__pycache__"))
    for file, text in files.items():
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(text)
    for section in sections:
        for edit in documented_edits(section):
            apply_edit(tmp_path, *edit)
    return tmp_path


PRELUDE = """
import functools, json
import torch, torch.nn as nn, torch.nn.functional as F
import spikingjelly_mbe
assert spikingjelly_mbe.__file__.startswith({root!r}), spikingjelly_mbe.__file__
from spikingjelly_mbe import convert, fit_neuron
from spikingjelly_mbe.fitting.library import fit_on_first_use
fit_on_first_use(functools.partial(fit_neuron, budget={budget}, restarts=1))
torch.manual_seed(0)
torch.set_num_threads(1)

def cosine(a, b):
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), 0))

x = torch.randn(64, 8)
"""


def run_copy(root: Path, script: str) -> Dict[str, Any]:
    """``script`` run on the copy at ``root`` in a fresh interpreter (its own fit cache, the PyTorch
    backend); the JSON it prints last."""
    environment = {**os.environ, "PYTHONPATH": str(root), "SPIKINGJELLY_MBE_CACHE": str(root / "cache"),
                   "SPIKINGJELLY_MBE_BACKEND": "torch"}
    code = PRELUDE.format(root=str(root), budget=FIT_BUDGET) + textwrap.dedent(script)
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=environment, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh interpreter, two conversions and a fit on first use
def test_adding_an_activation_is_one_entry_of_the_activation_table(tmp_path):
    """Softshrink (exact, on rectifiers) converts as a module and as a call, fully spike-driven; Mish
    (fitted on first use, as without shipped fits) converts as a module, its fitted neuron within its
    own error of ``mish - relu``, the site within that plus the rectifier's coding step of Mish."""
    root = scratch_copy(tmp_path, "Adding an activation")
    out = run_copy(root, """
        from spikingjelly_mbe.activations import ACTIVATIONS
        from spikingjelly_mbe.ops import RectifiedActivation

        class Functional(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

            def forward(self, x):
                return self.fc2(F.softshrink(self.fc1(x), 0.5))

        out = {}
        for name, ann in (("module", nn.Sequential(nn.Linear(8, 16), nn.Softshrink(0.5), nn.Linear(16, 4))),
                          ("call", Functional())):
            snn = convert(ann, [x])
            with torch.no_grad():
                out[name] = [snn.spiking_report.fully_spiking, [e.source for e in snn.spiking_report.replaced],
                             cosine(snn(x), ann(x))]
        ann = nn.Sequential(nn.Linear(8, 16), nn.Mish(), nn.Linear(16, 4))
        snn = convert(ann, [x], T=8, activation_N=4, rectified_activations=True)
        site, mish = snn[1], ACTIVATIONS["mish"]
        with torch.no_grad():
            h = ann[0](x)
            grid = torch.linspace(*mish.residual_domain, 4001)
            residual = site.residual
            out["mish"] = [type(site).__name__, residual.fitted.key, residual.fitted.errors["max_abs"],
                           float((residual(grid) - mish.residual(grid)).abs().max()),
                           float((site(h) - mish.reference(h)).abs().max()),
                           float(site.rectifier.channel_ranges.max()) / 2 ** 8,
                           cosine(snn(x), ann(x)), (spikingjelly_mbe.cache.cache_dir("fits") / f"{residual.fitted.key}.json").is_file()]
        print(json.dumps(out))
    """)
    for name, source in (("module", "Softshrink"), ("call", "softshrink")):
        fully_spiking, sources, cos = out[name]
        assert fully_spiking and source in sources and cos > 0.999, out[name]
    kind, key, fit_error, grid_error, site_error, step, cos, cached = out["mish"]
    assert kind == "RectifiedActivation" and key == "mish_residual-mbe-N4-T8" and cached
    # the site is relu (coded to T=8 digits of its channel's range) plus the fitted residual
    assert 0 < grid_error <= 1.05 * fit_error and site_error <= 1.05 * fit_error + step and cos > 0.99, out["mish"]


@pytest.mark.slow  # a fresh interpreter and conversions by both methods
def test_adding_an_operator_is_its_module_a_site_kind_and_each_methods_builder(tmp_path):
    """``torch.fmax`` of two activations: the operator, its SITE_KINDS entry and call name, the
    builder declared in the protocol and written for MBE and ECMT; a model calling it converts
    strictly with both methods (MBE fully spike-driven) and computes the maximum."""
    root = scratch_copy(tmp_path, "Adding an operator")
    out = run_copy(root, """
        from spikingjelly_mbe.conversion.method import GENERAL_BUILDERS

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

            def forward(self, x):
                return self.out(torch.fmax(self.fc1(x), self.fc2(x)))

        ann = nn.Sequential(Block())
        out = {"declared": "fmax" in GENERAL_BUILDERS}
        for method, T in (("mbe", 16), ("ecmt", 16)):
            snn = convert(ann, [x], method=method, T=T)
            report = snn.spiking_report
            site = next(m for p, m in snn.named_modules() if p.endswith("spiking_fmax0"))
            with torch.no_grad():
                out[method] = [type(site).__name__, type(site.rectifier).__name__, report.fully_spiking,
                               [e.note for e in report.replaced if e.path.endswith("spiking_fmax0")],
                               cosine(snn(x), ann(x))]
        print(json.dumps(out))
    """)
    assert out["declared"]
    for method, rectifier, fully_spiking, bar in (("mbe", "SpikingReLU", True, 0.999),
                                                  ("ecmt", "ExpectationCompensation", False, 0.99)):
        kind, inner, fully, notes, cos = out[method]
        assert (kind, inner, fully) == ("FMax", rectifier, fully_spiking) and len(notes) == 1, out[method]
        assert cos > bar, out[method]


@pytest.mark.slow  # a fresh interpreter, a fit on first use and a conversion
def test_adding_a_neuron_kind_is_its_neuron_and_one_entry_of_KINDS(tmp_path):
    """The registered kind is fitted on first use, saved, loaded and built by name, and
    ``convert(..., neuron='fs_walk')`` runs a model's tanh on it, within the fit's own error."""
    root = scratch_copy(tmp_path, "Adding a neuron kind")
    out = run_copy(root, """
        from spikingjelly_mbe.neurons.fs_walk import WalkFSNode
        from spikingjelly_mbe.ops import SpikingActivation

        ann = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        snn = convert(ann, [x], T=8, neuron="fs_walk")
        sites = [m for m in snn.modules() if isinstance(m, SpikingActivation)]
        site = sites[0]
        with torch.no_grad():
            lo, hi = site.fitted.domain
            grid = torch.linspace(lo, hi, 4001)
            out = [len(sites), site.fitted.kind, isinstance(site.node, WalkFSNode), site.fitted.errors["max_abs"],
                   float((site(grid) - torch.tanh(grid)).abs().max()), cosine(snn(x), ann(x))]
        print(json.dumps(out))
    """)
    count, kind, walk_node, fit_error, grid_error, cos = out
    assert (count, kind, walk_node) == (1, "fs_walk", True)
    assert 0 < grid_error <= 1.05 * fit_error and cos > 0.98, out


FLOAT_METHOD = '''"""The walkthrough's method: every operator is the float computation."""
import dataclasses

import torch
import torch.nn as nn

from ..ops.base import DEFAULT_MODE, DEFAULT_T


class Float(nn.Module):
    mbe_opaque = True

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@dataclasses.dataclass(frozen=True)
class FloatMethod:
    """Each site kind of :class:`~spikingjelly_mbe.conversion.SpikingMethod` from the float references."""

    T: int = DEFAULT_T
    mode: str = DEFAULT_MODE

    fully_spiking = False
    float_ops = ("every operation: the float reference",)
    linear_input_note = "the float weight layer"

    def validate(self) -> None:
        pass

    def activation(self, entry, params):
        return Float(lambda x: entry.reference(x, **params))

    def narrowed(self, entry, params, span):
        return None

    def norm(self, norm, shape, weight, bias, eps):
        return Float(lambda x: norm.reference(x, weight, bias, eps))

    def softmax(self, dim):
        return nn.Softmax(dim)

    def max_pool(self, kernel_size, stride=None, padding=0):
        return nn.MaxPool2d(kernel_size, stride, padding)

    def product(self):
        return Float(torch.mul)

    def matmul(self):
        return Float(torch.matmul)

    def linear_input(self, layer):
        return layer

    def network(self, model):
        return model
'''


@pytest.mark.slow  # a fresh interpreter and a Transformer conversion
def test_adding_a_method_is_its_package_and_one_entry_of_METHODS(tmp_path):
    """A package whose settings build every site kind of the protocol, registered in METHODS, converts a
    Transformer through the same engine: every site built by it, the output the ANN's; its options
    are convert's and an option it does not use raises."""
    root = scratch_copy(tmp_path, "Adding a method", files={"spikingjelly_mbe/floatmethod/__init__.py": FLOAT_METHOD})
    out = run_copy(root, """
        from spikingjelly_mbe.conversion import DEFAULTS, SpikingMethod
        from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
        from spikingjelly_mbe.floatmethod import FloatMethod

        ann = build("bert")
        batch = make_batch("bert", 4, seed=1)
        snn = convert(ann, [batch], method="float", T=4)
        with torch.no_grad():
            error = float((main_output(snn(**batch)) - main_output(ann(**batch))).abs().max())
        try:
            convert(ann, [batch], method="float", code="binary")
            refused = ""
        except ValueError as e:
            refused = str(e)
        print(json.dumps([isinstance(FloatMethod(), SpikingMethod), snn.ann2snn_recipe,
                          sorted({e.target for e in snn.spiking_report.replaced}), error, refused]))
    """)
    protocol, recipe, targets, error, refused = out
    assert protocol and recipe == "float_transformer" and {"Float", "Linear"} <= set(targets)
    assert error < 1e-5 and "method='float' does not use code" in refused, out
