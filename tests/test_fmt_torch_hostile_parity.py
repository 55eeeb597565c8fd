"""fastmomentum.torch.SGD under a hostile user (issue 20's attack; skipped without torch): the
reproducers of what it found, each now the behaviour it asked for. A section per finding, its
comment the finding."""

from __future__ import annotations

import copy
import gc
import pickle
import sys
import threading
import weakref

import numpy as np
import pytest

import fastmomentum as fm

torch = pytest.importorskip("torch")
fmt = pytest.importorskip("fastmomentum.torch")


# --- Found: two threads stepping one fastmomentum.torch.SGD. The kernels release the GIL and the
# step's record (``_pending``) is one attribute: a second step's ``_settle`` discards the first's
# record, so ``iterations`` undercounts (it keys stochastic rounding and sgdw) and created
# buffers go unrecorded, and elements lose updates, with no error. fm.SGD refuses a concurrent
# step with RuntimeError.
def test_concurrent_steps_are_refused_or_all_counted():
    n = 1 << 20  # well above the GIL-release threshold
    ps = [torch.nn.Parameter(torch.zeros(n)) for _ in range(4)]
    opt = fmt.SGD(ps, lr=1.0)
    for p in ps:
        p.grad = torch.ones(n)
    barrier = threading.Barrier(2)
    refused = []

    def go():
        barrier.wait()
        for _ in range(40):
            try:
                opt.step()
            except RuntimeError:
                refused.append(1)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    applied = 80 - len(refused)
    assert opt.iterations == applied, (opt.iterations, applied)
    values = torch.cat([p.detach() for p in ps])
    assert torch.all(values == -float(applied)), (values.min().item(), values.max().item())


# --- Found: ``_step_supports_amp_scaling`` is set in __init__ only, and __getstate__ does not
# keep it: a deep copy or an unpickled fastmomentum.torch.SGD takes GradScaler's unfused path
# (the gradients unscaled in place, a step with an infinity never reaches the optimizer), so its
# ``skipped_steps`` stops counting what the original's counts. "Copies and pickles continue
# identically" breaks.
@pytest.mark.parametrize("clone", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))],
                         ids=["deepcopy", "pickle"])
def test_copy_keeps_the_fused_gradscaler_path(clone):
    p = torch.nn.Parameter(torch.ones(3))
    opt = fmt.SGD([p], lr=0.1, momentum=0.9)
    other = clone(opt)
    assert getattr(other, "_step_supports_amp_scaling", False)
    counts = []
    for o in (opt, other):
        x = o.param_groups[0]["params"][0]
        scaler = torch.amp.GradScaler("cpu")
        scaler.scale((x * float("inf")).sum()).backward()
        scaler.step(o)
        scaler.update()
        counts.append(o.skipped_steps)
    assert counts[0] == counts[1] == 1, counts


# --- Found: the errors of a refused step of fastmomentum.torch.SGD are the kernels' own:
# "params[i]" counts only the parameters that have a gradient, across groups, so it names the
# wrong parameter (the third parameter, the first with a gradient, is "params[0]"); a named
# parameter's name is never used; and the advice ends "for PyTorch parameters use
# fastmomentum.torch.SGD" -- the optimizer that raised it.
def _refused_step(opt):
    with pytest.raises(ValueError) as info:
        opt.step()
    return str(info.value)


def test_layout_error_names_the_parameter_the_user_knows():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    c = torch.nn.Parameter(torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))
    opt = fmt.SGD([{"params": [a, b]}, {"params": [c]}], lr=0.1)
    c.grad = torch.randn(2, 3, 4, 5)  # a contiguous gradient for a channels_last parameter
    msg = _refused_step(opt)
    # c is param_groups[1]["params"][0], the optimizer's third parameter, not "params[0]"
    assert "params[0]" not in msg or "param_groups[1]" in msg, msg


def test_layout_error_uses_the_parameter_name():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Conv2d(3, 3, 3))
    opt = fmt.SGD(m.named_parameters(), lr=0.1)
    m[1].weight.grad = torch.randn(3, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    msg = _refused_step(opt)
    assert "1.weight" in msg, msg


def test_layout_error_does_not_advise_the_optimizer_in_use():
    p = torch.nn.Parameter(torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))
    opt = fmt.SGD([p], lr=0.1)
    p.grad = torch.randn(2, 3, 4, 5)
    msg = _refused_step(opt)
    assert "use fastmomentum.torch.SGD" not in msg, msg


# --- Found: a KeyboardInterrupt at every line of fastmomentum.torch's step (raised by a trace
# function, as signal.alarm or PyThreadState_SetAsyncExc would at a bytecode boundary). After the
# interrupt (and the next state_dict, which settles a cut-short record) the optimizer must be as
# before the step or as after it, AND, when applied, the parameters' autograd version counters
# must be bumped. ``_settle`` clears ``_pending`` before ``increment_version``: an interrupt
# between the two loses the bump for good, and autograd no longer sees the in-place update.
SOURCE = fmt.__file__


def _make():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 2))]
    opt = fmt.SGD(ps, lr=0.1, momentum=0.9)
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps, opt


def _snap(ps, opt):
    sd = opt.state_dict()
    return ([p.detach().clone() for p in ps],
            {k: v["momentum_buffer"].clone() for k, v in sd["state"].items()},
            dict(sd["fastmomentum"]), [p._version for p in ps])


def _same(a, b):
    return (all(torch.equal(x, y) for x, y in zip(a[0], b[0], strict=True))
            and a[1].keys() == b[1].keys()
            and all(torch.equal(a[1][k], b[1][k]) for k in a[1]) and a[2] == b[2])


def _interrupt_at(n, seen):
    """A trace function raising KeyboardInterrupt at the n-th line event in fastmomentum.torch
    (seen[0] counts them)."""
    def tracer(frame, event, arg):
        if frame.f_code.co_filename != SOURCE:
            return None

        def local(frame, event, arg):
            if event == "line":
                seen[0] += 1
                if seen[0] == n:
                    raise KeyboardInterrupt
            return local
        return local
    return tracer


def test_interrupt_anywhere_in_a_step_keeps_the_version_bump():
    ps, opt = _make()
    before = _snap(ps, opt)
    opt.step()
    after = _snap(ps, opt)
    bad = []
    for n in range(1, 1000):
        ps, opt = _make()
        seen = [0]

        sys.settrace(_interrupt_at(n, seen))
        try:
            opt.step()
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        if seen[0] < n:
            break  # every line has been interrupted once
        s = _snap(ps, opt)
        if _same(s, before):
            ok = s[3] == before[3]
        elif _same(s, after):
            ok = all(v > 0 for v in s[3])  # applied: autograd must see it
        else:
            ok = False
        if not ok:
            bad.append((n, s[2], s[3]))
    assert not bad, f"interrupted at these line events, the result is neither state: {bad}"


# --- Found: fastmomentum.torch.SGD.load_state_dict re-lays out a buffer whose strides differ
# from its parameter's with ``new.copy_(buf)``, which BROADCASTS: a buffer of the wrong shape is
# silently stretched into a plausible momentum (torch.optim.SGD's step refuses it), and a buffer
# that does not broadcast fails half-way through the load with torch's copy_ message (no
# parameter named), the optimizer's previous state already replaced.
def _sd(buffers):
    return {"state": {i: {"momentum_buffer": b} for i, b in enumerate(buffers)},
            "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0,
                              "nesterov": False, "maximize": False, "foreach": None,
                              "differentiable": False, "fused": None,
                              "params": list(range(len(buffers)))}]}


def test_wrong_shape_buffer_is_not_broadcast():
    p = torch.nn.Parameter(torch.ones(4, 3))
    opt = fmt.SGD([p], lr=0.1, momentum=0.9)
    sd = _sd([torch.tensor([1.0, 2.0, 3.0])])  # shape (3,) for a (4, 3) parameter
    try:
        opt.load_state_dict(sd)
    except (ValueError, RuntimeError):
        return  # refused at load: fine
    p.grad = torch.ones(4, 3)
    with pytest.raises((ValueError, RuntimeError)):
        opt.step()  # torch.optim.SGD's step raises here; today fmt steps a broadcast buffer


def test_refused_load_leaves_the_state_as_it_was_and_names_the_parameter():
    a = torch.nn.Parameter(torch.ones(4, 3))
    b = torch.nn.Parameter(torch.ones(5))
    opt = fmt.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = torch.ones(4, 3), torch.ones(5)
    opt.step()
    before = {id(p): s["momentum_buffer"].clone() for p, s in opt.state.items()}
    # a's buffer: shape (3, 4), strides (1, 3); b's: shape (12,) -- neither fits.
    sd = _sd([torch.ones(3, 4).t().contiguous().t(), torch.ones(12)])
    with pytest.raises((ValueError, RuntimeError)) as info:
        opt.load_state_dict(sd)
    assert "momentum_buffer" in str(info.value) or "params" in str(info.value) or \
        "state" in str(info.value), f"the error names nothing: {info.value}"
    for p in (a, b):
        assert torch.equal(opt.state[p]["momentum_buffer"], before[id(p)]), \
            "a refused load replaced the optimizer's state"


# --- Found: tensors with torch's negative bit (``z.conj().imag``, a lazy negation: the memory
# holds -x). On CPU, ``.numpy()`` refuses them, so the step is refused (with torch's message,
# which names no parameter). On CUDA the module reads ``__cuda_array_interface__``, which torch
# exports WITHOUT checking the negative (or conjugate) bit: the gradient is read with its sign
# flipped -- a silent ascent step. Found by reading torch/_tensor.py; no GPU was available to run
# the CUDA test, which is skipped without one.
def _neg_bit_grad(device):
    z = torch.tensor([1 + 1j, 2 + 2j, 3 + 3j], dtype=torch.complex64, device=device)
    g = z.conj().imag  # values -1, -2, -3; memory +1, +2, +3
    assert g.is_neg()
    return g


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_neg_bit_gradient_is_refused_or_resolved():
    p = torch.nn.Parameter(torch.zeros(3, device="cuda"))
    opt = fmt.SGD([p], lr=1.0)
    p.grad = _neg_bit_grad("cuda")
    try:
        opt.step()
    except (RuntimeError, ValueError, TypeError):
        assert torch.equal(p.detach(), torch.zeros(3, device="cuda"))
        return
    torch.testing.assert_close(p.detach().cpu(), torch.tensor([1.0, 2.0, 3.0]))


def test_cpu_neg_bit_gradient_error_names_the_gradient():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = fmt.SGD([p], lr=1.0)
    p.grad = _neg_bit_grad("cpu")
    with pytest.raises((RuntimeError, ValueError, TypeError)) as info:
        opt.step()
    assert "grad" in str(info.value).lower() and torch.equal(p.detach(), torch.zeros(3)), \
        str(info.value)


# --- Found: under nonfinite="raise" a step with a NaN gradient raises FloatingPointError and
# "nothing was updated" -- but fastmomentum.torch.SGD's ``_settle`` counts it in
# ``skipped_steps`` (fm.SGD does not: its count stays 0), so a refused step changes a counter
# that is saved in the state dict.
def test_raised_nonfinite_step_counts_as_fm_sgd_counts_it():
    a = np.ones(3, np.float32)
    ref = fm.SGD([a], lr=0.1, nonfinite="raise")
    with pytest.raises(FloatingPointError):
        ref.step([np.array([1, np.nan, 1], np.float32)])
    p = torch.nn.Parameter(torch.ones(3))
    opt = fmt.SGD([p], lr=0.1, nonfinite="raise")
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    with pytest.raises(FloatingPointError):
        opt.step()
    assert (opt.iterations, opt.skipped_steps) == (ref.iterations, ref.skipped_steps)
    assert opt.state_dict()["fastmomentum"]["skipped_steps"] == ref.skipped_steps


# --- Found: a model converted after the optimizer has stepped (``model.to(memory_format=
# torch.channels_last)``, ``model.double()``: both assign ``p.data``) keeps its old momentum
# buffers, and every later step of fastmomentum.torch.SGD is refused, with advice to "use
# fastmomentum.torch.SGD" -- the optimizer in use. torch.optim.SGD continues. The only way out is
# ``opt.load_state_dict(opt.state_dict())``, which re-lays the buffers out. The same for a Kahan
# compensation loaded into parameters of another layout (load_state_dict re-lays out the momentum
# buffer only).
def _train(cls, convert, x_after):
    torch.manual_seed(0)
    m = torch.nn.Conv2d(3, 4, 3)
    opt = cls(m.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 8, 8)
    m(x).square().sum().backward()
    opt.step()
    convert(m)
    opt.zero_grad()
    m(x_after(x)).square().sum().backward()
    opt.step()
    return [p.detach().double().clone() for p in m.parameters()]


CASES = {
    "channels_last": (lambda m: m.to(memory_format=torch.channels_last),
                      lambda x: x.contiguous(memory_format=torch.channels_last)),
    "double": (lambda m: m.double(), lambda x: x.double()),
}


@pytest.mark.parametrize("case", CASES)
def test_step_after_model_conversion(case):
    convert, x_after = CASES[case]
    expected = _train(torch.optim.SGD, convert, x_after)
    got = _train(fmt.SGD, convert, x_after)  # today: ValueError / TypeError on buffers[0]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_kahan_compensation_is_relaid_out_on_load():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(2, 3, 4, 4).to(torch.bfloat16))
    opt = fmt.SGD([p], lr=0.1, momentum=0.9, param_rounding="kahan")
    p.grad = torch.ones_like(p)
    opt.step()
    q = torch.nn.Parameter(p.detach().clone().contiguous(memory_format=torch.channels_last))
    opt2 = fmt.SGD([q], lr=0.1, momentum=0.9, param_rounding="kahan")
    opt2.load_state_dict(opt.state_dict())  # the momentum buffer is re-laid out, not this
    q.grad = torch.ones_like(q)
    opt2.step()  # today: ValueError compensations[0] has strides ... but params[0] ...
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(p.detach(), q.detach())


# --- Found: fastmomentum.torch.SGD caches a NumPy view of each state tensor, keyed by the
# tensor's identity. Replacing a buffer's memory while keeping the object (``buf.data = ...``,
# the usual way to move optimizer state, or ``buf.set_(...)``) leaves the kernel writing the OLD
# memory: the momentum the state (and so ``state_dict()`` / ``torch.save``) shows is frozen.
# Silent loss of the checkpointed momentum.
def _run(cls, swap):
    p = torch.nn.Parameter(torch.zeros(4))
    opt = cls([p], lr=1.0, momentum=0.9)
    p.grad = torch.ones(4)
    opt.step()
    swap(opt.state[p]["momentum_buffer"])
    opt.step()
    opt.step()
    return p.detach().clone(), opt.state_dict()["state"][0]["momentum_buffer"].clone()


@pytest.mark.parametrize("swap", [
    lambda b: setattr(b, "data", b.data.clone()),
    lambda b: b.set_(b.detach().clone()),
], ids=["data-assign", "set_"])
def test_buffer_memory_replaced_between_steps_is_the_one_updated(swap):
    p_fm, b_fm = _run(fmt.SGD, swap)
    p_t, b_t = _run(torch.optim.SGD, swap)
    assert torch.equal(p_fm, p_t)
    # torch.optim.SGD's buffer is 2.71 after 3 steps; fastmomentum's state shows 1.0 (step 1's).
    torch.testing.assert_close(b_fm, b_t)


# --- Found: the parameter-view cache of fastmomentum.torch.SGD is keyed by (data_ptr, shape,
# stride) only. A ``p.data = ...`` that keeps those but changes how torch reads the memory (the
# conjugate bit, the dtype) reuses the stale view. Without the cache the same parameter is
# refused (view_as_real refuses a conjugated tensor); with it the update is silently applied to
# the wrong values.
def _conj_run(cls):
    p = torch.nn.Parameter(torch.tensor([1 + 1j, 2 + 2j], dtype=torch.complex64))
    opt = cls([p], lr=1.0)
    p.grad = torch.tensor([1j, 1j], dtype=torch.complex64)
    opt.step()
    p.data = p.data.conj()  # same data_ptr, shape and strides; the conjugate bit set
    p.grad = torch.tensor([1j, 1j], dtype=torch.complex64)
    opt.step()
    return p.detach().resolve_conj()


def test_conjugated_param_data_is_not_updated_through_a_stale_view():
    expected = _conj_run(torch.optim.SGD)  # [1-1j, 2-2j]
    try:
        got = _conj_run(fmt.SGD)  # today: [1+1j, 2-0j], silently
    except (RuntimeError, ValueError, TypeError):
        return  # refusing it, as a first step on a conjugated parameter is refused, is fine
    torch.testing.assert_close(got, expected)


def test_param_dtype_changed_in_place_is_seen():
    # float16 -> bfloat16 through .data keeps data_ptr, shape and strides. torch.optim.SGD
    # steps it; fastmomentum.torch.SGD refuses with a message calling the bfloat16 parameter
    # "a float16 parameter" (the stale view's dtype).
    def run(cls):
        p = torch.nn.Parameter(torch.ones(8, dtype=torch.float16))
        opt = cls([p], lr=0.5, momentum=0.9)
        p.grad = torch.ones(8, dtype=torch.float16)
        opt.step()
        p.data = p.data.view(torch.bfloat16)
        p.grad = torch.ones(8, dtype=torch.bfloat16)
        opt.step()
        return p.detach().float()
    expected = run(torch.optim.SGD)
    try:
        got = run(fmt.SGD)
    except TypeError as e:
        assert "a float16 parameter" not in str(e), f"message names the stale dtype: {e}"
        return
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-2)


# --- Found: ``_param_views`` (and ``_state_views``) are never pruned: a parameter removed from
# the optimizer's groups and state stays alive, with its NumPy view (and so its memory), for the
# optimizer's lifetime -- a model swapped into a long-lived optimizer, or groups replaced, leaks
# every old tensor.
def test_removed_parameter_is_freed():
    p = torch.nn.Parameter(torch.ones(1000))
    q = torch.nn.Parameter(torch.ones(1000))
    opt = fmt.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(1000)
    opt.step()
    alive = weakref.ref(p)
    opt.param_groups[0]["params"] = [q]
    opt.state.clear()
    del p
    q.grad = torch.ones(1000)
    opt.step()
    gc.collect()
    assert alive() is None, "the optimizer's view cache keeps a parameter it no longer has"
