"""The public API: every public name exists and is documented, and every update rule, scheduler
and schedule states its formula in its docstring. The names are found by walking ``__all__`` and
the modules' members, so a new public name is checked without editing this file."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from collections.abc import Callable, Iterator

import pytest
from packaging.version import Version

import fastmomentum as fm
from fastmomentum import (
    checkpoint,
    flat,
    functional,
    guards,
    lr_scheduler,
    optim,
    schedules,
)

MODULES = [fm, functional, optim, lr_scheduler, schedules, checkpoint, flat, guards]

# A formula is an equation of the quantity each kind computes, e.g. ``p <- p - lr*g``,
# ``lr_t = base_lr * gamma ** t``, ``f(step) = init_value * ...``.
UPDATE_RULE = re.compile(r"\bp\s*(<-|←)")
SCHEDULER = re.compile(r"\blr_t\s*=")
SCHEDULE = re.compile(r"\bf\(step\)\s*=")


def public_members(module) -> Iterator[tuple[str, object]]:
    """``module.__all__``, and the public functions and classes defined in the module."""
    names = set(module.__all__)
    for name, obj in vars(module).items():
        if (not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                and obj.__module__ == module.__name__):
            names.add(name)
    for name in sorted(names):
        yield f"{module.__name__}.{name}", getattr(module, name)


def public_methods(cls: type) -> Iterator[tuple[str, object]]:
    """The public methods and properties of ``cls``, its own and those it inherits from this
    package's classes (not from the standard library's)."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        owner = next(k for k in cls.__mro__ if name in vars(k))
        if not owner.__module__.startswith("fastmomentum"):
            continue
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if inspect.isfunction(attr) or isinstance(attr, property):
            yield f"{cls.__module__}.{cls.__qualname__}.{name}", attr


def documented_objects() -> dict[str, object]:
    """Every public module, function, class, method and property, by a name of each."""
    found: dict[int, tuple[str, object]] = {}
    for module in MODULES:
        found.setdefault(id(module), (module.__name__, module))
        for name, obj in public_members(module):
            if inspect.isclass(obj):
                for method_name, method in public_methods(obj):
                    found.setdefault(id(method), (method_name, method))
            if inspect.isroutine(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
                found.setdefault(id(obj), (name, obj))
    return dict(found.values())


def own_docstring(obj: object) -> str:
    """``obj``'s own docstring: not a base class's, nor the signature that ``dataclass`` and
    ``NamedTuple`` write for a class without one."""
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not doc or (inspect.isclass(obj) and re.fullmatch(rf"{obj.__name__}\(.*\)", doc)):
        return ""
    return doc


def is_schedule(obj: object) -> bool:
    """A schedule class (its instances map a step to a value), or a function that builds one."""
    if inspect.isclass(obj):
        return issubclass(obj, Callable)
    # The annotation is a string (postponed evaluation), the name of the class built.
    returns = vars(inspect.getmodule(obj)).get(obj.__annotations__.get("return", ""))
    return inspect.isclass(returns) and is_schedule(returns)


def formula_cases() -> list[tuple[str, object, re.Pattern[str]]]:
    """Each update rule, scheduler and schedule, with the formula its docstring must state."""
    cases = [(name, obj, UPDATE_RULE) for name, obj in public_members(functional)
             if inspect.isroutine(obj)]  # the compiled entry points are builtins
    cases += [(name, obj, UPDATE_RULE) for name, obj in public_members(optim)
              if inspect.isclass(obj) and hasattr(obj, "step")]
    cases += [(name, obj, SCHEDULER) for name, obj in public_members(lr_scheduler)
              if inspect.isclass(obj) and hasattr(obj, "step")]
    cases += [(name, obj, SCHEDULE) for name, obj in public_members(schedules)
              if (inspect.isclass(obj) or inspect.isfunction(obj)) and is_schedule(obj)]
    return cases


DOCUMENTED = documented_objects()
FORMULAS = formula_cases()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_names_exist(module):
    assert module.__all__, f"{module.__name__}.__all__ is empty"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names what it lacks: {missing}"


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_public_name_has_a_docstring(name):
    assert own_docstring(DOCUMENTED[name]).strip(), f"{name} has no docstring"


@pytest.mark.parametrize(("name", "obj", "pattern"), FORMULAS, ids=[c[0] for c in FORMULAS])
def test_docstring_states_the_formula(name, obj, pattern):
    assert pattern.search(own_docstring(obj)), (
        f"{name}'s docstring states no formula (a line matching {pattern.pattern!r})")


def test_the_walk_finds_every_kind():
    # Guards the walk itself: were it to find nothing, the tests above would pass vacuously.
    kinds = {pattern.pattern: 0 for pattern in (UPDATE_RULE, SCHEDULER, SCHEDULE)}
    for _, _, pattern in FORMULAS:
        kinds[pattern.pattern] += 1
    assert all(kinds.values()), kinds
    names = {name for name, _, _ in FORMULAS}
    for name in ("fastmomentum.functional.sgd_", "fastmomentum.optim.SGD",
                 "fastmomentum.lr_scheduler.CosineAnnealingLR",
                 "fastmomentum.schedules.warmup_cosine_decay"):
        assert name in names
    assert "fastmomentum.optim.SGD.step" in DOCUMENTED


def test_version_is_the_installed_distributions():
    assert str(Version(fm.__version__)) == fm.__version__  # PEP 440, in normal form
    assert fm.__version__ == importlib.metadata.version("fastmomentum")
