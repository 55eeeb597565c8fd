"""``python -m fastmomentum bench --state-dtype``: the low-precision rows run, check and report.

Tiny sizes and the test knobs (2 samples of 2 ms): these tests check that every row is built,
checked, timed and put in its columns, never how fast anything is.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fastmomentum.commands.bench import lowp_kinds, main
from fastmomentum.commands.bench.lowp_kinds import KINDS, check, decode
from fastmomentum.commands.bench.lowp_peers import PEERS
from fastmomentum.commands.bench.lowp_report import JSON_SCHEMA
from fastmomentum.commands.bench.lowp_run import run_lowp
from fastmomentum.commands.bench.problems import HEAVY_BALL, NESTEROV

pytest.importorskip("ml_dtypes")

FAST = dict(samples=2, min_sample_s=0.002)
KIND_ROWS = list(KINDS)
N_CELLS = 12  # size, thr, row, B/el, ns/el, vs f32, want, /bound, want, speed, bound, busy


def data_rows(stdout: str) -> list[list[str]]:
    """The table's rows (lines that start with a size label)."""
    return [line.split() for line in stdout.splitlines()
            if line.strip() and line.split()[0][:1].isdigit()]


def test_every_kind_the_bound_and_the_peers_are_rows_with_their_columns(tmp_path, capsys):
    path = tmp_path / "lowp.json"
    argv = ["--state-dtype", *KIND_ROWS, "--sizes", "1e3", "3000", "--threads", "1",
            "--json", str(path)]
    assert main(argv, **FAST) == 0
    out = capsys.readouterr().out
    assert "## low-precision state, single array, heavy-ball" in out
    assert "WARNING: fewer samples" in out
    rows = data_rows(out)
    names = [*KIND_ROWS, "rmw-bound", *PEERS]
    assert [(r[0], r[1], r[2]) for r in rows] == [(s, "1", n) for s in ("1e3", "3e3")
                                                  for n in names]
    by_name = {r[2]: r for r in rows if r[0] == "3e3"}
    for name in [*KIND_ROWS, "rmw-bound"]:
        row = by_name[name]
        assert len(row) == N_CELLS, row
        assert float(row[4]) > 0 and float(row[5]) > 0 and float(row[7]) > 0, row
    assert by_name["float32"][5] == "1.00" and by_name["float32"][6] == "--"
    assert by_name["bf16-int8-sr"][6] == ">=2.00" and by_name["int8"][8] == "<=1.15"
    assert [by_name[k][3] for k in KIND_ROWS] == ["20.00", "16.00", "16.00", "14.03", "8.03",
                                                 "12.03"]
    for name in PEERS:  # optional: timed where installed, else '--' and a note saying why
        assert by_name[name][4] != "FAILED", by_name[name]
        if by_name[name][4] == "--":
            assert f"{name}: skipped" in out

    data = json.loads(path.read_text())
    assert data["schema"] == JSON_SCHEMA and data["command"].endswith(" ".join(argv))
    assert data["failed"] == [] and set(data["rows"]) == set(names)
    records = {(r["name"], r["size"]): r for r in data["records"]}
    for size in (1000, 3000):
        f32, bound = records[("float32", size)], records[("rmw-bound", size)]
        for name in KIND_ROWS:
            r = records[(name, size)]
            assert r["status"] == "ok" and len(r["samples"]) == 2
            assert r["bytes_per_element"] == KINDS[name].bytes_per_element(size)
            assert r["speedup_vs_float32"] == pytest.approx(f32["seconds"] / r["seconds"])
            assert r["ratio_to_scaled_bound"] == pytest.approx(
                r["seconds"] / (bound["seconds"] * r["bytes_per_element"] / 20))
            assert isinstance(r["bound_target_met"], bool)
            assert r["speed_target_met"] is (None if name == "float32" else
                                             r["speedup_vs_float32"] >= KINDS[name].target)


def test_bytes_per_element_count_what_a_step_reads_and_writes():
    n = 10**7
    scales = 8 * math.ceil(n / 256) / n  # 4-byte scales, read and written, one per 256
    assert {k: v.bytes_per_element(n) for k, v in KINDS.items()} == {
        "float32": 4 + 4 + 4 + 4 + 4, "bfloat16": 4 + 4 + 4 + 2 + 2,
        "float16": 4 + 4 + 4 + 2 + 2, "int8": 4 + 4 + 4 + 1 + 1 + scales,
        "bf16-int8-sr": 2 + 2 + 2 + 1 + 1 + scales,
        "bf16-int8-kahan": 2 + 2 + 2 + 1 + 1 + scales + 2 + 2}


def test_the_8bit_buffer_decodes_by_the_spec_code_map():
    codes = np.array([0, 1, 8, 127, -127, -9] + [3] * 256, np.int8)
    scales = np.array([2.0, 0.5], np.float32)
    got = decode((codes, scales))
    assert got[:6].tolist() == [0.0, 2.0**-9 * 2, 2.0**-6 * 2, 480.0 * 2, -480.0 * 2,
                                -(1 + 1 / 8) * 2.0**-6 * 2]
    assert got[255] == 3 * 2.0**-9 * 2 and got[256] == got[-1] == 3 * 2.0**-9 * 0.5


@pytest.mark.parametrize("name", KIND_ROWS)
@pytest.mark.parametrize("hyper", [HEAVY_BALL, NESTEROV], ids=lambda h: h.name)
def test_each_kind_passes_its_check(name, hyper):
    assert check(KINDS[name], hyper, 5000) is None


@pytest.mark.parametrize("name", KIND_ROWS)
def test_the_check_fails_a_kind_that_skips_or_drops_momentum(name, monkeypatch):
    step = lowp_kinds.State.step

    def without_momentum(self, hyper, *, step_=0, first=False, **kw):
        step(self, hyper, first=True, **kw)  # b <- g: the momentum forgotten every step

    monkeypatch.setattr(lowp_kinds.State, "step", without_momentum)
    verdict = check(KINDS[name], HEAVY_BALL, 5000)
    assert verdict is not None and "off by more than the rounding allows" in verdict


def test_a_failing_kind_is_failed_not_timed_and_the_exit_is_nonzero(monkeypatch, capsys):
    real = lowp_kinds.check
    monkeypatch.setattr(lowp_kinds, "check", lambda kind, *a: (
        "wrong on purpose" if kind.name == "int8" else real(kind, *a)))
    assert main(["--state-dtype", "int8", "--sizes", "1000", "--threads", "1"], peers=False,
                **FAST) == 1
    out = capsys.readouterr().out
    rows = {r[2]: r for r in data_rows(out)}
    assert set(rows) == {"float32", "int8", "rmw-bound"}  # float32: always, the reference
    assert rows["int8"][4] == "FAILED" and float(rows["float32"][4]) > 0
    assert "# FAILED: int8, heavy-ball size 1e3, 1 thread(s): wrong on purpose" in out


def test_without_ml_dtypes_the_bfloat16_kinds_are_skipped_with_the_reason(monkeypatch):
    def missing() -> None:
        raise lowp_kinds.Unavailable("ml_dtypes is not installed (pip install ml_dtypes)")

    monkeypatch.setattr(lowp_kinds, "bfloat16", missing)
    results = run_lowp(kinds=["bfloat16", "float16", "bf16-int8-sr"], sizes=[1000], peers=False,
                       out=None, **FAST)
    status = {r.name: r.status for r in results.records}
    assert status == {"float32": "ok", "bfloat16": "unavailable", "float16": "ok",
                      "bf16-int8-sr": "unavailable", "rmw-bound": "ok"}
    assert "bfloat16: skipped, ml_dtypes is not installed (pip install ml_dtypes)" in results.notes


@pytest.mark.parametrize("extra", [["--layout", "single"], ["--dtype", "float32"], ["--full"],
                                   ["--impl", "numpy"], ["--device", "cuda"],
                                   ["--plot", "x.png"]])
def test_the_float_tables_options_are_refused_with_state_dtype(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--state-dtype", "int8", *extra])
    assert exc.value.code == 2
    assert "state-dtype" in capsys.readouterr().err


def test_the_float16_check_allows_for_subnormal_momentum():
    # 2**18 elements of |g| < 1: a few momentum values fall below float16's smallest normal,
    # where the rounding error is absolute (half of 2**-24), not relative.
    assert check(KINDS["float16"], HEAVY_BALL, 2**18) is None
