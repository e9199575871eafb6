"""Where the run report finds what runs left behind: records (``*.cam.json``) and failure logs.

Local folders (searched recursively, in sorted order, symlinked folders not followed) and
single record files for now. :func:`open_source` is the one place that maps what the user typed
to a backend: an object-storage backend (``s3://``, ``gs://`` through fsspec) is one more class
with the same three methods.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from camcli.errors import UsageError
from camcli.outputs import OUTPUT_TAG, is_camcli_output

RECORD_SUFFIX = f"{OUTPUT_TAG}.json"
#: The folder under ``--out-dir`` where a run with failures logs them (see :mod:`.runlog`).
FAILURES_DIR = "camcli-failures"


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
        return path.read_bytes()


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
