"""``python -m fastmomentum bench``: the command line of :func:`~.runner.run`."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._outputs import check_plot_path, check_writable
from . import cuda, lowp_report, torch_report
from .lowp_kinds import KINDS
from .lowp_run import DEFAULT_SIZES as LOWP_SIZES
from .lowp_run import run_lowp
from .peers import IMPLEMENTATIONS
from .plot import matplotlib_available, write_plot
from .problems import LAYOUTS, VARIANTS, parse_size, size_label
from .report import write_json
from .runner import FULL, QUICK, default_threads, run
from .timing import MIN_SAMPLE_S, MIN_SAMPLES
from .torch_run import DEFAULT_THREADS as TORCH_THREADS
from .torch_run import run_torch, torch_missing
from .torch_sets import SETS

PROG = "python -m fastmomentum bench"
DTYPES = ["float32", "float64"]
#: Options that choose the float32/float64 tables' cases: not for --state-dtype.
NOT_FOR_STATE_DTYPE = ("dtype", "layout", "impl", "plot", "preset", "gpu_library")
#: Options that choose the array tables' cases: not for --torch (its cases are model sets).
NOT_FOR_TORCH = ("state_dtype", "sizes", "dtype", "layout", "variant", "impl", "plot", "preset",
                 "gpu_library")
#: Bytes per element alive at once in a --state-dtype case, at most: the float32 problem (12),
#: each kind's own p, g, momentum and compensation (10 + 10 + 9 + 5 + 7) and the peers' tensors
#: and state (about 60), rounded up.
STATE_DTYPE_BYTES_ALIVE = 128


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _preset_text(preset: dict[str, Any]) -> str:
    sizes = "; ".join(f"{k} {' '.join(map(size_label, v))}" for k, v in preset["sizes"].items())
    return f"sizes {sizes}; {' and '.join(preset['variants'])}"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time one fused momentum-SGD step of fastmomentum against NumPy, numexpr, "
        "numba and torch (those installed) and the in-place read-modify-write bound, in one "
        "process, each verified first. Prints a table; --json and --plot also write the "
        "results and a plot to files.",
        epilog=f"--quick: {_preset_text(QUICK)}. --full: {_preset_text(FULL)}. "
        "--sizes replaces the sizes of every layout. Implementations: "
        + ", ".join(IMPLEMENTATIONS) + ".",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: time the CUDA kernels against the GPU's copy bandwidth, "
                        "torch's fused SGD and a CuPy kernel (sizes default to 1e6 1e7 1e8; "
                        "the CPU-only options do not apply)")
    parser.add_argument("--gpu-library", choices=["cupy", "torch"],
                        help="with --device cuda: the library that allocates the arrays "
                        "(default: CuPy if installed, else PyTorch)")
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", dest="preset", action="store_const", const="quick",
                        help="about a minute on 2 cores (the default)")
    preset.add_argument("--full", dest="preset", action="store_const", const="full",
                        help="every size, both layouts, both updates (about 10 minutes)")
    parser.add_argument("--sizes", type=_size, nargs="+", metavar="N",
                        help="elements per problem, e.g. 1e6 (lists: in all)")
    parser.add_argument("--dtype", nargs="+", choices=DTYPES,
                        help=f"the float tables' dtypes (default: {' '.join(DTYPES)})")
    parser.add_argument("--state-dtype", nargs="+", choices=list(KINDS), metavar="KIND",
                        help="instead of the float tables: the low-precision storage kinds of "
                        "issue 19 (" + ", ".join(KINDS) + "), each next to float32 "
                        "fastmomentum, the RMW bound scaled to its bytes and the installed "
                        "low-precision peers (torch bf16, optimi, bitsandbytes); one array, "
                        f"sizes default to {' '.join(map(size_label, LOWP_SIZES))}")
    parser.add_argument("--torch", nargs="*", choices=list(SETS), metavar="SET",
                        help="instead of the float tables: one opt.step() of "
                        "fastmomentum.torch.SGD against torch.optim.SGD's default, foreach and "
                        "fused paths, and clip_grad_norm_ + fused step against the fused guard, "
                        "on the parameter shapes of " + ", ".join(SETS) + " (default: all; "
                        "needs torch; threads default to "
                        f"{' '.join(map(str, TORCH_THREADS))})")
    parser.add_argument("--threads", type=int, nargs="+", metavar="N",
                        help=f"thread counts (default: {' '.join(map(str, default_threads()))})")
    parser.add_argument("--variant", nargs="+", choices=list(VARIANTS),
                        help="heavy-ball (alias momentum) and/or nesterov")
    parser.add_argument("--layout", nargs="+", choices=list(LAYOUTS),
                        help="single arrays and/or lists of 200 arrays (default: both)")
    parser.add_argument("--impl", nargs="+", choices=list(IMPLEMENTATIONS), metavar="NAME",
                        help="implementations to run (default: all)")
    parser.add_argument("--samples", type=int, default=MIN_SAMPLES,
                        help=f"timed samples per median (>= {MIN_SAMPLES})")
    parser.add_argument("--min-sample-ms", type=float, default=MIN_SAMPLE_S * 1e3,
                        help=f"minimum duration of one sample (>= {MIN_SAMPLE_S * 1e3:g})")
    # Files only when asked for: a run writes nothing into the working folder by default.
    parser.add_argument("--json", default="", metavar="PATH",
                        help="also write every sample and the metadata as JSON here")
    parser.add_argument("--plot", default="", metavar="PATH",
                        help="also plot ns per element against size here, with matplotlib "
                        "(PNG, or any format matplotlib writes)")
    # The spellings of the time when files were written by default: accepted, now the default.
    parser.add_argument("--no-json", dest="json", action="store_const", const="",
                        help="deprecated: no JSON is written unless --json is given")
    parser.add_argument("--no-plot", dest="plot", action="store_const", const="",
                        help="deprecated: no plot is written unless --plot is given")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    """Parse and check the options: honest timings need >= 7 samples of >= 20 ms. (The files
    they name are checked by :func:`main`, which writes them.)"""
    return _parse(argv, prog)[0]


def _parse(argv: Sequence[str] | None, prog: str
           ) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.torch is not None:
        _check_torch(args, parser)
    elif args.state_dtype is not None:
        _check_state_dtype(args, parser)
    if args.dtype is None:
        args.dtype = list(DTYPES)
    # Written so that NaN fails too.
    if not (args.samples >= MIN_SAMPLES and MIN_SAMPLE_S * 1e3 <= args.min_sample_ms < math.inf):
        parser.error(f"honest timings need --samples >= {MIN_SAMPLES} and a finite "
                     f"--min-sample-ms >= {MIN_SAMPLE_S * 1e3:g}")
    if args.device == "cuda":
        cpu_only = [f"--{args.preset}"] if args.preset is not None else []
        cpu_only += [f"--{name}" for name in ("threads", "variant", "layout", "impl")
                     if getattr(args, name) is not None]
        if cpu_only:
            parser.error(f"{', '.join(cpu_only)}: CPU options, not for --device cuda")
    else:
        if args.gpu_library is not None:
            parser.error("--gpu-library is for --device cuda")
        _check_memory(args, parser)
    if args.threads is not None and min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    layouts = args.layout or list(LAYOUTS)
    if (args.state_dtype is None and args.sizes and "list" in layouts
            and min(args.sizes) < LAYOUTS["list"].n_arrays):
        parser.error(f"list layout: --sizes must be >= {LAYOUTS['list'].n_arrays} (the "
                     "elements are split over that many arrays)")
    return args, parser


def _refuse_given(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  names: Sequence[str], mode: str) -> None:
    """A mode with its own table refuses the options of the others: ``names`` given."""
    given = [f"--{name.replace('_', '-')}" if name != "preset" else f"--{args.preset}"
             for name in names if getattr(args, name) not in (None, "")]
    if given:
        parser.error(f"{', '.join(given)}: not for {mode}")


def _check_state_dtype(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--state-dtype runs its own table: the float tables' options do not apply."""
    if args.device == "cuda":
        parser.error("--state-dtype is for --device cpu")
    _refuse_given(args, parser, NOT_FOR_STATE_DTYPE, "--state-dtype (its table is one array, "
                  "float32 fastmomentum, the bound and the low-precision peers)")
    memory = _physical_memory()
    need = STATE_DTYPE_BYTES_ALIVE * max(args.sizes or LOWP_SIZES)
    if memory is not None and need > memory:
        parser.error(f"--sizes {size_label(max(args.sizes or LOWP_SIZES))}: the kinds and "
                     f"peers need about {need / 2**30:.1f} GiB; this machine has "
                     f"{memory / 2**30:.1f} GiB")


def _check_torch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--torch runs its own table: the array tables' options do not apply."""
    if args.device == "cuda":
        parser.error("--torch is for --device cpu (fastmomentum.torch.SGD on CPU tensors)")
    _refuse_given(args, parser, NOT_FOR_TORCH, "--torch (its table is the parameter sets of "
                  "models, stepped by fastmomentum.torch.SGD and torch.optim.SGD)")


def _check_outputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The files the run will write, checked before it (not after a 10-minute --full)."""
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path == "-":  # the table already goes to stdout
            parser.error(f"{flag} takes a file path ('-' is not standard output here)")
    if args.json and args.plot and Path(args.json).resolve() == Path(args.plot).resolve():
        parser.error(f"--json and --plot name the same file ({args.json}): give each its own")
    if args.json:
        check_writable(Path(args.json), "--json", parser)
    if args.plot and args.device == "cpu" and matplotlib_available():
        check_plot_path(Path(args.plot), "--plot", parser)


def _physical_memory() -> int | None:
    """This machine's memory in bytes, where the OS says (POSIX)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``parser.error`` when the largest problem's p, g and buffer alone exceed the memory."""
    memory = _physical_memory()
    if not args.sizes or memory is None:
        return
    need = 3 * max(args.sizes) * max(np.dtype(d).itemsize for d in args.dtype)
    if need > memory:
        parser.error(f"--sizes {size_label(max(args.sizes))}: p, g and the buffer need "
                     f"{need / 2**30:.1f} GiB; this machine has {memory / 2**30:.1f} GiB")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`run` that ``args`` ask for."""
    preset = FULL if args.preset == "full" else QUICK
    layouts = list(dict.fromkeys(args.layout or LAYOUTS))
    return {
        "dtypes": list(dict.fromkeys(args.dtype)),
        "sizes": args.sizes or preset["sizes"],
        "threads": list(dict.fromkeys(args.threads or default_threads())),
        "variants": args.variant or preset["variants"],
        "layouts": layouts,
        "impls": args.impl,
        "samples": args.samples,
        "min_sample_s": args.min_sample_ms / 1e3,
    }


def main(argv: Sequence[str] | None = None, *, prog: str = PROG, **knobs: Any) -> int:
    """Run the benchmark the command line asks for; return the exit status (1 if an
    implementation failed its verification).

    ``knobs`` override :func:`run`'s arguments after parsing (for tests: fewer or shorter
    samples than the command line allows, another registry, ``out``, ``progress``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, parser = _parse(argv, prog)
    _check_outputs(args, parser)
    if args.device == "cuda":
        out = knobs.get("out", "stdout")
        return cuda.main(library=args.gpu_library, sizes=args.sizes, dtypes=args.dtype,
                         samples=args.samples, min_sample_s=args.min_sample_ms / 1e3,
                         json_path=args.json,
                         command=" ".join([prog, shlex.join(argv)]).strip(),
                         out=sys.stdout if out == "stdout" else out)
    if args.torch is not None:
        return _main_torch(args, argv, prog, knobs)
    if args.state_dtype is not None:
        return _main_state_dtype(args, argv, prog, knobs)
    options = {**run_options(args), **knobs}
    options.setdefault("command", " ".join([prog, shlex.join(argv)]).strip())
    results = run(**options)
    out = options.get("out", "stdout")
    out = sys.stdout if out == "stdout" else out
    written = []
    if args.plot:  # first, so that a note about it reaches the JSON
        if not matplotlib_available():
            results.notes.append("matplotlib is not installed: no plot")
            if out is not None:
                print("# note: matplotlib is not installed: no plot", file=out)
        elif (path := write_plot(results, args.plot)) is not None:
            written.append(str(path))
        else:
            results.notes.append("no single-array results to plot: no plot")
            if out is not None:
                print("# note: no single-array results to plot: no plot", file=out)
    if args.json:
        written.insert(0, str(write_json(results, args.json)))
    if out is not None and written:
        print(f"# wrote {', '.join(written)}", file=out)
    return 1 if results.failed else 0


def _main_state_dtype(args: argparse.Namespace, argv: Sequence[str], prog: str,
                      knobs: dict[str, Any]) -> int:
    """``--state-dtype``: :func:`~.lowp_run.run_lowp` (``knobs``: its test arguments)."""
    options: dict[str, Any] = {
        "kinds": list(dict.fromkeys(args.state_dtype)), "sizes": args.sizes or LOWP_SIZES,
        "threads": list(dict.fromkeys(args.threads or default_threads())),
        "variants": args.variant or ["heavy-ball"], "samples": args.samples,
        "min_sample_s": args.min_sample_ms / 1e3,
        "command": " ".join([prog, shlex.join(argv)]).strip()}
    options.update({k: v for k, v in knobs.items()
                    if k in ("out", "samples", "min_sample_s", "peers", "command")})
    results = run_lowp(**options)
    out = options.get("out", "stdout")
    out = sys.stdout if out == "stdout" else out
    if args.json:
        path = lowp_report.write_json(results, args.json)
        if out is not None:
            print(f"# wrote {path}", file=out)
    return 1 if results.failed else 0


def _main_torch(args: argparse.Namespace, argv: Sequence[str], prog: str,
                knobs: dict[str, Any]) -> int:
    """``--torch``: :func:`~.torch_run.run_torch` (``knobs``: its test arguments); without
    torch, a line saying so and nothing timed (exit 0: nothing failed)."""
    out = knobs.get("out", "stdout")
    out = sys.stdout if out == "stdout" else out
    missing = torch_missing()
    if missing is not None:
        if out is not None:
            written = " (no JSON written)" if args.json else ""
            print(f"# --torch: skipped, {missing}{written}", file=out)
        return 0
    options: dict[str, Any] = {
        "sets": list(dict.fromkeys(args.torch or SETS)),
        "threads": list(dict.fromkeys(args.threads or TORCH_THREADS)),
        "samples": args.samples, "min_sample_s": args.min_sample_ms / 1e3,
        "command": " ".join([prog, shlex.join(argv)]).strip()}
    options.update({k: v for k, v in knobs.items()
                    if k in ("out", "samples", "min_sample_s", "sets", "command")})
    results = run_torch(**options)
    if args.json:
        path = torch_report.write_json(results, args.json)
        if out is not None:
            print(f"# wrote {path}", file=out)
    return 1 if results.failed else 0
