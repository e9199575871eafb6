"""What the CLI tests share: the entry point, an offline environment, child privileges.

Every CLI test runs the real ``camcli`` entry point in a subprocess whose network is a dead
proxy (nothing can be downloaded, deterministically, even where internet exists) and whose
Keras cache is a fresh folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from camcli.outputs import is_camcli_output

CAMCLI = Path(sys.executable).with_name("camcli")
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: connections are refused at once
SMALL_MODEL = ("--model", "mobilenet_v1_0.25_128", "--weights", "none")  # 128x128, 4x4 map
WARNING = "camcli: warning: --weights none: random weights, the maps mean nothing"


def offline_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with downloads made to fail and a private Keras cache."""
    env = dict(os.environ)
    for name in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = DEAD_PROXY
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    env["KERAS_HOME"] = str(home / "keras_home")
    env.update(extra)
    return env


def nonblank_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def drop_file_privileges() -> None:  # a preexec_fn: runs in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def why_file_privileges_stay() -> str | None:
    """None when a child started with :func:`drop_file_privileges` obeys file modes.

    Tests run as root, who reads mode-000 files and writes into read-only folders. The
    interpreter lives under /root (mode 700), so the child cannot become 'nobody'; it stays
    uid 0 but drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding set before exec,
    which leaves the ordinary owner/group/other checks. Otherwise: the reason it cannot.
    """
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run(["true"], preexec_fn=drop_file_privileges, capture_output=True, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"running as root and cannot drop CAP_DAC_OVERRIDE here: {exc}"
    return None


def run_explain(args, cwd: Path, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """``camcli explain *args`` in ``cwd``, offline, output captured as text."""
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    return subprocess.run(
        [str(CAMCLI), "explain", *args],
        cwd=cwd,
        env=offline_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def run_all(commands, cwd: Path, timeout: float = 300, **kwargs):
    """Run several ``camcli *args`` at once, offline, each in ``cwd``; wait for all of them.

    ``commands`` holds argument lists, or ``(args, env)`` pairs to give a run its own
    environment (default :func:`offline_env`). Each start-up (TensorFlow's import) costs seconds
    of one core, so independent runs overlap instead of queueing. Returns the finished runs in
    order, output captured as text.
    """
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    started = []
    for command in commands:
        args, env = command if isinstance(command, tuple) else (command, offline_env(cwd))
        process = subprocess.Popen([str(CAMCLI), *map(str, args)], cwd=cwd, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        started.append((args, process))
    done = []
    try:
        for args, process in started:
            out, err = process.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    finally:
        stop(*(process for _, process in started))
    return done


def start_explain(args, cwd: Path, **kwargs) -> subprocess.Popen:
    """``camcli explain *args`` started in ``cwd``, offline; the caller waits for it."""
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    return subprocess.Popen(
        [str(CAMCLI), "explain", *args], cwd=cwd, env=offline_env(cwd), text=True, **kwargs
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for a run :func:`start_explain` started with output captured; killed on timeout."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        stop(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def stop(*processes: subprocess.Popen) -> None:
    """Kill and reap whichever of ``processes`` still run (a fixture's clean-up)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def hold_flock(path: Path) -> subprocess.Popen:
    """Another process holding ``flock`` on ``path`` (created) until it is killed (a run that
    holds an output set's lock, or anyone else's lock)."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline() == "held\n"
    return process


class Started:
    """``camcli explain *args`` started in ``cwd`` (offline, output captured); ``result()``
    waits for it, then runs ``after`` once. ``facts``: what the test noted before the start."""

    def __init__(self, args, cwd: Path, after=None, facts: dict | None = None, **kwargs):
        self.args, self.cwd, self.after, self.facts = args, cwd, after, facts or {}
        self.process = start_explain(args, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     **kwargs)

    def result(self, timeout: float = 240) -> subprocess.CompletedProcess:
        try:
            out, err = self.process.communicate(timeout=timeout)
        finally:
            self.stop()
        return subprocess.CompletedProcess(self.args, self.process.returncode, out, err)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.after:
            self.after()
            self.after = None


@functools.cache
def _validator(definition: str | None = None):
    """A validator of camcli's JSON Schema (the one in the package), or of one of its
    ``$defs`` (``record_file``)."""
    from jsonschema import Draft202012Validator

    from camcli.outputs import json_schema

    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    if definition is not None:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"],
                  "$ref": f"#/$defs/{definition}"}
    return Draft202012Validator(schema)


def schema_errors(document, definition: str | None = None) -> list[str]:
    """Why ``document`` is not a ``--json`` line (or a ``definition``, e.g. ``record_file``)
    of camcli's JSON Schema: one text per error, the deepest reason of each; empty if valid."""
    from jsonschema.exceptions import best_match

    found = []
    for error in _validator(definition).iter_errors(document):
        deepest = best_match([error, *error.context]) if error.context else error
        where = "/".join(map(str, deepest.absolute_path)) or "(top)"
        found.append(f"{where}: {deepest.message}")
    return found


def json_lines(stdout: str) -> list[dict]:
    """The ``--json`` lines of ``stdout``, each checked against camcli's JSON Schema."""
    lines = []
    for text in nonblank_lines(stdout):
        line = json.loads(text)
        errors = schema_errors(line)
        assert not errors, f"a --json line outside the schema: {errors}\n{text}"
        lines.append(line)
    return lines


#: The keys a ``--json`` line has besides its record's (every line has them).
LINE_KEYS = ("ok", "skipped", "error", "files")


def record_of(line: dict) -> dict:
    """The record a done ``--json`` line carries: the line without :data:`LINE_KEYS`."""
    return {k: v for k, v in line.items() if k not in LINE_KEYS}


def failed_line(path: str, error: str) -> dict:
    """The ``--json`` line of an input that failed for ``error``: its image was not read."""
    from camcli.outputs import SCHEMA_VERSION

    return {"schema_version": SCHEMA_VERSION, "ok": False, "skipped": False, "error": error,
            "input": {"path": path, "width": None, "height": None, "sha256": None}, "files": []}


def check_output_sets(folder: Path) -> dict[str, dict]:
    """Every record is one of camcli's JSON Schema and names files that exist with the bytes it
    hashed; every output file has a record; no temporary or lock file is left. Returns record
    name -> record."""
    found = list(folder.rglob("*.cam.json"))
    records = {p.name: json.loads(p.read_bytes()) for p in found}
    folders = {p.name: p.parent for p in found}
    for name, record in records.items():
        assert schema_errors(record, "record_file") == [], f"{name}: not a record of the schema"
    named = set()
    for name, record in records.items():
        for entry in record["explanations"]:
            for key in ("overlay", "heatmap"):
                if entry[key]:
                    path = folders[name] / entry[key]
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    assert digest == entry[f"{key}_sha256"], f"{name}: {key} is not its own"
                    named.add(path.name)
    others = {p.name for p in folder.rglob("*") if p.is_file() and is_camcli_output(p.name)}
    assert others - named - set(records) == set(), "files no record names (partial outputs)"
    leftovers = [p.name for p in folder.rglob(".*")]
    assert leftovers == [], f"temporary or lock files left: {leftovers}"
    return records


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str = "1m"):
    """``folder`` (created) as a tmpfs of ``size`` for the block; skips where none can be
    mounted (not root, no user namespace). ``mount -o remount,size=…`` gives it room."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


FULL_DISK_FAILURE = (r"in/img\d\d\.png: cannot write outputs out/in/img\d\d\.png\.cam\.(png|json): "
                     r"No space left on device")


def check_stopped_when_full(run: subprocess.CompletedProcess, count: int, stop_after: int) -> int:
    """A ``--json`` run onto a full disk stopped as the policy says: at the first streak of
    ``stop_after`` results in a row failing for lack of space (a write may succeed between two
    failures, when a failed one's clean-up freed room), with one message, exit 1, before all
    ``count`` inputs; stderr holds the warning, one line per failure, the stop and the summary.
    Returns how many inputs were explained."""
    import re

    assert run.returncode == 1, run.stderr
    results = json_lines(run.stdout)
    streak, streaks = 0, []
    for result in results:
        streak = 0 if result["ok"] else streak + 1
        streaks.append(streak)
    assert streaks[-stop_after:] == list(range(1, stop_after + 1)), results
    assert max(streaks[:-1], default=0) < stop_after, "the run went on past a full streak"
    failed = [f"{r['input']['path']}: {r['error']}" for r in results if not r["ok"]]
    assert all(re.fullmatch(FULL_DISK_FAILURE, line) for line in failed), failed
    lines = nonblank_lines(run.stderr)
    assert lines == [
        WARNING, *failed,
        f"camcli: error: stopped: {stop_after} inputs in a row could not be written "
        "(No space left on device); free some space and rerun with --skip-existing to do "
        "what is missing",
        lines[-1],
    ], run.stderr
    done = len(results) - len(failed)
    assert re.match(fr"camcli: {done} done, {len(failed)} failed in ", lines[-1]), lines[-1]
    assert len(results) < count, "the run went on after the disk was full"
    return done
