"""Imports run one way down the layers (DESIGN.md): a lower layer never imports a higher one."""
import ast
import subprocess
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "spikingjelly_mbe"
# lower number = lower layer; a module may import its own layer and the layers below it. The methods
# (mbe, ecmt: each its settings and operator factory, ECMT its neuron and operators too) sit below the
# method-neutral conversion engine, which names them in one registration (conversion/method.py).
LAYERS = {"cache": 0, "version": 0, "neurons": 0, "kernels": 0, "data": 0, "activations": 0, "fitting": 1, "models": 1, "ops": 2,
          "energy": 3, "mbe": 4, "ecmt": 4, "conversion": 5}
METHODS = ("mbe", "ecmt")
REGISTRATION = PACKAGE / "conversion" / "method.py"


def layer_of(module: str) -> str:
    """``spikingjelly_mbe.ops.products`` -> ``'ops'``; the package root itself -> ``''``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def runtime_nodes(tree: ast.AST) -> list:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def module_of(path: Path) -> str:
    """``.../spikingjelly_mbe/ops/products.py`` -> ``'spikingjelly_mbe.ops.products'`` (a package: its name)."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path, submodules: bool = False) -> list:
    """Absolute names of the spikingjelly_mbe modules a source file imports (relative imports resolved);
    ``submodules``: ``from package import module`` names the module, not the package."""
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if not name.startswith("spikingjelly_mbe"):
                continue
            named = [f"{name}.{a.name}" for a in node.names]
            modules = [m for m in named if (PACKAGE.parent / m.replace(".", "/")).with_suffix(".py").exists()
                       or (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()]
            found += modules if submodules and len(modules) == len(named) else [name] + (modules if submodules else [])
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


def test_methods_are_apart_and_the_engine_names_them_once():
    """No method imports another, and in the conversion engine only the registration imports a method."""
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = layer_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for name in imports(path):
            there = layer_of(name)
            if there in METHODS and here != there and (here in METHODS or here == "conversion" and path != REGISTRATION):
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert violations == []


def test_no_import_cycles():
    """No module imports, at any depth and also from inside a function, a module that imports it back."""
    graph = {module_of(p): set(imports(p, submodules=True)) - {module_of(p)} for p in PACKAGE.rglob("*.py")}
    cycles = []
    for start in graph:
        seen, frontier = set(), set(graph[start])
        while frontier:
            seen |= frontier
            frontier = {m for f in frontier for m in graph.get(f, ())} - seen
        if start in seen:
            cycles.append(start)
    assert cycles == []


def test_loading_fits_never_imports_the_fitting_optimiser():
    """Operators, methods and conversion load fits (``fitting.library``) without importing the optimiser
    (``fitting.routine``, re-exported by the ``fitting`` package); the package root injects it for fits
    on first use. The loader takes the cache folder from the bottom layer, not from ``data``."""
    optimiser = {"spikingjelly_mbe.fitting", "spikingjelly_mbe.fitting.routine"}
    allowed = {PACKAGE / "__init__.py", PACKAGE / "fitting" / "__init__.py", PACKAGE / "fitting" / "build_library.py"}
    violations = [f"{path.relative_to(PACKAGE)} imports {name}" for path in sorted(PACKAGE.rglob("*.py"))
                  if path not in allowed for name in imports(path) if name in optimiser]
    violations += [f"fitting/{path.name} imports {name}" for path in sorted((PACKAGE / "fitting").glob("*.py"))
                   for name in imports(path) if layer_of(name) == "data"]
    assert violations == []


def test_low_layers_do_not_load_heavy_packages():
    """``import spikingjelly_mbe.ops`` (and the layers below), the energy report and the methods load
    neither transformers nor timm."""
    code = ("import sys, spikingjelly_mbe.neurons, spikingjelly_mbe.fitting, spikingjelly_mbe.ops, "
            "spikingjelly_mbe.energy, spikingjelly_mbe.mbe, spikingjelly_mbe.ecmt; "
            "print(sorted(m for m in ('transformers', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"the low layers load {out}"
