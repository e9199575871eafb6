"""The pictures a card shows, read only where a record set legitimately points.

A record is a file anyone who can write into the folders may have edited, so a path in it never
makes the report read a file on its own say:

- **the overlay** must be one of the record's own outputs: a camcli output name of the record's
  input (``<input>.cam.png``, ``<input>.cam.<i>_<label>.png``), a plain name in the record's own
  folder (under the folders given to ``camcli report``), a regular file and not a symbolic link;
- **the input** is looked for only where the run found it: beside the record (outputs written
  beside the inputs), at the absolute path the record names, or at its relative path resolved
  against the folder the run was started in: the current folder, or the folder that holds the
  run's ``--out-dir``, which the record's own place tells (``-o out`` wrote the record of
  ``photos/a.jpg`` at ``out/photos/a.jpg.cam.json``). A candidate is taken only when its bytes'
  sha256 equals the record's ``input.sha256``: first, cheaply, the pixel size in the file's
  header must be the record's ``width`` × ``height`` (either way round: EXIF may turn it), then
  the bytes are read (at most what an uncompressed image of that size can take) and hashed, and
  the thumbnail is drawn from those very bytes.

Anything else is shown as no picture with a short reason on the card ("input changed since the
run"), never as another file's picture.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from camcli.outputs import OUTPUT_TAG, is_camcli_output
from camcli.report.sources import RECORD_SUFFIX
from camcli.report.summary import RecordError

#: An overlay is a camcli output image; its size is not in the record, so this bounds a read.
MAX_OVERLAY_BYTES = 256 * 1024 * 1024
#: Bytes of metadata (EXIF, ICC, XMP) allowed on top of an uncompressed image of the input's size.
METADATA_ALLOWANCE = 16 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Picture:
    """A file read for a thumbnail: where it is, its bytes, and when it last changed."""

    path: Path
    data: bytes
    mtime: float


def input_base(record: Path) -> Path:
    """The input path a record's outputs are named after (the record's path minus ``.cam.json``)."""
    return record.with_name(record.name[: -len(RECORD_SUFFIX)])


def check_overlays(record: Path, explained: list[dict]) -> None:
    """Raise :class:`RecordError` when an explanation names an overlay that is not one of this
    record's own output files (a path, ``..``, another file of the folder)."""
    own = input_base(record).name + OUTPUT_TAG
    for i, entry in enumerate(explained):
        name = entry.get("overlay")
        if name is None:
            continue
        if not (isinstance(name, str) and name.startswith(own) and "/" not in name
                and "\\" not in name and "\0" not in name and is_camcli_output(name)):
            raise RecordError(f"explanations[{i}].overlay {name!r} is not an output file of "
                              "this record beside it")


def overlay_mtime(path: Path) -> float | None:
    """When the overlay last changed; ``None`` unless it is a regular file (a symbolic link
    may point anywhere)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_mtime if stat.S_ISREG(info.st_mode) else None


def is_overlay_file(path: Path) -> bool:
    return overlay_mtime(path) is not None


def read_overlay(path: Path) -> Picture | str:
    """The overlay's bytes, or why not (never through a symbolic link)."""
    return _read(path, MAX_OVERLAY_BYTES, follow=False)


def input_candidates(record: Path, recorded: str) -> Iterator[Path]:
    """Where the run that wrote ``record`` found its input named ``recorded``, in order (lazily:
    the first is the usual one)."""
    seen: set[str] = set()
    for candidate in _candidates(record, recorded):
        key = os.path.normpath(os.path.abspath(candidate))
        if key not in seen:
            seen.add(key)
            yield candidate


def _candidates(record: Path, recorded: str) -> Iterator[Path]:
    yield input_base(record)
    if not recorded:
        return
    named = Path(recorded)
    if named.is_absolute():
        yield named
        return
    yield Path.cwd() / named
    if ".." in named.parts:
        return
    mirrored = input_base(Path(os.path.abspath(record)))  # OUT/<named> with --out-dir OUT
    depth = len(named.parts)
    if mirrored.parts[-depth:] == named.parts and len(mirrored.parts) > depth + 1:
        yield mirrored.parents[depth] / named  # the folder holding OUT


def find_input(record: Path, described: dict) -> Picture | str:
    """The record's input, verified against its sha256; or why there is none to show."""
    sha = described.get("sha256")
    width, height = described.get("width"), described.get("height")
    if not (isinstance(sha, str) and _SHA256.match(sha)):
        return "input not shown: the record has no sha256 to check it against"
    if not all(isinstance(side, int) and not isinstance(side, bool) and side > 0
               for side in (width, height)):
        return "input not shown: the record has no pixel size"
    limit = width * height * 8 + METADATA_ALLOWANCE  # 16-bit RGBA, uncompressed
    reasons = []
    for candidate in input_candidates(record, str(described.get("path", ""))):
        found = _read(candidate, limit, follow=True, size=(width, height), sha256=sha)
        if isinstance(found, Picture):
            return found
        reasons.append(found)
    changed = [reason for reason in reasons if reason != "not found"]
    return f"input {changed[0]}: not shown" if changed else "input not found"


def _read(path: Path, limit: int, *, follow: bool, size=None, sha256=None) -> Picture | str:
    """``path``'s bytes if it is a regular file of at most ``limit`` bytes (with ``size``, its
    header's pixel size must match; with ``sha256``, its hash), else a short reason."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # a FIFO never blocks
    try:
        fd = os.open(path, flags | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "not found"
        return "is a symbolic link" if exc.errno == errno.ELOOP else "cannot be read"
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "is not a regular file"
        if info.st_size > limit:
            return "changed since the run (larger than an image of its size)"
        if size is not None and not _header_size_is(handle, size):
            return "changed since the run (another pixel size)"
        try:
            data = handle.read(limit + 1)
        except OSError:
            return "cannot be read"
    if len(data) > limit:
        return "changed since the run (larger than an image of its size)"
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return "changed since the run (its sha256 differs)"
    return Picture(Path(path), data, info.st_mtime)


def _header_size_is(handle: io.BufferedReader, size: tuple[int, int]) -> bool:
    """Whether the image header says ``size`` (either orientation); reads only the header."""
    from PIL import Image

    try:
        with Image.open(handle) as image:
            found = image.size
    except Exception:  # not an image Pillow knows: no thumbnail either way
        return False
    finally:
        handle.seek(0)
    return found in (size, size[::-1])
