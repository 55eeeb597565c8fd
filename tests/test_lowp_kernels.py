"""The low-precision storage kinds through the CPU kernels, bit for bit against
tests/reference_lowp.lowp_step (NaN == NaN), on every ISA this CPU runs and 1, 2 and 3 threads.

Each test computes the reference once and runs the kernels once per configuration (lowp_cases.
CONFIGS) on its own copy of the state, so "the same bits for every ISA and thread count" is the
same assertion as "the reference's bits". Calls hold several parameters of more than a few blocks
of 256, with odd tails, a 2-D and an empty one; with more than one thread every block is a part
of its own, so the thread partition cuts inside parameters.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _core
from fastmomentum._protocol import Call, Guard, Hyper

import reference_lowp as lp
from lowp_cases import (
    BF16,
    CONFIGS,
    F16,
    F32,
    KINDS,
    MIXED,
    SHAPES,
    Kind,
    kernel_config,
    make_grads,
    make_state,
    run_kernels,
    run_reference,
    same_bits,
    same_state,
)
from reference import torch_sgd

STYLES = ["torch", "keras", "ema"]
SEED = 0x5EAD_BEEF_0123_4567  # a seed of 63 bits: the key mixes all of them


def trajectory_hyper(style, kind, t):
    """Step t's hyper-parameters: a changing lr (where the conventions split), momentum with
    Nesterov and a weight decay, in each convention's own mode; no momentum for buffer "none"."""
    lr = 0.05 * 0.9**t
    momentum = 0.0 if kind.buf == "none" else 0.9
    if style == "torch":
        return dict(lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=1e-2,
                    weight_decay_mode="coupled")
    if style == "keras":
        return dict(lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=1e-2,
                    weight_decay_mode="decoupled")
    return dict(lr=lr, beta=momentum, weight_decay=1e-2, weight_decay_mode="sgdw",
                schedule_multiplier=0.5)


def run_everywhere(style, start, steps):
    """Runs `steps`, a list of (hyper, grads or None, kwargs, want), from `start` on every
    configuration, comparing the state with `want` after each step."""
    for cfg in CONFIGS:
        state = start.copy()
        with kernel_config(*cfg):
            for t, (hyper, grads, kw, want) in enumerate(steps):
                if grads is not None:
                    state.grads = [g.copy() for g in grads]
                run_kernels(style, state, hyper, **kw)
                same_state(state, want, f"step {t} {cfg}")


def trajectory(style, start, steps):
    """The reference's states after each of `steps`, a list of (hyper, grads or None, kwargs),
    from `start`; then the same on every configuration."""
    want, checked = start, []
    for hyper, grads, kw in steps:
        if grads is not None:
            want = dataclasses.replace(want, grads=grads)  # the checked states stay as they were
        want = run_reference(style, want, hyper, **kw)
        checked.append((hyper, grads, kw, want))
    run_everywhere(style, start, checked)
    return want


def _groups():
    """KINDS in the calls they can share: rounding is one per call, and no buffers means no
    momentum for the whole call."""
    groups = {}
    for kind in KINDS:
        groups.setdefault(("no-buffers" if kind.buf == "none" else "buffers", kind.rounding),
                          []).append(kind)
    return groups


GROUPS = _groups()


# Guards against: a kind whose widening, narrowing, rounding, random stream, compensation or
# quantization differs from the spec on any ISA or thread partition, in any convention, over
# steps (the torch first step included), or a kind whose arrays another kind's code writes.
# Every kind of a group is in one call, each with two parameters: 1537 elements (several blocks
# and a tail), and one of the other SHAPES in turn.
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("group", sorted(GROUPS), ids="-".join)
def test_five_steps_of_every_kind_match_the_reference_everywhere(group, style):
    kinds = [k for k in GROUPS[group] for _ in range(2)]
    shapes = [SHAPES[0] if i % 2 == 0 else SHAPES[1 + i // 2 % 4] for i in range(len(kinds))]
    rng = np.random.default_rng(zlib.crc32(f"{group} {style}".encode()))
    start = make_state(rng, kinds, shapes)
    steps = [(trajectory_hyper(style, kinds[0], t), make_grads(rng, kinds, shapes) if t else None,
              dict(rounding=group[1], seed=SEED, step=t, first_step=t == 0))
             for t in range(5)]
    trajectory(style, start, steps)


def test_the_groups_hold_every_kind():
    assert sorted(k.id for g in GROUPS.values() for k in g) == sorted(k.id for k in KINDS)
    assert len(KINDS) == 3 + 2 * 2 * 5 * 3


def _torch(**kw):
    return ("torch", {"lr": 0.05, "momentum": 0.9, **kw})


def _keras(**kw):
    return ("keras", {"lr": 0.05, "momentum": 0.9, **kw})


def _ema(**kw):
    return ("ema", {"lr": 0.05, "beta": 0.9, **kw})


# Each option of each convention at least once, most together with others (the full product of
# the options is test_kernels.py's, on the float32 formula the low-precision kinds share):
# dampening, Nesterov, first step then a later one, maximize, no momentum (given buffers left
# alone), no decay and each decay mode with its own multiplier.
D = dict(weight_decay=1e-2, schedule_multiplier=0.5)
CONVENTIONS = [
    _torch(first_step=True),
    _torch(dampening=0.3, weight_decay_mode="coupled", maximize=True, **D),
    _torch(dampening=0.3, weight_decay_mode="decoupled", first_step=True, **D),
    _torch(nesterov=True, weight_decay_mode="sgdw", first_step=True, maximize=True, **D),
    _torch(nesterov=True, weight_decay_mode="coupled", **D),
    _torch(momentum=0.0, weight_decay_mode="coupled", maximize=True, **D),
    _torch(momentum=0.0, weight_decay_mode="sgdw", **D),
    _keras(),
    _keras(weight_decay_mode="decoupled", **D),
    _keras(nesterov=True, weight_decay_mode="coupled", maximize=True, **D),
    _keras(nesterov=True, weight_decay_mode="sgdw", **D),
    _keras(momentum=0.0, weight_decay_mode="decoupled", maximize=True, **D),
    _ema(weight_decay_mode="coupled", maximize=True, **D),
    _ema(weight_decay_mode="decoupled", **D),
    _ema(weight_decay_mode="sgdw", maximize=True, **D),
    _ema(beta=0.0, weight_decay_mode="coupled", **D),
]


def _case_id(case):
    style, v = case
    return style + "-" + "-".join(f"{k}={v[k]}" for k in sorted(v) if k != "lr")


# Guards against: a convention's branch (dampening, Nesterov, first step, maximize, each weight
# decay mode, momentum 0 leaving given buffers alone) taken differently by the low-precision
# kernels than by the float32 formula the reference runs.
@pytest.mark.parametrize("mix", sorted(MIXED))
@pytest.mark.parametrize("case", CONVENTIONS, ids=[_case_id(c) for c in CONVENTIONS])
def test_every_convention_on_mixed_kinds_over_two_steps(case, mix):
    style, hyper = case
    hyper = dict(hyper)
    first = hyper.pop("first_step", False)
    start = make_state(np.random.default_rng(5), MIXED[mix])
    rounding = "stochastic" if mix == "stochastic" else "nearest"
    trajectory(style, start, [(hyper, None, dict(rounding=rounding, seed=3, step=t,
                                                 first_step=first and t == 0))
                              for t in range(2)])


def test_first_step_per_parameter_does_not_read_the_buffers():
    """The torch first step sets b <- g without reading b: buffers full of NaN (an 8-bit one with
    NaN scales) give finite results where first_step is True, NaN where it is False."""
    rng = np.random.default_rng(6)
    kinds = MIXED["stochastic"]
    start = make_state(rng, kinds)
    for b in start.buffers:
        if isinstance(b, tuple):
            b[1][:] = np.nan
        else:
            b[:] = np.nan
    first = [True, False, True, True, False]
    hyper = dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=1e-3)
    want = trajectory("torch", start, [(hyper, None, dict(rounding="stochastic", seed=1, step=2,
                                                          first_step=first))])
    for i, (p, f) in enumerate(zip(want.params, first, strict=True)):
        if p.size:
            assert np.isnan(p.astype(np.float32)).any() == (not f), f"params[{i}]"


def test_float32_parameters_ignore_the_rounding():
    """float32 parameters store the float32 result whatever `rounding` says; their low-precision
    buffers round to nearest."""
    rng = np.random.default_rng(7)
    kinds = [Kind(F32, F32, buf) for buf in ("bfloat16", "float16", "int8", "float32", "int8")]
    start = make_state(rng, kinds)
    hyper = dict(lr=0.1, momentum=0.9)
    want = run_reference("torch", start, hyper)
    for rounding in ("nearest", "stochastic"):
        run_everywhere("torch", start, [(hyper, None, dict(rounding=rounding, seed=9, step=9),
                                         want)])


# --- stochastic rounding --------------------------------------------------------------------

def _differing(a, b):
    return int(np.count_nonzero(a.view(np.uint16) != b.view(np.uint16)))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_stochastic_rounding_is_keyed_by_seed_and_step(dtype):
    """Same (seed, step): the reference's bits on every configuration. Another step or seed:
    other bits for a large share of the elements (about a third are expected to differ)."""
    rng = np.random.default_rng(8)
    kind = Kind(dtype, F32, "float32", "stochastic")
    start = make_state(rng, [kind], shapes=[(3000,), (1001,)])
    hyper = dict(lr=0.01, momentum=0.9)
    results = {}
    for seed, step in [(11, 5), (11, 6), (12, 5), (2**63 - 1, 2**63 - 1)]:
        kw = dict(rounding="stochastic", seed=seed, step=step)
        results[seed, step] = trajectory("torch", start, [(hyper, None, kw)]).params
    keys = list(results)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            for pa, pb in zip(results[a], results[b], strict=True):
                assert _differing(pa, pb) > pa.size // 10, f"{a} and {b} round alike"


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_the_stream_is_the_parameters_index_in_the_call(dtype):
    """Two parameters with identical values, gradients and buffers round differently: each by its
    own index among the call's parameters, which counts parameters of every kind (a float32 one
    placed first moves the others to streams 1 and 2)."""
    rng = np.random.default_rng(9)
    p = lp.narrow(rng.standard_normal(2000).astype(np.float32), dtype)
    g = rng.standard_normal(2000).astype(np.float32)
    hyper = dict(lr=0.01)
    for lead in ([], [np.ones(10, np.float32)]):
        params = [*(x.copy() for x in lead), p.copy(), p.copy()]
        grads = [*(np.ones_like(x) for x in lead), g, g.copy()]
        fm.functional.sgd_(params, grads, rounding="stochastic", seed=4, step=1, **hyper)
        assert _differing(params[-1], params[-2]) > p.size // 10
        for stream in (len(lead), len(lead) + 1):
            want, _, _ = lp.lowp_step(torch_sgd, p, g, None, rounding="stochastic", seed=4,
                                      step=1, stream=stream, **hyper)
            same_bits(params[stream], want, f"params[{stream}]")


def test_the_stream_counts_every_call_of_a_step():
    """In one step of several calls (parameter groups) the stream is the parameter's index among
    all the step's parameters, i.e. its gradient's index."""
    rng = np.random.default_rng(10)
    p = lp.narrow(rng.standard_normal(600).astype(np.float32), BF16)
    g = rng.standard_normal(600).astype(np.float32)
    params = [[p.copy(), p.copy()], [p.copy()]]
    hyper = Hyper("torch", 0.01, 0.0, 0.0, False, 0.0, "coupled", 1.0, False,
                  rounding="stochastic", seed=21, step=3)
    calls = [Call(params[0], None, False, hyper, 0), Call(params[1], None, False, hyper, 2)]
    outcome = _core.StepOutcome()
    _core.sgd_steps(calls, [g, g.copy(), g.copy()], Guard(), outcome)
    assert outcome.ran and outcome.applied
    for stream, got in enumerate([*params[0], *params[1]]):
        want, _, _ = lp.lowp_step(torch_sgd, p, g, None, rounding="stochastic", seed=21, step=3,
                                  stream=stream, lr=0.01)
        same_bits(got, want, f"parameter {stream}")


# --- the 8-bit buffer's NaN rule --------------------------------------------------------------

@pytest.mark.parametrize("param", [BF16, F32], ids=["bfloat16", "float32"])
def test_a_nonfinite_momentum_makes_its_8bit_block_nan(param):
    """nonfinite="ignore": a NaN and an infinity in the gradients make their blocks' scales NaN
    and every code 0; on the next step the whole block decodes to NaN (0 * NaN) and stays NaN;
    the other blocks and the other parameter are the reference's finite values."""
    rng = np.random.default_rng(11)
    start = make_state(rng, [Kind(param, param, "int8")], shapes=[(1537,), (700,)])
    start.grads[0][300] = np.nan
    start.grads[0][1000] = -np.inf
    hyper = dict(lr=0.01, momentum=0.9, nesterov=True)
    wants = []
    for _ in range(2):
        wants.append(run_reference("torch", start if not wants else wants[-1], hyper))
        codes, scales = wants[-1].buffers[0]
        assert np.isnan(scales[[1, 3]]).all() and np.isfinite(np.delete(scales, [1, 3])).all()
        assert not codes[256:512].any() and not codes[768:1024].any()
        assert np.isfinite(wants[-1].buffers[1][1]).all()
    p0 = wants[-1].params[0].astype(np.float32)
    assert np.isnan(p0[256:512]).all() and np.isnan(p0[768:1024]).all()
    assert np.isfinite(np.delete(p0, np.r_[256:512, 768:1024])).all()
    for cfg in CONFIGS:
        state = start.copy()
        with kernel_config(*cfg):
            for t, want in enumerate(wants):
                run_kernels("torch", state, hyper)
                same_state(state, want, f"step {t} {cfg}")


@pytest.mark.skipif(not fm.show_config(mode="dicts")["openmp"], reason="built without OpenMP")
def test_three_threads_really_run():
    """CONFIGS' thread counts are the threads a low-precision step runs (OpenMP's limit raised
    above the cores where needed)."""
    rng = np.random.default_rng(12)
    params = [lp.narrow(rng.standard_normal(5000).astype(np.float32), BF16) for _ in range(3)]
    grads = [np.ones(5000, np.float32) for _ in range(3)]
    hyper = Hyper("torch", 0.01, 0.0, 0.0, False, 0.0, "coupled", 1.0, False)
    assert {t for _, t in CONFIGS} == {1, 2, 3}
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            outcome = _core.StepOutcome()
            _core.sgd_steps([Call(params, None, False, hyper, 0)], grads, Guard(), outcome)
        assert outcome.applied and outcome.threads == cfg[1], cfg


# The kinds cpp/kernels/lowp_kernels.cpp fuses into one loop per variant (fused_kernel), each
# loop its own template instantiation: every variant of each is run here, where the other kinds
# share the staged path's float32 loops with test_kernels.py's full product.
FUSED = [Kind(F32, F32, "bfloat16"), Kind(F32, F32, "float16"), Kind(F32, F32, "int8"),
         *(Kind(BF16, BF16, buf, wb) for buf in ("bfloat16", "int8", "none")
           for wb in ("kahan", "stochastic"))]
# Each decay operation (none, coupled, PyTorch's keep factor, Keras' order) with and without the
# gradient's factors (maximize, dampening), Nesterov or not, the torch first step and a later one.
DECAYS = {"none": {}, "coupled": dict(weight_decay=1e-2, weight_decay_mode="coupled"),
          "decoupled": dict(weight_decay=1e-2, weight_decay_mode="decoupled"),
          "sgdw": dict(weight_decay=1e-2, weight_decay_mode="sgdw", schedule_multiplier=0.5)}


def _fused_hyper(style, kind, nesterov, decay, scaled):
    momentum = 0.0 if kind.buf == "none" else 0.9
    hyper = dict(lr=0.05, **DECAYS[decay], maximize=scaled)
    if style == "ema":
        return dict(hyper, beta=momentum)
    hyper.update(momentum=momentum, nesterov=nesterov and momentum > 0)
    if style == "torch" and scaled and momentum > 0 and not nesterov:
        hyper["dampening"] = 0.3  # (Nesterov takes none)
    return hyper


# Guards against: a fused kind's variant instantiated for the wrong form, Nesterov, decay or
# gradient scaling (fused_of's mapping), or a fused loop that reads or writes another stream.
# (EMA and no momentum take no Nesterov.)
FUSED_CASES = [(kind, style, nesterov, decay, scaled)
               for kind in FUSED for style in STYLES for nesterov in (False, True)
               for decay in sorted(DECAYS) for scaled in (False, True)
               if not (nesterov and (style == "ema" or kind.buf == "none"))]


@pytest.mark.parametrize(("kind", "style", "nesterov", "decay", "scaled"), FUSED_CASES,
                         ids=lambda v: v.id if isinstance(v, Kind) else str(v))
def test_every_variant_of_the_fused_kinds(kind, style, nesterov, decay, scaled):
    hyper = _fused_hyper(style, kind, nesterov, decay, scaled)
    start = make_state(np.random.default_rng(11), [kind], SHAPES[:1] + SHAPES[4:])
    trajectory(style, start, [(hyper, None, dict(rounding=kind.rounding, seed=5, step=t,
                                                 first_step=t == 0))
                              for t in range(2)])
