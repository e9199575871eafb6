"""Where the run report writes: its folder and ``thumbs/`` inside it, never through a link.

Both folders are opened once with ``O_NOFOLLOW``: when either is a symbolic link the report
refuses with a clear error (it would otherwise write, and remove stale thumbnails, in whatever
folder the link points at). Every later write, look-up and removal is made relative to those
open folders (``dir_fd``), so a link swapped in while the report is being built changes nothing.
Writes are atomic: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from camcli.errors import UsageError
from camcli.outputs import TEMP_SUFFIX

THUMBS = "thumbs"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class ReportFolder:
    """The report folder ``path`` (created if missing) and its ``thumbs/``, open for writing."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not os.path.islink(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self.fd = _open_folder(self.path, None, self.path)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(THUMBS, dir_fd=self.fd)
            self.thumbs = _open_folder(THUMBS, self.fd, self.path / THUMBS)
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> ReportFolder:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.thumbs)
        os.close(self.fd)

    def write(self, name: str, data: bytes) -> Path:
        """Replace ``name`` (``index.html``, or ``thumbs/NAME``) atomically."""
        folder, name = self._split(name)
        temporary = f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), 0o666, dir_fd=folder)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=folder)
                raise
        except OSError as exc:  # name the file, not the temporary one
            raise OSError(exc.errno, exc.strerror, str(self._shown(folder, name))) from exc
        return self._shown(folder, name)

    def mtime(self, name: str) -> float | None:
        """When ``name`` last changed, or ``None`` when it is not a regular file."""
        folder, name = self._split(name)
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except OSError:
            return None
        return info.st_mtime if stat.S_ISREG(info.st_mode) else None

    def remove(self, name: str) -> None:
        folder, name = self._split(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)

    def thumbnails(self) -> list[str]:
        """The names in ``thumbs/``."""
        return os.listdir(self.thumbs)

    def _split(self, name: str) -> tuple[int, str]:
        if name.startswith(THUMBS + "/"):
            return self.thumbs, name[len(THUMBS) + 1:]
        return self.fd, name

    def _shown(self, folder: int, name: str) -> Path:
        return (self.path / THUMBS if folder == self.thumbs else self.path) / name


def _open_folder(name, dir_fd: int | None, shown: Path) -> int:
    try:
        return os.open(name, _DIRECTORY, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(shown):
            raise UsageError(f"{shown}: is a symbolic link; camcli report writes only into a "
                             "real folder (remove the link, or give the folder it points to)"
                             ) from None
        if exc.errno == errno.ENOTDIR:
            raise UsageError(f"{shown}: not a folder") from None
        raise
