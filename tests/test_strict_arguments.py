"""One parser for every entry point: what the functional steps refuse, fm.SGD refuses too, in its
constructor, add_param_group, load_state_dict, a group edited between steps, and the values of its
schedules, with messages that name the argument; and copies, pickles and forks of an optimizer."""

from __future__ import annotations

import copy
import os
import pickle
import threading

import numpy as np
import pytest

import fastmomentum as fm


def _params():
    return [np.zeros(3), np.zeros(2)]


def _grads():
    return [np.ones(3), np.ones(2)]


@pytest.mark.parametrize("value", ["False", "no", 1, 0, [0], None, 0.0])
def test_nesterov_must_be_a_bool_everywhere(value):
    with pytest.raises(TypeError, match=r"nesterov must be a bool, got "):
        fm.SGD(_params(), lr=0.1, momentum=0.9, nesterov=value)
    with pytest.raises(TypeError, match=r"nesterov must be a bool, got "):
        fm.functional.sgd_(_params(), _grads(), _params(), lr=0.1, momentum=0.9, nesterov=value)
    opt = fm.SGD(_params(), lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"nesterov must be a bool, got "):
        opt.add_param_group({"params": [np.zeros(4)], "nesterov": value})
    opt.step(_grads())
    opt.param_groups[0]["nesterov"] = value  # an edit between steps
    params = opt.param_groups[0]["params"]
    before = [p.copy() for p in params]
    with pytest.raises(TypeError, match=r"nesterov must be a bool, got "):
        opt.step(_grads())
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params, before, strict=True))
    saved = fm.SGD(_params(), lr=0.1, momentum=0.9).state_dict()
    saved["param_groups"][0]["nesterov"] = value
    with pytest.raises(TypeError, match=r"nesterov must be a bool, got "):
        fm.SGD(_params(), lr=0.1, momentum=0.9).load_state_dict(saved)


def _loaded(mutate):
    opt = fm.SGD(_params(), lr=0.1, momentum=0.9)
    opt.step(_grads())
    saved = opt.state_dict()
    mutate(saved)
    fresh = fm.SGD(_params(), lr=0.1, momentum=0.9)
    before = fresh.state_dict()
    return fresh, saved, before


@pytest.mark.parametrize(("mutate", "error", "message"), [
    (lambda d: d["state"][0].update(velocity=d["state"][0].pop("momentum_buffer")), ValueError,
     r"state\[0\] holds \['velocity'\], the buffer of another style than this 'torch'-style "
     r"SGD's \('momentum_buffer'\); convert it with fastmomentum\.convert_state_dict"),
    (lambda d: d["state"][0].update(momentum_buffer=np.ones(3, np.complex128)), TypeError,
     r"state\[0\]\['momentum_buffer'\] has dtype complex128; a buffer must hold real"),
    (lambda d: d["state"][0].update(momentum_buffer="1 2 3"), TypeError,
     r"state\[0\]\['momentum_buffer'\] must be a NumPy array, got str"),
    (lambda d: d["state"][0].update(momentum_buffer=[1.0, 2.0, 3.0]), TypeError,
     r"state\[0\]\['momentum_buffer'\] must be a NumPy array, got list"),
    (lambda d: d["state"][0].update(momentum_buffer=np.ones(3, np.int64)), TypeError,
     r"has dtype int64; a buffer must hold real floating-point numbers"),
    (lambda d: d["state"].update({1.0: d["state"].pop(1)}), ValueError,
     r"state\[1\.0\]: the key must be the index of a parameter"),
    (lambda d: d["param_groups"][0].update(params=[0.0, 1.0]), ValueError,
     r"param_groups\[0\]\['params'\] holds 0\.0: parameter indices must be integers"),
    (lambda d: d["param_groups"][0].update(params=[True, 0]), ValueError,
     r"holds True: parameter indices must be integers"),
    (lambda d: d.update(iterations=2.0), ValueError, r"iterations must be an integer >= 0"),
    (lambda d: d["param_groups"][0].update(lr="0.1"), TypeError, r"lr must be a real number"),
    (lambda d: d["param_groups"][0].update(lr=0.1j), TypeError,
     r"lr must be a real number, got complex"),
], ids=["other-styles-buffer", "complex-buffer", "str-buffer", "list-buffer", "int-buffer",
        "float-state-key", "float-param-index", "bool-param-index", "float-iterations",
        "str-lr", "complex-lr"])
def test_load_state_dict_refuses_what_a_step_would_and_changes_nothing(mutate, error, message):
    opt, saved, before = _loaded(mutate)
    with pytest.raises(error, match=message):
        opt.load_state_dict(saved)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"] and after["state"] == before["state"]


def test_a_state_entrys_other_items_survive_a_round_trip():
    """What a user keeps beside the buffer (state_dict() saves the whole entry) loads back, as
    deep copies; the buffer is still checked and copied."""
    params = _params()
    opt = fm.SGD(params, lr=0.1, momentum=0.9)
    opt.step(_grads())
    opt.state[params[0]]["ema"] = ema = np.full(3, 2.0)
    opt.state[params[1]]["note"] = {"seen": [1, 2]}
    saved = opt.state_dict()
    fresh_params = [p.copy() for p in params]
    fresh = fm.SGD(fresh_params, lr=0.1, momentum=0.9)
    fresh.load_state_dict(saved)
    entry = fresh.state[fresh_params[0]]
    assert set(entry) == {"momentum_buffer", "ema"} and entry["ema"] is not ema
    np.testing.assert_array_equal(entry["ema"], ema)
    assert fresh.state[fresh_params[1]]["note"] == {"seen": [1, 2]}
    assert entry["momentum_buffer"] is not saved["state"][0]["momentum_buffer"]
    fresh.step(_grads())
    opt.step(_grads())
    for a, b in zip(params, fresh_params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_and_the_constructor_refuse_what_every_step_would_refuse_for_the_dtype():
    """The checks that depend on the arrays' dtype (a coefficient that overflows float32, Keras'
    decay that would flip a sign) run when the hyper-parameters arrive, not at the next step."""
    params = [np.ones(3, np.float32)]
    opt = fm.SGD(params, lr=0.1, momentum=0.9)
    opt.step([np.ones(3, np.float32)])
    before = opt.state_dict()
    for key in ("lr", "weight_decay"):
        saved = opt.state_dict()
        saved["param_groups"][0][key] = 1e39
        with pytest.raises(ValueError, match=f"{key}=1e\\+39 overflows float32"):
            opt.load_state_dict(saved)
        with pytest.raises(ValueError, match=f"{key}=1e\\+39 overflows float32"):
            fm.SGD([np.ones(3, np.float32)], **{"lr": 0.1, key: 1e39})
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"] and after["state"] == before["state"]
    with pytest.raises(ValueError, match=r"Invalid lr \* weight_decay: 1\.0"):
        fm.SGD([np.ones(3, np.float32)], style="keras", lr=1.0, weight_decay=1.0)
    with pytest.raises(ValueError, match="overflows float32"):
        opt.add_param_group({"params": [np.ones(2, np.float32)], "lr": 1e39})
    assert len(opt.param_groups) == 1
    fm.SGD([np.ones(3)], lr=1e39)  # float64 holds it


class _LyingShape(np.ndarray):
    @property
    def shape(self):  # the array's own (C) shape is (5,)
        return (3,)


def test_a_buffer_is_checked_by_its_arrays_shape_not_by_what_its_type_says():
    opt, saved, before = _loaded(lambda d: d["state"][0].update(
        momentum_buffer=np.arange(5.0).view(_LyingShape)))
    with pytest.raises(ValueError, match=r"state\[0\]\['momentum_buffer'\] has shape \(5,\) "
                                         r"but its parameter has shape \(3,\)"):
        opt.load_state_dict(saved)
    assert opt.state_dict()["state"] == before["state"]


def test_a_group_loaded_is_checked_as_a_group_added():
    opt, saved, before = _loaded(lambda d: d["param_groups"][0].update(initial_lr="abc"))
    with pytest.raises(TypeError, match="initial_lr must be a real number, got str"):
        opt.load_state_dict(saved)
    assert opt.state_dict()["param_groups"] == before["param_groups"]


class _Shifty(int):
    """An int whose conversions give 5 once, then -7: a value checked and stored from two
    conversions would be stored as -7."""

    def __index__(self):
        self.calls = getattr(self, "calls", 0) + 1
        return 5 if self.calls == 1 else -7

    __int__ = __index__


def test_a_counter_is_converted_once_and_stored_as_checked():
    opt = fm.SGD(_params(), lr=0.1, momentum=0.9, nonfinite="skip")
    opt.iterations = _Shifty(5)
    opt.max_consecutive_skips = _Shifty(5)
    assert (opt.iterations, opt.max_consecutive_skips) == (5, 5)
    saved = opt.state_dict()
    saved["skipped_steps"] = _Shifty(5)
    opt.load_state_dict(saved)
    assert opt.skipped_steps == 5 and type(opt.skipped_steps) is int
    fm.SGD(_params(), lr=0.1, momentum=0.9).load_state_dict(opt.state_dict())


def test_a_float_buffer_of_another_width_is_converted():
    opt, saved, _ = _loaded(lambda d: d["state"][0].update(
        momentum_buffer=d["state"][0]["momentum_buffer"].astype(np.float32)))
    opt.load_state_dict(saved)
    assert opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"].dtype == np.float64


@pytest.mark.parametrize(("lr", "error", "message"), [
    (lambda t: "0.1", TypeError, r"the lr schedule returned '0\.1' at step 0: lr must be a real "
                                 r"number, got str"),
    (lambda t: 0.1j, TypeError, r"the lr schedule returned 0\.1j at step 0: lr must be a real "
                                r"number, got complex"),
    (lambda t: np.complex128(0.1), TypeError, r"got numpy\.complex128"),
    (lambda t: np.array([0.1]), TypeError, r"got numpy\.ndarray"),
    (lambda t: True, TypeError, r"got bool"),
    (lambda t: 10**400, ValueError, r"lr must be a real number within a float64's range, got int "
                                    r"too large for one"),
    (lambda t: float("nan"), ValueError, r"Invalid learning rate: nan"),
], ids=["str", "complex", "numpy-complex", "array", "bool", "huge-int", "nan"])
def test_a_schedules_values_are_checked_by_the_parser(lr, error, message):
    params = _params()
    with pytest.raises(error, match=message):
        fm.SGD(params, lr=lr, momentum=0.9)


@pytest.mark.parametrize(("value", "error", "message"), [
    (0.1j, TypeError, r"lr must be a real number, got complex"),
    (np.complex64(0.1), TypeError, r"lr must be a real number, got numpy\.complex64"),
    (10**400, ValueError, r"lr must be a real number within a float64's range"),
    (b"0.1", TypeError, r"lr must be a real number, got bytes"),
], ids=["complex", "numpy-complex", "huge-int", "bytes"])
def test_numbers_that_are_not_real_are_refused_everywhere(value, error, message, recwarn):
    with pytest.raises(error, match=message):
        fm.SGD(_params(), lr=value)
    with pytest.raises(error, match=message):
        fm.functional.sgd_(_params(), _grads(), lr=value)
    assert not recwarn.list  # no ComplexWarning: refused, not converted


def test_arrays_and_bool_or_complex_tensors_of_other_libraries_are_not_real_numbers():
    """A torch tensor converts to a float when it holds one element, whatever its dtype or
    shape; the parser refuses what NumPy's own arrays and bools would be refused as."""
    torch = pytest.importorskip("torch")
    for value in (torch.tensor([0.1]), torch.tensor([[0.1]]), torch.tensor(True),
                  torch.tensor(0.1 + 0j)):
        with pytest.raises(TypeError, match=r"lr must be a real number, got torch\.Tensor"):
            fm.functional.sgd_(_params(), _grads(), lr=value)
        with pytest.raises(TypeError, match=r"lr must be a real number, got torch\.Tensor"):
            fm.SGD(_params(), lr=value)


def test_a_string_that_is_not_valid_utf_8_is_named_in_the_error():
    """A lone surrogate is a valid str but not valid UTF-8: the message shows it escaped."""
    with pytest.raises(ValueError, match=r"weight_decay_mode must be 'coupled', 'decoupled' or "
                                         r"'sgdw', got '\\ud800'"):
        fm.functional.sgd_(_params(), _grads(), lr=0.1, weight_decay_mode="\ud800")
    with pytest.raises(ValueError, match=r"style must be 'torch', 'keras' or 'ema', got "
                                         r"'x\\ud800'"):
        fm.SGD(_params(), lr=0.1, style="x\ud800")
    with pytest.raises(ValueError, match=r"got 'sgdw\\x00e'"):  # whole, not cut at the NUL
        fm.SGD(_params(), lr=0.1, weight_decay_mode="sgdw\x00e")


def test_a_value_error_of_a_conversion_is_named_and_chained():
    class NotOne:
        def __float__(self):
            raise ValueError("only one element tensors can be converted")

    with pytest.raises(ValueError, match=r"lr must be a real number, got \S*NotOne, whose "
                       r"conversion to a float failed") as info:
        fm.functional.sgd_(_params(), _grads(), lr=NotOne())
    assert "only one element" in str(info.value.__cause__)


def test_an_index_beyond_an_ssize_t_is_a_named_value_error(restore_threads):
    with pytest.raises(ValueError, match=r"n must be an int >= 0 and < 2\*\*63"):
        fm.set_num_threads(2**70)


def test_a_torch_scalar_is_a_real_number_everywhere():
    """A 0-d tensor converts (__float__) as any real number: in the constructor and at every
    step, and the trajectory is the plain floats'."""
    torch = pytest.importorskip("torch")
    a, b = _params(), _params()
    f64 = torch.float64  # (a float32 tensor's value is float32's 0.1, not 0.1)
    opt_t = fm.SGD(a, lr=torch.tensor(0.1, dtype=f64), momentum=torch.tensor(0.9, dtype=f64),
                   weight_decay=torch.tensor(0.01, dtype=f64))
    opt_f = fm.SGD(b, lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        opt_t.step(_grads())
        opt_f.step(_grads())
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_keyboard_interrupt_in_a_conversion_propagates():
    class Interrupting:
        def __float__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fm.SGD(_params(), lr=Interrupting())


def test_a_parameter_replaced_by_a_non_array_gets_the_documented_error():
    params = _params()
    opt = fm.SGD(params, lr=0.1, momentum=0.9)
    opt.step(_grads())
    opt.param_groups[0]["params"][1] = [0.0, 0.0]
    with pytest.raises(TypeError, match=r"params\[1\] must be a numpy\.ndarray, got list"):
        opt.step(_grads())


@pytest.mark.parametrize("value", [True, False, 1.0, "2", np.bool_(True)])
def test_set_num_threads_takes_an_int(value, restore_threads):
    with pytest.raises(TypeError, match="must be an int"):
        fm.set_num_threads(value)


# -- copies, pickles and forks -----------------------------------------------------------------

def _trained():
    params = [np.arange(4.0), np.ones((2, 3))]
    opt = fm.SGD(params, lr=fm.schedules.exponential_decay(0.1, 10, 0.5), momentum=0.9,
                 nesterov=True)
    for _ in range(3):
        opt.step([np.ones(4), np.ones((2, 3))])
    return params, opt


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_owns_copies_of_its_parameters_and_state(how):
    params, opt = _trained()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    assert all(a is not b and np.array_equal(a, b)
               for a, b in zip(twin_params, params, strict=True))
    # the copy's state is keyed by the copy's arrays
    for a, b in zip(twin_params, params, strict=True):
        assert twin.state[a]["momentum_buffer"] is not opt.state[b]["momentum_buffer"]
        np.testing.assert_array_equal(twin.state[a]["momentum_buffer"],
                                      opt.state[b]["momentum_buffer"])
    before = [p.copy() for p in params]
    grads = [np.full(4, 0.5), np.full((2, 3), 0.5)]
    twin.step(grads)
    # the original: untouched
    assert all(np.array_equal(a, b) for a, b in zip(params, before, strict=True))
    opt.step(grads)
    for a, b in zip(twin_params, params, strict=True):
        np.testing.assert_array_equal(a, b)  # the same trajectory
    assert twin.iterations == opt.iterations == 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_during_a_step_can_step():
    """fork() while another thread is inside step(): the child inherits the lock held by a thread
    that does not exist there; it must be free in the child."""
    params = _params()
    inside, release = threading.Event(), threading.Event()

    def lr(step):
        inside.set()
        release.wait(10)
        return 0.1

    opt = fm.SGD(params, lr=lr)
    thread = threading.Thread(target=opt.step, args=(_grads(),))
    thread.start()
    assert inside.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: one thread, whose step must not find the optimizer busy
        try:
            opt.param_groups[0]["lr"] = 0.1
            opt.step(_grads())
            os._exit(0 if opt.iterations == 1 else 2)
        except BaseException:
            os._exit(1)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert opt.iterations == 1  # the parent's own step


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_step_whose_schedule_forks_finishes_in_both_processes():
    """The child continues the step that forked inside its schedule: it releases the lock that
    step took, not the fresh one the fork handler gave the child."""
    params = [np.zeros(4, np.float32)]
    forked = []

    def lr(step):
        if step == 1:
            forked.append(os.fork())
        return 0.1

    opt = fm.SGD(params, lr=lr, momentum=0.9)
    opt.step([np.ones(4, np.float32)])
    try:
        opt.step([np.ones(4, np.float32)])
        opt.step([np.ones(4, np.float32)])
        ok = opt.iterations == 3
    except BaseException:
        ok = False
    if forked[0] == 0:
        os._exit(0 if ok else 1)
    _, status = os.waitpid(forked[0], 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ok


def test_the_dtype_checks_take_the_kernels_dtypes_by_name():
    from fastmomentum._protocol import Hyper

    hyper = Hyper("torch", 1e39, 0.0, 0.0, False, 0.0, "coupled", 1.0, False)
    fm._core.check_hyper(hyper, ("float64",))
    with pytest.raises(ValueError, match=r"lr=1e\+39 overflows float32"):
        fm._core.check_hyper(hyper, ("float64", "float32"))
    with pytest.raises(ValueError, match=r"lr=1e\+39 overflows float32"):  # its arithmetic's
        fm._core.check_hyper(hyper, ("bfloat16",))
    with pytest.raises(ValueError, match=r"each of dtypes must be 'float32', 'float64', "
                                         r"'bfloat16' or 'float16', got 'int8'"):
        fm._core.check_hyper(hyper, ["int8"])
    with pytest.raises(TypeError, match="each of dtypes must be a str"):
        fm._core.check_hyper(hyper, [np.float32])
