"""Checkpoints as ``.npz`` files: NumPy arrays plus a JSON description, never pickle.

Any tree of dicts, lists, tuples, plain scalars (``None``, ``bool``, ``int``, ``float``, ``str``)
and NumPy arrays — an optimizer's ``state_dict()``, a scheduler's, the parameters themselves —
becomes a flat ``{name: array}`` mapping that ``np.savez`` writes and
``np.load(..., allow_pickle=False)`` reads back::

    fm.checkpoint.save("ckpt.npz", {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                    "params": params})
    ckpt = fm.checkpoint.load("ckpt.npz")
    opt.load_state_dict(ckpt["optimizer"])

:func:`convert` moves optimizer state between the torch layout (``b``, no lr inside) and the keras
layout (``v = -lr*b``). Damaged files raise ``ValueError``; NumPy scalars come back as the Python
scalars of equal value; ``inf``/``nan`` are kept (in Python's JSON dialect).
"""

from __future__ import annotations

import json
import numbers
import os
import zipfile
from typing import Any, Union

import numpy as np

from .optim import BUFFER_KEY

__all__ = ["convert", "from_arrays", "load", "save", "to_arrays"]

FORMAT = "fastmomentum-checkpoint/1"
_META = "__fastmomentum__"  # the JSON description's entry name
_ARRAY, _ITEMS, _TUPLE = "__array__", "__items__", "__tuple__"  # markers inside the JSON
_MARKERS = ({_ARRAY}, {_ITEMS}, {_TUPLE})

PathLike = Union[str, "os.PathLike[str]"]


def to_arrays(tree: Any) -> dict[str, np.ndarray]:
    """Flatten ``tree`` into ``{name: array}``: each array under its own name, everything else
    in one JSON string (dicts with non-str keys and tuples keep their types)."""
    arrays: dict[str, np.ndarray] = {}

    def encode(node: Any) -> Any:
        if isinstance(node, np.ndarray):
            if node.dtype.hasobject:
                raise TypeError("cannot store an object array in a checkpoint (it would need "
                                "pickle)")
            name = f"a{len(arrays)}"
            arrays[name] = node
            return {_ARRAY: name}
        if isinstance(node, np.generic):
            node = node.item()  # NumPy scalars are stored as the Python scalar of equal value
        if isinstance(node, dict):
            # str keys as a JSON object, unless the object would read as one of the markers
            if all(isinstance(k, str) for k in node) and set(node) not in _MARKERS:
                return {k: encode(v) for k, v in node.items()}
            return {_ITEMS: [[encode(k), encode(v)] for k, v in node.items()]}
        if isinstance(node, tuple):
            return {_TUPLE: [encode(v) for v in node]}
        if isinstance(node, list):
            return [encode(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store a {type(node).__name__} in a checkpoint (plain data and "
                        "NumPy arrays only)")

    description = json.dumps({"format": FORMAT, "tree": encode(tree)})
    return {_META: np.array(description), **arrays}


def from_arrays(arrays: Any) -> Any:
    """Rebuild the tree from :func:`to_arrays`' mapping (or an opened ``np.load`` file).

    Raises ``ValueError`` for anything that is not an intact fastmomentum checkpoint."""
    if _META not in arrays:
        raise ValueError("not a fastmomentum checkpoint: no description entry")
    try:
        description = json.loads(str(arrays[_META]))
        if not isinstance(description, dict):
            raise ValueError("the description is not a JSON object")
    except ValueError as e:
        raise ValueError(f"corrupt fastmomentum checkpoint: {e}") from None
    if description.get("format") != FORMAT:
        raise ValueError(f"unsupported checkpoint format {description.get('format')!r}; "
                         f"this version reads {FORMAT!r}")

    def decode(node: Any) -> Any:
        if isinstance(node, list):
            return [decode(v) for v in node]
        if isinstance(node, dict):
            if set(node) == {_ARRAY}:
                return np.array(arrays[node[_ARRAY]])
            if set(node) == {_ITEMS}:
                return {decode(k): decode(v) for k, v in node[_ITEMS]}
            if set(node) == {_TUPLE}:
                return tuple(decode(v) for v in node[_TUPLE])
            return {k: decode(v) for k, v in node.items()}
        return node

    if "tree" not in description:
        raise ValueError("corrupt fastmomentum checkpoint: no tree in the description")
    try:
        return decode(description["tree"])
    except (KeyError, TypeError, ValueError, RecursionError, zipfile.BadZipFile) as e:
        raise ValueError(f"corrupt fastmomentum checkpoint: {type(e).__name__}: {e}") from None


def save(path: PathLike, tree: Any) -> None:
    """Write ``tree`` to exactly ``path`` (no suffix is added), atomically: the file is written
    beside it and then renamed, so a crash never leaves a half-written checkpoint there."""
    arrays: dict[str, Any] = to_arrays(tree)
    temporary = f"{os.fspath(path)}.tmp"
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load(path: PathLike) -> Any:
    """Read a tree written by :func:`save`, without pickle."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return from_arrays(arrays)
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"corrupt fastmomentum checkpoint {os.fspath(path)!r}: {e}") from None


def convert(state_dict: dict[str, Any], style: str) -> dict[str, Any]:
    """An optimizer state dict moved between the torch and keras buffer layouts, at each group's
    lr: torch -> keras ``v = -lr*b``; keras -> torch ``b = -v/lr`` (needs lr > 0).

    At a constant lr, and without dampening, the two conventions give the same trajectory, so
    training continues as before (up to rounding) in the other style. The groups' other settings
    are kept as they are, ``weight_decay_mode`` included (a torch state converted to keras keeps
    its coupled decay). The ema style has no exact counterpart in the others (its buffer carries
    the ``1 - beta`` factor), so it is not converted. Arrays are new; ``state_dict`` is not
    modified.
    """
    source = state_dict.get("style", "torch")
    for name, value in (("the state dict's style", source), ("style", style)):
        if value not in ("torch", "keras"):
            raise ValueError(f"{name} must be 'torch' or 'keras' to convert, got {value!r}")
    lr_of = {}
    for i, group in enumerate(state_dict["param_groups"]):
        lr = group["lr"]
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise ValueError(f"param_groups[{i}] has the lr {lr!r}: convert needs a number")
        if group.get("dampening", 0) != 0:
            raise ValueError(f"param_groups[{i}] has dampening: the keras convention has none")
        lr_of.update(dict.fromkeys(group["params"], float(lr)))
    old_key, new_key = BUFFER_KEY[source], BUFFER_KEY[style]
    state = {}
    for index, entry in state_dict["state"].items():
        entry = dict(entry)
        buf = entry.pop(old_key, None)
        if buf is not None and source != style:
            lr = lr_of[index]
            if source == "keras" and lr == 0:
                raise ValueError(f"cannot recover state[{index}] from a velocity at lr == 0")
            t = buf.dtype.type
            buf = buf * t(-lr) if style == "keras" else buf / t(-lr)
        entry[new_key] = None if buf is None else np.array(buf)
        state[index] = entry
    groups = [dict(group) for group in state_dict["param_groups"]]
    return {**state_dict, "state": state, "param_groups": groups, "style": style}
