"""Headless Chromium for the report tests and benchmarks: finding (or installing) it, one-shot
runs (``--dump-dom``, ``--screenshot``), and a small DevTools client to drive a page.

The client talks the DevTools protocol over ``--remote-debugging-pipe`` (Chromium reads
NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4), so it needs no
websocket library and opens no port. Only the Python standard library.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


class ChromiumMissing(RuntimeError):
    """Chromium is not installed and cannot be installed here; the message says why."""


def find_chromium() -> str:
    """The Chromium binary; installed with apt-get (as root) when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise ChromiumMissing("chromium is not installed and cannot be installed "
                              "(needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[-300:]
        raise ChromiumMissing(f"cannot install chromium: {exc} {detail}") from None
    found = shutil.which("chromium")
    if not found:
        raise ChromiumMissing("apt-get installed no chromium binary")
    return found


def run_once(binary: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless run on ``page`` with extra ``args`` (``--dump-dom``, ``--screenshot=…``)."""
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )


class BrowserError(RuntimeError):
    pass


class Browser:
    """A headless Chromium with one tab, driven through the DevTools protocol.

    ``errors`` collects what the page's console would show in red: uncaught exceptions,
    ``console.error`` calls and the browser's own error entries (a resource that failed to load).
    """

    def __init__(self, binary: str, profile: Path, width: int = 1280, height: int = 900):
        self.width, self.height = width, height
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def wire_fds():  # in the child: fd 3 = our commands, fd 4 = its replies
            os.dup2(commands_read, 3)
            os.dup2(replies_write, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4),
            preexec_fn=wire_fds,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._next_id = 0
        self._pending: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.events: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # ------------------------------------------------------------------ protocol
    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._replies, "rb", buffering=0) as replies:
            while chunk := replies.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    self._dispatch(json.loads(raw))

    def _dispatch(self, message: dict) -> None:
        if "id" in message:
            with self._lock:
                waiting = self._pending.pop(message["id"], None)
            if waiting is not None:
                waiting.put(message)
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            values = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.errors.append("console.error: " + " ".join(map(str, values)))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        self.events.put(message)

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params):
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            waiting: queue.Queue = queue.Queue()
            self._pending[ident] = waiting
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        try:
            reply = waiting.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no reply in {timeout} s") from None
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def call(self, method: str, **params):
        """A command to the tab."""
        return self.send(method, session=self.session, **params)

    # ------------------------------------------------------------------ the page
    def open(self, url: str, ready: str = "document.readyState === 'complete'",
             timeout: float = 60) -> float:
        """Navigate and wait until the JavaScript expression ``ready`` is true; return the wall
        seconds from the navigation command to that moment."""
        started = time.perf_counter()
        self.call("Page.navigate", url=url)
        self.wait_for(ready, timeout)
        return time.perf_counter() - started

    def wait_for(self, expression: str, timeout: float = 30, poll: float = 0.01):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError:  # the page is being replaced
                value = None
            if value:
                return value
            time.sleep(poll)
        raise BrowserError(f"timed out waiting for {expression}")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (promises awaited), as JSON."""
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                          awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression}: {reply['exceptionDetails'].get('text')}")
        return reply["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":  # `make test` runs this first: the tests' network has no route out
    try:
        print(f"chromium: {find_chromium()}")
    except ChromiumMissing as exc:
        print(f"chromium: {exc}; the report tests will be skipped")
