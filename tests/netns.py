"""The test session's own network: a fresh Linux network namespace holding only loopback.

Ray listens on every interface of a machine that has one (its GCS, raylets and workers open
gRPC ports on ``*``), whatever ``--node-ip-address`` says; in a namespace whose only interface
is ``lo`` it finds no address but 127.0.0.1 and binds that. So ``conftest.py`` moves the whole
test process here before any test runs: every server a test starts (Ray, the S3 server, the
HTTP servers, Chromium) is reachable from this machine's loopback only, and nothing in a test
can reach the outside network, so nothing is ever downloaded.

A new network namespace needs CAP_SYS_ADMIN (root, as in CI); a user without it gets one
inside a new user namespace that maps their own uid and gid to themselves (no root inside),
where the kernel allows unprivileged user namespaces. When neither works the tests that start
Ray are skipped with the reason (:data:`reason`); nothing else depends on it.

Only the calling thread moves, and what it starts later: call :func:`enter` while the process
has one thread.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

#: Why the session is not in its own network namespace, or None when it is.
reason: str | None = "not entered yet"


def _unshare(flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return 0 if libc.unshare(flags) == 0 else ctypes.get_errno()


def _map_self(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def interfaces() -> list[str]:
    """The network interfaces this process sees."""
    return sorted(name for _, name in socket.if_nameindex())


def enter() -> str | None:
    """Move this process into a new network namespace with loopback up; the reason on failure
    (also kept in :data:`reason`)."""
    global reason
    if os.environ.get("CAMCLI_TEST_NETNS") == "off":
        reason = "CAMCLI_TEST_NETNS=off"
        return reason
    uid, gid = os.getuid(), os.getgid()
    error = _unshare(CLONE_NEWNET)
    if error:
        error = _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        if error:
            reason = f"cannot make a network namespace: {os.strerror(error)}"
            return reason
        try:
            _map_self(uid, gid)
        except OSError as exc:
            reason = f"cannot map the user into the new namespace: {exc}"
            return reason
    try:
        _loopback_up()
    except OSError as exc:
        reason = f"cannot bring loopback up in the new network namespace: {exc}"
        return reason
    reason = None
    return None
