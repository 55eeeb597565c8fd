"""Learning-rate and momentum schedules: pure ``step -> value`` functions (Keras 3 / optax).

A :data:`Schedule` maps ``step`` (the 0-based number of updates already applied, like optax's
``count`` and Keras' ``optimizer.iterations``) to a Python ``float`` computed in double. Every
schedule here is a small frozen dataclass with ``__call__``: it has no state and no side effects,
compares by value, has a readable ``repr``, and describes itself as plain data::

    >>> s = cosine_decay(0.1, decay_steps=1000, alpha=0.01)
    >>> s.to_dict()
    {'kind': 'cosine_decay', 'init_value': 0.1, 'decay_steps': 1000, 'alpha': 0.01, 'exponent': 1.0}
    >>> from_dict(s.to_dict()) == s
    True

A schedule is built by its lowercase name, which is the class itself (``cosine_decay is
CosineDecay``), except two functions: :func:`warmup_cosine_decay`, because its
``decay_steps_include_warmup`` is a required keyword-only argument, which a dataclass cannot express
on Python 3.9, and :func:`sgdr` (optax ``sgdr_schedule``), which builds a :func:`join_schedules` of
warmup-cosine cycles. Keras' ``CosineDecayRestarts`` is :func:`cosine_decay_restarts`.

``to_dict()`` holds only ``str``/``int``/``float``/``bool``/``None``/``list``/``dict`` values, so it
fits a JSON checkpoint; :func:`from_dict` rebuilds any schedule, joined ones included.

The formulas follow Keras 3 ``keras/src/optimizers/schedules/learning_rate_schedule.py`` and optax
``optax/schedules/_schedule.py``, written out in each docstring; where the two libraries disagree
the docstring says how and which one a parameter reproduces. Both libraries usually evaluate in
float32; these schedules evaluate the same expressions in double.

Arguments are validated when a schedule is built (``TypeError`` for a wrong type, ``ValueError``
for a bad value, naming the argument); a step must be an integer ``>= 0``.
"""

from __future__ import annotations

import abc
import math
import numbers
import operator
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields
from fractions import Fraction
from typing import Any, ClassVar

Schedule = Callable[[int], float]
"""A schedule: ``step -> value``, step being the 0-based count of updates already applied."""

Number = int | float

__all__ = [
    "Constant",
    "CosineDecay",
    "CosineDecayRestarts",
    "CosineOnecycle",
    "ExponentialDecay",
    "InverseTimeDecay",
    "JoinedSchedules",
    "LinearOnecycle",
    "PiecewiseConstant",
    "PiecewiseConstantScales",
    "PolynomialDecay",
    "Schedule",
    "WarmupCosineDecay",
    "constant",
    "cosine_decay",
    "cosine_decay_restarts",
    "cosine_onecycle",
    "exponential_decay",
    "from_dict",
    "inverse_time_decay",
    "join_schedules",
    "linear_onecycle",
    "piecewise_constant",
    "piecewise_constant_scales",
    "polynomial_decay",
    "sgdr",
    "warmup_cosine_decay",
]


# --------------------------------------------------------------------------------------------
# Argument checks (each returns the normalized plain value)
# --------------------------------------------------------------------------------------------


def _real(name: str, x: Any) -> float:
    """A finite real number, as a Python float."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return value


def _positive(name: str, x: Any) -> float:
    value = _real(name, x)
    if not value > 0.0:
        raise ValueError(f"{name} must be > 0, got {x!r}")
    return value


def _nonnegative(name: str, x: Any) -> float:
    value = _real(name, x)
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    return value


def _int(name: str, x: Any, minimum: int) -> int:
    """An integer (Python or NumPy; not bool, not float) that is ``>= minimum``."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an integer, got {x!r}")
    try:
        value = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {x!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _steps(name: str, x: Any) -> Number:
    """A positive step count; Keras casts these to float, so a real number is accepted too.

    Integers stay ``int`` (for a plain ``to_dict``); other reals become ``float``.
    """
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        value = operator.index(x)
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
        return value
    return _positive(name, x)


def _bool(name: str, x: Any) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be True or False, got {x!r}")
    return x


def _step(step: Any) -> int:
    """The step a schedule is called with: an integer >= 0."""
    if isinstance(step, bool):
        raise TypeError(f"step must be an integer, got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, got {step!r}") from None
    if value < 0:
        raise ValueError(f"step must be >= 0, got {value}")
    return value


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalizing a frozen dataclass in __post_init__


def plain_data(value: Any) -> Any:
    """A copy of ``value`` made only of builtin scalars, lists and str-keyed dicts (JSON-able):
    what a schedule's ``to_dict`` and a scheduler's ``state_dict`` hold."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("state_dict: only dicts with str keys can be stored")
        return {k: plain_data(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item):  # NumPy / torch scalars
        return plain_data(item())
    raise TypeError(f"state_dict: cannot store a {type(value).__name__} as plain data")


# --------------------------------------------------------------------------------------------
# Base class and (de)serialization
# --------------------------------------------------------------------------------------------

_KINDS: dict[str, type[_ScheduleBase]] = {}


class _ScheduleBase(abc.ABC):
    """Common behaviour: registry of kinds, ``to_dict``. Every subclass is a frozen dataclass."""

    kind: ClassVar[str] = ""
    # Declared for the type checker (dataclasses.fields() wants a dataclass); @dataclass sets it.
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    @abc.abstractmethod
    def __call__(self, step: int) -> float:
        """The value at ``step`` (an integer >= 0), by the formula of the class docstring."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": <lowercase name>, **parameters}`` as plain data (lists, numbers, bools)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            out[f.name] = plain_data(getattr(self, f.name))
        return out


def from_dict(d: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from its ``to_dict()`` (joined schedules included, recursively).

    The parameters are validated exactly as when built by the name ``d["kind"]``.
    """
    if not isinstance(d, Mapping):
        raise TypeError(f"d must be a mapping (a schedule's to_dict()), got {type(d).__name__}")
    if "kind" not in d:
        raise ValueError(f"d must have a 'kind' key, got keys {sorted(d)}")
    params = dict(d)
    kind = params.pop("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown schedule kind {kind!r}; known: {sorted(_KINDS)}")
    if cls is JoinedSchedules and "schedules" in params:
        children = params["schedules"]
        if isinstance(children, (str, bytes, Mapping)) or not isinstance(children, Iterable):
            raise ValueError(f"join_schedules: schedules must be a list of dicts, got {children!r}")
        params["schedules"] = [from_dict(c) for c in children]
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    missing = sorted(f.name for f in fields(cls)
                     if f.name not in params and f.default is MISSING
                     and f.default_factory is MISSING)
    if unknown or missing:
        raise ValueError(f"{kind}: unknown parameters {unknown}, missing parameters {missing}")
    return cls(**params)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant(_ScheduleBase):
    """``f(step) = value`` at every step (optax ``constant_schedule``)."""

    kind: ClassVar[str] = "constant"
    value: float

    def __post_init__(self) -> None:
        _set(self, "value", _real("value", self.value))

    def __call__(self, step: int) -> float:
        _step(step)
        return self.value


constant = Constant


@dataclass(frozen=True)
class PiecewiseConstant(_ScheduleBase):
    """Keras ``PiecewiseConstantDecay(boundaries, values)``: a step function, boundaries INCLUSIVE.

    ::

        f(step) = values[0]      if step <= boundaries[0]
                  values[i]      if boundaries[i-1] < step <= boundaries[i]
                  values[-1]     if step > boundaries[-1]

    So ``values[i+1]`` starts at step ``boundaries[i] + 1`` (optax's
    :func:`piecewise_constant_scales` switches AT the boundary). ``len(values)`` must be
    ``len(boundaries) + 1`` and ``boundaries`` non-decreasing (Keras checks neither the order nor,
    until the first call, that ``boundaries`` is non-empty; here an empty ``boundaries`` with one
    value is a constant).
    """

    kind: ClassVar[str] = "piecewise_constant"
    boundaries: tuple[Number, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        # both sequences are checked before their elements
        boundaries, values = _seq("boundaries", self.boundaries), _seq("values", self.values)
        boundaries = tuple(_norm_boundary(f"boundaries[{i}]", b) for i, b in enumerate(boundaries))
        values = tuple(_real(f"values[{i}]", v) for i, v in enumerate(values))
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"values must have one more element than boundaries, got {len(values)} values "
                f"for {len(boundaries)} boundaries")
        for i in range(1, len(boundaries)):
            if boundaries[i] < boundaries[i - 1]:
                raise ValueError(f"boundaries must be non-decreasing, got boundaries[{i - 1}]="
                                 f"{boundaries[i - 1]} > boundaries[{i}]={boundaries[i]}")
        _set(self, "boundaries", boundaries)
        _set(self, "values", values)

    def __call__(self, step: int) -> float:
        # index = number of boundaries strictly below step: step <= b0 -> 0, b0 < step <= b1 -> 1
        return self.values[bisect_left(self.boundaries, _step(step))]


piecewise_constant = PiecewiseConstant


def _seq(name: str, x: Any) -> tuple[Any, ...]:
    if isinstance(x, (str, bytes, Mapping)) or not isinstance(x, Iterable):
        raise TypeError(f"{name} must be a sequence, got {x!r}")
    return tuple(x)


def _norm_boundary(name: str, x: Any) -> Number:
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return operator.index(x)
    return _real(name, x)


@dataclass(frozen=True)
class PiecewiseConstantScales(_ScheduleBase):
    """optax ``piecewise_constant_schedule(init_value, boundaries_and_scales)``: multiplicative.

    ::

        f(step) = init_value * prod(scale for boundary, scale in boundaries_and_scales
                                    if step >= boundary)

    The scale applies FROM its boundary on (Keras :func:`piecewise_constant` switches one step
    later). ``boundaries_and_scales`` is a ``{boundary: scale}`` mapping or a list of pairs;
    boundaries are integers >= 0 (each at most once), scales >= 0 (as optax checks).
    """

    kind: ClassVar[str] = "piecewise_constant_scales"
    init_value: float
    # stored as sorted (boundary, scale) pairs; None (no scales) becomes ()
    boundaries_and_scales: tuple[tuple[int, float], ...] | None = None

    def __post_init__(self) -> None:
        pairs = _scale_pairs("boundaries_and_scales", self.boundaries_and_scales)
        _set(self, "init_value", _real("init_value", self.init_value))
        _set(self, "boundaries_and_scales", pairs)

    def __call__(self, step: int) -> float:
        step = _step(step)
        value = self.init_value
        # never None here: __post_init__ stored () for it
        for boundary, scale in self.boundaries_and_scales or ():
            if step >= boundary:
                value = value * scale
        return value


piecewise_constant_scales = PiecewiseConstantScales


def _scale_pairs(name: str, x: Any) -> tuple[tuple[int, float], ...]:
    """Mapping ``{boundary: scale}`` or pairs ``[(boundary, scale), ...]`` -> sorted pairs."""
    if x is None:
        return ()
    items = list(x.items()) if isinstance(x, Mapping) else list(_seq(name, x))
    pairs: dict[int, float] = {}
    for i, item in enumerate(items):
        try:
            boundary, scale = item
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}] must be a (boundary, scale) pair, got {item!r}") from None
        boundary = _int(f"{name} boundary", boundary, 0)
        scale = _nonnegative(f"{name} scale at boundary {boundary}", scale)
        if boundary in pairs:
            raise ValueError(f"{name} has boundary {boundary} more than once")
        pairs[boundary] = scale
    return tuple(sorted(pairs.items()))


@dataclass(frozen=True)
class ExponentialDecay(_ScheduleBase):
    """Exponential decay: Keras ``ExponentialDecay`` extended by optax ``exponential_decay``.

    ::

        s = step - transition_begin
        p = s / decay_steps                  (floor(p) if staircase)
        v = init_value                       if s <= 0
            init_value * decay_rate ** p     otherwise
        f(step) = v                          if end_value is None
                  max(v, end_value)          if decay_rate < 1   (end_value is a floor)
                  min(v, end_value)          if decay_rate >= 1  (end_value is a ceiling)

    ``transition_begin=0, end_value=None`` is exactly Keras ``ExponentialDecay(init_value,
    decay_steps, decay_rate, staircase)``; optax's ``transition_steps`` is ``decay_steps``. As in
    optax, the clip also applies before ``transition_begin`` (an ``end_value`` above
    ``init_value`` with a rate < 1 gives ``end_value`` everywhere).

    Differences from the libraries, all on degenerate input: ``decay_steps <= 0`` and
    ``decay_rate <= 0`` raise ``ValueError`` (optax silently returns the constant ``init_value``
    for ``transition_steps <= 0`` or ``decay_rate == 0``, Keras raises for ``decay_steps <= 0`` and
    gives ``init * 0**p``), and a negative ``transition_begin`` raises (optax uses 0).
    """

    kind: ClassVar[str] = "exponential_decay"
    init_value: float
    decay_steps: Number
    decay_rate: float
    staircase: bool = False
    transition_begin: int = 0
    end_value: float | None = None

    def __post_init__(self) -> None:
        _set(self, "init_value", _real("init_value", self.init_value))
        _set(self, "decay_steps", _steps("decay_steps", self.decay_steps))
        _set(self, "decay_rate", _positive("decay_rate", self.decay_rate))
        _set(self, "staircase", _bool("staircase", self.staircase))
        _set(self, "transition_begin", _int("transition_begin", self.transition_begin, 0))
        if self.end_value is not None:
            _set(self, "end_value", _real("end_value", self.end_value))

    def __call__(self, step: int) -> float:
        elapsed = _step(step) - self.transition_begin
        if elapsed <= 0:
            value = self.init_value
        else:
            p = elapsed / self.decay_steps
            if self.staircase:
                p = math.floor(p)
            try:
                factor = self.decay_rate ** p
            except OverflowError:  # rate > 1 far along: inf, as in Keras / optax
                factor = math.inf
            value = self.init_value * factor
        if self.end_value is not None:
            # optax: clip_fn = jnp.maximum if decay_rate < 1 else jnp.minimum (rate == 1: minimum)
            value = max(value, self.end_value) if self.decay_rate < 1.0 else min(
                value, self.end_value)
        return value


exponential_decay = ExponentialDecay


@dataclass(frozen=True)
class InverseTimeDecay(_ScheduleBase):
    """Keras ``InverseTimeDecay``::

        p = step / decay_steps               (floor(p) if staircase)
        f(step) = init_value / (1 + decay_rate * p)

    ``decay_steps > 0``, ``decay_rate >= 0``. (optax has no inverse-time schedule.)
    """

    kind: ClassVar[str] = "inverse_time_decay"
    init_value: float
    decay_steps: Number
    decay_rate: float
    staircase: bool = False

    def __post_init__(self) -> None:
        _set(self, "init_value", _real("init_value", self.init_value))
        _set(self, "decay_steps", _steps("decay_steps", self.decay_steps))
        _set(self, "decay_rate", _nonnegative("decay_rate", self.decay_rate))
        _set(self, "staircase", _bool("staircase", self.staircase))

    def __call__(self, step: int) -> float:
        p = _step(step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.init_value / (1.0 + self.decay_rate * p)


inverse_time_decay = InverseTimeDecay


@dataclass(frozen=True)
class PolynomialDecay(_ScheduleBase):
    """Keras ``PolynomialDecay`` (``end_value`` is Keras' ``end_learning_rate``, default 1e-4),
    extended by optax ``polynomial_schedule``'s ``transition_begin``::

        n = max(step - transition_begin, 0)
        if cycle:  T = decay_steps * (1 if n == 0 else ceil(n / decay_steps)); s = n
        else:      T = decay_steps;  s = min(n, decay_steps)
        f(step) = (init_value - end_value) * (1 - s / T) ** power + end_value

    With ``cycle`` the value reaches ``end_value`` at every multiple ``k * decay_steps`` and jumps
    up at the next step, decaying over a horizon ``(k+1) * decay_steps`` each time.
    ``transition_begin=0`` (the default) is exactly Keras ``PolynomialDecay(init_value,
    decay_steps, end_value, power, cycle)``. optax ``polynomial_schedule(init_value, end_value,
    power, transition_steps, transition_begin)`` is ``polynomial_decay(init_value,
    decay_steps=transition_steps, end_value=end_value, power=power,
    transition_begin=transition_begin)`` (``cycle=False``): optax clips its count,
    ``clip(step - transition_begin, 0, transition_steps)``, which is ``s`` above, so the value is
    ``init_value`` up to step ``transition_begin`` and ``end_value`` from ``transition_begin +
    transition_steps`` on; optax's ``linear_schedule`` is ``power=1``. optax requires
    ``end_value`` (Keras defaults it to 1e-4), and on degenerate input differs: optax returns the
    constant ``init_value`` for ``transition_steps <= 0`` and uses 0 for a negative
    ``transition_begin``; here both raise ``ValueError``. ``decay_steps > 0``, ``power > 0``,
    ``transition_begin >= 0`` (an integer).
    """

    kind: ClassVar[str] = "polynomial_decay"
    init_value: float
    decay_steps: Number
    end_value: float = 0.0001
    power: float = 1.0
    cycle: bool = False
    transition_begin: int = 0

    def __post_init__(self) -> None:
        _set(self, "init_value", _real("init_value", self.init_value))
        _set(self, "decay_steps", _steps("decay_steps", self.decay_steps))
        _set(self, "end_value", _real("end_value", self.end_value))
        _set(self, "power", _positive("power", self.power))
        _set(self, "cycle", _bool("cycle", self.cycle))
        _set(self, "transition_begin", _int("transition_begin", self.transition_begin, 0))

    def __call__(self, step: int) -> float:
        s: float = max(_step(step) - self.transition_begin, 0)
        horizon: float = self.decay_steps
        if self.cycle:
            # the first multiple of decay_steps that is >= step; 1 at step 0
            horizon = horizon * (1 if s == 0 else math.ceil(s / self.decay_steps))
        else:
            s = min(s, horizon)
        p = s / horizon
        return (self.init_value - self.end_value) * _power(1.0 - p, self.power) + self.end_value


polynomial_decay = PolynomialDecay


def _power(base: float, exponent: float) -> float:
    """``base ** exponent`` for a ``base >= 0``, where it is real: typeshed types a float power as
    ``Any`` because a negative base gives a complex."""
    return float(base ** exponent)


def _half_cosine(fraction: float) -> float:
    """``0.5 * (1 + cos(pi * fraction))``: 1 at fraction 0, exactly 0 at fraction 1."""
    return 0.5 * (1.0 + math.cos(math.pi * fraction))


@dataclass(frozen=True)
class CosineDecay(_ScheduleBase):
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``, then flat::

        s = min(step, decay_steps)
        c = 0.5 * (1 + cos(pi * s / decay_steps))
        f(step) = init_value * ((1 - alpha) * c ** exponent + alpha)

    Keras ``CosineDecay(init_value, decay_steps, alpha)`` (``exponent=1``; for its warmup see
    :func:`warmup_cosine_decay`) and optax ``cosine_decay_schedule(init_value, decay_steps, alpha,
    exponent)`` (the exponent applies to ``c`` only, not to ``alpha``). At ``step =
    decay_steps / 2``: ``init_value * (0.5 * (1 - alpha) + alpha)`` when ``exponent == 1``.
    ``decay_steps > 0``, ``exponent > 0``.
    """

    kind: ClassVar[str] = "cosine_decay"
    init_value: float
    decay_steps: Number
    alpha: float = 0.0
    exponent: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "init_value", _real("init_value", self.init_value))
        _set(self, "decay_steps", _steps("decay_steps", self.decay_steps))
        _set(self, "alpha", _real("alpha", self.alpha))
        _set(self, "exponent", _positive("exponent", self.exponent))

    def __call__(self, step: int) -> float:
        s = min(_step(step), self.decay_steps)
        c = _half_cosine(s / self.decay_steps)
        return self.init_value * ((1.0 - self.alpha) * _power(c, self.exponent) + self.alpha)


cosine_decay = CosineDecay


@dataclass(frozen=True)
class WarmupCosineDecay(_ScheduleBase):
    """Linear warmup, then cosine decay (Keras or optax), built by :func:`warmup_cosine_decay`
    (whose docstring compares the libraries)::

        W = warmup_steps
        D = decay_steps - W    if decay_steps_include_warmup   (optax), else decay_steps (Keras)
        f(step) = init_value + (peak_value - init_value) * step / W       if step < W
                  end_value + (peak_value - end_value) * c ** exponent    otherwise,
                  c = 0.5 * (1 + cos(pi * min(step - W, D) / D))
    """

    kind: ClassVar[str] = "warmup_cosine_decay"
    init_value: float
    peak_value: float
    warmup_steps: int
    decay_steps: Number
    decay_steps_include_warmup: bool
    end_value: float = 0.0
    exponent: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "init_value", _real("init_value", self.init_value))
        _set(self, "peak_value", _real("peak_value", self.peak_value))
        _set(self, "warmup_steps", _int("warmup_steps", self.warmup_steps, 0))
        _set(self, "decay_steps", _steps("decay_steps", self.decay_steps))
        _set(self, "decay_steps_include_warmup",
             _bool("decay_steps_include_warmup", self.decay_steps_include_warmup))
        _set(self, "end_value", _real("end_value", self.end_value))
        _set(self, "exponent", _positive("exponent", self.exponent))
        if self.decay_steps_include_warmup and not self.decay_steps > self.warmup_steps:
            raise ValueError(
                f"decay_steps ({self.decay_steps}) must be > warmup_steps ({self.warmup_steps}) "
                "with decay_steps_include_warmup=True (optax counts the warmup inside "
                "decay_steps, leaving decay_steps - warmup_steps steps of cosine)")

    @property
    def cosine_steps(self) -> Number:
        """Length of the cosine phase."""
        if self.decay_steps_include_warmup:
            return self.decay_steps - self.warmup_steps
        return self.decay_steps

    def __call__(self, step: int) -> float:
        step = _step(step)
        warmup = self.warmup_steps
        if step < warmup:
            return self.init_value + (self.peak_value - self.init_value) * (step / warmup)
        horizon = self.cosine_steps
        c = _half_cosine(min(step - warmup, horizon) / horizon)
        return self.end_value + (self.peak_value - self.end_value) * _power(c, self.exponent)


def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: Number,
    end_value: float = 0.0,
    exponent: float = 1.0,
    *,
    decay_steps_include_warmup: bool,
) -> WarmupCosineDecay:
    """Linear warmup from ``init_value`` to ``peak_value``, then cosine to ``end_value``::

        W = warmup_steps
        D = decay_steps - W    if decay_steps_include_warmup   (optax)
            decay_steps        otherwise                        (Keras)
        f(step) = init_value + (peak_value - init_value) * step / W       if step < W
                  end_value + (peak_value - end_value) * c ** exponent    otherwise,
                  c = 0.5 * (1 + cos(pi * min(step - W, D) / D))

    The value is ``peak_value`` at step ``W`` and exactly ``end_value`` from step ``W + D`` on,
    i.e. from ``decay_steps`` (optax) or ``warmup_steps + decay_steps`` (Keras).

    ``decay_steps_include_warmup`` is required because the libraries disagree:

    - optax ``warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, decay_steps,
      end_value, exponent)``: ``decay_steps`` is the TOTAL length, warmup included
      (``decay_steps_include_warmup=True``; needs ``decay_steps > warmup_steps``).
    - Keras ``CosineDecay(initial_learning_rate=init_value, decay_steps, alpha,
      warmup_target=peak_value, warmup_steps)``: the cosine lasts ``decay_steps`` AFTER the warmup
      (``decay_steps_include_warmup=False``), and ends at ``alpha * warmup_target``: pass
      ``end_value = alpha * peak_value`` (Keras' decay ``peak * ((1 - alpha) * c + alpha)`` is
      ``end + (peak - end) * c`` with that ``end``). Keras has no ``exponent`` (keep 1).

    With ``warmup_steps=0`` the schedule starts at ``peak_value`` and ``init_value`` is unused
    (as in both libraries). One difference from optax: optax computes the decay as
    ``peak * ((1 - a) * c ** exponent + a)`` with ``a = end_value / peak_value``, but ``a = 0``
    when ``peak_value == 0``, so its schedule stays 0 after the warmup whatever ``end_value``;
    here it goes from 0 to ``end_value``. For ``peak_value != 0`` the two agree to rounding.
    """
    return WarmupCosineDecay(init_value, peak_value, warmup_steps, decay_steps,
                             decay_steps_include_warmup, end_value, exponent)


@dataclass(frozen=True)
class CosineDecayRestarts(_ScheduleBase):
    """Keras ``CosineDecayRestarts`` (SGDR, Loshchilov & Hutter): cosine cycles with restarts.

    Period ``i`` (from 0) lasts ``T0 * t_mul**i`` steps (``T0 = first_decay_steps``), starts at
    step ``S_i = T0 * (t_mul**i - 1) / (t_mul - 1)`` (``S_i = i * T0`` if ``t_mul == 1``), and its
    cosine has amplitude ``m_mul**i``; ``alpha`` is NOT scaled by it::

        i = the largest integer with S_i <= step
        r = (step - S_i) / (T0 * t_mul**i)                  (0 at a restart, -> 1 at its end)
        f(step) = init_value * ((1 - alpha) * 0.5 * m_mul**i * (1 + cos(pi * r)) + alpha)

    Keras computes ``i = floor(log(1 - x * (1 - t_mul)) / log(t_mul))`` with ``x = step / T0``
    and ``r = (x - (1 - t_mul**i) / (1 - t_mul)) / t_mul**i``; this class does the same in double,
    then corrects ``i`` by exact rational checks of the boundaries ``S_i`` and ``S_{i+1}`` (of the
    double values of ``T0`` and ``t_mul``) wherever the log ratio lies within rounding of an
    integer, and there computes ``r`` exactly too. A restart is therefore never late or early: at
    an exact restart step ``S_i`` the value is ``init_value * ((1 - alpha) * m_mul**i + alpha)``.
    (Keras' rounded log ratio falls just below ``i`` at some restart steps, which then give the
    bottom of the previous period, ``alpha * init_value``, and restart one step late: in double
    e.g. step 1210 for ``first_decay_steps=10, t_mul=3``; in Keras' float32 e.g. step 81910 for
    ``first_decay_steps=10, t_mul=2``. Elsewhere the two agree to rounding.)
    ``first_decay_steps > 0``, ``t_mul >= 1``, ``m_mul >= 0``. Not to be confused with optax
    ``sgdr_schedule``, which is :func:`sgdr`.
    """

    kind: ClassVar[str] = "cosine_decay_restarts"
    init_value: float
    first_decay_steps: Number
    t_mul: float = 2.0
    m_mul: float = 1.0
    alpha: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "init_value", _real("init_value", self.init_value))
        _set(self, "first_decay_steps", _steps("first_decay_steps", self.first_decay_steps))
        t_mul = _real("t_mul", self.t_mul)
        if not t_mul >= 1.0:
            raise ValueError(
                f"t_mul must be >= 1, got {self.t_mul!r} (shrinking periods end the schedule after "
                "first_decay_steps / (1 - t_mul) steps, where Keras returns NaN)")
        _set(self, "t_mul", t_mul)
        _set(self, "m_mul", _nonnegative("m_mul", self.m_mul))
        _set(self, "alpha", _real("alpha", self.alpha))

    def restart_index(self, step: int) -> tuple[int, float]:
        """``(i, r)``: the period ``step`` falls in (the largest ``i`` with ``S_i <= step``) and
        how far into it, ``r`` in ``[0, 1)`` (see the class docstring)."""
        step = _step(step)
        fraction = step / self.first_decay_steps
        t_mul = self.t_mul
        if t_mul == 1.0:
            i = math.floor(fraction)
            if abs(fraction - round(fraction)) > 1e-9 * (1.0 + fraction):
                return i, fraction - i
        else:
            ratio = math.log(1.0 - fraction * (1.0 - t_mul)) / math.log(t_mul)
            i = math.floor(ratio)
            # How far rounding can move the ratio: 1 - x(1 - t_mul) carries a few ulps of its
            # magnitude, so its log a few ulps absolute, divided by log(t_mul); the division and
            # the logs add a few ulps of the ratio. 64 ulps cover both many times over; farther
            # from an integer, floor(ratio) is exact. (A margin that grows as log(t_mul) shrinks
            # only as fast as the error does keeps t_mul near 1 off the exact path.)
            margin = 64 * sys.float_info.epsilon * (1.0 + abs(ratio) + 1.0 / math.log(t_mul))
            if abs(ratio - round(ratio)) > margin:
                sum_r = (1.0 - t_mul ** i) / (1.0 - t_mul)
                return i, (fraction - sum_r) / t_mul ** i
        return self._exact_restart_index(step, max(i, 0))

    def _exact_restart_index(self, step: int, guess: int) -> tuple[int, float]:
        """``restart_index`` by exact rational arithmetic, starting from the candidate ``guess``."""
        first, t_mul = Fraction(self.first_decay_steps), Fraction(self.t_mul)

        def start(i: int) -> Fraction:  # S_i, exactly
            return first * i if t_mul == 1 else first * (t_mul ** i - 1) / (t_mul - 1)

        i = guess
        while i > 0 and start(i) > step:
            i -= 1
        while start(i + 1) <= step:
            i += 1
        return i, float((step - start(i)) / (first * t_mul ** i))

    def __call__(self, step: int) -> float:
        i, fraction = self.restart_index(step)
        m_fac = self.m_mul ** i
        cosine_decayed = 0.5 * m_fac * (1.0 + math.cos(math.pi * fraction))
        return self.init_value * ((1.0 - self.alpha) * cosine_decayed + self.alpha)


cosine_decay_restarts = CosineDecayRestarts


_SGDR_KEYS = ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value", "exponent")


def sgdr(cosine_kwargs: Iterable[Mapping[str, Any]]) -> JoinedSchedules:
    """optax ``sgdr_schedule(cosine_kwargs)``: warm restarts as joined warmup-cosine cycles.

    Each dict of ``cosine_kwargs`` holds the arguments of one optax
    ``warmup_cosine_decay_schedule`` (``init_value``, ``peak_value``, ``warmup_steps``,
    ``decay_steps``, optional ``end_value=0.0``, ``exponent=1.0``), whose ``decay_steps`` is the
    cycle's whole length, warmup included. Cycle ``k`` starts at ``B_k = sum of the decay_steps
    of the cycles before it`` and restarts its count there::

        f(step) = cycle_k(step - B_k)      for B_k <= step < B_{k+1}   (the last cycle continues)
        cycle_k = warmup_cosine_decay(**cosine_kwargs[k], decay_steps_include_warmup=True)
        cycle(t) = init + (peak - init) * t / W                        if t < W
                   end + (peak - end) * c ** exponent                  otherwise,
                   c = 0.5 * (1 + cos(pi * min(t - W, D - W) / (D - W)))     (D = decay_steps)

    The result is ``join_schedules([cycle_0, cycle_1, ...], [B_1, B_2, ...])`` (its ``to_dict``
    is a ``join_schedules``). ``decay_steps`` must be integers here (they are step boundaries),
    with ``decay_steps > warmup_steps``. For Keras' ``CosineDecayRestarts`` (also called SGDR)
    use :func:`cosine_decay_restarts` (which ``sgdr`` used to alias).
    """
    if isinstance(cosine_kwargs, (str, bytes, Mapping)) or not isinstance(cosine_kwargs, Iterable):
        raise TypeError(
            "sgdr takes optax's cosine_kwargs: an iterable of dicts of warmup_cosine_decay "
            f"arguments, got {cosine_kwargs!r} (for Keras' CosineDecayRestarts, call "
            "cosine_decay_restarts)")
    cycles: list[Schedule] = []
    boundaries: list[int] = []
    begin = 0
    for k, kwargs in enumerate(cosine_kwargs):
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"cosine_kwargs[{k}] must be a dict of warmup_cosine_decay arguments, "
                            f"got {kwargs!r}")
        unknown = sorted(set(kwargs) - set(_SGDR_KEYS))
        missing = sorted(set(_SGDR_KEYS[:4]) - set(kwargs))
        if unknown or missing:
            raise TypeError(f"cosine_kwargs[{k}]: unknown arguments {unknown}, missing arguments "
                            f"{missing} (warmup_cosine_decay takes {list(_SGDR_KEYS)})")
        decay_steps = _int(f"cosine_kwargs[{k}]['decay_steps']", kwargs["decay_steps"], 1)
        cycles.append(warmup_cosine_decay(**{**kwargs, "decay_steps": decay_steps},
                                          decay_steps_include_warmup=True))
        if k:
            boundaries.append(begin)
        begin += decay_steps
    if not cycles:
        raise ValueError("cosine_kwargs must hold at least one cycle")
    return JoinedSchedules(tuple(cycles), tuple(boundaries))


def linear_interpolate(start: float, end: float, pct: float) -> float:
    """``(end - start) * pct + start``: from ``start`` (pct 0) to ``end`` (pct 1)."""
    return (end - start) * pct + start


def cosine_interpolate(start: float, end: float, pct: float) -> float:
    """``end + (start - end) / 2 * (cos(pi * pct) + 1)``: from ``start`` (pct 0) to ``end``."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _piecewise_interpolate(
    interpolate: Callable[[float, float, float], float],
    init_value: float,
    boundaries: Sequence[int],
    scales: Sequence[float],
    step: int,
) -> float:
    """optax ``piecewise_interpolate_schedule`` (boundaries sorted, >= 0)::

        knots  = 0, b_1, ..., b_n      values = init, init*s_1, init*s_1*s_2, ...
        f(step) = interpolate(values[k], values[k+1], (step - knots[k]) / (knots[k+1] - knots[k]))
                  on knots[k] <= step < knots[k+1];    values[n] for step >= b_n

    so ``f(0) = init`` exactly (unless ``b_1 == 0``: an empty first interval, which starts the
    schedule at ``init*s_1``, as in optax).
    """
    values = [init_value]
    for scale in scales:
        values.append(values[-1] * scale)
    bounds = [0, *boundaries]
    if step >= bounds[-1]:
        return values[-1]
    i = bisect_right(bounds, step) - 1  # bounds[i] <= step < bounds[i + 1]: the last such i
    pct = (step - bounds[i]) / (bounds[i + 1] - bounds[i])
    return interpolate(values[i], values[i + 1], pct)


def _onecycle_check(transition_steps: Any, peak_value: Any, div_factor: Any,
                    final_div_factor: Any) -> tuple[int, float, float, float]:
    return (_int("transition_steps", transition_steps, 1), _real("peak_value", peak_value),
            _positive("div_factor", div_factor), _positive("final_div_factor", final_div_factor))


@dataclass(frozen=True)
class LinearOnecycle(_ScheduleBase):
    """optax ``linear_onecycle_schedule``: three linear phases through four knots.

    With ``v0 = peak_value / div_factor``, ``b1 = int(pct_start * transition_steps)``,
    ``b2 = int(pct_final * transition_steps)``, ``N = transition_steps``, the knots are
    (optax ``piecewise_interpolate_schedule('linear', v0, {b1: div_factor, b2: 1/div_factor,
    N: 1/final_div_factor})``, values built by cumulative products)::

        step 0: v0,  b1: v1 = v0*div_factor (~peak_value),  b2: v2 = v1/div_factor (~v0),
        N:  v3 = v2/final_div_factor
        f(step) = (v[k+1] - v[k]) * (step - knot[k]) / (knot[k+1] - knot[k]) + v[k]
                  on [knot[k], knot[k+1]);   v3 for step >= N

    The first knot is at step 0 (optax builds its bounds from 0), so ``f(0) = v0`` exactly and
    ``f(b1) = v1``; with ``b1 == 0`` (``pct_start * transition_steps < 1``) the first phase is empty
    and ``f(0) = v1``, as in optax. PyTorch ``OneCycleLR`` also starts at ``max_lr / div_factor``
    but reaches the peak at step ``pct_start * total_steps - 1`` and has no third knot at ``b2``.
    Requires ``b1 < b2 < N`` (optax merges colliding boundaries silently), ``div_factor > 0``,
    ``final_div_factor > 0``. Evaluated in double (optax: float32, see the README).
    """

    kind: ClassVar[str] = "linear_onecycle"
    transition_steps: int
    peak_value: float
    pct_start: float = 0.3
    pct_final: float = 0.85
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self) -> None:
        steps, peak, div, final_div = _onecycle_check(
            self.transition_steps, self.peak_value, self.div_factor, self.final_div_factor)
        pct_start = _nonnegative("pct_start", self.pct_start)
        pct_final = _real("pct_final", self.pct_final)
        b1, b2 = int(pct_start * steps), int(pct_final * steps)
        if not b1 < b2 < steps:
            raise ValueError(
                "pct_start and pct_final must give phase boundaries int(pct_start * "
                "transition_steps) < int(pct_final * transition_steps) < transition_steps, got "
                f"{b1}, {b2}, {steps} (pct_start={pct_start}, pct_final={pct_final})")
        for name, value in (("transition_steps", steps), ("peak_value", peak),
                            ("pct_start", pct_start), ("pct_final", pct_final),
                            ("div_factor", div), ("final_div_factor", final_div)):
            _set(self, name, value)

    def __call__(self, step: int) -> float:
        n = self.transition_steps
        boundaries = (int(self.pct_start * n), int(self.pct_final * n), n)
        scales = (self.div_factor, 1.0 / self.div_factor, 1.0 / self.final_div_factor)
        return _piecewise_interpolate(linear_interpolate, self.peak_value / self.div_factor,
                                      boundaries, scales, _step(step))


linear_onecycle = LinearOnecycle


@dataclass(frozen=True)
class CosineOnecycle(_ScheduleBase):
    """optax ``cosine_onecycle_schedule``: cosine up to the peak, cosine down to the floor.

    With ``v0 = peak_value / div_factor``, ``b1 = int(pct_start * transition_steps)``,
    ``N = transition_steps``, knots (optax ``piecewise_interpolate_schedule('cosine', v0,
    {b1: div_factor, N: 1/(div_factor*final_div_factor)})``)::

        step 0: v0,   b1: v1 = v0*div_factor (~peak_value),
        N: v2 = v1/(div_factor*final_div_factor)
        f(step) = v[k+1] + (v[k] - v[k+1]) / 2 * (cos(pi * pct) + 1),
                  pct = (step - knot[k]) / (knot[k+1] - knot[k])   on [knot[k], knot[k+1])
        f(step) = v2 for step >= N     (v2 ~ v0 / final_div_factor)

    As in :func:`linear_onecycle` the first knot is at step 0 (``f(0) = v0`` exactly unless
    ``b1 == 0``). Requires ``b1 < N``, ``div_factor > 0``, ``final_div_factor > 0``.
    """

    kind: ClassVar[str] = "cosine_onecycle"
    transition_steps: int
    peak_value: float
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self) -> None:
        steps, peak, div, final_div = _onecycle_check(
            self.transition_steps, self.peak_value, self.div_factor, self.final_div_factor)
        pct_start = _nonnegative("pct_start", self.pct_start)
        b1 = int(pct_start * steps)
        if not b1 < steps:
            raise ValueError(
                "pct_start must give a phase boundary int(pct_start * transition_steps) < "
                f"transition_steps, got {b1} >= {steps} (pct_start={pct_start})")
        for name, value in (("transition_steps", steps), ("peak_value", peak),
                            ("pct_start", pct_start), ("div_factor", div),
                            ("final_div_factor", final_div)):
            _set(self, name, value)

    def __call__(self, step: int) -> float:
        n = self.transition_steps
        boundaries = (int(self.pct_start * n), n)
        scales = (self.div_factor, 1.0 / (self.div_factor * self.final_div_factor))
        return _piecewise_interpolate(cosine_interpolate, self.peak_value / self.div_factor,
                                      boundaries, scales, _step(step))


cosine_onecycle = CosineOnecycle


@dataclass(frozen=True)
class JoinedSchedules(_ScheduleBase):
    """optax ``join_schedules``: switch schedule at each boundary, restarting its step count::

        f(step) = schedules[0](step)                          if step < boundaries[0]
                  schedules[i+1](step - boundaries[i])        if boundaries[i] <= step
                                                              (the last such i)

    ``len(boundaries) == len(schedules) - 1``; boundaries are integers >= 0, non-decreasing (a
    schedule between two equal boundaries is never used). Any ``step -> value`` callable may be
    joined; only schedules from this module can go through ``to_dict``.
    """

    kind: ClassVar[str] = "join_schedules"
    schedules: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def __post_init__(self) -> None:
        schedules = _seq("schedules", self.schedules)
        boundaries = tuple(_int(f"boundaries[{i}]", b, 0)
                           for i, b in enumerate(_seq("boundaries", self.boundaries)))
        if not schedules:
            raise ValueError("schedules must hold at least one schedule")
        for i, s in enumerate(schedules):
            if not callable(s):
                raise TypeError(f"schedules[{i}] must be callable (a schedule), got {s!r}")
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"boundaries must have one element fewer than schedules, got {len(boundaries)} "
                f"boundaries for {len(schedules)} schedules")
        for i in range(1, len(boundaries)):
            if boundaries[i] < boundaries[i - 1]:
                raise ValueError(f"boundaries must be non-decreasing, got boundaries[{i - 1}]="
                                 f"{boundaries[i - 1]} > boundaries[{i}]={boundaries[i]}")
        _set(self, "schedules", schedules)
        _set(self, "boundaries", boundaries)

    def __call__(self, step: int) -> float:
        step = _step(step)
        schedule, offset = self.schedules[0], 0
        for boundary, nxt in zip(self.boundaries, self.schedules[1:], strict=True):
            if step >= boundary:
                schedule, offset = nxt, boundary
        return float(schedule(step - offset))

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "join_schedules", "schedules": [child.to_dict(), ...], "boundaries": [...]}``.

        Raises ``TypeError`` if a child is a plain callable without ``to_dict``.
        """
        children = []
        for i, s in enumerate(self.schedules):
            to_dict = getattr(s, "to_dict", None)
            if not callable(to_dict):
                raise TypeError(f"schedules[{i}] ({s!r}) has no to_dict(); only schedules from "
                                "fastmomentum.schedules can be described as data")
            children.append(to_dict())
        return {"kind": self.kind, "schedules": children, "boundaries": list(self.boundaries)}


join_schedules = JoinedSchedules
