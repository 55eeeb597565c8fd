"""fastmomentum.checkpoint: .npz without pickle, layout conversion, resuming in a new process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmomentum as fm


def test_any_plain_tree_round_trips_with_its_structure():
    tree = {"state": {0: {"b": np.arange(3.0)}, 7: {"b": None}},
            "groups": [{"lr": 0.1, "nesterov": True, "name": "w", "pair": (1, 2.5)}],
            "scalar": np.float32(2.5), "inf": float("inf"), "f32": np.ones((2, 2), np.float32)}
    out = fm.checkpoint.from_arrays(fm.checkpoint.to_arrays(tree))
    assert set(out["state"]) == {0, 7}  # int keys stay ints
    np.testing.assert_array_equal(out["state"][0]["b"], np.arange(3.0))
    assert out["groups"][0]["pair"] == (1, 2.5)  # tuples stay tuples
    assert out["scalar"] == 2.5 and out["inf"] == float("inf")
    assert out["f32"].dtype == np.float32


def test_files_load_without_pickle(tmp_path):
    path = tmp_path / "ckpt.npz"
    fm.checkpoint.save(path, {"x": np.arange(4.0), "n": 3})
    with np.load(path, allow_pickle=False) as raw:  # plain arrays only
        assert all(raw[name].dtype != object for name in raw.files)
    assert fm.checkpoint.load(path)["n"] == 3


def test_unsupported_objects_and_foreign_files_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="cannot store a set"):
        fm.checkpoint.to_arrays({"s": {1}})
    with pytest.raises(TypeError, match="cannot store an object array"):
        fm.checkpoint.to_arrays({"x": np.array([1, "a"], dtype=object)})
    with pytest.raises(TypeError, match="cannot store a complex"):
        fm.checkpoint.to_arrays({"z": np.complex128(1j)})
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a fastmomentum checkpoint"):
        fm.checkpoint.load(tmp_path / "other.npz")


def test_user_dicts_that_look_like_markers_round_trip():
    tree = {"a": {"__tuple__": [1]}, "b": {"__items__": []}, "c": {"__array__": "a0"}}
    assert fm.checkpoint.from_arrays(fm.checkpoint.to_arrays(tree)) == tree


def test_save_writes_exactly_the_path_given(tmp_path):
    fm.checkpoint.save(tmp_path / "ckpt", {"n": 1})
    assert fm.checkpoint.load(tmp_path / "ckpt") == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .npz, no .tmp left


@pytest.mark.parametrize("damage", ["truncate", "description-int", "no-tree", "missing-array",
                                    "bad-items"])
def test_damaged_files_raise_a_clear_error(damage, tmp_path):
    path = tmp_path / "ckpt.npz"
    # format /1 descriptions (no digests: the decoder's own checks); /2 in test_checkpoint_integrity
    arrays = {"a0": np.ones(3)}
    meta = "__fastmomentum__"
    if damage == "truncate":
        fm.checkpoint.save(path, {"x": np.ones(1000)})
        path.write_bytes(path.read_bytes()[:-200])
    else:
        description = {
            "description-int": "7",
            "no-tree": '{"format": "fastmomentum-checkpoint/1"}',
            "missing-array": '{"format": "fastmomentum-checkpoint/1", '
                             '"tree": {"__array__": "a9"}}',
            "bad-items": '{"format": "fastmomentum-checkpoint/1", "tree": {"__items__": [[1]]}}',
        }[damage]
        np.savez(path, **{**arrays, meta: np.array(description)})
    with pytest.raises(ValueError, match="corrupt fastmomentum checkpoint"):
        fm.checkpoint.load(path)


def test_torch_and_keras_layouts_convert_and_continue_the_same_trajectory():
    """At a constant lr the conventions agree (v = -lr*b): switch style mid-training."""
    rng = np.random.default_rng(0)
    p_torch = rng.standard_normal(50)
    p_keras = p_torch.copy()
    torch_opt = fm.SGD([p_torch], lr=0.05, momentum=0.9)
    grads = [rng.standard_normal(50) for _ in range(40)]
    for g in grads[:20]:
        torch_opt.step([g])
    p_keras[:] = p_torch
    keras_opt = fm.SGD([p_keras], lr=0.05, momentum=0.9, style="keras")
    keras_opt.load_state_dict(fm.convert_state_dict(torch_opt.state_dict(), "keras"))
    back = fm.convert_state_dict(keras_opt.state_dict(), "torch")
    np.testing.assert_allclose(back["state"][0]["momentum_buffer"],
                               torch_opt.state[p_torch]["momentum_buffer"], rtol=1e-14)
    for g in grads[20:]:
        torch_opt.step([g])
        keras_opt.step([g])
    np.testing.assert_allclose(p_keras, p_torch, rtol=1e-12, atol=1e-12)


def test_convert_refuses_what_it_cannot_make_exact():
    (p,) = [np.zeros(3)]
    ema = fm.SGD([p], lr=0.1, momentum=0.9, style="ema")
    with pytest.raises(ValueError, match="style must be 'torch' or 'keras' to convert, got 'ema'"):
        fm.convert_state_dict(ema.state_dict(), "keras")
    damped = fm.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    with pytest.raises(ValueError, match="has dampening"):
        fm.convert_state_dict(damped.state_dict(), "keras")


def test_convert_needs_a_numeric_positive_lr_from_keras():
    (p,) = [np.zeros(3)]
    opt = fm.SGD([p], lr=0.0, momentum=0.9, style="keras")
    opt.step([np.ones(3)])
    with pytest.raises(ValueError, match="at lr == 0"):
        fm.convert_state_dict(opt.state_dict(), "torch")


RESUME = """
import sys, numpy as np, fastmomentum as fm
path, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
params = [rng.standard_normal(n).astype(np.float32) for n in (100, 7)]
opt = fm.SGD([params[0], {{"params": [params[1]], "weight_decay": 0.0}}], lr=0.1,
             momentum=0.9, nesterov={nesterov}, weight_decay=5e-4, style="{style}")
sched = fm.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=60)
if start:
    ckpt = fm.checkpoint.load(path)
    for p, saved in zip(params, ckpt["params"]):
        p[...] = saved
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
for step in range(start, stop):
    g = np.random.default_rng(1000 + step)
    opt.step([g.standard_normal(100).astype(np.float32), g.standard_normal(7).astype(np.float32)])
    sched.step()
fm.checkpoint.save(path, {{"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "params": params}})
"""


@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_resuming_in_a_new_process_is_bit_for_bit(style, tmp_path):
    script = textwrap.dedent(RESUME.format(style=style, nesterov=style != "ema"))

    def run(path, start, stop):
        proc = subprocess.run([sys.executable, "-c", script, str(path), str(start), str(stop)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    run(tmp_path / "straight.npz", 0, 50)
    run(tmp_path / "resumed.npz", 0, 20)
    run(tmp_path / "resumed.npz", 20, 50)
    straight = fm.checkpoint.load(tmp_path / "straight.npz")
    resumed = fm.checkpoint.load(tmp_path / "resumed.npz")
    for a, b in zip(straight["params"], resumed["params"], strict=True):
        assert a.tobytes() == b.tobytes()
    assert straight["scheduler"] == resumed["scheduler"]


def test_the_old_name_of_convert_still_works_with_a_warning():
    opt = fm.SGD([np.zeros(3)], lr=0.1, momentum=0.9)
    opt.step([np.ones(3)])
    with pytest.warns(DeprecationWarning, match="fastmomentum.convert_state_dict"):
        convert = fm.checkpoint.convert
    assert convert is fm.convert_state_dict
    with pytest.raises(AttributeError, match="no attribute 'conv'"):
        fm.checkpoint.conv  # noqa: B018


class Tensor:
    """A stand-in for a torch tensor, as far as a checkpoint sees one."""

    __module__ = "torch"

    def detach(self):
        return self


@pytest.mark.parametrize(("tree", "path", "what"), [
    ({"model": {"w": Tensor()}}, "tree['model']['w']", "a torch.Tensor"),
    ({"opt": [1, (2, {3})]}, "tree['opt'][1][1]", "a set"),
    ({1: {"a": 1j}}, "tree[1]['a']", "a complex"),
    ({"a": {frozenset(): 0}}, "a key of tree['a']", "a frozenset"),
    ([np.array([1, "a"], dtype=object)], "tree[0]", "an object array"),
])
def test_an_unsupported_leaf_is_named_by_its_key_path(tree, path, what, tmp_path):
    with pytest.raises(TypeError) as error:
        fm.checkpoint.save(tmp_path / "c.npz", tree)
    assert str(error.value).startswith(f"{path}: cannot store {what} in a checkpoint"), error.value
    assert not (tmp_path / "c.npz").exists()


def test_a_tensor_is_refused_with_how_to_convert_it(tmp_path):
    expected = ("tree['model']['w']: cannot store a {} in a checkpoint (dicts, lists, tuples, "
                "str, int, float, bool, None and NumPy arrays only); store "
                "t.detach().cpu().numpy() instead of the tensor t")
    with pytest.raises(TypeError) as error:
        fm.checkpoint.save(tmp_path / "c.npz", {"model": {"w": Tensor()}})
    assert str(error.value) == expected.format("torch.Tensor")
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError) as error:
        fm.checkpoint.save(tmp_path / "c.npz", {"model": {"w": torch.zeros(2)}})
    assert str(error.value) == expected.format("torch.Tensor")
