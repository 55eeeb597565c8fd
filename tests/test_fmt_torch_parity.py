"""fastmomentum.torch.SGD against torch.optim.SGD, driven by PyTorch's own test inputs.

The configurations and error cases are the SGD entry of torch's ``optim_db``
(``torch.testing._internal.common_optimizers``): a torch release that adds one tests it here too.
Trajectories run 120 steps with random gradients over two parameter groups (and a tensor that
joins late); the deviation is max |fm - torch| / max |torch|. torch evaluates some
``a + alpha*b`` with fused multiply-adds and fastmomentum never does, so the two may differ by an
ulp per step: the bounds are those of tests/test_sgd_torch_parity.py.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fastmomentum as fm

torch = pytest.importorskip("torch")
fmt = pytest.importorskip("fastmomentum.torch")

STEPS = 120
LATE = 10
BOUND = {torch.float64: 2e-15, torch.float32: 1e-6}


def _optim_db_sgd() -> Any:
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except ImportError as e:  # torch's test helpers need expecttest
        pytest.skip(f"torch's optim_db does not import: {e}")
    return next(o for o in optim_db if o.optim_cls is torch.optim.SGD)


def _inputs() -> list[Any]:
    try:
        return _optim_db_sgd().optim_inputs_func(device="cpu", dtype=torch.float32)
    except BaseException:  # collected without the helpers: the test body skips
        return [None]


def _model(dtype: torch.dtype, seed: int = 0) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2, 2), (11,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _groups(params: list[Any]) -> list[dict[str, Any]]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.03}]


def _train(opt: Any, params: list[Any], steps: int, seed: int = 1,
           schedule: Callable[[Any], Any] | None = None) -> None:
    g = torch.Generator().manual_seed(seed)
    sched = schedule(opt) if schedule else None
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (i == len(params) - 1 and step < LATE) else \
                torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
        if sched is not None:
            sched.step()


def _deviation(ours: list[Any], theirs: list[Any]) -> float:
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(ours, theirs, strict=True))
    scale = max(float(b.detach().abs().max()) for b in theirs)
    return diff / scale


def _kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    # A tensor lr is one object: each optimizer gets its own.
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in raw.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", _inputs(), ids=lambda c: getattr(c, "desc", "unavailable"))
def test_optim_db_configurations_match_torch(case: Any, dtype: torch.dtype) -> None:
    if case is None:
        _optim_db_sgd()  # skips, saying why
    ours, theirs = _model(dtype), _model(dtype)
    kwargs = _kwargs(case.kwargs)
    opt = fmt.SGD(_groups(ours), **kwargs)
    topt = torch.optim.SGD(_groups(theirs), foreach=False, **_kwargs(case.kwargs))
    _train(opt, ours, STEPS)
    _train(topt, theirs, STEPS)
    assert _deviation(ours, theirs) <= BOUND[dtype]
    assert opt.iterations == STEPS
    # The state is torch's: the same keys, the same buffers (to the same bound).
    ts, os_ = topt.state_dict(), opt.state_dict()
    assert ts["state"].keys() == os_["state"].keys()
    for k, entry in ts["state"].items():
        assert entry.keys() == os_["state"][k].keys()
        if entry.get("momentum_buffer") is not None:
            b, ob = entry["momentum_buffer"], os_["state"][k]["momentum_buffer"]
            assert float((b - ob).abs().max()) <= BOUND[dtype] * float(b.abs().max()) * 10


def _error_cases() -> list[Any]:
    try:
        return list(_optim_db_sgd().optim_error_inputs_func(device="cpu", dtype=torch.float32))
    except BaseException:
        return [None]


@pytest.mark.parametrize("case", _error_cases(), ids=lambda c: getattr(c, "error_regex", "none"))
def test_optim_db_error_inputs_raise_as_torch(case: Any) -> None:
    if case is None:
        _optim_db_sgd()
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum

    inp = case.optimizer_error_input
    params = inp.params if inp.params is not None else _model(torch.float32)
    kwargs = _kwargs(inp.kwargs)

    def run() -> None:
        opt = fmt.SGD(params, **kwargs)
        if case.error_on == OptimizerErrorEnum.STEP_ERROR:
            opt.step()

    if issubclass(case.error_type, Warning):
        with pytest.warns(case.error_type, match=case.error_regex):
            run()
    else:
        with pytest.raises(case.error_type, match=case.error_regex):
            run()


SCHEDULERS: dict[str, Callable[[Any], Any]] = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=17, gamma=0.5),
    "CosineAnnealingWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=15, T_mult=2),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_torch_schedulers_drive_it_as_torch_sgd(name: str) -> None:
    """torch's own schedulers (those that cycle the momentum: test_fmt_torch_cycle_momentum_parity),
    over two groups and a tensor that joins late."""
    ours, theirs = _model(torch.float32), _model(torch.float32)
    opt = fmt.SGD(_groups(ours), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    topt = torch.optim.SGD(_groups(theirs), lr=0.05, momentum=0.9, nesterov=True,
                           weight_decay=1e-3, foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "optimizer.step() before lr_scheduler.step()"
        _train(opt, ours, STEPS, schedule=SCHEDULERS[name])
    _train(topt, theirs, STEPS, schedule=SCHEDULERS[name])
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
    assert [g["momentum"] for g in opt.param_groups] == [g["momentum"] for g in topt.param_groups]
    assert _deviation(ours, theirs) <= BOUND[torch.float32]


def test_state_dict_moves_between_it_and_torch_sgd_and_through_torch_save() -> None:
    kw = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    reference = _model(torch.float64)
    _train(torch.optim.SGD(_groups(reference), foreach=False, **kw), reference, 2 * STEPS)

    # fastmomentum for half, then torch.optim.SGD from its saved state (through torch.save)...
    first = _model(torch.float64)
    opt = fmt.SGD(_groups(first), **kw)
    _train(opt, first, STEPS)
    blob = io.BytesIO()
    torch.save(opt.state_dict(), blob)
    blob.seek(0)
    topt = torch.optim.SGD(_groups(first), foreach=False, **kw)
    topt.load_state_dict(torch.load(blob))
    _train(topt, first, STEPS, seed=2)

    # ... and torch for half, then fastmomentum from torch's state.
    second = _model(torch.float64)
    topt2 = torch.optim.SGD(_groups(second), foreach=False, **kw)
    _train(topt2, second, STEPS)
    opt2 = fmt.SGD(_groups(second), **kw)
    opt2.load_state_dict(topt2.state_dict())
    _train(opt2, second, STEPS, seed=2)

    both = _model(torch.float64)
    topt3 = torch.optim.SGD(_groups(both), foreach=False, **kw)
    _train(topt3, both, STEPS)
    _train(topt3, both, STEPS, seed=2)
    assert _deviation(first, both) <= BOUND[torch.float64]
    assert _deviation(second, both) <= BOUND[torch.float64]


def test_closure_hooks_and_zero_grad_are_torchs() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = fmt.SGD([w], lr=0.1)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure() -> Any:
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == 5.0
    assert calls == ["pre", "post"]
    np.testing.assert_array_equal(w.detach().numpy(), np.array([0.8, -1.6], np.float32))
    opt.zero_grad()
    assert w.grad is None


def test_update_is_in_place_and_autograd_sees_it() -> None:
    w = torch.nn.Parameter(torch.ones(4))
    storage_before = w.data_ptr()
    out = (w * 2).sum()  # saves nothing of w; w * w would
    y = (w * w).sum()
    w.grad = torch.ones(4)
    fmt.SGD([w], lr=0.5).step()
    assert w.data_ptr() == storage_before
    np.testing.assert_array_equal(w.detach().numpy(), np.full(4, 0.5, np.float32))
    out.backward()  # fine: nothing saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()  # w was modified after y saved it: torch's own check fires


def test_a_refused_step_changes_nothing() -> None:
    """A gradient the kernels refuse (here one with gaps) in the last group: nothing is written,
    not the first group's parameters, and no first-step buffer is kept."""
    ps = _model(torch.float32)
    opt = fmt.SGD(_groups(ps), lr=0.1, momentum=0.9)
    for p in ps:
        p.grad = torch.ones_like(p)
    ps[-1].grad = torch.ones(2 * ps[-1].numel())[::2]
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match=re.escape("the .grad of param_groups[1]['params'][1] is "
                                                   "not dense")):
        opt.step()
    for p, b in zip(ps, before, strict=True):
        assert torch.equal(p, b)
    assert len(opt.state) == 0
    assert opt.iterations == 0
    ps[-1].grad = torch.ones_like(ps[-1])
    opt.step()  # and the optimizer is usable
    assert opt.iterations == 1 and len(opt.state) == 4


def test_guards_match_clip_grad_norm_then_torch_sgd() -> None:
    ours, theirs = _model(torch.float64), _model(torch.float64)
    opt = fmt.SGD(ours, lr=0.05, momentum=0.9, max_grad_norm=0.5, nonfinite="skip")
    topt = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, foreach=False)
    g = torch.Generator().manual_seed(3)
    for step in range(40):
        grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ours]
        if step == 7:
            grads[2][0, 0, 0, 1] = float("nan")
        for p, q, gr in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        if step == 7:
            assert opt.last_result is not None and opt.last_result.skipped
            continue
        norm = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        topt.step()
        assert opt.last_result is not None
        assert opt.last_result.grad_norm == pytest.approx(float(norm), rel=1e-12)
    assert opt.skipped_steps == 1 and opt.iterations == 39
    assert _deviation(ours, theirs) <= BOUND[torch.float64]


def test_complex_parameters_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(6, 3, dtype=torch.complex64, generator=g))]
    theirs = [torch.nn.Parameter(ours[0].detach().clone())]
    opt = fmt.SGD(ours, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True)
    topt = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True,
                           foreach=False)
    _train(opt, ours, 50)
    _train(topt, theirs, 50)
    assert _deviation([torch.view_as_real(p) for p in ours],
                      [torch.view_as_real(p) for p in theirs]) <= BOUND[torch.float32]


def test_bfloat16_parameters_and_16_bit_state_are_fastmomentums_kernels() -> None:
    """Low-precision options: the same bits as fastmomentum.SGD on NumPy views of the tensors."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(300, generator=g), torch.randn(40, 7, generator=g)]
    for rounding in ("nearest", "stochastic", "kahan"):
        ours = [torch.nn.Parameter(s.to(torch.bfloat16)) for s in start]
        arrays = [s.to(torch.bfloat16).view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
                  for s in start]
        opt = fmt.SGD(ours, lr=0.1, momentum=0.9, state_dtype="bfloat16",
                      param_rounding=rounding, seed=7)
        ref = fm.SGD(arrays, lr=0.1, momentum=0.9, state_dtype="bfloat16",
                     param_rounding=rounding, seed=7)
        gg = torch.Generator().manual_seed(1)
        for _ in range(20):
            grads = [torch.randn(p.shape, generator=gg).to(torch.bfloat16) for p in ours]
            for p, gr in zip(ours, grads, strict=True):
                p.grad = gr
            opt.step()
            ref.step([gr.view(torch.int16).numpy().view(ml_dtypes.bfloat16) for gr in grads])
        for p, a in zip(ours, arrays, strict=True):
            np.testing.assert_array_equal(p.detach().view(torch.int16).numpy(),
                                          a.view(np.int16))
        assert opt.state[ours[0]]["momentum_buffer"].dtype == torch.bfloat16
        assert ("compensation" in opt.state[ours[0]]) == (rounding == "kahan")


def test_one_device_only_and_clear_errors() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError, match="differentiable"):
        fmt.SGD([w], differentiable=True)
    with pytest.raises(ValueError, match=re.escape("state_dtype")):
        fmt.SGD([w], state_dtype="int8")  # type: ignore[arg-type]
    opt = fmt.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="weight_decay_mode"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))],
                             "weight_decay_mode": "sideways"})
    assert len(opt.param_groups) == 1  # the refused group was not added


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_continues_as_the_original(how: str) -> None:
    import copy
    import pickle

    ps = _model(torch.float32)
    opt = fmt.SGD(_groups(ps), lr=0.05, momentum=0.9, style="keras", max_grad_norm=2.0)
    _train(opt, ps, 5)
    if how == "deepcopy":
        copied = copy.deepcopy(opt)
    else:
        copied = pickle.loads(pickle.dumps(opt))
    qs = [p for g in copied.param_groups for p in g["params"]]
    assert all(q.data_ptr() != p.data_ptr() for p, q in zip(ps, qs, strict=True))
    assert copied.style == "keras" and copied.max_grad_norm == 2.0 and copied.iterations == 5
    _train(opt, ps, 5, seed=9)
    _train(copied, qs, 5, seed=9)
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)
    assert copied.iterations == 10


def test_channels_last_parameters_are_updated_in_place_and_load_any_layout() -> None:
    """A channels_last weight, its gradient and its buffer share one memory order: updated in
    place; a saved buffer of another layout (a contiguous model's) is loaded into this one's."""
    def model() -> Any:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 4, 3)
        return conv.to(memory_format=torch.channels_last)

    ours, theirs = model(), model()
    assert not ours.weight.is_contiguous()
    ptr = ours.weight.data_ptr()
    opt = fmt.SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3,
                           foreach=False)
    for step in range(30):
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(step))
        for m, o in ((ours, opt), (theirs, topt)):
            o.zero_grad()
            m(x.to(memory_format=torch.channels_last)).square().mean().backward()
            o.step()
    assert ours.weight.data_ptr() == ptr
    buf = opt.state[ours.weight]["momentum_buffer"]
    assert buf.stride() == ours.weight.stride()
    assert _deviation(list(ours.parameters()), list(theirs.parameters())) <= BOUND[torch.float32]

    # A contiguous model's state, loaded into the channels_last one: the buffer takes its layout.
    flat = torch.nn.Conv2d(3, 4, 3)
    flat_opt = torch.optim.SGD(flat.parameters(), lr=0.05, momentum=0.9)
    flat.weight.grad, flat.bias.grad = torch.ones_like(flat.weight), torch.ones_like(flat.bias)
    flat_opt.step()
    opt.load_state_dict(flat_opt.state_dict())
    loaded = opt.state[ours.weight]["momentum_buffer"]
    assert loaded.stride() == ours.weight.stride()
    assert torch.equal(loaded, flat_opt.state[flat.weight]["momentum_buffer"])
    for p in ours.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # the kernels take it


CHANGES: dict[str, Callable[[Any, list[Any]], None]] = {
    "a gradient goes": lambda opt, ps: setattr(ps[1], "grad", None),
    "a late gradient comes": lambda opt, ps: None,  # _train gives the last one from step LATE
    "momentum off": lambda opt, ps: opt.param_groups[0].__setitem__("momentum", 0.0),
    "momentum on again": lambda opt, ps: opt.param_groups[0].__setitem__("momentum", 0.9),
    "a buffer replaced": lambda opt, ps: opt.state[ps[0]].__setitem__(
        "momentum_buffer", opt.state[ps[0]]["momentum_buffer"] * 0.5),
    "a buffer's .data moved": lambda opt, ps: setattr(
        opt.state[ps[2]]["momentum_buffer"], "data",
        opt.state[ps[2]]["momentum_buffer"].data.clone() * 2.0),
    "a parameter's .data moved": lambda opt, ps: setattr(ps[0], "data", ps[0].data.clone()),
    "a group's parameter swapped": lambda opt, ps: opt.param_groups[1]["params"].reverse(),
    "a group added": lambda opt, ps: opt.add_param_group(
        {"params": [torch.nn.Parameter(torch.ones(3, dtype=ps[0].dtype))]}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_steps_that_reuse_the_last_steps_lists_see_every_change(change: str) -> None:
    """From its third step on, a step reuses the previous one's lists when nothing changed: a
    change between steps, at any step, gives torch.optim.SGD's trajectory."""
    ours, theirs = _model(torch.float64), _model(torch.float64)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt = fmt.SGD(_groups(ours), **kw)
    topt = torch.optim.SGD(_groups(theirs), foreach=False, **kw)
    g = torch.Generator().manual_seed(5)
    for step in range(3 * LATE):
        grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ours]
        for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
            late = i == len(ours) - 1 and step < LATE
            p.grad = q.grad = None if late else grads[i]
        if step in (4, LATE + 3):
            for o, ps in ((opt, ours), (topt, theirs)):
                CHANGES[change](o, ps)
        opt.step()
        topt.step()
    assert _deviation(ours, theirs) <= BOUND[torch.float64]
    for p, q in zip(ours, theirs, strict=True):
        b, tb = opt.state[p].get("momentum_buffer"), topt.state[q].get("momentum_buffer")
        assert (b is None) == (tb is None)
        if b is not None:
            assert float((b - tb).abs().max()) <= 1e-13 * float(tb.abs().max() + 1)
