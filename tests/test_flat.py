"""fastmomentum.flat.FlatGroup: views into one block each, and the kernels' span merging.

A call on views that are adjacent in memory runs them as one span (Call::append); the update is
element-wise, so it must give the same bits as updating the arrays one by one: through
functional (one call on the flat arrays, or on the views) and through SGD (whose buffers for a
group are allocated adjacent, so that its tensors merge too).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import functional as F
from fastmomentum.flat import FlatGroup
from fastmomentum.optim import BUFFER_KEY

from conftest import rand, same_bits

F32, F64 = np.float32, np.float64
# A scalar, an empty array, odd sizes (SIMD tails), 2-D and 3-D arrays, and one long enough to
# be split across threads even at the default grain.
SHAPES = [(3, 5), (), 7, (0,), (2, 0, 3), (4, 1, 3), 1, 9000, (33,)]



def filled(shapes, dtype, seed):
    """A FlatGroup with random params, grads and buffers, and separate copies of them."""
    rng = np.random.default_rng(seed)
    group = FlatGroup(shapes, dtype)
    for flat in (group.flat_params, group.flat_grads, group.flat_buffers):
        flat[...] = rand(rng, flat.shape, dtype)
    separate = [[a.copy() for a in views] for views in (group.params, group.grads, group.buffers)]
    return group, separate


# -- layout --------------------------------------------------------------------------------------

def test_shapes_sizes_and_offsets():
    group = FlatGroup([3, (2, 4), (), (0,), (5, 0, 2), np.int64(2), [1, 1], (np.int32(2), 3)])
    assert group.shapes == [(3,), (2, 4), (), (0,), (5, 0, 2), (2,), (1, 1), (2, 3)]
    assert all(type(d) is int for s in group.shapes for d in s)
    assert group.offsets == [0, 3, 11, 12, 12, 12, 14, 15, 21]
    assert group.size == 21 and len(group) == 8
    assert group.dtype == np.dtype(F32)
    assert repr(group) == "FlatGroup(8 arrays, 21 elements, float32)"
    for views in (group.params, group.grads, group.buffers):
        assert [v.shape for v in views] == group.shapes
    for flat in (group.flat_params, group.flat_grads, group.flat_buffers):
        assert flat.shape == (21,) and flat.dtype == F32 and not flat.any()


def test_no_arrays_and_only_empty_arrays():
    group = FlatGroup([])
    assert group.size == 0 and group.offsets == [0] and group.params == []
    group = FlatGroup([0, (3, 0)], F64)
    assert group.size == 0 and group.offsets == [0, 0, 0]
    assert [p.shape for p in group.params] == [(0,), (3, 0)]


@pytest.mark.parametrize("dtype", [F32, F64, "float32", "f8"])
def test_views_are_views_of_the_flat_arrays(dtype):
    group = FlatGroup([(2, 3), (), 4, 0], dtype)
    for flat, views in ((group.flat_params, group.params), (group.flat_grads, group.grads),
                        (group.flat_buffers, group.buffers)):
        for i, v in enumerate(views):
            assert v.dtype == np.dtype(dtype) and v.flags.c_contiguous and v.flags.writeable
            assert np.shares_memory(v, flat) or v.size == 0
            if v.size:
                assert v.ctypes.data == flat.ctypes.data + group.offsets[i] * flat.itemsize
            v[...] = i + 1  # writes through
        expected = np.repeat(np.arange(1, 5), np.diff(group.offsets)).astype(dtype)
        same_bits(flat, expected)
        flat[...] = -1.0  # and the other way
        assert all((v == -1.0).all() for v in views)
    # The three kinds are distinct memory.
    assert not np.shares_memory(group.flat_params, group.flat_grads)
    assert not np.shares_memory(group.flat_params, group.flat_buffers)
    assert not np.shares_memory(group.flat_grads, group.flat_buffers)


def test_a_view_written_by_a_matmul_out_argument():
    group = FlatGroup([(2, 2), 3])
    a = np.arange(4, dtype=F32).reshape(2, 2)
    np.matmul(a, a, out=group.grads[0])
    same_bits(group.flat_grads[:4], (a @ a).ravel())


def test_from_arrays_copies_the_values_and_infers_the_dtype():
    rng = np.random.default_rng(0)
    arrays = [rand(rng, (2, 3), F32), np.asarray(F32(1.5)), rand(rng, 0, F32), rand(rng, 4, F32)]
    group = FlatGroup.from_arrays(arrays)
    assert group.dtype == np.dtype(F32) and group.shapes == [(2, 3), (), (0,), (4,)]
    for view, a in zip(group.params, arrays, strict=True):
        same_bits(view, a)
        assert not np.shares_memory(view, a)
    arrays[0][...] = 7.0  # a copy: neither side sees the other's writes
    assert not (group.params[0] == 7.0).any()
    group.params[3][...] = 9.0
    assert not (arrays[3] == 9.0).any()
    assert not group.flat_grads.any() and not group.flat_buffers.any()

    mixed = FlatGroup.from_arrays([np.ones(2, F32), np.full(3, 0.1, F64)])
    assert mixed.dtype == np.dtype(F64)
    same_bits(mixed.flat_params, np.array([1, 1, 0.1, 0.1, 0.1]))
    narrowed = FlatGroup.from_arrays([np.full(3, 0.1)], dtype=F32)
    same_bits(narrowed.params[0], np.full(3, 0.1, F32))
    from_lists = FlatGroup.from_arrays([[1.0, 2.0], [[3.0]]])
    assert from_lists.dtype == np.dtype(F64) and from_lists.shapes == [(2,), (1, 1)]
    empty = FlatGroup.from_arrays([])
    assert empty.dtype == np.dtype(F32) and len(empty) == 0


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex64, np.longdouble, bool,
                                   "<f4" if not np.little_endian else ">f4",
                                   "<f8" if not np.little_endian else ">f8"])
def test_dtypes_other_than_native_float32_and_float64_are_rejected(dtype):
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        FlatGroup([3], dtype)


def test_from_arrays_of_integers_is_rejected():
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        FlatGroup.from_arrays([np.arange(3)])
    assert FlatGroup.from_arrays([np.arange(3)], dtype=F64).params[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("shape", [-1, (2, -1), (2.0,), (2, 3.5), "ab", ("2",), (None,)],
                         ids=repr)
def test_bad_shapes_are_rejected_by_position(shape):
    with pytest.raises(ValueError, match=re.escape("shapes[1] must be non-negative integers")):
        FlatGroup([3, shape])


@pytest.mark.parametrize("shape", [2.0, None], ids=repr)
def test_a_shape_that_is_neither_an_int_nor_a_sequence_is_rejected_by_position(shape):
    """A float or None as a whole shape: the error should name shapes[1] like the others (now
    it is tuple()'s "'float' object is not iterable")."""
    with pytest.raises((TypeError, ValueError), match=re.escape("shapes[1]")):
        FlatGroup([3, shape])


# -- functional on the flat arrays == per-array calls ----------------------------------------------

FUNCTIONS = {
    "sgd_": (F.sgd_, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "sgd_ dampened first step": (F.sgd_, dict(lr=0.05, momentum=0.8, dampening=0.3,
                                              weight_decay=0.1, weight_decay_mode="decoupled",
                                              first_step=True, maximize=True)),
    "sgd_ no momentum": (F.sgd_, dict(lr=0.05)),
    "keras_sgd_": (F.keras_sgd_, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "keras_sgd_ sgdw": (F.keras_sgd_, dict(lr=0.05, momentum=0.5, weight_decay=0.2,
                                           weight_decay_mode="sgdw", schedule_multiplier=0.5)),
    "ema_sgd_": (F.ema_sgd_, dict(lr=0.05, beta=0.9, weight_decay=1e-2)),
}


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_one_call_on_the_flat_arrays_equals_per_array_calls(name, dtype, threads):
    fn, kw = FUNCTIONS[name]
    group, (params, grads, bufs) = filled(SHAPES, dtype, seed=1)
    for _ in range(3):
        fn([group.flat_params], [group.flat_grads], [group.flat_buffers], **kw)
        for p, g, b in zip(params, grads, bufs, strict=True):
            fn([p], [g], [b], **kw)
        for flat, separate in ((group.params, params), (group.buffers, bufs)):
            for view, a in zip(flat, separate, strict=True):
                same_bits(view, a)
        same_bits(group.flat_grads, np.concatenate([g.ravel() for g in grads]))  # only read


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_a_call_on_the_views_equals_per_array_calls(name, dtype, threads):
    """The views, listed: the kernel merges them back into one span."""
    fn, kw = FUNCTIONS[name]
    group, (params, grads, bufs) = filled(SHAPES, dtype, seed=2)
    fn(group.params, group.grads, group.buffers, **kw)
    for p, g, b in zip(params, grads, bufs, strict=True):
        fn([p], [g], [b], **kw)
    for view, a in zip(group.params + group.buffers, params + bufs, strict=True):
        same_bits(view, a)


@pytest.mark.parametrize("layout", ["grads separate", "buffers separate", "reversed",
                                    "every other", "two dtypes interleaved"])
def test_partly_adjacent_arrays_are_not_merged_wrongly(layout, threads):
    """Only a tensor whose param, grad AND buffer each continue the previous one may merge."""
    group, _ = filled(SHAPES, F32, seed=3)
    other, _ = filled(SHAPES, F64, seed=4)
    p, g, b = list(group.params), list(group.grads), list(group.buffers)
    if layout == "grads separate":
        g = [x.copy() for x in g]
    elif layout == "buffers separate":
        b = [x.copy() for x in b]
    elif layout == "reversed":
        p, g, b = p[::-1], g[::-1], b[::-1]
    elif layout == "every other":
        p, g, b = p[::2], g[::2], b[::2]
    else:
        p = [x for pair in zip(group.params, other.params, strict=True) for x in pair]
        g = [x for pair in zip(group.grads, other.grads, strict=True) for x in pair]
        b = [x for pair in zip(group.buffers, other.buffers, strict=True) for x in pair]
    expected = [(x.copy(), y.copy(), z.copy()) for x, y, z in zip(p, g, b, strict=True)]
    kw = dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=1e-3)
    F.sgd_(p, g, b, **kw)
    for x, y, z in expected:
        F.sgd_([x], [y], [z], **kw)
    for actual, (x, _, z) in zip(zip(p, b, strict=True), expected, strict=True):
        same_bits(actual[0], x)
        same_bits(actual[1], z)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_adjacent_arrays_with_different_first_step_flags(dtype, threads):
    """first_step differs between adjacent tensors: they must not be merged (b = g for some,
    b = m*b + (1-d)*g for their neighbours)."""
    group, (params, grads, bufs) = filled(SHAPES, dtype, seed=5)
    first = [i % 3 != 1 for i in range(len(SHAPES))]
    kw = dict(lr=0.1, momentum=0.9, dampening=0.5, nesterov=False)
    F.sgd_(group.params, group.grads, group.buffers, first_step=first, **kw)
    for p, g, b, f in zip(params, grads, bufs, first, strict=True):
        F.sgd_([p], [g], [b], first_step=f, **kw)
    for view, a in zip(group.params + group.buffers, params + bufs, strict=True):
        same_bits(view, a)
    same_bits(group.buffers[0], grads[0])  # a first step: b = g


def test_overlapping_views_of_the_flat_arrays_are_still_rejected():
    group, _ = filled([4, 4], F64, seed=6)
    before = group.flat_params.copy()
    with pytest.raises(ValueError, match="share memory"):
        F.sgd_([group.flat_params, group.params[1]], [group.flat_grads, group.grads[1]], lr=0.1)
    with pytest.raises(ValueError, match=re.escape("params[0] and grads[1] share memory")):
        F.sgd_(group.params, [group.grads[0], group.flat_params[1:5]], lr=0.1)
    same_bits(group.flat_params, before)


# -- SGD over a FlatGroup == SGD over separate arrays ----------------------------------------------

def _sgd_options(style):
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-2, style=style)
    if style != "ema":
        kw["nesterov"] = True
    if style == "torch":
        kw["weight_decay_mode"] = "decoupled"
    return kw


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_sgd_over_a_flat_group_equals_sgd_over_separate_arrays(style, dtype, threads):
    """Steps 1 and 2 give different params their first gradient, so that in the torch style
    params with a first step (b = g) neighbour params without; later steps drop some."""
    group, (params, _, _) = filled(SHAPES, dtype, seed=7)
    flat_opt = fm.SGD(group.params, **_sgd_options(style))
    sep_opt = fm.SGD(params, **_sgd_options(style))
    rng = np.random.default_rng(8)
    n = len(SHAPES)
    key = BUFFER_KEY[style]
    for t in range(8):
        if t == 0:
            has = [i < 3 or i == 7 for i in range(n)]
        elif t == 1:
            has = [True] * n
        else:
            has = [rng.random() < 0.7 for _ in range(n)]
        group.flat_grads[...] = rand(rng, group.size, dtype)
        flat_opt.step([gv if h else None for gv, h in zip(group.grads, has, strict=True)])
        sep_opt.step([gv.copy() if h else None for gv, h in zip(group.grads, has, strict=True)])
        for i in range(n):
            same_bits(group.params[i], params[i])
            if params[i] in sep_opt.state:
                same_bits(flat_opt.state[group.params[i]][key], sep_opt.state[params[i]][key])
            else:
                assert group.params[i] not in flat_opt.state
    # The buffers made on step 2 (params 3-6 and 8) are adjacent, those of step 1 elsewhere: the
    # kernel merged params 5 and 6 (first steps) but not 6 and 7 (7 had its first step before).
    b5, b6, b7 = (flat_opt.state[group.params[i]][key] for i in (5, 6, 7))
    assert b5.base is b6.base and b6.ctypes.data == b5.ctypes.data + b5.nbytes
    assert b7.base is not b6.base


@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_sgd_over_two_flat_groups_in_two_parameter_groups(style, threads):
    """Two FlatGroups (float32 and float64) as two parameter groups, plus a separate array:
    compared with the same optimizer over separate arrays, lr edits and all."""
    a, (a_sep, _, _) = filled([5, (2, 3), 100], F32, seed=9)
    b, (b_sep, _, _) = filled([(), 64, (3, 3)], F64, seed=10)
    extra = rand(np.random.default_rng(11), 6, F64)
    extra_sep = extra.copy()
    options = _sgd_options(style)

    def make(pa, pb, e):
        return fm.SGD([{"params": pa}, {"params": [*pb, e], "lr": 0.2, "momentum": 0.5}],
                      **options)

    flat_opt = make(a.params, b.params, extra)
    sep_opt = make(a_sep, b_sep, extra_sep)
    rng = np.random.default_rng(12)
    for t in range(6):
        a.flat_grads[...] = rand(rng, a.size, F32)
        b.flat_grads[...] = rand(rng, b.size, F64)
        g_extra = rand(rng, 6, F64)
        grads = [*a.grads, *b.grads, g_extra]
        if t == 1:
            grads[1] = None
        if t == 3:
            for opt in (flat_opt, sep_opt):
                opt.param_groups[1]["lr"] = 0.01
        flat_opt.step(grads)
        sep_opt.step([None if g is None else g.copy() for g in grads])
        for x, y in zip([*a.params, *b.params, extra], [*a_sep, *b_sep, extra_sep], strict=True):
            same_bits(x, y)
