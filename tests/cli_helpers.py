"""What the CLI tests share: the entry point, an offline environment, child privileges.

Every CLI test runs the real ``camcli`` entry point in a subprocess whose network is a dead
proxy (nothing can be downloaded, deterministically, even where internet exists) and whose
Keras cache is a fresh folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

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


def start_explain(args, cwd: Path, **kwargs) -> subprocess.Popen:
    """``camcli explain *args`` started in ``cwd``, offline; the caller waits for it."""
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    return subprocess.Popen(
        [str(CAMCLI), "explain", *args], cwd=cwd, env=offline_env(cwd), text=True, **kwargs
    )


def check_output_sets(folder: Path) -> dict[str, dict]:
    """Every record names files that exist with the bytes it hashed; every output file has a
    record; no temporary or lock file is left. Returns record name -> record."""
    found = list(folder.rglob("*.cam.json"))
    records = {p.name: json.loads(p.read_bytes()) for p in found}
    folders = {p.name: p.parent for p in found}
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
