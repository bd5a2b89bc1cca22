"""Progress from the collision set's LPs: what a long ball LP reports while it runs,
counted against HiGHS's own iteration counts, and that listening changes no answer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from collide.api import collision_geometry, collision_size
from collide.config import GeometryConfig
from collide.piecewise import ball, highs
from collide.piecewise.highs import add_rows, lp_model, solve_lazily
from tests.support import PROJECT

SMALL = GeometryConfig(n_samples=200, chains=4, burn_in=20, n_directions=4, max_draws=200)


def _lazy_lp(seed: int) -> tuple:
    """A 40-column LP with 400 lazy rows, of which its first solution violates many: a
    few rounds of runs, each counting its own simplex iterations."""
    rng = np.random.default_rng(seed)
    d = 40
    h = lp_model(rng.standard_normal(d), -np.ones(d), np.ones(d), tol=1e-9)
    a = rng.standard_normal((400, d))
    b = np.full(400, 0.5)
    added = np.zeros(400, dtype=bool)
    return h, a, b, added


def _solve(h, a, b, added, watch=None):
    return solve_lazily(h, lambda x: a @ x - b, b, added, tol=1e-9,
                        add=lambda rows: add_rows(h, a[rows], np.full(len(rows), -np.inf), b[rows]), watch=watch)


@pytest.mark.parametrize("solver, count", [("simplex", "simplex_iteration_count"), ("ipx", "ipm_iteration_count")])
def test_the_watch_hears_every_iteration_of_every_round(solver, count):
    h, a, b, added = _lazy_lp(0)
    h.setOptionValue("solver", solver)
    per_run: list[int] = []
    run = h.run

    def counted_run():  # oracle: HiGHS's own count after each run, summed
        status = run()
        per_run.append(getattr(h.getInfo(), count))
        return status

    h.run = counted_run
    heard: list[int] = []
    out = _solve(h, a, b, added, watch=heard.append)
    assert out.rounds >= 2 and len(per_run) >= 2  # the rows came in over several runs
    assert all(n >= 0 for n in heard)
    assert sum(per_run) > 0
    if solver == "simplex":
        assert sum(heard) == sum(per_run)
    else:  # IPX asks before each iteration (and between, with no count): a run's last goes unheard
        assert sum(per_run) - len(per_run) <= sum(heard) <= sum(per_run)


def test_a_raising_watch_stops_the_lp_leaves_no_callback_and_the_model_solves_after():
    h, a, b, added = _lazy_lp(2)

    def stop(n: int) -> None:
        raise ValueError("enough")

    with pytest.raises(ValueError, match="enough"):
        _solve(h, a, b, added, watch=stop)
    assert h.cbSimplexInterrupt.callbacks == [] and h.cbIpmInterrupt.callbacks == []
    assert _solve(h, a, b, added).solution is not None  # and nothing interrupts it now


def test_listening_changes_no_solution():
    quiet = _solve(*_lazy_lp(1))
    heard = _solve(*_lazy_lp(1), watch=lambda n: None)
    assert quiet.rounds == heard.rounds and quiet.order == heard.order
    assert np.array_equal(quiet.solution, heard.solution)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 12), nn.ReLU()).eval()


@pytest.mark.parametrize("ipm_rows", [0, 10**9], ids=["interior-point", "simplex"])
def test_collision_geometry_reports_each_stage_in_order_and_the_ball_lps_iterations(monkeypatch, ipm_rows):
    monkeypatch.setattr(highs, "HEARTBEAT_SECONDS", 0.0)  # every callback reports
    monkeypatch.setattr(ball, "IPM_REGION_ROWS", ipm_rows)  # the ball LP by either solver
    model = _net()
    target = torch.rand(30, generator=torch.Generator().manual_seed(2))
    calls: list[tuple[str, int, float]] = []
    geo = collision_geometry(model, "3", target, config=SMALL, progress=lambda *c: calls.append(c))
    stages = [s for s, _, _ in calls]
    order = [s for k, s in enumerate(stages) if k == 0 or s != stages[k - 1]]
    assert order == ["set", "ball", "widths", "samples"] and geo.radius > 0
    for stage in ("ball", "widths"):
        mine = [(n, t) for s, n, t in calls if s == stage]
        assert mine[0] == (0, 0.0)  # as the stage begins
        assert all(n1 <= n2 and t1 <= t2 for (n1, t1), (n2, t2) in zip(mine, mine[1:], strict=False))
        assert mine[-1][0] > 0  # its LPs ran simplex iterations, and they were heard
    quiet = collision_geometry(model, "3", target, config=SMALL)
    assert quiet.radius == geo.radius and torch.equal(quiet.samples, geo.samples)


@pytest.mark.parametrize("every, reports", [(0.0, "many"), (3600.0, "starts")])
def test_collision_size_reports_at_most_once_a_heartbeat(monkeypatch, every, reports):
    monkeypatch.setattr(highs, "HEARTBEAT_SECONDS", every)
    calls: list[tuple[str, int, float]] = []
    size = collision_size(_net(), "3", torch.full((30,), 0.5), config=SMALL, progress=lambda *c: calls.append(c))
    stages = [s for s, _, _ in calls]
    if reports == "starts":  # an hour apart: each stage's start, nothing while its LPs run
        assert calls == [("set", 0, 0.0), ("ball", 0, 0.0)]  # a ball: no dimension's search to run
    else:
        assert stages.count("ball") > 1 and stages[:2] == ["set", "ball"]
    assert size.radius > 0


class _Stop(Exception):
    pass


def test_what_progress_raises_stops_the_lp_and_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(highs, "HEARTBEAT_SECONDS", 0.0)
    heard: list[str] = []

    def stop(stage: str, iterations: int, seconds: float) -> None:
        heard.append(stage)
        if stage == "ball" and iterations > 0:  # a user's own stop, mid-LP
            raise _Stop

    # Not an InternalError: HiGHS, left with it, ends the run as a solve error.
    with pytest.raises(_Stop):
        collision_size(_net(), "3", torch.full((30,), 0.5), config=SMALL, progress=stop)
    assert heard[-1] == "ball" and "dimension" not in heard


CTRL_C = """
import os, signal, sys, threading
import numpy as np
from collide.piecewise.highs import add_rows, lp_model, solve_lazily

# Python's own handler, as an interactive session has it: a process started in the
# background by a shell inherits SIGINT ignored, and Python then installs none.
signal.signal(signal.SIGINT, signal.default_int_handler)
rng = np.random.default_rng(0)
d, m = 200, 2000
a, b = rng.standard_normal((m, d)), np.full(m, 0.5)
for attempt in range(3):  # where Python raises it is chance: a KeyboardInterrupt raised in
    # highspy's own callback frames, not ours, was lost five times in six
    h = lp_model(rng.standard_normal(d), -np.ones(d), np.ones(d), tol=1e-9)
    h.setOptionValue("solver", sys.argv[1])
    under_way = threading.Event()
    # Ctrl-C as a terminal sends it: from outside, whatever Python code then runs
    threading.Thread(target=lambda: under_way.wait() and os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        solve_lazily(h, lambda x: a @ x - b, b, np.zeros(m, dtype=bool), tol=1e-9,
                     watch=lambda n: n > 0 and under_way.set(),
                     add=lambda rows: add_rows(h, a[rows], np.full(len(rows), -np.inf), b[rows]))
        print("finished", h.getModelStatus())
    except KeyboardInterrupt:
        print("interrupted", h.getModelStatus())
print("handler restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


@pytest.mark.parametrize("solver", ["simplex", "ipx"])
def test_ctrl_c_during_a_watched_lp_stops_it_and_raises_keyboard_interrupt(solver):
    # In a process of its own: pytest keeps a SIGINT handler of its own, which is left alone.
    done = subprocess.run([sys.executable, "-c", CTRL_C, solver], capture_output=True, text=True, timeout=120,
                          cwd=PROJECT)
    assert done.returncode == 0, done.stderr[-2000:]
    # HiGHS stopped at once (not a solve error, which a KeyboardInterrupt inside its
    # callback became), and Python's own handler is back.
    assert done.stdout.splitlines() == ["interrupted HighsModelStatus.kInterrupt"] * 3 + ["handler restored True"], \
        done.stdout
