"""The README's "Your own model" example runs as printed, on a model collide has never seen."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _section_code(title: str) -> str:
    text = README.read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, f"expected one python block under '{title}'"
    return blocks[0]


def test_the_own_model_example_runs_and_finds_valid_polytopes():
    code = _section_code("Your own model")
    # The user's model must come back as it went in: same mode, same weights.
    head, tail = code.split("print([s.name for s in collide.layers", 1)
    snapshot = "before = {k: v.clone() for k, v in model.state_dict().items()}\n"
    code = head + snapshot + "print([s.name for s in collide.layers" + tail
    check = (
        "\nassert model.training and all(v.requires_grad for v in model.parameters())\n"
        "assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())\n"
        "assert bool(poly.valid.all()) and bool(exact.valid.all())\n"
        "assert m.success_rate == m.success_rate and 0 <= m.success_rate <= 1\n"
        "assert float(exact.rel_error.max()) <= 1e-6\n"
    )
    done = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "['1', '5']"
    assert lines[1].startswith("torch.Size([5, 1, 16, 16]) [True, True, True, True, True]")
