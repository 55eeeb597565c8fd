"""``python -m fastmomentum demo``: train the MLP with plain SGD, momentum and Nesterov, print
the table, optionally plot the curves."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..._config import show_config
from .._outputs import check_plot_path
from .._progress import Progress
from .._words import count
from . import report
from .train import METHODS, Config, History, train


def add_parser(
        commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The ``demo`` subcommand and its options."""
    default = Config()
    parser = commands.add_parser(
        "demo", help="train a small NumPy MLP with SGD, momentum and Nesterov (the default)",
        description="Train a 2 -> hidden -> 3 tanh MLP on three generated spirals with plain SGD, "
        "heavy-ball momentum and Nesterov momentum (fm.SGD, L2 weight decay on the weights), "
        "all under the same warmup + cosine learning-rate schedule (fm.schedules), from the same "
        "initialisation; print training loss and test accuracy per epoch.")
    parser.add_argument("--epochs", type=int, default=default.epochs,
                        help=f"epochs per optimizer ({default.epochs})")
    parser.add_argument("--hidden", type=int, default=default.hidden,
                        help=f"hidden units ({default.hidden})")
    parser.add_argument("--lr", type=float, default=default.peak_lr, dest="peak_lr",
                        help=f"peak learning rate, after the warmup ({default.peak_lr})")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=default.dtype,
                        help=f"dtype of the data and parameters ({default.dtype})")
    parser.add_argument("--seed", type=int, default=default.seed,
                        help=f"seed of the data, initialisation and batch order ({default.seed})")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="save the loss curves of the three optimizers (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (there is none either when stderr is not a terminal)")
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo with the parsed options; the exit status: 0, or 1 when an optimizer's
    training loss ended up NaN or infinite (a learning rate too large for the model)."""
    if args.epochs < 1 or args.hidden < 1:
        parser.error("--epochs and --hidden must be >= 1")
    if not (math.isfinite(args.peak_lr) and args.peak_lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.peak_lr}")
    if args.peak_lr > float(np.finfo(args.dtype).max):
        parser.error(f"--lr {args.peak_lr} overflows --dtype {args.dtype}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.plot:
        _check_plot_path(Path(args.plot), parser)
    config = Config(**{f.name: getattr(args, f.name) for f in fields(Config)
                       if hasattr(args, f.name)})
    first = next(iter(METHODS.values())).label
    setup = show_config(mode="dicts")
    assert setup is not None
    print(f"fastmomentum {setup['version']}: {setup['isa']} kernels, {setup['threads']} thread(s). "
          f"MLP 2 -> {config.hidden} -> 3 ({config.dtype}), "
          f"{count(config.train_points, 'training point')}, {count(config.epochs, 'epoch')} of "
          f"{count(config.steps_per_epoch, 'step')}, "
          f"warmup + cosine lr (peak {config.peak_lr}).\n")

    bar = Progress(len(METHODS) * config.epochs, len(METHODS) * config.epochs,
                   enabled=False if args.quiet else None, unit="epochs")
    start = time.perf_counter()
    histories: dict[str, History] = {}
    bar.show(f"{first}: first epoch")
    for name, method in METHODS.items():
        def show(epoch: int, history: History, label: str = method.label) -> None:
            bar.advance(1, row_done=True)
            bar.show(f"{label}: loss {history.train_loss[-1]:.4f} after epoch {epoch + 1}")

        # A diverging run is reported once, below, rather than by NumPy's warnings on the way.
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            histories[name] = train(name, config, on_epoch=show)
    bar.clear()
    print(report.table(histories))
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.plot:
        report.plot(histories, args.plot)
        print(f"loss curves saved to {args.plot}")
    sys.stdout.flush()
    diverged = [METHODS[name].label for name, history in histories.items()
                if not math.isfinite(history.train_loss[-1])]
    if diverged:
        print(f"demo: the training loss of {', '.join(diverged)} is not finite: --lr "
              f"{config.peak_lr} is too large for this model (the default is {Config.peak_lr})",
              file=sys.stderr)
        return 1
    return 0


def _check_plot_path(path: Path, parser: argparse.ArgumentParser) -> None:
    """Fail before training, not after it: matplotlib missing, a file type it cannot write, or a
    path that cannot be written."""
    try:
        import matplotlib.backend_bases  # noqa: F401  (imports the package first)
    except ImportError:
        parser.error("--plot needs matplotlib: pip install 'fastmomentum[plot]'")
    check_plot_path(path, "--plot", parser)
