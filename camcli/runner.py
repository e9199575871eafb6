"""A local run: the three-stage scheduling around the batch core, in one process.

A thread pool decodes inputs ahead of the model, the model's thread runs
:meth:`Pipeline.compute` on a whole batch, and a second pool runs :meth:`Pipeline.finish`
(draw, encode, write) behind it. Every queue is bounded, so memory does not grow with the number
of inputs, and a bad input becomes a failed result instead of stopping the run.

This module knows how inputs are found and scheduled; what happens to a batch is
:mod:`camcli.pipeline`'s, so a distributed engine schedules differently and calls the same core.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from camcli import images, native_stderr, storage
from camcli.errors import InputError, OutputsFullError
from camcli.limits import check_max_bytes
from camcli.outputs import is_up_to_date, remove_stale_lock
from camcli.pipeline import EAGER_MAX_IMAGES, ImageResult, Pipeline
from camcli.sharding import Shard, select

#: What :func:`decoder` returns for an input whose outputs are up to date.
SKIPPED = object()


@dataclass(frozen=True)
class Inputs:
    """Where a run's inputs come from and how they are read."""

    paths: tuple[str, ...]
    recursive: bool = False
    stdin: Iterable[str] | None = None
    max_pixels: int | None = images.DEFAULT_MAX_PIXELS
    skip_existing: bool = False
    shard: Shard | None = None
    storage_options: storage.StorageOptions = storage.NO_OPTIONS
    max_bytes: int | None = None  # read at most this much per input (None: from max_pixels)
    follow_symlinks: bool = True  # False: folders contribute no symlink found inside them

    def __post_init__(self):
        check_max_bytes(self.max_bytes)

    def discover(self, stats=None) -> tuple[Iterable[Path], bool, bool]:
        """The inputs (of this run's shard), whether the run is large enough to compile the
        engine for, and whether they are URLs (fetched by :data:`~camcli.storage.IO_WORKERS`
        threads: network latency). A list when the paths are all local files and folders; a
        stream when one of them is ``-`` (stdin) or a URL (a prefix may hold millions of keys:
        never listed whole)."""
        found = images.discover(self.paths, self.recursive, self.stdin, self.storage_options,
                                self.follow_symlinks)
        found = select(self.shard, found, stats)
        if "-" not in self.paths and not any(storage.is_url(p) for p in self.paths):
            found = list(found)
            return found, len(found) > EAGER_MAX_IMAGES, False
        # a peek: stdin may be a slow producer, so only its first line is waited for
        first = list(itertools.islice(found, 1 if "-" in self.paths else EAGER_MAX_IMAGES + 1))
        remote = any(storage.is_url(path) for path in first)
        compiled = "-" in self.paths or len(first) > EAGER_MAX_IMAGES
        return itertools.chain(first, found), compiled, remote


#: Writes failing for lack of space this many times in a row (no write succeeding between)
#: stop the run with :class:`OutputsFullError`: a full disk fails every input the same way.
STOP_AFTER_FULL_WRITES = 3
_NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def run_local(
    pipeline: Pipeline,
    inputs: Inputs,
    batch_size: int,
    workers: int | None = None,
    stop: threading.Event | None = None,
) -> Iterator[ImageResult]:
    """Explain every input, yielding one result per input (see :meth:`Explainer.run`).

    Raises :class:`OutputsFullError` after :data:`STOP_AFTER_FULL_WRITES` inputs in a row
    failed to write for lack of space; the inputs still in flight are dropped unwritten.
    """
    return stop_when_full(_run(pipeline, inputs, batch_size, workers, stop))


def stop_when_full(results: Iterator[ImageResult]) -> Iterator[ImageResult]:
    """The one place of the full-disk policy: pass results on, stop after a streak of them."""
    streak = 0
    for result in results:
        yield result
        if result.ok and not result.skipped:
            streak = 0
        elif not result.ok and getattr(result.exception, "errno", None) in _NO_SPACE:
            streak += 1
            if streak >= STOP_AFTER_FULL_WRITES:
                results.close()
                raise OutputsFullError(
                    f"stopped: {streak} inputs in a row could not be written "
                    f"({result.exception.strerror}); free some space and rerun with "
                    "--skip-existing to do what is missing"
                )


def _run(pipeline, inputs, batch_size, workers, stop) -> Iterator[ImageResult]:
    found, compiled, remote = inputs.discover(pipeline.stats)
    workers = workers or usable_cores()
    remote_out = storage.is_url(pipeline.options.out_dir)
    readers = max(workers, storage.IO_WORKERS) if remote else workers
    putters = max(workers, storage.IO_WORKERS) if remote or remote_out else workers
    # decoded images waiting for the model, and images being drawn and written
    depth = max(2 * batch_size, 2 * readers) if remote else 2 * batch_size
    window = max(2 * batch_size, putters) if remote or remote_out else 2 * batch_size
    decode = decoder(pipeline, inputs)
    with (
        ThreadPoolExecutor(readers, thread_name_prefix="camcli-decode") as decoders,
        ThreadPoolExecutor(putters, thread_name_prefix="camcli-write") as writers,
    ):
        pending: deque[Future] = deque()
        batch: list[images.DecodedImage] = []

        def flush() -> Iterator[ImageResult]:
            output = pipeline.compute(batch, compiled)
            for i, item in enumerate(batch):
                pending.append(writers.submit(pipeline.finish, item, output, i))
            batch.clear()
            while pending and (pending[0].done() or len(pending) > window):
                with pipeline.stats.time("output_wait"):
                    result = pending.popleft().result()
                yield result

        try:
            for path, decoded in _prefetch(decoders, decode, found, depth, pipeline.stats):
                if stop is not None and stop.is_set():
                    decoders.shutdown(wait=False, cancel_futures=True)
                    break
                if decoded is SKIPPED:
                    yield ImageResult(path, ok=True, skipped=True)
                elif isinstance(decoded, InputError):
                    yield ImageResult.failed(decoded.path, decoded.reason, decoded)
                else:
                    batch.append(decoded)
                    if len(batch) == batch_size:
                        yield from flush()
            if batch:
                yield from flush()
            while pending:
                yield pending.popleft().result()
        finally:  # closed early (a full disk): drop the work not yet started
            decoders.shutdown(wait=False, cancel_futures=True)
            writers.shutdown(wait=False, cancel_futures=True)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, Slurm, a cpuset), which
    the decode and output pools fill; the machine's count where affinity is unknown."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def decoder(pipeline: Pipeline, inputs: Inputs):
    """The decode stage for one input: :data:`SKIPPED`, decoded for the model, or an
    InputError. ``data``: the input's bytes when the caller has read them already (a Ray
    dataset of bytes); otherwise they are read from ``path``."""
    loaded = pipeline.explainer.loaded
    size = tuple(loaded.input_size)
    overlay_side = pipeline.overlay_side()

    def decode(path: Path, data: bytes | None = None):
        try:  # first: an input with no safe place for its outputs is not even read
            paths = pipeline.paths(path) if pipeline.options.write or inputs.skip_existing else None
        except InputError as exc:
            return exc
        if inputs.skip_existing and is_up_to_date(paths, path, pipeline.fingerprint):
            if not storage.is_url(paths.record):  # what a killed run may have left
                remove_stale_lock(paths.record)
            return SKIPPED
        try:
            with pipeline.stats.time("decode"), native_stderr.decoding(path):
                limits = (inputs.max_pixels, inputs.max_bytes)
                if data is None:
                    return images.read_for_model(path, size, loaded.channels, *limits,
                                                 stop=pipeline.stop, overlay_side=overlay_side,
                                                 resample=loaded.resample)
                return images.decode_for_model(path, data, size, loaded.channels, *limits,
                                               overlay_side=overlay_side, resample=loaded.resample)
        except InputError as exc:
            return exc
        except Exception as exc:  # a decoder bug on one odd file must not stop the run
            error = InputError(path, f"cannot decode image: {exc!r}")
            error.__cause__ = exc
            return error

    return decode


def _prefetch(pool, fn, items: Iterable, depth: int, stats) -> Iterator:
    """``(item, fn(item))`` for each item, computed on ``pool`` with ``depth`` calls in flight."""
    window: deque[tuple[object, Future]] = deque()

    def oldest():
        item, future = window.popleft()
        with stats.time("input_wait"):
            return item, future.result()

    for item in items:
        window.append((item, pool.submit(fn, item)))
        if len(window) >= depth:
            yield oldest()
    while window:
        yield oldest()
