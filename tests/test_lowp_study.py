"""bench/lowp_study.py, the "does it still train?" study, in its smallest configuration: it runs,
writes its files, stores each kind as named, and float32 and Kahan runs lower the loss. (Its
accuracy targets are the study's to report, not a unit test's.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

STUDY = Path(__file__).resolve().parents[1] / "bench" / "lowp_study.py"


@pytest.fixture(scope="module")
def study() -> ModuleType:
    """bench/lowp_study.py imported by path (bench/ is not a package)."""
    pytest.importorskip("ml_dtypes")
    spec = importlib.util.spec_from_file_location("bench_lowp_study", STUDY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["float32", "bf16 momentum", "8-bit momentum",
                                  "bf16 params, stochastic", "bf16 params, Kahan",
                                  "fp16 params, Kahan"])
def test_each_kind_is_stored_as_named(study, kind):
    spec = study.KINDS[kind]
    init = [np.ones((3, 300), np.float32), np.ones(300, np.float32)]
    params, buffers, keywords = study.make_state(spec, init, seed=7)
    assert [p.dtype.name for p in params] == [spec.params] * 2
    if spec.buffers == "8-bit":
        assert [(b[0].dtype.name, b[0].shape, b[1].dtype.name, b[1].shape) for b in buffers] == [
            ("int8", (3, 300), "float32", (4,)), ("int8", (300,), "float32", (2,))]
        stored = sum(b[0].nbytes + b[1].nbytes for b in buffers)
    else:
        assert [b.dtype.name for b in buffers] == [spec.buffers] * 2
        stored = sum(b.nbytes for b in buffers)
    compensations = keywords.pop("compensations", [])
    if spec.write_back == "kahan":  # zero compensations of the parameters' dtype and shapes
        assert [(c.dtype, c.shape) for c in compensations] == [(p.dtype, p.shape) for p in params]
        assert not any(c.any() for c in compensations)
    else:
        assert compensations == []
    assert keywords == ({"rounding": "stochastic", "seed": 7}
                        if spec.write_back == "stochastic" else {})
    stored += sum(p.nbytes for p in params) + sum(c.nbytes for c in compensations)
    assert stored / 1200 == pytest.approx(study.state_bytes(spec), rel=0.01)


def test_smallest_study_runs_and_float32_and_kahan_lower_the_loss(study, tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "study.json", tmp_path / "study.png"
    assert study.main(["--seeds", "1", "--epochs", "0.05", "--kinds", "bf16 params, Kahan",
                       "--json", str(out_json), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" seed 0: test accuracy ") == 4  # one progress line per run
    assert "| bf16 params, Kahan | 6 |" in printed
    assert out_png.stat().st_size > 0
    runs = json.loads(out_json.read_text())["runs"]
    assert set(runs) == {"digits", "spirals"}
    for kinds in runs.values():
        assert set(kinds) == {"float32", "bf16 params, Kahan"}
        for (curves,) in kinds.values():
            loss = curves["train_loss"]
            assert len(loss) >= 4  # epoch 0 and at least 3 epochs
            assert loss[-1] < 0.7 * loss[0]


def test_writes_nothing_unless_asked(study, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    assert study.main(["--seeds", "1", "--epochs", "0.02", "--kinds", "float32"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_says_when_scikit_learn_is_missing(study, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    assert study.main(["--seeds", "1"]) == 2
    assert "pip install scikit-learn" in capsys.readouterr().err
