"""Speed and scale measurements of collide against reference runs (not run by CI).

Run everything with ``make bench`` (or ``python -m benchmarks.run``); results go to
``benchmarks/results.md`` and ``benchmarks/results.json``.
"""
