"""``bench --device cuda`` without a GPU: its options, its refusal when there is no device, and
its verification, timing and report run end to end on a stand-in library whose "device" is host
memory (the step then runs on the CPU kernels: only the GPU itself is left out)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fastmomentum.commands.bench import cli
from fastmomentum.commands.bench import cuda as gpu_bench


class HostLibrary(gpu_bench.Library):
    """NumPy in the place of CuPy or PyTorch."""

    def __init__(self, broken: bool = False) -> None:
        self.name = "host-stand-in"
        self.module = np
        self.broken = broken

    def to_device(self, a):
        return a.copy()

    def to_host(self, x):
        return x + np.float32(1e-3) if self.broken else x

    def empty_like(self, x):
        return np.empty_like(x)

    def copy(self, dst, src):
        np.copyto(dst, src)

    def synchronize(self):
        pass


def test_the_report_gives_gbps_against_the_copy_measured_in_the_same_run(capsys):
    rows = gpu_bench.run(HostLibrary(), [1000, 5001], ["float32"], ["fastmomentum"], samples=3,
                         min_sample_s=0.001, out=sys.stdout)
    by = {(r.size, r.impl): r for r in rows}
    assert set(by) == {(n, i) for n in (1000, 5001) for i in ("copy", "fastmomentum")}
    for n in (1000, 5001):
        copy, ours = by[n, "copy"], by[n, "fastmomentum"]
        assert copy.vs_copy == 1.0 and not ours.note
        assert ours.gbps == pytest.approx(5 * n * 4 / ours.seconds / 1e9)
        assert ours.vs_copy == pytest.approx(ours.gbps / copy.gbps)
    out = capsys.readouterr().out
    assert "implementation" in out
    assert "#" not in out.split("implementation", 1)[1]  # no ratio line: no peer ran


def test_a_wrong_result_is_reported_and_not_timed():
    rows = gpu_bench.run(HostLibrary(broken=True), [100], ["float64"], ["fastmomentum"],
                         samples=3, min_sample_s=0.001, out=None)
    ours = next(r for r in rows if r.impl == "fastmomentum")
    assert ours.seconds is None and ours.note == "FAILED: p differs from the CPU kernels' bits"


def test_without_a_device_the_command_says_why_and_exits_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_bench, "no_device_reason", lambda: "no usable CUDA device: test")
    assert cli.main(["--device", "cuda", "--json", str(tmp_path / "b.json")]) == 2
    assert "bench --device cuda: no usable CUDA device: test" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_the_command_writes_json(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_bench, "load_library", lambda name: HostLibrary())
    path = tmp_path / "b.json"
    assert cli.main(["--device", "cuda", "--sizes", "1000", "--dtype", "float32", "--json",
                     str(path)], out=None) == 0
    saved = json.loads(path.read_text())
    assert saved["library"] == "host-stand-in"
    assert {r["impl"] for r in saved["rows"]} == {"copy", "fastmomentum"}


@pytest.mark.parametrize("option", [["--threads", "1"], ["--quick"], ["--layout", "list"],
                                    ["--impl", "numpy"], ["--variant", "nesterov"]])
def test_cpu_options_are_refused_with_the_cuda_device(option, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--device", "cuda", *option])
    assert f"error: {option[0]}: CPU options, not for --device cuda" in capsys.readouterr().err


def test_the_gpu_library_option_needs_the_cuda_device(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--gpu-library", "torch"])
    assert "--gpu-library is for --device cuda" in capsys.readouterr().err
