"""The package's shape: layers without loops, no reaching into another package's private names.

Every ``import`` of every module under ``src/internimage`` is parsed, those written inside functions included (a
lazy import is still a dependency). The checks:

* no import cycle between modules;
* imports only go down the layers of :data:`LAYERS` (a task package never imports another task package);
* no module imports an underscore name (``_foo``) or an underscore module from another top-level package.

:func:`layout_problems` is tested on small trees written here too, so each check is known to fail when it should.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Top-level entries of ``internimage`` by layer: a module may import from its own layer's package or lower
#: layers only. Task packages share a layer but never import each other. The root ``__init__`` (the public API)
#: may import from every layer; only the top layer imports it.
LAYERS: list[set[str]] = [
    {"io"},
    {"ops"},
    {"models"},
    {"data", "engine"},
    {"plotting"},
    {"classification", "detection", "segmentation", "occupancy"},
    {"export"},
    {"commands", "cli", "__main__"},
]
#: Packages of one layer that may not import each other.
SIBLINGS_APART = {"classification", "detection", "occupancy", "segmentation"}


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root/package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, str, int]]:
    """``(imported module, imported name or '', line)`` for every import of the package in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    root = module.split(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub, "", node.lineno) if sub in known else (target, alias.name, node.lineno)


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(top: str) -> int | None:
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layout_problems(root: Path, package: str = "internimage") -> list[str]:
    """Every cycle, upward import and private import under ``root/package``, one line each."""
    known = _modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in known}
    problems = []
    for module, path in known.items():
        for target, name, line in _imports(module, path, known):
            where = f"{path.relative_to(root)}:{line}"
            if target != module:
                graph[module].add(target)
            src_top, dst_top = _top(module), _top(target)
            if src_top == dst_top or src_top == "":  # the root package re-exports the public API from every layer
                continue
            src_layer, dst_layer = _layer(src_top), (len(LAYERS) - 1 if dst_top == "" else _layer(dst_top))
            if src_layer is None or dst_layer is None:
                problems.append(f"{where}: {src_top or dst_top!r} has no layer in LAYERS")
            elif dst_layer > src_layer or (dst_layer == src_layer and {src_top, dst_top} <= SIBLINGS_APART):
                problems.append(f"{where}: {module} imports {target} from a layer above or beside it")
            private = [p for p in [*target.split(".")[1:], name] if p.startswith("_") and not p.startswith("__")]
            if private:
                problems.append(f"{where}: {module} imports the private {'.'.join([target, name]).rstrip('.')}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return list(dict.fromkeys(problems))


def test_the_package_has_no_cycle_no_upward_and_no_private_import() -> None:
    problems = layout_problems(SRC)
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"internimage/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        # An upward import written inside a function still counts.
        (
            {"internimage/ops/__init__.py": "def f():\n    from ..models import x\n", "internimage/models/x.py": ""},
            "from a layer above",
        ),
        (
            {"internimage/detection/a.py": "from ..segmentation import b\n", "internimage/segmentation/b.py": ""},
            "beside",
        ),
        ({"internimage/export/a.py": "from ..models.m import _SPECS\n", "internimage/models/m.py": ""}, "private"),
        (
            {
                "internimage/models/a.py": "from . import b\n",
                "internimage/models/b.py": "def f():\n    from . import a\n",
            },
            "import cycle: internimage.models.a -> internimage.models.b",
        ),
    ],
)
def test_each_check_fails_when_it_should(tmp_path: Path, files: dict[str, str], needle: str) -> None:
    problems = layout_problems(_tree(tmp_path, files))
    assert any(needle in p for p in problems), problems


def test_downward_and_private_within_a_package_are_fine(tmp_path: Path) -> None:
    files = {
        "internimage/models/a.py": "from ..ops import k\nfrom ._private import x\n",
        "internimage/models/_private.py": "",
        "internimage/ops/k.py": "",
        "internimage/commands/c.py": "from ..detection import d\nfrom ..export import e\n",
        "internimage/detection/d.py": "",
        "internimage/export/e.py": "",
    }
    assert layout_problems(_tree(tmp_path, files)) == []


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("internimage.detection", "DetTrainConfig", "DetectionConfig"),
        ("internimage.detection", "DetTask", "DetectionTask"),
        ("internimage.segmentation", "SegTrainConfig", "SegmentationConfig"),
        ("internimage.segmentation", "SegTask", "SegmentationTask"),
    ],
)
def test_renamed_public_names_say_where_they_went(module: str, old: str, new: str) -> None:
    with pytest.raises(ImportError, match=f"{module}.{old} is now {module}.{new}"):
        exec(f"from {module} import {old}")  # noqa: S102
    assert hasattr(importlib.import_module(module), new)
