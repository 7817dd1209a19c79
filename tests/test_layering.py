"""The import DAG (style.md §3.1), enforced by walking the AST of every module.

* ``pallas_kernels`` → jax, numpy, jaxtyping, stdlib (and itself, relatively);
* ``models`` → jax, flax, numpy, jaxtyping, stdlib (and itself): attention is injected, never imported;
* ``convert`` → ``models`` + safetensors, orbax, numpy, tqdm, jax, flax, stdlib (and itself);
* ``svg_jax`` method files (k-means, SVG1, SVG2, attention dispatch) may import ``pallas_kernels`` and
  each other, never the pipeline;
* ``svg_jax`` pipeline files (sampling, generation, presets, CLI, ``schedulers/``) may also import
  ``models`` and ``convert``; ``schedulers/`` itself uses only jax, numpy and the stdlib.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Source folder → the package it is installed as (pyproject's package-dir).
PACKAGES = {
    "svg_jax": "svg_jax",
    "pallas_kernels": "svg_jax.pallas_kernels",
    "models": "svg_jax.models",
    "convert": "svg_jax.convert",
}
LAYER_OF_PACKAGE = {
    "svg_jax.pallas_kernels": "pallas_kernels",
    "svg_jax.models": "models",
    "svg_jax.convert": "convert",
}
STDLIB = set(sys.stdlib_module_names)
THIRD_PARTY = {
    "pallas_kernels": {"jax", "numpy", "jaxtyping"},
    "models": {"jax", "flax", "numpy", "jaxtyping"},
    "convert": {"jax", "flax", "numpy", "safetensors", "orbax", "tqdm"},
}
INTERNAL = {
    "pallas_kernels": {"pallas_kernels"},
    "models": {"models"},
    "convert": {"convert", "models"},
    "svg_jax": {"svg_jax", "pallas_kernels"},
}
# svg_jax pipeline modules: the only svg_jax files that may use models and convert, and that method
# files may not import.
PIPELINE = {"cli", "denoisers", "embeddings", "generate", "loading", "presets", "sampling", "schedulers"}


def _is_pipeline(path: pathlib.Path) -> bool:
    rel = path.relative_to(ROOT / "svg_jax")
    return (rel.parts[0] if len(rel.parts) > 1 else rel.stem) in PIPELINE


def _is_scheduler(folder: str, path: pathlib.Path) -> bool:
    return folder == "svg_jax" and path.relative_to(ROOT / "svg_jax").parts[0] == "schedulers"


def _pipeline_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "svg_jax" and len(parts) > 1 and parts[1] in PIPELINE


def _modules() -> list[tuple[str, pathlib.Path]]:
    return [(folder, path) for folder in PACKAGES for path in sorted((ROOT / folder).rglob("*.py"))]


def _layer(module: str) -> str | None:
    """Internal layer of an absolute module name, or None for third-party/stdlib."""
    for package, layer in LAYER_OF_PACKAGE.items():
        if module == package or module.startswith(package + "."):
            return layer
    if module == "svg_jax" or module.startswith("svg_jax."):
        return "svg_jax"
    if module.split(".")[0] in ("models", "convert", "pallas_kernels"):
        return "<top-level " + module.split(".")[0] + ": import it as svg_jax.*>"
    return None


def _imports(folder: str, path: pathlib.Path) -> list[tuple[int, str, bool]]:
    """(line, absolute module, was_relative) of every import in the file, wherever it sits."""
    package = ".".join([PACKAGES[folder], *path.relative_to(ROOT / folder).parent.parts])
    if package.endswith("."):
        package = package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                out.append((node.lineno, module, True))
            else:
                out.append((node.lineno, node.module, False))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            out.append((node.lineno, "<dynamic import>", False))
    return out


def _violations(folder: str, path: pathlib.Path) -> list[str]:
    bad = []
    for line, module, relative in _imports(folder, path):
        where = f"{path.relative_to(ROOT)}:{line}: {module}"
        if module == "<dynamic import>":
            bad.append(f"{where} (dynamic imports hide dependencies)")
            continue
        layer = _layer(module)
        top = module.split(".")[0]
        if layer is None:
            if top in STDLIB:
                continue
            if _is_scheduler(folder, path) and top not in ("jax", "numpy", "jaxtyping"):
                bad.append(f"{where} (schedulers may use only jax, numpy, jaxtyping and the stdlib)")
            if folder in THIRD_PARTY and top not in THIRD_PARTY[folder]:
                bad.append(f"{where} ({folder} may use only {sorted(THIRD_PARTY[folder])} and the stdlib)")
            continue
        allowed = set(INTERNAL[folder])
        pipeline = folder == "svg_jax" and _is_pipeline(path)
        if pipeline:
            allowed |= {"models", "convert"}
        if _is_scheduler(folder, path):
            if layer != "svg_jax" or not module.startswith("svg_jax.schedulers"):
                bad.append(f"{where} (schedulers may use only jax, numpy, the stdlib and themselves)")
            continue
        facade = path == ROOT / "svg_jax" / "__init__.py"  # re-exports `load` lazily
        if folder == "svg_jax" and not pipeline and not facade and _pipeline_module(module):
            bad.append(f"{where} (a method module may not import the pipeline module {module})")
        elif layer not in allowed:
            bad.append(f"{where} ({folder} may not import {layer})")
        elif folder in ("pallas_kernels", "models") and layer == folder and not relative:
            bad.append(
                f"{where} (import {folder} modules relatively: an absolute svg_jax.* import "
                "pulls in the svg_jax package)"
            )
    return bad


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_import_layering(folder):
    files = [p for f, p in _modules() if f == folder]
    bad = [v for p in files for v in _violations(folder, p)]
    assert not bad, "import layering violated:\n" + "\n".join(bad)


def test_walker_sees_violations(tmp_path, monkeypatch):
    """The checker itself: a models file importing svg_jax.svg1 and torch is flagged twice."""
    (tmp_path / "models").mkdir()
    bad = tmp_path / "models" / "bad.py"
    bad.write_text("import torch\n\ndef f():\n    from svg_jax import svg1\n    from . import rope\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = _violations("models", bad)
    assert len(found) == 2 and "torch" in found[0] and "svg_jax" in found[1], found
