"""The house's rules, read from the source with ``ast``: no import circle in binarydm (function-level
imports included), thin entry points that nobody imports."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("binarydm.train", "binarydm.sample", "binarydm.fid", "binarydm.export")
MAX_ENTRY_LINES = 60


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_modules(path: Path, name: str, known: set) -> set:
    """The modules of ``known`` that ``path`` (module ``name``) imports anywhere in its body, functions included
    (``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(target: str) -> None:
        while target and target not in known:  # binarydm.x.attr -> binarydm.x
            target = target.rpartition(".")[0]
        if target:
            found.add(target)

    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                add(full if full in known else target)
    return found


def import_graph(package_dir: Path, root: Path) -> dict:
    files = {module_name(p, root): p for p in sorted(package_dir.rglob("*.py"))}
    known = set(files)
    return {name: imported_modules(path, name, known) - {name} for name, path in files.items()}


def find_cycle(graph: dict):
    """One import circle of ``graph`` as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_binarydm_has_no_import_circle():
    cycle = find_cycle(import_graph(ROOT / "binarydm", ROOT))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f\n    return f\n")
    (pkg / "c.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(pkg, tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub"] == {"pkg.sub.b"} and graph["pkg.c"] == set()
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(pkg, tmp_path)) is None


def _modules_under(*folders):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path


def test_nothing_in_the_library_or_tools_imports_an_entry_point():
    library = import_graph(ROOT / "binarydm", ROOT)
    known = set(library)
    offenders = []
    for path in _modules_under("binarydm", "tools"):
        name = module_name(path, ROOT)
        if name in ENTRY_POINTS:
            continue
        for target in imported_modules(path, name, known) & set(ENTRY_POINTS):
            offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not offenders, "; ".join(offenders)


def test_tests_take_only_main_from_an_entry_point():
    """Tests run an entry point through ``main`` (or a subprocess); its logic is tested in the library."""
    offenders = []
    for path in _modules_under("tests"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import) and any(a.name in ENTRY_POINTS for a in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports the module")
            elif isinstance(node, ast.ImportFrom) and node.module in ENTRY_POINTS \
                    and any(a.name != "main" for a in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports "
                                 f"{', '.join(a.name for a in node.names)} from {node.module}")
    assert not offenders, "; ".join(offenders)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_are_thin(entry):
    path = ROOT / (entry.replace(".", "/") + ".py")
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_ENTRY_LINES, f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_ENTRY_LINES})"
