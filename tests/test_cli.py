"""``python -m fastmomentum``: the demo and info commands."""

from __future__ import annotations

import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "fastmomentum", *args], capture_output=True,
                          text=True)


def test_demo_agrees_with_numpy_and_prints_the_config():
    proc = _run("demo", "--size", "5000", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    assert "agree bit for bit: True" in proc.stdout
    assert "speed-up:" in proc.stdout
    assert "isas_compiled" in proc.stdout


def test_info_prints_the_config():
    proc = _run("info")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("version")


def test_bad_arguments_exit_with_usage():
    proc = _run("demo", "--size", "0")
    assert proc.returncode == 2
    assert "--size and --repeats must be >= 1" in proc.stderr
