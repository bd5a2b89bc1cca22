"""The ``collide`` command line.

Exit codes: 0 done; 1 the run failed; 2 bad input (unknown experiment or layer, bad
config value, missing data or checkpoint), with a message that says what to fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        config.update(json.loads(path.read_text()))
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value (nested keys with dots), got {item!r}")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse_value(raw)
    for key in ("results_root", "data_root", "checkpoint_dir", "image_root", "device"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    return config


def _tqdm_progress():  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def report(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return report


def _run(args: argparse.Namespace) -> int:
    from flows.registry import EXPERIMENTS

    experiment = EXPERIMENTS[args.experiment]
    stages = experiment.stages_module()
    overrides = _overrides(args)
    config = experiment.config_class().from_dict(overrides)
    stages.validate(config=config)  # fail on bad input before any server starts
    if args.no_prefect:
        out = stages.run(config=config, progress=_tqdm_progress())
    else:
        out = experiment.flow_function()(config=overrides)
    print(f"table:  {out['table']}\nfigure: {out['figure']}")
    if out.get("test_accuracy") is not None:
        print(f"test accuracy: {out['test_accuracy']:.4f}")
    if out.get("random_weights"):
        print("note: the model had RANDOM weights, as asked")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collide",
        description="Find and measure feature collisions (colliding polytopes) in ReLU networks.",
        epilog="Example: collide run mnist --set n_vertices=5 --set gradient.max_steps=2000",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run an experiment end to end",
        description="Run an experiment: data, model, vertices, 2000-sample evaluation, tables, figure.",
    )
    from flows.registry import EXPERIMENTS

    listing = "; ".join(f"{e.name}: {e.summary}" for e in EXPERIMENTS.values())
    run.add_argument("experiment", choices=sorted(EXPERIMENTS), help=f"which experiment ({listing})")
    run.add_argument("--config", help="JSON file with configuration fields to override")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one field, e.g. layer=relu2 or gradient.lr=0.005 (repeatable)")
    run.add_argument("--results-root", help="where tables, stores and figures go (default data/results)")
    run.add_argument("--data-root", help="where the MNIST IDX files are (default data/raw/mnist)")
    run.add_argument("--checkpoint-dir", help="where model checkpoints go (default data/checkpoints)")
    run.add_argument("--image-root", help="imagenet: an ImageNet-style folder (one subfolder per class)")
    run.add_argument("--device", help="auto (default), cpu or cuda")
    run.add_argument("--no-prefect", action="store_true",
                     help="run the same stages in plain Python with progress bars, no Prefect")
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    import flows  # noqa: F401  (telemetry off before prefect loads)
    from collide.errors import CollideError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CollideError, FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
        print(f"collide: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the flow already logged the traceback
        print(f"collide: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
