"""Every name the project imports from itself exists: module-level and function-local imports,
and attributes read off imported project modules (`tc.DETECTOR`), in every package, the tests
and the Triton models (whose `yolo_ops` / `onnx_session` are files the repository builder copies
in). A function-local import of a name that moved fails here, not when a user runs the command.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("compress", "tools", "loadtest", "tests")
FOLDERS = (*PACKAGES, "model_repository")
# Module names inside the Triton server -> the project module copied there under that name
COPIED = {"yolo_ops": "compress.detection", "onnx_session": "compress.onnx_session",
          "openvino_session": "compress.openvino_session"}
SERVER_ONLY = {"triton_python_backend_utils"}  # provided by Triton's Python backend at run time


def _project_module(name: str) -> str | None:
    top = name.split(".")[0]
    if top in COPIED:
        return COPIED[top] + name[len(top):]
    return name if top in PACKAGES else None


def _submodule(module_name: str, attribute: str) -> bool:
    module = importlib.import_module(module_name)
    return hasattr(module, "__path__") and importlib.util.find_spec(f"{module_name}.{attribute}") is not None


def _has(module_name: str, attribute: str) -> bool:
    return hasattr(importlib.import_module(module_name), attribute) or _submodule(module_name, attribute)


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _own_nodes(scope: ast.AST):
    """The nodes of a module or function body, not those of the functions nested in it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, FUNCTIONS):
            stack.extend(ast.iter_child_nodes(node))


def _check_scope(scope: ast.AST, inherited: dict[str, str], where, problems: list[str]) -> None:
    aliases = dict(inherited)  # name -> the project module it is bound to here
    nodes = list(_own_nodes(scope))
    assigned = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    if isinstance(scope, FUNCTIONS):
        assigned |= {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)}
    for name in assigned:
        aliases.pop(name, None)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = _project_module(alias.name)
                if module is None:
                    continue
                if importlib.util.find_spec(module) is None:
                    problems.append(f"{where}:{node.lineno}: no module {alias.name}")
                elif alias.asname:
                    aliases[alias.asname] = module
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            module = _project_module(node.module)
            if module is None or node.module.split(".")[0] in SERVER_ONLY:
                continue
            if importlib.util.find_spec(module) is None:
                problems.append(f"{where}:{node.lineno}: no module {node.module}")
                continue
            for alias in node.names:
                if not _has(module, alias.name):
                    problems.append(f"{where}:{node.lineno}: {node.module} has no {alias.name}")
                elif _submodule(module, alias.name):
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
    for node in nodes:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if not _has(aliases[node.value.id], node.attr):
                problems.append(f"{where}:{node.lineno}: {aliases[node.value.id]} has no {node.attr}")
    for node in nodes:
        if isinstance(node, FUNCTIONS):
            _check_scope(node, aliases, where, problems)


def unresolved(path: Path) -> list[str]:
    """`file:line: what` for every project import or module attribute in `path` that does not exist."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    problems: list[str] = []
    _check_scope(tree, {}, where, problems)
    return sorted(set(problems), key=lambda p: int(p.split(":")[1]))


FILES = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_every_project_import_resolves(path):
    assert unresolved(path) == []


def test_the_checker_finds_a_moved_name_inside_a_function(tmp_path):
    """The ImportError `make rollout-test` once hit: a name imported inside a function from a module
    it had moved out of."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tools.capacity_plan import capacity_for\n"
                      "    from loadtest.capacity import capacity_for\n"
                      "    from tools import triton_config as tc\n    return tc.DETECTOR, tc.NO_SUCH_NAME\n")
    assert unresolved(module) == [f"{module}:3: loadtest.capacity has no capacity_for",
                                  f"{module}:5: tools.triton_config has no NO_SUCH_NAME"]


def test_the_checker_reads_the_triton_models_copied_modules(tmp_path):
    module = tmp_path / "model.py"
    module.write_text("import triton_python_backend_utils as pb_utils\n"
                      "from yolo_ops import prepare_image, usable_corez\n")
    assert unresolved(module) == [f"{module}:2: yolo_ops has no usable_corez"]
