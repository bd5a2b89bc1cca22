import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.support import PROJECT


def test_library_imports_without_prefect():
    code = (
        "import sys, collide, collide.experiments.mnist, collide.solvers.exact, collide.results.store,"
        " collide.results.figures;"
        "assert 'prefect' not in sys.modules, 'collide imported prefect'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_is_small_and_real():
    import collide

    # The entry points, their results, the solvers with their configs, the layer taps, the
    # collision set's sizes (collision_geometry, collision_size, GeometryConfig) and the scan.
    assert 8 <= len(collide.__all__) <= 23
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
    graph = {}
    for path in root.rglob("*.py"):
        name = ".".join(("collide", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        graph[name] = _collide_imports(path) - {name}
    assert len(graph) > 30, "the scan found too few modules"
    # Kahn's algorithm: what cannot be ordered lies on a cycle.
    left = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    while ready := [m for m, deps in left.items() if not deps]:
        for m in ready:
            del left[m]
        for deps in left.values():
            deps.difference_update(ready)
    assert not left, f"import cycles among {sorted(left)}"


def test_the_layers_contract_holds():
    """pyproject's import-linter contracts: each layer imports only from layers below it, in
    the library and inside the piecewise-linear core and the solvers."""
    root = PROJECT
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_importing_collide_leaves_matplotlib_backend_alone():
    code = (
        "import matplotlib; before = matplotlib.get_backend();"
        "import collide, collide.results.figures, collide.results.report, collide.results.tables;"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": "svg"})
