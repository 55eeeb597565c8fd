"""The files a command writes at the end of a long run (``demo --plot``, ``bench --json``,
``bench --plot``), checked when its options are parsed, so that a bad path costs a usage error
and not the run (shared by ``bench`` and ``demo``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def check_writable(path: Path, option: str, parser: argparse.ArgumentParser) -> None:
    """``parser.error`` unless ``path`` can be written: not a folder, in a folder that exists and
    takes files. Tried by opening it, which leaves an existing file as it was and removes a file
    it created: permission bits alone miss read-only file systems and root's rights."""
    if path.is_dir():
        parser.error(f"{option} {path}: is a folder, not a file")
    if not path.parent.is_dir():
        parser.error(f"{option} {path}: the folder {path.parent} does not exist")
    existed = path.exists()
    try:
        with open(path, "ab" if existed else "xb"):
            pass
    except OSError as exc:
        parser.error(f"{option} {path}: cannot write it ({exc.strerror or exc})")
    if not existed:
        os.unlink(path)


def check_plot_path(path: Path, option: str, parser: argparse.ArgumentParser) -> None:
    """``parser.error`` unless matplotlib (which must be importable) writes ``path``'s suffix
    and ``path`` can be written (:func:`check_writable`)."""
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in kinds:
        parser.error(f"{option} {path}: matplotlib writes {', '.join(sorted(kinds))} files, "
                     f"not {path.suffix or 'files without a suffix'}")
    check_writable(path, option, parser)
