"""A decoupled weight decay never flips a parameter's sign (docs/reliability.md, section 1).

PyTorch's form multiplies by ``1 - scale*wd``, rounded once to a number in [0, 1]: it cannot flip
a sign once ``scale*wd <= 1``. Keras' form, ``p - (p*wd)*scale``, rounds ``wd`` and ``scale`` to
the arrays' dtype separately and rounds each product: with ``scale*wd`` at or just under 1 (in
double) it can return a tiny number of the other sign. The check is made on the coefficients as
the kernel computes with them, in the arrays' dtype; these tests try the kernel itself on the
parameters where a flip shows first (1.0, numbers near the underflow, subnormals).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm

DTYPES = [np.float32, np.float64]


def _parameters(dtype):
    """Positive parameters where rounding up shows: 1, powers of two, the smallest normal and
    the first subnormals, and random values of every magnitude."""
    info = np.finfo(dtype)
    tiny = info.smallest_subnormal
    special = [1.0, 0.5, 3.0, info.tiny, info.tiny * 3] + [tiny * k for k in range(1, 66)]
    rng = np.random.default_rng(0)
    random = np.exp(rng.uniform(np.log(info.tiny), 0, 2000))
    return np.concatenate([np.array(special, dtype), random.astype(dtype)])


def test_the_issues_example_is_refused():
    """lr*wd = 1 in double, but 0.3 and 1/0.3 rounded to float32 multiply to just over 1:
    p - (p*wd)*lr gave -1.19e-7 from p = 1 and a zero gradient."""
    p = np.ones(1, np.float32)
    with pytest.raises(ValueError, match=r"Invalid lr \* weight_decay: 1\.0 \(expected a decay "
                                         r"that cannot flip a parameter's sign in float32"):
        fm.functional.keras_sgd_([p], [np.zeros(1, np.float32)], lr=1 / 0.3, weight_decay=0.3)
    assert p[0] == 1.0
    # In float64 the same product is exactly 1 in the kernel too: p*wd*lr rounds to p, no flip
    # for p = 1; the check still refuses it for the subnormals it could flip.
    with pytest.raises(ValueError, match="cannot flip a parameter's sign in float64"):
        fm.functional.keras_sgd_([np.ones(1)], [np.zeros(1)], lr=1 / 0.3, weight_decay=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["decoupled", "sgdw"])
def test_an_accepted_keras_decay_never_flips_a_sign(dtype, mode):
    """Across scales and decays whose product runs up to 1, and scales above 1: each either is
    refused, or leaves every positive parameter >= 0 (and every negative one <= 0)."""
    base = _parameters(dtype)
    rng = np.random.default_rng(1)
    accepted = refused = 0
    scales = [0.1, 0.3, 0.5, 1.0, 1 / 0.3, 1.5, 2.0, 3.0, 10.0, *rng.uniform(0.01, 4, 30)]
    for scale in scales:
        for product in [0.5, 0.9, 0.99, 0.999999, 1 - 2**-24, 1 - 2**-30, 1.0,
                        *rng.uniform(0.99, 1.0, 10)]:
            wd = product / scale
            for sign in (1, -1):
                p = sign * base.copy()
                kw = dict(lr=scale if mode == "decoupled" else 0.0, weight_decay=wd,
                          weight_decay_mode=mode, schedule_multiplier=scale)
                try:
                    fm.functional.keras_sgd_([p], [np.zeros_like(p)], **kw)
                except ValueError as error:
                    assert "flip" in str(error)
                    refused += 1
                    continue
                accepted += 1
                assert not np.any(np.signbit(p) != (sign < 0) & (p != 0)), (scale, product)
                assert np.all(sign * p >= 0), (scale, product, p[sign * p < 0][:3])
    assert accepted > 100 and refused > 10  # both sides of the boundary were tried


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_torch_forms_accept_a_full_decay_and_never_flip(dtype):
    """1 - lr*wd is rounded once into [0, 1]: lr*wd = 1 zeroes the parameters, never flips."""
    for style, step in (("torch", fm.functional.sgd_), ("ema", fm.functional.ema_sgd_)):
        p = _parameters(dtype)
        kw = {"beta": 0.0} if style == "ema" else {}
        step([p], [np.zeros_like(p)], lr=1 / 0.3, weight_decay=0.3, weight_decay_mode="decoupled",
             **kw)
        assert np.all(p >= 0) and not np.any(np.signbit(p))


def test_the_optimizer_refuses_it_where_the_functional_step_does():
    w = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="cannot flip a parameter's sign in float32"):
        fm.SGD([w], lr=1 / 0.3, weight_decay=0.3, style="keras").step([np.zeros(3, np.float32)])
    np.testing.assert_array_equal(w, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_weight_decay_above_1_is_refused_in_keras_form(dtype):
    """p*wd would overflow to infinity for the largest parameters, and p - inf*lr is -inf."""
    big = np.finfo(dtype).max / 1.5
    p = np.array([big, -big], dtype)
    overflow = r"weight_decay <= 1 \(p\*weight_decay must not overflow\)"
    with pytest.raises(ValueError, match=overflow):
        fm.functional.keras_sgd_([p], [np.zeros_like(p)], lr=0.25, weight_decay=2.0)
    assert p[0] == big and p[1] == -big
    fm.functional.sgd_([p], [np.zeros_like(p)], lr=0.25, weight_decay=2.0,
                       weight_decay_mode="decoupled")  # torch's form: p*(1 - 0.5)
    assert p[0] == dtype(big) * dtype(0.5)
