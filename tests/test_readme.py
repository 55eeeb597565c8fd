"""Every code block of the README is executed: Python blocks here, shell blocks here or by CI.

A ```python block runs as written. A ```bash block must either follow a ``<!-- test:run -->``
line (its commands run here, each in a fresh process) or sit between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` markers that ``.ci/run`` extracts and runs (the quick start, the minimal
build, the benchmark). A ```text block is output, not code. Any other block fails the test.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import fastmomentum as fm

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8") if README.exists() else ""
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
BLOCKS = [(m.group(1), m.group(2), m.start()) for m in FENCE.finditer(TEXT)]
PYTHON = [source for lang, source, _ in BLOCKS if lang == "python"]
RUN_HERE = [source for lang, source, start in BLOCKS
            if lang == "bash" and TEXT[:start].rstrip().endswith("<!-- test:run -->")]

pytestmark = pytest.mark.skipif(not TEXT, reason="no README.md beside the tests")


def _ci_region(start: int) -> str | None:
    """The NAME of the ``<!-- NAME:begin -->`` region around position ``start``, if any."""
    opened = list(re.finditer(r"<!-- ([\w:-]+):begin -->", TEXT[:start]))
    if not opened:
        return None
    name = opened[-1].group(1)
    end = TEXT.find(f"<!-- {name}:end -->", opened[-1].end())
    return name if end > start else None


def _commands(source: str) -> list[str]:
    return [line for line in source.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_every_block_is_executed_somewhere():
    ci = "\n".join(line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                   if not line.lstrip().startswith("#"))  # a mention in a comment runs nothing
    assert BLOCKS, "no code blocks found"
    for lang, source, start in BLOCKS:
        where = f"README.md block at line {TEXT[:start].count(chr(10)) + 1}"
        if lang in ("python", "text"):
            continue
        assert lang == "bash", f"{where}: fence ```{lang} (python, bash or text only)"
        if source in RUN_HERE:
            continue
        region = _ci_region(start)
        assert region, f"{where}: a bash block needs <!-- test:run --> or CI markers"
        # .ci/run must extract this region by name (readme_commands or run_readme NAME).
        assert re.search(rf"(readme_commands|run_readme) {re.escape(region)}\b", ci), \
            f"{where}: region {region!r} is not run by .ci/run"


def _uses_torch(source: str) -> bool:
    return re.search(r"^import torch\b", source, re.M) is not None


# A block that imports torch runs where torch is installed: CI's parity stage selects it by its id.
@pytest.mark.parametrize("source", PYTHON, ids=[f"python{i}" + ("-torch-parity" if _uses_torch(s)
                                                                else "")
                                                for i, s in enumerate(PYTHON)])
def test_readme_python_block_runs(source, restore_threads, tmp_path, monkeypatch):
    if _uses_torch(source):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # blocks may write files (checkpoints)
    exec(compile(source, str(README), "exec"), {})


@pytest.mark.parametrize("source", RUN_HERE, ids=[f"bash{i}" for i in range(len(RUN_HERE))])
def test_readme_shell_block_runs(source, tmp_path):
    for command in _commands(source):
        argv = shlex.split(command)
        assert argv[0] == "python", f"only python commands run here: {command}"
        if "--plot" in argv:
            pytest.importorskip("matplotlib")
        done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        if "--plot" in argv:
            plot = tmp_path / argv[argv.index("--plot") + 1]
            assert plot.read_bytes()[:4] == b"\x89PNG", command


def test_the_checkpoint_example_saves_the_whole_run_and_resumes_it_bit_for_bit(tmp_path,
                                                                                   monkeypatch):
    """The README's checkpoint example (its ``train``), interrupted at several points: the
    resumed run ends with the uninterrupted run's bits, from a checkpoint that holds every part
    of the run (a checkpoint of the optimizer alone would restart the parameters)."""
    [source] = [s for s in PYTHON if "def train(" in s and "fm.checkpoint.save" in s]
    monkeypatch.chdir(tmp_path)
    example: dict = {}
    exec(compile(source, str(README), "exec"), example)
    train = example["train"]
    whole = train(50, "whole.npz")
    assert set(fm.checkpoint.load("whole.npz")) == {"params", "optimizer", "scheduler", "rng",
                                                    "step"}
    for stop in (1, 10, 25, 49):  # before any checkpoint, at one, and between two
        path = f"run{stop}.npz"
        partial = train(50, path, stop_after=stop)
        assert any(partial[k].tobytes() != whole[k].tobytes() for k in whole)
        resumed = train(50, path)
        for name in whole:
            assert resumed[name].tobytes() == whole[name].tobytes(), (stop, name)
