"""Where the run report finds what runs left behind: records (``*.cam.json``) and failure logs.

Local folders (searched recursively, in sorted order, symlinked folders not followed) and
single record files for now. :func:`open_source` is the one place that maps what the user typed
to a backend: an object-storage backend (``s3://``, ``gs://`` through fsspec) is one more class
with the same three methods.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from camcli.errors import UsageError
from camcli.outputs import OUTPUT_TAG, is_camcli_output

RECORD_SUFFIX = f"{OUTPUT_TAG}.json"
#: The folder under ``--out-dir`` where a run with failures logs them (see :mod:`.runlog`).
FAILURES_DIR = "camcli-failures"
#: A record is a few kB; a failure log one short line per failed input.
MAX_READ = 64 << 20


def is_record_name(name: str) -> bool:
    return name.endswith(RECORD_SUFFIX) and is_camcli_output(name)


@dataclass(frozen=True)
class LocalSource:
    """A folder (searched recursively) or one record file on the local disk."""

    path: Path

    def records(self) -> Iterator[Path]:
        if self.path.is_file():
            yield self.path
            return
        for folder, subfolders, files in os.walk(self.path):
            subfolders.sort()
            for name in sorted(files):
                if is_record_name(name):
                    yield Path(folder) / name

    def failure_logs(self) -> Iterator[Path]:
        if self.path.is_file():
            return
        for folder, subfolders, files in os.walk(self.path):
            subfolders.sort()
            if Path(folder).name == FAILURES_DIR:
                yield from (Path(folder) / name for name in sorted(files)
                            if name.endswith(".jsonl"))

    def read(self, path: Path) -> bytes:
        """A record's or a failure log's bytes: a regular file (a FIFO or a device named like a
        record is never waited on nor read without end) of at most :data:`MAX_READ` bytes."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            data = handle.read(MAX_READ + 1)
        if len(data) > MAX_READ:
            raise OSError(errno.EFBIG, f"larger than {MAX_READ >> 20} MiB", str(path))
        return data


def open_source(text: str | os.PathLike) -> LocalSource:
    """The backend for one ``camcli report`` argument; a clear usage error when there is none."""
    from camcli import storage

    text = os.fspath(text)
    if storage.is_url(text):
        raise UsageError(f"{text}: camcli report reads local folders only for now "
                         "(object-storage URLs are not supported yet)")
    path = Path(text)
    if not path.exists():
        raise UsageError(f"{text}: no such file or folder")
    if path.is_file() and not is_record_name(path.name):
        raise UsageError(f"{text}: not a folder or a camcli record (*{RECORD_SUFFIX})")
    return LocalSource(path)
