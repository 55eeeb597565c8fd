"""``python -m fastmomentum``: the info and demo commands, their options and errors."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastmomentum as fm
from fastmomentum.__main__ import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "fastmomentum", *args], capture_output=True,
                          text=True, timeout=120)


def test_info_names_every_part_of_the_configuration():
    proc = _run("info")
    assert proc.returncode == 0, proc.stderr
    keys = [line.split()[0] for line in proc.stdout.splitlines()]
    for key in ("version", "isa", "isas_compiled", "openmp", "openmp_runtime", "threads", "cuda",
                "numpy", "python"):
        assert key in keys, proc.stdout


def test_demo_prints_the_table_of_the_three_optimizers_without_a_bar_off_a_terminal():
    proc = _run("demo", "--epochs", "3", "--hidden", "16")
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("epoch"))
    assert all(label in header for label in ("plain SGD", "momentum 0.9", "Nesterov 0.9"))
    assert "median time of one opt.step" in proc.stdout
    assert proc.stderr == ""  # stderr is a pipe: no progress bar


def test_demo_banner_counts_in_the_right_number():
    proc = _run("demo", "--epochs", "1", "--hidden", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    banner = proc.stdout.splitlines()[0]
    assert "2000 training points, 1 epoch of 40 steps," in banner, banner
    proc = _run("demo", "--epochs", "2", "--hidden", "4", "--quiet")
    assert "2000 training points, 2 epochs of 40 steps," in proc.stdout.splitlines()[0]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_demo_progress_bar_on_a_terminal_unless_quiet(quiet, monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["demo", "--epochs", "2", "--hidden", "8", *(["--quiet"] if quiet else [])]) == 0
    counts = [int(c) for c in re.findall(r"(\d+)/6 epochs", terminal.getvalue())]
    assert "Nesterov 0.9" in capsys.readouterr().out
    if quiet:
        assert terminal.getvalue() == ""
        return
    # Drawn before the first epoch and after each of the 3 optimizers x 2 epochs: the epoch in
    # progress, never past the total.
    assert counts == [1, 2, 3, 4, 5, 6, 6], counts


def test_demo_that_diverges_says_so_and_exits_1(capsys):
    assert main(["demo", "--epochs", "2", "--hidden", "8", "--lr", "1e9", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "nan" in captured.out  # the table is still printed
    assert captured.err == ("demo: the training loss of plain SGD, momentum 0.9, Nesterov 0.9 is "
                            "not finite: --lr 1000000000.0 is too large for this model (the "
                            "default is 0.5)\n")


def test_demo_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    proc = _run("demo", "--epochs", "2", "--hidden", "8", "--plot", str(path))
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved to {path}" in proc.stdout


def test_demo_plot_without_matplotlib_fails_before_training(monkeypatch, capsys, tmp_path):
    # import matplotlib -> ImportError, and its submodules too, even if another test loaded them.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--plot", str(tmp_path / "x.png")])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "pip install 'fastmomentum[plot]'" in captured.err
    assert "epoch" not in captured.out


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs and --hidden must be >= 1"),
    (["--hidden", "0"], "--epochs and --hidden must be >= 1"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--dtype", "float16"], "invalid choice"),
    (["--lr", "1e40"], "--lr 1e+40 overflows --dtype float32"),
    (["--plot", "no-such-folder/curves.png"], "does not exist"),
    (["--plot", "curves.txt"], "not .txt"),
    (["--plot", "a-folder.png"], "--plot a-folder.png: is a folder, not a file"),
])
def test_demo_bad_arguments_exit_with_usage_before_training(args, message, tmp_path):
    if "--plot" in args:
        pytest.importorskip("matplotlib")
    (tmp_path / "a-folder.png").mkdir()
    proc = subprocess.run([sys.executable, "-m", "fastmomentum", "demo", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage:") and message in proc.stderr, proc.stderr
    assert proc.stdout == ""  # nothing trained


def test_without_a_command_options_go_to_the_demo(capsys):
    assert main(["--epochs", "2", "--hidden", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "MLP 2 -> 8 -> 3" in out and "2 epochs of" in out


def test_version():
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"fastmomentum {fm.__version__}\n"


def test_a_reader_that_goes_away_ends_the_output_without_a_traceback():
    """``python -m fastmomentum demo | head -1``: a closed pipe stops the command quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first line: every write fails, in any schedule
    try:
        proc = subprocess.run([sys.executable, "-m", "fastmomentum", "demo", "--epochs", "2",
                               "--hidden", "8"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (1, "")


def test_readme_demo_output_has_the_lines_a_run_prints():
    """The README's copy of the demo's output keeps the run's header, column and legend lines
    (the numbers depend on the machine's BLAS; these lines do not)."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("no README.md beside the tests")
    block = re.search(r"```text\n(fastmomentum \d.*?)```", readme.read_text(), re.S)
    assert block, "README has no demo output block"
    shown = block.group(1).splitlines()
    run = _run("demo").stdout.splitlines()
    fixed = [line for line in run if not re.search(r"\d\.\d", line) or line.startswith("fastm")]
    for line in fixed:
        if line.startswith("fastmomentum "):  # the version, ISA and threads are the machine's
            line = line.split(". ", 1)[1]
            assert any(s.endswith(line) for s in shown), line
        else:
            assert line in shown, line
    assert len(shown) == len(run)


def test_every_command_has_help():
    for command in ([], ["demo"], ["info"], ["bench"]):
        proc = _run(*command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage:")
