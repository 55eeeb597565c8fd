"""Every script in examples/ runs, and its returned numbers say what its docstring claims."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    """Import examples/<name>.py by path (examples/ is not a package)."""
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        pytest.skip(f"{path} not found")
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_regression():
    results = load("linear_regression").main(quiet=True)
    assert set(results) == {"gd", "momentum", "nesterov"}
    for r in results.values():
        assert r["theta"] == pytest.approx(3.0, abs=0.05)
        assert r["bias"] == pytest.approx(0.0, abs=0.05)
    # Momentum and Nesterov reach the tolerance in (many) fewer steps than plain GD.
    gd_steps = results["gd"]["steps"]
    assert results["momentum"]["steps"] * 3 < gd_steps
    assert results["nesterov"]["steps"] * 3 < gd_steps


def test_ema_momentum_equals_numpy_loop():
    results = load("ema_momentum").main(quiet=True)
    assert set(results) == {"float64", "float32"}
    for dtype, r in results.items():
        assert r["fastmomentum"].dtype == r["numpy"].dtype == np.dtype(dtype)
        assert np.array_equal(r["fastmomentum"], r["numpy"])  # bit for bit
        np.testing.assert_allclose(r["fastmomentum"], r["minimiser"], atol=1e-4)


def test_velocity_form():
    r = load("velocity_form").main(quiet=True)
    assert r["constant_lr_param_diff"] < 1e-12
    assert r["constant_lr_velocity_diff"] < 1e-12
    assert r["torch_p2"] == pytest.approx(-0.119, abs=1e-12)
    assert r["keras_p2"] == pytest.approx(-0.200, abs=1e-12)


def test_mlp_classifier_accuracy():
    accuracy = load("mlp_classifier").main(quiet=True)
    assert set(accuracy) == {"step", "exponential", "cosine"}
    for schedule, acc in accuracy.items():
        assert acc >= 0.9, f"{schedule}: test accuracy {acc:.3f} (chance is 1/3)"


def test_example_runs_as_script():
    script = EXAMPLES / "linear_regression.py"
    if not script.exists():
        pytest.skip(f"{script} not found")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "nesterov" in done.stdout
