"""``bench/mpi_model.py``: the communication model's counts and times, against the formulas of its
docstring written out here plainly."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

MODEL = Path(__file__).resolve().parent.parent / "bench" / "mpi_model.py"


@pytest.fixture(scope="module")
def model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mpi_model", MODEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


P, K = 25_000_000, 161  # ResNet-50's size and tensor count
WORLDS = [2, 3, 8, 64, 256]


@pytest.mark.parametrize("n", WORLDS)
@pytest.mark.parametrize("variant", ["baseline", "DistributedSGD", "DistributedSGD det",
                                     "ShardedSGD", "ShardedSGD det"])
def test_every_variant_sends_an_all_reduces_bytes(model: ModuleType, variant: str, n: int) -> None:
    sent = model.traffic(variant, n, P, K).bytes_sent
    assert sent == pytest.approx(2 * (n - 1) / n * 4 * P, rel=1e-12)


@pytest.mark.parametrize("n", WORLDS)
def test_rounds(model: ModuleType, n: int) -> None:
    log = math.ceil(math.log2(n))
    m = model.buckets(P, K)
    expected = {"baseline": K * 2 * log, "DistributedSGD": m * 2 * log,
                "DistributedSGD det": (n - 1) + log,  # one reduce-scatter, one all-gather
                # rank-order sums whatever deterministic; the gather is point to point
                "ShardedSGD": 2 * (n - 1), "ShardedSGD det": 2 * (n - 1)}
    for variant, rounds in expected.items():
        assert model.traffic(variant, n, P, K).rounds == rounds, variant


def test_buckets_are_runs_of_whole_arrays_of_at_most_25_mib(model: ModuleType) -> None:
    per_array = 25_000_000 / 161 * 4  # 621,118 bytes: 42 arrays fit in 25 MiB
    assert int(25 * 2**20 // per_array) == 42
    assert model.buckets(P, K) == math.ceil(161 / 42) == 4
    assert model.buckets(10**7, 50) == 2  # bench/mpi_step.py's model: 25 arrays per bucket
    assert model.buckets(10**9, 2) == 2  # an array larger than a bucket is a bucket of its own


def test_one_rank_communicates_nothing(model: ModuleType) -> None:
    link = model.Link.of(25, 10)
    local = model.Local(update_ns=2.0, add_ns=0.5)
    for variant in model.VARIANTS:
        assert model.traffic(variant, 1, P, K) == model.Traffic(0, 0.0, 0.0)
        # the update alone: one rank steps the caller's gradients where they are
        assert model.step_seconds(variant, 1, P, K, link, local) == pytest.approx(P * 2e-9)


def test_a_step_time_by_hand(model: ModuleType) -> None:
    link = model.Link(alpha=1e-5, beta=1e9)
    local = model.Local(update_ns=2.0, add_ns=0.5)
    n, params, arrays = 4, 8_000_000, 2  # 32 MB in two 16 MB arrays: one bucket each
    b = 4 * params
    summed = 3 / 4 * b / 4  # elements added in the reduce-scatter half
    # ShardedSGD: reduce-scatter (3 messages, 3/4 b) with its sums; update of 1/4; all-gather
    # (3 messages, 3/4 b).
    by_hand = (3 * 1e-5 + 0.75 * b / 1e9 + summed * 0.5e-9
               + params / 4 * 2e-9 + 3 * 1e-5 + 0.75 * b / 1e9)
    sharded = model.step_seconds("ShardedSGD", n, params, arrays, link, local)
    assert sharded == pytest.approx(by_hand)
    # DistributedSGD: two all-reduces of b/2 (4 rounds and 3/2 of b/2 each); full update.
    by_hand = (2 * (4 * 1e-5 + 1.5 * b / 2 / 1e9 + summed / 2 * 0.5e-9)
               + params * 2e-9)
    assert model.step_seconds("DistributedSGD", n, params, arrays, link, local) \
        == pytest.approx(by_hand)


@pytest.mark.parametrize("n", WORLDS)
@pytest.mark.parametrize("gbps, latency", [(25, 10), (100, 2), (1, 100)])
def test_overlap_lies_between_the_larger_part_and_no_overlap(model: ModuleType, n: int,
                                                             gbps: float, latency: float) -> None:
    link = model.Link.of(gbps, latency)
    local = model.MEASURED_HERE
    plain = model.step_seconds("DistributedSGD", n, P, K, link, local)
    overlap = model.step_seconds("DistributedSGD overlap", n, P, K, link, local)
    update = P * local.update_ns * 1e-9
    assert max(update, plain - update) <= overlap <= plain


def test_sharding_never_loses_to_the_bucketed_all_reduce(model: ModuleType) -> None:
    # Same bytes, fewer rounds than m all-reduces, 1/n of the update.
    for n in WORLDS:
        for link in (model.Link.of(25, 10), model.Link.of(100, 2)):
            assert model.step_seconds("ShardedSGD", n, P, K, link, model.MEASURED_HERE) \
                < model.step_seconds("DistributedSGD", n, P, K, link, model.MEASURED_HERE)


def test_the_command_prints_one_row_per_link_and_world(model: ModuleType,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["mpi_model.py", "--params", "1e6", "--arrays", "10",
                                      "--ranks", "2", "4", "--link-gbps", "10", "--latency-us",
                                      "5"])
    model.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "1e+06 float32 parameters in 10 arrays (DistributedSGD's 25 MiB buckets: 1)")
    rows = [line for line in lines if line.startswith("10 Gb/s 5 us")]
    assert [row.split()[4] for row in rows] == ["2", "4"]
    assert all(len(row.split()) == 5 + len(model.VARIANTS) for row in rows)


def test_mismatched_options_are_refused(model: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["mpi_model.py", "--params", "1e6", "2e6", "--arrays", "10"])
    with pytest.raises(SystemExit):
        model.main()


def test_measure_local_measures_and_restores_the_thread_count(model: ModuleType) -> None:
    import fastmomentum as fm

    before = fm.get_num_threads()
    local = model.measure_local(threads=2, elements=10_000, arrays=10, repeats=3)
    assert local.update_ns > 0 and local.add_ns > 0
    assert fm.get_num_threads() == before


@pytest.mark.parametrize("option, value", [("--params", "0"), ("--arrays", "0"), ("--ranks", "0"),
                                           ("--link-gbps", "0"), ("--latency-us", "-1"),
                                           ("--update-ns", "-1")])
def test_values_that_would_divide_by_zero_are_refused(model: ModuleType, option: str, value: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["mpi_model.py", "--params", "1e6", "--arrays", "10", "--ranks", "2", "--link-gbps",
            "10", "--latency-us", "5"]
    at = argv.index(option) + 1 if option in argv else len(argv)
    argv = [*argv[:at], value, *argv[at + 1:]] if option in argv else [*argv, option, value]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        model.main()
    assert "must be" in capsys.readouterr().err
