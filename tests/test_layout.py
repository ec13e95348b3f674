"""The tree's shape: no import circle among our modules, no import from a lower layer to a
higher one, and the node files stay self-contained.

Read with the standard library's ``ast``, nothing imported: every ``import`` of one of our
modules counts, also inside functions; under ``if TYPE_CHECKING:`` (never run) only where a
test says so.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from node_pythons import find_python

pytestmark = pytest.mark.every_python(
    "what importing the package loads depends on this Python's installed packages"
)

PACKAGE = Path(__file__).resolve().parents[1] / "aml_debug_magics"
NODE = PACKAGE / "node"

# The package's folders and top-level modules, lowest first, as the data flows (a magic, a
# request, a session, a target, the node): a module imports from its own layer and the layers
# below, never from one above. The session sits below targets/, deploy/ and ui/: it defines the
# Target and View it is handed (the magics pass it the target's factory, from dispatch.py), and
# those name the session in their type hints.
LAYERS = (
    ("node", "examples"),  # what travels to the node (stdlib + debugpy); a tutorial's script
    ("records", "errors", "redaction", "failures", "ports", "reaper", "logs", "launch"),
    ("sources",),  # readers of what the user built
    ("relay",),  # the notebook's end of the storage relay
    ("debugger",),  # the debugger inside the notebook
    ("session",),
    ("targets",),  # where steps run
    ("deploy",),  # where scoring scripts run
    ("dispatch", "ui"),  # a typed request's target; the session's view
    ("magics", "__main__"),
    ("",),  # the package itself: load_ipython_extension
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, *, for_types: bool = False) -> set[str]:
    """Our modules ``path`` imports when it runs, at the top or inside a function
    (``TYPE_CHECKING`` blocks left out unless ``for_types``)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if for_types:
            break
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # "from package import module" imports the module
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules} - {module_name(path)}


def import_graph(*, for_types: bool = False) -> dict[str, set[str]]:
    return {module_name(p): imports_of(p, for_types=for_types) for p in PACKAGE.rglob("*.py")}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), or a module importing
    itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for other in graph.get(name, ()):
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the package folder or top-level module ``module`` is in."""
    top = module.removeprefix("aml_debug_magics").lstrip(".").split(".")[0]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layout.py")


def climbs(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Each import (importer, imported) from a lower layer to a higher one."""
    return sorted(
        (module, other) for module, imported in graph.items() for other in imported
        if layer_of(other) > layer_of(module)
    )


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_no_circle_even_through_type_hints():
    """The layers read one way from the tree: a target names the session in its type hints, so
    the session never imports a target (the magics hand it the target factory)."""
    assert circles(import_graph(for_types=True)) == []


def test_no_import_climbs_to_a_higher_layer():
    """Type-only imports count too: a hint that names a higher layer is a dependency a reader
    must follow up the tree, even though it never runs."""
    assert climbs(import_graph(for_types=True)) == []


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_the_layer_check_can_fail():
    """The import that once climbed: the targets' package choosing a scoring script's target."""
    graph = {"aml_debug_magics.targets": {"aml_debug_magics.deploy", "aml_debug_magics.errors"},
             "aml_debug_magics.deploy": {"aml_debug_magics.targets.local"}}
    assert climbs(graph) == [("aml_debug_magics.targets", "aml_debug_magics.deploy")]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("aml_debug_magics.somewhere_new")


def test_a_function_level_import_counts(tmp_path):
    module = PACKAGE / "session.py"
    inside = {name for name in imports_of(module) if name.startswith("aml_debug_magics.launch")}
    assert inside == {"aml_debug_magics.launch"}  # imported inside attach_config only


def test_the_circle_check_can_fail():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_plain_types_import_nothing_of_ours():
    assert imports_of(PACKAGE / "records.py") == set()


def test_what_travels_to_the_node_imports_only_the_standard_library_and_debugpy():
    """Each node file needs only the other node files (under the package or shipped names),
    the standard library and debugpy: anything else is imported in a ``try`` with a fallback."""
    import sys

    allowed_ours = {module_name(p) for p in NODE.glob("*.py")} | {"aml_debug_magics.node"}
    node_files = {p.stem for p in NODE.glob("*.py")}  # imported from their own folder
    for path in NODE.glob("*.py"):
        tree = ast.parse(path.read_text())
        optional = {  # tried, with a fallback: azureml.core to tag the run where it is installed
            id(child) for node in ast.walk(tree) if isinstance(node, ast.Try)
            for stmt in node.body for child in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "aml_debug_magics":
                    assert name in allowed_ours | {"aml_debug_magics"}, (path.name, name)
                elif not top.startswith("aml_debug_") and top not in node_files:
                    assert top in sys.stdlib_module_names | {"debugpy", "pydevd"}, (path.name, name)


def test_the_node_files_parse_on_python_3_8():
    python = find_python("3.8")
    if python is None:
        pytest.skip("Python 3.8 is not on this machine (pyenv install 3.8)")
    files = [str(p) for p in NODE.glob("*.py")]
    compiled = subprocess.run(
        [python, "-c", "import ast, sys\nfor f in sys.argv[1:]: ast.parse(open(f).read(), f)",
         *files], capture_output=True, text=True,
    )
    assert compiled.returncode == 0, compiled.stderr
    assert len(files) >= 3
