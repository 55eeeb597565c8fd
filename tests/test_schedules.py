"""fastmomentum.schedules against the published Keras 3 / optax formulas, written out below.

Each ``keras_*`` / ``optax_*`` function transcribes one schedule of Keras 3
``keras/src/optimizers/schedules/learning_rate_schedule.py`` or optax
``optax/schedules/_schedule.py`` as plainly as possible, in double, keeping the libraries' own
expressions (indicator sums, ``sign``, cumulative products, the ``-1`` first knot). The schedules
must match them to 1e-12 relative over steps 0 .. 3x the horizon, boundaries included. Hand-computed
values then pin the formulas themselves, so the test is not only code against code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from fractions import Fraction
from itertools import pairwise

import pytest

from fastmomentum import schedules as S

REL = 1e-12


# --------------------------------------------------------------------------------------------
# Reference formulas (Keras 3)
# --------------------------------------------------------------------------------------------


def keras_exponential_decay(step, initial_learning_rate, decay_steps, decay_rate, staircase):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return initial_learning_rate * math.pow(decay_rate, p)


def keras_piecewise_constant_decay(step, boundaries, values):
    result = 0.0
    result += float(step <= boundaries[0]) * values[0]
    result += float(step > boundaries[-1]) * values[-1]
    for low, high, value in zip(boundaries[:-1], boundaries[1:], values[1:-1], strict=True):
        result += float(low < step <= high) * value
    return result


def keras_polynomial_decay(step, initial_learning_rate, decay_steps, end_learning_rate, power,
                           cycle):
    global_step_recomp = float(step)
    decay_steps_recomp = float(decay_steps)
    if cycle:
        multiplier = 1.0 if global_step_recomp == 0 else math.ceil(global_step_recomp / decay_steps)
        decay_steps_recomp = decay_steps_recomp * multiplier
    else:
        global_step_recomp = min(global_step_recomp, decay_steps_recomp)
    p = global_step_recomp / decay_steps_recomp
    return (initial_learning_rate - end_learning_rate) * math.pow(1 - p, power) + end_learning_rate


def keras_inverse_time_decay(step, initial_learning_rate, decay_steps, decay_rate, staircase):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return initial_learning_rate / (1.0 + decay_rate * p)


def keras_cosine_decay(step, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None,
                       warmup_steps=0):
    def decay_function(step, decay_steps, decay_from_lr):
        completed_fraction = step / decay_steps
        cosine_decayed = 0.5 * (1.0 + math.cos(math.pi * completed_fraction))
        decayed = (1 - alpha) * cosine_decayed + alpha
        return decay_from_lr * decayed

    def warmup_function(step, warmup_steps, warmup_target, initial_learning_rate):
        completed_fraction = step / warmup_steps
        total_step_delta = warmup_target - initial_learning_rate
        return total_step_delta * completed_fraction + initial_learning_rate

    global_step_recomp = float(step)
    if warmup_target is None:
        global_step_recomp = min(global_step_recomp, decay_steps)
        return decay_function(global_step_recomp, decay_steps, initial_learning_rate)
    global_step_recomp = min(global_step_recomp, decay_steps + warmup_steps)
    if global_step_recomp < warmup_steps:
        return warmup_function(global_step_recomp, warmup_steps, warmup_target,
                               initial_learning_rate)
    return decay_function(global_step_recomp - warmup_steps, decay_steps, warmup_target)


def keras_cosine_decay_restarts(step, initial_learning_rate, first_decay_steps, t_mul, m_mul,
                                alpha):
    completed_fraction = step / first_decay_steps
    if t_mul == 1.0:
        i_restart = math.floor(completed_fraction)
        completed_fraction -= i_restart
    else:
        i_restart = math.floor(
            math.log(1.0 - completed_fraction * (1.0 - t_mul)) / math.log(t_mul))
        sum_r = (1.0 - math.pow(t_mul, i_restart)) / (1.0 - t_mul)
        completed_fraction = (completed_fraction - sum_r) / math.pow(t_mul, i_restart)
    m_fac = math.pow(m_mul, i_restart)
    cosine_decayed = 0.5 * m_fac * (1.0 + math.cos(math.pi * completed_fraction))
    decayed = (1 - alpha) * cosine_decayed + alpha
    return initial_learning_rate * decayed


# --------------------------------------------------------------------------------------------
# Reference formulas (optax)
# --------------------------------------------------------------------------------------------


def optax_piecewise_constant_schedule(count, init_value, boundaries_and_scales):
    v = init_value
    for threshold, scale in sorted(boundaries_and_scales.items()):
        sign = float((threshold > count) - (threshold < count))  # jnp.sign
        indicator = max(0.0, sign)
        v = v * indicator + (1 - indicator) * scale * v
    return v


def optax_exponential_decay(count, init_value, transition_steps, decay_rate, transition_begin=0,
                            staircase=False, end_value=None):
    decreased_count = count - transition_begin
    p = decreased_count / transition_steps
    if staircase:
        p = math.floor(p)
    decayed_value = init_value if decreased_count <= 0 else init_value * math.pow(decay_rate, p)
    if end_value is not None:
        clip_fn = max if decay_rate < 1.0 else min
        decayed_value = clip_fn(decayed_value, end_value)
    return decayed_value


def optax_polynomial_schedule(count, init_value, end_value, power, transition_steps,
                              transition_begin=0):
    if transition_steps <= 0:
        return init_value
    count = min(max(count - transition_begin, 0), transition_steps)
    frac = 1 - count / transition_steps
    return (init_value - end_value) * (frac ** power) + end_value


def optax_cosine_decay_schedule(count, init_value, decay_steps, alpha=0.0, exponent=1.0):
    count = min(count, decay_steps)
    cosine_decay = 0.5 * (1 + math.cos(math.pi * count / decay_steps))
    decayed = (1 - alpha) * cosine_decay ** exponent + alpha
    return init_value * decayed


def optax_join_schedules(schedules, boundaries):
    def schedule(step):
        output = schedules[0](step)
        for boundary, sched in zip(boundaries, schedules[1:], strict=True):
            output = output if step < boundary else sched(step - boundary)
        return output
    return schedule


def optax_warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, decay_steps,
                                       end_value=0.0, exponent=1.0):
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return optax_join_schedules(
        [lambda c: optax_polynomial_schedule(c, init_value, peak_value, 1, warmup_steps),
         lambda c: optax_cosine_decay_schedule(c, peak_value, decay_steps - warmup_steps, alpha,
                                               exponent)],
        [warmup_steps])


def optax_piecewise_interpolate_schedule(interpolate_type, init_value, boundaries_and_scales):
    def linear(start, end, pct):
        return (end - start) * pct + start

    def cosine(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    interpolate_fn = linear if interpolate_type == "linear" else cosine
    boundaries, scales = zip(*sorted(boundaries_and_scales.items()), strict=True)
    bounds = (0, *boundaries)  # optax >= 0.2.x builds its bounds from 0 (older ones from -1)
    values = [init_value]
    for scale in scales:  # np.cumprod
        values.append(values[-1] * scale)
    interval_sizes = [max(hi - lo, 1) for lo, hi in pairwise(bounds)]

    def schedule(count):
        total = 0.0
        for k in range(len(interval_sizes)):
            indicator = bounds[k] <= count < bounds[k + 1]
            pct = (count - bounds[k]) / interval_sizes[k]
            total += indicator * interpolate_fn(values[k], values[k + 1], pct)
        return total + (bounds[-1] <= count) * values[-1]
    return schedule


def optax_linear_onecycle_schedule(transition_steps, peak_value, pct_start=0.3, pct_final=0.85,
                                   div_factor=25.0, final_div_factor=1e4):
    return optax_piecewise_interpolate_schedule(
        "linear", peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor,
         int(pct_final * transition_steps): 1.0 / div_factor,
         transition_steps: 1.0 / final_div_factor})


def optax_cosine_onecycle_schedule(transition_steps, peak_value, pct_start=0.3, div_factor=25.0,
                                   final_div_factor=1e4):
    return optax_piecewise_interpolate_schedule(
        "cosine", peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor,
         int(transition_steps): 1.0 / (div_factor * final_div_factor)})


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def assert_matches(schedule, reference, last_step, rel=REL):
    """schedule(step) == reference(step) to ``rel`` for step = 0 .. last_step (inclusive)."""
    worst = (0.0, None)
    for step in range(last_step + 1):
        got, want = schedule(step), reference(step)
        assert isinstance(got, float), (step, type(got))
        if got == want:
            continue
        err = abs(got - want) / abs(want) if want != 0 else math.inf
        worst = max(worst, (err, step))
    assert worst[0] <= rel, f"step {worst[1]}: rel error {worst[0]:.3g} ({schedule!r})"


def approx(x):
    return pytest.approx(x, rel=1e-13, abs=1e-15)


# --------------------------------------------------------------------------------------------
# Comparisons with the reference formulas
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.1, 0.0, -2.5, 7])
def test_constant(value):
    s = S.constant(value)
    assert all(s(t) == float(value) for t in (0, 1, 10**12))
    assert isinstance(s(3), float)


@pytest.mark.parametrize(("boundaries", "values"), [
    ([10, 20], [1.0, 0.5, 0.1]),
    ([5], [0.3, 0.03]),
    ([0, 7, 8, 30], [9.0, 1.0, 2.0, 3.0, 4.0]),
    ([3, 3, 12], [1.0, 2.0, 3.0, 4.0]),  # equal boundaries: values[2] is never used
])
def test_piecewise_constant_matches_keras(boundaries, values):
    s = S.piecewise_constant(boundaries, values)
    assert_matches(s, lambda t: keras_piecewise_constant_decay(t, boundaries, values),
                   3 * boundaries[-1] + 3)


def test_piecewise_constant_spot_values():
    s = S.piecewise_constant([10, 20], [1.0, 0.5, 0.1])
    assert [s(t) for t in (0, 10, 11, 20, 21, 1000)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    assert S.piecewise_constant([], [0.7])(123) == 0.7


@pytest.mark.parametrize(("init", "bs"), [
    (1.0, {10: 0.5, 20: 0.1}),
    (0.2, {30: 0.1, 5: 2.0, 6: 0.0}),
    (3.0, {0: 0.5}),
    (0.5, {}),
])
def test_piecewise_constant_scales_matches_optax(init, bs):
    s = S.piecewise_constant_scales(init, bs)
    assert_matches(s, lambda t: optax_piecewise_constant_schedule(t, init, bs),
                   3 * max(bs, default=10) + 3)


def test_piecewise_constant_scales_spot_values():
    s = S.piecewise_constant_scales(1.0, {10: 0.5, 20: 0.1})
    assert [s(t) for t in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.05]
    assert S.piecewise_constant_scales(1.0, [(20, 0.1), (10, 0.5)]) == s  # pairs, any order
    assert S.piecewise_constant_scales(2.0)(50) == 2.0


@pytest.mark.parametrize(("init", "steps", "rate", "staircase"), [
    (0.1, 10, 0.96, False),
    (0.1, 10, 0.96, True),
    (1.0, 7, 0.5, True),
    (2.5, 3, 1.1, False),
    (0.3, 4.5, 0.8, False),
    (0.3, 4.5, 0.8, True),
])
def test_exponential_decay_matches_keras(init, steps, rate, staircase):
    s = S.exponential_decay(init, steps, rate, staircase=staircase)
    assert_matches(s, lambda t: keras_exponential_decay(t, init, steps, rate, staircase),
                   int(3 * steps * 10))


@pytest.mark.parametrize(("init", "steps", "rate", "begin", "staircase", "end"), [
    (1.0, 10, 0.5, 5, False, 0.1),
    (1.0, 10, 0.5, 5, True, None),
    (1.0, 10, 0.5, 0, True, 0.2),
    (1.0, 8, 2.0, 3, False, 4.0),
    (1.0, 8, 2.0, 3, True, 4.0),
    (1.0, 8, 1.0, 0, False, 0.5),   # rate == 1: optax clips with min -> 0.5 everywhere
    (0.1, 8, 0.9, 2, False, 0.5),   # end above init with rate < 1: end everywhere
    (0.1, 6, 0.7, 12, False, None),
])
def test_exponential_decay_matches_optax(init, steps, rate, begin, staircase, end):
    s = S.exponential_decay(init, steps, rate, staircase=staircase, transition_begin=begin,
                            end_value=end)
    ref = lambda t: optax_exponential_decay(t, init, steps, rate, begin, staircase, end)  # noqa: E731
    assert_matches(s, ref, 3 * (begin + 4 * steps))


def test_exponential_decay_spot_values():
    s = S.exponential_decay(1.0, 10, 0.5)
    assert s(0) == 1.0 and s(10) == 0.5 and s(30) == 0.125
    assert s(5) == approx(math.sqrt(0.5))
    st = S.exponential_decay(1.0, 10, 0.5, staircase=True)
    assert [st(t) for t in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    ob = S.exponential_decay(1.0, 10, 0.5, transition_begin=5, end_value=0.3)
    assert [ob(t) for t in (0, 5, 15, 25, 35)] == [1.0, 1.0, 0.5, 0.3, 0.3]
    up = S.exponential_decay(1.0, 10, 2.0, end_value=3.0)
    assert [up(t) for t in (0, 10, 20, 10**9)] == [1.0, 2.0, 3.0, 3.0]
    assert S.exponential_decay(1.0, 1, 1.5)(10**6) == math.inf  # overflow: inf, not an error


@pytest.mark.parametrize(("init", "steps", "rate", "staircase"), [
    (0.1, 10, 0.5, False),
    (0.1, 10, 0.5, True),
    (1.0, 3, 2.0, True),
    (2.0, 2.5, 0.1, False),
])
def test_inverse_time_decay_matches_keras(init, steps, rate, staircase):
    s = S.inverse_time_decay(init, steps, rate, staircase=staircase)
    assert_matches(s, lambda t: keras_inverse_time_decay(t, init, steps, rate, staircase),
                   int(30 * steps))


def test_inverse_time_decay_spot_values():
    s = S.inverse_time_decay(1.0, 10, 1.0)
    assert [s(t) for t in (0, 10, 30)] == [1.0, 0.5, 0.25]
    st = S.inverse_time_decay(1.0, 10, 1.0, staircase=True)
    assert [st(t) for t in (9, 10, 19, 20)] == [1.0, 0.5, 0.5, 1.0 / 3.0]


@pytest.mark.parametrize(("init", "steps", "end", "power", "cycle"), [
    (0.1, 10, 0.0001, 1.0, False),
    (0.1, 10, 0.0001, 1.0, True),
    (1.0, 7, 0.1, 2.0, True),
    (1.0, 7, 0.1, 0.5, False),
    (0.5, 4.5, 0.0, 3.0, True),
    (0.01, 20, 0.1, 1.5, True),  # increasing "decay"
])
def test_polynomial_decay_matches_keras(init, steps, end, power, cycle):
    s = S.polynomial_decay(init, steps, end, power, cycle)
    ref = lambda t: keras_polynomial_decay(t, init, steps, end, power, cycle)  # noqa: E731
    assert_matches(s, ref, int(3 * steps))


def test_polynomial_decay_spot_values():
    assert S.polynomial_decay(1.0, 10)(10) == 0.0001  # Keras' default end_learning_rate
    s = S.polynomial_decay(1.0, 10, end_value=0.0)
    assert [s(t) for t in (0, 5, 10, 11, 100)] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert S.polynomial_decay(1.0, 10, end_value=0.0, power=2.0)(5) == 0.25
    c = S.polynomial_decay(1.0, 10, end_value=0.0, cycle=True)
    # step 0 uses horizon 10; k*10 ends a cycle (value end); k*10 + 1 starts a longer one
    assert [c(t) for t in (0, 5, 10, 20, 30)] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert c(11) == approx(1 - 11 / 20) and c(15) == approx(0.25)
    assert c(21) == approx(1 - 21 / 30) and c(25) == approx(1 - 25 / 30)
    assert c(31) == approx(1 - 31 / 40)


@pytest.mark.parametrize(("init", "steps", "alpha", "exponent"), [
    (0.1, 100, 0.0, 1.0),
    (0.1, 100, 0.1, 1.0),
    (2.0, 37, 0.3, 1.0),
    (1.0, 50, 0.05, 2.0),
    (1.0, 50, 0.2, 0.5),
    (1.0, 12.5, 0.0, 1.0),
])
def test_cosine_decay_matches_keras_and_optax(init, steps, alpha, exponent):
    s = S.cosine_decay(init, steps, alpha, exponent)
    last = int(3 * steps)
    assert_matches(s, lambda t: optax_cosine_decay_schedule(t, init, steps, alpha, exponent), last)
    if exponent == 1.0:
        assert_matches(s, lambda t: keras_cosine_decay(t, init, steps, alpha), last)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_cosine_decay_spot_values(alpha):
    s = S.cosine_decay(2.0, 100, alpha=alpha)
    assert s(0) == 2.0
    assert s(50) == approx(2.0 * (0.5 * (1 - alpha) + alpha))
    assert s(25) == approx(2.0 * ((1 - alpha) * (0.5 + 0.25 * math.sqrt(2)) + alpha))
    assert s(100) == 2.0 * alpha and s(1000) == 2.0 * alpha  # exact, then flat
    e = S.cosine_decay(2.0, 100, alpha=alpha, exponent=2.0)  # exponent on the cosine term only
    assert e(50) == approx(2.0 * (0.25 * (1 - alpha) + alpha))


# (init, peak, warmup, decay, end, exponent)
WARMUP_CASES = [
    (0.0, 1.0, 10, 100, 0.0, 1.0),
    (0.01, 0.1, 10, 100, 0.001, 1.0),
    (0.0, 0.5, 0, 40, 0.05, 1.0),
    (0.2, 0.1, 7, 30, 0.02, 1.0),  # warmup going down
    (0.0, 1.0, 5, 60, 0.1, 2.0),
    (0.0, 1.0, 1, 2, 0.0, 1.0),
]


@pytest.mark.parametrize(("init", "peak", "warmup", "decay", "end", "exponent"), WARMUP_CASES)
def test_warmup_cosine_decay_optax_counting(init, peak, warmup, decay, end, exponent):
    s = S.warmup_cosine_decay(init, peak, warmup, decay, end, exponent,
                              decay_steps_include_warmup=True)
    ref = optax_warmup_cosine_decay_schedule(init, peak, warmup, decay, end, exponent)
    assert_matches(s, ref, 3 * decay)
    assert s(decay) == end and s(3 * decay) == end  # reaches end_value AT decay_steps, exactly
    assert s(decay - 1) != end


@pytest.mark.parametrize(("init", "peak", "warmup", "decay", "end"),
                         [case[:5] for case in WARMUP_CASES if case[5] == 1.0])  # no exponent
def test_warmup_cosine_decay_keras_counting(init, peak, warmup, decay, end):
    alpha = end / peak
    s = S.warmup_cosine_decay(init, peak, warmup, decay, alpha * peak,
                              decay_steps_include_warmup=False)
    ref = lambda t: keras_cosine_decay(t, init, decay, alpha, warmup_target=peak,  # noqa: E731
                                       warmup_steps=warmup)
    assert_matches(s, ref, 3 * (warmup + decay))
    # reaches end_value AT warmup_steps + decay_steps, exactly
    assert s(warmup + decay) == alpha * peak and s(3 * (warmup + decay)) == alpha * peak
    assert s(warmup + decay - 1) != alpha * peak


def test_warmup_cosine_decay_spot_values():
    for include, cosine_len in ((True, 90), (False, 100)):
        s = S.warmup_cosine_decay(0.0, 1.0, 10, 100, end_value=0.1,
                                  decay_steps_include_warmup=include)
        assert [s(t) for t in (0, 5, 10)] == [0.0, 0.5, 1.0]  # linear warmup, peak at step W
        assert s(10 + cosine_len // 2) == approx(0.1 + 0.9 * 0.5)  # cosine midpoint
        end_step = 10 + cosine_len  # 100 (optax) or 110 (Keras)
        assert s(end_step - 1) > 0.1
        assert s(end_step) == 0.1 and s(end_step + 1) == 0.1 and s(10**9) == 0.1
    # warmup_steps=0 starts at the peak; init_value unused
    assert S.warmup_cosine_decay(5.0, 1.0, 0, 10, decay_steps_include_warmup=True)(0) == 1.0


def test_warmup_cosine_decay_zero_peak_differs_from_optax():
    # optax sets alpha = 0 when peak == 0, so it stays at 0 after the warmup; here it goes to end
    s = S.warmup_cosine_decay(0.5, 0.0, 10, 30, end_value=0.1, decay_steps_include_warmup=True)
    ref = optax_warmup_cosine_decay_schedule(0.5, 0.0, 10, 30, end_value=0.1)
    assert ref(30) == 0.0 and s(30) == 0.1 and s(10) == 0.0
    assert_matches(s, ref, 9)  # the warmups agree


@pytest.mark.parametrize(("init", "first", "t_mul", "m_mul", "alpha"), [
    (0.1, 10, 2.0, 1.0, 0.0),
    (0.1, 10, 2.0, 0.5, 0.1),
    (1.0, 10, 1.0, 1.0, 0.0),
    (1.0, 7, 1.0, 0.8, 0.05),
    (1.0, 10, 3.0, 0.9, 0.0),
    (1.0, 6, 1.5, 1.2, 0.2),
    (1.0, 4.5, 2.0, 1.0, 0.0),
])
def test_cosine_decay_restarts_matches_keras(init, first, t_mul, m_mul, alpha):
    s = S.cosine_decay_restarts(init, first, t_mul, m_mul, alpha)
    ref = lambda t: keras_cosine_decay_restarts(t, init, first, t_mul, m_mul, alpha)  # noqa: E731
    last = int(first * (1 + t_mul + t_mul**2)) * 3
    assert_matches(s, ref, last)


def test_cosine_decay_restarts_spot_values_t_mul_2():
    s = S.cosine_decay_restarts(2.0, 10, t_mul=2.0, m_mul=0.5, alpha=0.1)
    starts = [0, 10, 30, 70, 150, 310, 630]  # T0 * (2**i - 1)
    for i, start in enumerate(starts):
        top = 2.0 * (0.9 * 0.5**i + 0.1)
        assert s(start) == approx(top), i  # restart to m_mul**i (alpha not scaled)
        if i:
            assert s(start - 1) < s(start)
            length = 10 * 2**i
            assert s(start + length // 2) == approx(2.0 * (0.9 * 0.5**i * 0.5 + 0.1))
    assert s(30) == approx(0.65)
    plain = S.cosine_decay_restarts(1.0, 10)
    assert [plain(t) for t in (0, 10, 30, 70)] == [1.0, 1.0, 1.0, 1.0]
    assert plain(5) == approx(0.5) and plain(20) == approx(0.5) and plain(50) == approx(0.5)


def test_cosine_decay_restarts_spot_values_t_mul_1():
    s = S.cosine_decay_restarts(1.0, 10, t_mul=1.0, m_mul=0.5)
    for i in range(6):
        assert s(10 * i) == 0.5**i
        assert s(10 * i + 5) == approx(0.5**i * 0.5)
        assert s(10 * i + 9) < s(10 * i + 10)  # restart: up again
    assert s.restart_index(19) == (1, pytest.approx(0.9))


def test_cosine_decay_restarts_never_restarts_late():
    # The log-based restart index (Keras' formula) rounds below the integer at some restart steps:
    # with T0=10, t_mul=3 the 5th restart (step 10*(3**5-1)/2 = 1210) would come one step late
    # (in double; Keras' float32 has others). fastmomentum corrects the index exactly.
    s = S.cosine_decay_restarts(1.0, 10, t_mul=3.0, alpha=0.25)
    assert keras_cosine_decay_restarts(1210, 1.0, 10, 3.0, 1.0, 0.25) == 0.25  # the quirk
    assert s.restart_index(1210) == (5, 0.0)
    assert s(1210) == 1.0  # the top of period 5, not the bottom (0.25) of period 4
    assert s(1209) == approx(keras_cosine_decay_restarts(1209, 1.0, 10, 3.0, 1.0, 0.25))
    assert s(1211) == approx(keras_cosine_decay_restarts(1211, 1.0, 10, 3.0, 1.0, 0.25))
    assert s(40) == 1.0 and s(400) == 1.0


def plain_restart_start(first, t_mul, i):
    """S_i = first * (t_mul**i - 1) / (t_mul - 1) exactly (i * first when t_mul == 1)."""
    first, t_mul = Fraction(first), Fraction(t_mul)
    return first * i if t_mul == 1 else first * (t_mul**i - 1) / (t_mul - 1)


def plain_cosine_decay_restarts(step, init, first, t_mul, m_mul, alpha):
    """An independent reference: find the period by walking the exact period starts."""
    if t_mul == 1:
        i = math.floor(Fraction(step) / Fraction(first))
    else:
        i = 0
        while plain_restart_start(first, t_mul, i + 1) <= step:
            i += 1
    length = Fraction(first) * Fraction(t_mul)**i
    r = float((step - plain_restart_start(first, t_mul, i)) / length)
    return init * ((1 - alpha) * 0.5 * m_mul**i * (1 + math.cos(math.pi * r)) + alpha)


def integer_restart_steps(first, t_mul, last):
    """Every restart step S_i (i >= 1) that is an integer <= last."""
    out, i = [], 1
    while (start := plain_restart_start(first, t_mul, i)) <= last:
        if start.denominator == 1:
            out.append(int(start))
        i += 1
    return out


# 1.5**i needs a first_decay_steps with factors of 2 for its restarts to fall on integer steps
RESTART_SCANS = [(first, t_mul) for first in (1, 3, 7, 10, 4.5, 16, 1024)
                 for t_mul in (1.0, 2.0, 3.0, 1.5)
                 if integer_restart_steps(first, t_mul, 300_000)]  # 4.5 * (2**i - 1): none


@pytest.mark.parametrize(("first", "t_mul"), RESTART_SCANS)
def test_cosine_decay_restarts_every_restart_on_time(first, t_mul):
    # Every integer restart step up to 3e5 (up to 5e3 for t_mul = 1) restarts on time: the value
    # is the top of the new period, and the step before is still in the previous period.
    init, m_mul, alpha = 2.0, 0.5, 0.1
    s = S.cosine_decay_restarts(init, first, t_mul, m_mul, alpha)
    last = 5_000 if t_mul == 1.0 else 300_000
    starts = integer_restart_steps(first, t_mul, last)
    assert starts
    for step in starts:
        i, r = s.restart_index(step)
        assert r == 0.0 and plain_restart_start(first, t_mul, i) == step, (step, i, r)
        assert s(step) == init * ((1 - alpha) * m_mul**i + alpha), step
        assert s(step) == approx(plain_cosine_decay_restarts(step, init, first, t_mul, m_mul,
                                                             alpha))
        assert s.restart_index(step - 1)[0] == i - 1, step
        assert s(step - 1) == approx(plain_cosine_decay_restarts(step - 1, init, first, t_mul,
                                                                 m_mul, alpha))


def test_cosine_decay_restarts_matches_plain_reference_everywhere():
    for first, t_mul in [(10, 3.0), (3, 2.0), (7, 1.5), (4.5, 2.0), (10, 1.0)]:
        s = S.cosine_decay_restarts(1.0, first, t_mul, 0.8, 0.05)
        ref = lambda t, f=first, m=t_mul: plain_cosine_decay_restarts(  # noqa: E731
            t, 1.0, f, m, 0.8, 0.05)
        assert_matches(s, ref, 1500, rel=1e-11)


@pytest.mark.parametrize(("steps", "peak", "pct_start", "pct_final", "div", "final_div"), [
    (100, 1.0, 0.3, 0.85, 25.0, 1e4),
    (1000, 0.1, 0.25, 0.9, 10.0, 100.0),
    (7, 2.0, 0.3, 0.85, 25.0, 1e4),
    (50, 0.5, 0.0, 0.5, 4.0, 10.0),
])
def test_linear_onecycle_matches_optax(steps, peak, pct_start, pct_final, div, final_div):
    s = S.linear_onecycle(steps, peak, pct_start, pct_final, div, final_div)
    ref = optax_linear_onecycle_schedule(steps, peak, pct_start, pct_final, div, final_div)
    assert_matches(s, ref, 3 * steps)


@pytest.mark.parametrize(("steps", "peak", "pct_start", "div", "final_div"), [
    (100, 1.0, 0.3, 25.0, 1e4),
    (1000, 0.1, 0.25, 10.0, 100.0),
    (3, 2.0, 0.3, 25.0, 1e4),
    (50, 0.5, 0.0, 4.0, 10.0),
])
def test_cosine_onecycle_matches_optax(steps, peak, pct_start, div, final_div):
    s = S.cosine_onecycle(steps, peak, pct_start, div, final_div)
    ref = optax_cosine_onecycle_schedule(steps, peak, pct_start, div, final_div)
    assert_matches(s, ref, 3 * steps)


def test_onecycle_spot_values():
    lin = S.linear_onecycle(100, 1.0)  # knots 0: 0.04, 30: 1.0, 85: 0.04, 100: 4e-6
    assert lin(0) == 0.04  # optax's first knot is at step 0 (it was at -1 before issue 23)
    assert lin(1) == approx(0.04 + 0.96 / 30)
    assert lin(30) == approx(1.0) and lin(85) == approx(0.04)
    assert lin(100) == approx(4e-6) and lin(10**6) == lin(100)
    assert lin(57) == approx(1.0 - 0.96 * 27 / 55)
    cos = S.cosine_onecycle(100, 1.0)  # knots 0: 0.04, 30: 1.0, 100: 4e-6
    assert cos(0) == approx(0.04)  # 1.0 + (0.04 - 1.0) / 2 * 2, optax's rounding
    assert cos(1) == approx(1.0 + (0.04 - 1.0) / 2 * (math.cos(math.pi / 30) + 1))
    # pct_start * transition_steps < 1: an empty first phase, the schedule starts at the peak
    assert S.cosine_onecycle(3, 2.0)(0) == approx(2.0)
    assert S.linear_onecycle(50, 0.5, 0.0, 0.5, 4.0, 10.0)(0) == 0.5
    assert cos(30) == approx(1.0) and cos(65) == approx((1.0 + 4e-6) / 2)
    assert cos(100) == approx(4e-6) and cos(10**6) == cos(100)


def test_join_schedules_matches_optax():
    parts = [S.constant(1.0), S.exponential_decay(1.0, 3, 0.5), S.cosine_decay(0.5, 20, 0.1),
             S.polynomial_decay(2.0, 5, 0.0, cycle=True)]
    boundaries = [5, 12, 40]
    s = S.join_schedules(parts, boundaries)
    assert_matches(s, optax_join_schedules(parts, boundaries), 3 * boundaries[-1])


def test_join_schedules_spot_values():
    s = S.join_schedules([S.constant(1.0), S.constant(2.0), S.constant(3.0)], [5, 10])
    assert [s(t) for t in (0, 4, 5, 9, 10, 99)] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    r = S.join_schedules([S.exponential_decay(1.0, 1, 0.5)] * 2, [3])
    assert [r(t) for t in (0, 2, 3, 4)] == [1.0, 0.25, 1.0, 0.5]  # the count restarts at 3
    equal = S.join_schedules([S.constant(1.0), S.constant(2.0), S.constant(3.0)], [4, 4])
    assert [equal(t) for t in (3, 4)] == [1.0, 3.0]
    assert S.join_schedules([S.constant(0.5)], [])(7) == 0.5
    lam = S.join_schedules([S.constant(1.0), lambda t: 10.0 * t], [2])
    assert lam(5) == 30.0


# --------------------------------------------------------------------------------------------
# Data: to_dict / from_dict, equality, repr
# --------------------------------------------------------------------------------------------

SGDR_CYCLES = [
    {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 5, "decay_steps": 50, "end_value": 0.1},
    {"init_value": 0.1, "peak_value": 0.5, "warmup_steps": 0, "decay_steps": 100, "exponent": 2.0},
    {"init_value": 0.05, "peak_value": 0.25, "warmup_steps": 10, "decay_steps": 30},
]


def optax_sgdr_schedule(cosine_kwargs):
    boundaries, schedules, step = [], [], 0
    for kwargs in cosine_kwargs:
        schedules += [optax_warmup_cosine_decay_schedule(**kwargs)]
        boundaries += [step + kwargs["decay_steps"]]
        step += kwargs["decay_steps"]
    return optax_join_schedules(schedules, boundaries[:-1])


def test_sgdr_is_optax_sgdr_schedule():
    s = S.sgdr(SGDR_CYCLES)
    assert_matches(s, optax_sgdr_schedule(SGDR_CYCLES), 400)
    assert isinstance(s, S.JoinedSchedules) and s.boundaries == (50, 150)
    assert [s(t) for t in (0, 5, 50, 150, 160)] == [0.0, 1.0, 0.5, 0.05, 0.25]
    assert s(49) == approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 44 / 45)))
    assert s(10**6) == 0.0  # the last cycle continues at its end_value
    assert S.sgdr(iter(SGDR_CYCLES[:1])) == S.join_schedules(
        [S.warmup_cosine_decay(**SGDR_CYCLES[0], decay_steps_include_warmup=True)], [])


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: S.sgdr(0.1, 10), TypeError, "positional argument"),
    (lambda: S.sgdr(0.1), TypeError, "cosine_decay_restarts"),
    (lambda: S.sgdr([]), ValueError, "at least one cycle"),
    (lambda: S.sgdr([1.0]), TypeError, r"cosine_kwargs\[0\] must be a dict"),
    (lambda: S.sgdr([{"init_value": 0.0, "peak_value": 1.0, "decay_steps": 10}]), TypeError,
     "missing arguments \\['warmup_steps'\\]"),
    (lambda: S.sgdr([{**SGDR_CYCLES[0], "alpha": 0.1}]), TypeError, "unknown arguments"),
    (lambda: S.sgdr([{**SGDR_CYCLES[0], "decay_steps": 50.0}]), TypeError, "decay_steps"),
    (lambda: S.sgdr([{**SGDR_CYCLES[0], "decay_steps": 5}]), ValueError, "must be > warmup"),
])
def test_sgdr_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(("init", "end", "power", "steps", "begin"), [
    (1.0, 0.01, 2.0, 100, 5), (0.1, 0.0, 1.0, 10, 0), (0.5, 1.0, 0.5, 7, 30), (2.0, 0.1, 3.0, 1, 1),
])
def test_polynomial_transition_begin_matches_optax(init, end, power, steps, begin):
    s = S.polynomial_decay(init, steps, end, power, transition_begin=begin)
    ref = lambda t: optax_polynomial_schedule(t, init, end, power, steps, begin)  # noqa: E731
    assert_matches(s, ref, 3 * (steps + begin))
    assert [s(t) for t in range(begin + 1)] == [init] * (begin + 1)
    assert s(begin + steps) == end and s(10**9) == end


def test_polynomial_transition_begin_with_cycle():
    plain = S.polynomial_decay(1.0, 10, 0.0, 1.0, cycle=True)
    late = S.polynomial_decay(1.0, 10, 0.0, 1.0, cycle=True, transition_begin=4)
    assert all(late(t + 4) == plain(t) for t in range(100))
    assert [late(t) for t in range(5)] == [1.0] * 5
    with pytest.raises(ValueError, match="transition_begin must be >= 0"):
        S.polynomial_decay(1.0, 10, transition_begin=-1)


ALL = [
    S.constant(0.1),
    S.piecewise_constant([10, 20], [1.0, 0.5, 0.1]),
    S.piecewise_constant([2.5], [1, 2]),
    S.piecewise_constant_scales(1.0, {20: 0.1, 10: 0.5}),
    S.exponential_decay(0.1, 10, 0.96),
    S.exponential_decay(0.1, 10, 0.96, staircase=True, transition_begin=5, end_value=0.01),
    S.inverse_time_decay(0.1, 10, 0.5, staircase=True),
    S.polynomial_decay(0.1, 10),
    S.polynomial_decay(0.1, 10.5, 0.0, 2.0, cycle=True),
    S.cosine_decay(0.1, 100, alpha=0.1, exponent=2.0),
    S.warmup_cosine_decay(0.0, 0.1, 10, 100, 0.001, decay_steps_include_warmup=True),
    S.warmup_cosine_decay(0.0, 0.1, 10, 100, decay_steps_include_warmup=False),
    S.cosine_decay_restarts(0.1, 10, 2.0, 0.5, 0.1),
    S.cosine_decay_restarts(0.1, 10, t_mul=1.0),
    S.polynomial_decay(1.0, 100, 0.01, 2.0, transition_begin=5),
    S.linear_onecycle(100, 0.1),
    S.cosine_onecycle(100, 0.1, pct_start=0.25),
]
ALL.append(S.join_schedules([ALL[0], S.join_schedules(ALL[4:6], [7]), ALL[-1]], [5, 50]))
ALL.append(S.sgdr(SGDR_CYCLES))


def _plain_only(x):
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain_only(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain_only(v) for v in x)
    return x is None or type(x) in (str, int, float, bool)


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_to_dict_from_dict_round_trip(schedule):
    d = schedule.to_dict()
    assert _plain_only(d), d
    public = getattr(S, d["kind"])  # kind names the public builder: the class or its factory
    assert public is type(schedule) or public.__name__ == d["kind"]
    back = S.from_dict(d)
    assert back == schedule and repr(back) == repr(schedule) and hash(back) == hash(schedule)
    via_json = S.from_dict(json.loads(json.dumps(d)))
    assert via_json == schedule
    assert [via_json(t) for t in range(0, 300, 7)] == [schedule(t) for t in range(0, 300, 7)]


def test_to_dict_contents():
    assert S.exponential_decay(0.1, 10, 0.96).to_dict() == {
        "kind": "exponential_decay", "init_value": 0.1, "decay_steps": 10, "decay_rate": 0.96,
        "staircase": False, "transition_begin": 0, "end_value": None}
    assert S.piecewise_constant_scales(1.0, {20: 0.1, 10: 0.5}).to_dict() == {
        "kind": "piecewise_constant_scales", "init_value": 1.0,
        "boundaries_and_scales": [[10, 0.5], [20, 0.1]]}
    j = S.join_schedules([S.constant(1), S.constant(2)], [3]).to_dict()
    assert j == {"kind": "join_schedules", "boundaries": [3],
                 "schedules": [{"kind": "constant", "value": 1.0},
                               {"kind": "constant", "value": 2.0}]}


def test_value_semantics():
    a = S.cosine_decay(0.1, 100)
    assert a == S.cosine_decay(0.1, 100.0) == S.CosineDecay(0.1, 100)
    assert a != S.cosine_decay(0.1, 100, alpha=0.1)
    assert repr(a) == "CosineDecay(init_value=0.1, decay_steps=100, alpha=0.0, exponent=1.0)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.alpha = 0.5  # type: ignore[misc]
    assert len({a, S.cosine_decay(0.1, 100)}) == 1


def test_from_dict_errors():
    with pytest.raises(ValueError, match="unknown schedule kind 'nope'"):
        S.from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match="'kind'"):
        S.from_dict({"value": 1.0})
    with pytest.raises(ValueError, match=r"unknown parameters \['foo'\]"):
        S.from_dict({"kind": "constant", "value": 1.0, "foo": 2})
    with pytest.raises(ValueError, match=r"missing parameters \['decay_steps_include_warmup'\]"):
        S.from_dict({"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 1.0,
                     "warmup_steps": 1, "decay_steps": 10})
    with pytest.raises(ValueError, match="decay_steps must be > 0"):
        S.from_dict({"kind": "cosine_decay", "init_value": 1.0, "decay_steps": 0})
    with pytest.raises(TypeError, match="mapping"):
        S.from_dict([("kind", "constant")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="to_dict"):
        S.join_schedules([S.constant(1.0), lambda t: 1.0], [2]).to_dict()


# --------------------------------------------------------------------------------------------
# Argument errors
# --------------------------------------------------------------------------------------------

BAD = [
    (lambda: S.constant(math.nan), ValueError, "value must be finite"),
    (lambda: S.constant("1"), TypeError, "value must be a real number"),
    (lambda: S.piecewise_constant([10, 20], [1.0, 0.5]), ValueError, "one more element"),
    (lambda: S.piecewise_constant([20, 10], [1.0, 0.5, 0.1]), ValueError, "non-decreasing"),
    (lambda: S.piecewise_constant(5, [1.0]), TypeError, "boundaries must be a sequence"),
    (lambda: S.piecewise_constant_scales(1.0, {10: -0.5}), ValueError, "scale at boundary 10"),
    (lambda: S.piecewise_constant_scales(1.0, {-1: 0.5}), ValueError, "boundaries_and_scales"),
    (lambda: S.piecewise_constant_scales(1.0, [(1, 0.5), (1, 0.2)]), ValueError, "more than once"),
    (lambda: S.exponential_decay(0.1, 0, 0.9), ValueError, "decay_steps must be > 0"),
    (lambda: S.exponential_decay(0.1, -3.0, 0.9), ValueError, "decay_steps must be > 0"),
    (lambda: S.exponential_decay(0.1, 10, 0.0), ValueError, "decay_rate must be > 0"),
    (lambda: S.exponential_decay(0.1, 10, 0.9, transition_begin=-1), ValueError,
     "transition_begin must be >= 0"),
    (lambda: S.exponential_decay(0.1, 10, 0.9, transition_begin=1.5), TypeError,
     "transition_begin must be an integer"),
    (lambda: S.exponential_decay(0.1, 10, 0.9, staircase=1), TypeError, "staircase"),
    (lambda: S.exponential_decay(0.1, True, 0.9), TypeError, "decay_steps"),
    (lambda: S.inverse_time_decay(0.1, 0, 0.5), ValueError, "decay_steps must be > 0"),
    (lambda: S.inverse_time_decay(0.1, 10, -0.5), ValueError, "decay_rate must be >= 0"),
    (lambda: S.polynomial_decay(0.1, 0), ValueError, "decay_steps must be > 0"),
    (lambda: S.polynomial_decay(0.1, 10, power=0.0), ValueError, "power must be > 0"),
    (lambda: S.cosine_decay(0.1, 0), ValueError, "decay_steps must be > 0"),
    (lambda: S.cosine_decay(0.1, 10, exponent=-1.0), ValueError, "exponent must be > 0"),
    (lambda: S.warmup_cosine_decay(0.0, 1.0, 10, 10, decay_steps_include_warmup=True),
     ValueError, r"decay_steps \(10\) must be > warmup_steps \(10\)"),
    (lambda: S.warmup_cosine_decay(0.0, 1.0, -1, 10, decay_steps_include_warmup=False),
     ValueError, "warmup_steps must be >= 0"),
    (lambda: S.warmup_cosine_decay(0.0, 1.0, 5, 0, decay_steps_include_warmup=False),
     ValueError, "decay_steps must be > 0"),
    (lambda: S.warmup_cosine_decay(0.0, 1.0, 5, 10, decay_steps_include_warmup=None),
     TypeError, "decay_steps_include_warmup must be True or False"),
    (lambda: S.warmup_cosine_decay(0.0, 1.0, 5, 10), TypeError, "decay_steps_include_warmup"),
    (lambda: S.cosine_decay_restarts(0.1, 0), ValueError, "first_decay_steps must be > 0"),
    (lambda: S.cosine_decay_restarts(0.1, 10, t_mul=0.5), ValueError, "t_mul must be >= 1"),
    (lambda: S.cosine_decay_restarts(0.1, 10, m_mul=-1.0), ValueError, "m_mul must be >= 0"),
    (lambda: S.linear_onecycle(0, 1.0), ValueError, "transition_steps must be >= 1"),
    (lambda: S.linear_onecycle(100.0, 1.0), TypeError, "transition_steps must be an integer"),
    (lambda: S.linear_onecycle(100, 1.0, pct_start=0.9, pct_final=0.5), ValueError, "pct_final"),
    (lambda: S.linear_onecycle(1, 1.0), ValueError, "phase boundaries"),
    (lambda: S.linear_onecycle(100, 1.0, pct_final=1.0), ValueError, "phase boundaries"),
    (lambda: S.linear_onecycle(100, 1.0, div_factor=0.0), ValueError, "div_factor must be > 0"),
    (lambda: S.cosine_onecycle(100, 1.0, pct_start=1.0), ValueError, "pct_start"),
    (lambda: S.cosine_onecycle(100, 1.0, final_div_factor=-1.0), ValueError,
     "final_div_factor must be > 0"),
    (lambda: S.join_schedules([], []), ValueError, "at least one schedule"),
    (lambda: S.join_schedules([S.constant(1.0)] * 2, []), ValueError, "one element fewer"),
    (lambda: S.join_schedules([S.constant(1.0)] * 3, [5, 2]), ValueError, "non-decreasing"),
    (lambda: S.join_schedules([S.constant(1.0), 2.0], [5]), TypeError, r"schedules\[1\]"),
    (lambda: S.join_schedules([S.constant(1.0)] * 2, [-1]), ValueError, r"boundaries\[0\]"),
]


@pytest.mark.parametrize(("make", "error", "match"), BAD, ids=range(len(BAD)))
def test_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_step_must_be_a_nonnegative_integer(schedule):
    with pytest.raises(ValueError, match="step must be >= 0"):
        schedule(-1)
    with pytest.raises(TypeError, match="step must be an integer"):
        schedule(1.0)
    with pytest.raises(TypeError, match="step must be an integer"):
        schedule(True)


def test_numpy_scalars_accepted():
    np = pytest.importorskip("numpy")
    s = S.cosine_decay(np.float32(0.5), np.int64(100))
    assert s == S.cosine_decay(0.5, 100) and type(s.decay_steps) is int
    assert s(np.int64(50)) == s(50) and type(s(np.int32(3))) is float


# --------------------------------------------------------------------------------------------
# Against the libraries themselves, if installed (float32 there: loose tolerance)
# --------------------------------------------------------------------------------------------


def test_against_optax_if_installed():
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    pairs = [
        (S.cosine_decay(0.1, 100, 0.1, 2.0), optax.cosine_decay_schedule(0.1, 100, 0.1, 2.0)),
        (S.exponential_decay(1.0, 10, 0.5, True, 5, 0.1),
         optax.exponential_decay(1.0, 10, 0.5, 5, True, 0.1)),
        (S.warmup_cosine_decay(0.0, 1.0, 10, 100, 0.1, decay_steps_include_warmup=True),
         optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, 0.1)),
        (S.linear_onecycle(100, 1.0), optax.linear_onecycle_schedule(100, 1.0)),
        (S.cosine_onecycle(100, 1.0), optax.cosine_onecycle_schedule(100, 1.0)),
        (S.piecewise_constant_scales(1.0, {10: 0.5}),
         optax.piecewise_constant_schedule(1.0, {10: 0.5})),
    ]
    steps = list(range(0, 300, 3))
    for ours, theirs in pairs:
        # one compilation over all the steps instead of op-by-op dispatch at every step
        values = jax.jit(jax.vmap(theirs))(jax.numpy.asarray(steps))
        for t, want in zip(steps, values.tolist(), strict=True):
            assert ours(t) == pytest.approx(want, rel=1e-5, abs=1e-7), (ours, t)


def test_against_keras_if_installed():
    os.environ.setdefault("KERAS_BACKEND", "jax")  # read when keras is first imported
    keras = pytest.importorskip("keras")
    ks = keras.optimizers.schedules
    pairs = [
        (S.exponential_decay(0.1, 10, 0.96, staircase=True), ks.ExponentialDecay(0.1, 10, 0.96,
                                                                                  True)),
        (S.inverse_time_decay(0.1, 10, 0.5), ks.InverseTimeDecay(0.1, 10, 0.5)),
        (S.polynomial_decay(0.1, 10, cycle=True), ks.PolynomialDecay(0.1, 10, cycle=True)),
        (S.piecewise_constant([10, 20], [1.0, 0.5, 0.1]),
         ks.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])),
        (S.cosine_decay(0.1, 100, 0.1), ks.CosineDecay(0.1, 100, 0.1)),
        (S.warmup_cosine_decay(0.0, 0.1, 10, 100, 0.1 * 0.1, decay_steps_include_warmup=False),
         ks.CosineDecay(0.0, 100, 0.1, warmup_target=0.1, warmup_steps=10)),
        (S.cosine_decay_restarts(0.1, 10, 2.0, 0.5, 0.1),
         ks.CosineDecayRestarts(0.1, 10, 2.0, 0.5, 0.1)),
    ]
    steps = list(range(0, 300, 3))
    for ours, theirs in pairs:
        if keras.backend.backend() == "jax":  # one compilation instead of op-by-op dispatch
            import jax
            values = jax.jit(jax.vmap(theirs))(jax.numpy.asarray(steps)).tolist()
        else:
            values = [float(keras.ops.convert_to_numpy(theirs(t))) for t in steps]
        for t, want in zip(steps, values, strict=True):
            assert ours(t) == pytest.approx(want, rel=1e-5, abs=1e-7), (ours, t)
