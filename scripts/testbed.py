#!/usr/bin/env python3
# The test bed: real tgtd (iSCSI target), isnsd (iSNS server) and tshark captures on loopback,
# for the integration tests and the benchmarks. Owns starting, configuring, faulting and
# stopping those processes; must not depend on the iscsifs package or anything beyond the
# stdlib, so anyone can run it (`scripts/testbed.py tgtd up --json`) on a bare machine.
# Every process is started in its own process group, tracked, and stopped by PID: in close(),
# in __exit__ and, as a last resort, by an atexit hook. Never by name: other engineers and
# other test runs share this machine. Facts this relies on are in shared/TESTBED.md.
"""Real iSCSI/iSNS daemons and packet captures on loopback, for tests and benchmarks."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ISCSI_OPCODES",
    "Capture",
    "CaptureReport",
    "IsnsObject",
    "Isnsd",
    "Lun",
    "Target",
    "TestbedError",
    "TgtadmError",
    "Tgtd",
    "free_control_index",
    "free_port",
    "free_udp_port",
    "listening_sockets",
    "parse_size",
]

TGTD_RUN_DIR = Path("/var/run/tgtd")
SHM_DIR = Path("/dev/shm")
# Backing files and temp dirs carry this prefix, so `down --pid` and humans can tell ours apart.
PREFIX = "iscsifs-tb-"
DEFAULT_TIMEOUT = 15.0
POLL = 0.02
PROBLEM_FILTER = "_ws.malformed || _ws.expert.severity >= warning"
CONTROL_MAX = 32767  # tgtd -C: "argument value '32768' out of range"

# iSCSI opcodes (RFC 7143 section 11.1.1), as tshark's iscsi.opcode reports them.
ISCSI_OPCODES: dict[int, str] = {
    0x00: "NOP-Out",
    0x01: "SCSI Command",
    0x02: "Task Management Function Request",
    0x03: "Login Request",
    0x04: "Text Request",
    0x05: "SCSI Data-Out",
    0x06: "Logout Request",
    0x10: "SNACK Request",
    0x20: "NOP-In",
    0x21: "SCSI Response",
    0x22: "Task Management Function Response",
    0x23: "Login Response",
    0x24: "Text Response",
    0x25: "SCSI Data-In",
    0x26: "Logout Response",
    0x31: "Ready To Transfer",
    0x32: "Asynchronous Message",
    0x3F: "Reject",
}


class TestbedError(RuntimeError):
    """A test-bed process could not be started, configured or stopped."""

    __test__ = False  # not a pytest test class, despite the name


class TgtadmError(TestbedError):
    """tgtadm refused a command; carries the command line (secrets masked) and its stderr."""

    __test__ = False

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        why = "timed out (tgtd stopped or wedged?)" if returncode == 124 else f"rc={returncode}"
        super().__init__(f"{_masked(argv)}: {why}: {self.stderr or '(no stderr)'}")


def _masked(argv: Sequence[str]) -> str:
    """The command line for messages, with the value after --password hidden."""
    out: list[str] = []
    hide = False
    for arg in argv:
        out.append("***" if hide else arg)
        hide = arg == "--password"
    return shlex.join(out)


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on host a moment ago (bind port 0, read it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free on host a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _lock_held(path: Path) -> bool:
    """True when some process holds the POSIX (lockf) lock tgtd takes on socket.N.lock."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def free_control_index(rng: random.Random | None = None) -> int:
    """A tgtd control index N (IPC socket /var/run/tgtd/socket.N) that no tgtd uses now.

    Prefers an index with no files at all; tgtd itself refuses an index another tgtd holds
    ("another tgtd is using ..."), and Tgtd.start() then retries with a new one.
    """
    rng = rng or random.SystemRandom()
    for _ in range(500):
        n = rng.randrange(1000, CONTROL_MAX + 1)
        sock, lock = TGTD_RUN_DIR / f"socket.{n}", TGTD_RUN_DIR / f"socket.{n}.lock"
        if not sock.exists() and not lock.exists():
            return n
    for _ in range(500):
        n = rng.randrange(1000, CONTROL_MAX + 1)
        if not _lock_held(TGTD_RUN_DIR / f"socket.{n}.lock"):
            return n
    raise TestbedError("no free tgtd control index found")


def _hex_addr(text: str) -> tuple[str, int]:
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    # /proc/net/tcp6 prints the address as four little-endian 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket that process pid has listening, read from /proc.

    Used to check that a port answers because OUR daemon bound it (tgtd keeps running when a
    portal fails to bind, and then some other process may be the one answering).
    """
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    except OSError:
        return set()
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                found.add(_hex_addr(cols[1]))
    return found


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'64M', '1G', '512k', '4096' -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_")


def _host_portal(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _proc_state(pid: int) -> str | None:
    """The one-letter state of pid from /proc (R, S, T, Z, ...), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _children(pid: int) -> list[int]:
    """Direct children of pid (e.g. tshark's dumpcap)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out += [int(c) for c in text.split()]
    return out


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until pid (not our child) has exited; True if it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _proc_state(pid) in (None, "Z", "X"):
            return True
        time.sleep(POLL)
    return False


def _tail(path: Path | None, n: int = 15) -> str:
    if path is None:
        return ""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- process tracking


class _Proc:
    """One child process in its own process group, stopped by PID (then its group) only."""

    def __init__(self, argv: Sequence[str], *, log: Path, name: str, **kw: Any) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=kw.pop("stdout", out),
                stderr=out,
                start_new_session=True,
                **kw,
            )
        self.pid = self.popen.pid
        _LIVE[id(self)] = self
        _hook_sigterm()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _exited_unreaped(self, timeout: float) -> bool:
        """Wait for the leader to exit WITHOUT reaping it: its PID, and so its process group
        id, cannot be reused while it is a zombie, which makes killpg below safe."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)

    def terminate(self, sig: int = signal.SIGKILL, grace: float = 5.0) -> int | None:
        """Send sig by PID; after grace seconds SIGKILL; then clear the group and reap."""
        if self.popen.returncode is None:
            self.send(sig)
            if sig != signal.SIGKILL and not self._exited_unreaped(grace):
                self.send(signal.SIGCONT)  # a SIGSTOPped process must not hold us up
                self.send(signal.SIGKILL)
            self._exited_unreaped(30.0)
            # Children that outlived the leader (dumpcap under tshark): same group, our id.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
        _LIVE.pop(id(self), None)
        return self.popen.returncode

    def detach(self) -> None:
        """Forget the process: it outlives this Python process (the CLI's `up`)."""
        _LIVE.pop(id(self), None)


_LIVE: dict[int, _Proc] = {}
_CLOSERS: dict[int, Any] = {}


@atexit.register
def _reap_all() -> None:
    for obj in list(_CLOSERS.values()):
        with contextlib.suppress(Exception):
            obj.close()
    for proc in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            proc.terminate(signal.SIGKILL)


_HOOKED = False


def _hook_sigterm() -> None:
    """atexit does not run when the process dies of SIGTERM (`timeout pytest`, a CI stop):
    where nobody else handles SIGTERM, stop our daemons first, then die of it as before."""
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: object) -> None:
    _reap_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise TestbedError(f"missing {', '.join(missing)}: run scripts/setup (as root)")


# --------------------------------------------------------------------------- tgtd


@dataclass
class Lun:
    """One data LUN: its number and the sparse backing file on /dev/shm."""

    lun: int
    path: str
    size: int


@dataclass
class Target:
    """What the test bed configured on tgtd: replayed as is by Tgtd.restart()."""

    tid: int
    iqn: str
    luns: dict[int, Lun] = field(default_factory=dict)
    chap: tuple[str, str] | None = None
    mutual: tuple[str, str] | None = None
    params: dict[str, str] = field(default_factory=dict)
    initiator_address: str = "ALL"

    def lun_path(self, lun: int = 1) -> str:
        return self.luns[lun].path

    def __repr__(self) -> str:  # no secrets in reprs, even test ones
        return f"Target(tid={self.tid}, iqn={self.iqn!r}, luns={sorted(self.luns)})"


@dataclass
class Connection:
    cid: int
    ip: str


@dataclass
class Nexus:
    """One I_T nexus (a session) as `tgtadm --op show` lists it."""

    sid: int
    initiator: str
    connections: list[Connection] = field(default_factory=list)


@dataclass
class LunInfo:
    lun: int
    type: str
    size_mb: int
    backing_path: str | None


@dataclass
class TargetInfo:
    """One target from `tgtadm --mode target --op show`, parsed."""

    tid: int
    iqn: str
    state: str = ""
    nexus: list[Nexus] = field(default_factory=list)
    luns: list[LunInfo] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)
    acl: list[str] = field(default_factory=list)


def parse_target_show(text: str) -> list[TargetInfo]:
    """Parse `tgtadm --lld iscsi --mode target --op show` (tgt 1.0.85 layout)."""
    targets: list[TargetInfo] = []
    section = ""
    cur: TargetInfo | None = None
    nexus: Nexus | None = None
    lun: LunInfo | None = None
    conn_cid: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.match(r"^Target (\d+): (\S+)$", raw):
            cur = TargetInfo(tid=int(m.group(1)), iqn=m.group(2))
            targets.append(cur)
            section, nexus, lun = "", None, None
            continue
        if cur is None or not line:
            continue
        if line.endswith(":") and line[:-1] in (
            "System information",
            "I_T nexus information",
            "LUN information",
            "Account information",
            "ACL information",
        ):
            section = line[:-1]
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if section == "System information" and key == "State":
            cur.state = value
        elif section == "I_T nexus information":
            if key == "I_T nexus":
                nexus = Nexus(sid=int(value), initiator="")
                cur.nexus.append(nexus)
            elif key == "Initiator" and nexus is not None:
                nexus.initiator = value.split()[0]
            elif key == "Connection" and nexus is not None:
                conn_cid = int(value)
            elif key == "IP Address" and nexus is not None and conn_cid is not None:
                nexus.connections.append(Connection(cid=conn_cid, ip=value))
        elif section == "LUN information":
            if key == "LUN":
                lun = LunInfo(lun=int(value), type="", size_mb=0, backing_path=None)
                cur.luns.append(lun)
            elif lun is not None and key == "Type":
                lun.type = value
            elif lun is not None and key == "Size":
                lun.size_mb = int(value.split()[0])
            elif lun is not None and key == "Backing store path":
                lun.backing_path = None if value == "None" else value
        elif section == "Account information":
            cur.accounts.append(line)
        elif section == "ACL information":
            cur.acl.append(line)
    return targets


class Tgtd:
    """A tgtd on loopback with its own control index, targets, LUNs and faults.

    Use as a context manager, or call close(). stop()/cont() are the SIGSTOP/SIGCONT fault
    (a silent target); close() is the teardown.
    """

    def __init__(
        self,
        *,
        hosts: Sequence[str] = ("127.0.0.1",),
        tgtadm_timeout: float = 10.0,
        shm_dir: Path | str = SHM_DIR,
    ) -> None:
        self.hosts = list(hosts)
        self.tgtadm_timeout = tgtadm_timeout
        self.shm_dir = Path(shm_dir)
        self.port: int = 0
        self.control: int = 0
        self.targets: dict[int, Target] = {}
        self.commands: list[list[str]] = []  # every tgtadm command line, exactly as run
        self._accounts: dict[str, str] = {}  # user -> secret, global in tgtd
        self._files: list[str] = []  # every backing file we created, removed in close()
        self._next_tid = 1
        self._proc: _Proc | None = None
        self._dir = Path(tempfile.mkdtemp(prefix=PREFIX + "tgtd-"))
        self._tag = f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}-"
        _CLOSERS[id(self)] = self

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self._dir / "tgtd.log"

    @property
    def state(self) -> str | None:
        """tgtd's process state from /proc: 'S'/'R' running, 'T' stopped, None if not running."""
        return _proc_state(self._proc.pid) if self._proc else None

    @property
    def portals(self) -> list[str]:
        """'host:port' (IPv6 bracketed) for every portal."""
        return [_host_portal(h, self.port) for h in self.hosts]

    @property
    def portal(self) -> str:
        """The first portal, 'host:port'."""
        return self.portals[0]

    def start(
        self,
        port: int | None = None,
        *,
        control: int | None = None,
        hosts: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Tgtd:
        """Run `tgtd -f -C N --iscsi portal=H:P[,portal=...]` and wait until tgtadm answers
        and every portal listens in THIS tgtd. A port or index left to us is retried on clash."""
        _require("tgtd", "tgtadm", "timeout")
        if self._proc is not None:
            raise TestbedError("tgtd already started")
        if hosts is not None:
            self.hosts = list(hosts)
        errors: list[str] = []
        for _ in range(8):
            p = port if port is not None else free_port(self.hosts[0])
            n = control if control is not None else free_control_index()
            why = self._launch(p, n, timeout)
            if why is None:
                return self
            errors.append(why)
            if "another tgtd" in why and control is not None:
                break
            if "bind" in why and port is not None:
                break
        raise TestbedError("tgtd did not start: " + " | ".join(errors))

    def _argv(self, argv: list[str]) -> list[str]:
        """How tgtd is run: as is here; a subclass may wrap it (NetnsTgtd)."""
        return argv

    def _launch(self, port: int, control: int, timeout: float) -> str | None:
        """One start attempt: None on success, else why it failed (the process is gone).
        /proc/PID/net/tcp shows the sockets of PID's own network namespace, so the listening
        check works for a tgtd inside a namespace too."""
        portals = ",".join(f"portal={_host_portal(h, port)}" for h in self.hosts)
        self.log_path.write_bytes(b"")
        proc = _Proc(
            self._argv(["tgtd", "-f", "-C", str(control), "--iscsi", portals]),
            log=self.log_path,
            name="tgtd",
        )
        want = {(h, port) for h in self.hosts}
        deadline = time.monotonic() + timeout
        why = None
        while True:
            if not proc.alive():
                why = f"exited rc={proc.popen.returncode}: {_tail(self.log_path, 5)}"
                break
            log = self.log_path.read_text(errors="replace")
            if "failed to create/bind to portal" in log:
                why = f"port {port} bind failed: {_tail(self.log_path, 5)}"
                break
            if want <= listening_sockets(proc.pid) and self._system_ready(control):
                self._proc, self.port, self.control = proc, port, control
                return None
            if time.monotonic() > deadline:
                why = f"not ready after {timeout}s: {_tail(self.log_path, 5)}"
                break
            time.sleep(POLL)
        proc.terminate(signal.SIGKILL)
        if "another tgtd" not in why:  # the socket files are ours only if we got the lock
            self._remove_socket_files(control)
        return why

    def _system_ready(self, control: int) -> bool:
        r = subprocess.run(
            [
                "timeout",
                "-k",
                "1",
                "2",
                "tgtadm",
                "-C",
                str(control),
                "--mode",
                "system",
                "--op",
                "show",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return r.returncode == 0 and "State: ready" in r.stdout

    def _remove_socket_files(self, control: int) -> None:
        for name in (f"socket.{control}", f"socket.{control}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (TGTD_RUN_DIR / name).unlink()

    def kill(self) -> None:
        """Fault: SIGKILL by PID. Targets and backing files stay known for restart()."""
        if self._proc is None:
            raise TestbedError("tgtd is not running")
        self._proc.send(signal.SIGCONT)
        self._proc.terminate(signal.SIGKILL)
        self._proc = None

    def restart(self, timeout: float = DEFAULT_TIMEOUT) -> Tgtd:
        """Fault: SIGKILL, then start on the same port and control index and re-create the
        same targets, LUNs (the SAME backing files: their data survives), accounts, ACLs and
        parameters."""
        if self._proc is not None:
            self.kill()
        self._accounts.clear()
        why = self._launch(self.port, self.control, timeout)
        if why is not None:
            raise TestbedError(f"tgtd restart failed: {why}")
        for target in self.targets.values():
            self._create(target)
        return self

    def stop(self) -> None:
        """Fault: SIGSTOP (tgtd goes silent: connections stay open, nothing answers).
        Returns once the kernel reports it stopped: signals are delivered asynchronously."""
        self._signal_until(signal.SIGSTOP, lambda state: state == "T")

    def cont(self) -> None:
        """Undo stop(): SIGCONT; returns once it runs again."""
        self._signal_until(signal.SIGCONT, lambda state: state != "T")

    def _signal_until(self, sig: int, done: Any, timeout: float = 10.0) -> None:
        if self._proc is None:
            raise TestbedError("tgtd is not running")
        self._proc.send(sig)
        deadline = time.monotonic() + timeout
        while not done(_proc_state(self._proc.pid)):
            if time.monotonic() > deadline:
                raise TestbedError(f"tgtd did not react to {signal.Signals(sig).name}")
            time.sleep(POLL)

    def detach(self) -> None:
        """Leave tgtd and its files in place when this Python process exits (CLI `up`)."""
        if self._proc is not None:
            self._proc.detach()
        _CLOSERS.pop(id(self), None)

    def close(self) -> None:
        """Teardown: SIGKILL by PID (tgtd ignores SIGTERM), then remove the backing files, the
        IPC socket files and the log dir."""
        if self._proc is not None:
            self._proc.send(signal.SIGCONT)
            self._proc.terminate(signal.SIGKILL)
            self._proc = None
        if self.control:
            self._remove_socket_files(self.control)
        for path in self._files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._files.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
        _CLOSERS.pop(id(self), None)

    def __enter__(self) -> Tgtd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ tgtadm

    def tgtadm(self, *args: str) -> str:
        """Run `tgtadm -C N ARGS` under `timeout`; return stdout; TgtadmError on failure."""
        if not self.control:
            raise TestbedError("tgtd not started")
        argv = ["tgtadm", "-C", str(self.control), *args]
        self.commands.append(argv)
        r = subprocess.run(
            ["timeout", "-k", "2", str(self.tgtadm_timeout), *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            raise TgtadmError(argv, r.returncode, r.stderr or r.stdout)
        return r.stdout

    def _new_backing_file(self, size: int) -> str:
        fd, path = tempfile.mkstemp(prefix=self._tag, suffix=".img", dir=self.shm_dir)
        try:
            os.ftruncate(fd, size)  # sparse: /dev/shm pages are allocated on first write
        finally:
            os.close(fd)
        self._files.append(path)
        return path

    def _account(self, user: str, secret: str) -> None:
        known = self._accounts.get(user)
        if known is None:
            self.tgtadm(
                "--lld",
                "iscsi",
                "--mode",
                "account",
                "--op",
                "new",
                "--user",
                user,
                "--password",
                secret,
            )
            self._accounts[user] = secret
        elif known != secret:
            raise TestbedError(f"tgtd account {user!r} already exists with another secret")

    def _create(self, t: Target) -> None:
        tid = str(t.tid)
        self.tgtadm(
            "--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", tid, "--targetname", t.iqn
        )
        for lun in t.luns.values():
            self.tgtadm(
                "--lld",
                "iscsi",
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                tid,
                "--lun",
                str(lun.lun),
                "--backing-store",
                lun.path,
            )
        # Required: a new target has an empty ACL and refuses every initiator.
        self.tgtadm(
            "--lld",
            "iscsi",
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            tid,
            "--initiator-address",
            t.initiator_address,
        )
        if t.chap is not None:
            self._account(*t.chap)
            self.tgtadm(
                "--lld",
                "iscsi",
                "--mode",
                "account",
                "--op",
                "bind",
                "--tid",
                tid,
                "--user",
                t.chap[0],
            )
        if t.mutual is not None:
            self._account(*t.mutual)
            self.tgtadm(
                "--lld",
                "iscsi",
                "--mode",
                "account",
                "--op",
                "bind",
                "--tid",
                tid,
                "--user",
                t.mutual[0],
                "--outgoing",
            )
        for key, value in t.params.items():
            self._update(t.tid, key, value)

    def add_target(
        self,
        iqn: str,
        luns: Iterable[int | str] = (64 << 20,),
        *,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        params: dict[str, Any] | None = None,
        initiator_address: str = "ALL",
    ) -> Target:
        """New target with data LUNs 1..n of the given sizes (bytes or '64M'), each on a new
        sparse file on /dev/shm; bound to ALL initiators; one-way CHAP with chap=(user,
        secret), mutual with mutual=(target user, target secret) too; params set one key at
        a time. LUN 0 is tgtd's controller LUN."""
        if mutual is not None and chap is None:
            raise TestbedError("mutual CHAP needs chap=(user, secret) as well")
        t = Target(
            tid=self._next_tid,
            iqn=iqn,
            chap=chap,
            mutual=mutual,
            initiator_address=initiator_address,
        )
        self._next_tid += 1
        for i, size in enumerate(luns, start=1):
            n = parse_size(size)
            t.luns[i] = Lun(lun=i, path=self._new_backing_file(n), size=n)
        t.params = {k: str(v) for k, v in (params or {}).items()}
        self.targets[t.tid] = t
        self._create(t)
        return t

    def add_lun(self, tid: int, size: int | str, lun: int | None = None) -> Lun:
        """Add a data LUN (next free number unless given) on a new sparse file."""
        t = self.targets[tid]
        number = lun if lun is not None else max(t.luns, default=0) + 1
        n = parse_size(size)
        new = Lun(lun=number, path=self._new_backing_file(n), size=n)
        self.tgtadm(
            "--lld",
            "iscsi",
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            str(tid),
            "--lun",
            str(number),
            "--backing-store",
            new.path,
        )
        t.luns[number] = new
        return new

    def remove_lun(self, tid: int, lun: int) -> None:
        """Delete a LUN from the target (its file stays until close())."""
        self.tgtadm(
            "--lld",
            "iscsi",
            "--mode",
            "logicalunit",
            "--op",
            "delete",
            "--tid",
            str(tid),
            "--lun",
            str(lun),
        )
        del self.targets[tid].luns[lun]

    def _update(self, tid: int, key: str, value: str) -> None:
        self.tgtadm(
            "--lld",
            "iscsi",
            "--mode",
            "target",
            "--op",
            "update",
            "--tid",
            str(tid),
            "--name",
            key,
            "--value",
            value,
        )

    def update(self, tid: int, key: str, value: Any) -> None:
        """Set one target parameter (tgtd refuses --params in target mode); kept for restart."""
        self._update(tid, key, str(value))
        self.targets[tid].params[key] = str(value)

    def delete_connection(self, tid: int, sid: int, cid: int = 0) -> None:
        """Fault: tgtd closes that connection (FIN)."""
        self.tgtadm(
            "--lld",
            "iscsi",
            "--mode",
            "conn",
            "--op",
            "delete",
            "--tid",
            str(tid),
            "--sid",
            str(sid),
            "--cid",
            str(cid),
        )

    def delete_target(self, tid: int, force: bool = True) -> None:
        """Delete a target; with force, live sessions are reset (RST); later logins get
        'target not found'. Its backing files stay until close()."""
        args = ["--lld", "iscsi", "--mode", "target", "--op", "delete"]
        if force:
            args.append("--force")
        self.tgtadm(*args, "--tid", str(tid))
        self.targets.pop(tid, None)

    def show(self) -> list[TargetInfo]:
        """All targets as tgtd reports them (sessions, LUNs, accounts, ACL)."""
        return parse_target_show(self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "show"))

    def sessions(self, tid: int) -> list[Nexus]:
        """The live sessions (I_T nexus) of one target."""
        for t in self.show():
            if t.tid == tid:
                return t.nexus
        raise TestbedError(f"tgtd has no target {tid}")

    def url(
        self,
        target: Target | int,
        lun: int | None = None,
        *,
        host: str | None = None,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
    ) -> str:
        """libiscsi URL for a target (credentials taken from the target unless given):
        iscsi://user%secret@host:port/IQN/LUN?target_user=..&target_password=.."""
        t = self.targets[target] if isinstance(target, int) else target
        chap = chap if chap is not None else t.chap
        mutual = mutual if mutual is not None else t.mutual
        cred = f"{chap[0]}%{chap[1]}@" if chap else ""
        url = f"iscsi://{cred}{_host_portal(host or self.hosts[0], self.port)}/{t.iqn}"
        if lun is not None:
            url += f"/{lun}"
        if mutual:
            url += f"?target_user={mutual[0]}&target_password={mutual[1]}"
        return url

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (the CLI's `up --json`)."""
        return {
            "pid": self.pid,
            "port": self.port,
            "control": self.control,
            "portals": self.portals,
            "log": str(self.log_path),
            "targets": [
                {
                    "tid": t.tid,
                    "iqn": t.iqn,
                    "luns": {
                        str(n): {"path": lun.path, "size": lun.size} for n, lun in t.luns.items()
                    },
                }
                for t in self.targets.values()
            ],
        }


# --------------------------------------------------------------------------- isnsd


@dataclass
class IsnsObject:
    """One object from isnsadm's output: its type (if printed) and its attributes in order."""

    kind: str | None
    attrs: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.attrs:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.attrs if key == name]


def parse_isnsadm(text: str) -> list[IsnsObject]:
    """Parse isnsadm --list / --query output ('Object N:' or 'object[N] = <Type>' headers,
    then '  0020  string      : iSCSI name = "iqn..."' lines)."""
    out: list[IsnsObject] = []
    for line in text.splitlines():
        if m := re.match(r"^object\[\d+\] = <(.*)>\s*$", line):
            out.append(IsnsObject(kind=m.group(1)))
        elif re.match(r"^Object \d+:\s*$", line):
            out.append(IsnsObject(kind=None))
        elif out and (m := re.match(r"^\s+[0-9a-fA-F]{4}\s+\S+\s*: (.*?) = (.*)$", line)):
            value = m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out[-1].attrs.append((m.group(1).strip(), value))
    return out


class Isnsd:
    """An open-isns isnsd on loopback with the TESTBED.md configuration (in-memory database,
    no security, default discovery domain), plus isnsadm helpers to register targets."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        source_name: str = "iqn.2024-01.org.iscsifs.testbed:isnsadm",
        isnsadm_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.source_name = source_name
        self.isnsadm_timeout = isnsadm_timeout
        self.port: int = 0
        self.commands: list[list[str]] = []  # every isnsadm command line, exactly as run
        self._proc: _Proc | None = None
        self._dir = Path(tempfile.mkdtemp(prefix=PREFIX + "isnsd-"))
        self.conf = self._dir / "isnsd.conf"
        self.admconf = self._dir / "isnsadm.conf"
        _CLOSERS[id(self)] = self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def address(self) -> str:
        return _host_portal(self.host, self.port)

    @property
    def log_path(self) -> Path:
        return self._dir / "isnsd.log"

    def start(self, port: int | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> Isnsd:
        """Write the config and run `isnsd -c CONF -f`; wait until it listens on the port."""
        _require("isnsd", "isnsadm", "timeout")
        if self._proc is not None:
            raise TestbedError("isnsd already started")
        errors: list[str] = []
        for _ in range(5):
            p = port if port is not None else free_port(self.host)
            why = self._launch(p, timeout)
            if why is None:
                return self
            errors.append(why)
            if port is not None:
                break
        raise TestbedError("isnsd did not start: " + " | ".join(errors))

    def _launch(self, port: int, timeout: float) -> str | None:
        # No Database line: in memory (an empty value is fatal). PIDFile and ControlSocket are
        # private: the defaults (/var/run/isnsd.pid, /var/run/isnsctl) make a second isnsd on
        # the machine refuse to start ("PID file exists").
        self.conf.write_text(
            f"BindAddress = {_host_portal(self.host, port)}\n"
            "Security = 0\n"
            "DefaultDiscoveryDomain = 1\n"
            "SLPRegister = 0\n"
            "RegistrationPeriod = 0\n"
            "ESIRetries = 0\n"
            f"PIDFile = {self._dir / 'isnsd.pid'}\n"
            f"ControlSocket = {self._dir / 'isnsctl'}\n"
        )
        self._write_admconf(self.admconf, self.source_name, port)
        self.log_path.write_bytes(b"")
        proc = _Proc(["isnsd", "-c", str(self.conf), "-f"], log=self.log_path, name="isnsd")
        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                why = f"exited rc={proc.popen.returncode}: {_tail(self.log_path, 5)}"
                break
            if (self.host, port) in listening_sockets(proc.pid):
                self._proc, self.port = proc, port
                return None
            if time.monotonic() > deadline:
                why = f"not listening after {timeout}s: {_tail(self.log_path, 5)}"
                break
            time.sleep(POLL)
        proc.terminate(signal.SIGKILL)
        return why

    def _write_admconf(self, path: Path, source_name: str, port: int | None = None) -> None:
        path.write_text(
            f"SourceName = {source_name}\n"
            f"ServerAddress = {_host_portal(self.host, port or self.port)}\n"
            "Security = 0\n"
        )

    def isnsadm(self, *args: str, source_name: str | None = None, check: bool = True) -> str:
        """Run `isnsadm -c ADMCONF ARGS` (as source_name if given); return stdout."""
        conf = self.admconf
        if source_name is not None and source_name != self.source_name:
            conf = self._dir / f"isnsadm-{len(self.commands)}.conf"
            self._write_admconf(conf, source_name)
        argv = ["isnsadm", "-c", str(conf), *args]
        self.commands.append(argv)
        r = subprocess.run(
            ["timeout", "-k", "2", str(self.isnsadm_timeout), *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and r.returncode != 0:
            raise TestbedError(f"{shlex.join(argv)}: rc={r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def register(
        self,
        entity: str,
        portal_host: str,
        portal_port: int,
        target_iqn: str | Sequence[str],
        *,
        pgt: int = 1,
        extra_portals: Sequence[tuple[str, int, int]] = (),
        alias: str | None = None,
    ) -> list[str]:
        """Register target(s) in a network entity with their portals and portal group tags:

            isnsadm -c ADMCONF --register entity=E target=IQN[,alias=A]
                    portal=H:P/tcp pg,pgt=T [portal=H2:P2/tcp pg,pgt=T2 ...] [target=IQN2 ...]

        Each `pg,pgt=N` joins the portal just before it to the target before that; the nodes
        land in the default discovery domain, so any registered initiator's DevAttrQry sees
        them. IPv6 portals are written [::1]:P. Returns the isnsadm arguments used."""
        iqns = [target_iqn] if isinstance(target_iqn, str) else list(target_iqn)
        portals = [(portal_host, portal_port, pgt), *extra_portals]
        args = ["--register", f"entity={entity}"]
        for iqn in iqns:
            args.append(f"target={iqn}" + (f",alias={alias}" if alias else ""))
            for host, port, tag in portals:
                args += [f"portal={_host_portal(host, port)}/tcp", f"pg,pgt={tag}"]
        self.isnsadm(*args)
        return args

    def deregister(self, entity: str) -> None:
        """Remove a network entity and everything in it."""
        self.isnsadm("--deregister", f"eid={entity}")

    def list_objects(self, kind: str) -> list[IsnsObject]:
        """`isnsadm --list KIND` (entities, nodes, portals, portal-groups, dds), parsed."""
        return parse_isnsadm(self.isnsadm("--list", kind))

    def query(self, *attrs: str, source_name: str | None = None) -> list[IsnsObject]:
        """`isnsadm --query ATTR[=VALUE]...`, parsed; a query sees only nodes that share a
        discovery domain with source_name."""
        return parse_isnsadm(self.isnsadm("--query", *attrs, source_name=source_name))

    def discover_targets(self, initiator_iqn: str) -> list[IsnsObject]:
        """What an initiator sees: register it as an initiator node, then query for targets
        (DevAttrQry, key Node Type = Target). Returns entity, node, portal and PG objects."""
        self.isnsadm("--register", "initiator", source_name=initiator_iqn)
        return self.query("iscsi-node-type=Target", source_name=initiator_iqn)

    def kill(self) -> None:
        """Fault: SIGKILL by PID."""
        if self._proc is not None:
            self._proc.terminate(signal.SIGKILL)
            self._proc = None

    def detach(self) -> None:
        if self._proc is not None:
            self._proc.detach()
        _CLOSERS.pop(id(self), None)

    def close(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers; remove the temp dir."""
        if self._proc is not None:
            self._proc.terminate(signal.SIGTERM, grace=5.0)
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)
        _CLOSERS.pop(id(self), None)

    stop = close

    def __enter__(self) -> Isnsd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- tshark


@dataclass
class CaptureReport:
    """What tshark made of a capture, decoding the port as iSCSI."""

    packets: int  # TCP packets on the port(s)
    pdus: dict[str, int]  # opcode name -> count (a segment may carry several PDUs)
    opcodes: dict[int, int]  # opcode -> count
    problems: list[str]  # one line per malformed / expert >= warning packet
    dropped: int  # packets tshark said it dropped (0 when it said nothing)

    @property
    def total_pdus(self) -> int:
        return sum(self.opcodes.values())


class Capture:
    """tshark on lo for TCP port(s), into a temp pcapng. Meant for small sessions: tshark
    drops packets at loopback speed under heavy traffic.

    Readiness is proved, not guessed: the filter also admits a sentinel UDP port, tshark
    prints every packet it has written (-P), and start() / stop() send sentinel datagrams
    until one comes out; so start() returns once capturing and stop() only once every packet
    sent before it is in the file (tshark otherwise loses the last ~second on a quick stop)."""

    def __init__(
        self,
        port: int | Sequence[int],
        *,
        interface: str = "lo",
        directory: Path | str | None = None,
    ) -> None:
        self.ports = [port] if isinstance(port, int) else list(port)
        self.interface = interface
        self._own_dir = directory is None
        self._dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix=PREFIX + "cap-"))
        self.path = self._dir / f"capture-{'-'.join(map(str, self.ports))}.pcapng"
        self._out = self._dir / "tshark.out"
        self._err = self._dir / "tshark.err"
        self.sentinel = free_udp_port()
        self.dropped = 0
        self.captured: int | None = None
        self._proc: _Proc | None = None
        _CLOSERS[id(self)] = self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def child_pids(self) -> list[int]:
        """dumpcap and anything else tshark started."""
        return _children(self._proc.pid) if self._proc else []

    def _sentinels_seen(self) -> int:
        try:
            text = self._out.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if line.split("\t")[-1:] == [str(self.sentinel)])

    def _sync(self, timeout: float) -> None:
        """Send sentinel datagrams until tshark shows one more than before."""
        seen = self._sentinels_seen()
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while self._sentinels_seen() <= seen:
                if self._proc is None or not self._proc.alive():
                    raise TestbedError(f"tshark exited: {_tail(self._err, 5)}")
                if time.monotonic() > deadline:
                    raise TestbedError(f"tshark not capturing after {timeout}s: {_tail(self._err)}")
                s.sendto(b"iscsifs-testbed-sentinel", ("127.0.0.1", self.sentinel))
                time.sleep(0.05)

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> Capture:
        _require("tshark")
        if self._proc is not None:
            raise TestbedError("capture already started")
        ports = " or ".join(f"tcp port {p}" for p in self.ports)
        bpf = f"({ports}) or (udp dst port {self.sentinel} and host 127.0.0.1)"
        with open(self._out, "wb") as out:
            self._proc = _Proc(
                [
                    "tshark",
                    "-n",
                    "-i",
                    self.interface,
                    "-B",
                    "32",
                    "-f",
                    bpf,
                    "-w",
                    str(self.path),
                    "-P",
                    "-l",
                    "-T",
                    "fields",
                    "-e",
                    "frame.number",
                    "-e",
                    "udp.dstport",
                ],
                log=self._err,
                name="tshark",
                stdout=out,
            )
        try:
            self._sync(timeout)
        except BaseException:
            self._proc.terminate(signal.SIGKILL)
            self._proc = None
            raise
        return self

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> Path:
        """Flush (sentinel), stop tshark by PID (SIGINT: it finalises the file), return path."""
        if self._proc is None:
            return self.path
        try:
            self._sync(timeout)
        finally:
            self._proc.terminate(signal.SIGINT, grace=10.0)
            self._proc = None
        err = _tail(self._err, 10)
        if m := re.search(r"(\d+) packets? dropped", err):
            self.dropped = int(m.group(1))
        if m := re.search(r"(\d+) packets? captured", err):
            self.captured = int(m.group(1))
        return self.path

    def analyze(
        self, port: int | None = None, *, problem_filter: str = PROBLEM_FILTER
    ) -> CaptureReport:
        """Decode the capture with `-d tcp.port==PORT,iscsi`: PDU counts by opcode, and every
        packet matching problem_filter (default: malformed or expert severity >= warning).

        tshark's SCSI dissector, not its iSCSI one, flags some tgtd answers (the Device
        Identification VPD page is 'Malformed', MODE SENSE all pages 'Unknown Page'), and a
        TCP RST is a warning: narrow problem_filter where a test provokes those."""
        self.stop()
        port = port if port is not None else self.ports[0]
        decode = ["-d", f"tcp.port=={port},iscsi"]
        opcodes: Counter[int] = Counter()
        for line in self._tshark(
            *decode,
            "-Y",
            "iscsi",
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
            "-e",
            "iscsi.opcode",
        ).splitlines():
            for code in filter(None, line.strip().split(",")):
                opcodes[int(code, 0)] += 1
        packets = len(self._tshark("-Y", "tcp", "-T", "fields", "-e", "frame.number").split())
        problems = [
            line.strip()
            for line in self._tshark(
                *decode,
                "-Y",
                "_ws.malformed || _ws.expert.severity >= warning",
                "-T",
                "fields",
                "-E",
                "occurrence=a",
                "-E",
                "aggregator=;",
                "-e",
                "frame.number",
                "-e",
                "_ws.col.Info",
                "-e",
                "_ws.expert.message",
            ).splitlines()
            if line.strip()
        ]
        return CaptureReport(
            packets=packets,
            pdus={ISCSI_OPCODES.get(op, f"opcode 0x{op:02x}"): n for op, n in opcodes.items()},
            opcodes=dict(opcodes),
            problems=problems,
            dropped=self.dropped,
        )

    def _tshark(self, *args: str) -> str:
        r = subprocess.run(
            ["tshark", "-n", "-r", str(self.path), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if r.returncode != 0:
            raise TestbedError(f"tshark -r {self.path} {shlex.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def cleanup(self) -> None:
        """Stop if needed and remove the capture files."""
        if self._proc is not None:
            self._proc.terminate(signal.SIGKILL)
            self._proc = None
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        _CLOSERS.pop(id(self), None)

    close = cleanup

    def __enter__(self) -> Capture:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        # Stop but keep the file: analyze() is usually called after the with block.
        if self._proc is not None:
            if exc[0] is None:
                self.stop()
            else:
                self._proc.terminate(signal.SIGKILL)
                self._proc = None


# --------------------------------------------------------------------------- CLI


def _parse_target_spec(spec: str) -> tuple[str, list[int]]:
    """'IQN' or 'IQN=64M,32M' -> (iqn, sizes). IQNs contain ':' but never '='."""
    iqn, _, sizes = spec.partition("=")
    return iqn, [parse_size(s) for s in sizes.split(",") if s] or [64 << 20]


def _cred(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, secret = text.partition(":")
    if not sep:
        raise SystemExit(f"expected USER:SECRET, got {user!r}")
    return user, secret


def _kill_foreign(pid: int, expect: str, sig: int, grace: float) -> None:
    """Stop a process `up` left behind: check by /proc that pid really is `expect` first."""
    argv = _cmdline(pid)
    if not argv or Path(argv[0]).name != expect:
        raise SystemExit(f"pid {pid} is not a {expect} process ({shlex.join(argv) or 'gone'})")
    os.kill(pid, sig)
    if not _wait_gone(pid, grace) and sig != signal.SIGKILL:
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)


def _tgtd_down(pid: int) -> dict[str, Any]:
    argv = _cmdline(pid)
    control = int(argv[argv.index("-C") + 1]) if "-C" in argv else None
    files, logdirs = [], set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(f"{SHM_DIR}/{PREFIX}"):
                    files.append(target)
                elif Path(target).parent.name.startswith(PREFIX + "tgtd-"):
                    logdirs.add(str(Path(target).parent))
    _kill_foreign(pid, "tgtd", signal.SIGKILL, 10.0)
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if control is not None:
        for name in (f"socket.{control}", f"socket.{control}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (TGTD_RUN_DIR / name).unlink()
    for d in logdirs:
        shutil.rmtree(d, ignore_errors=True)
    return {"pid": pid, "control": control, "removed": files}


def _isnsd_down(pid: int) -> dict[str, Any]:
    argv = _cmdline(pid)
    conf = Path(argv[argv.index("-c") + 1]) if "-c" in argv else None
    _kill_foreign(pid, "isnsd", signal.SIGTERM, 5.0)
    if conf is not None and conf.parent.name.startswith(PREFIX + "isnsd-"):
        shutil.rmtree(conf.parent, ignore_errors=True)
    return {"pid": pid}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="daemon", required=True)

    tg = sub.add_parser("tgtd", help="tgtd on loopback")
    tgs = tg.add_subparsers(dest="action", required=True)
    up = tgs.add_parser("up", help="start tgtd (left running) and configure targets")
    up.add_argument("--port", type=int, help="portal port (default: a free one)")
    up.add_argument("--control", type=int, help="control index -C N (default: a free one)")
    up.add_argument(
        "--host",
        action="append",
        help="portal address, repeatable "
        "(default 127.0.0.1; e.g. --host 127.0.0.1 --host 127.0.0.2 --host ::1)",
    )
    up.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="IQN[=SIZE,...]",
        help="a target and its LUN sizes (default one LUN of 64M), repeatable",
    )
    up.add_argument("--chap", metavar="USER:SECRET", help="one-way CHAP for every target")
    up.add_argument("--mutual", metavar="USER:SECRET", help="target's mutual CHAP account")
    up.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="target parameter, repeatable (set one at a time)",
    )
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    down = tgs.add_parser("down", help="SIGKILL a tgtd started by `up`, remove its files")
    down.add_argument("--pid", type=int, required=True)

    isp = sub.add_parser("isnsd", help="isnsd on loopback")
    iss = isp.add_subparsers(dest="action", required=True)
    iup = iss.add_parser("up", help="start isnsd (left running)")
    iup.add_argument("--port", type=int)
    iup.add_argument("--json", action="store_true")
    idown = iss.add_parser("down", help="stop an isnsd started by `up`")
    idown.add_argument("--pid", type=int, required=True)
    reg = iss.add_parser("register", help="register a target with portal(s) in isnsd")
    reg.add_argument("--port", type=int, required=True, help="isnsd port")
    reg.add_argument("--entity", required=True)
    reg.add_argument("--target", required=True, action="append", help="IQN, repeatable")
    reg.add_argument(
        "--portal",
        required=True,
        action="append",
        metavar="HOST:PORT[:PGT]",
        help="portal and its portal group tag (default 1), repeatable",
    )

    a = ap.parse_args(argv)
    result: dict[str, Any]
    if a.daemon == "tgtd" and a.action == "up":
        t = Tgtd(hosts=a.host or ["127.0.0.1"])
        try:
            t.start(a.port, control=a.control)
            params = dict(p.split("=", 1) for p in a.param)
            for spec in a.target:
                iqn, sizes = _parse_target_spec(spec)
                t.add_target(iqn, sizes, chap=_cred(a.chap), mutual=_cred(a.mutual), params=params)
        except BaseException:
            t.close()
            raise
        t.detach()
        result = t.describe()
    elif a.daemon == "tgtd":
        result = _tgtd_down(a.pid)
    elif a.action == "up":
        i = Isnsd()
        try:
            i.start(a.port)
        except BaseException:
            i.close()
            raise
        i.detach()
        result = {
            "pid": i.pid,
            "port": i.port,
            "address": i.address,
            "conf": str(i.conf),
            "admconf": str(i.admconf),
            "log": str(i.log_path),
        }
    elif a.action == "down":
        result = _isnsd_down(a.pid)
    else:
        i = Isnsd()
        i.port = a.port
        i._write_admconf(i.admconf, i.source_name)
        try:
            portals = []
            for p in a.portal:
                m = re.match(r"^(\[[^\]]+\]|[^:\[\]]+):(\d+)(?::(\d+))?$", p)
                if not m:
                    raise SystemExit(f"bad portal {p!r}: want HOST:PORT[:PGT], IPv6 in []")
                host = m.group(1).strip("[]")
                portals.append((host, int(m.group(2)), int(m.group(3) or 1)))
            (h, p0, tag), *extra = portals
            result = {"args": i.register(a.entity, h, p0, a.target, pgt=tag, extra_portals=extra)}
        finally:
            i.close()
    if getattr(a, "json", False):
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- network namespace
# Added after the CLI so the code above stays as it was; `scripts/netns` is the command line of
# these two classes. Nothing here runs when testbed.py is executed as a script.


class Netns:
    """A network namespace joined to the root namespace by a veth pair on a private /30:
    the root side gets the first host address, the namespace side the second. For faults a
    loopback portal cannot show: cut() drops every packet on the namespace's veth (nftables
    inside the namespace), restore() lets them through again.

    The root namespace has a default route to a real network, so a connection to a namespace
    address must never be routed there (when the veth is gone, its connected route goes with
    it and the default route would match). The subnet is therefore claimed first with a
    blackhole route of a high metric: the veth's connected route (metric 0) wins while it
    exists, the blackhole catches everything otherwise. Adding that route is also the claim
    on the subnet (EEXIST: another run has it). It is removed last, and only when no process
    that may still connect (protect()) lives and no root-namespace socket to the subnet is
    open; otherwise it is left in place and the command that removes it is printed.
    """

    BLACKHOLE_METRIC = 4242
    NFT_TABLE = "iscsifs_cut"

    def __init__(self, *, subnet: str | None = None, tag: str | None = None,
                 ip_timeout: float = 15.0) -> None:
        self.tag = tag or os.urandom(4).hex()
        self.name = f"iscsifs-{self.tag}"
        self.host_dev = f"ifs{self.tag}h"  # at most 15 characters, the kernel's limit
        self.ns_dev = f"ifs{self.tag}n"
        self.ip_timeout = ip_timeout
        self.subnet: str | None = None
        self._want_subnet = subnet
        self._blackhole = False
        self._namespace = False
        self._veth = False
        self._cut = False
        self._protected: list[int] = []
        _CLOSERS[id(self)] = self

    # ------------------------------------------------------------------ addresses

    def _hosts(self) -> list[str]:
        import ipaddress

        if self.subnet is None:
            raise TestbedError("namespace not up")
        return [str(h) for h in ipaddress.ip_network(self.subnet).hosts()]

    @property
    def host_address(self) -> str:
        """The root namespace's end of the veth (where the initiator connects from)."""
        return self._hosts()[0]

    @property
    def ns_address(self) -> str:
        """The namespace's end of the veth (where tgtd listens)."""
        return self._hosts()[1]

    @property
    def cut_active(self) -> bool:
        return self._cut

    # ------------------------------------------------------------------ commands

    def _ip(self, *args: str, check: bool = True, input: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(list(args), capture_output=True, text=True, check=False,
                           timeout=self.ip_timeout, input=input)
        if check and r.returncode != 0:
            raise TestbedError(f"{shlex.join(args)}: rc={r.returncode}: {r.stderr.strip()}")
        return r

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the namespace. `ip netns exec` execs the command itself (no extra
        process), so the PID of the Popen is the PID of the command: signals by PID work."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it."""
        return self._ip(*self.exec_argv(argv), check=check, input=input)

    def route(self, address: str | None = None) -> str:
        """`ip route get` for a namespace address, as the root namespace sees it: 'blackhole'
        when only the blackhole route matches, else the route's text."""
        r = self._ip("ip", "route", "get", address or self.ns_address, check=False)
        if r.returncode != 0:
            # The kernel answers EINVAL for a destination that only a blackhole route matches.
            return "blackhole" if self._blackhole_present() else f"error: {r.stderr.strip()}"
        return r.stdout.strip()

    def _blackhole_present(self) -> bool:
        if self.subnet is None:
            return False
        r = self._ip("ip", "-j", "route", "show", "type", "blackhole", self.subnet, check=False)
        try:
            routes = json.loads(r.stdout or "[]")
        except ValueError:
            return False
        return any(x.get("metric") == self.BLACKHOLE_METRIC for x in routes)

    # ------------------------------------------------------------------ lifecycle

    def _candidates(self) -> Iterable[str]:
        if self._want_subnet is not None:
            yield self._want_subnet
            return
        rng = random.SystemRandom()
        for _ in range(64):
            yield f"10.251.{rng.randrange(256)}.{rng.randrange(64) * 4}/30"

    def _in_use(self, subnet: str) -> bool:
        """Some route other than the default one covers or lies inside the subnet."""
        import ipaddress

        net = ipaddress.ip_network(subnet)
        for args in (("to", "match", str(net[2])), ("root", subnet)):
            r = self._ip("ip", "-j", "route", "show", *args, check=False)
            with contextlib.suppress(ValueError):
                if any(x.get("dst") != "default" for x in json.loads(r.stdout or "[]")):
                    return True
        return False

    def _claim_subnet(self) -> None:
        import ipaddress

        for subnet in self._candidates():
            net = ipaddress.ip_network(subnet, strict=True)
            if net.version != 4 or net.prefixlen != 30:
                raise TestbedError(f"subnet {subnet}: want an IPv4 /30")
            if self._in_use(subnet):
                if self._want_subnet is not None:
                    raise TestbedError(f"subnet {subnet} is already routed on this machine")
                continue
            r = self._ip("ip", "route", "add", "blackhole", subnet, "metric",
                         str(self.BLACKHOLE_METRIC), check=False)
            if r.returncode == 0:
                self.subnet = subnet
                self._blackhole = True
                return
            if self._want_subnet is not None:
                raise TestbedError(f"blackhole route for {subnet}: {r.stderr.strip()}")
        raise TestbedError("no free /30 in 10.251.0.0/16 for a namespace")

    def up(self) -> Netns:
        """Claim a subnet (blackhole route), create the namespace and the veth pair, address
        and raise both ends, and check that the root namespace routes the namespace address
        through the veth (and only there)."""
        _require("ip", "nft", "ss")
        if self._namespace:
            raise TestbedError("namespace already up")
        try:
            self._claim_subnet()
            if self.route() != "blackhole":
                raise TestbedError(f"{self.subnet}: blackhole route not effective: "
                                   f"{self.route()}")
            self._ip("ip", "netns", "add", self.name)
            self._namespace = True
            self._ip("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name",
                     self.ns_dev, "netns", self.name)
            self._veth = True
            self._ip("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_dev)
            self._ip("ip", "link", "set", self.host_dev, "up")
            self._ip("ip", "-n", self.name, "addr", "add", f"{self.ns_address}/30", "dev",
                     self.ns_dev)
            self._ip("ip", "-n", self.name, "link", "set", self.ns_dev, "up")
            self._ip("ip", "-n", self.name, "link", "set", "lo", "up")
            deadline = time.monotonic() + DEFAULT_TIMEOUT
            while f"dev {self.host_dev} " not in self.route() + " ":
                if time.monotonic() > deadline:
                    raise TestbedError(f"{self.ns_address} not routed through {self.host_dev}: "
                                       f"{self.route()}")
                time.sleep(POLL)
        except BaseException:
            self.close()
            raise
        return self

    def cut(self) -> None:
        """Fault: drop every packet in and out of the namespace's veth (a silent network:
        no RST, no ICMP; TCP on both sides just retransmits)."""
        if self._cut:
            return
        dev = self.ns_dev
        self.run("nft", "-f", "-", input=(
            f"table inet {self.NFT_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority -300; policy accept;"
            f" iifname \"{dev}\" drop; }}\n"
            f"  chain output {{ type filter hook output priority -300; policy accept;"
            f" oifname \"{dev}\" drop; }}\n"
            "}\n"))
        self._cut = True

    def restore(self) -> None:
        """Undo cut(): packets flow again (connections that survived carry on)."""
        if not self._cut:
            return
        self.run("nft", "delete", "table", "inet", self.NFT_TABLE)
        self._cut = False

    def protect(self, pid: int) -> None:
        """Keep the blackhole route for as long as process pid lives (a client of the
        namespace, e.g. an initiator that would otherwise reconnect over the default route
        when close() runs before it is stopped)."""
        self._protected.append(pid)

    def _open_sockets(self) -> list[str]:
        """Root-namespace TCP sockets to the subnet that may still send a packet on their own,
        as 'local -> remote state'. FIN_WAIT2 (05), TIME_WAIT (06), CLOSE (07) and LISTEN (0A)
        only ever answer what arrives, and nothing arrives once the veth is gone."""
        import ipaddress

        if self.subnet is None:
            return []
        net = ipaddress.ip_network(self.subnet)
        out: list[str] = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) < 4 or cols[3] in ("05", "06", "07", "0A"):
                    continue
                addr, port = _hex_addr(cols[2])
                if ipaddress.ip_address(addr) in net:
                    out.append(f"{cols[1]} -> {addr}:{port} state {cols[3]}")
        return out

    def detach(self) -> None:
        """Leave the namespace in place when this Python process exits (`scripts/netns up`)."""
        _CLOSERS.pop(id(self), None)

    def close(self) -> None:
        """Teardown, in the order that keeps traffic off the real network: lift a cut (so
        closing connections finish on the veth), wait briefly for root-namespace sockets to
        the subnet to close (then destroy those left, `ss -K`), delete the veth (both ends) and
        the namespace (its nft table goes with it), and only then the blackhole route, if
        nothing may still use it."""
        if self._cut and self._namespace:
            with contextlib.suppress(Exception):
                self.restore()
        self._cut = False
        if self._veth:
            deadline = time.monotonic() + 5.0
            while self._open_sockets() and time.monotonic() < deadline:
                time.sleep(POLL)
            if self._open_sockets():
                # Orphans of connections cut earlier (a FIN retransmitted on a timer backed off
                # during the cut): destroy them, they would otherwise outlive the veth.
                self._ip("ss", "-K", "-tn", "dst", self.subnet or "", check=False)
            self._ip("ip", "link", "del", self.host_dev, check=False)
            self._veth = False
        if self._namespace:
            self._ip("ip", "netns", "del", self.name, check=False)
            self._namespace = False
        if self._blackhole:
            alive = [p for p in self._protected if _proc_state(p) not in (None, "Z", "X")]
            busy = self._open_sockets()
            if alive or busy:
                print(f"testbed: keeping `blackhole {self.subnet} metric "
                      f"{self.BLACKHOLE_METRIC}` (still in use: pids {alive}, sockets {busy}); "
                      f"remove it later with: ip route del blackhole {self.subnet} metric "
                      f"{self.BLACKHOLE_METRIC}", file=sys.stderr)
            else:
                self._ip("ip", "route", "del", "blackhole", self.subnet or "", "metric",
                         str(self.BLACKHOLE_METRIC), check=False)
            self._blackhole = False
        _CLOSERS.pop(id(self), None)

    @classmethod
    def find(cls, name: str) -> Netns:
        """The Netns object for a namespace `scripts/netns up` left running (by its name),
        rebuilt from the machine's state, so that it can be faulted or closed."""
        m = re.fullmatch(r"iscsifs-([0-9a-f]{8})", name)
        if not m:
            raise TestbedError(f"{name!r} is not a namespace of the test bed (iscsifs-XXXXXXXX)")
        ns = cls(tag=m.group(1))
        r = ns._ip("ip", "-j", "addr", "show", "dev", ns.host_dev, check=False)
        with contextlib.suppress(ValueError, IndexError, KeyError):
            info = json.loads(r.stdout or "[]")[0]["addr_info"]
            local = next(a["local"] for a in info if a.get("family") == "inet")
            import ipaddress

            ns.subnet = str(ipaddress.ip_interface(f"{local}/30").network)
        ns._veth = r.returncode == 0
        ns._namespace = name in ns._ip("ip", "netns", "list", check=False).stdout.split()
        ns._blackhole = ns._blackhole_present()
        if ns._namespace:
            tables = ns.run("nft", "list", "tables", check=False).stdout
            ns._cut = f"inet {cls.NFT_TABLE}" in tables
        return ns

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subnet": self.subnet,
            "host_address": self.host_address if self.subnet else None,
            "ns_address": self.ns_address if self.subnet else None,
            "host_dev": self.host_dev,
            "ns_dev": self.ns_dev,
            "blackhole": f"blackhole {self.subnet} metric {self.BLACKHOLE_METRIC}",
            "route": self.route() if self.subnet else None,
            "cut": self._cut,
        }

    def __enter__(self) -> Netns:
        return self.up() if not self._namespace else self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetnsTgtd(Tgtd):
    """A Tgtd listening on the namespace side of a Netns (port 3260 unless told: the
    namespace has no other listeners). Everything else is Tgtd's: tgtadm reaches it through
    its IPC socket, which is a file and so crosses network namespaces; kill(), restart(),
    stop() and cont() act on its PID, which is tgtd's own (`ip netns exec` execs)."""

    def __init__(self, netns: Netns, **kw: Any) -> None:
        super().__init__(hosts=[netns.ns_address], **kw)
        self.netns = netns

    def start(self, port: int | None = None, *, control: int | None = None,
              hosts: Sequence[str] | None = None,
              timeout: float = DEFAULT_TIMEOUT) -> NetnsTgtd:
        # Tgtd.start() would look for a free port by binding in the root namespace, where
        # the namespace's address does not exist.
        super().start(3260 if port is None else port, control=control, hosts=hosts,
                      timeout=timeout)
        return self

    def _argv(self, argv: list[str]) -> list[str]:
        return self.netns.exec_argv(argv)  # tgtd started inside the namespace
