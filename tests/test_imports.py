import subprocess
import sys


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
