"""Writes that fail for lack of space, through the real ``camcli`` command.

- A file-size limit (``RLIMIT_FSIZE``, so ``write`` fails with EFBIG): the inputs whose overlay
  exceeds it fail with that reason and leave nothing behind; the others are explained.
- A full disk (a 1 MiB tmpfs as ``--out-dir``): the run stops after a few inputs in a row fail,
  with one message, exit 1, no temporary or half-written files; once there is room,
  ``--skip-existing`` does exactly what is missing.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import resource
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import (
    SMALL_MODEL,
    WARNING,
    Started,
    check_output_sets,
    check_stopped_when_full,
    json_lines,
    mounted_tmpfs,
    run_explain,
)
from cli_helpers import nonblank_lines as _lines
from PIL import Image

from camcli.runner import STOP_AFTER_FULL_WRITES

FILE_LIMIT = 200_000  # bytes: a noise overlay of 400x300 is ~360 kB, a flat one ~1 kB


def _noise(path: Path, size=(400, 300), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=1)


def _limit_file_size():  # a preexec_fn: in the child, before exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 1 MiB tmpfs mounted at ``<tmp>/out``; unmounted at the end of the module."""
    with mounted_tmpfs(tmp_path_factory.mktemp("full") / "out") as disk:
        yield disk


@pytest.fixture(scope="module")
def size_limited(tmp_path_factory):
    """The file-size-limit run, started when the module begins (with ``first_full_run``)."""
    tmp_path = tmp_path_factory.mktemp("limit")
    folder = tmp_path / "in"
    folder.mkdir()
    big, small = [], []
    for i in range(6):  # alternate, so no streak stops the run
        _noise(folder / f"big{i}.png", seed=i)
        Image.new("RGB", (400, 300), (30, 90, 160)).save(folder / f"small{i}.png")
        big.append(f"in/big{i}.png")
        small.append(f"in/small{i}.png")
    order = [name for pair in zip(big, small, strict=True) for name in pair]
    started = Started([*order, "--batch-size", "2", *SMALL_MODEL], tmp_path,
                       preexec_fn=_limit_file_size)
    started.big, started.small, started.folder = big, small, folder
    yield started
    started.stop()


FULL_COUNT = 30  # ~360 kB overlays: a 1 MiB disk holds two or three


@pytest.fixture(scope="module")
def first_full_run(small_disk):
    """The full-disk test's first run, onto the 1 MiB disk (started with the size-limited run:
    the two are independent, and both TensorFlow start-ups, seconds of one core, overlap)."""
    tmp_path = small_disk.parent
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(FULL_COUNT):
        _noise(folder / f"img{i:02d}.png", seed=i)
    started = Started(["in", "-o", "out", "--batch-size", "4", "--json", *SMALL_MODEL], tmp_path)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def started(size_limited, request):
    """Both first runs in flight; the full-disk one only where a tmpfs can be mounted."""
    try:
        request.getfixturevalue("first_full_run")
    except pytest.skip.Exception:
        pass  # the full-disk test reports the skip itself
    return size_limited


def test_a_file_size_limit_fails_only_the_inputs_too_large(started):
    size_limited = started
    folder, big, small = size_limited.folder, size_limited.big, size_limited.small
    run = size_limited.result()
    assert run.returncode == 1, run.stderr
    lines = _lines(run.stderr)
    assert lines[0] == WARNING and lines[-1].startswith("camcli: 6 done, 6 failed in ")
    failures = sorted(lines[1:-1])
    assert failures == sorted(
        f"{name}: cannot write outputs {name}.cam.png: File too large" for name in big
    ), run.stderr
    records = check_output_sets(folder)
    assert sorted(records) == sorted(f"{Path(n).name}.cam.json" for n in small)


def test_the_policy_stops_at_the_first_streak_and_a_write_between_resets_it():
    """What the full-disk runs rely on, on results alone: a success between two failures
    (a failed write's clean-up freed room) resets the streak, a skipped input or another
    failure does not; the streak's last result is passed on, then the source is closed."""
    import errno
    import os

    from camcli.pipeline import ImageResult
    from camcli.runner import OutputsFullError, stop_when_full

    def full(name):
        no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return ImageResult.failed(name, "no space", no_space)

    sequence = [full("a"), ImageResult(Path("b"), ok=True), full("c"),
                ImageResult(Path("d"), ok=True, skipped=True), full("e"),
                ImageResult.failed("f", "not an image", ValueError("f")), full("g"), full("h")]
    closed = []

    def source():
        try:
            yield from sequence
        finally:
            closed.append(True)

    passed = []
    with pytest.raises(OutputsFullError, match=rf"stopped: {STOP_AFTER_FULL_WRITES} inputs in a "
                       r"row could not be written \(No space left on device\)"):
        for result in stop_when_full(source()):
            passed.append(str(result.path))
    assert STOP_AFTER_FULL_WRITES == 3  # the sequence above is built for a streak of 3
    assert passed == ["a", "b", "c", "d", "e", "f", "g"] and closed == [True]


def test_a_full_disk_stops_the_run_and_skip_existing_finishes_it(small_disk, first_full_run):
    tmp_path, count = first_full_run.cwd, FULL_COUNT
    run = first_full_run.result()  # camcli explain in -o out --json, out being 1 MiB
    done = check_stopped_when_full(run, count, STOP_AFTER_FULL_WRITES)
    first = check_output_sets(small_disk)
    assert len(first) == done

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    rerun = run_explain(
        ["in", "-o", "out", "--skip-existing", "--json", *SMALL_MODEL], tmp_path
    )
    assert rerun.returncode == 0, rerun.stderr
    results = json_lines(rerun.stdout)
    skipped = sorted(Path(r["input"]["path"]).name for r in results if r["skipped"])
    assert skipped == sorted(name.removesuffix(".cam.json") for name in first)
    assert len(results) == count
    assert len(check_output_sets(small_disk)) == count
