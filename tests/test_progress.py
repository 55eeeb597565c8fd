"""The progress bar shared by ``bench`` and ``demo``: only on a terminal, never wider than it, and
its counter never past the total."""

from __future__ import annotations

import io
import os
import re

from fastmomentum.commands import _progress
from fastmomentum.commands._progress import Progress


def test_progress_bar_only_on_a_terminal():
    quiet = io.StringIO()
    bar = Progress(10.0, 4, stream=quiet)  # a StringIO is no terminal
    bar.show("x")
    bar.advance(5.0, row_done=True)
    bar.show("y")
    bar.clear()
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    bar = Progress(10.0, 4, stream=shown, enabled=True)
    bar.show("first")
    assert "[" + "." * Progress.WIDTH + "] 1/4 rows  ETA ?  first" in shown.getvalue()
    bar.advance(5.0, row_done=True)
    bar.show("second")
    assert "[" + "#" * (Progress.WIDTH // 2) in shown.getvalue()
    assert "2/4 rows  ETA 0:0" in shown.getvalue() and "second" in shown.getvalue()


def test_progress_bar_fits_the_terminal_and_caps_its_counter(monkeypatch):
    # A StringIO has no file descriptor: the width then comes from shutil.
    monkeypatch.setattr(_progress.shutil, "get_terminal_size", lambda: os.terminal_size((40, 24)))
    shown = io.StringIO()
    bar = Progress(2.0, 2, stream=shown, enabled=True, unit="epochs")
    for _ in range(2):
        bar.advance(1.0, row_done=True)
        bar.show("a description far too long to fit on a forty-column terminal line")
    bar.clear()
    frames = shown.getvalue().split("\r")[1:-1]  # the text ends with the cursor back at column 0
    assert frames and all(len(frame) == 39 for frame in frames)  # padded over the last frame
    counts = [int(m.group(1)) for f in frames for m in [re.search(r"(\d+)/2 epochs", f)] if m]
    assert counts == [2, 2]  # the unit in progress, then the last one: never 3/2
    assert frames[-1].strip() == ""  # cleared


def test_progress_bar_measures_the_terminal_it_draws_on(monkeypatch, tmp_path):
    """stderr's terminal, not stdout's: with stdout redirected shutil would answer 80."""
    monkeypatch.setattr(_progress.shutil, "get_terminal_size", lambda: os.terminal_size((80, 24)))
    asked = []

    def size_of(fd):
        asked.append(fd)
        return os.terminal_size((30, 24))

    monkeypatch.setattr(_progress.os, "get_terminal_size", size_of)
    with open(tmp_path / "tty", "w") as stream:
        bar = Progress(1.0, 1, stream=stream, enabled=True)
        bar.show("x" * 100)
        fd = stream.fileno()
    assert asked == [fd]
    assert len((tmp_path / "tty").read_text()) == 1 + 29


def test_no_stream_means_no_bar(monkeypatch):
    monkeypatch.setattr(_progress.sys, "stderr", None)  # pythonw
    bar = Progress(1.0, 1)
    assert not bar.enabled
    bar.show("x")
    bar.clear()
