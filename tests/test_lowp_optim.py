"""fm.SGD with low-precision state and parameters (state_dtype, param_rounding, seed): the same
bits as the functional steps it stands for, the state's bytes, state dicts converted between
storage kinds, checkpoints, resumes and refusals."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum.functional import sgd_
from fastmomentum.storage import QuantizedBuffer

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
SIZES = (700, 256, 1)  # across blocks, one block, a short one
STEPS = 4


def arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in SIZES]


def grads_at(step, dtype=np.float32):
    rng = np.random.default_rng(100 + step)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32).astype(dtype) for n in SIZES]


def functional_buffers(state_dtype, params):
    if state_dtype == "int8":
        return [QuantizedBuffer.zeros_like(p) for p in params]
    dtype = params[0].dtype if state_dtype is None else fm.storage.dtype_of(state_dtype)
    return [np.zeros(p.shape, dtype) for p in params]


def same(a, b):
    if isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            same(x, y)
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# float32 parameters are exact: one rounding stands for all.
PARAM_KINDS = [(np.float32, "kahan")] + [(d, r) for d in (BF16, np.dtype(np.float16))
                                         for r in ("kahan", "stochastic", "nearest")]


@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "float16", "int8"])
@pytest.mark.parametrize(("param_dtype", "rounding"), PARAM_KINDS, ids=str)
def test_the_optimizer_steps_as_the_functional_step(state_dtype, param_dtype, rounding):
    """Every step of fm.SGD is sgd_ with its buffers, compensations and the stochastic rounding's
    key (seed, the step count; the stream is the parameter's index)."""
    params = arrays(param_dtype)
    mine = [p.copy() for p in params]
    opt = fm.SGD(mine, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3,
                 state_dtype=state_dtype, param_rounding=rounding, seed=7)
    buffers = functional_buffers(state_dtype, params)
    low = np.dtype(param_dtype).itemsize == 2
    comps = [np.zeros_like(p) for p in params] if low and rounding == "kahan" else None
    for step in range(STEPS):
        grads = grads_at(step)
        opt.step(grads)
        sgd_(params, grads, buffers, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3,
             first_step=step == 0, compensations=comps,
             rounding="stochastic" if rounding == "stochastic" else "nearest", seed=7, step=step)
        for i in range(len(SIZES)):
            same(mine[i], params[i])
            entry = opt.state[mine[i]]
            same(entry["momentum_buffer"], buffers[i])
            if comps is not None:
                same(entry["compensation"], comps[i])
            else:
                assert "compensation" not in entry


def test_stochastic_rounding_draws_anew_each_step_and_with_each_seed():
    results = {}
    for seed in (1, 2):
        p = [np.full(4096, 1.0, BF16)]
        opt = fm.SGD(p, lr=1e-3, param_rounding="stochastic", seed=seed)
        steps = []
        for _ in range(2):
            opt.step([np.full(4096, 0.3, np.float32)])  # 3e-4: far below bf16's step at 1
            steps.append(p[0].copy())
        results[seed] = steps
        assert not np.array_equal(steps[0].view(np.uint16), steps[1].view(np.uint16))
        # On average the updates are kept: 2 * 3e-4 below 1, within a few standard deviations.
        assert abs(float(np.mean(steps[1].astype(np.float64))) - (1 - 6e-4)) < 5e-5
    assert not np.array_equal(results[1][0].view(np.uint16), results[2][0].view(np.uint16))


def test_nearest_rounding_loses_small_updates_and_kahan_keeps_them():
    """The documented loss: an update below half of bfloat16's step at 1 is lost to nearest
    rounding, and kept by the compensation (p + c moves)."""
    p_nearest, p_kahan = [np.ones(256, BF16)], [np.ones(256, BF16)]
    nearest = fm.SGD(p_nearest, lr=1e-3, param_rounding="nearest")
    kahan = fm.SGD(p_kahan, lr=1e-3, param_rounding="kahan")
    for _ in range(100):
        nearest.step([np.ones(256, np.float32)])
        kahan.step([np.ones(256, np.float32)])
    assert np.all(p_nearest[0] == 1)
    kept = p_kahan[0].astype(np.float32) + kahan.state[p_kahan[0]]["compensation"].astype(
        np.float32)
    np.testing.assert_allclose(kept, 1 - 0.1, rtol=0, atol=2e-3)


@pytest.mark.parametrize(("state_dtype", "param_dtype", "rounding", "per_element"), [
    (None, np.float32, "kahan", 4),
    ("bfloat16", np.float32, "kahan", 2),
    ("float16", np.float32, "kahan", 2),
    ("int8", np.float32, "kahan", None),
    ("int8", BF16, "kahan", None),
    ("int8", BF16, "stochastic", None),
    (None, BF16, "kahan", 2),  # None: the parameter's dtype
])
def test_state_nbytes_counts_buffers_and_compensations(state_dtype, param_dtype, rounding,
                                                       per_element):
    params = arrays(param_dtype)
    opt = fm.SGD(params, lr=0.1, momentum=0.9, state_dtype=state_dtype, param_rounding=rounding)
    opt.step(grads_at(0))
    n = sum(SIZES)
    low_params = np.dtype(param_dtype).itemsize == 2
    expected = (n + 4 * sum(math.ceil(k / 256) for k in SIZES)) if per_element is None \
        else per_element * n
    if low_params and rounding == "kahan":
        expected += 2 * n
    assert opt.state_nbytes == expected


@pytest.mark.parametrize("saved", [None, "bfloat16", "float16", "int8"])
@pytest.mark.parametrize("loaded", [None, "bfloat16", "float16", "int8"])
def test_a_state_dict_loads_into_any_storage_converted(saved, loaded):
    """A state dict's buffers are converted to the loading optimizer's storage, with the
    kernels' roundings (float32 -> 8-bit is QuantizedBuffer.from_array, 8-bit -> float32 its
    to_array), and the step after the load is the step of the converted buffers."""
    source = fm.SGD(arrays(np.float32), lr=0.1, momentum=0.9, state_dtype=saved)
    source.step(grads_at(0))
    state = source.state_dict()
    params = arrays(np.float32, seed=3)
    target = fm.SGD(params, lr=0.1, momentum=0.9, state_dtype=loaded)
    target.load_state_dict(state)
    for i, p in enumerate(params):
        buf = state["state"][i]["momentum_buffer"]
        values = QuantizedBuffer(*buf).to_array() if isinstance(buf, tuple) \
            else buf.astype(np.float32)
        got = target.state[p]["momentum_buffer"]
        if loaded == "int8":
            same(got, QuantizedBuffer.from_array(values))
        else:
            want_dtype = np.float32 if loaded is None else fm.storage.dtype_of(loaded)
            same(got, values.astype(want_dtype))
    # And it steps on from there, as the functional step on those buffers does.
    expected = [p.copy() for p in params]
    buffers = [copy.deepcopy(target.state[p]["momentum_buffer"]) for p in params]
    grads = grads_at(1)
    target.step(grads)
    sgd_(expected, grads, buffers, lr=0.1, momentum=0.9)
    for p, e in zip(params, expected, strict=True):
        same(p, e)


def test_a_bfloat16_run_resumes_from_a_checkpoint_bit_for_bit(tmp_path):
    """bfloat16 parameters, 8-bit momentum, stochastic rounding: saved after 3 steps, loaded into
    a new optimizer, the run goes on with the same bits as an uninterrupted one."""
    def make(params):
        return fm.SGD(params, lr=0.05, momentum=0.9, state_dtype="int8",
                      param_rounding="stochastic", seed=11)

    straight = arrays(BF16)
    opt = make(straight)
    for step in range(6):
        opt.step(grads_at(step))

    resumed = arrays(BF16)
    first = make(resumed)
    for step in range(3):
        first.step(grads_at(step))
    fm.checkpoint.save(tmp_path / "run.npz", {"opt": first.state_dict(), "params": resumed})
    saved = fm.checkpoint.load(tmp_path / "run.npz")
    params = saved["params"]
    assert params[0].dtype == BF16
    second = make(params)
    second.load_state_dict(saved["opt"])
    for step in range(3, 6):
        second.step(grads_at(step))
    for a, b in zip(straight, params, strict=True):
        same(a, b)


def test_the_seed_is_saved_and_a_resumed_run_takes_it():
    """An optimizer built with another seed continues the saved run's stochastic rounding bit for
    bit: load_state_dict restores the saved seed."""
    def make(params, seed):
        return fm.SGD(params, lr=0.05, momentum=0.9, param_rounding="stochastic", seed=seed)

    straight = arrays(BF16)
    opt = make(straight, 1234)
    for step in range(4):
        opt.step(grads_at(step))
    resumed = arrays(BF16)
    first = make(resumed, 1234)
    for step in range(2):
        first.step(grads_at(step))
    saved = first.state_dict()
    assert saved["seed"] == 1234 and saved["param_rounding"] == "stochastic"
    second = make(resumed, 0)
    second.load_state_dict(saved)
    assert second.seed == 1234
    for step in range(2, 4):
        second.step(grads_at(step))
    for a, b in zip(straight, resumed, strict=True):
        same(a, b)


@pytest.mark.parametrize(("name", "value", "how"), [
    ("param_rounding", "nearest", r"build a new optimizer with param_rounding='nearest' and "
                                  r"load_state_dict\(old\.state_dict\(\)\) into it \(from 'kahan', "
                                  r"fold the compensations into the parameters first"),
    ("state_dtype", "int8", r"build a new optimizer with state_dtype='int8' and "
                            r"load_state_dict\(old\.state_dict\(\)\) into it"),
    ("seed", 5, r"load_state_dict restores the saved seed: set state_dict\['seed'\] = 5")])
def test_the_storage_settings_are_fixed_at_construction(name, value, how):
    """Changing param_rounding on a live optimizer would drop (or keep using) the compensations
    the state holds; state_dtype and seed are the state's too: setting them says what to do."""
    params = arrays(BF16)
    opt = fm.SGD(params, lr=1e-3, momentum=0.9)
    opt.step(grads_at(0))
    before = getattr(opt, name)
    with pytest.raises(AttributeError, match=rf"{name} is fixed at construction .*: {how}"):
        setattr(opt, name, value)
    assert getattr(opt, name) == before


@pytest.mark.parametrize("seed", [2**63, 2**64 + 5, np.uint64(2**63)])
def test_a_seed_no_step_could_take_is_refused_on_load(seed):
    params = arrays(BF16)
    opt = fm.SGD(params, lr=1e-3, momentum=0.9, param_rounding="stochastic", seed=3)
    saved = {**opt.state_dict(), "seed": seed}
    with pytest.raises(ValueError, match=r"seed must be an int >= 0 and < 2\*\*63"):
        opt.load_state_dict(saved)
    assert opt.seed == 3
    opt.step(grads_at(0))


def test_a_pickle_from_before_the_settings_were_properties_still_steps():
    """An optimizer pickled when state_dtype, param_rounding and seed were plain attributes (or
    did not exist) unpickles with them as properties."""
    opt = fm.SGD(arrays(np.float32), lr=0.1, momentum=0.9)
    state = opt.__getstate__()
    for name in ("_state_dtype", "_param_rounding", "_seed"):
        del state[name]
    old = fm.SGD.__new__(fm.SGD)
    old.__setstate__({**state, "seed": 7})
    assert (old.state_dtype, old.param_rounding, old.seed) == (None, "kahan", 7)
    old.step(grads_at(0))


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_kahan_compensations_are_refused_where_they_would_be_dropped(rounding):
    """A Kahan state loaded into an optimizer that rounds otherwise would lose the parameters'
    low bits: refused, and nothing changes."""
    params = arrays(BF16)
    kahan = fm.SGD(params, lr=1e-3, momentum=0.9)
    kahan.step(grads_at(0))
    other = fm.SGD([p.copy() for p in params], lr=1e-3, momentum=0.9, param_rounding=rounding)
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"state\[0\] holds a Kahan compensation, the low bits "
                                         rf"of its parameter, but this optimizer's "
                                         rf"param_rounding is '{rounding}'; .* to leave Kahan, "
                                         r"fold each into its parameter"):
        other.load_state_dict(kahan.state_dict())
    assert other.state_dict()["state"].keys() == before["state"].keys()
    assert other.iterations == 0


def test_a_kahan_state_survives_a_checkpoint(tmp_path):
    params = arrays(BF16)
    opt = fm.SGD(params, lr=1e-3, momentum=0.9)
    opt.step(grads_at(0))
    fm.checkpoint.save(tmp_path / "k.npz", opt.state_dict())
    again = fm.SGD([p.copy() for p in params], lr=1e-3, momentum=0.9)
    again.load_state_dict(fm.checkpoint.load(tmp_path / "k.npz"))
    for p, q in zip(params, again.param_groups[0]["params"], strict=True):
        same(opt.state[p]["compensation"], again.state[q]["compensation"])
        same(opt.state[p]["momentum_buffer"], again.state[q]["momentum_buffer"])


def test_a_skipped_step_changes_no_low_precision_state():
    params = arrays(BF16)
    opt = fm.SGD(params, lr=0.1, momentum=0.9, state_dtype="int8", nonfinite="skip")
    opt.step(grads_at(0))
    before = copy.deepcopy(opt.state_dict())
    kept = [p.copy() for p in params]
    bad = grads_at(1)
    bad[2][0] = np.nan
    assert opt.step(bad).skipped
    after = opt.state_dict()
    for i in range(len(SIZES)):
        same(params[i], kept[i])
        same(after["state"][i]["momentum_buffer"], before["state"][i]["momentum_buffer"])
        same(after["state"][i]["compensation"], before["state"][i]["compensation"])


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(state_dtype="int4"), ValueError, r"state_dtype must be None, 'float32', 'float64', "
                                           r"'bfloat16', 'float16' or 'int8', got 'int4'"),
    (dict(param_rounding="up"), ValueError, r"param_rounding must be 'kahan', 'stochastic' or "
                                            r"'nearest', got 'up'"),
    (dict(seed=-1), ValueError, r"seed must be an integer >= 0, got -1"),
    (dict(seed=1.5), ValueError, r"seed must be an integer >= 0, got 1.5"),
])
def test_bad_storage_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        fm.SGD([np.zeros(3, np.float32)], lr=0.1, **kwargs)


@pytest.mark.parametrize("state_dtype", ["bfloat16", "float16", "int8", "float32"])
def test_float64_parameters_keep_float64_state(state_dtype):
    with pytest.raises(ValueError, match=r"a float64 parameter keeps float64 state"):
        fm.SGD([np.zeros(3, np.float32), np.zeros(3)], lr=0.1, momentum=0.9,
               state_dtype=state_dtype)
    opt = fm.SGD([np.zeros(3, np.float32)], lr=0.1, state_dtype=state_dtype)
    with pytest.raises(ValueError, match=r"a float64 parameter keeps float64 state"):
        opt.add_param_group({"params": [np.zeros(3)]})
    assert len(opt.param_groups) == 1


def hide_ml_dtypes(monkeypatch):
    """From here on, `import ml_dtypes` fails as it does where the package is not installed."""
    import builtins

    real_import = builtins.__import__

    def no_ml_dtypes(name, *args, **kwargs):
        if name == "ml_dtypes":
            raise ImportError("No module named 'ml_dtypes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ml_dtypes)


def test_a_missing_ml_dtypes_is_named(monkeypatch):
    hide_ml_dtypes(monkeypatch)
    with pytest.raises(ImportError, match=r"bfloat16 arrays need the ml_dtypes package.*"
                                          r"pip install ml_dtypes"):
        fm.SGD([np.zeros(3, np.float32)], lr=0.1, state_dtype="bfloat16")


def _bad_pairs(good):
    return [((good.codes.copy(), good.scales[:2].copy()), ValueError,
             r"\.scales must have shape \(3,\), one scale per block of 256 codes"),
            ((good.codes.copy(), good.scales.astype(np.float64)), TypeError,
             r"\.scales has dtype float64; an 8-bit buffer's scales are float32"),
            ((good.codes.astype(np.int16), good.scales.copy()), TypeError,
             r"\.codes has dtype int16; an 8-bit buffer's codes are int8"),
            ([good.codes.copy(), good.scales.copy()], TypeError,
             r" is a list: a buffer is a NumPy array, an 8-bit one a \(codes, scales\) tuple"),
            ((good.codes.copy(), good.scales.astype(np.int32)), TypeError,
             r"\.scales has dtype int32; an 8-bit buffer's scales are float32")]


@pytest.mark.parametrize("case", range(5))
def test_a_bad_saved_8bit_buffer_is_named_as_the_state_dict_holds_it(case):
    p = np.ones(600, np.float32)
    opt = fm.SGD([p], lr=0.1, momentum=0.9, state_dtype="int8")
    opt.step([np.ones(600, np.float32)])
    good = opt.state[p]["momentum_buffer"]
    bad, error, message = _bad_pairs(good)[case]
    saved = {**opt.state_dict(), "state": {0: {"momentum_buffer": bad}}}
    with pytest.raises(error, match=r"state\[0\]\['momentum_buffer'\]" + message):
        opt.load_state_dict(saved)
    assert opt.state[p]["momentum_buffer"] is good


def test_convert_names_its_arguments():
    """_core.convert's errors say src and dst, or the name the caller gives src."""
    from fastmomentum import _core

    codes, scales = np.zeros(600, np.int16), np.zeros(3, np.float32)
    out = np.empty(600, np.float32)
    with pytest.raises(TypeError, match=r"^src\.codes has dtype int16; an 8-bit buffer's codes"):
        _core.convert((codes, scales), out)
    with pytest.raises(TypeError, match=r"^state\[4\]\.codes has dtype int16"):
        _core.convert((codes, scales), out, src_name="state[4]")
    with pytest.raises(ValueError, match=r"^src has 599 elements but dst has 600"):
        _core.convert(np.zeros(599, np.float32), out)


def test_a_bfloat16_checkpoint_without_ml_dtypes_says_to_install_it(tmp_path, monkeypatch):
    """An intact file is not called corrupt: the error names the package to install."""
    fm.checkpoint.save(tmp_path / "b.npz", {"w": np.ones(3, BF16)})
    hide_ml_dtypes(monkeypatch)
    with pytest.raises(ImportError, match=r"bfloat16 arrays need the ml_dtypes package"):
        fm.checkpoint.load(tmp_path / "b.npz")


def test_a_strided_saved_8bit_buffer_loads_copied():
    """The load makes the optimizer's own buffer: a saved pair need not be contiguous."""
    p = np.ones(600, np.float32)
    opt = fm.SGD([p], lr=0.1, momentum=0.9, state_dtype="int8")
    opt.step([np.ones(600, np.float32)])
    good = opt.state[p]["momentum_buffer"]
    codes, scales = np.repeat(good.codes, 2)[::2], np.repeat(good.scales, 2)[::2]
    opt.load_state_dict({**opt.state_dict(), "state": {0: {"momentum_buffer": (codes, scales)}}})
    same(opt.state[p]["momentum_buffer"].codes, good.codes)


def test_an_8bit_state_converts_between_conventions():
    """convert_state_dict takes an 8-bit buffer's values (float32; a load re-encodes them)."""
    p = np.ones(600, np.float32)
    opt = fm.SGD([p], lr=0.1, momentum=0.9, state_dtype="int8")
    opt.step([np.linspace(-1, 1, 600, dtype=np.float32)])
    keras = fm.convert_state_dict(opt.state_dict(), "keras")
    velocity = keras["state"][0]["velocity"]
    np.testing.assert_array_equal(
        velocity, opt.state[p]["momentum_buffer"].to_array() * np.float32(-0.1))


def test_a_compensation_for_a_float32_parameter_is_refused():
    p = np.ones(6, np.float32)
    opt = fm.SGD([p], lr=0.1, momentum=0.9)
    saved = {**opt.state_dict(), "state": {0: {"compensation": np.zeros(6, np.float32)}}}
    with pytest.raises(ValueError, match=r"state\[0\]\['compensation'\] is given but its parameter "
                                         r"is float32: only bfloat16 and float16 parameters"):
        opt.load_state_dict(saved)


def test_a_saved_compensation_must_match_its_parameter():
    params = arrays(BF16)
    opt = fm.SGD(params, lr=0.1)
    state = opt.state_dict()
    state["state"][0]["compensation"] = np.zeros(SIZES[0], np.float32)
    with pytest.raises(ValueError, match=r"state\[0\]\['compensation'\] must be a NumPy array "
                                         r"of its parameter's dtype and shape"):
        opt.load_state_dict(state)
