"""Whether the CUDA module is built, and what fastmomentum says when it is not or cannot run: the
build's driver check (cmake/cuda_driver.cmake, run with ``cmake -P``), the reason the build
records for a missing module, and the reasons given for no usable device (with stand-ins for the
module's ``build()`` and ``devices()``, so that they are checked on machines without it)."""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import pytest

import fastmomentum as fm
from fastmomentum import _backend, _core

ROOT = Path(__file__).resolve().parents[1]
DRIVER_CHECK = ROOT / "cmake" / "cuda_driver.cmake"
NO_DRIVER = "no CUDA driver / no GPU (no NVIDIA driver is installed or loaded here)"
INSUFFICIENT = ("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
                "runtime version")


def pick_driver(tmp_path: Path, ld_library_path: str, ldconfig_output: str) -> str:
    """``fm_pick_cuda_driver``'s answer for these inputs."""
    script = tmp_path / "pick.cmake"
    script.write_text(f'include("{DRIVER_CHECK.as_posix()}")\n'
                      'fm_pick_cuda_driver(found "$ENV{FM_LD}" "$ENV{FM_LDCONFIG}")\n'
                      'message(STATUS "found=[${found}]")\n')
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH")
    done = subprocess.run([cmake, "-P", str(script)], capture_output=True, text=True, check=True,
                          env={"FM_LD": ld_library_path, "FM_LDCONFIG": ldconfig_output})
    out = done.stdout + done.stderr
    return out[out.index("found=[") + 7:out.index("]", out.index("found=["))]


@pytest.mark.skipif(not DRIVER_CHECK.exists(), reason="no cmake/ beside the tests (a wheel)")
def test_the_build_counts_a_libcuda_as_a_driver_but_not_the_toolkits_stub(tmp_path):
    real, stubs, empty = tmp_path / "driver", tmp_path / "cuda" / "lib64" / "stubs", tmp_path / "e"
    for folder in (real, stubs, empty):
        folder.mkdir(parents=True)
    (real / "libcuda.so.1").write_bytes(b"")
    (stubs / "libcuda.so").write_bytes(b"")
    (stubs / "libcuda.so.1").write_bytes(b"")  # what driverless images link against
    link_folder = tmp_path / "links"
    link_folder.mkdir()
    (link_folder / "libcuda.so.1").symlink_to(stubs / "libcuda.so")

    assert pick_driver(tmp_path, "", "") == ""
    assert pick_driver(tmp_path, f"{empty}::{real}", "") == f"{real}/libcuda.so.1"
    assert pick_driver(tmp_path, f"{stubs}:{link_folder}", "") == ""
    cache = (f"4 libs found in cache `/etc/ld.so.cache'\n"
             f"\tlibcudart.so.13 (libc6,x86-64) => {empty}/libcudart.so.13\n"
             f"\tlibcuda.so.1 (libc6) => {empty}/libcuda.so.1\n"        # listed, but gone
             f"\tlibcuda.so.1 (libc6,x86-64) => {stubs}/libcuda.so.1\n"
             f"\tlibcuda.so.1 (libc6,x86-64) => {real}/libcuda.so.1\n")
    assert pick_driver(tmp_path, str(stubs), cache) == f"{real}/libcuda.so.1"
    assert pick_driver(tmp_path, "", cache.replace(f"{real}/", f"{empty}/")) == ""


def test_the_build_records_why_it_left_the_module_out():
    # Empty exactly when the module was built (and so imports).
    assert (_core.cuda_not_built == "") == (_backend._cuda is not None)


def test_a_missing_module_is_reported_with_the_builds_reason_and_the_remedy(monkeypatch):
    monkeypatch.setattr(_backend, "_cuda", None)
    monkeypatch.setattr(_core, "cuda_not_built",
                        "a CUDA compiler but no CUDA driver (libcuda) on the build machine")
    expected = ("not built (a CUDA compiler but no CUDA driver (libcuda) on the build machine); "
                "to build it, reinstall with nvcc on PATH and -Ccmake.define.FASTMOMENTUM_CUDA=ON")
    assert fm.show_config(mode="dicts")["cuda"] == expected
    assert _backend.no_device_reason() == f"fastmomentum's CUDA module is {expected}"


def fake_cuda(driver_version: int, error: str | None, devices: list[dict] | None = None):
    """A stand-in for the CUDA module's reports."""
    build = {"runtime_version": 13000, "driver_version": driver_version,
             "architectures": "75-real 80-real 90"}
    return types.SimpleNamespace(build=lambda: build,
                                 devices=lambda: {"devices": devices or [], "error": error})


def test_no_driver_is_said_plainly_not_as_an_insufficient_driver(monkeypatch):
    # What the static cudart reports on a machine without a driver (driver version 0).
    monkeypatch.setattr(_backend, "_cuda", fake_cuda(0, INSUFFICIENT))
    assert fm.show_config(mode="dicts")["cuda"] == (
        f"built (CUDA 13.0, architectures 75-real 80-real 90); no usable device: {NO_DRIVER}")
    assert _backend.no_device_reason() == f"no usable CUDA device: {NO_DRIVER}"


def test_a_driver_too_old_keeps_cudas_message_and_gives_the_versions(monkeypatch):
    monkeypatch.setattr(_backend, "_cuda", fake_cuda(12020, INSUFFICIENT))
    reason = (f"{INSUFFICIENT} (the driver supports CUDA 12.2, this module was built with CUDA "
              "13.0: update the driver)")
    assert _backend.no_device_reason() == f"no usable CUDA device: {reason}"
    assert fm.show_config(mode="dicts")["cuda"].endswith(f"; no usable device: {reason}")


def test_a_driver_without_a_gpu_and_a_gpu_are_reported_as_cuda_says(monkeypatch):
    no_gpu = "cudaErrorNoDevice: no CUDA-capable device is detected"
    monkeypatch.setattr(_backend, "_cuda", fake_cuda(13000, no_gpu))
    assert _backend.no_device_reason() == f"no usable CUDA device: {no_gpu}"
    gpu = {"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "memory_bytes": 1}
    monkeypatch.setattr(_backend, "_cuda", fake_cuda(13000, None, [gpu]))
    assert _backend.no_device_reason() is None
    assert fm.show_config(mode="dicts")["cuda"].endswith(
        "; devices 0: NVIDIA H200 (compute capability 9.0)")
