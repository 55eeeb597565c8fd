"""fastmomentum.distributed under real MPI jobs: ``mpirun -n 1, 2, 4`` (4 ranks oversubscribe a
2-core machine) run ``tests/mpi/worker.py``, whose ranks write their results to files, compared
here with single-process ``fm.SGD`` on the rank-summed gradients.

The reference forms the average as the optimizers define it: the ranks' gradients added in rank
order, ``((g_0 + g_1) + g_2) + g_3`` in the dtype, then ``fm.SGD.step(sum, loss_scale=n *
loss_scale)`` (the kernel multiplies by ``1/(n * loss_scale)``, rounded once). With rank-order sums
(``deterministic=True``, and ShardedSGD always) the optimizers must match it bit for bit (ShardedSGD
unless the global norm, summed per shard, is used); with MPI's sums the additions may
be associated differently, each changing a sum by at most ``(n-1)·u·Σ|g_r|`` (``u`` the unit
roundoff), and over these few steps the parameters must agree to ``2e-5`` (float32) / ``1e-13``
(float64) times ``max(1, max |p|)``. Every rank must end with the same bits as every other, and the
momentum state a ShardedSGD rank holds must be the total divided by the world size (give or take
one element per dtype).

Without ``mpirun`` or mpi4py the tests skip, unless ``FASTMOMENTUM_REQUIRE_MPI=1`` (set by
``.ci/run``), which makes them fail instead.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmomentum as fm

from conftest import same_bits

sys.path.insert(0, str(Path(__file__).parent / "mpi"))
from cases import CASES, STEPS, grad_order, make_grads, make_params, make_scheduler, param_groups

WORKER = Path(__file__).parent / "mpi" / "worker.py"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mpi_train.py"
SEED = 7  # worker.py's
KINDS = ("DistributedSGD", "ShardedSGD")
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-13}


def _missing() -> str | None:
    if shutil.which("mpirun") is None:
        return "mpirun not found (install an MPI, e.g. apt-get install openmpi-bin libopenmpi-dev)"
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py not installed (pip install "fastmomentum[mpi]")'
    return None


@pytest.fixture(autouse=True)
def _needs_mpi():
    missing = _missing()
    if missing is not None:
        if os.environ.get("FASTMOMENTUM_REQUIRE_MPI") == "1":
            pytest.fail(f"FASTMOMENTUM_REQUIRE_MPI=1 but {missing}")
        pytest.skip(missing)


@functools.cache
def _is_open_mpi() -> bool:
    version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, check=False)
    return "Open MPI" in version.stdout + version.stderr


def mpirun(n: int, *args: str, script: Path = WORKER) -> None:
    """Run ``script`` (worker.py) on ``n`` ranks; fails with its output if any rank fails."""
    command = ["mpirun", "-n", str(n)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # n ranks on 2 cores: no OpenMP on top
    if _is_open_mpi():
        # More ranks than cores; and Open MPI refuses root (CI's containers) unless told twice.
        command.append("--oversubscribe")
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command += [sys.executable, "-m", "mpi4py", str(script), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                          check=False)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"


def load_ranks(out: Path, stem: str, n: int) -> list[dict[str, np.ndarray]]:
    ranks = []
    for r in range(n):
        with np.load(out / f"{stem}.rank{r}.npz") as data:
            ranks.append(dict(data))
    return ranks


def reference(case_name: str, worlds: list[int]) -> tuple[list[np.ndarray], fm.SGD, list[float]]:
    """Single-process fm.SGD over the steps, step ``t`` with the sum of ``worlds[t]`` ranks'
    gradients in rank order; returns the parameters, the optimizer and each step's norm."""
    case = CASES[case_name]
    params = make_params(case, SEED)
    opt = fm.SGD(param_groups(case, params), **case.options)
    scheduler = make_scheduler(case, opt)
    order, norms = grad_order(case), []
    for t, n in enumerate(worlds):
        total = make_grads(case, SEED, t, 0, n)
        for r in range(1, n):
            for a, b in zip(total, make_grads(case, SEED, t, r, n), strict=True):
                a += b  # rank order, each addition rounded to the dtype
        try:
            result = opt.step([total[i] for i in order], loss_scale=n * case.loss_scale)
        except FloatingPointError:  # nonfinite="raise" (the workers record -1)
            norms.append(-1.0)
            continue
        norms.append(np.nan if result.grad_norm is None else result.grad_norm)
        if scheduler is not None:
            scheduler.step()
    return params, opt, norms


def assert_matches(rank: dict[str, np.ndarray], params: list[np.ndarray], opt: fm.SGD,
                   exact: bool) -> None:
    """One rank's file against the reference's parameters and state dict."""
    buffers = {i: next(iter(entry.values())) for i, entry in opt.state_dict()["state"].items()}
    assert sorted(k for k in rank if k.startswith("b")) == sorted(f"b{i}" for i in buffers)
    pairs = [(rank[f"p{i}"], p) for i, p in enumerate(params)]
    pairs += [(rank[f"b{i}"], b) for i, b in buffers.items()]
    for actual, expected in pairs:
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        if exact:
            assert actual.tobytes() == expected.tobytes()
        else:
            scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
            np.testing.assert_allclose(actual, expected, rtol=0,
                                       atol=TOLERANCE[expected.dtype] * scale)


def assert_same_on_every_rank(ranks: list[dict[str, np.ndarray]]) -> None:
    for r, other in enumerate(ranks[1:], start=1):
        assert other.keys() == ranks[0].keys()
        for key, value in ranks[0].items():
            if key != "state_nbytes":
                assert other[key].tobytes() == value.tobytes(), f"rank {r} differs in {key}"


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda n: f"n{n}")
def cases_job(request, tmp_path_factory):
    """Every case, both optimizers, both reductions, on ``n`` ranks: (n, output folder)."""
    if _missing() is not None:
        pytest.skip(_missing())
    out = tmp_path_factory.mktemp(f"mpi-n{request.param}")
    mpirun(request.param, "cases", str(out))
    return request.param, out


@pytest.mark.parametrize("case_name", list(CASES))
def test_matches_single_process(cases_job, case_name):
    n, out = cases_job
    params, opt, norms = reference(case_name, [n] * STEPS)
    for kind in KINDS:
        for deterministic in (True, False):
            ranks = load_ranks(out, f"{case_name}.{kind}.{deterministic}", n)
            assert_same_on_every_rank(ranks)
            # ShardedSGD's reduce-scatter sums in rank order whatever ``deterministic``.
            exact = (deterministic or kind == "ShardedSGD") and (
                kind == "DistributedSGD" or CASES[case_name].exact_when_sharded)
            assert_matches(ranks[0], params, opt, exact)
            assert int(ranks[0]["iterations"]) == opt.iterations
            assert int(ranks[0]["skipped_steps"]) == opt.skipped_steps
            np.testing.assert_allclose(ranks[0]["norms"], norms, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("passed, deterministic", [("passed", True), ("default", False),
                                                   ("rank 0", False)])
def test_gradients_in_the_optimizers_buffers(cases_job, kind, passed, deterministic):
    # Passed as opt.grad_buffers, or as opt.step()'s default: with deterministic=False,
    # DistributedSGD's MPI_Allreduce path. "rank 0": rank 0 steps its buffers, the others arrays
    # of their own: every rank takes the rank-order path (exact), none waits in another.
    n, out = cases_job
    params, opt, _ = reference("torch-heavyball", [n] * STEPS)
    ranks = load_ranks(out, f"torch-heavyball.{kind}.{passed}.{deterministic}", n)
    assert_same_on_every_rank(ranks)
    exact = deterministic or kind == "ShardedSGD" or (passed == "rank 0" and n > 1)
    assert_matches(ranks[0], params, opt, exact=exact)


@pytest.mark.parametrize("n", [2, 3])
def test_the_callers_own_messages_are_not_taken_by_a_step(tmp_path, n):
    # The optimizers' point-to-point messages go on a private duplicate of the communicator: a
    # receive the caller posted on it (any source, the same tags) gets the caller's message.
    mpirun(n, "messages", str(tmp_path))
    for r in range(n):
        assert (tmp_path / f"messages.rank{r}.txt").read_text() == "received: True"
    params, opt, _ = reference("torch-heavyball", [n] * STEPS)
    for kind in KINDS:
        ranks = load_ranks(tmp_path, f"messages.{kind}", n)
        assert_same_on_every_rank(ranks)
        assert_matches(ranks[0], params, opt, exact=True)


def test_the_guards_case_skips_and_clips():
    # Guards the comparison above: the NaN step must be skipped and the clipping must act.
    _, opt, norms = reference("guards", [2] * STEPS)
    assert opt.skipped_steps == 1 and np.isnan(norms[CASES["guards"].nan_step])
    assert max(norm for norm in norms if np.isfinite(norm)) > 1.0  # > max_grad_norm: clipped


def test_the_non_finite_cases_do_what_they_say():
    # Guards the comparison above for the cases in which the three optimizers must agree on a
    # non-finite step: applied with an inf norm (NaN only where the infinity was), all-NaN,
    # skipped, raised.
    params, opt, norms = reference("clip-inf-applied", [2] * STEPS)
    assert norms[2] == np.inf and opt.iterations == STEPS
    assert 0 < sum(np.isnan(p).sum() for p in params) < sum(p.size for p in params)
    params, opt, norms = reference("clip-nan-applied", [2] * STEPS)
    assert np.isnan(norms[2]) and all(np.isnan(p).all() for p in params)
    _, opt, norms = reference("clip-inf-skipped", [2] * STEPS)
    assert opt.skipped_steps == 1 and norms[3] == np.inf and opt.iterations == STEPS - 1
    _, opt, norms = reference("inf-raised", [2] * STEPS)
    assert norms[1] == -1.0 and opt.iterations == STEPS - 1 and opt.skipped_steps == 0


@pytest.mark.parametrize("case_name", list(CASES))
def test_sharded_state_memory_is_divided_by_the_world_size(cases_job, case_name):
    n, out = cases_job
    _, opt, _ = reference(case_name, [n] * STEPS)
    total = sum(next(iter(e.values())).nbytes for e in opt.state_dict()["state"].values())
    slack = sum(np.dtype(d).itemsize for d in CASES[case_name].dtypes)  # one element per dtype
    replicated = [int(r["state_nbytes"]) for r in load_ranks(out, f"{case_name}.DistributedSGD"
                                                             f".True", n)]
    sharded = [int(r["state_nbytes"]) for r in load_ranks(out, f"{case_name}.ShardedSGD.True", n)]
    assert replicated == [total] * n
    assert sum(sharded) == total
    assert all(abs(nbytes - total / n) <= slack for nbytes in sharded), (sharded, total)
    if CASES[case_name].options.get("momentum", 0) == 0:
        assert total == 0
    else:
        assert total > 0


@pytest.fixture(scope="module")
def checkpoint_of_4_ranks(tmp_path_factory):
    """ShardedSGD on 4 ranks, its state gathered into one checkpoint: the file's path."""
    if _missing() is not None:
        pytest.skip(_missing())
    out = tmp_path_factory.mktemp("mpi-save")
    mpirun(4, "save", str(out))
    return out / "ckpt.npz"


def test_sharded_state_dict_gathers_the_full_state(checkpoint_of_4_ranks):
    saved = fm.checkpoint.load(checkpoint_of_4_ranks)["optimizer"]
    _, opt, _ = reference("groups-onecycle", [4] * STEPS)
    expected = opt.state_dict()
    assert saved["param_groups"] == expected["param_groups"]  # with the scheduler's lr
    assert saved["state"].keys() == expected["state"].keys()
    for i, entry in expected["state"].items():
        same_bits(saved["state"][i]["momentum_buffer"], entry["momentum_buffer"])


@pytest.mark.parametrize(("world", "kind"), [(2, "ShardedSGD"), (3, "DistributedSGD"),
                                             (1, "ShardedSGD")])
def test_checkpoint_reshards_to_another_world_size(checkpoint_of_4_ranks, tmp_path, world, kind):
    mpirun(world, "resume", str(tmp_path), str(checkpoint_of_4_ranks), kind)
    ranks = load_ranks(tmp_path, f"resume.{kind}", world)
    assert_same_on_every_rank(ranks)
    params, opt, _ = reference("groups-onecycle", [4] * STEPS + [world] * STEPS)
    assert_matches(ranks[0], params, opt, exact=True)
    assert int(ranks[0]["iterations"]) == 2 * STEPS


def test_constructor_and_step_refuse_bad_input(tmp_path):
    mpirun(2, "mismatch", str(tmp_path))
    for r in range(2):
        lines = (tmp_path / f"mismatch.rank{r}.txt").read_text().splitlines()
        found = dict(line.split(": ", 1) for line in lines)
        assert found.keys() == {"values", "shapes", "hyper", "strided", "comm", "none", "scale",
                                "extras", "dtype-init", "dtype-step", "dtype-scale",
                                "local-DistributedSGD", "local-ShardedSGD", "other-DistributedSGD",
                                "other-ShardedSGD", "group", "settings", "args-DistributedSGD",
                                "args-ShardedSGD", "not-array", "peek"}, lines
        assert "parameter values of rank(s) [1] differ from rank 0's" in found["values"]
        assert "parameter groups or settings of rank(s) [1] differ" in found["shapes"]
        assert "parameter groups or settings of rank(s) [1] differ" in found["hyper"]
        assert "settings of rank(s) [1] differ from rank 0's (number, shapes or dtypes of the " \
            "arrays, hyper-parameters, or deterministic, bucket_bytes)" in found["settings"]
        assert "comm must be an mpi4py intracommunicator" in found["comm"]
        assert "grads[0] is None" in found["none"]
        assert "loss_scale must be a finite number > 0, got 0.0" in found["scale"]
        assert "holds ['ema']; ShardedSGD keeps only the buffer" in found["extras"]
        assert found["strided"].startswith("params[4] is not dense"), found["strided"]
        assert "lr=1e+39 overflows float32" in found["dtype-init"]
        unchanged, message = found["dtype-step"].split(" ", 1)
        assert unchanged == "True" and "overflows float32" in message
        assert "loss_scale is too small" in found["dtype-scale"]
        for kind in ("DistributedSGD", "ShardedSGD"):
            local = found[f"local-{kind}"]
            assert local.startswith("params[1] is read-only") if r == 1 else \
                local.startswith("rank(s) [1] could not build the optimizer (rank 1: "
                                 "ValueError: params[1] is read-only"), local
            other = found[f"other-{kind}"]
            assert other.startswith("RuntimeError: out of luck") if r == 1 else other.startswith(
                "ValueError: rank(s) [1] could not build the optimizer (rank 1: RuntimeError: "
                "out of luck)"), other
        groups, skipped, message = found["group"].split(" ", 2)
        assert groups == "1" and skipped == "False", found["group"]
        assert "Invalid learning rate" in message if r == 1 else message.startswith(
            "rank(s) [1] could not add the parameter group (rank 1: ValueError: "), message
        for kind, error in (("DistributedSGD", "ValueError: bucket_bytes must be an integer > 0"),
                            ("ShardedSGD", "TypeError: deterministic must be a bool")):
            args = found[f"args-{kind}"]
            assert args.startswith(error) if r == 1 else args.startswith(
                f"ValueError: rank(s) [1] could not build the optimizer (rank 1: {error}"), args
        assert found["not-array"].startswith("params[1] must be a numpy.ndarray, got list")
        without, with_reads = found["peek"].split()
        assert with_reads == without


@pytest.mark.parametrize(("world", "flag"), [(4, "--distributed"), (4, "--sharded"),
                                             (3, "--distributed")])
def test_mpi_train_example_reaches_the_single_process_loss(tmp_path, world, flag):
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} not found")
    mpirun(world, flag, "--json", str(tmp_path / "run.json"), script=EXAMPLE)
    result = json.loads((tmp_path / "run.json").read_text())
    spec = importlib.util.spec_from_file_location("examples_mpi_train", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    single = example.train(None)  # fm.SGD in this process, no MPI
    assert result["world"] == world
    assert result["loss"][-1] < 0.5 * result["loss"][0]  # it trains
    # The same model: float64 sums associated differently (slices, then ranks), nothing else.
    np.testing.assert_allclose(result["loss"], single["loss"], rtol=1e-9)
    assert result["test_accuracy"] == single["test_accuracy"]


def test_gpu_arrays_are_refused():
    from fastmomentum.distributed._layout import FlatGrads

    class FakeCudaArray:  # what a CuPy array says of itself (tests/test_cuda_validation.py)
        @property
        def __cuda_array_interface__(self):
            return {"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 3}

    host = np.zeros(2, np.float32)
    with pytest.raises(TypeError, match=r"params\[1\] is a CUDA array: fastmomentum\.distributed "
                                        r"updates NumPy arrays only"):
        FlatGrads([host, FakeCudaArray()])


@pytest.mark.parametrize("layout", ["fortran", "transposed"])
def test_parameters_not_in_c_order_are_refused_before_anything(layout):
    """fm.SGD updates any dense layout; the distributed optimizers' flat buffers, messages and
    shards are C-order runs of each parameter's elements, so they refuse the others by name (on
    one rank here; a refusal on any rank raises on every rank: test_constructor_and_step_...)."""
    from mpi4py import MPI

    from fastmomentum.distributed import DistributedSGD, ShardedSGD
    from fastmomentum.distributed._layout import FlatGrads

    dense = np.arange(12, dtype=np.float32).reshape(3, 4)
    odd = np.asfortranarray(dense) if layout == "fortran" else dense.copy().T
    match = r"params\[1\] is not C-contiguous \(strides \(4, 1[26]\)\)"
    with pytest.raises(ValueError, match=match):
        FlatGrads([np.zeros(2, np.float32), odd])
    for kind in (DistributedSGD, ShardedSGD):
        params = [np.zeros(2, np.float32), odd]
        before = odd.copy()
        with pytest.raises(ValueError, match=match):
            kind(MPI.COMM_SELF, params, lr=0.1, momentum=0.9)
        np.testing.assert_array_equal(odd, before)


def test_low_precision_state_with_distributed_sgd(tmp_path):
    """DistributedSGD stores the momentum as fm.SGD does for each state_dtype (the same bits as
    fm.SGD stepped with the reduced gradients, 2 ranks); 16-bit parameters and ShardedSGD's
    state_dtype are refused on every rank, saying what to do; an 8-bit state dict loads into
    ShardedSGD as its values."""
    mpirun(2, "lowp", str(tmp_path))
    for r in range(2):
        lines = (tmp_path / f"lowp.rank{r}.txt").read_text().splitlines()
        found = dict(line.split(": ", 1) for line in lines)
        assert found.keys() == {"bfloat16", "float16", "int8", "bf16-params", "sharded-state",
                                "sharded-int8-load"}
        assert found["sharded-int8-load"] == "True", lines
        assert found["bfloat16"] == found["float16"] == found["int8"] == "True", lines
        assert "params[1] is bfloat16: fastmomentum.distributed reduces gradients with MPI, " \
               "which has no 16-bit float type" in found["bf16-params"]
        assert "state_dtype='int8': ShardedSGD keeps each shard's momentum in its parameters' " \
               "dtype" in found["sharded-state"]


def test_a_state_dict_refused_by_one_rank_is_loaded_by_none(tmp_path):
    mpirun(2, "load", str(tmp_path))
    for r in range(2):
        lines = (tmp_path / f"load.rank{r}.txt").read_text().splitlines()
        assert len(lines) == 5 * len(KINDS), lines
        for kind, group in zip(KINDS, (lines[:5], lines[5:]), strict=True):
            refused, *differ, same = group
            message, unchanged = refused.split(": ", 1)[1].rsplit(" | ", 1)
            assert refused.startswith(f"{kind}: ") and unchanged == "True", refused
            assert "momentum_buffer'] has shape (7,) but its parameter has shape (8,)" in message
            if r == 0:
                assert message.startswith("rank(s) [1] could not load the state dict") \
                    and message.endswith("nothing was loaded on any rank (every rank loads the "
                                         "same state dict)"), message
            # Valid on every rank, but rank 1's differs: refused on every rank, nothing loaded.
            for what, line in zip(("buffer", "lr", "iterations"), differ, strict=True):
                assert line == (f"{kind} {what}: the state dicts of rank(s) [1] differ from rank "
                                "0's (hyper-parameters, counters or buffers): nothing was loaded "
                                "on any rank; every rank loads the same state dict (read one "
                                "file, or pass rank 0's with comm.bcast) | True"), line
            assert same == f"{kind} same: loaded | True"


# Per-rank checks, on one rank (COMM_SELF): each rank makes them before its step sends anything.

def _self_optimizer(kind_name, params, **kwargs):
    from mpi4py import MPI

    from fastmomentum import distributed

    return getattr(distributed, kind_name)(MPI.COMM_SELF, params, lr=0.1, momentum=0.9, **kwargs)


@pytest.mark.parametrize("kind_name, why", [
    ("ShardedSGD", "its shards are views of the parameters"),
    ("DistributedSGD", "its messages go on its own duplicate of the communicator")])
def test_a_distributed_optimizer_refuses_to_be_copied_or_pickled(kind_name, why):
    # A copy would share the original's communicator and requests, freed with the original.
    import copy
    import pickle

    opt = _self_optimizer(kind_name, [np.zeros(4, np.float32)])
    for make_copy in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match=f"a {kind_name} cannot be copied or pickled: {why}"
                                            r".*state_dict\(\)"):
            make_copy(opt)


def test_a_sharded_step_refuses_parameters_moved_or_made_read_only_since_construction():
    p, q = np.zeros(8, np.float32), np.zeros(3, np.float32)
    opt = _self_optimizer("ShardedSGD", [p, q])
    p.resize(16, refcheck=False)  # new memory: the shards and the gather address the old
    before = p.copy()
    with pytest.raises(ValueError, match=r"params\[0\]'s memory moved or changed size since the "
                                         "ShardedSGD was built"):
        opt.step([np.ones(16, np.float32), np.ones(3, np.float32)])
    np.testing.assert_array_equal(p, before)
    opt = _self_optimizer("ShardedSGD", [np.zeros(2, np.float32), q])
    q.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[1\] is read-only: ShardedSGD updates"):
        opt.step([np.ones(2, np.float32), np.ones(3, np.float32)])
    np.testing.assert_array_equal(q, 0)


@pytest.mark.parametrize("kind_name", KINDS)
def test_gradients_that_are_other_parameters_buffers_are_refused(kind_name):
    params = [np.zeros(3, np.float32), np.zeros(3, np.float32)]
    opt = _self_optimizer(kind_name, params)
    buffers = opt.grad_buffers
    buffers[0][:], buffers[1][:] = 1, 2
    with pytest.raises(ValueError, match=r"grads\[0\] is in the optimizer's gradient buffers but "
                                         r"is not grad_buffers\[0\]"):
        opt.step([buffers[1], buffers[0]])  # the sums are written where later ones are read
    np.testing.assert_array_equal(params[0], 0)
    np.testing.assert_array_equal(params[1], 0)
    opt.step(buffers)  # each its own: no copy, and the step as fm.SGD's
    np.testing.assert_allclose(params[0], -0.1)
    np.testing.assert_allclose(params[1], -0.2)


@pytest.mark.parametrize("kind_name", KINDS)
def test_an_empty_parameter_of_several_dimensions_is_taken(kind_name):
    params = [np.zeros((0, 4), np.float32), np.zeros(2, np.float32)]
    opt = _self_optimizer(kind_name, params)
    opt.step([np.zeros((0, 4), np.float32), np.ones(2, np.float32)])
    np.testing.assert_allclose(params[1], -0.1)


@pytest.mark.parametrize("kind_name", KINDS)
def test_step_without_gradients_steps_the_grad_buffers(kind_name):
    params, twin = [np.ones((2, 3), np.float32), np.ones(4)], [np.ones((2, 3), np.float32),
                                                              np.ones(4)]
    opt, other = _self_optimizer(kind_name, params), _self_optimizer(kind_name, twin)
    for t in range(3):
        grads = [np.full((2, 3), t + 1.0, np.float32), np.arange(4.0) * t]
        for buffer, g in zip(opt.grad_buffers, grads, strict=True):
            buffer[...] = g
        opt.step()
        other.step(grads)
    for p, q in zip(params, twin, strict=True):
        assert p.tobytes() == q.tobytes()


@pytest.mark.parametrize("kind_name", KINDS)
def test_a_step_reads_the_gradients_once_and_never_writes_them(kind_name):
    # A list subclass whose second iteration would give other arrays: one snapshot is taken
    # before any check; the caller's arrays (one in Fortran order) come back unchanged.
    good = [np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)), np.ones(4)]
    kept = [g.copy(order="K") for g in good]

    class Fickle(list):
        calls = 0

        def __iter__(self):
            Fickle.calls += 1
            return iter(good if Fickle.calls == 1 else [np.zeros(1), np.zeros(1)])

    params = [np.ones((2, 3), np.float32), np.ones(4)]
    twin = [p.copy() for p in params]
    _self_optimizer(kind_name, params).step(Fickle(good))
    _self_optimizer(kind_name, twin).step([g.copy() for g in kept])
    assert Fickle.calls == 1
    for g, k in zip(good, kept, strict=True):
        assert g.tobytes("A") == k.tobytes("A") and g.strides == k.strides
    for p, q in zip(params, twin, strict=True):
        assert p.tobytes() == q.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_all_gathers_use_mpis_predefined_datatypes(dtype):
    # mpi4py.util.dtlib.from_numpy_dtype makes a new datatype at every call, never freed: a leak
    # of 1 KiB per step when every all-gather made one.
    from fastmomentum.distributed import _collectives

    datatype = _collectives._spec(np.zeros(4, dtype), [0, 4])[3]
    assert datatype.is_predefined and datatype.Get_size() == np.dtype(dtype).itemsize


@pytest.mark.parametrize("refused, error", [
    (np.ones(3, np.float16), "no 16-bit float type"),
    (np.asfortranarray(np.ones((2, 3), np.float32)), "not C-contiguous")])
def test_a_refused_param_group_changes_nothing(refused, error):
    # The distributed refusals come before fm.SGD adds the group: the optimizer is as it was.
    p = np.ones(4, np.float32)
    opt = _self_optimizer("DistributedSGD", [p])
    opt.step([np.ones(4, np.float32)])
    before = opt.state_dict()
    with pytest.raises((TypeError, ValueError), match=error):
        opt.add_param_group({"params": [refused]})
    after = opt.state_dict()
    assert len(opt.param_groups) == 1 and after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    opt.step([np.ones(4, np.float32)])  # one gradient, one parameter: still
    q = np.zeros(2)
    opt.add_param_group({"params": (x for x in [q])})  # a generator, read once
    for buffer, g in zip(opt.grad_buffers, [np.ones(4, np.float32), np.ones(2)], strict=True):
        buffer[...] = g  # the new buffers: the old list is stale after add_param_group
    opt.step()
    np.testing.assert_allclose(q, -0.1)
