"""The package's layout holds: imports flow one way, no two modules import each other (however
far round), heavy frameworks stay in their layer, and no module grows past 400 lines. Every
import counts, also the ones inside functions."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rhmscale"

# cli -> tuning -> report -> sweeps, results -> training -> models, rhm -> store, config
# (config_io, errors). A module may import its own layer part and anything below it; siblings
# (models and rhm, sweeps and results) do not import each other. report presents what results
# computes (figures, tables, report.md, the W&B summary): results never imports it.
RANK = {
    "__main__": 7,  # `python -m rhmscale`: the command, above everything
    "cli": 6,
    "tuning": 5,
    "report": 4,
    "sweeps": 3,
    "results": 3,
    "training": 2,
    "models": 1,
    "rhm": 1,
    "store": 0,
    "config": 0,
    "bounds": 0,
    "config_io": 0,
    "errors": 0,
    "__init__": 0,
    "formula": 0,
    "kinds": 0,
    "labels": 0,
    "periodic": 0,
    "sequences": 0,
}
# Third-party frameworks and the only parts that may import them.
FRAMEWORKS = {
    "lightning": {"training"},
    "submitit": {"sweeps", "tuning"},
    "optuna": {"tuning"},
    "wandb": {"store", "results", "report"},  # results: the offline-log reader (wandb_log.py)
    "matplotlib": {"report", "tuning"},
    "torch": {"training", "models", "cli", "sweeps"},  # cli/sweeps: inside functions only
}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno, id(node) in top))
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in it): `from a import b` counts
    as importing a.b where b is a module, else a; relative imports are resolved. Importing a.b
    runs a's __init__ too, but that is Python's order, not a dependency: it is not counted."""
    names = {module_name(p): p for p in modules()}
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, level - 1 up
                    base = f"{package.rsplit('.', node.level - 1)[0]}.{base}".rstrip(".")
                targets |= {
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base
                    for alias in node.names
                }
        for target in targets:
            while target and target not in names:  # rhmscale.x.attr -> rhmscale.x
                target = target.rpartition(".")[0]
            if target and target != name:
                graph.setdefault(name, set()).add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def test_imports_flow_one_way():
    wrong = []
    for path in modules():
        part = part_of(path)
        for name, line, _ in imports(path):
            if not name.startswith("rhmscale.") and name != "rhmscale":
                continue
            target = name.split(".")[1] if "." in name else "__init__"
            if target != part and RANK[target] >= RANK[part] and RANK[part] > 0:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({part}) imports {name}")
            if RANK[part] == 0 and RANK[target] > 0:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({part}) imports {name}")
    assert not wrong, "imports running back up a layer:\n" + "\n".join(wrong)


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "modules importing each other: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert "rhmscale.report.plots" in import_graph()["rhmscale.cli.results"]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_frameworks_stay_in_their_layer(framework):
    allowed = FRAMEWORKS[framework]
    wrong = []
    for path in modules():
        part = part_of(path)
        for name, line, at_top in imports(path):
            if name.split(".")[0] != framework:
                continue
            lazy_only = part in {"cli", "sweeps"} and framework == "torch"
            if part not in allowed or (lazy_only and at_top):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert not wrong, f"{framework} outside {sorted(allowed)}:\n" + "\n".join(wrong)


def test_every_part_is_known_and_no_module_is_over_400_lines():
    assert {part_of(p) for p in modules()} <= set(RANK)
    long = [
        f"{p.relative_to(PACKAGE)}: {n}"
        for p in modules()
        if (n := len(p.read_text().splitlines())) > 400
    ]
    assert not long, long
