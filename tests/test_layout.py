"""The code base's shape: no import cycles between modules, no module grown past 450 lines
outside the ported model definitions. Reads the sources only (ast), imports nothing: seconds."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# package name -> its folder in the repository (pyproject.toml's package-dir)
PACKAGES = {"idguardian_jax": "idguardian_jax", "idguardian_jax.encoders": "encoders",
            "idguardian_jax.configs": "configs"}
MAX_LINES = 450
# Ported model definitions (a network's layers, or an importer of a graph format, held to
# equivalence with the upstream implementation): exempt from the size rule.
PORTED_MODELS = {
    "idguardian_jax/faces/detect.py",          # dlib's MMOD detector, bit-exact
    "idguardian_jax/diffusion/unet.py",        # diffusers' UNet2DConditionModel
    "idguardian_jax/checkpoints/tfjs.py",      # the TF.js graph importer (mobileface, faceres)
    "encoders/arcface.py",                     # InsightFace's ResNet (ONNX)
}


def _modules() -> dict[str, str]:
    """dotted module name -> file path, for every .py file of the project's packages."""
    out = {}
    for pkg, top in PACKAGES.items():
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), os.path.join(ROOT, top))[:-3]
                    parts = [p for p in rel.split(os.sep) if p != "__init__"]
                    name = ".".join([pkg] + parts)
                    if name not in out:  # a mapped folder wins over a same-named subfolder
                        out[name] = os.path.join(folder, f)
    return out


def _imports(name: str, path: str, known: set[str]) -> set[str]:
    """The project's modules that `name` imports, at module level or inside functions.
    `from a import b` counts as importing a.b when that is a module, else a itself; importing a
    submodule is not counted as importing its parent packages."""
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in known:
                    found.add(sub)
                elif mod in known:
                    found.add(mod)
    found.discard(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def test_the_module_graph_is_read_right():
    g = _graph()
    assert "idguardian_jax.writer" in g["idguardian_jax.jobs"]
    assert "idguardian_jax.settings" in g["idguardian_jax.protect"]
    # `from idguardian_jax import encoders as encoder_registry` (the folder encoders/)
    assert "idguardian_jax.encoders" in g["idguardian_jax.protect"]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_jobs_and_protect_meet_only_through_the_writer():
    g = _graph()
    assert "idguardian_jax.protect" not in g["idguardian_jax.jobs"]
    assert "idguardian_jax.jobs" not in g["idguardian_jax.writer"]
    importers = {n for n, deps in g.items() if "idguardian_jax.jobs" in deps}
    assert importers <= {"idguardian_jax.protect", "idguardian_jax.cli.protect"}, importers


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_450_lines_outside_ported_models(name):
    path = _modules()[name]
    rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
    if rel in PORTED_MODELS:
        pytest.skip("ported model definition")
    with open(path, encoding="utf-8") as fh:
        n = sum(1 for _ in fh)
    assert n <= MAX_LINES, f"{rel}: {n} lines (at most {MAX_LINES} outside ported models)"


def test_every_package_folder_is_installed_under_the_project_name():
    """pyproject.toml lists every package (encoders/ and configs/ as idguardian_jax.encoders and
    idguardian_jax.configs), so nothing generic lands in site-packages and no folder is left out."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        tool = tomllib.load(fh)["tool"]["setuptools"]
    assert tool["package-dir"] == {k: v for k, v in PACKAGES.items() if k != v}
    found = {n for n, p in _modules().items() if p.endswith("__init__.py")}
    assert set(tool["packages"]) == found
    assert not any(p in ("encoders", "configs") or p.split(".")[0] != "idguardian_jax"
                   for p in tool["packages"])
