"""``python -m fastmomentum``: the info and demo commands, their options and errors."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

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
    assert "time in opt.step" in proc.stdout
    assert proc.stderr == ""  # stderr is a pipe: no progress bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_demo_progress_bar_on_a_terminal_unless_quiet(quiet, monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["demo", "--epochs", "2", "--hidden", "8", *(["--quiet"] if quiet else [])]) == 0
    drawn = terminal.getvalue()
    assert ("epochs  ETA" in drawn) is not quiet, drawn
    assert ("6/6 epochs" in drawn) is not quiet  # 3 optimizers x 2 epochs, counted to the end
    assert "Nesterov 0.9" in capsys.readouterr().out


def test_demo_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    proc = _run("demo", "--epochs", "2", "--hidden", "8", "--plot", str(path))
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved to {path}" in proc.stdout


def test_demo_plot_without_matplotlib_fails_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--plot", str(tmp_path / "x.png")])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "pip install 'fastmomentum[plot]'" in captured.err
    assert "epoch" not in captured.out


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--hidden", "0"], ["--lr", "0"],
                                  ["--dtype", "float16"]])
def test_demo_bad_arguments_exit_with_usage(args):
    proc = _run("demo", *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage:")


def test_every_command_has_help():
    for command in ([], ["demo"], ["info"], ["bench"]):
        proc = _run(*command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage:")
