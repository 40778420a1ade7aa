"""Imports run one way down the layers (DESIGN.md): a lower layer never imports a higher one."""
import ast
import subprocess
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "spikingjelly_mbe"
# lower number = lower layer; a module may import its own layer and the layers below it
LAYERS = {"cache": 0, "neurons": 0, "kernels": 0, "data": 0, "fitting": 1, "models": 1, "ops": 2, "energy": 3,
          "conversion": 4}


def layer_of(module: str) -> str:
    """``spikingjelly_mbe.ops.products`` -> ``'ops'``; the package root itself -> ``''``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list:
    """Absolute names of the spikingjelly_mbe modules a source file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found += [name] if name.startswith("spikingjelly_mbe") else []
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("spikingjelly_mbe")]
    return found


def test_every_subpackage_has_a_layer():
    subpackages = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
                   if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert subpackages <= set(LAYERS), f"give these a layer: {sorted(subpackages - set(LAYERS))}"


def test_no_import_from_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = layer_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if here not in LAYERS:
            continue  # the package root re-exports the public API
        for name in imports(path):
            there = layer_of(name)
            if there in LAYERS and LAYERS[there] > LAYERS[here]:
                violations.append(f"{path.relative_to(PACKAGE)} ({here}) imports {name} ({there})")
    assert violations == []


def test_low_layers_do_not_load_heavy_packages():
    """``import spikingjelly_mbe.ops`` (and the layers below) loads neither transformers nor timm."""
    code = ("import sys, spikingjelly_mbe.neurons, spikingjelly_mbe.fitting, spikingjelly_mbe.ops; "
            "print(sorted(m for m in ('transformers', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"the low layers load {out}"
