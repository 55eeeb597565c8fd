"""``python -m fastmomentum [demo|info|bench]``: the package's front door."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import show_config
from .demo import cli as demo_cli


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the command, return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser, so that `bench --help` lists its options
        from .benchmark import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m fastmomentum",
        description="Fused momentum-SGD updates for NumPy arrays. Without a command: demo.")
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


if __name__ == "__main__":
    sys.exit(main())
