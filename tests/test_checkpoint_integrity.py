"""fastmomentum.checkpoint integrity: format /2's digests, truncated and tampered files, format /1
compatibility, and SGD.load_state_dict changing nothing when it refuses a state dict.

A damaged file must raise ValueError (naming the file) and never return data. The zip CRC-32 of
each entry catches a damaged byte in the raw file; a tampered entry rewritten with a consistent
CRC (via zipfile) is caught only by the SHA-256 digests of format /2.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

import fastmomentum as fm

from conftest import same_bits

META, DIGEST = "__fastmomentum__", "__fastmomentum_sha256__"


# -- helpers ----------------------------------------------------------------------------------


def _trained_optimizer():
    """Two groups (float64 and float32), a scheduler, three steps."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(40), rng.standard_normal((3, 5)).astype(np.float32)]
    opt = fm.SGD([params[0], {"params": [params[1]], "lr": 0.05, "nesterov": True}], lr=0.1,
                 momentum=0.9, weight_decay=1e-3)
    sched = fm.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        opt.step([rng.standard_normal(p.shape).astype(p.dtype) for p in params])
        sched.step()
    return params, opt, sched


def _tree():
    params, opt, sched = _trained_optimizer()
    return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "params": params}


def _assert_same_tree(actual, expected, where="tree"):
    """Same structure, types and bits: format /2's description of a tree lists its structure,
    its scalars (exact decimal forms of floats) and each array's dtype, shape and digest."""
    described = [str(fm.checkpoint.to_arrays(t)[META]) for t in (actual, expected)]
    assert described[0] == described[1], where


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    """A well-formed zip (CRCs consistent with the contents), as np.savez writes them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return out.getvalue()


def _npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _description(members):
    return str(np.load(io.BytesIO(members[META + ".npy"])))


def _with_description(members, text, *, update_digest):
    members = {**members, META + ".npy": _npy(np.array(text))}
    if update_digest:
        members[DIGEST + ".npy"] = _npy(np.array(hashlib.sha256(text.encode()).hexdigest()))
    return members


def _refused(path, match):
    """load(path) raises a ValueError naming the file and matching ``match``."""
    with pytest.raises(ValueError, match=match) as info:
        fm.checkpoint.load(path)
    assert repr(str(path)) in str(info.value)
    return info.value


@pytest.fixture
def saved(tmp_path):
    """A checkpoint file, its bytes and the tree it holds."""
    path = tmp_path / "ckpt.npz"
    tree = _tree()
    fm.checkpoint.save(path, tree)
    return path, path.read_bytes(), fm.checkpoint.from_arrays(fm.checkpoint.to_arrays(tree))


# -- format /2 --------------------------------------------------------------------------------


def test_format_2_holds_a_digest_of_each_array_and_of_the_description(saved):
    path, data, tree = saved
    members = _members(data)
    text = _description(members)
    description = json.loads(text)
    assert description["format"] == fm.checkpoint.FORMAT == "fastmomentum-checkpoint/2"
    assert text.startswith('{"format": "fastmomentum-checkpoint/2"')
    stored_digest = str(np.load(io.BytesIO(members[DIGEST + ".npy"])))
    assert stored_digest == hashlib.sha256(text.encode()).hexdigest()
    assert set(members) == {f"{name}.npy" for name in (META, DIGEST, *description["arrays"])}
    with np.load(path, allow_pickle=False) as raw:
        for name, spec in description["arrays"].items():
            array = raw[name]
            assert spec["dtype"] == array.dtype.str and spec["shape"] == list(array.shape)
            h = hashlib.sha256(json.dumps([array.dtype.str, list(array.shape)]).encode())
            h.update(array.tobytes())
            assert spec["sha256"] == h.hexdigest() == fm.checkpoint.array_digest(array)
    _assert_same_tree(fm.checkpoint.load(path), tree)


def test_the_digest_covers_dtype_and_shape_not_only_bytes():
    a = np.arange(6.0)
    digests = {fm.checkpoint.array_digest(x) for x in
               (a, a.reshape(2, 3), a.view(np.int64), a.view(np.float32), a.reshape(3, 2).T)}
    assert len(digests) == 5
    assert fm.checkpoint.array_digest(a.reshape(3, 2).T) == \
        fm.checkpoint.array_digest(np.ascontiguousarray(a.reshape(3, 2).T))


# -- truncated and damaged files ----------------------------------------------------------------


def _load_bytes(data: bytes):
    """What load does, in memory (the files of the sweeps below would take long to write)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return fm.checkpoint.from_arrays(arrays)


def test_a_truncated_file_is_refused(saved, tmp_path):
    _, data, _ = saved
    damaged = tmp_path / "damaged.npz"
    # near both ends (headers; central directory and end record), and ~40 lengths across
    lengths = sorted({0, 1, 3, 4, 5, 22, 23, 100, *range(len(data) - 30, len(data)),
                      *range(0, len(data), len(data) // 40)})
    for n in lengths:
        damaged.write_bytes(data[:n])
        _refused(damaged, "corrupt fastmomentum checkpoint|not a fastmomentum checkpoint")


def test_a_truncated_file_never_returns_data_at_any_length(saved):
    _, data, _ = saved
    for n in range(len(data)):
        with pytest.raises(Exception):  # noqa: B017  (load turns all of them into ValueError)
            _load_bytes(data[:n])


def test_the_empty_file_and_foreign_files_are_refused(tmp_path):
    for content, match in ((b"", "the file is empty"), (b"hello world", "not an .npz"),
                           (_npy(np.zeros(3)), "not an .npz"), (_zip({}), "no description")):
        path = tmp_path / "x.npz"
        path.write_bytes(content)
        _refused(path, match)
    with pytest.raises(FileNotFoundError):
        fm.checkpoint.load(tmp_path / "missing.npz")


def _entry_data_offsets(data: bytes, member: str) -> range:
    """The offsets, in the raw file, of ``member``'s array data (after its .npy header)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(member)
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    content = data[start:start + info.file_size]
    header = len(content) - np.load(io.BytesIO(content)).nbytes
    return range(start + header, start + info.file_size)


@pytest.mark.parametrize("member", ["a0.npy", META + ".npy"])
def test_a_flipped_byte_in_an_array_or_the_description_is_refused(saved, tmp_path, member):
    _, data, _ = saved
    damaged = tmp_path / "damaged.npz"
    offsets = _entry_data_offsets(data, member)
    assert len(offsets) > 100
    for offset in [*offsets[:: len(offsets) // 20], offsets[-1]]:
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        damaged.write_bytes(bytes(flipped))
        _refused(damaged, "corrupt fastmomentum checkpoint")


def test_any_flipped_bit_is_refused_or_harmless(saved):
    """A bit flipped anywhere in the file (zip headers included) raises, or changes nothing that
    load returns (zip fields that zipfile does not use, such as a local header's time)."""
    _, data, tree = saved
    offsets = sorted({*range(80), *range(len(data) - 400, len(data)), *range(0, len(data), 3)})
    refused = 0
    for offset in offsets:
        bit = 0x01 << (offset % 8)
        flipped = bytearray(data)
        flipped[offset] ^= bit
        try:
            arrays = np.load(io.BytesIO(bytes(flipped)), allow_pickle=False)
        except Exception:  # not even a zip any more (load turns this into a ValueError too)
            refused += 1
            continue
        with arrays:
            try:
                out = fm.checkpoint.from_arrays(arrays)
            except ValueError as e:
                assert "fastmomentum checkpoint" in str(e)
                refused += 1
            else:
                _assert_same_tree(out, tree, f"tree after flipping bit {bit:#x} at {offset}")
    assert refused > 0.9 * len(offsets)


# -- tampered files (consistent zip CRCs: only the digests can tell) ------------------------


def _flip_data_byte(array, position):
    raw = bytearray(array.tobytes())
    raw[position] ^= 0x01
    return np.frombuffer(bytes(raw), array.dtype).reshape(array.shape)


@pytest.mark.parametrize("position", [0, 7, 100, -1])
def test_an_array_rewritten_with_a_valid_crc_is_caught_by_its_digest(saved, tmp_path, position):
    path, data, _ = saved
    members = _members(data)
    a0 = np.load(io.BytesIO(members["a0.npy"]))
    path.write_bytes(_zip({**members, "a0.npy": _npy(_flip_data_byte(a0, position))}))
    _refused(path, r"corrupt fastmomentum checkpoint: the array 'a0' does not match its "
                   r"SHA-256 digest")


def test_an_array_of_another_dtype_or_shape_is_caught(saved, tmp_path):
    path, data, _ = saved
    members = _members(data)
    a0 = np.load(io.BytesIO(members["a0.npy"]))
    assert a0.dtype == np.float64 and a0.ndim == 1
    for changed, match in ((a0.view(np.int64), "has dtype <i8 and shape \\(40,\\), but the "
                                               "description says <f8 and \\(40,\\)"),
                           (a0.reshape(8, 5), "has dtype <f8 and shape \\(8, 5\\)"),
                           (a0[:-1], "has dtype <f8 and shape \\(39,\\)")):
        path.write_bytes(_zip({**members, "a0.npy": _npy(changed)}))
        _refused(path, f"the array 'a0' {match}")


def test_an_edited_description_is_caught_by_its_digest_before_it_is_parsed(saved, tmp_path):
    path, data, _ = saved
    members = _members(data)
    text = _description(members)
    assert '"gamma": 0.5' in text
    for edited in (text.replace('"gamma": 0.5', '"gamma": 0.6'),  # still valid JSON
                   text[:-1],  # not JSON any more: refused for the digest, not a parse error
                   text.replace('"sha256": "', '"sha256": "0', 1)):
        path.write_bytes(_zip(_with_description(members, edited, update_digest=False)))
        _refused(path, "the description does not match its SHA-256 digest")


def test_a_replaced_array_with_an_updated_description_digest_is_still_caught(saved, tmp_path):
    """Editing an array and re-hashing the description is not enough: the array's own digest,
    inside the description, does not match."""
    path, data, _ = saved
    members = _members(data)
    a0 = np.load(io.BytesIO(members["a0.npy"]))
    members = _with_description(members, _description(members), update_digest=True)
    path.write_bytes(_zip({**members, "a0.npy": _npy(a0 + 1.0)}))
    _refused(path, "the array 'a0' does not match its SHA-256 digest")


@pytest.mark.parametrize("change", ["extra-array", "extra-foreign", "missing-array",
                                    "missing-digest", "digest-not-a-string",
                                    "description-not-a-string"])
def test_an_entry_too_many_or_too_few_is_refused(saved, tmp_path, change):
    path, data, _ = saved
    members = _members(data)
    last = max(name for name in members if name.startswith("a"))
    if change == "extra-array":
        members["a99.npy"] = _npy(np.zeros(3))
        match = r"holds entries \['a99'\] that the description does not list"
    elif change == "extra-foreign":
        members["notes.txt"] = b"hello"
        match = r"holds entries \['notes.txt'\]"
    elif change == "missing-array":
        del members[last]
        match = rf"array entries \['{last[:-4]}'\] are missing"
    elif change == "missing-digest":
        del members[DIGEST + ".npy"]
        match = "the description's digest entry '__fastmomentum_sha256__' is missing"
    elif change == "digest-not-a-string":
        members[DIGEST + ".npy"] = _npy(np.zeros(32, np.uint8))
        match = "the description's digest .* is not a string"
    else:
        members[META + ".npy"] = _npy(np.frombuffer(b"{}", np.uint8))
        match = "the description .* is not a string"
    path.write_bytes(_zip(members))
    _refused(path, match)


def test_from_arrays_checks_mappings_too():
    arrays = fm.checkpoint.to_arrays(_tree())
    assert fm.checkpoint.from_arrays(arrays)["params"][1].dtype == np.float32
    for broken, match in (({**arrays, "a99": np.zeros(2)}, "does not list"),
                          ({k: v for k, v in arrays.items() if k != "a1"}, "are missing"),
                          ({**arrays, "a1": arrays["a1"] * 2}, "'a1' does not match"),
                          ({**arrays, DIGEST: np.array("0" * 64)}, "does not match its SHA")):
        with pytest.raises(ValueError, match=match):
            fm.checkpoint.from_arrays(broken)


# -- format versions --------------------------------------------------------------------------

# Written by fastmomentum's format /1 writer (before the digests): an SGD (lr 0.1, momentum 0.9,
# Nesterov, weight decay 0.01) after two steps of the gradients _V1_GRADS from _V1_START.
_V1_DESCRIPTION = (
    '{"format": "fastmomentum-checkpoint/1", "tree": {"optimizer": {"state": {"__items__": '
    '[[0, {"momentum_buffer": {"__array__": "a0"}}]]}, "param_groups": [{"lr": 0.1, '
    '"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.01, "nesterov": true, "maximize": '
    'false, "weight_decay_mode": "coupled", "schedule_multiplier": null, "params": [0]}], '
    '"style": "torch", "iterations": 2}, "params": [{"__array__": "a1"}]}}')
_V1_BUFFER = ["0x1.3be8709741d08p+0", "-0x1.1e6ff7dfa00e4p-4", "-0x1.7864020817fc8p-1"]
_V1_PARAMS = ["0x1.eb988c286cdbap-3", "-0x1.09247e8f7d0b1p+0", "0x1.1e6c2ca3f7ec6p+1"]
_V1_START = [0.5, -1.0, 2.0]
_V1_GRADS = [[0.25, 0.5, -1.0], [1.0, -0.5, 0.125], [-0.75, 0.0625, 3.0]]


def _from_hex(values):
    return np.array([float.fromhex(v) for v in values])


def test_a_format_1_file_still_loads_and_training_continues(tmp_path):
    path = tmp_path / "old.npz"
    np.savez(path, **{META: np.array(_V1_DESCRIPTION), "a0": _from_hex(_V1_BUFFER),
                      "a1": _from_hex(_V1_PARAMS)})
    ckpt = fm.checkpoint.load(path)
    same_bits(ckpt["params"][0], _from_hex(_V1_PARAMS))
    same_bits(ckpt["optimizer"]["state"][0]["momentum_buffer"], _from_hex(_V1_BUFFER))
    assert ckpt["optimizer"]["iterations"] == 2

    def make(p):
        return fm.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)

    p_live = np.array(_V1_START)
    live = make(p_live)
    for g in _V1_GRADS:
        live.step([np.array(g)])
    p = np.zeros(3)
    opt = make(p)
    p[...] = ckpt["params"][0]
    opt.load_state_dict(ckpt["optimizer"])
    opt.step([np.array(_V1_GRADS[2])])
    same_bits(p, p_live)
    same_bits(opt.state[p]["momentum_buffer"], live.state[p_live]["momentum_buffer"])
    assert opt.iterations == live.iterations == 3


def test_a_format_1_file_has_no_digests_to_check(tmp_path):
    """What format /1 cannot catch, by design: a consistent rewrite loads."""
    path = tmp_path / "old.npz"
    np.savez(path, **{META: np.array(_V1_DESCRIPTION), "a0": np.zeros(3), "a1": np.ones(3)})
    assert fm.checkpoint.load(path)["params"][0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("alias", ["a0.npy", f"{META}.npy"])
def test_a_format_1_tree_cannot_name_an_entry_twice_or_the_description(tmp_path, alias):
    """np.load answers to "a0" and "a0.npy" alike: the second name is the same entry (a second
    copy of it), and the description is not an array of the tree."""
    path = tmp_path / "old.npz"
    tree = [{"__array__": "a0"}, {"__array__": alias}] if alias == "a0.npy" else \
        {"__array__": alias}
    text = json.dumps({"format": "fastmomentum-checkpoint/1", "tree": tree})
    np.savez(path, **{META: np.array(text), "a0": np.zeros(3)})
    with pytest.raises(ValueError, match=r"refers to the array 'a0' more than once|which the "
                                         r"file does not hold"):
        fm.checkpoint.load(path)


@pytest.mark.parametrize("version", [3, 10, 123456789])
def test_a_newer_format_is_refused_with_a_clear_message(tmp_path, version):
    path = tmp_path / "new.npz"
    text = f'{{"format": "fastmomentum-checkpoint/{version}", "whatever": "comes next"}}'
    # whatever a newer writer puts there, even a digest this version cannot verify
    np.savez(path, **{META: np.array(text), DIGEST: np.array("sha3:abc"), "b0": np.zeros(2)})
    error = _refused(path, f"the checkpoint format 'fastmomentum-checkpoint/{version}' is newer "
                           "than this fastmomentum reads")
    assert "upgrade fastmomentum" in str(error)
    # a newer format name not at the start of the description is refused the same way
    text = f'{{"tree": 1, "format": "fastmomentum-checkpoint/{version}"}}'
    np.savez(path, **{META: np.array(text)})
    _refused(path, "is newer than this fastmomentum reads")


def test_an_unknown_format_is_refused(tmp_path):
    path = tmp_path / "x.npz"
    for fmt in ("fastmomentum-checkpoint/0", "something-else/2", None):
        np.savez(path, **{META: np.array(json.dumps({"format": fmt, "tree": 1}))})
        _refused(path, "unsupported checkpoint format")


# -- nothing reaches the optimizer ------------------------------------------------------------


def _snapshot(opt):
    """Everything load_state_dict may change, copied (buffers' bytes included), and the
    identities of the objects it would replace."""
    return {
        "groups": [{k: (v if k != "params" else [id(p) for p in v]) for k, v in g.items()}
                   for g in opt.param_groups],
        "group_ids": [id(g) for g in opt.param_groups],
        "state_id": id(opt.state),
        "state": {id(p): {k: (v.copy(), id(v)) if isinstance(v, np.ndarray) else copy.copy(v)
                          for k, v in entry.items()} for p, entry in opt.state.items()},
        "attributes": {k: copy.copy(v) for k, v in vars(opt).items()
                       if isinstance(v, (int, float, str, type(None)))},
    }


def _assert_unchanged(opt, before):
    after = _snapshot(opt)
    assert after["groups"] == before["groups"]
    assert after["group_ids"] == before["group_ids"] and after["state_id"] == before["state_id"]
    assert after["attributes"] == before["attributes"]  # iterations, counters, style, ...
    assert after["state"].keys() == before["state"].keys()
    for pid, entry in before["state"].items():
        assert after["state"][pid].keys() == entry.keys()
        for key, value in entry.items():
            if isinstance(value, tuple):  # a buffer: the same array, with the same bytes
                assert after["state"][pid][key][1] == value[1]
                same_bits(after["state"][pid][key][0], value[0])
            else:
                assert after["state"][pid][key] == value


def test_a_failed_load_never_reaches_the_optimizer(saved):
    path, data, _ = saved
    _, opt, _ = _trained_optimizer()
    before = _snapshot(opt)
    members = _members(data)
    a0 = np.load(io.BytesIO(members["a0.npy"]))
    path.write_bytes(_zip({**members, "a0.npy": _npy(_flip_data_byte(a0, 3))}))
    with pytest.raises(ValueError, match="does not match its SHA-256 digest"):
        ckpt = fm.checkpoint.load(path)
        opt.load_state_dict(ckpt["optimizer"])  # what the user would do next: never reached
    _assert_unchanged(opt, before)


def _late_errors():
    """State dicts that differ from _trained_optimizer()'s state everywhere (iterations, first
    group's lr, first buffer), so that a partial load would show, and are valid up to their last
    group or last state entry."""
    _, opt, _ = _trained_optimizer()
    sd = fm.checkpoint.from_arrays(fm.checkpoint.to_arrays(opt.state_dict()))
    first, last = min(sd["state"]), max(sd["state"])
    groups = [{**sd["param_groups"][0], "lr": 0.123}, *sd["param_groups"][1:]]
    state = {**sd["state"], first: {**sd["state"][first],
                                    "momentum_buffer": sd["state"][first]["momentum_buffer"] + 1}}
    sd = {**sd, "iterations": 100, "param_groups": groups, "state": state}

    def with_last_group(**changes):
        return {**sd, "param_groups": [*groups[:-1], {**groups[-1], **changes}]}

    def with_last_entry(**changes):
        return {**sd, "state": {**state, last: {**state[last], **changes}}}

    buffer = state[last]["momentum_buffer"]
    return sd, {
        "buffer-shape": with_last_entry(momentum_buffer=buffer.reshape(-1)),
        "buffer-strings": with_last_entry(momentum_buffer=np.full(buffer.shape, "nope")),
        "entry-not-a-dict": {**sd, "state": {**state, last: [buffer]}},
        "entry-index-unknown": {**sd, "state": {**state, 99: {"momentum_buffer": buffer}}},
        "lr-negative": with_last_group(lr=-0.1),
        "lr-nan": with_last_group(lr=float("nan")),
        "lr-string": with_last_group(lr="0.1"),
        "momentum-too-big": with_last_group(momentum=1.5),
        "nesterov-dampening": with_last_group(dampening=0.5),
        "mode-unknown": with_last_group(weight_decay_mode="sometimes"),
        "schedule-unknown": with_last_group(lr={"schedule": {"kind": "no-such-schedule"}}),
        "callable-not-given": with_last_group(momentum={"callable": "f"}),
        "params-too-many": with_last_group(params=[*groups[-1]["params"], 0]),
        "params-duplicated": with_last_group(params=groups[0]["params"]),
        "iterations": {**sd, "iterations": -1},
        "style": {**sd, "style": "keras"},
    }


def test_the_base_of_the_late_errors_loads():
    """The state dicts of _late_errors() differ from their base only where they say."""
    base, _ = _late_errors()
    _, opt, _ = _trained_optimizer()
    opt.load_state_dict(base)
    assert opt.iterations == 100 and opt.param_groups[0]["lr"] == 0.123


@pytest.mark.parametrize("case", list(_late_errors()[1]))
def test_load_state_dict_refusing_late_changes_nothing(case):
    bad = _late_errors()[1][case]
    params, opt, _ = _trained_optimizer()
    twin_params, twin, _ = _trained_optimizer()
    opt.param_groups[0]["lr"] = twin.param_groups[0]["lr"] = 0.07  # no longer the saved value
    before = _snapshot(opt)
    with pytest.raises((ValueError, TypeError, KeyError)):
        opt.load_state_dict(bad)
    _assert_unchanged(opt, before)
    # and it steps on exactly as an optimizer that never saw the bad state dict
    rng = np.random.default_rng(5)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
        opt.step(grads)
        twin.step([g.copy() for g in grads])
    for p, q in zip(params, twin_params, strict=True):
        same_bits(p, q)
    for p, q in zip(params, twin_params, strict=True):
        same_bits(opt.state[p]["momentum_buffer"], twin.state[q]["momentum_buffer"])
    assert opt.iterations == twin.iterations


# -- what load returns ------------------------------------------------------------------------


def test_loaded_arrays_are_independent_and_writeable(tmp_path):
    a = np.arange(4.0)
    tree = {"x": a, "same": [a, a]}
    loaded = [fm.checkpoint.load(_saved_to(tmp_path / "t.npz", tree)),
              fm.checkpoint.from_arrays(fm.checkpoint.to_arrays(tree))]
    for out in loaded:
        arrays = [out["x"], *out["same"]]
        assert all(x.flags.writeable for x in arrays)
        assert not any(np.shares_memory(x, y) for x in arrays for y in [*arrays, a] if x is not y)
        arrays[0][0] = 7.0
        assert arrays[1][0] == 0.0 and a[0] == 0.0
    # a description that refers to one entry twice (not what to_arrays writes) is refused: each
    # reference would need its own copy, so a small file could ask for any amount of memory
    arrays = fm.checkpoint.to_arrays({"x": a})
    text = str(arrays[META]).replace('"tree": {"x": {"__array__": "a0"}}',
                                     '"tree": [{"__array__": "a0"}, {"__array__": "a0"}]')
    arrays = {**arrays, META: np.array(text),
              DIGEST: np.array(hashlib.sha256(text.encode()).hexdigest())}
    path = tmp_path / "twice.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="refers to the array 'a0' more than once"):
        fm.checkpoint.load(path)


def _saved_to(path, tree):
    fm.checkpoint.save(path, tree)
    return path


def test_load_holds_one_copy_of_the_arrays_in_memory(tmp_path):
    tracemalloc = pytest.importorskip("tracemalloc")
    tree = {"params": [np.ones(1 << 20) for _ in range(4)]}  # 4 arrays of 8 MiB
    path = _saved_to(tmp_path / "big.npz", tree)
    del tree
    tracemalloc.start()
    try:
        loaded = fm.checkpoint.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = sum(a.nbytes for a in loaded["params"])
    assert total == 32 << 20
    assert peak < total + (12 << 20), f"peak {peak / 2**20:.1f} MiB for {total / 2**20} MiB"
