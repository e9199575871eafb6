"""The Ray instance camcli starts for a run (``--engine ray``, no cluster named) is private.

The run goes in a namespace of its own that looks like a machine on a network
(:class:`netns.Routed`: loopback, an address on a link, a default route), where Ray takes the
link's address as its node's and, left alone, listens on every interface. While the run goes,
the test lists every listening TCP socket of that namespace — the GCS, the raylet, the agents,
the workers and the driver, whose owners are read from the processes' fds — and tries each
port from the other end of the link, as a neighbour on the network would. After it, the
run's token: Ray's token authentication with a token of the run's own, which no output,
line, command line or log of the run shows, and nothing written in ``~/.ray``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import netns
import pytest
from cli_helpers import CAMCLI, offline_env

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
TOKEN_CHECK = """
import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=sys.argv[1])
except AuthenticationError:
    print("refused")
else:
    print("accepted")
"""


def _namespace_processes(holder: int) -> dict[int, str]:
    """pid → name of every process in the network namespace of ``holder``."""
    mine = os.readlink(f"/proc/{holder}/ns/net")
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns/net") == mine:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    names = {}
    for pid, command in found.items():
        words = [Path(w.decode(errors="replace")).name for w in command.split(b"\0")[:2]]
        names[pid] = words[-1] if words[0].startswith("python") and len(words) > 1 else words[0]
    return names


def _owners(processes: dict[int, str]) -> dict[int, str]:
    """socket inode → name of the process holding it."""
    owners = {}
    for pid, name in processes.items():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = f"{name} (pid {pid})"
        except OSError:
            continue
    return owners


def _knock(address: str, port: int) -> str:
    """What a TCP connection to ``address:port`` from this namespace meets."""
    try:
        with socket.create_connection((address, port), timeout=3):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc}"


def _environment(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    """One ``camcli explain --engine ray --debug --json`` with no cluster named, in a
    :class:`netns.Routed` namespace, watched while it runs (see the module doc)."""
    try:
        machine = netns.Routed()
    except OSError as exc:
        pytest.skip(f"cannot make a routed network namespace here: {exc}")
    root = tmp_path_factory.mktemp("ray-private")
    (root / "in").mkdir()
    for i in range(3):
        for sample in SAMPLES.glob("*.*g"):
            (root / "in" / f"{i}-{sample.name}").write_bytes(sample.read_bytes())
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must be short
    env = offline_env(root, HOME=str(root / "home"), RAY_TMPDIR=temp, RAY_ADDRESS="",
                      RAY_USAGE_STATS_ENABLED="0")
    for name in [name for name in env if name.startswith("RAY_AUTH")]:
        del env[name]
    seen: dict[tuple[str, int], str] = {}  # (address, port) -> owner
    knocks: dict[int, str] = {}  # port -> what a neighbour met
    facts = SimpleNamespace(seen=seen, knocks=knocks, token=None, mode=None, command_lines=set(),
                            without_token=None, gcs_port=None)
    out_file, err_file = root / "stdout", root / "stderr"
    with out_file.open("wb") as out, err_file.open("wb") as err:
        process = subprocess.Popen(
            [str(CAMCLI), "explain", "in", "--model", "mobilenet_v1_0.25_224", "--engine", "ray",
             "--ray-workers", "1", "--ray-cpus", "2", "--batch-size", "1", "--json", "--debug",
             "-o", "out"],
            cwd=root, env=env, preexec_fn=machine.enter, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            _watch(machine, facts)
            time.sleep(0.2)
        process.wait(timeout=max(1, deadline - time.monotonic()))
        facts.returncode = process.returncode
        facts.stdout, facts.stderr = out_file.read_text(), err_file.read_text()
        facts.root, facts.home, facts.temp = root, root / "home", Path(temp)
        facts.logs = b"".join(p.read_bytes() for p in Path(temp).rglob("*")
                              if p.is_file() and not p.is_socket())
        yield facts
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        machine.close()
        shutil.rmtree(temp, ignore_errors=True)


def _watch(machine: netns.Routed, facts) -> None:
    """One look at the namespace: new listening sockets (their owners, a neighbour's knock),
    the command lines, and once the GCS is up its token settings and a client without it."""
    processes = _namespace_processes(machine.holder.pid)
    for pid in processes:
        try:
            facts.command_lines.add(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    sockets = [s for s in machine.listening() if (s[0], s[1]) not in facts.seen]
    owners = _owners(processes) if sockets else {}
    for address, port, inode in sockets:
        owner = owners.get(inode, "?")
        facts.seen[(address, port)] = owner
        facts.knocks[port] = _knock(machine.inside, port)
        if owner.startswith("gcs_server"):
            facts.gcs_port = port
            pid = int(re.search(r"pid (\d+)", owner)[1])
            settings = _environment(pid)
            facts.token, facts.mode = settings.get("RAY_AUTH_TOKEN"), settings.get("RAY_AUTH_MODE")
    if facts.gcs_port and facts.without_token is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env["HOME"] = str(Path(tempfile.mkdtemp(prefix="no-token-")))  # no ~/.ray token
        check = subprocess.run(
            [str(CAMCLI.with_name("python")), "-c", TOKEN_CHECK, f"127.0.0.1:{facts.gcs_port}"],
            env=env, preexec_fn=machine.enter, capture_output=True, text=True, timeout=120)
        facts.without_token = check.stdout.strip() or check.stderr[-500:]


def test_every_socket_of_the_local_ray_listens_on_loopback_only(private_run):
    assert private_run.returncode == 0, private_run.stderr[-3000:]
    owners = " ".join(private_run.seen.values())
    for process in ("gcs_server", "raylet", "camcli"):
        assert process in owners, f"no socket of {process} seen: {private_run.seen}"
    workers = re.findall(r"ray::(?:IDLE|MapWorker)", owners)  # a worker, named as it starts
    assert workers, f"no worker's socket seen: {private_run.seen}"
    exposed = {f"{address}:{port}": owner for (address, port), owner in private_run.seen.items()
               if address not in LOOPBACK}
    assert exposed == {}, f"listening beyond loopback: {exposed}"


def test_a_neighbour_on_the_network_cannot_connect_to_the_local_ray(private_run):
    assert private_run.gcs_port is not None, private_run.seen
    assert private_run.knocks[private_run.gcs_port] == "refused"
    opened = {port: met for port, met in private_run.knocks.items() if met != "refused"}
    assert opened == {}, f"reachable from the network: {opened} ({private_run.seen})"


def test_the_local_ray_wants_a_token_of_the_run_that_nothing_shows(private_run):
    assert private_run.returncode == 0, private_run.stderr[-3000:]
    assert private_run.mode == "token"
    token = private_run.token
    assert token and re.fullmatch(r"[0-9a-f]{64}", token), "not a random 256-bit token"
    assert private_run.without_token == "refused"  # another local user, say
    assert not (private_run.home / ".ray").exists(), "a token left in ~/.ray"
    assert "camcli: debug: ray: " in private_run.stderr  # --debug shows Ray's lines...
    assert token not in private_run.stdout + private_run.stderr  # ...never the token
    for path in (private_run.root / "out").rglob("*"):
        assert path.is_dir() or token.encode() not in path.read_bytes(), path
    assert token.encode() not in private_run.logs, "the token is in Ray's logs"
    assert all(token.encode() not in line for line in private_run.command_lines)
