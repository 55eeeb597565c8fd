"""Checkpoints as ``.npz`` files: NumPy arrays plus a JSON description, never pickle.

Any tree of dicts, lists, tuples, plain scalars (``None``, ``bool``, ``int``, ``float``, ``str``)
and NumPy arrays — an optimizer's ``state_dict()``, a scheduler's, the parameters themselves —
becomes a flat ``{name: array}`` mapping that ``np.savez`` writes and
``np.load(..., allow_pickle=False)`` reads back::

    fm.checkpoint.save("ckpt.npz", {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                    "params": params})
    ckpt = fm.checkpoint.load("ckpt.npz")
    opt.load_state_dict(ckpt["optimizer"])

NumPy scalars come back as the Python scalars of equal value;
``inf``/``nan`` are kept (in Python's JSON dialect).

Integrity. A file that is truncated, has a damaged byte, or has an entry too many or too few is
refused with a ``ValueError`` that names the file and what is wrong; :func:`load` checks
everything before it returns, so nothing of a bad file reaches an optimizer. The digests detect
damage and accidental edits; they are not a signature (whoever can write the file can recompute
them).

Format versions. The entry ``__fastmomentum__`` holds the description: a JSON object whose first
key is ``"format"``. The arrays are the entries ``a0``, ``a1``, ... that the tree refers to as
``{"__array__": name}``; a bfloat16 array (ml_dtypes', which ``.npy`` cannot describe) is stored
as its uint16 bits and referred to as ``{"__bfloat16__": name}``.

- ``fastmomentum-checkpoint/1`` (read, no longer written): the description holds ``"format"`` and
  ``"tree"``. It has no digests: a reader relies on the zip CRC-32 of each entry, which catches
  most damage but no consistent rewrite, and ignores entries the tree does not use.
- ``fastmomentum-checkpoint/2`` (written by :func:`to_arrays` and :func:`save`): the description
  also holds ``"arrays"``, ``{name: {"dtype": descr, "shape": [...], "sha256": hex}}``, the
  SHA-256 of each array's dtype, shape and C-order bytes (:func:`array_digest`), and the entry
  ``__fastmomentum_sha256__`` holds the SHA-256 (hex) of the description's UTF-8 bytes. A reader
  checks that digest BEFORE parsing the description, then that the entries are exactly the
  description, its digest and the described arrays, then each array's dtype, shape and digest,
  and only then builds the tree.
- A newer format (``fastmomentum-checkpoint/3`` and on) is refused with a ``ValueError`` that
  names it and asks for a newer fastmomentum; the number is read from the start of the
  description before anything else, so a newer file is refused clearly even where its checks
  differ from these. Any other format name is refused as unsupported.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import re
import secrets
import stat
import sys
import zipfile
from collections.abc import Iterator, Mapping
from itertools import pairwise
from typing import Any, BinaryIO, Union

import numpy as np

from . import storage

__all__ = ["FORMAT", "array_digest", "from_arrays", "load", "save", "to_arrays"]

#: The format :func:`save` and :func:`to_arrays` write.
FORMAT = "fastmomentum-checkpoint/2"
_VERSION = 2  # the newest format this module reads
_FORMAT_1 = "fastmomentum-checkpoint/1"
_META = "__fastmomentum__"  # the JSON description's entry name
_DIGEST = "__fastmomentum_sha256__"  # the entry holding the description's SHA-256 (format /2)
_ARRAY, _ITEMS, _TUPLE = "__array__", "__items__", "__tuple__"  # markers inside the JSON
_BFLOAT16 = "__bfloat16__"
_MARKERS = ({_ARRAY}, {_ITEMS}, {_TUPLE}, {_BFLOAT16})
# How every description starts (json.dumps of a dict whose first key is "format").
_FORMAT_AT_START = re.compile(r'\{"format": "fastmomentum-checkpoint/([0-9]{1,9})"')

PathLike = Union[str, "os.PathLike[str]"]


class _Refused(ValueError):
    """A checkpoint refused, with a complete message (re-raised as a plain ``ValueError``)."""


def _corrupt(what: str) -> _Refused:
    return _Refused(f"corrupt fastmomentum checkpoint: {what}")


def _dtype_name(dtype: np.dtype) -> str:
    """The dtype as the description stores it: its ``.npy`` descr (``'<f8'``; a structured
    dtype's field list as text)."""
    return dtype.str if dtype.fields is None else str(dtype.descr)


def _packed(dtype: np.dtype) -> bool:
    """Whether ``dtype``'s fields (and their fields) follow one another with no padding and no
    overlap: what a ``.npy`` file stores and reads back byte for byte."""
    if dtype.subdtype is not None:
        return _packed(dtype.subdtype[0])
    if dtype.fields is None:
        return True
    offset = 0
    for name in dtype.names or ():
        field, at = dtype.fields[name][:2]
        if at != offset or not _packed(field):
            return False
        offset += field.itemsize
    return offset == dtype.itemsize


# The longest .npy header np.load reads by default (its max_header_size): a longer one, which
# np.save writes for a structured dtype of several hundred fields, is refused at save.
_MAX_HEADER_BYTES = 10_000


def _check_npy_header(array: np.ndarray) -> None:
    """``array``'s ``.npy`` header is one that :func:`load` reads: latin-1 (NumPy writes version
    3.0 for other field names) and no longer than NumPy reads by default. Measured as np.save
    writes it: version 1.0 (a 2-byte length) when the header fits, as any header :func:`load`
    takes does."""
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(
            out, np.lib.format.header_data_from_array_1_0(array))
        length = len(out.getvalue()) - 10  # magic (6), version (2), header length (2)
    except UnicodeEncodeError:
        raise TypeError("cannot store an array of this structured dtype in a checkpoint: its "
                        "field names are not latin-1, which needs a version 3.0 .npy file that "
                        "np.load reads only from a trusted source; rename the fields") from None
    except ValueError:  # longer than version 1.0's 65535 bytes
        length = -1
    if not 0 <= length <= _MAX_HEADER_BYTES:
        raise TypeError(f"cannot store an array of a structured dtype of {len(array.dtype.descr)}"
                        f" fields in a checkpoint: its .npy header would be more than the "
                        f"{_MAX_HEADER_BYTES} bytes that np.load reads safely; split the fields "
                        "into several arrays")


def _without_metadata(dtype: np.dtype) -> bool:
    """Whether neither ``dtype`` nor its fields carry metadata (``np.dtype(..., metadata=)``),
    which a ``.npy`` entry drops (the description would keep it, and no longer match)."""
    if dtype.metadata:
        return False
    if dtype.subdtype is not None:
        return _without_metadata(dtype.subdtype[0])
    fields = dtype.fields
    return fields is None or all(_without_metadata(field[0]) for field in fields.values())


def array_digest(array: np.ndarray) -> str:
    """The SHA-256 (hex) that format ``/2`` stores for ``array``: of its dtype descr and shape as
    JSON (``["<f8", [2, 3]]``), then of its bytes in C order."""
    h = hashlib.sha256(json.dumps([_dtype_name(array.dtype), list(array.shape)]).encode())
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.itemsize:
        h.update(flat.view(np.uint8))  # type: ignore[arg-type]  # the buffer, not a copy
    return h.hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _type_name(node: Any) -> str:
    """``node``'s type as a user would write it: ``set``, ``torch.Tensor``."""
    kind = type(node)
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")


def _conversion(node: Any) -> str:
    """What to store instead of ``node``."""
    if type(node).__module__.split(".")[0] == "torch" and hasattr(node, "detach"):
        return "store t.detach().cpu().numpy() instead of the tensor t"
    if hasattr(node, "__array__") or hasattr(node, "__cuda_array_interface__"):
        return "store it as a NumPy array (np.asarray(x); cupy.asnumpy(x) for a CuPy array)"
    return "convert it to those first"


def to_arrays(tree: Any) -> dict[str, np.ndarray]:
    """Flatten ``tree`` into ``{name: array}`` (format ``/2``): each array under its own name,
    everything else in one JSON description (dicts with non-str keys and tuples keep their types;
    each array's dtype, shape and digest are listed), plus the description's digest.

    A leaf it cannot store raises ``TypeError`` naming its key path, e.g. ``tree['model']['w']``
    (``tree`` being the argument), and what to convert it to."""
    arrays: dict[str, np.ndarray] = {}

    def encode(node: Any, where: str) -> Any:
        if isinstance(node, np.ndarray):
            if node.dtype.hasobject:
                raise TypeError(f"{where}: cannot store an object array in a checkpoint (it would "
                                "need pickle)")
            if isinstance(node, np.ma.MaskedArray):
                raise TypeError(f"{where}: cannot store a numpy.ma.MaskedArray in a checkpoint: "
                                "its mask would be lost; store its .data and "
                                "np.ma.getmaskarray(x) as two arrays")
            if not _packed(node.dtype):
                raise TypeError(f"{where}: cannot store an array of dtype {node.dtype} in a "
                                "checkpoint: its fields leave padding or overlap, which a .npy "
                                "entry does not keep byte for byte; repack it first "
                                "(numpy.lib.recfunctions.repack_fields)")
            if not _without_metadata(node.dtype):
                raise TypeError(f"{where}: cannot store an array of dtype {node.dtype!r} in a "
                                "checkpoint: its dtype carries metadata, which a .npy entry "
                                "drops; store it as a view of the same dtype without metadata")
            try:
                _check_npy_header(node)
            except TypeError as e:
                raise TypeError(f"{where}: {e}") from None
            name = f"a{len(arrays)}"
            if node.dtype.name == "bfloat16" and node.dtype.kind == "V":  # ml_dtypes'
                arrays[name] = np.ascontiguousarray(node).view(np.uint16)
                return {_BFLOAT16: name}
            arrays[name] = node
            return {_ARRAY: name}
        if isinstance(node, np.generic):
            node = node.item()  # NumPy scalars are stored as the Python scalar of equal value
        if isinstance(node, dict):
            # str keys as a JSON object, unless the object would read as one of the markers
            if all(isinstance(k, str) for k in node) and set(node) not in _MARKERS:
                return {k: encode(v, f"{where}[{k!r}]") for k, v in node.items()}
            return {_ITEMS: [[encode(k, f"a key of {where}"), encode(v, f"{where}[{k!r}]")]
                             for k, v in node.items()]}
        if isinstance(node, tuple):
            return {_TUPLE: [encode(v, f"{where}[{i}]") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"{where}: cannot store a {_type_name(node)} in a checkpoint (dicts, "
                        "lists, tuples, str, int, float, bool, None and NumPy arrays only); "
                        f"{_conversion(node)}")

    encoded = encode(tree, "tree")
    specs = {name: {"dtype": _dtype_name(a.dtype), "shape": list(a.shape),
                    "sha256": array_digest(a)} for name, a in arrays.items()}
    # "format" first: a reader finds the version at the start of the text (_FORMAT_AT_START).
    description = json.dumps({"format": FORMAT, "arrays": specs, "tree": encoded})
    return {_META: np.array(description), _DIGEST: np.array(_text_digest(description)),
            **arrays}


def from_arrays(arrays: Mapping[str, Any]) -> Any:
    """Rebuild the tree from :func:`to_arrays`' mapping (or an opened ``np.load`` file), format
    ``/2`` or ``/1``, after the checks of the module docstring.

    Raises ``ValueError`` for anything that is not an intact fastmomentum checkpoint, and
    ``ImportError`` for bfloat16 arrays without ml_dtypes installed."""
    try:
        return _read(arrays, fresh=False)
    except _Refused as e:
        raise ValueError(str(e)) from None
    except ImportError:  # an intact file whose bfloat16 arrays need ml_dtypes: says to install it
        raise
    except Exception as e:  # whatever a damaged zip member makes NumPy or zipfile raise
        raise ValueError(f"corrupt fastmomentum checkpoint: {type(e).__name__}: {e}") from e


def _string_entry(arrays: Mapping[str, Any], name: str, what: str) -> str:
    value = arrays[name]
    if not isinstance(value, np.ndarray) or value.dtype.kind != "U" or value.ndim != 0:
        raise _corrupt(f"{what} (entry {name!r}) is not a string")
    return str(value)


def _read(arrays: Mapping[str, Any], fresh: bool) -> Any:
    """:func:`from_arrays`, raising :class:`_Refused` for what it checks (and anything else for
    what NumPy or zipfile find while reading an entry). ``fresh``: each ``arrays[name]`` is a new
    array that nothing else holds (an ``np.load`` file), so the tree may keep it as it is instead
    of a copy (one copy of the checkpoint in memory, not two)."""
    if _META not in arrays:
        raise _Refused("not a fastmomentum checkpoint: no description entry")
    text = _string_entry(arrays, _META, "the description")
    start = _FORMAT_AT_START.match(text)
    if start is not None and int(start[1]) > _VERSION:
        raise _newer(f"fastmomentum-checkpoint/{int(start[1])}")
    if _DIGEST in arrays:  # verified before the text is parsed
        if _text_digest(text) != _string_entry(arrays, _DIGEST, "the description's digest"):
            raise _corrupt("the description does not match its SHA-256 digest (the file is "
                           "damaged or was edited)")
    try:
        description = json.loads(text)
    except ValueError as e:  # RecursionError is caught by from_arrays
        raise _corrupt(f"the description is not JSON: {e}") from None
    if not isinstance(description, dict):
        raise _corrupt("the description is not a JSON object")
    fmt = description.get("format")
    if fmt == FORMAT:
        if _DIGEST not in arrays:
            raise _corrupt(f"the description's digest entry {_DIGEST!r} is missing")
        loaded: Mapping[str, Any] = _verified_arrays(arrays, description)
    elif fmt == _FORMAT_1:
        loaded = arrays  # no digests: read lazily, as format /1 always was
    elif isinstance(fmt, str) and re.fullmatch(r"fastmomentum-checkpoint/[0-9]+", fmt) \
            and int(fmt.rsplit("/", 1)[1]) > _VERSION:
        raise _newer(fmt)
    else:
        raise _Refused(f"unsupported checkpoint format {fmt!r}; this version reads "
                       f"{_FORMAT_1!r} and {FORMAT!r}")
    if "tree" not in description:
        raise _corrupt("no tree in the description")

    used: set[str] = set()  # names the tree has referred to

    def decode(node: Any) -> Any:
        if isinstance(node, list):
            return [decode(v) for v in node]
        if isinstance(node, dict):
            if set(node) in ({_ARRAY}, {_BFLOAT16}):
                name = node[_ARRAY] if _ARRAY in node else node[_BFLOAT16]
                # np.load's files answer to "a0" and "a0.npy" alike: one entry, one name.
                entry = name[:-4] if isinstance(name, str) and name.endswith(".npy") else name
                if not isinstance(name, str) or entry in (_META, _DIGEST) or name not in loaded:
                    raise _corrupt(f"the tree refers to the array {name!r}, which the file "
                                   "does not hold")
                if entry in used:  # each a copy: a small file could fill the memory
                    raise _corrupt(f"the tree refers to the array {entry!r} more than once, "
                                   "which save() never writes")
                used.add(entry)
                array = loaded[name] if fresh else np.array(loaded[name])
                if _BFLOAT16 in node:
                    if array.dtype != np.uint16:
                        raise _corrupt(f"the bfloat16 array {name!r} is not stored as uint16")
                    array = array.view(storage.bfloat16())
                return array
            if set(node) == {_ITEMS}:
                return {decode(k): decode(v) for k, v in node[_ITEMS]}
            if set(node) == {_TUPLE}:
                return tuple(decode(v) for v in node[_TUPLE])
            return {k: decode(v) for k, v in node.items()}
        return node

    return decode(description["tree"])


def _newer(fmt: str) -> _Refused:
    return _Refused(f"the checkpoint format {fmt!r} is newer than this fastmomentum reads "
                    f"({_FORMAT_1!r} and {FORMAT!r}): upgrade fastmomentum to load it")


def _verified_arrays(arrays: Mapping[str, Any], description: dict[str, Any]
                     ) -> dict[str, np.ndarray]:
    """The described arrays, each checked against its dtype, shape and digest (format /2); the
    entries must be exactly the described ones plus the description and its digest."""
    specs = description.get("arrays")
    if not isinstance(specs, dict):
        raise _corrupt("the description lists no arrays")
    present, expected = set(arrays), {_META, _DIGEST, *specs}
    missing, extra = sorted(expected - present), sorted(present - expected)
    if missing:
        raise _corrupt(f"array entries {missing} are missing")
    if extra:
        raise _corrupt(f"the file holds entries {extra} that the description does not list")
    out = {}
    for name, spec in specs.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("dtype"), str)
                and isinstance(spec.get("shape"), list)
                and all(type(n) is int for n in spec["shape"])
                and isinstance(spec.get("sha256"), str)):
            raise _corrupt(f"the description of the array {name!r} is malformed: {spec!r}")
        value = arrays[name]
        if not isinstance(value, np.ndarray):
            raise _corrupt(f"the entry {name!r} is a {type(value).__name__}, not an array")
        found = (_dtype_name(value.dtype), list(value.shape))
        if found != (spec["dtype"], spec["shape"]):
            raise _corrupt(f"the array {name!r} has dtype {found[0]} and shape "
                           f"{tuple(found[1])}, but the description says {spec['dtype']} and "
                           f"{tuple(spec['shape'])}")
        if array_digest(value) != spec["sha256"]:
            raise _corrupt(f"the array {name!r} does not match its SHA-256 digest (the file is "
                           "damaged or was edited)")
        out[name] = value
    return out


def save(path: PathLike, tree: Any) -> None:
    """Write ``tree`` to exactly ``path`` (no suffix is added) in format ``/2``, atomically and
    race-free:

    - the data go to a new file beside ``path``, created exclusively under a random name (never
      an existing file, never through a link planted there), then flushed to disk;
    - an existing checkpoint's permissions are kept (a new file gets the umask's, as ``open``);
    - ``os.replace`` puts it at ``path`` in one step, and the directory is flushed too.

    So ``path`` always holds a whole checkpoint, the old or the new one, whatever crashes or
    interrupts the save, and of several processes saving to one path at once the last one wins
    (every rank of a job, a background saver overlapping the next save). A link AT ``path`` is
    replaced, not followed. If the save fails, its temporary file is removed and the error
    raised."""
    arrays: dict[str, Any] = to_arrays(tree)
    handling = sys.exc_info()[1]  # the caller's (a save inside `except KeyboardInterrupt:`)
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    try:
        existing = os.stat(target, follow_symlinks=False)
        mode = stat.S_IMODE(existing.st_mode) if stat.S_ISREG(existing.st_mode) else None
    except FileNotFoundError:
        mode = None
    temporary = ""  # the name of the file made for this save, set before it is made
    descriptor = -1  # its descriptor, held here (not by a file object) until closed below
    try:
        for temporary in _temporary_names(directory, os.path.basename(target)):
            try:
                descriptor = os.open(temporary, _NEW_FILE, 0o666)
                break
            except FileExistsError:  # 2**64 names: only an adversary collides, and only once
                temporary = ""  # not ours to remove
        with os.fdopen(descriptor, "wb", closefd=False) as f:
            np.savez(f, **arrays)
            f.flush()
            if mode is not None:
                _set_mode(descriptor, temporary, mode)
            os.fsync(descriptor)
        # Forgotten before it is closed (one step, no call between): an interrupt can then
        # leak it, never close it twice (the number may be another file's by then).
        closing, descriptor = descriptor, -1
        os.close(closing)
        os.replace(temporary, target)
    except BaseException as error:
        if descriptor >= 0:
            with contextlib.suppress(OSError):
                os.close(descriptor)
        if temporary:
            with contextlib.suppress(OSError):  # the error that brought us here is the one to see
                os.unlink(temporary)
        interrupt = _interrupt_behind(error, handling)
        if interrupt is None:
            raise
        raise interrupt from None
    _fsync_directory(directory)


def _interrupt_behind(error: BaseException, handling: BaseException | None
                      ) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt raised during the save that ``error`` (not one itself) was raised
    while handling, if any: zipfile, closing an archive whose entry an interrupt left open,
    raises ``ValueError`` ("Can't close the ZIP file while there is an open writing handle"),
    which an ``except ValueError`` around a save would otherwise swallow. The search stops at
    ``handling``, the exception the caller was handling when it called save: an interrupt from
    before the save is not this save's."""
    seen = None if isinstance(error, KeyboardInterrupt) else error.__context__
    while seen is not None and seen is not handling:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__context__
    return None


# A new file, created with O_EXCL (a name that exists, a planted link included, is never opened)
# and O_NOFOLLOW, with the permissions open() gives a new file (0o666 less the umask).
_NEW_FILE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def _temporary_names(directory: str, name: str) -> Iterator[str]:
    """Random names in ``directory`` for a file that will become ``name``: its start (a name
    near the system's limit would not fit) and 64 random bits. ``save`` holds each name before
    trying to create it, so that an interrupt after the creation still finds it to remove; the
    name is random, so that no file of someone else's can be there under it."""
    start = name[:100]
    while len(os.fsencode(start)) > 100:  # bytes, not characters, meet the limit
        start = start[:-1]
    while True:
        yield os.path.join(directory, f".{start}.{secrets.token_hex(8)}.tmp")


def _set_mode(descriptor: int, path: str, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(descriptor, mode)
    else:  # Windows: only the read-only bit exists
        os.chmod(path, mode)


def _fsync_directory(directory: str) -> None:
    """Flush the directory entry of a rename to disk (POSIX; Windows has no such handle)."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load(path: PathLike) -> Any:
    """Read a tree written by :func:`save` (format ``/2``, or an older ``/1`` file), without
    pickle. Everything is checked before anything is returned: a damaged file raises
    ``ValueError`` naming it and what is wrong. Before any array is read, the archive's layout is
    checked against the file: every entry stored, not compressed, as :func:`save` writes them;
    within the file; no two entries sharing bytes or a name; every ``.npy`` entry holding exactly
    the bytes its header declares. So the arrays a file makes ``load`` allocate never exceed the
    file's own size; the description's JSON, parsed into Python objects, costs up to about 25
    bytes per character of its text (a list of empty dicts; the file stores 4 bytes per
    character). A missing or unreadable file raises ``OSError`` as ``open`` does; bfloat16 arrays
    without ml_dtypes installed raise ``ImportError``."""
    name = os.fspath(path)
    with open(path, "rb") as file:
        try:
            start = file.read(4)
            if start not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip's local or end record
                raise _Refused("not a fastmomentum checkpoint: " + (
                    "the file is empty" if not start else "not an .npz (zip) archive"))
            _check_entry_sizes(file)
            file.seek(0)
            with np.load(file, allow_pickle=False) as arrays:
                return _read(arrays, fresh=True)
        except ImportError:  # an intact file whose bfloat16 arrays need ml_dtypes
            raise
        except Exception as e:  # whatever a damaged file makes zipfile or NumPy raise
            what = str(e) if isinstance(e, _Refused) else \
                f"corrupt fastmomentum checkpoint: {type(e).__name__}: {e}"
            raise ValueError(f"cannot load {name!r}: {what}") from (
                None if isinstance(e, _Refused) else e)


def _check_entry_sizes(file: BinaryIO) -> None:
    """Every entry of the archive stored as it is, within the file, apart from every other and
    under a name of its own, and holding exactly the bytes its ``.npy`` header declares (read from
    the header alone, before any data)."""
    file_size = file.seek(0, os.SEEK_END)
    file.seek(0)
    with zipfile.ZipFile(file) as archive:
        infos = archive.infolist()
        counts = collections.Counter(info.filename for info in infos)
        twice = sorted(name for name, k in counts.items() if k > 1)
        if twice:
            raise _corrupt(f"the archive holds more than one entry named {twice}")
        spans = []  # (start, end, name): each entry's local header and data, in the file
        for info in infos:
            entry = repr(info.filename)
            if info.compress_type != zipfile.ZIP_STORED:
                raise _corrupt(f"the entry {entry} is compressed, which save() never does (to "
                               "read a compressed file you trust: from_arrays(np.load(path)))")
            end = _data_start(file, info) + info.compress_size
            if info.file_size != info.compress_size or end > file_size:
                raise _corrupt(f"the entry {entry} declares {info.file_size} bytes, more than "
                               f"the file's {file_size}")
            spans.append((info.header_offset, end, entry))
        spans.sort()
        for (_, end, first), (start, _, second) in pairwise(spans):
            if start < end:  # entries sharing bytes: a file could list its bytes many times
                raise _corrupt(f"the entries {first} and {second} overlap in the file")
        for info in infos:
            _check_npy_entry(archive, info)


def _data_start(file: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where ``info``'s data start in the file: after its local header, whose name and extra
    field may differ in length from the central directory's."""
    file.seek(info.header_offset)
    header = file.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise _corrupt(f"the entry {info.filename!r} has no local header where the archive's "
                       "directory puts it")
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_length + extra_length


def _check_npy_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """An entry that holds a ``.npy`` array (whatever its name: NumPy reads any entry that
    starts with the magic as one) declares exactly the bytes it holds, and no Python objects."""
    entry = repr(info.filename)
    with archive.open(info) as member:
        if member.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            return  # not an array: read as bytes, at most the entry's (_read refuses it)
        member.seek(0)
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise _corrupt(f"the entry {entry} is a .npy of version {version}, which save() "
                           "never writes")
        if dtype.hasobject:
            raise _corrupt(f"the entry {entry} holds Python objects (it would need pickle)")
        data = info.file_size - member.tell()
        declared = math.prod(shape) * dtype.itemsize
        if declared != data:
            raise _corrupt(f"the entry {entry} declares an array of shape {shape} and dtype "
                           f"{dtype} ({declared} bytes) but holds {data} bytes")


def __getattr__(name: str) -> Any:
    # fastmomentum.checkpoint.convert moved to fastmomentum.convert_state_dict (the file format
    # knows no optimizer conventions); the old name still works, with a warning.
    if name == "convert":
        import warnings

        from .optim import convert_state_dict

        warnings.warn("fastmomentum.checkpoint.convert is now fastmomentum.convert_state_dict",
                      DeprecationWarning, stacklevel=2)
        return convert_state_dict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
