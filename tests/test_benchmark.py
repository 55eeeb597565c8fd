"""``python -m fastmomentum bench`` (:mod:`fastmomentum.commands.bench`): runs, reports, verifies.

The runs here use ``run()``'s test knobs (2 samples of 2 ms) so that they take seconds; the
command line itself refuses fewer than 7 samples of 20 ms.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _core
from fastmomentum.commands.bench import IMPLEMENTATIONS, main, run
from fastmomentum.commands.bench.cli import parse_args, run_options
from fastmomentum.commands.bench.peers import Built, Implementation, Unavailable
from fastmomentum.commands.bench.problems import (
    HEAVY_BALL,
    LAYOUTS,
    NESTEROV,
    Layout,
    make_layout_problem,
    size_label,
)
from fastmomentum.commands.bench.report import JSON_SCHEMA
from fastmomentum.commands.bench.threads import thread_limit
from fastmomentum.commands.bench.timing import sample_seconds_per_call
from fastmomentum.commands.bench.verify import Verifier, reference_steps

from reference import torch_sgd

FAST = dict(samples=2, min_sample_s=0.002)
RECORD_KEYS = {"dtype", "layout", "n_arrays", "variant", "size", "threads", "impl", "status",
               "seconds", "samples", "verified_elements", "threads_set", "threads_ran",
               "others_cpu", "note", "ns_per_element"}
ROW_KEYS = {"dtype", "layout", "variant", "size", "threads", "fastmomentum_gb_per_s",
            "ratio_to_bound", "best_peer", "ratio_to_best_peer", "speedup_over_numpy",
            "others_cpu"}


def available(name: str) -> bool:
    try:
        IMPLEMENTATIONS[name].load()
    except Unavailable:
        return False
    return True


def table_rows(stdout: str) -> list[list[str]]:
    """The data rows of every table (lines that start with a size label)."""
    return [line.split() for line in stdout.splitlines()
            if line.strip() and line.split()[0][:1].isdigit()]


# --- the command line ---------------------------------------------------------------------------


def test_tiny_cli_run_prints_the_table_and_writes_json_and_png(tmp_path, capsys):
    json_path, png_path = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["--sizes", "1e3", "1e5", "--threads", "1", "--dtype", "float32",
            "--json", str(json_path), "--plot", str(png_path)]
    assert main(argv, **FAST) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no progress bar when stderr is no terminal
    assert f"# command: python -m fastmomentum bench {' '.join(argv)}" in out
    for needle in ("# versions: python", "numpy " + np.__version__, "# CPU: ",
                   f"ISA in use {fm.show_config(mode='dicts')['isa']}", "# time: median of 2",
                   "WARNING: fewer samples", "# verified before timing",
                   "## float32, single array, heavy-ball",
                   "## float32, list of 200 arrays, heavy-ball", "numpy*", "numba*"):
        assert needle in out, needle

    names = list(IMPLEMENTATIONS)
    rows = table_rows(out)
    assert [(r[0], r[1]) for r in rows] == [("1e3", "1"), ("1e5", "1")] * 2
    n_columns = 2 + len(names) + 6
    for row in rows:
        assert len(row) == n_columns, row
        cells = dict(zip(names, row[2:2 + len(names)], strict=True))  # then the 6 summary columns
        for name in ("numpy", "fastmomentum"):
            assert float(cells[name]) > 0
        assert row[-2].endswith("x") and float(row[-2][:-1]) > 0  # speed-up over numpy
        assert float(row[-1].rstrip("!")) >= 0  # CPUs other processes used meanwhile
    assert [dict(zip(names, r[2:2 + len(names)], strict=True))["fastmomentum-flat"]
            for r in rows[:2]] == ["n/a"] * 2

    data = json.loads(json_path.read_text())
    assert data["schema"] == JSON_SCHEMA
    assert data["command"].endswith(" ".join(argv))
    assert {"options", "metadata", "method", "implementations", "notes", "records", "rows",
            "failed", "duration_s"} <= set(data)
    assert data["metadata"]["versions"]["numpy"] == np.__version__
    assert data["metadata"]["fastmomentum_config"]["isa"] == fm.show_config(mode="dicts")["isa"]
    assert list(data["implementations"]) == names
    assert len(data["records"]) == 2 * 2 * len(names)  # 2 layouts x 2 sizes
    for record in data["records"]:
        assert set(record) == RECORD_KEYS
        if record["status"] == "ok":
            assert len(record["samples"]) == 2
            assert record["seconds"] == pytest.approx(float(np.median(record["samples"])))
            assert record["ns_per_element"] == pytest.approx(record["seconds"] / record["size"]
                                                             * 1e9)
        else:
            assert record["seconds"] is None and record["note"]
    statuses = {(r["impl"], r["layout"]): r["status"] for r in data["records"]}
    assert statuses[("fastmomentum", "list")] == statuses[("numpy", "single")] == "ok"
    assert statuses[("fastmomentum-flat", "single")] == "n/a"
    assert data["failed"] == []
    assert len(data["rows"]) == 4
    for row in data["rows"]:
        assert set(row) == ROW_KEYS
        assert row["speedup_over_numpy"] > 0

    if pytest.importorskip("matplotlib"):
        assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_writes_no_file_unless_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--sizes", "1e3", "--threads", "1", "--dtype", "float64", "--layout", "single",
            "--impl", "numpy", "fastmomentum"]
    assert main(argv, **FAST) == 0
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert "## float64, single array, heavy-ball" in out and "# wrote" not in out


def test_skipping_json_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--sizes", "1e3", "--threads", "1", "--dtype", "float64", "--layout", "single",
            "--impl", "numpy", "fastmomentum", "--no-json", "--plot", ""]
    assert main(argv, **FAST) == 0
    assert list(tmp_path.iterdir()) == []
    assert "# wrote" not in capsys.readouterr().out


def test_python_m_fastmomentum_bench_is_wired_and_keeps_the_minimums():
    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fastmomentum", "bench", *args],
                              capture_output=True, text=True)

    proc = bench("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--full", "--sizes", "--dtype", "--threads", "--variant",
                   "--layout", "--impl", "--json", "--plot", "--samples", "--min-sample-ms"):
        assert option in proc.stdout
    help_text = " ".join(proc.stdout.split())
    for option in ("--no-json", "--no-plot"):  # the old spellings, now the default
        assert f"{option} deprecated: no " in help_text
    for args in (["--samples", "6"], ["--min-sample-ms", "19"], ["--min-sample-ms", "nan"],
                 ["--min-sample-ms", "inf"]):
        proc = bench(*args)
        assert proc.returncode == 2
        assert ("honest timings need --samples >= 7 and a finite --min-sample-ms >= 20"
                in proc.stderr)
    proc = bench("--sizes", "100")  # lists split 100 elements over 200 arrays: refused
    assert proc.returncode == 2 and "--sizes must be >= 200" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--json", "no-such-folder/r.json"], "--json no-such-folder/r.json: the folder no-such-folder "
                                          "does not exist"),
    (["--json", "."], "--json .: is a folder, not a file"),
    (["--json", "-"], "--json takes a file path ('-' is not standard output here)"),
    (["--plot", "-"], "--plot takes a file path"),
    (["--json", "same.png", "--plot", "./same.png"], "--json and --plot name the same file"),
    (["--no-json", "--plot", "r.txt"], "--plot r.txt: matplotlib writes"),
    (["--sizes", "1e20"], "--sizes 1e20: p, g and the buffer need"),
])
def test_bad_output_paths_and_sizes_are_refused_before_timing(args, message, tmp_path, capsys,
                                                              monkeypatch):
    if "--plot" in args:
        pytest.importorskip("matplotlib")
    if "--sizes" in args and not hasattr(os, "sysconf"):
        pytest.skip("the memory check needs the machine's memory size (POSIX sysconf)")
    monkeypatch.chdir(tmp_path)
    argv = ["--threads", "1", "--dtype", "float32", "--layout", "single", "--impl", "numpy", *args]
    with pytest.raises(SystemExit) as exit_:
        main(argv, **FAST)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert f"error: {message}" in captured.err
    assert captured.out == ""  # nothing timed
    assert list(tmp_path.iterdir()) == []  # the checks leave nothing behind


def test_a_plot_with_nothing_to_draw_says_so(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    argv = ["--sizes", "1e3", "--threads", "1", "--dtype", "float64", "--layout", "list",
            "--impl", "fastmomentum", "--no-json", "--plot", "r.png"]
    assert main(argv, **FAST) == 0
    assert "# note: no single-array results to plot: no plot" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_presets_and_overrides():
    quick = run_options(parse_args([]))
    assert quick["sizes"] == {"single": [10**3, 10**6, 3 * 10**7], "list": [10**6]}
    assert quick["variants"] == ["heavy-ball"] and quick["layouts"] == ["single", "list"]
    assert quick["dtypes"] == ["float32", "float64"] and quick["threads"][0] == 1
    assert (quick["samples"], quick["min_sample_s"]) == (7, 0.020)
    full = run_options(parse_args(["--full"]))
    assert full["sizes"]["single"] == full["sizes"]["list"] == [
        10**3, 10**4, 10**5, 10**6, 10**7, 3 * 10**7, 10**8]
    assert full["variants"] == ["heavy-ball", "nesterov"]
    custom = run_options(parse_args(["--full", "--sizes", "2e3", "--variant", "momentum",
                                     "--layout", "list", "--threads", "2", "--impl", "numba"]))
    assert custom["sizes"] == [2000] and custom["variants"] == ["momentum"]
    assert custom["layouts"] == ["list"] and custom["threads"] == [2]
    assert custom["impls"] == ["numba"]


# --- verification -------------------------------------------------------------------------------


def _wrong(how: str) -> Implementation:
    """A numexpr-named implementation that is wrong in one way."""

    def load():
        def build(problem, hyper):
            t = problem.dtype.type
            arrays = list(zip(problem.params, problem.grads, problem.buffers, strict=True))

            def step():
                for p, g, b in arrays:
                    if how == "raises":
                        raise RuntimeError("kernel exploded")
                    wd = 0.0 if how == "no-decay" else hyper.weight_decay
                    d = g + t(wd) * p
                    b_new = t(hyper.momentum) * b + d
                    if how == "copies":  # computes the right values, but not in place
                        p = p.copy()
                    p -= t(hyper.lr) * b_new  # heavy-ball even when Nesterov is asked for
                    b[...] = b_new

            return Built(step, problem)

        return build

    return dataclasses.replace(IMPLEMENTATIONS["numexpr"], load=load)


@pytest.mark.parametrize(("how", "variant", "reason"), [
    ("no-decay", "heavy-ball", "Mismatched elements"),
    ("heavy-ball", "nesterov", "Mismatched elements"),
    ("copies", "heavy-ball", "params[0] vs the reference"),
    ("raises", "heavy-ball", "RuntimeError: kernel exploded"),
])
def test_a_wrong_implementation_is_failed_not_timed_and_the_exit_is_nonzero(
        tmp_path, capsys, monkeypatch, how, variant, reason):
    monkeypatch.setitem(IMPLEMENTATIONS, "numexpr", _wrong(how))
    json_path = tmp_path / "r.json"
    argv = ["--sizes", "1e3", "--threads", "1", "--dtype", "float32", "--variant", variant,
            "--layout", "single", "--impl", "numpy", "numexpr", "fastmomentum",
            "--json", str(json_path), "--no-plot"]
    assert main(argv, **FAST) == 1
    out = capsys.readouterr().out
    [row] = table_rows(out)
    assert row[2:5] != [] and row[3] == "FAILED"  # the numexpr column
    assert float(row[2]) > 0 and float(row[4]) > 0  # numpy and fastmomentum still timed
    assert f"# FAILED: numexpr, float32 single {variant} size 1e3, 1 thread(s)" in out
    assert reason in out
    data = json.loads(json_path.read_text())
    [failed] = data["failed"]
    assert failed["impl"] == "numexpr" and failed["status"] == "failed"
    assert failed["seconds"] is None and failed["samples"] == [] and reason in failed["note"]


def test_every_available_implementation_passes_verification_at_1_and_2_threads():
    verifier = Verifier()
    checked = 0
    for name, impl in IMPLEMENTATIONS.items():
        if impl.kind == "bound" or not available(name):
            continue
        build = impl.load()
        for threads in (1, 2):
            with thread_limit(threads, {impl.library}):
                for dtype in (np.float32, np.float64):
                    for layout in LAYOUTS.values():
                        if layout.name not in impl.layouts:
                            continue
                        for hyper in (HEAVY_BALL, NESTEROV):
                            verdict = verifier.verify(name, build, np.dtype(dtype), layout,
                                                      100_000, hyper, threads)
                            assert verdict is None, (name, threads, dtype, layout, hyper)
                            checked += 1
    assert checked >= 2 * 2 * 2 * 2 * 2  # numpy and fastmomentum at least


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_reference_is_pytorchs_formula_bit_for_bit(dtype):
    """The verification's reference (numpy_baseline, 3 steps) against the transcription of
    torch.optim.SGD in tests/reference.py, and the numpy peer against it."""
    problem = make_layout_problem(Layout("x", 3), 3000, dtype)
    for hyper in (HEAVY_BALL, NESTEROV):
        result = reference_steps(problem, hyper)
        built = IMPLEMENTATIONS["numpy"].load()(problem.copy(), hyper)
        for _ in range(3):
            built.step()
        for i in range(3):
            p, b = problem.params[i], problem.buffers[i]
            for _ in range(3):
                p, b = torch_sgd(p, problem.grads[i], b, lr=hyper.lr, momentum=hyper.momentum,
                                 weight_decay=hyper.weight_decay, nesterov=hyper.nesterov)
            assert p.tobytes() == result.params[i].tobytes() == built.arrays.params[i].tobytes()
            assert b.tobytes() == result.buffers[i].tobytes() == built.arrays.buffers[i].tobytes()


def test_the_flat_implementation_steps_its_own_flat_copy():
    if not available("fastmomentum-flat"):
        pytest.skip("no fastmomentum.flat in this build")
    problem = make_layout_problem(LAYOUTS["list"], 1000, np.float64)
    before = problem.copy()
    built = IMPLEMENTATIONS["fastmomentum-flat"].load()(problem, HEAVY_BALL)
    built.step()
    assert all(np.array_equal(p, q) for p, q in zip(problem.params, before.params, strict=True))
    views = built.arrays.params
    assert len(views) == 200 and all(v.base is views[0].base for v in views)
    expected = before.copy()
    fm.functional.sgd_(expected.params, expected.grads, expected.buffers, **HEAVY_BALL.kwargs())
    assert all(np.array_equal(p, q) for p, q in zip(views, expected.params, strict=True))


# --- missing peers ------------------------------------------------------------------------------


def test_missing_peers_are_skipped_with_a_note(tmp_path, capsys, monkeypatch):
    for module in ("numba", "numexpr", "torch", "fastmomentum.flat"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    monkeypatch.delattr(_core, "bandwidth_probe", raising=False)
    json_path = tmp_path / "r.json"
    argv = ["--sizes", "1e3", "--threads", "1", "--dtype", "float32", "--json", str(json_path),
            "--no-plot"]
    assert main(argv, **FAST) == 0
    out = capsys.readouterr().out
    missing = ["numexpr", "numba", "numba-prange", "torch-optim-fused", "torch-fused-kernel",
               "fastmomentum-flat", "rmw-bound"]
    for name in missing:
        assert f"# note: {name}: skipped, " in out, name
    assert "# note: numba: skipped, numba is not installed" in out
    assert "# note: rmw-bound: skipped, this fastmomentum has no _core.bandwidth_probe" in out
    names = list(IMPLEMENTATIONS)
    for row in table_rows(out):
        cells = dict(zip(names, row[2:2 + len(names)], strict=True))  # then the 6 summary columns
        assert float(cells["numpy"]) > 0 and float(cells["fastmomentum"]) > 0
        assert all(cells[name] in ("--", "n/a") for name in missing)
        assert row[-5] == "--"  # no bound: no ratio to it
    data = json.loads(json_path.read_text())
    assert {r["status"] for r in data["records"] if r["impl"] in missing} <= {"unavailable",
                                                                             "n/a"}
    assert all(data["implementations"][name]["status"] == "unavailable" for name in missing)


def test_missing_matplotlib_means_no_plot_and_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png, json_path = tmp_path / "r.png", tmp_path / "r.json"
    argv = ["--sizes", "1e3", "--threads", "1", "--dtype", "float32", "--layout", "single",
            "--impl", "numpy", "fastmomentum", "--json", str(json_path), "--plot", str(png)]
    assert main(argv, **FAST) == 0
    assert "# note: matplotlib is not installed: no plot" in capsys.readouterr().out
    assert not png.exists()
    assert "matplotlib is not installed: no plot" in json.loads(json_path.read_text())["notes"]


def test_run_returns_the_results_and_prints_nothing_without_out():
    results = run(dtypes=["float64"], sizes=[1000], threads=[1], layouts=["single"],
                  impls=["fastmomentum", "numpy"], out=None, **FAST)
    assert [r.impl for r in results.records] == ["numpy", "fastmomentum"]  # registry order
    assert all(r.status == "ok" and r.seconds > 0 for r in results.records)
    [row] = list(results.rows())
    assert row.summary()["speedup_over_numpy"] == pytest.approx(
        results.records[0].seconds / results.records[1].seconds)
    with pytest.raises(ValueError, match="unknown implementations"):
        run(impls=["nope"], out=None)
    with pytest.raises(ValueError, match="sizes must be >= 200"):
        run(sizes=[100], layouts=["list"], out=None)


# --- threads, timing, progress -----------------------------------------------------------------


def test_thread_limit_sets_checks_and_restores_every_library():
    numba = pytest.importorskip("numba")
    numexpr = pytest.importorskip("numexpr")
    torch = pytest.importorskip("torch")

    libraries = {"torch", "numba", "numexpr"}
    before = (fm.get_num_threads(), torch.get_num_threads(), numba.get_num_threads(),
              numexpr.get_num_threads())
    with thread_limit(1, libraries) as report:
        assert report.counts["fastmomentum"] == fm.get_num_threads() == 1
        assert torch.get_num_threads() == numba.get_num_threads() == 1
        assert numexpr.get_num_threads() == 1
        assert report.notes == []
    assert (fm.get_num_threads(), torch.get_num_threads(), numba.get_num_threads(),
            numexpr.get_num_threads()) == before
    too_many = int(numba.config.NUMBA_NUM_THREADS) + 1
    with thread_limit(too_many, libraries) as report:
        assert any("oversubscribed" in note for note in report.notes)
        assert any(note.startswith(f"numba: {too_many} threads requested, it will use")
                   for note in report.notes)
    with pytest.raises(ValueError):
        with thread_limit(0):
            pass


def test_samples_last_at_least_the_minimum(monkeypatch):
    from fastmomentum.commands.bench import timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def step():  # 1 ms a call, on the fake clock
        clock[0] += 1e-3

    samples = sample_seconds_per_call(step, samples=7, min_sample_s=0.020)
    assert samples == pytest.approx([1e-3] * 7)
    # calibration: 1 call (1 ms) is too short, so 30 calls (1.2 x 25 ms): each sample is a loop
    # of 30 calls = 30 ms >= 1.25 x 20 ms
    assert clock[0] == pytest.approx((1 + 30 + 7 * 30) * 1e-3)


def test_implementations_are_sampled_in_turn_so_a_drifting_machine_shifts_them_alike(
        monkeypatch):
    """Two steps of equal cost on a machine that slows down 3x halfway through the row: sampled
    one after the other, the second would read 3x slower; sampled in turn, their medians agree.
    A step that raises keeps its exception and the others go on."""
    from fastmomentum.commands.bench import timing

    clock, calls = [0.0], []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def step(name):
        def run():
            calls.append(name)
            clock[0] += 1e-3 * (3 if clock[0] > 0.3 else 1)  # the machine slows down
        return run

    def broken():
        raise RuntimeError("no")

    taken = timing.interleaved_samples({"a": step("a"), "b": step("b"), "c": broken},
                                       samples=7, min_sample_s=0.020)
    assert isinstance(taken["c"], RuntimeError)
    assert statistics.median(taken["a"]) == pytest.approx(statistics.median(taken["b"]))
    # Each calibrated, then a loop of each in turn, seven times.
    assert [name for name, _ in itertools.groupby(calls)] == ["a", "b"] * (1 + 7)


def test_size_labels():
    assert [size_label(n) for n in (1000, 30_000_000, 10**8, 1234)] == [
        "1e3", "3e7", "1e8", "1234"]


def test_bench_sgd_table_script_delegates():
    script = Path(__file__).resolve().parents[1] / "bench" / "sgd_table.py"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--impl" in proc.stdout and "--quick" in proc.stdout


def test_the_cpu_meter_sees_other_processes_and_the_table_flags_them():
    from fastmomentum.commands.bench.contention import CpuMeter
    from fastmomentum.commands.bench.report import TablePrinter
    from fastmomentum.commands.bench.results import Record, Row

    meter = CpuMeter()
    spin = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.6: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    others = meter.others()
    if others is None:
        pytest.skip("no /proc/stat here")
    assert others >= 0.4  # the child kept (about) one CPU busy for most of the time

    record = Record("float32", "single", 1, "heavy-ball", 1000, 1, "numpy", "ok", seconds=1e-6,
                    others_cpu=0.9)
    impls = {"numpy": {"label": "numpy*", "kind": "peer"}}
    out = io.StringIO()
    TablePrinter(out, impls).row(Row(record.row_key, {"numpy": record}, ("numpy",)))
    assert out.getvalue().split()[-1] == "0.9!"
