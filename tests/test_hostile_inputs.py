"""camcli probed as an attacker would (issue 21 §6), through the real CLI: object keys and
URLs that try to write outside ``--out-dir``, lock files that are symlinks, inputs that never
end (/dev/zero, a FIFO, an endless web page), and file names that carry terminal escapes.

Each hostile input must fail (or be skipped) with one clear line while the rest of the batch
goes on, and nothing may be written outside the places camcli owns.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import (
    SMALL_MODEL,
    WARNING,
    Started,
    hold_flock,
    offline_env,
    run_all,
    run_explain,
)
from PIL import Image


def _jpeg(seed: int, size=(48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _lines(stderr: str) -> list[str]:
    """camcli's stderr without the random-weights warning."""
    return [line for line in stderr.splitlines() if line.strip() and line != WARNING]


def _written(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and ".cam." in p.name}


class _AnyJpeg(http.server.BaseHTTPRequestHandler):
    """Every ``*.jpg`` path is a small JPEG (as a server that normalises ``..`` away would
    answer); ``/endless.jpg`` streams a JPEG header and then zeros until the client leaves."""

    def do_GET(self):
        if self.path.endswith("/endless.jpg"):
            return self._endless()
        body = _jpeg(3)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _endless(self):
        self.send_response(200)  # no length: the body ends when the connection does
        self.end_headers()
        self.server.endless_started.set()
        chunk = bytes(1 << 16)
        try:
            self.wfile.write(_jpeg(4)[:200])
            while not self.server.stopping.is_set():
                self.wfile.write(chunk)
        except OSError:  # the client hung up: what a bounded read does
            self.server.endless_stopped.set()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    """A loopback web server for the module (it stops itself at the end)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnyJpeg)
    server.daemon_threads = True
    server.stopping, server.endless_started = threading.Event(), threading.Event()
    server.endless_stopped = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- keys escaping out/


EVIL_KEY = "ok/../../../../tmp/x/victim/evil.jpg"


def test_object_keys_and_urls_never_write_outside_out_dir(s3_server, web, tmp_path):
    """A key with ``..`` segments listed under a prefix, or named as a URL, and an http URL
    climbing out of its host: each fails with the reason; the good inputs are written under
    out/ (a folder, or a URL prefix); nothing appears anywhere else."""
    client = s3_server.client()
    client.create_bucket(Bucket="hostile")
    client.create_bucket(Bucket="hostile-out")
    client.put_object(Bucket="hostile", Key="ok/good.jpg", Body=_jpeg(1))
    client.put_object(Bucket="hostile", Key=EVIL_KEY, Body=_jpeg(2))
    client.put_object(Bucket="hostile", Key="ok//twice.jpg", Body=_jpeg(5))
    work = tmp_path / "a" / "b"  # the climbs land in tmp_path, where the test can look
    work.mkdir(parents=True)
    climbing = f"{web.url}/a/../../../tmp/x/y.jpg"
    env = offline_env(work, **s3_server.env)
    listed, named = run_all([
        (["explain", *SMALL_MODEL, "s3://hostile/ok/", "-r", "-o", "out"], env),
        (["explain", *SMALL_MODEL, f"s3://hostile/{EVIL_KEY}", climbing, f"{web.url}/fine.jpg",
          "-o", "s3://hostile-out/run/"], env),
    ], work)

    assert listed.returncode == 1, listed.stderr
    assert _lines(listed.stderr)[:-1] == [
        f"s3://hostile/{EVIL_KEY}: cannot be mapped under --out-dir: a '..' segment in its key",
        "s3://hostile/ok//twice.jpg: cannot be mapped under --out-dir: an empty segment (//) "
        "in its key",
    ]
    assert "1 done, 2 failed" in listed.stderr.splitlines()[-1]
    assert _written(tmp_path) == {work / "out/hostile/ok/good.jpg.cam.json",
                                  work / "out/hostile/ok/good.jpg.cam.png"}

    assert named.returncode == 1, named.stderr
    assert sorted(_lines(named.stderr)[:-1]) == sorted([
        f"s3://hostile/{EVIL_KEY}: cannot be mapped under --out-dir: a '..' segment in its key",
        f"{climbing}: cannot be mapped under --out-dir: a '..' segment in its key",
    ])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="hostile-out")
    keys = {o["Key"] for page in pages for o in page.get("Contents", [])}
    assert keys == {"run/127.0.0.1/fine.jpg.cam.json", "run/127.0.0.1/fine.jpg.cam.png"}


# --------------------------------------------------------------------------- lock files


def _photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg(seed))
    return path


def _opened(pid: int, path: Path) -> bool:
    """True when process ``pid`` has ``path`` open."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir() if fds.exists() else ():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                return True
    return False


def test_lock_files_are_not_followed_and_waits_end_on_sigterm(tmp_path):
    """A dangling symlink as a lock file creates nothing; a symlink to a file held under
    flock does not make the run wait; a lock another process holds is waited for only until
    SIGTERM; the stale empty lock a SIGKILLed run left is removed by the next run."""
    for i, name in enumerate(("good", "dangling", "to-held", "waits")):
        _photo(tmp_path / "in" / f"{name}.jpg", seed=i)
    victim = tmp_path / "victim"
    (tmp_path / "in/.dangling.jpg.cam.lock").symlink_to(victim)
    held = tmp_path / "held"
    (tmp_path / "in/.to-held.jpg.cam.lock").symlink_to(held)
    holders = [hold_flock(held), hold_flock(tmp_path / "in/.waits.jpg.cam.lock")]
    try:
        links = Started(["in/good.jpg", "in/dangling.jpg", "in/to-held.jpg", *SMALL_MODEL],
                        tmp_path)
        waiting = Started(["in/waits.jpg", *SMALL_MODEL], tmp_path)
        deadline = time.monotonic() + 120
        while not _opened(waiting.process.pid, tmp_path / "in/.waits.jpg.cam.lock"):
            assert waiting.process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # it waits for the lock now
        waiting.process.send_signal(signal.SIGTERM)
        stopped = waiting.result(timeout=30)  # the old code waited for ever
        refused = links.result()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()

    assert stopped.returncode == 130, stopped.stderr
    assert _lines(stopped.stderr)[:-1] == [
        "in/waits.jpg: cannot write outputs in/waits.jpg.cam.png: interrupted while another "
        "run held its lock"]
    assert "interrupted: 0 done, 1 failed" in stopped.stderr.splitlines()[-1]

    assert refused.returncode == 1, refused.stderr
    assert _lines(refused.stderr)[:-1] == [
        f"in/{name}.jpg: cannot write outputs in/{name}.jpg.cam.png: its lock file "
        f".{name}.jpg.cam.lock is a symbolic link (refused)" for name in ("dangling", "to-held")
    ]
    assert not victim.exists() and held.read_bytes() == b""
    assert (tmp_path / "in/good.jpg.cam.json").is_file()

    # A run SIGKILLed after writing good.jpg's outputs left its lock: the next run, which
    # skips good.jpg, removes it instead of leaving it for ever.
    (tmp_path / "in/.good.jpg.cam.lock").write_bytes(b"")
    rerun = run_explain(["in/good.jpg", "--skip-existing", *SMALL_MODEL], tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "0 done, 1 skipped, 0 failed" in rerun.stderr.splitlines()[-1]
    assert sorted(p.name for p in (tmp_path / "in").glob(".good*")) == []
