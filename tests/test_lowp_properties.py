"""Property test (hypothesis): random calls mixing the low-precision kinds equal
tests/reference_lowp.lowp_step BIT FOR BIT (NaN == NaN) on a drawn ISA and thread count.

Drawn: the convention and its hyper-parameters (test_properties' strategy, which keeps to the
documented valid ranges), the rounding, seed and step, 1 to 4 parameters each of its own kind
(float32, bfloat16 or float16 parameters; the parameter's dtype or float32 gradients; float32,
bfloat16, float16 or 8-bit buffers, none at momentum 0; a Kahan compensation or not), shapes
(0-d, empty, n-d, up to several blocks of 256), magnitudes over 2**-20 to 2**8 and first_step.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lowp_cases import (
    BF16,
    CONFIGS,
    F16,
    F32,
    MOMENTUM_NAME,
    Kind,
    State,
    kernel_config,
    make_buffer,
    run_kernels,
    run_reference,
    same_state,
    values,
)
from test_properties import _hyper, _settings

SHAPES = st.one_of(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7),
                   st.integers(0, 1300).map(lambda n: (n,)))


@st.composite
def _kinds(draw, rounding, buffers):
    param = draw(st.sampled_from([F32, BF16, F16]))
    grad = draw(st.sampled_from([param, F32]))
    buf = draw(st.sampled_from(["float32", "bfloat16", "float16", "int8"])) if buffers else "none"
    kahan = param != F32 and rounding == "nearest" and draw(st.booleans())
    return Kind(param, grad, buf, "kahan" if kahan else rounding)


@st.composite
def _calls(draw):
    style = draw(st.sampled_from(["torch", "keras", "ema"]))
    hyper = draw(_hyper(style))
    rounding = draw(st.sampled_from(["nearest", "stochastic"]))
    buffers = hyper[MOMENTUM_NAME[style]] != 0 or draw(st.booleans())
    n = draw(st.integers(1, 4))
    kinds = [draw(_kinds(rounding, buffers)) for _ in range(n)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params, grads, bufs, comps = [], [], [], []
    for kind in kinds:
        shape = draw(SHAPES)
        params.append(values(rng, shape, kind.param, scale=2.0 ** draw(st.integers(-20, 8))))
        grads.append(values(rng, shape, kind.grad, scale=2.0 ** draw(st.integers(-20, 8)),
                            specials=False))
        bufs.append(make_buffer(rng, shape, kind.buf, zero=draw(st.booleans())))
        comps.append(values(rng, shape, kind.param, scale=2.0**-12, specials=False)
                     if kind.writeback == "kahan" else None)
    state = State(params, grads, bufs if buffers else None,
                  comps if any(c is not None for c in comps) else None, kinds)
    first = draw(st.booleans() | st.lists(st.booleans(), min_size=n, max_size=n))
    kw = dict(rounding=rounding, seed=draw(st.integers(0, 2**63 - 1)),
              step=draw(st.integers(0, 2**63 - 1)), first_step=first if style == "torch" else False)
    return style, state, hyper, kw


# Guards against: any combination of kinds, shapes and hyper-parameters, in one call, that a
# kernel widens, updates, rounds, compensates or quantizes differently from the spec on some ISA
# or thread partition, or an array of one parameter written with another's kind.
@given(call=_calls(), config=st.sampled_from(CONFIGS))
@_settings(200)
def test_random_calls_of_mixed_kinds_match_the_reference(call, config):
    style, state, hyper, kw = call
    want = run_reference(style, state, hyper, **kw)
    with kernel_config(*config), np.errstate(all="ignore"):
        run_kernels(style, state, hyper, **kw)
    same_state(state, want, str(config))
