"""MkDocs hook: fills each page's generated blocks (``docs/generate.py``) as the site is built.

The pages on disk hold only placeholders, so the site's references and numbers always come
from the code, ``benchmarks/results.json`` and ``data/reference/`` of the commit built.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location("collide_docs_generate", Path(__file__).with_name("generate.py"))
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return generate.fill(markdown) if "<!-- generated: " in markdown else markdown
