"""The commands of ``python -m fastmomentum``: ``demo``, ``info`` and ``bench``.

They are tools built on the library, kept apart from it: :mod:`.demo` (a NumPy MLP trained with
``fm.SGD``), :mod:`.bench` (the benchmark harness against NumPy, numexpr, numba and torch), and
what only they need (a progress bar, checks of output paths). The library never imports them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__, show_config
from .demo import cli as demo_cli

# The options of this parser itself; any other option before a command is the demo's.
_OWN_OPTIONS = ("-h", "--help", "--version")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the command, return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0].startswith("-") and argv[0] not in _OWN_OPTIONS:
        argv = ["demo", *argv]  # without a command: the demo, with its options
    if argv[:1] == ["bench"]:  # its own parser, so that `bench --help` lists its options
        from .bench import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m fastmomentum",
        description="Fused momentum-SGD updates for NumPy arrays. Without a command: demo "
        "(its options too: `python -m fastmomentum --quiet`).")
    parser.add_argument("--version", action="version", version=f"fastmomentum {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{demo,info,bench}")
    demo = demo_cli.add_parser(commands)
    commands.add_parser("info", help="print the version, ISAs, OpenMP runtime and threads, CUDA "
                        "status and NumPy version",
                        description="Print the build and runtime configuration "
                        "(fastmomentum.show_config()).")
    commands.add_parser("bench", add_help=False,
                        help="time fastmomentum against NumPy, numexpr, numba and torch "
                        "(`bench --help` for its options)")
    args = parser.parse_args(argv)

    if args.command == "info":
        show_config()
        return 0
    if args.command is None:
        args = demo.parse_args([])
    return demo_cli.run(args, demo)

