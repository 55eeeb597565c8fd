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
layout (``v = -lr*b``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Union

import numpy as np

from .optim import BUFFER_KEY

__all__ = ["convert", "from_arrays", "load", "save", "to_arrays"]

FORMAT = "fastmomentum-checkpoint/1"
_META = "__fastmomentum__"  # the JSON description's entry name
_ARRAY, _ITEMS, _TUPLE = "__array__", "__items__", "__tuple__"  # markers inside the JSON

PathLike = Union[str, "os.PathLike[str]"]


def to_arrays(tree: Any) -> dict[str, np.ndarray]:
    """Flatten ``tree`` into ``{name: array}``: each array under its own name, everything else
    in one JSON string (dicts with non-str keys and tuples keep their types)."""
    arrays: dict[str, np.ndarray] = {}

    def encode(node: Any) -> Any:
        if isinstance(node, np.ndarray):
            name = f"a{len(arrays)}"
            arrays[name] = node
            return {_ARRAY: name}
        if isinstance(node, np.generic):
            return node.item()
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
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
    """Rebuild the tree from :func:`to_arrays`' mapping (or an opened ``np.load`` file)."""
    if _META not in arrays:
        raise ValueError("not a fastmomentum checkpoint: no description entry")
    description = json.loads(str(arrays[_META]))
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

    return decode(description["tree"])


def save(path: PathLike, tree: Any) -> None:
    """Write ``tree`` to an ``.npz`` file (uncompressed: checkpoints are mostly float noise)."""
    np.savez(path, **to_arrays(tree))


def load(path: PathLike) -> Any:
    """Read a tree written by :func:`save`, without pickle."""
    with np.load(path, allow_pickle=False) as arrays:
        return from_arrays(arrays)


def convert(state_dict: dict[str, Any], style: str) -> dict[str, Any]:
    """An optimizer state dict moved to another style's buffer layout, at each group's lr.

    torch/ema -> keras: ``v = -lr*b``; keras -> torch/ema: ``b = -v/lr`` (needs lr > 0). At a
    constant lr the trajectories then continue identically (up to rounding). Arrays are new;
    ``state_dict`` is not modified.
    """
    source = state_dict.get("style", "torch")
    if style not in BUFFER_KEY:
        raise ValueError(f"style must be 'torch', 'keras' or 'ema', got {style!r}")
    old_key, new_key = BUFFER_KEY[source], BUFFER_KEY[style]
    lr_of = {}
    for i, group in enumerate(state_dict["param_groups"]):
        lr = group["lr"]
        if not isinstance(lr, (int, float)):
            raise ValueError(f"param_groups[{i}] has a scheduled lr: convert needs a number")
        lr_of.update(dict.fromkeys(group["params"], float(lr)))
    to_keras, from_keras = style == "keras" and source != "keras", source == "keras" != style
    state = {}
    for index, entry in state_dict["state"].items():
        entry = dict(entry)
        buf = entry.pop(old_key, None)
        if buf is not None and (to_keras or from_keras):
            lr = lr_of[index]
            if from_keras and lr == 0:
                raise ValueError(f"cannot recover state[{index}] from a velocity at lr == 0")
            t = buf.dtype.type
            buf = buf * t(-lr) if to_keras else buf / t(-lr)
        entry[new_key] = None if buf is None else np.array(buf)
        state[index] = entry
    return {**state_dict, "state": state, "style": style}
