"""fm.checkpoint as files on a shared file system: saves that race, links and files planted beside
the target, permissions, interrupted and failed saves, and loads of files that declare more than
they hold. (Format and integrity: test_checkpoint_integrity.py.)"""

from __future__ import annotations

import contextlib
import gc
import io
import multiprocessing
import os
import stat
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import fastmomentum as fm

posix = pytest.mark.skipif(os.name != "posix", reason="POSIX links and permissions")


def _tree(k):
    return {"writer": k, "params": [np.full(1000, float(k)), np.arange(k + 1.0)]}


def _check_tree(tree):
    k = tree["writer"]
    np.testing.assert_array_equal(tree["params"][0], np.full(1000, float(k)))
    np.testing.assert_array_equal(tree["params"][1], np.arange(k + 1.0))
    return k


def _saver(path, writer, rounds, start):
    start.wait()
    for r in range(rounds):
        fm.checkpoint.save(path, _tree(100 * writer + r))


def test_concurrent_saves_to_one_path_always_leave_a_whole_checkpoint(tmp_path):
    """Four processes save 25 times each to one path while this one reads it: every read finds
    a whole checkpoint of one of the writers (no corrupt file, no FileNotFoundError), the last
    save wins, and no temporary file is left."""
    path = tmp_path / "ckpt.npz"
    fm.checkpoint.save(path, _tree(0))
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=_saver, args=(str(path), w, 25, start)) for w in range(1, 5)]
    for p in writers:
        p.start()
    start.set()
    seen = set()
    while any(p.is_alive() for p in writers):
        seen.add(_check_tree(fm.checkpoint.load(path)))
    for p in writers:
        p.join()
        assert p.exitcode == 0
    final = _check_tree(fm.checkpoint.load(path))
    assert final % 100 == 24  # one writer's last save
    assert len(seen) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


@posix
def test_a_link_planted_beside_the_checkpoint_is_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"someone else's file")
    path = tmp_path / "ckpt.npz"
    (tmp_path / "ckpt.npz.tmp").symlink_to(victim)  # the old fixed temporary name
    fm.checkpoint.save(path, _tree(1))
    assert victim.read_bytes() == b"someone else's file"
    assert (tmp_path / "ckpt.npz.tmp").is_symlink()
    assert _check_tree(fm.checkpoint.load(path)) == 1


def test_a_users_file_named_like_a_temporary_is_left_alone(tmp_path):
    mine = tmp_path / "ckpt.npz.tmp"
    mine.write_bytes(b"mine")
    fm.checkpoint.save(tmp_path / "ckpt.npz", _tree(2))
    assert mine.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz", "ckpt.npz.tmp"]


@posix
def test_a_link_at_the_path_is_replaced_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"kept")
    path = tmp_path / "ckpt.npz"
    path.symlink_to(elsewhere)
    fm.checkpoint.save(path, _tree(3))
    assert not path.is_symlink() and elsewhere.read_bytes() == b"kept"
    assert _check_tree(fm.checkpoint.load(path)) == 3


@posix
def test_an_existing_checkpoints_permissions_are_kept(tmp_path):
    path = tmp_path / "ckpt.npz"
    fm.checkpoint.save(path, _tree(4))
    os.chmod(path, 0o600)
    fm.checkpoint.save(path, _tree(5))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o640)
    fm.checkpoint.save(path, _tree(6))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


@posix
def test_a_new_checkpoint_gets_the_umasks_permissions(tmp_path):
    """As ``open`` gives a new file: 0o666 less the umask (set in a child: it is process-wide)."""
    code = textwrap.dedent(f"""
        import os, stat, numpy as np, fastmomentum as fm
        for umask, path in ((0o027, {str(tmp_path / 'a')!r}), (0o002, {str(tmp_path / 'b')!r})):
            os.umask(umask)
            fm.checkpoint.save(path, {{"x": np.zeros(2)}})
            print(oct(stat.S_IMODE(os.stat(path).st_mode)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0o640", "0o664"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["OSError", "KeyboardInterrupt"])
def test_a_save_that_fails_midway_leaves_the_old_checkpoint_and_no_temporary(tmp_path,
                                                                            monkeypatch, error):
    path = tmp_path / "ckpt.npz"
    fm.checkpoint.save(path, _tree(7))
    real = np.savez

    def savez_then_fail(file, **arrays):
        real(file, **arrays)
        raise error

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(type(error)):
        fm.checkpoint.save(path, _tree(8))
    monkeypatch.undo()
    assert _check_tree(fm.checkpoint.load(path)) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_the_file_and_its_directory_are_flushed_to_disk(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(descriptor):
        synced.append(stat.S_ISDIR(os.fstat(descriptor).st_mode))
        real(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    fm.checkpoint.save(tmp_path / "ckpt.npz", _tree(9))
    assert synced == ([False, True] if os.name == "posix" else [False])


# -- loads that declare more than the file holds -------------------------------------------------

def _npy_header(shape, descr="<f8"):
    """A .npy (version 1.0) header declaring ``shape``."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _npz(members, compression=zipfile.ZIP_STORED):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _saved_members():
    out = io.BytesIO()
    np.savez(out, **fm.checkpoint.to_arrays({"w": np.arange(6.0)}))
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_a_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    """A 1 KB file whose header declares 10**12 float64 elements (8 TB): a ValueError naming the
    file and the entry, not a MemoryError."""
    members = _saved_members()
    members["a0.npy"] = _npy_header((10**12,)) + b"\0" * 48
    path = tmp_path / "huge.npz"
    path.write_bytes(_npz(members))
    assert path.stat().st_size < 2000
    with pytest.raises(ValueError, match=r"cannot load '.*huge\.npz': corrupt fastmomentum "
                                         r"checkpoint: the entry 'a0\.npy' declares an array of "
                                         r"shape \(1000000000000,\) and dtype float64 "
                                         r"\(8000000000000 bytes\) but holds 48 bytes"):
        fm.checkpoint.load(path)


def test_a_compressed_entry_is_refused_before_it_is_inflated(tmp_path):
    """A 1 MB file could inflate to ~1 GiB: save() never compresses, and load() refuses it."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:  # the big entry deflated as it is written
        for name, data in _saved_members().items():
            if name != "a0.npy":
                z.writestr(name, data)
        info = zipfile.ZipInfo("a0.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as member:
            member.write(_npy_header((2**27,)))
            chunk = bytes(2**20)
            for _ in range(2**10):
                member.write(chunk)
    assert path.stat().st_size < 2 * 2**20
    with pytest.raises(ValueError, match=r"the entry 'a0\.npy' is compressed"):
        fm.checkpoint.load(path)


def test_an_entry_larger_than_the_file_is_refused(tmp_path):
    members = _saved_members()
    data = _npz(members)
    path = tmp_path / "short.npz"
    # The central directory says the first entry is a megabyte long (its sizes at offset 20).
    patched = bytearray(data)
    struct.pack_into("<II", patched, data.index(b"PK\x01\x02") + 20, 2**20, 2**20)
    path.write_bytes(bytes(patched))
    with pytest.raises(ValueError, match=r"cannot load .*declares 1048576 bytes, more than the "
                                         r"file's"):
        fm.checkpoint.load(path)


def test_an_object_array_entry_is_refused(tmp_path):
    members = _saved_members()
    members["a0.npy"] = _npy_header((2,), "|O") + b"\0" * 16
    path = tmp_path / "objects.npz"
    path.write_bytes(_npz(members))
    with pytest.raises(ValueError, match=r"the entry 'a0\.npy' holds Python objects"):
        fm.checkpoint.load(path)


def _directory_copy(data, name, copy_name):
    """The archive ``data`` with a second central-directory record for the entry ``name``, named
    ``copy_name`` (of the same length) and pointing at the same bytes: the trick of zip files
    that list their bytes many times."""
    assert len(name) == len(copy_name)
    at = data.index(b"PK\x01\x02")
    end = data.index(b"PK\x05\x06")
    directory = data[at:end]
    start = 0
    while True:  # the record of `name`
        n, m, k = struct.unpack_from("<HHH", directory, start + 28)
        if directory[start + 46:start + 46 + n] == name.encode():
            record = directory[start:start + 46 + n + m + k]
            break
        start += 46 + n + m + k
    copy = record[:46] + copy_name.encode() + record[46 + len(name):]
    eocd = bytearray(data[end:])
    entries = struct.unpack_from("<H", eocd, 10)[0] + 1
    struct.pack_into("<HHI", eocd, 8, entries, entries, len(directory) + len(copy))
    return data[:end] + copy + bytes(eocd)


def test_entries_that_share_bytes_are_refused_before_any_is_read(tmp_path):
    """A file listing its one big entry many times would make load allocate that many copies."""
    data = _npz(_saved_members())
    for k in range(5):
        data = _directory_copy(data, "a0.npy", f"b{k}.npy")
    path = tmp_path / "overlap.npz"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as z:
        assert len(z.infolist()) == len(_saved_members()) + 5
    with pytest.raises(ValueError, match=r"the entries '(a0|b\d)\.npy' and '(a0|b\d)\.npy' "
                                         r"overlap in the file"):
        fm.checkpoint.load(path)


def test_two_entries_of_one_name_are_refused(tmp_path):
    members = _saved_members()
    out = io.BytesIO()
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("a0.npy", members["a0.npy"])
    path = tmp_path / "twice.npz"
    path.write_bytes(out.getvalue())
    with pytest.raises(ValueError, match=r"more than one entry named \['a0\.npy'\]"):
        fm.checkpoint.load(path)


def test_an_array_entry_is_checked_whatever_its_name(tmp_path):
    """NumPy reads any entry that starts with the .npy magic as an array, ".npy" or not."""
    members = _saved_members()
    del members["a0.npy"]
    members["a0"] = _npy_header((10**12,)) + b"\0" * 48
    path = tmp_path / "unnamed.npz"
    path.write_bytes(_npz(members))
    with pytest.raises(ValueError, match=r"the entry 'a0' declares an array of shape "
                                         r"\(1000000000000,\)"):
        fm.checkpoint.load(path)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open descriptors")
def test_a_save_interrupted_before_its_file_object_exists_leaves_no_file_or_descriptor(
        tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    fm.checkpoint.save(path, _tree(3))
    descriptors = set(os.listdir("/proc/self/fd"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fm.checkpoint.save(path, _tree(4))
    monkeypatch.undo()
    assert set(os.listdir("/proc/self/fd")) <= descriptors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    assert _check_tree(fm.checkpoint.load(path)) == 3


@pytest.mark.parametrize("dtype", [
    np.dtype({"names": ["a"], "formats": ["<f4"], "offsets": [0], "itemsize": 8}),
    np.dtype([("a", "<f4"), ("b", "<f8")], align=True),
    np.dtype({"names": ["a", "b"], "formats": ["<f4", "<f4"], "offsets": [0, 0]}),
    np.dtype([("outer", np.dtype([("a", "<f4"), ("b", "<f8")], align=True))]),
], ids=["trailing-padding", "aligned", "overlapping", "nested-padding"])
def test_a_dtype_that_npy_cannot_keep_byte_for_byte_is_refused_at_save(tmp_path, dtype):
    """Else the save succeeds and the load refuses the file (its digest no longer matches)."""
    path = tmp_path / "padded.npz"
    with pytest.raises(TypeError, match="its fields leave padding or overlap"):
        fm.checkpoint.save(path, {"x": np.zeros(3, dtype)})
    assert not path.exists()
    packed = np.dtype([("a", "<f4"), ("b", "<f8")])
    fm.checkpoint.save(path, {"x": np.ones(3, packed)})
    assert fm.checkpoint.load(path)["x"].tobytes() == np.ones(3, packed).tobytes()


@pytest.mark.parametrize(("dtype", "message"), [
    (np.dtype([("\u03b1", "<f8")]), "its field names are not latin-1"),  # alpha
    (np.dtype([(f"f{i}", "<f4") for i in range(589)]),
     r"a structured dtype of 589 fields .* its \.npy header would be more than the 10000 bytes"),
    (np.dtype([("a", np.dtype("<f8", metadata={"unit": "m"}))]), "its dtype carries metadata"),
    (np.dtype("<f8", metadata={"unit": "m"}), "its dtype carries metadata"),
], ids=["non-latin-1-field-name", "589-fields", "field-metadata", "metadata"])
def test_a_dtype_whose_npy_header_load_would_refuse_is_refused_at_save(tmp_path, dtype, message):
    """np.savez writes such a header (version 3.0, or longer than np.load reads) with only a
    warning, and drops a dtype's metadata (which the description keeps): the checkpoint could
    then never be loaded."""
    path = tmp_path / "header.npz"
    fm.checkpoint.save(path, _tree(1))
    with pytest.raises(TypeError, match=message):
        fm.checkpoint.save(path, {"x": np.zeros(2, dtype)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["header.npz"]
    assert _check_tree(fm.checkpoint.load(path)) == 1


def test_a_masked_array_is_refused_at_save_not_stored_without_its_mask(tmp_path):
    path = tmp_path / "masked.npz"
    with pytest.raises(TypeError, match=r"numpy\.ma\.MaskedArray.*its mask would be lost"):
        fm.checkpoint.save(path, {"x": np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])})
    assert not path.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open descriptors")
def test_a_save_interrupted_as_its_file_is_created_leaves_no_file(tmp_path):
    """The interrupt lands as ``os.open`` returns (where CPython delivers a Ctrl-C), before its
    descriptor reaches any variable: the file is still removed, as save() names it before creating
    it. (The descriptor itself leaks, as docs/reliability.md says; the test closes it.)"""
    path = tmp_path / "ckpt.npz"
    fm.checkpoint.save(path, _tree(3))
    descriptors = set(os.listdir("/proc/self/fd"))
    fired = []

    def interrupt_after_open(frame, event, arg):
        if event == "c_return" and arg is os.open and not fired:
            fired.append(True)
            raise KeyboardInterrupt

    sys.setprofile(interrupt_after_open)
    try:
        with pytest.raises(KeyboardInterrupt):
            fm.checkpoint.save(path, _tree(4))
    finally:
        sys.setprofile(None)
    assert fired
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    assert _check_tree(fm.checkpoint.load(path)) == 3
    for leaked in set(os.listdir("/proc/self/fd")) - descriptors:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{leaked}").startswith(str(tmp_path)):
                os.close(int(leaked))


def test_a_file_name_near_the_systems_limit_saves(tmp_path):
    """The temporary file's name holds only the start of the target's."""
    path = tmp_path / ("c" * 246 + ".npz")  # 250 characters; most file systems take 255
    fm.checkpoint.save(path, _tree(5))
    assert _check_tree(fm.checkpoint.load(path)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_the_longest_npy_header_that_load_reads_is_saved(tmp_path):
    """588 fields make a version 1.0 header of 9974 bytes (measured as np.save writes it)."""
    path = tmp_path / "wide.npz"
    x = np.arange(2 * 588, dtype="<f4").view([(f"f{i}", "<f4") for i in range(588)])
    fm.checkpoint.save(path, {"x": x})
    assert fm.checkpoint.load(path)["x"].tobytes() == x.tobytes()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open descriptors")
# the ZipFile that np.savez left half-open fails to close again when collected (here, below)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_inside_np_savez_stays_a_keyboard_interrupt(tmp_path, monkeypatch):
    """Interrupted as it opens an entry, zipfile's close raises ValueError ("Can't close the ZIP
    file while there is an open writing handle"); the save raises the interrupt, which an
    ``except ValueError`` around it must not swallow, and leaves the old checkpoint."""
    path = tmp_path / "ckpt.npz"
    fm.checkpoint.save(path, _tree(3))
    descriptors = set(os.listdir("/proc/self/fd"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile._ZipWriteFile, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fm.checkpoint.save(path, _tree(4))
    monkeypatch.undo()
    gc.collect()
    assert set(os.listdir("/proc/self/fd")) <= descriptors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    assert _check_tree(fm.checkpoint.load(path)) == 3


def test_a_long_name_of_multi_byte_characters_saves(tmp_path):
    """The temporary's name holds the target's first 100 bytes, not characters."""
    path = tmp_path / ("\u00e9" * 120 + ".npz")  # 244 bytes in UTF-8
    try:
        path.touch()
        path.unlink()
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system does not take this name")
    fm.checkpoint.save(path, _tree(6))
    assert _check_tree(fm.checkpoint.load(path)) == 6


def test_a_save_that_fails_while_a_ctrl_c_is_handled_raises_its_own_error(tmp_path):
    """Saving from ``except KeyboardInterrupt:`` is common; the save's own error (here a missing
    directory) is the one raised, not the interrupt being handled."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(FileNotFoundError):
            fm.checkpoint.save(tmp_path / "missing" / "ckpt.npz", _tree(1))
