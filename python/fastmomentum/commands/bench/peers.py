"""The implementations timed: fastmomentum, its peers, and the read-modify-write bound.

Each :class:`Implementation` has a ``load`` function that imports what it needs and returns a
builder ``(problem, hyper) -> Built``, or raises :class:`Unavailable` with the reason (a peer
that is not installed, an API this fastmomentum lacks). ``Built.step`` is a no-argument callable
doing one update of every array in place; ``Built.arrays`` are the arrays it updates: the
problem's own (zero-copy), except for ``fastmomentum-flat``, which steps a FlatGroup copy.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .numpy_baseline import sgd_inplace_
from .problems import Array, Problem, Variant
from .timing import Step


class Built(NamedTuple):
    """A step ready to time, and the arrays it updates (to check its result)."""

    step: Step
    arrays: Problem


Builder = Callable[[Problem, Variant], Built]

#: ``rmw-bound``'s scale: ``p += s*g`` moves ``p`` by <= 1e-10 a call (``|g| <= 1e-3``).
RMW_SCALE = 1e-7


class Unavailable(Exception):
    """An implementation that cannot run here; the message says why."""


@dataclass(frozen=True)
class Implementation:
    """One column of the table.

    ``kind``: ``"peer"`` (compared with), ``"fastmomentum"`` (ours) or ``"bound"`` (the floor).
    ``library``: the module whose version is shown and whose thread count is set.
    ``serial``: runs on one thread whatever the thread count (stated in the table).
    """

    name: str
    label: str
    kind: str
    library: str
    serial: bool
    description: str
    load: Callable[[], Builder]
    layouts: tuple[str, ...] = ("single", "list")


def import_or_unavailable(name: str) -> Any:
    """``importlib.import_module(name)``, an ImportError becoming :class:`Unavailable`."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Unavailable(f"{name} is not installed ({exc})") from None


def _typed_scalars(problem: Problem, hyper: Variant) -> tuple[Any, Any, Any]:
    """``lr, momentum, weight_decay`` as scalars of the arrays' dtype (no float64 upcast)."""
    t = problem.dtype.type
    return t(hyper.lr), t(hyper.momentum), t(hyper.weight_decay)


# --- NumPy ------------------------------------------------------------------------------------


def _load_numpy() -> Builder:
    def build(problem: Problem, hyper: Variant) -> Built:
        # np.zeros then a write: the first timed call pays no page faults.
        longest = max(p.size for p in problem.params)
        scratch = [np.zeros(longest, problem.dtype) for _ in range(2 if hyper.nesterov else 1)]
        for s in scratch:
            s.fill(0)
        items = [(p, g, b, [s[: p.size] for s in scratch])
                 for p, g, b in zip(problem.params, problem.grads, problem.buffers, strict=True)]
        kw = hyper.kwargs()

        def step() -> None:
            for p, g, b, s in items:
                sgd_inplace_(p, g, b, s, **kw)

        return Built(step, problem)

    return build


# --- numexpr ----------------------------------------------------------------------------------


def _load_numexpr() -> Builder:
    numexpr = import_or_unavailable("numexpr")
    evaluate = numexpr.evaluate

    def build(problem: Problem, hyper: Variant) -> Built:
        lr, m, wd = _typed_scalars(problem, hyper)
        buffer_expr = "m*b + (g + wd*p)"
        param_expr = "p - lr*((g + wd*p) + m*b)" if hyper.nesterov else "p - lr*b"
        envs = [dict(p=p, g=g, b=b, lr=lr, m=m, wd=wd)
                for p, g, b in zip(problem.params, problem.grads, problem.buffers, strict=True)]

        def step() -> None:
            for env in envs:
                evaluate(buffer_expr, local_dict=env, out=env["b"])
                evaluate(param_expr, local_dict=env, out=env["p"])

        return Built(step, problem)

    return build


# --- numba ------------------------------------------------------------------------------------


# The numba kernels' per-element update: (p, g, b, i, lr, momentum, weight_decay, nesterov).
_Element = Callable[[Any, Any, Any, Any, Any, Any, Any, bool], None]


@functools.cache
def _numba_kernels() -> dict[str, Any]:
    """The four numba kernels (compiled lazily, per dtype, at their first call): loops over
    one element function, which numba inlines."""
    numba = importlib.import_module("numba")
    njit, prange = numba.njit, numba.prange
    # numba is untyped; its inlining jit keeps the function's signature
    inline: Callable[[_Element], _Element] = njit(inline="always")

    @inline
    def element(p: Any, g: Any, b: Any, i: Any, lr: Any, m: Any, wd: Any, nesterov: bool
                ) -> None:
        d = g[i] + wd * p[i]
        bi = m * b[i] + d
        b[i] = bi
        p[i] = p[i] - lr * ((d + m * bi) if nesterov else bi)

    def one(p: Any, g: Any, b: Any, lr: Any, m: Any, wd: Any, nesterov: bool) -> None:
        for i in range(p.size):
            element(p, g, b, i, lr, m, wd, nesterov)

    def one_prange(p: Any, g: Any, b: Any, lr: Any, m: Any, wd: Any, nesterov: bool) -> None:
        for i in prange(p.size):
            element(p, g, b, i, lr, m, wd, nesterov)

    def many(ps: Any, gs: Any, bs: Any, lr: Any, m: Any, wd: Any, nesterov: bool) -> None:
        for k in range(len(ps)):
            p, g, b = ps[k], gs[k], bs[k]
            for i in range(p.size):
                element(p, g, b, i, lr, m, wd, nesterov)

    def many_prange(ps: Any, gs: Any, bs: Any, lr: Any, m: Any, wd: Any, nesterov: bool) -> None:
        for k in prange(len(ps)):  # one parallel region, whole arrays per thread
            j = np.intp(k)  # prange's index is unsigned: typed lists want a signed one
            p, g, b = ps[j], gs[j], bs[j]
            for i in range(p.size):
                element(p, g, b, i, lr, m, wd, nesterov)

    return {
        "one": njit(one),
        "one_prange": njit(parallel=True)(one_prange),
        "many": njit(many),
        "many_prange": njit(parallel=True)(many_prange),
    }


def _load_numba(parallel: bool) -> Builder:
    numba = import_or_unavailable("numba")
    kernels = _numba_kernels()
    suffix = "_prange" if parallel else ""
    if parallel:  # start the threading layer, so that numba.threading_layer() can name it
        probe = np.zeros(4)
        kernels["one_prange"](probe, probe.copy(), probe.copy(), 0.1, 0.9, 0.0, False)

    def build(problem: Problem, hyper: Variant) -> Built:
        scalars = (*_typed_scalars(problem, hyper), hyper.nesterov)
        if len(problem.params) == 1:
            arrays: tuple[Any, ...] = (problem.params[0], problem.grads[0], problem.buffers[0])
            kernel = kernels["one" + suffix]
        else:  # typed lists hold references to the very same arrays
            typed_list = numba.typed.List
            arrays = tuple(typed_list(a) for a in (problem.params, problem.grads,
                                                   problem.buffers))
            kernel = kernels["many" + suffix]
        return Built(functools.partial(kernel, *arrays, *scalars), problem)

    return build


# --- torch ------------------------------------------------------------------------------------


def _tensors(torch: Any, problem: Problem) -> tuple[list[Any], list[Any], list[Any]]:
    """Zero-copy ``torch.from_numpy`` views of the problem's arrays."""

    def views(arrays: list[Array]) -> list[Any]:
        return [torch.from_numpy(a) for a in arrays]

    return views(problem.params), views(problem.grads), views(problem.buffers)


def _load_torch_optim() -> Builder:
    torch = import_or_unavailable("torch")
    try:  # CPU support of fused=True is recent: check on a tiny tensor
        probe = torch.zeros(2)
        probe.grad = torch.zeros(2)
        torch.optim.SGD([probe], lr=0.1, momentum=0.9, fused=True).step()
    except (RuntimeError, TypeError, ValueError) as exc:
        raise Unavailable(f"torch {torch.__version__}: SGD(fused=True) fails on CPU "
                          f"({exc})") from None

    def build(problem: Problem, hyper: Variant) -> Built:
        params, grads, buffers = _tensors(torch, problem)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt = torch.optim.SGD(params, fused=True, dampening=0.0, **hyper.kwargs())
        for p, b in zip(params, buffers, strict=True):
            opt.state[p]["momentum_buffer"] = b
        return Built(opt.step, problem)

    return build


def _load_torch_kernel() -> Builder:
    torch = import_or_unavailable("torch")
    kernel = getattr(torch, "_fused_sgd_", None)
    if kernel is None:
        raise Unavailable(f"torch {torch.__version__} has no torch._fused_sgd_")

    def build(problem: Problem, hyper: Variant) -> Built:
        params, grads, buffers = _tensors(torch, problem)
        return Built(functools.partial(
            kernel, params, grads, buffers, weight_decay=hyper.weight_decay,
            momentum=hyper.momentum, lr=hyper.lr, dampening=0.0, nesterov=hyper.nesterov,
            maximize=False, is_first_step=False), problem)

    return build


# --- fastmomentum -----------------------------------------------------------------------------


def _user_call(params: list[Any], grads: list[Any], buffers: list[Any], hyper: Variant) -> Step:
    """``functional.sgd_`` called as a user writes it, with keywords. (``functools.partial``
    would merge its stored keywords into a new dict on every call: ~0.15 us that no user pays.)"""
    from ...functional import sgd_

    lr, momentum, weight_decay, nesterov = hyper.lr, hyper.momentum, hyper.weight_decay, \
        hyper.nesterov

    def step() -> None:
        sgd_(params, grads, buffers, lr=lr, momentum=momentum, weight_decay=weight_decay,
             nesterov=nesterov)

    return step


def _load_fastmomentum() -> Builder:
    def build(problem: Problem, hyper: Variant) -> Built:
        return Built(_user_call(problem.params, problem.grads, problem.buffers, hyper), problem)

    return build


def _load_fastmomentum_flat() -> Builder:
    try:
        flat_group = importlib.import_module("fastmomentum.flat").FlatGroup
    except (ImportError, AttributeError):
        raise Unavailable("this fastmomentum has no fastmomentum.flat.FlatGroup") from None

    def build(problem: Problem, hyper: Variant) -> Built:
        # The same values in one group: its own memory, three contiguous 1-D arrays.
        group = flat_group.from_arrays(problem.params)
        for views, arrays in ((group.grads, problem.grads), (group.buffers, problem.buffers)):
            for view, a in zip(views, arrays, strict=True):
                view[...] = a
        step = _user_call([group.flat_params], [group.flat_grads], [group.flat_buffers], hyper)
        return Built(step, Problem(list(group.params), list(group.grads), list(group.buffers)))

    return build


def _load_rmw_bound() -> Builder:
    from ... import _core

    reference = getattr(_core, "bandwidth_probe", None)
    if reference is None:
        raise Unavailable("this fastmomentum has no _core.bandwidth_probe")
    for dtype in (np.float32, np.float64):  # does it do what it says?
        rng = np.random.default_rng(1)
        arrays: list[Any] = [rng.random(1000).astype(dtype) for _ in range(3)]
        p, g, b = arrays
        p0, b0, s = p.copy(), b.copy(), 0.25
        reference([p], [g], [b], s)
        step = g * dtype(s)
        try:
            np.testing.assert_allclose(p, p0 + step, rtol=1e-6)
            np.testing.assert_allclose(b, b0 + step, rtol=1e-6)
        except AssertionError as exc:
            raise Unavailable(f"_core.bandwidth_probe does not do p += s*g; b += s*g: {exc}"
                              ) from None

    def build(problem: Problem, hyper: Variant) -> Built:
        return Built(functools.partial(reference, problem.params, problem.grads,
                                       problem.buffers, RMW_SCALE), problem)

    return build


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        Implementation("numpy", "numpy*", "peer", "numpy", True,
                       "fastmomentum.commands.bench.numpy_baseline.sgd_inplace_: 6 in-place ufuncs "
                       "(8 with Nesterov) into preallocated scratch, a Python loop over the arrays",
                       _load_numpy),
        Implementation("numexpr", "numexpr", "peer", "numexpr", False,
                       "two numexpr.evaluate(..., out=) calls per array (buffer, then params)",
                       _load_numexpr),
        Implementation("numba", "numba*", "peer", "numba", True,
                       "one fused @njit loop (lists: one call over numba.typed.List)",
                       functools.partial(_load_numba, False)),
        Implementation("numba-prange", "nb-prange", "peer", "numba", False,
                       "the same loop with prange, parallel=True (lists: prange over the "
                       "arrays, one parallel region)",
                       functools.partial(_load_numba, True)),
        Implementation("torch-optim-fused", "t-optim", "peer", "torch", False,
                       "torch.optim.SGD(fused=True).step() on torch.from_numpy views, grads as "
                       ".grad, buffers preloaded in its state",
                       _load_torch_optim),
        Implementation("torch-fused-kernel", "t-kernel", "peer", "torch", False,
                       "torch._fused_sgd_(...) called directly on the same tensors",
                       _load_torch_kernel),
        Implementation("fastmomentum", "fm", "fastmomentum", "fastmomentum", False,
                       "fastmomentum.functional.sgd_, one call for the whole list",
                       _load_fastmomentum),
        Implementation("fastmomentum-flat", "fm-flat", "fastmomentum", "fastmomentum", False,
                       "the list's values copied into one fastmomentum.flat.FlatGroup (its own "
                       "memory), one sgd_ call on its three flat 1-D arrays",
                       _load_fastmomentum_flat, layouts=("list",)),
        Implementation("rmw-bound", "bound", "bound", "fastmomentum", False,
                       "_core.bandwidth_probe: p += s*g; b += s*g in one pass (reads p, g, b; "
                       "writes p, b): the floor, not a peer",
                       _load_rmw_bound),
    )
}
