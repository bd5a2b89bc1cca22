import ast
import subprocess
import sys
from pathlib import Path


def test_library_imports_without_prefect():
    code = (
        "import sys, collide, collide.mnist, collide.exact, collide.store, collide.figures;"
        "assert 'prefect' not in sys.modules, 'collide imported prefect'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_is_small_and_real():
    import collide

    assert 8 <= len(collide.__all__) <= 15
    for name in collide.__all__:
        assert hasattr(collide, name), name


def _collide_imports(path: Path) -> set[str]:
    """Every collide module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("collide"):
            found |= {f"collide.{a.name}" for a in node.names} if node.module == "collide" else {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("collide")}
    return found


def test_the_library_has_no_import_cycles():
    root = Path(__file__).resolve().parent.parent / "collide"
    graph = {f"collide.{p.stem}": _collide_imports(p) - {f"collide.{p.stem}"}
             for p in root.glob("*.py") if p.stem != "__init__"}
    # Kahn's algorithm: what cannot be ordered lies on a cycle.
    left = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    while ready := [m for m, deps in left.items() if not deps]:
        for m in ready:
            del left[m]
        for deps in left.values():
            deps.difference_update(ready)
    assert not left, f"import cycles among {sorted(left)}"
