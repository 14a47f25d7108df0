"""The floor plan (docs/ARCHITECTURE.md) as checks on the source: imports point down, the foundation
imports nothing of medserve, demonstration code stays apart, modules stay small, and nothing reaches
around ``InferenceService`` to the registry.

Imports are read with ``ast``, at module level and inside functions alike; imports under
``if TYPE_CHECKING:`` are annotations only and do not count."""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "medserve"

#: Each floor may import the floors listed for it (and itself). Top-level modules count as floors too.
ALLOWED: dict[str, set[str]] = {
    "values": set(),
    "store": {"values"},
    "clinical": {"values"},
    "protocol": {"values"},
    "security": {"values", "store"},
    "repository": {"values", "store", "security"},
    "runtimes": {"values", "repository"},
    "scheduling": {"values", "runtimes"},
    "audit": {"values", "store"},
    "monitoring": {"values", "store"},
    "hardware": {"values", "store", "repository", "runtimes", "scheduling"},
    "core": {
        "values",
        "store",
        "security",
        "repository",
        "runtimes",
        "scheduling",
        "audit",
        "monitoring",
        "hardware",
        "settings",
        "trust",
    },
    "settings": {"values", "scheduling", "settings_file"},
    "settings_file": {"values"},
    "trust": {"values", "store", "security", "repository", "audit", "settings"},
    "assembly": {
        "values",
        "store",
        "security",
        "repository",
        "runtimes",
        "scheduling",
        "audit",
        "monitoring",
        "hardware",
        "core",
        "settings",
        "trust",
    },
    "imaging": {
        "values",
        "store",
        "clinical",
        "core",
        "security",
        "audit",
        "transport_out",
        "settings",
        "explanations",
    },
    "streaming": {"values", "store", "clinical", "core", "security", "audit", "monitoring"},
    "planning": {"values", "store", "repository", "hardware"},
    "cluster": {"values", "store"},
    "edge": {"values", "store", "security", "repository", "audit", "core", "settings"},
    "explanations": {"values", "store", "clinical", "core", "repository", "audit", "settings"},
    "console": {
        "values",
        "store",
        "core",
        "hardware",
        "audit",
        "imaging",
        "jobs",
        "streaming",
        "planning",
        "cluster",
    },
    "jobs": {
        "explanations",
        "values",
        "store",
        "clinical",
        "core",
        "security",
        "audit",
        "imaging",
        "assembly",
        "settings",
        "trust",
        "repository",
    },
}
#: The doors, the top floor (the command line, the server and its start-up checks and logging) and the
#: demonstration package may import anything below them.
UNRESTRICTED = {"transport", "server", "startup", "logs", "cli", "demo", "__main__", "__init__"}
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported medserve module, dotted
    in_function: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_generated" not in path.parts and "migrations" not in path.parts:
            yield path


@functools.cache
def _imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for path in _sources():
        module = _module_name(path)
        _collect(ast.parse(path.read_text(encoding="utf-8")), module, False, found)
    return tuple(found)


def _collect(node: ast.AST, module: str, in_function: bool, found: list[Import]) -> None:
    """One walk of the tree, knowing whether it is inside a function; ``if TYPE_CHECKING:`` skipped."""
    for child in _statements(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:
                _collect(other, module, in_function, found)
            continue
        targets: list[str] = []
        if isinstance(child, ast.Import):
            targets = [alias.name for alias in child.names]
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            targets = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
        for target in targets:
            if target.split(".")[0] == "medserve" and _exists(target):
                found.append(Import(module, target, in_function))
        inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        _collect(child, module, inside, found)


def _statements(node: ast.AST) -> Iterator[ast.stmt]:
    """The statements directly inside ``node`` (imports are statements: expressions need no visit)."""
    for field in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, field, ()):
            if isinstance(child, ast.stmt):
                yield child
            elif isinstance(child, ast.ExceptHandler | ast.match_case):
                yield from child.body


@functools.cache
def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_down_the_floor_plan() -> None:
    wrong = sorted(
        f"{i.source} imports {i.target}"
        for i in _imports()
        if (source := _floor(i.source)) not in UNRESTRICTED
        and (target := _floor(i.target)) not in {source, "__init__"}
        and target not in ALLOWED.get(source, set())
    )
    assert not wrong, "imports against the floor plan (docs/ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_floors_are_all_named() -> None:
    floors = {_floor(_module_name(path)) for path in _sources()}
    assert floors <= set(ALLOWED) | UNRESTRICTED, floors - set(ALLOWED) - UNRESTRICTED


def test_at_most_one_package_pair_imports_each_other() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for i in _imports():
        if _floor(i.source) != _floor(i.target):
            edges[_floor(i.source)].add(_floor(i.target))
    pairs = sorted(
        {tuple(sorted((a, b))) for a, targets in edges.items() for b in targets if a in edges.get(b, set())}
    )
    assert len(pairs) <= 1, pairs


def test_no_module_cycle_hides_behind_a_function_level_import() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for i in _imports():
        target = i.target if _is_module(i.target) else i.target.rsplit(".", 1)[0]
        if target != i.source:
            graph[i.source].add(target)
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert not cycles, "import cycles between modules:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists()


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    nodes = set(graph) | {t for targets in graph.values() for t in targets}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_the_foundation_imports_nothing_of_medserve() -> None:
    assert not [i for i in _imports() if _floor(i.source) == "values" and _floor(i.target) != "values"]


def test_nothing_in_the_product_imports_the_demonstration_package() -> None:
    wrong = sorted(
        f"{i.source} imports {i.target}"
        for i in _imports()
        if _floor(i.target) == "demo" and _floor(i.source) not in {"demo", "cli"}
    )
    assert not wrong, wrong


def test_no_module_outside_the_demonstration_package_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in _sources()
        if "demo" not in path.relative_to(PACKAGE).parts
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


def test_only_the_dataplane_and_its_builder_reach_the_registry() -> None:
    pattern = re.compile(r"\bservice\.registry\b|\bself\.service\.registry\b")
    wrong = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in _sources()
        if _floor(_module_name(path)) not in {"core", "assembly"}
        and pattern.search(path.read_text(encoding="utf-8"))
    )
    assert not wrong, wrong


def test_test_modules_have_unique_names_across_the_tiers() -> None:
    """pytest imports test modules by their basename: one name in both tiers stops the whole run."""
    tests = PACKAGE.parent / "tests"
    names = [path.name for path in tests.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
