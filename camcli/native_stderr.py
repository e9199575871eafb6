"""What libraries print on stderr behind camcli's back, kept off camcli's stderr.

Two routes: libtiff, libpng and libjpeg (inside Pillow) write warnings straight to fd 2, from
whichever thread is decoding, bypassing Python; and Python libraries log through
:mod:`logging`, whose last-resort handler prints any record of level WARNING or above on
``sys.stderr`` when nobody configured logging (Pillow's TIFF reader logs ``More samples per
pixel than can be decoded: N`` as an error before refusing such a file).

A run's stderr must carry only camcli's lines (progress, one line per failed input, the
summary), so :func:`capture` redirects fd 2 to a pipe once for
the whole process and points ``sys.stderr`` at a duplicate of the real stderr: everything
written through Python (tqdm, ``typer.echo(err=True)``, tracebacks) still reaches the terminal,
and only native writes land in the pipe. A reader thread drains the pipe line by line; with
``show`` each line is printed as ``camcli: debug: <input>: <line>``, naming the inputs being
decoded at that moment (:func:`decoding` marks them, and at the end of a decode waits until
the reader has caught up), and otherwise it is dropped. Log records that reach the root logger
take the same way: a handler there (which also keeps the last-resort handler quiet) shows them
as the same debug lines with ``show``, and drops them otherwise.

fd 2 is process-wide and decoding runs on several threads, so a line is attributed to every
input in flight when it arrived; with one decoder thread that is exactly the input that caused
it. Nothing here imports TensorFlow or Pillow.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import sys
import threading
from collections import Counter

from camcli.errors import printable

_in_flight: Counter[str] = Counter()
_lock = threading.Lock()
_active: _Capture | None = None


@contextlib.contextmanager
def decoding(path):
    """Mark ``path`` as being decoded, so native output meanwhile is attributed to it."""
    if _active is None:
        yield
        return
    name = str(path)
    with _lock:
        _in_flight[name] += 1
    try:
        yield
    finally:
        _active.sync()  # what this thread wrote is read while ``path`` is still in flight
        with _lock:
            _in_flight[name] -= 1
            if not _in_flight[name]:
                del _in_flight[name]


_MARK = b"\0camcli-sync "


class _Capture:
    def __init__(self, show: bool):
        self.show = show
        self.waiting: dict[int, threading.Event] = {}
        self.tokens = itertools.count()
        sys.stderr.flush()
        self.real_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.stream = open(  # noqa: SIM115 - it lives as long as the process's sys.stderr
            self.real_fd, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
            errors="backslashreplace", closefd=False,
        )
        self.saved_stderr, sys.stderr = sys.stderr, self.stream
        self.reader = threading.Thread(
            target=self._drain, args=(read_fd,), name="camcli-native-stderr", daemon=True
        )
        self.reader.start()
        self.log_handler = _LogLines(self)
        logging.getLogger().addHandler(self.log_handler)

    def _drain(self, read_fd: int) -> None:
        with open(read_fd, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                with _lock:
                    inputs = sorted(_in_flight)
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    before, mark, token = line.partition(_MARK)
                    self._emit(before, inputs)
                    if mark:
                        self._synced(int(token))
            if pending:
                self._emit(pending, [])

    def sync(self) -> None:
        """Return once the reader has read everything written to fd 2 before this call."""
        if not self.show:
            return
        token, done = next(self.tokens), threading.Event()
        with _lock:
            self.waiting[token] = done
        os.write(2, _MARK + b"%d\n" % token)
        done.wait(timeout=2)

    def _synced(self, token: int) -> None:
        with _lock:
            done = self.waiting.pop(token, None)
        if done is not None:
            done.set()

    def _emit(self, line: bytes, inputs: list[str]) -> None:
        text = line.decode("utf-8", "backslashreplace").rstrip()
        if self.show and text:
            where = f"{', '.join(inputs)}: " if inputs else ""
            self.stream.write(f"camcli: debug: {printable(where + text)}\n")

    def stop(self) -> None:
        """Put fd 2 back and print what is still in the pipe (the reader ends at its EOF)."""
        global _active
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()
            os.dup2(self.real_fd, 2)  # closes the pipe's last write end: the reader sees EOF
            self.reader.join(timeout=5)
        logging.getLogger().removeHandler(self.log_handler)
        sys.stderr = self.saved_stderr
        _active = None


class _LogLines(logging.Handler):
    """Library log records: a debug line each (naming the inputs in flight) with ``show``."""

    def __init__(self, capture: _Capture):
        super().__init__()
        self.capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        if not self.capture.show:
            return
        with _lock:
            inputs = sorted(_in_flight)
        try:
            text = f"{record.name}: {record.getMessage()}"
        except Exception:  # a library's malformed format arguments
            text = f"{record.name}: {record.msg!r}"
        for line in text.splitlines():
            self.capture._emit(line.encode("utf-8", "backslashreplace"), inputs)


def capture(show: bool = False) -> None:
    """Send native writes to fd 2 into the pipe for the rest of the process (see the module
    doc); ``show`` prints them as debug lines. Calling it again changes nothing, nor does
    calling it when ``sys.stderr`` is not fd 2 (whoever replaced it handles stderr)."""
    global _active
    try:
        direct = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # e.g. a test runner's in-memory stream
        direct = False
    if _active is not None or not direct:
        return
    _active = _Capture(show)
    atexit.register(_active.stop)
