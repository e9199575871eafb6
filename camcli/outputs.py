"""Where results go and what they say: output naming, the JSON schema, atomic writes.

Naming. For an input ``photos/cat.jpg`` the outputs sit beside it (or under ``--out-dir``,
mirroring the input's path relative to the current folder) and keep the input's full file name,
so ``cat.jpg`` and ``cat.png`` never write the same file:

- ``cat.jpg.cam.json``                 the record (schema below)
- ``cat.jpg.cam.png``                  the overlay, when one class is explained
- ``cat.jpg.cam.281_tabby.png``        one overlay per class, when several are explained
- ``cat.jpg.cam.npy`` / ``cat.jpg.cam.281_tabby.npy``   raw maps with ``--save-heatmap``

Files matching these patterns are camcli's own and are never taken as inputs, nor are the
hidden ``.cat.jpg.cam.lock`` files that exist while a run writes an input's outputs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import re
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from camcli import storage
from camcli.errors import InputError
from camcli.limits import DEFAULT_READ_LIMIT

#: The version of the records and ``--json`` lines, written down as a JSON Schema (draft
#: 2020-12) in ``camcli/data/record.schema.json``: bump both for any change to either.
SCHEMA_VERSION = 2
SCHEMA_FILE = "record.schema.json"
OUTPUT_TAG = ".cam"
# An output name is an input's full name (with its extension) + ".cam" [+ ".<index>_<label>"]
# + a suffix; requiring the input's extension keeps user files like "door.cam.jpg" as inputs.
_OUTPUT_NAME = re.compile(
    r"\.[A-Za-z0-9]{1,5}\.cam(\.\d+_[\w-]*)?\.(json|png|jpg|webp|npy|lock)$", re.IGNORECASE
)
TEMP_SUFFIX = ".camcli-tmp"
# Read once, at import: outputs get the mode open() would give them, not mkstemp's private 0600.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def is_camcli_output(name: str) -> bool:
    """True for file names camcli writes (outputs and its temporary files)."""
    return bool(_OUTPUT_NAME.search(name)) or name.endswith(TEMP_SUFFIX)


def _slug(label: str) -> str:
    return re.sub(r"[^\w-]+", "_", label, flags=re.ASCII).strip("_")[:60] or "class"


@dataclass(frozen=True)
class OutputPaths:
    """The output files of one input."""

    base: Path | storage.Url  # folder / input file name; each output appends its own suffix

    @classmethod
    def for_input(cls, path, out_dir=None) -> OutputPaths:
        """Beside ``path``, or under ``out_dir`` mirroring it: a local path relative to the
        current folder (or absolute), a URL as ``bucket/key`` (``host/path``). Either may be a
        :class:`~camcli.storage.Url`. Raises :class:`UnsafeOutputPath` when ``path`` cannot be
        mapped to a place under ``out_dir`` (see :func:`output_base`)."""
        if out_dir is None:
            return cls(path.parent / path.name)
        return cls(output_base(path, out_dir))

    def _with(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)

    @property
    def record(self) -> Path:
        return self._with(f"{OUTPUT_TAG}.json")

    def overlay(self, index: int, label: str, several: bool, fmt: str = "png") -> Path:
        return self._with(self._class_part(index, label, several) + f".{fmt}")

    def heatmap(self, index: int, label: str, several: bool) -> Path:
        return self._with(self._class_part(index, label, several) + ".npy")

    @staticmethod
    def _class_part(index: int, label: str, several: bool) -> str:
        return f"{OUTPUT_TAG}.{index}_{_slug(label)}" if several else OUTPUT_TAG


class UnsafeOutputPath(InputError):
    """An input whose name cannot be mapped to outputs under ``--out-dir`` safely."""


#: No mirrored key may hold NUL or another control character (no file name should), nor (see
#: :func:`_key_segments`) a backslash, a folder separator on Windows and in some tools.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def output_base(path, out_dir) -> Path | storage.Url:
    """Where ``path``'s outputs go under ``out_dir``, proven to stay under it: the one place
    that maps an input to an output location (every run, local or Ray, calls it through
    :meth:`OutputPaths.for_input`).

    A local path is made absolute and normalised, then mirrored relative to the current folder
    (or from its root). A URL's ``host/key`` is mirrored segment by segment; an object key is
    any string, so a key with an empty, ``.`` or ``..`` segment, a control character or a
    backslash is refused (:class:`UnsafeOutputPath`), never normalised: two keys must not share
    outputs, and ``ok/../../x.jpg`` must not write outside ``out_dir``. Whatever the
    segments, the result is then checked to lie strictly inside ``out_dir``.
    """
    root = out_dir if isinstance(out_dir, storage.Url) else Path(out_dir)
    if isinstance(path, storage.Url):
        parts = _key_segments(path)
    else:
        absolute = Path(os.path.normpath(os.path.abspath(path)))
        try:
            parts = absolute.relative_to(Path.cwd()).parts
        except ValueError:  # outside the current folder: mirror the absolute path
            parts = absolute.relative_to(absolute.anchor).parts
    if not parts:
        raise UnsafeOutputPath(path, f"cannot be mapped under --out-dir {root}: no file name")
    base = root / "/".join(parts) if isinstance(root, storage.Url) else root.joinpath(*parts)
    if not _inside(root, base, parts):
        raise UnsafeOutputPath(path, f"its outputs would leave --out-dir {root}")
    return base


def _key_segments(url: storage.Url) -> tuple[str, ...]:
    """``host/key`` of ``url`` as folder names, or :class:`UnsafeOutputPath` saying why not."""
    if _CONTROL.search(url.text):  # checked on the text: urlsplit drops tabs and newlines
        raise UnsafeOutputPath(url, "cannot be mapped under --out-dir: a control character "
                                    "in its key")
    parts = tuple(url.key().split("/"))
    if not parts[0]:
        raise UnsafeOutputPath(url, "cannot be mapped under --out-dir: no host or bucket")
    for part in parts:
        if part in ("", ".", ".."):
            why = f"a {part!r} segment" if part else "an empty segment (//)"
            raise UnsafeOutputPath(url, f"cannot be mapped under --out-dir: {why} in its key")
        if "\\" in part:
            raise UnsafeOutputPath(url, "cannot be mapped under --out-dir: a backslash in its "
                                        "key (a folder separator elsewhere)")
    return parts


def _inside(root, base, parts) -> bool:
    """The proof: ``base`` is strictly inside ``root``, lexically after normalisation (no
    ``..`` can climb out of it, no absolute segment can replace it)."""
    if isinstance(root, storage.Url):
        top = posixpath.normpath("/" + urlsplit(root.text).path.lstrip("/"))
        where = posixpath.normpath("/" + urlsplit(base.text).path.lstrip("/"))
        same_place = urlsplit(root.text).netloc == urlsplit(base.text).netloc
    else:
        top, where, same_place = os.path.abspath(root), os.path.abspath(base), True
    return (
        same_place
        and ".." not in parts
        and where != top
        and os.path.commonpath([top, where]) == top
    )


def atomic_write(path: Path, data: bytes, protect: Path | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader (or a later run) sees either the old file or the complete new one, never a torn
    write. ``protect`` is the input this output belongs to: it is never overwritten. Nor is any
    existing file whose name is not one of camcli's output names: input ``scan`` writes
    ``scan.cam.png``, which may be another input (names like ``door.cam.jpg`` are inputs).
    """
    if protect is not None and os.path.exists(path) and os.path.samefile(path, protect):
        raise OSError(f"refusing to overwrite the input file {protect}")
    if os.path.lexists(path) and not is_camcli_output(path.name):
        raise OSError(f"refusing to overwrite {path}: not a camcli output name, may be an input")
    replace_atomically(path, data)


#: How often a run waiting for another run's lock on an output set looks again (seconds).
LOCK_POLL_SECONDS = 0.05


def lock_path(record: Path) -> Path:
    """The hidden ``.<input>.cam.lock`` beside ``record`` that :func:`locked` takes."""
    return record.with_name(f".{record.name.removesuffix('.json')}.lock")


@contextlib.contextmanager
def locked(record: Path, first: Path | None = None, stop: threading.Event | None = None):
    """Hold an exclusive lock on the output set of ``record``, across processes and threads.

    Two runs writing the same outputs (a rerun while one is going, overlapping shards) take
    turns per input, so a record never names another run's files. The lock is ``flock`` on a
    hidden ``.<input>.cam.lock`` beside the record, which the holder deletes before releasing
    it; a waiter that then holds the lock of a deleted file tries again on the new one. The
    lock file is never followed through a symbolic link and must be a regular file. Waiting
    is a poll, so setting ``stop`` (SIGINT/SIGTERM) ends it with :class:`InterruptedError`.
    Errors name ``first``, the first output that was to be written, not the lock file.
    """
    path = lock_path(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = _open_lock(path, first or record)
        try:
            _wait_for(fd, stop, first or record)
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _open_lock(path: Path, output: Path) -> int:
    """The lock file's descriptor: created if missing, never through a symlink, regular."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o666 & ~_UMASK)
    except OSError as exc:  # name an output, not the lock file
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"its lock file {path.name} is a symbolic link (refused)",
                          str(output)) from exc
        raise OSError(exc.errno, exc.strerror, str(output)) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"its lock file {path.name} is not a regular file (refused)",
                      str(output))
    return fd


def _wait_for(fd: int, stop: threading.Event | None, output: Path) -> None:
    """``flock(fd, LOCK_EX)``, polled, so a signal's ``stop`` can end the wait."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if stop is not None and stop.is_set():
            raise InterruptedError(errno.EINTR, "interrupted while another run held its lock",
                                   str(output))
        time.sleep(LOCK_POLL_SECONDS)


def remove_stale_lock(record: Path) -> None:
    """Remove ``record``'s lock file when no run holds it: what a killed run left behind (an
    input that is skipped later would otherwise keep it for ever). Taken and removed as
    :func:`locked` does, so a run that waits on it tries again on a new one; a symlink or
    other non-regular file there is left alone (:func:`locked` refuses it)."""
    path = lock_path(record)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # none (the usual case), a symlink, or not ours to open
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                os.unlink(path)
    except OSError:  # held by a live run (BlockingIOError), or already gone
        pass
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    without :func:`atomic_write`'s guards (for files of fixed names, such as audit reports)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX
        )
    except OSError as exc:  # name the output, not the temporary file that could not be made
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError) and exc.errno:  # e.g. ENOSPC: name the output it was for
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def json_schema() -> dict:
    """The JSON Schema of a ``--json`` line; ``$defs/record_file`` is a record file's."""
    from importlib import resources

    return json.loads(resources.files("camcli").joinpath("data", SCHEMA_FILE).read_text())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_json_bytes(record: dict) -> bytes:
    """Serialise a record: sorted keys, no NaN/Infinity (they are not JSON)."""
    return (json.dumps(record, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


def settings_fingerprint(settings: dict) -> str:
    """A short stable hash of everything that changes what the outputs contain."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def is_up_to_date(paths: OutputPaths, input_path: Path, fingerprint: str) -> bool:
    """True when ``input_path``'s outputs are complete, newer than it and made the same way.

    The record is written last and names every other output with its sha256, so a readable
    record with the same settings fingerprint whose files all hold the bytes it hashed means
    the earlier run finished this input, and nothing has truncated or changed its files since.
    """
    if storage.is_url(paths.record) or storage.is_url(input_path):
        return _object_up_to_date(paths, input_path, fingerprint)
    try:
        record_stat = paths.record.stat()
        if record_stat.st_mtime < Path(input_path).stat().st_mtime:
            return False
        record = json.loads(_read(paths.record))
    except (OSError, ValueError, InputError):
        return False
    if not isinstance(record, dict) or record.get("settings_fingerprint") != fingerprint:
        return False
    return _outputs_intact(paths.record.parent, record)


def _object_up_to_date(paths: OutputPaths, input_path, fingerprint: str) -> bool:
    """:func:`is_up_to_date` when the input or the outputs are on object storage: the record
    names the input's version (size, ETag or modification time), which must be today's."""
    try:
        record = json.loads(_read(paths.record))
        if not isinstance(record, dict) or record.get("settings_fingerprint") != fingerprint:
            return False
        if storage.is_url(input_path):
            if not storage.same_version(record["input"].get("object"), storage.version(input_path)):
                return False
        elif storage.version(paths.record)["modified"] < Path(input_path).stat().st_mtime:
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError, storage.InputError):
        return False
    return _outputs_intact(paths.record.parent, record)


def _outputs_intact(folder, record: dict) -> bool:
    """Every file ``record`` names beside it holds the bytes whose size and sha256 it names
    (the size first: a truncated file is found without reading it)."""
    try:
        return all(
            _holds(folder, entry[key], entry[f"{key}_sha256"], entry.get(f"{key}_bytes"))
            for entry in record.get("explanations", [])
            for key in ("overlay", "heatmap")
            if entry.get(key)
        )
    except (KeyError, TypeError, AttributeError):  # not a record camcli wrote
        return False


def _holds(folder, name, digest, size) -> bool:
    if not isinstance(name, str) or "/" in name or name in (".", ".."):
        return False  # a record names files beside it, nothing else
    location = folder / name
    try:
        if size is not None and _size(location) not in (size, None):
            return False
        return sha256(_read(location, OUTPUT_READ_LIMIT)) == digest
    except (OSError, InputError):
        return False


#: A record is a few kilobytes; a larger "record" (or a FIFO named like one) is not trusted.
RECORD_READ_LIMIT = 16 << 20
#: An overlay or map read back to check its hash (a full-resolution PNG of a huge photo).
OUTPUT_READ_LIMIT = DEFAULT_READ_LIMIT


def _size(location) -> int | None:
    """An output's size in bytes, without reading it (None when the store does not say)."""
    if storage.is_url(location):
        return storage.version(location)["size"]
    return os.stat(location, follow_symlinks=False).st_size


def _read(location, limit: int = RECORD_READ_LIMIT) -> bytes:
    """An output's bytes: bounded, and never from a FIFO or device (it would hang the run)."""
    if storage.is_url(location):
        return storage.read_bytes(location, limit)
    return storage.read_file(location, limit)
