"""Configuration report, version, and the FASTMOMENTUM_ISA override at import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _core

from conftest import COMPILED_ISAS, DEFAULT_ISA, SUPPORTED_ISAS

KEYS = {"version", "isa", "isas_compiled", "isas_supported", "openmp", "openmp_version",
        "openmp_runtime", "threads", "grain_bytes", "compiler", "fp_contract", "cuda", "numpy",
        "python"}


def test_show_config_reports_every_key(capsys):
    config = fm.show_config(mode="dicts")
    assert set(config) == KEYS
    assert config["isa"] in config["isas_supported"]
    assert config["isas_compiled"][0] == "baseline"
    assert config["fp_contract"] == "off"
    assert config["numpy"] == np.__version__
    # tests/test_cuda_validation.py checks the line's content, built or not.
    assert config["cuda"].startswith(("built (CUDA ", "not built ("))
    # The runtime is a file that exists (a wheel's vendored copy, or the system's), or "" without
    # OpenMP.
    assert bool(config["openmp_runtime"]) == config["openmp"]
    if config["openmp"]:
        assert os.path.isfile(config["openmp_runtime"]), config["openmp_runtime"]
    assert fm.show_config() is None
    out = capsys.readouterr().out
    assert re.search(rf"^isa\s+{config['isa']}$", out, re.M)
    with pytest.raises(ValueError, match="mode must be 'stdout' or 'dicts'"):
        fm.show_config(mode="json")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), None)
    except OSError:
        return None


def test_supported_isas_agree_with_the_cpu_flags_the_kernel_reports():
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags on this platform")
    needs = {"avx2": {"avx2", "fma"},
             "avx512": {"avx2", "fma", "avx512f", "avx512dq", "avx512vl", "avx512bw"}}
    for isa, required in needs.items():
        if isa in COMPILED_ISAS:
            assert (isa in SUPPORTED_ISAS) == required.issubset(flags), isa


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_the_selected_isa_runs_that_isas_kernels(isa):
    """The name comes from the kernel object itself, so a mis-wired dispatch table shows."""
    _core.select_isa(isa)
    try:
        assert fm.show_config(mode="dicts")["isa"] == isa
    finally:
        _core.select_isa(DEFAULT_ISA)


def test_an_uncompiled_or_unknown_isa_cannot_be_selected():
    with pytest.raises(ValueError, match="unknown ISA 'neon'"):
        _core.select_isa("neon")
    assert fm.show_config(mode="dicts")["isa"] == DEFAULT_ISA


def test_the_best_supported_isa_is_chosen_by_default():
    order = ["baseline", "avx2", "avx512"]
    best = max(SUPPORTED_ISAS, key=order.index)
    assert _isa_in_subprocess(None) == best


def test_version_is_the_one_in_pyproject():
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not run from a source checkout")
    version = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M).group(1)
    assert fm.__version__ == version == fm.show_config(mode="dicts")["version"]


def _isa_in_subprocess(value):
    env = dict(os.environ)
    env.pop("FASTMOMENTUM_ISA", None)
    if value is not None:
        env["FASTMOMENTUM_ISA"] = value
    code = "import fastmomentum as fm; print(fm.show_config(mode='dicts')['isa'])"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return proc.stdout.strip()


@pytest.mark.parametrize("isa", COMPILED_ISAS)
def test_environment_variable_forces_the_isa(isa):
    if isa not in SUPPORTED_ISAS:
        with pytest.raises(RuntimeError, match=f"FASTMOMENTUM_ISA={isa}: .*not supported"):
            _isa_in_subprocess(isa)
    else:
        assert _isa_in_subprocess(isa) == isa


def test_an_unknown_isa_fails_the_import_clearly():
    with pytest.raises(RuntimeError, match=r"FASTMOMENTUM_ISA=sse9: unknown ISA 'sse9'; expected "
                                           r"baseline, avx2 or avx512"):
        _isa_in_subprocess("sse9")


def test_an_empty_variable_means_automatic():
    assert _isa_in_subprocess("") == fm.show_config(mode="dicts")["isas_supported"][-1]


def test_omp_num_threads_is_honoured():
    if not fm.show_config(mode="dicts")["openmp"]:
        pytest.skip("built without OpenMP")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = "import fastmomentum as fm; print(fm.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
