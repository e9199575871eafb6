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



class Routed:
    """A second network namespace, inside the session's, that looks like a machine on a
    network: loopback, ``inside`` on a veth whose other end (``outside``) is in the session's
    namespace, and a default route through it — so a program there finds a network address
    (Ray takes it as its node's address) and can be reached from ``outside``, as a neighbour
    on the network would. :meth:`run_args` gives what ``subprocess`` needs to start a program
    in it. Made with ``ip`` (iproute2); a sleeping process holds the namespace until
    :meth:`close`."""

    def __init__(self, inside: str = "10.77.0.1", outside: str = "10.77.0.2"):
        import shutil
        import subprocess

        if reason is not None:
            raise OSError(f"the session has no network namespace of its own: {reason}")
        if shutil.which("ip") is None:
            raise OSError("iproute2's `ip` is not installed")
        self.inside, self.outside = inside, outside
        self.holder = subprocess.Popen(["sleep", "infinity"], preexec_fn=_new_namespace)
        self.link = f"cam{self.holder.pid % 100000}"
        try:
            self._ip("link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns",
                     str(self.holder.pid))
            self._ip("addr", "add", f"{outside}/24", "dev", self.link)
            self._ip("link", "set", self.link, "up")
            for command in (("link", "set", "lo", "up"),
                            ("addr", "add", f"{inside}/24", "dev", "eth0"),
                            ("link", "set", "eth0", "up"),
                            ("route", "add", "default", "via", outside)):
                self._ip(*command, inside_namespace=True)
        except BaseException:
            self.close()
            raise

    def _ip(self, *args: str, inside_namespace: bool = False) -> None:
        import subprocess

        done = subprocess.run(["ip", *args], capture_output=True, text=True,
                              preexec_fn=self.enter if inside_namespace else None)
        if done.returncode != 0:
            raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def enter(self) -> None:
        """Move the calling process into the namespace (a ``preexec_fn``)."""
        fd = os.open(f"/proc/{self.holder.pid}/ns/net", os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)

    def listening(self) -> list[tuple[str, int, int]]:
        """``(address, port, socket inode)`` of every TCP socket listening in the namespace,
        from the kernel's tables (``/proc/PID/net/tcp`` and ``tcp6`` of a process in it)."""
        found = []
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{self.holder.pid}/net/{table}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        address, port = fields[1].split(":")
                        found.append((_address(address), int(port, 16), int(fields[9])))
        return found

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()  # the namespace and its end of the veth go with it


def _new_namespace() -> None:  # a preexec_fn
    error = _unshare(CLONE_NEWNET)
    if error:
        raise OSError(error, "unshare(CLONE_NEWNET)")


def _address(hexed: str) -> str:
    """A /proc/net/tcp{,6} address (hex, in host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(hexed)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)
