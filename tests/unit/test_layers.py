"""The packages stand in one-way layers: compress/ (model library and shared core) <- tools/
(Triton: configs, repository, server, clients, parity, demo) <- loadtest/.

Read from the source, lazy imports inside functions included, so a shortcut taken anywhere fails
here with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("compress", "tools", "loadtest")  # each may import only the ones before it
PROJECT = {*LAYERS, "tests", "model_repository"}
# Copied beside the Triton Python models by the repository builder: inside the server they are
# plain modules, so they may import no project package at all.
COPIED_INTO_TRITON = ("compress/detection.py", "compress/onnx_session.py")


def project_imports(path: Path) -> list[tuple[str, int]]:
    """(top-level project package, line) for every import in the file, however deeply nested."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PROJECT]
    return sorted(found, key=lambda item: item[1])


def violations(package: str) -> list[str]:
    allowed = set(LAYERS[:LAYERS.index(package) + 1])
    return [f"{path.relative_to(ROOT)}:{line} imports {imported}"
            for path in sorted((ROOT / package).rglob("*.py"))
            for imported, line in project_imports(path) if imported not in allowed]


@pytest.mark.parametrize("package", LAYERS)
def test_layer_imports_only_itself_and_lower_layers(package):
    assert violations(package) == []


@pytest.mark.parametrize("relative", COPIED_INTO_TRITON)
def test_modules_copied_into_the_server_are_self_contained(relative):
    assert project_imports(ROOT / relative) == []


def test_the_checker_sees_lazy_imports(tmp_path):
    """The rule has teeth: an import hidden in a function body is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    if True:\n        from tools.client import collect_images\n    import loadtest.run\n")
    assert project_imports(module) == [("tools", 3), ("loadtest", 4)]
