"""The ``collide`` command line: run, config, tables, verify, serve, status.

Exit codes: 0 done; 1 the run failed (Prefect's temporary server not starting too: the
message says how to run without it), or collide has a bug (an internal error: the
traceback and a line saying so); 2 bad input (unknown experiment or layer, bad config
value, missing data or checkpoint, port in use), with a message that says what to fix:
collide's own errors (:class:`collide.errors.CollideError`) only, so that a bug is never
reported as the user's mistake; 130 interrupted (Ctrl-C, or SIGTERM or SIGHUP to a run).

Start-up imports nothing heavy: torch, pandas, Prefect, Dask and matplotlib load inside
the commands that need them, the experiment registry lists names without importing an
experiment, and configs are built, shown and refused with their torch-free classes
(:mod:`collide.experiments.configs`), the experiment imported only to run, so that
``--help``, ``config show`` and refusals answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collide.errors import CollideError, ConfigError, DataError, InternalError
from collide.experiments.registry import SUMMARIES, experiment
from collide.experiments.registry import config as experiment_config
from collide.workers import WORKER_PROCESSES

if TYPE_CHECKING:
    from flows.temporary_server import TemporaryServerError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parse_value(raw: str, key: str = "") -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
    except RecursionError:
        raise ConfigError(f"--set {key}: the value is nested too deeply to be a config value") from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} {what}: pass a JSON file of fields (collide config show "
                              "EXPERIMENT --json writes one)")
        try:
            loaded = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError(f"config file {path} is nested too deeply to be a config (JSON objects within "
                             "objects thousands deep)") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a JSON object of fields, got {type(loaded).__name__}")
        from collide.results.run_record import rerun_config

        planned = rerun_config(loaded, path=path, kind=args.experiment)  # <name>.run.json: a run's plan
        config.update(loaded if planned is None else planned)
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value (nested keys with dots), got {item!r}")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse_value(raw, key)
    for key in ("results_root", "data_root", "checkpoint_dir", "image_root", "device", "model", "weights", "layer"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    return config


def _tqdm_progress():  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def report(stage: str, done: int, total: int) -> None:
        if total <= 1:  # one step: a bar would jump 0 -> 1 at a meaningless rate
            return
        bar = bars.get(stage)
        if bar is None:
            # Steps done before the first report (reused rows) started the bar: its rate counts
            # only the steps after it, not thousands of steps in no time.
            bar = bars[stage] = tqdm(total=total, initial=done, desc=stage, unit="step", leave=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            del bars[stage]  # the next job's stage of the same name gets a bar of its own

    return report


# Signals that stop a run from outside: a service manager's or `timeout`'s SIGTERM, and the
# SIGHUP of a terminal that closes (the temporary server, in a session of its own, gets none).
_STOPS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stops_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop a run as Ctrl-C does: an exception, so that the run's
    clean-up (its scratch folders, the temporary server) still happens. Prefect's flow
    engine passes SIGTERM on to the handler it found once it has recorded the crash;
    without this one, Python's default would end the process there."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # A signal ignored when the run started stays ignored: `nohup collide run` must outlive its terminal.
    previous = {sig: signal.signal(sig, interrupt) for sig in _STOPS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _prefect_server() -> contextlib.AbstractContextManager[object]:
    """The server a flow run reports to: ``PREFECT_API_URL``'s, else a temporary one of
    collide's for the block (:mod:`flows.temporary_server`)."""
    from prefect.settings import PREFECT_API_URL

    from flows.temporary_server import temporary_server

    return contextlib.nullcontext() if PREFECT_API_URL.value() else temporary_server()


def _run(args: argparse.Namespace) -> int:
    with _stops_interrupt():
        return _run_experiment(args)


def _run_experiment(args: argparse.Namespace) -> int:
    if args.no_prefect and (args.dask_address or args.workers):
        flag = "--dask-address" if args.dask_address else "--workers"
        raise ConfigError(f"{flag} fans the jobs out over Dask, which the Prefect flow does: --no-prefect runs every "
                          f"job in this process, one after another; drop --no-prefect to use Dask, or drop {flag}")
    overrides = _overrides(args)
    # A plain config error is refused before torch.
    config = experiment_config(args.experiment).from_request(overrides)
    module = experiment(args.experiment)
    if not args.no_prefect:
        from collide.experiments import engine
        from collide.workers import require_scheduler

        engine.validate(module, config=config)  # fail on bad input before any server starts (engine.run too)
        if scheduler := _scheduler(args):
            require_scheduler(*scheduler)
    config.check_request(overrides)  # refusals that depend on what was asked for by name (the MNIST data root)
    if args.no_prefect:
        from collide.experiments import engine
        from collide.results.cells import run_lines

        out = engine.run(module, config=config, progress=_tqdm_progress())
        for row in out["rows"]:
            if row.get("repaired"):
                print(f"row {row['row']} was damaged ({row['repaired']}): recomputed", file=sys.stderr)
        print("\n".join(run_lines(out["rows"])))  # what the flow logs of its rows, here where no flow log is
    else:
        from flows.experiment import experiment_flow
        from flows.runner import dask_runner

        flow = experiment_flow.with_options(task_runner=dask_runner(args.dask_address, args.workers))
        with _prefect_server():
            out = flow(experiment=args.experiment, config=overrides)
    print("\n".join(outcome_lines(out)))
    print(next_steps(config.results_root))
    return EXIT_OK


def next_steps(results_root: str) -> str:
    """Where to look once a run is written: the table's numbers alone say little of what
    each row holds, why one is flagged, or how it stands beside the paper's."""
    where = "" if os.path.normpath(results_root) == DEFAULT_RESULTS else f" --results-root {shlex.quote(results_root)}"
    return (f"next: `collide status{where}` says which rows are flagged and why; "
            f"`collide tables{where}` writes report.html, each row explained and beside the paper's where it has one")


def accuracy_text(accuracy: float | dict[str, float]) -> str:
    """``0.9781``, or ``mlp 0.9781, lenet5 0.9890`` for an experiment that trains several models."""
    if isinstance(accuracy, dict):
        return ", ".join(f"{name} {value:.4f}" for name, value in accuracy.items())
    return f"{accuracy:.4f}"


# Outputs outcome_lines names on lines of their own; and the suffixes that tell a written
# file among its other values (records, counts).
_LISTED = frozenset({"table", "figure", "summary", "summary_figure", "checkpoint"})
_OUTPUT_SUFFIXES = frozenset({".parquet", ".png", ".html", ".json", ".csv"})


def outcome_lines(out: dict) -> list[str]:
    """What `collide run` prints once an experiment is written: its outputs, accuracy and notes.

    ``test_accuracy`` is one float, or a dict of them (the profile experiment trains two models):
    each model's is printed by name, so a run that wrote everything does not fail on its summary.
    """
    lines = [f"table:  {out['table']}", f"figure: {out['figure']}"]
    if out.get("summary"):
        lines += [f"summary: {out['summary']}", f"summary figure: {out['summary_figure']}"]
    # Listed by their keys rather than known names: an experiment that adds an output to its
    # summarize is then named without a change here (the scan's ranking went unlisted).
    lines += [f"{key.replace('_', ' ')}: {value}" for key, value in out.items()
              if key not in _LISTED and isinstance(value, str) and Path(value).suffix in _OUTPUT_SUFFIXES
              and Path(value).is_file()]
    if out.get("origin"):
        # Which model the numbers come from: shipped (the published tables'), or trained here.
        how = out["origin"] + (" (reused)" if out["origin"] == "trained" and out.get("reused") else "")
        lines.append(f"checkpoint: {how} {out.get('checkpoint', '')} "
                     f"(sha256 {str(out.get('sha256'))[:12]}..., data {out.get('dataset', '?')})")
    if out.get("test_accuracy") is not None:
        lines.append(f"test accuracy: {accuracy_text(out['test_accuracy'])}")
    if out.get("random_weights"):
        lines.append("note: the model had RANDOM weights, as asked")
    lines += [f"note: {note}" for note in out.get("notes") or []]
    return lines


def key_lines(keys: list[tuple[str, str, Any, str]]) -> list[str]:
    """Config keys as `collide config show` prints them: key, type and default on one line,
    the description indented below it."""
    width = max(len(k) for k, *_ in keys)
    lines = []
    for key, kind, default, text in keys:
        lines += [f"  {key:<{width}}  {kind:<28} default {json.dumps(default, default=str)}", f"      {text}"]
    return lines


def describe(name: str) -> str:
    """An experiment's config keys (type, default, description) and the layers its model offers."""
    config = experiment_config(name)()
    lines = [f"{name}: {SUMMARIES[name]}", "", "config keys (--set KEY=VALUE; values are JSON, nested keys dotted):"]
    lines += key_lines(config.keys_read())
    if config.NOT_USED:
        lines += ["", config.not_read_text(name)]
    usable = config.listed_layers()  # the MNIST models' layers are known without building one (and torch)
    module = experiment(name) if usable is None else None
    try:
        if module is not None:
            usable = module.layers(config)
        lines += ["", f"usable layers of the default model (layer=...): {', '.join(usable or ())}"]
    except Exception as exc:  # a model that cannot be built offline says why, the keys still print
        lines += ["", f"usable layers: unknown ({exc})"]
    if config.LAYERS_NOTE:
        lines.append(f"  {config.LAYERS_NOTE}")
    return "\n".join(lines)


def _layers(args: argparse.Namespace) -> int:
    import torch

    from collide.models.external import build, input_defaults, resolve_model
    from collide.sites import listed_aliases, probe
    from collide.skips import passed_by
    from collide.usercode import factory_of

    side = args.input_size or input_defaults(args.model).get("input_size", 0)
    if not side:
        if not args.model.startswith("torchvision:"):
            factory_of(args.model, what="model")  # a module that does not import says so first
        raise ConfigError(f"{args.model} has no torchvision weights whose transforms give its input size (your own "
                          "factory, or a torchvision model without weights): pass --input-size")
    source = resolve_model(args.model, "random", mean=args.mean or (), std=args.std or (), input_size=side)
    model = build(source)
    sites = probe(model, torch.zeros(1, args.channels, side, side))
    around = passed_by(model, torch.zeros(1, args.channels, side, side))
    usable = [s for s in sites if s.addressable]
    if args.json:
        print(json.dumps([{"name": s.name, "kind": s.kind, "op": s.op, "shape": list(s.shape), "units": s.units,
                           "addressable": s.addressable, "methods": list(s.methods), "why_not": s.why_not("exact"),
                           "passed_by": s.name in around}
                          for s in sites], indent=1))
        return EXIT_OK
    print(f"{args.model} at {args.channels}x{side}x{side}: {len(usable)} activation call sites (layer=NAME), "
          "forward order")
    width = max([len(s.name) for s in usable] + [4])
    op_width = max([len(s.op) for s in usable] + [10])
    print(f"  {'name':<{width}}  {'activation':<{op_width}}  {'kind':<8}  {'shape':<16}  {'units':>7}  methods")
    for s in usable:
        print(f"  {s.name:<{width}}  {s.op:<{op_width}}  {s.kind:<8}  {'x'.join(map(str, s.shape)):<16}  "
              f"{s.units:>7}  {', '.join(s.methods)}{'  (passed by)' if s.name in around else ''}")
    if any(s.name in around for s in usable):
        print("(passed by): a skip connection or another branch passes the call by: the input reaches the output "
              "around it, so inputs that collide there can still be told apart by the output")
    bases = {s.base for s in usable}
    named = {a: m for a, m in listed_aliases(model).items() if m in bases}
    if named:
        print("aliases: " + ", ".join(f"{a} (= {m})" for a, m in named.items()))
    gradient_only = sorted({s.op for s in usable if "exact" not in s.methods})
    if gradient_only:
        print(f"{', '.join(gradient_only)}: approximate collisions where they saturate (methods gradient, paper); "
              "the exact LP models ReLU collision layers")
    refused = {s.base: s for s in sites if not s.addressable}
    if refused:
        print(f"not addressable ({len(refused)} activation sites):")
        for op in dict.fromkeys(s.op for s in refused.values()):
            names = [s.base for s in refused.values() if s.op == op]
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            print(f"  {op}: {shown}\n    {next(s for s in refused.values() if s.op == op).why_not()}")
    return EXIT_OK


def _config(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(experiment_config(args.experiment)().to_dict(), indent=1, default=str))
    else:
        print(describe(args.experiment))
    return EXIT_OK


# Where tables, verify and status look for stores unless told: on a fresh clone it does not
# exist yet, which is no mistake of the user's.
DEFAULT_RESULTS = "data/results"


def _results_root(args: argparse.Namespace, command: str) -> Path:
    """``--results-root``, refused where it cannot hold stores: a store itself (a path where
    the folder holding it goes), a file, or a folder that does not exist (the default may
    not exist yet)."""
    root = Path(args.results_root)
    if root.suffix == ".zarr" and root.is_dir():
        name = f" {root.name.removesuffix('.zarr')}" if command in ("verify", "status") else ""  # they take a name
        raise DataError(f"{root} is a store, not the folder that holds stores: run `collide {command}{name} "
                        f"--results-root {root.parent}`")
    if (root.exists() or args.results_root != DEFAULT_RESULTS) and not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"{root} {what}: pass --results-root, the folder holding <experiment>.zarr "
                        f"(default {DEFAULT_RESULTS})")
    return root


def _no_stores(root: Path) -> DataError:
    return DataError(f"no <experiment>.zarr store under {root}: run an experiment first "
                     "(collide status lists what there is)")


def _tables(args: argparse.Namespace) -> int:
    from collide.results.store import stores

    if not stores(_results_root(args, "tables")):
        raise _no_stores(Path(args.results_root))
    if args.no_prefect:
        from collide.results.tables import regenerate

        out = regenerate(args.results_root, progress=_tqdm_progress())
    else:
        from flows.tables import tables_flow

        with _stops_interrupt(), _prefect_server():
            out = tables_flow(results_root=args.results_root)
    for name, written in out["experiments"].items():
        print(f"{name}: {written['rows']} rows -> {written['table']}, {written['figure']}")
        if written.get("incomplete"):
            print(f"  WARNING: {name}: {written['incomplete']}")
    print(f"report: {out['report']}")
    return EXIT_OK


def _scheduler(args: argparse.Namespace) -> tuple[str, str] | None:
    """The Dask scheduler address flow runs will use and where it came from (the flag,
    else the environment's), or None for a local cluster."""
    from collide.workers import DASK_ADDRESS_ENV

    if args.dask_address:
        return args.dask_address, "--dask-address"
    return (os.environ[DASK_ADDRESS_ENV], DASK_ADDRESS_ENV) if os.environ.get(DASK_ADDRESS_ENV) else None


def _serve(args: argparse.Namespace) -> int:
    # collide.workers, not flows.runner: Prefect must not load its settings before serve sets the server's.
    from collide.workers import DASK_ADDRESS_ENV, require_scheduler
    from flows.serve import serve

    if scheduler := _scheduler(args):
        # A warning, not a refusal: the scheduled runs come later, and a service manager may
        # start the scheduler beside this server.
        try:
            require_scheduler(*scheduler)
        except ConfigError as exc:
            print(f"collide: warning: {exc}; every flow run needs it up by the time it starts", file=sys.stderr)
    if args.dask_address:
        os.environ[DASK_ADDRESS_ENV] = args.dask_address  # inherited by every flow run
    return serve(port=args.port, file=args.file, home=args.home)


def _verify(args: argparse.Namespace) -> int:
    from collide.errors import ModelRefused
    from collide.results.store import stores
    from collide.results.verify import verify

    found = {s.name: s for s in stores(_results_root(args, "verify"))}
    _require_store(args, "verify", list(found))
    names = [args.experiment] if args.experiment else list(found)
    if not names:
        raise _no_stores(Path(args.results_root))
    failed = 0
    busy = []  # stores a run is writing: neither verified nor found to disagree
    refused = []  # stores whose model is a user's own code, not named with --model
    trusted = tuple(args.model or ())
    for name in names:
        holder = found[name].lock_holder()
        if holder is not None:  # its rows and table are being written: nothing to compare yet
            print(f"{name}: a run is in progress ({holder}): not verified; run `collide verify` once it ends")
            busy.append(name)
            continue
        try:
            results = verify(found[name], trusted=trusted)
        except ModelRefused as exc:
            if args.experiment:
                raise
            # One such store must not keep the others from being verified.
            print(f"{name}: not verified: {exc}")
            refused.append(name)
            continue
        for r in results:
            state = "ok" if not r["problems"] else "MISMATCH: " + "; ".join(r["problems"])
            if r["row"] is None:  # the store itself: its metadata, entries that are not rows
                print(f"{name} {r['what']}: " + (f"skipped: {r['note']}" if r.get("note") else state))
                failed += bool(r["problems"])
                continue
            if r.get("missing"):  # a table row with no store row
                print(f"{name} row {r['row']}: {state}")
                failed += 1
                continue
            many, what = (r["counted_points"], "point") if "counted_points" in r else (r.get("counted_vertices", 0),
                                                                                       "vertex")
            counted = f"{many} {what}" if many == 1 else f"{many} {'points' if what == 'point' else 'vertices'}"
            if "counted_region_samples" in r:
                counted += f" and {r['counted_region_samples']} collision-set samples"
                if "region_dim_certified" in r:
                    counted += f" (its dimension {'certified' if r['region_dim_certified'] else 'not certified'})"
            # A scan row's own sizes, each example's around its stored image.
            scanned = [f"{r[key]} examples' {what}" for key, what in (("checked_scan_vertices", "vertices"),
                                                                     ("checked_scan_balls", "balls"),
                                                                     ("certified_scan_dims", "certified dimensions"))
                       if key in r]
            if scanned:
                counted += ", and the scan's " + " and ".join(scanned)
            # Each row's vertices are valid by its own method's criterion (0.5 for the paper's).
            bound = f" (criterion <= {r['rel_tol']:g})" if r.get("rel_tol") is not None else ""
            print(f"{name} row {r['row']}: {counted} recomputed in float64, "
                  f"largest feature error {r.get('max_feature_rel_error', float('nan')):.3g}{bound}, "
                  f"success rate {r.get('success_rate', float('nan')):.6g}: {state}")
            failed += bool(r["problems"])

    def not_verified(names: list[str], why: str, then: str) -> list[str]:
        were = "was" if len(names) == 1 else "were"
        return [f"{', '.join(names)} {were} not verified ({why}): {then}"] if names else []

    unverified = "; ".join([
        *not_verified(busy, f"a run is writing {'it' if len(busy) == 1 else 'them'}",
                      "run `collide verify` once it ends"),
        *not_verified(refused, "a model of your own code, named in the store",
                      "verify each with --model, as said above"),
    ])
    if failed:
        print(f"{failed} row(s) or entries disagree with their table" + (f"; {unverified}" if unverified else ""))
    elif unverified:
        print(f"no row disagrees with its table, but {unverified}")
    else:
        print("every row agrees with its table")
    return EXIT_FAILED if failed or unverified else EXIT_OK


def _require_store(args: argparse.Namespace, command: str, names: list[str]) -> None:
    """Refuse ``args.experiment`` where the results root holds no store of that name."""
    if not args.experiment or args.experiment in names:
        return
    # A path where a name goes (data/results/mnist.zarr): say how to name it.
    given = Path(args.experiment)
    hint = (f"; for {given}, run `collide {command} {given.name.removesuffix('.zarr')} --results-root "
            f"{given.parent}`" if given.suffix == ".zarr" or os.sep in args.experiment else "")
    there = ", ".join(names) or "none"
    raise DataError(f"no store {args.experiment!r} under {args.results_root} (stores there: {there}){hint}")


def _status(args: argparse.Namespace) -> int:
    from collide.results.health import status
    from collide.results.store import stores

    root = _results_root(args, "status")
    if args.experiment:
        _require_store(args, "status", [s.name for s in stores(root)])
    report = status(root, only=args.experiment)
    if args.json:
        print(json.dumps(report, indent=1))
        return EXIT_OK
    if not report:
        print(f"no results under {args.results_root}: run `collide run <experiment>`")
        return EXIT_OK
    for s in report:
        fresh = "up to date" if s["table_fresh"] else "STALE or missing: run `collide tables`"
        if s["damaged_outputs"]:  # `collide tables` does not write summaries: the run does
            fresh += "; a summary or figure of its own is NOT as the run wrote it (see below)"
        if s["incomplete"] or s["damaged_rows"] or s["store_damage"]:
            fresh = "NOT to be read as complete (see below)"
        if s["running"]:
            fresh = f"being written: a run is in progress ({s['running']})"
        planned = s["expected_rows"] if s["expected_rows"] is not None else s["rows"]
        print(f"{s['experiment']}: {s['evaluated']}/{planned} rows evaluated, last written {s['updated']}, "
              f"config {', '.join(s['configs']) or '?'} (--json shows it); table {fresh}"
              + (f" (written {s['table_written']})" if s["table_written"] else ""))
        if s["files"]:
            print(f"  files under {args.results_root}: {', '.join(s['files'])}")
        # An up-to-date table can still hold rows whose numbers mean nothing: say so.
        for warning in s.get("warnings", []):
            print(f"  WARNING: {s['experiment']}: {warning}")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from collide.results.agreement import compare_tables

    def read(path: str) -> pd.DataFrame:
        fix = "give a .parquet table (e.g. data/reference/mnist-mlp.parquet)"
        if not Path(path).is_file():
            raise DataError(f"{path} {'is a folder' if Path(path).is_dir() else 'does not exist'}: {fix}")
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path} is not a Parquet table ({type(exc).__name__}): {fix}") from None

    reference, table = read(args.reference), read(args.table)
    problems = compare_tables(reference, table)
    for line in problems:
        print(f"DIFFERS: {line}")
    if problems:
        print(f"{args.table} does not reproduce {args.reference}: {len(problems)} difference(s)")
        return EXIT_FAILED
    print(f"{args.table} reproduces {args.reference}: {len(table)} rows, every column that does not measure time "
          "within its tolerance (collide/results/agreement.py)")
    return EXIT_OK


def _count(flag: str, of: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number, at least 1 (:func:`collide.checks.count_in`), named
    ``flag`` in the refusal. ``--workers 0`` or less would start a cluster no job reaches."""
    from collide.checks import count_in

    def parse(text: str) -> int:
        try:
            return count_in(text, flag, of=of)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    from flows.serve import DEFAULT_PORT, PROJECT

    parser = argparse.ArgumentParser(
        prog="collide",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find and measure feature collisions (colliding polytopes) in neural networks: ReLU and every "
        "activation that saturates.",
        epilog="""first steps:
  collide run mnist                 run the MNIST experiment (tables in data/results/)
  collide layers torchvision:resnet18 --input-size 64   the activation calls a model offers
  collide status                    what results exist, how fresh, from which config
  collide tables                    rebuild every table, figure and report.html from the stores
  collide verify                    recompute every table from its store in float64 and compare
  collide serve                     Prefect server + UI on http://127.0.0.1:4200, scheduled deployments

exit codes: 0 done, 1 the run failed (or a bug in collide: "internal error"), 2 bad input (the message
says what to fix), 130 interrupted (Ctrl-C, or SIGTERM or SIGHUP to a run), 141 the output's reader
went away (`| head`).
Each command has its own --help.""",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    experiments = "\n".join(f"  {name:8s} {summary}" for name, summary in SUMMARIES.items())
    run = sub.add_parser(
        "run", help="run an experiment end to end",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an experiment: data, model, vertices, 2000-sample evaluation, tables, figure.\n"
        "Finished work is reused, for every experiment: a rerun after a crash redoes only what was cut\n"
        "off, and a rerun of a finished experiment with the same config computes and writes nothing.\n"
        "`collide run EXPERIMENT --help` (or `collide config show EXPERIMENT`) lists its config keys,\n"
        "their types and defaults, and the model's layers.\n\n"
        "experiments:\n" + experiments,
        epilog="examples:\n  collide run mnist --set n_vertices=5 --set gradient.max_steps=2000\n"
        "  collide run mnist --set targets_per_class=10 --set name=mnist-targets   # 100 targets over Dask\n"
        "  collide run mnist --dask-address tcp://10.0.0.5:8786                    # an existing cluster\n"
        "  collide run mnist --no-prefect                                          # plain Python\n"
        "  collide run patches                                                     # offline, MNIST patches\n"
        "  collide run imagenet --image-root ~/imagenet/val --set weights=/path/vgg16.pth\n"
        "  collide run model --model torchvision:resnet18 --weights random --layer layer2.1.relu#1 \\\n"
        "      --image-root DIR --set input_size=64                                # any classifier",
    )
    run.add_argument("experiment", choices=sorted(SUMMARIES), help="which experiment")
    run.add_argument("--config", help="JSON file with configuration fields to override")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one field, e.g. layer=relu2 or gradient.lr=0.005 (repeatable)")
    run.add_argument("--results-root", help="where tables, stores and figures go (default data/results)")
    run.add_argument("--data-root", help="where the MNIST IDX files are (default data/raw/mnist)")
    run.add_argument("--checkpoint-dir", help="where model checkpoints go (default data/checkpoints)")
    run.add_argument("--image-root", help="imagenet, model, scan, patches with dataset=folder: an image folder "
                     "(scan: grey digits in class folders 0-9)")
    run.add_argument("--device", help="auto (default), cpu or cuda")
    run.add_argument("--model", help="model: torchvision:NAME (e.g. torchvision:resnet18) or package.module:factory")
    run.add_argument("--weights", help="model, imagenet: a state dict file, 'torchvision', or 'random' (on request)")
    run.add_argument("--layer", help="the activation call where features collide (`collide layers MODEL` lists "
                     "them)")
    run.add_argument("--no-prefect", action="store_true",
                     help="run the same stages in plain Python with progress bars, no Prefect")
    run.add_argument("--dask-address", metavar="ADDR",
                     help="send the polytope jobs to this Dask scheduler (default: $COLLIDE_DASK_ADDRESS, "
                     "else a local cluster started for the run); its workers need this filesystem (the results "
                     "root, the data, the checkpoints)")
    run.add_argument("--workers", type=_count("--workers", of=WORKER_PROCESSES),
                     help="local cluster size, at least 1 (default: $COLLIDE_DASK_WORKERS or one per core)")
    run.set_defaults(func=_run)

    config = sub.add_parser(
        "config", help="show an experiment's config keys, types, defaults and layers",
        description="collide config show EXPERIMENT: every key `collide run EXPERIMENT --set KEY=VALUE` accepts,\n"
        "with its type, default and description, and the layers of the experiment's default model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="list one experiment's config keys")
    show.add_argument("experiment", choices=sorted(SUMMARIES), help="which experiment")
    show.add_argument("--json", action="store_true", help="the default config as JSON (a --config file)")
    show.set_defaults(func=_config)

    layers = sub.add_parser(
        "layers", help="list a model's activation call sites: the names --layer / layer= accepts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one forward pass of a zero image through MODEL (random weights: names and shapes do not\n"
        "depend on them) and list every activation call: module sites by module name, NAME#k for a module\n"
        "called more than once per forward (k from 0), OWNER.relu() for functional calls (#k when OWNER's\n"
        "forward makes several), with the methods each supports; an activation that cannot be a collision\n"
        "layer is listed with why.",
        epilog="examples:\n  collide layers torchvision:resnet18 --input-size 64\n"
        "  collide layers mypackage.models:small_cnn --input-size 28 --channels 1",
    )
    layers.add_argument("model", help="torchvision:NAME or package.module:factory")
    layers.add_argument("--input-size", type=_count("--input-size"), default=0,
                        help="image side (default: the torchvision weights')")
    layers.add_argument("--channels", type=_count("--channels"), default=3, help="input channels (default 3)")
    layers.add_argument("--mean", type=float, nargs="+", help="per-channel mean the model expects (default: the "
                        "torchvision weights', else none)")
    layers.add_argument("--std", type=float, nargs="+", help="per-channel std, with --mean")
    layers.add_argument("--json", action="store_true", help="every activation site as JSON")
    layers.set_defaults(func=_layers)

    tables = sub.add_parser(
        "tables", help="rebuild every table, figure and the report from the stores",
        description="Rewrite <name>.parquet, <name>-vertices.png for every <name>.zarr store under the results\n"
        "root, and report.html (all tables and figures, one page), from the stores alone: nothing is\n"
        "recomputed. As a Prefect flow that publishes the tables as artifacts, or with --no-prefect.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tables.add_argument("--results-root", default=DEFAULT_RESULTS, help=f"default {DEFAULT_RESULTS}")
    tables.add_argument("--no-prefect", action="store_true", help="plain Python with a progress bar")
    tables.set_defaults(func=_tables)

    serve = sub.add_parser(
        "serve", help="start the Prefect server and UI and serve the scheduled deployments",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start `prefect server start` on 127.0.0.1 (UI and API, telemetry off), then serve every\n"
        "deployment of prefect.yaml so that their cron schedules fire. Runs until Ctrl-C.\n"
        "Point other commands at it with  export PREFECT_API_URL=http://127.0.0.1:PORT/api",
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"loopback port (default {DEFAULT_PORT})")
    serve.add_argument("--file", default=str(PROJECT / "prefect.yaml"), help="deployments (default prefect.yaml)")
    serve.add_argument("--home", default=os.environ.get("PREFECT_HOME") or str(PROJECT / ".prefect"),
                       help="Prefect's home: database and settings (default $PREFECT_HOME, else .prefect/)")
    serve.add_argument("--dask-address", metavar="ADDR", help="run every flow's tasks on this Dask scheduler")
    serve.set_defaults(func=_serve)

    verify = sub.add_parser(
        "verify", help="recompute every table from its store by a second route and compare",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each row: push every vertex that carries sample weight through the recorded model in\n"
        "float64, rebuild the samples from the stored weights and classify them again, and compare the\n"
        "recomputed valid vertices, feature error, vertex distance and success rate with the table.\n"
        "Exit 0 when every row agrees, 1 when one does not (each disagreement is printed) or when a store\n"
        "could not be verified (a run is writing it).",
    )
    verify.add_argument("experiment", nargs="?", help="one experiment (default: every store)")
    verify.add_argument("--results-root", default=DEFAULT_RESULTS, help=f"default {DEFAULT_RESULTS}")
    verify.add_argument("--model", action="append", metavar="MODULE:FACTORY",
                        help="a model of your own code that the stores name, which you trust to import "
                        "(repeatable); a store never chooses code by itself")
    verify.set_defaults(func=_verify)

    compare = sub.add_parser(
        "compare", help="does a table reproduce a reference table (e.g. data/reference/mnist-mlp.parquet)?",
        description="Compare every column that does not measure time, row by row, each within the tolerance\n"
        "collide/results/agreement.py states and explains. Exit 0 when the table reproduces the reference.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("reference", help="the reference table (.parquet)")
    compare.add_argument("table", help="the table to check (.parquet)")
    compare.set_defaults(func=_compare)

    status = sub.add_parser("status", help="what results exist, how fresh, from which config")
    status.add_argument("experiment", nargs="?", help="one experiment (default: every store)")
    status.add_argument("--results-root", default=DEFAULT_RESULTS, help=f"default {DEFAULT_RESULTS}")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)
    return parser


def _server_failure(exc: BaseException) -> TemporaryServerError | None:
    """The temporary server's failure to start (:mod:`flows.temporary_server`) that ``exc``
    is or was raised from, if any."""
    from flows.temporary_server import TemporaryServerError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TemporaryServerError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _server_help(argv: list[str], exc: TemporaryServerError) -> str:
    from flows import STARTUP_TIMEOUT_ENV
    from flows.serve import DEFAULT_PORT

    waited = os.environ.get(STARTUP_TIMEOUT_ENV, "?")
    longer = max(1800, 2 * int(waited)) if waited.isdigit() else 1800
    said = str(exc).strip()
    said = said if len(said) <= 1500 else said[:1500] + " ..."
    why = ("exited before it answered (its log, named below, says why)" if exc.exited else
           f"did not start within {STARTUP_TIMEOUT_ENV}={waited} s (a new Prefect database on a busy machine can "
           "take minutes)")
    return (
        f"collide: the run failed: Prefect's temporary server {why}. Nothing was run. Either\n"
        f"  - run the same stages without Prefect:  collide {shlex.join([*argv, '--no-prefect'])}\n"
        f"  - start a server once (`collide serve` in another shell) and point runs at it:\n"
        f"      export PREFECT_API_URL=http://127.0.0.1:{DEFAULT_PORT}/api\n"
        f"  - or give the temporary server longer:  export {STARTUP_TIMEOUT_ENV}={longer}\n"
        f"Prefect said: {said}"
    )


def _internal_error(exc: BaseException) -> str:
    """What the command line says of an error collide did not raise on purpose: a bug."""
    what = "a broken internal invariant" if isinstance(exc, InternalError) else "an unexpected error"
    return (f"collide: internal error ({what}): {type(exc).__name__}: {exc}\n"
            "This is a bug in collide, not a problem with your input: please report it with the traceback above.")


# Errors that mean the code is wrong rather than the run's surroundings (a disk, a GPU, a
# server): reported as a bug with the traceback, never as bad input.
BUGS = (InternalError, ValueError, TypeError, KeyError, IndexError, AttributeError, NameError, AssertionError)


# Where the reader of the output went away (`collide config show mnist | head`): what a
# process killed by SIGPIPE reports in a shell, as other command-line tools do.
EXIT_STDOUT_GONE = 128 + signal.SIGPIPE


def _stdout_gone() -> bool:
    """Whether standard output's reader has gone (a pipe closed early), rather than some
    other pipe or socket of the run; if so, standard output is pointed at /dev/null, so
    that Python's own flush at exit does not fail again. (A pipe with no reader polls as
    an error; a flush cannot tell, since the failed write dropped what it held.)"""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        # Linux reports a pipe without a reader as an error; macOS, it seems, as a hang-up.
        gone = any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or no file behind stdout
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return gone


def main(argv: list[str] | None = None) -> int:
    """Run the ``collide`` command line (:func:`command`); returns the exit code.

    Standard output is flushed before it returns: a pipe is block-buffered, so the last of
    the output would otherwise be written by Python's flush at exit, where a reader that
    went away (`| head`) is an "Exception ignored" message and exit 120, not 141.
    """
    try:
        try:
            code = command(argv)
        finally:
            sys.stdout.flush()  # also after --help's SystemExit
    except BrokenPipeError as exc:
        if not _stdout_gone():
            print(f"collide: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_STDOUT_GONE
    return code


def command(argv: list[str] | None = None) -> int:
    """Run the ``collide`` command line; returns the exit code (see the module docstring).

    Only collide's own errors (:class:`collide.errors.CollideError`: what it raises on
    purpose about the input, the command line's refusals included) are bad input, exit
    code 2. A ``ValueError`` or ``KeyError`` that escapes from elsewhere is a bug: it is
    printed with its traceback as an internal error, exit code 1. A temporary Prefect
    server that does not start is exit code 1 too (the run failed, the input was fine),
    with a message naming the ways round it.
    """
    import flows  # noqa: F401  (Prefect's environment defaults before prefect loads)

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "run" and argv[1] in SUMMARIES and {"-h", "--help"} & set(argv[2:]):
        # `collide run mnist --help`: the run options, then what is particular to mnist.
        run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
        print(run_help.split("\nexperiments:")[0].replace("EXPERIMENT", argv[1]) + "\n\n" + describe(argv[1]))
        return EXIT_OK
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CollideError as exc:  # ServeError too
        print(f"collide: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        resume = (" Finished rows are kept: the same command again resumes where this one stopped (`collide status` "
                  "lists what is done).") if args.func is _run else ""
        print(f"collide: interrupted.{resume}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # main tells a closed standard output from another broken pipe
    except BUGS as exc:
        traceback.print_exception(exc, file=sys.stderr)
        print(_internal_error(exc), file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # the flow already logged the traceback
        if (failure := _server_failure(exc)) is not None:
            print(_server_help(argv, failure), file=sys.stderr)
            return EXIT_FAILED
        print(f"collide: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
