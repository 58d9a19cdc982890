# Outages of a real target under applications' I/O through a real mount: tgtd killed and
# restarted under a 256 MiB dd write, connections deleted under a read, the network of a
# namespace with tgtd inside cut for 30 s and for longer than the hold time, tgtd stopped
# past the hold time, and the hold time changed live through the tree during an outage.
# Asserts outcomes (data by hash, errno, status) only; the time each application waited is
# measured and printed (a table at the end of the module), never asserted. Owns no product
# code; every process, namespace, nft table and mount it makes is taken down by its fixtures.

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import testbed

from .conftest import require_tools
from .mounting import Mount, PortalSpec, alive, mounted

MiB = 1 << 20
POLL = 0.002

# Short detection and reconnect timers so that each outage costs seconds, not minutes.
FAST = {"noop_interval": 2, "noop_timeout": 2, "command_timeout": 10, "connect_timeout": 2,
        "login_timeout": 3}
HOLD = 8  # seconds; the short hold time of the "longer than the hold time" cases
CUT_SECONDS = 30  # the outage the issue asks the read to live through

# What each fault did to the application: printed after the module's tests.
RESULTS: list[tuple[str, str, str, float | None]] = []


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not RESULTS:
        return
    lines = ["", "outages: fault | application I/O | outcome | waited (s)"]
    lines += [f"  {fault} | {io} | {outcome} | {'-' if waited is None else f'{waited:.2f}'}"
              for fault, io, outcome, waited in RESULTS]
    text = "\n".join(lines)
    # Past pytest's output capture, so the table shows without -s as well.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(text)


def record(fault: str, io: str, outcome: str, waited: float | None) -> None:
    RESULTS.append((fault, io, outcome, waited))
    print(f"{fault}: {io}: {outcome}, application waited "
          f"{'-' if waited is None else f'{waited:.2f} s'}")


# ----------------------------------------------------------------------------- helpers


def sha(path: str | Path, length: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left:
            chunk = f.read(min(MiB, left))
            assert chunk, f"{path}: short read"
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def fill(path: str | Path, size: int) -> str:
    """Random data into a file (a pattern, or a backing file before the mount); its hash."""
    h = hashlib.sha256()
    with open(path, "r+b" if Path(path).exists() else "wb") as f:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            f.write(block)
            h.update(block)
    return h.hexdigest()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll a state with a deadline (readiness: nothing asserts how long it took)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never happened within {timeout} s: {what}"
        time.sleep(0.02)


def status(portal: Path) -> dict[str, str]:
    """The portal's status file: its first line as 'word', then its 'key: value' lines."""
    lines = (portal / "status").read_text().splitlines()
    out = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    out["word"] = lines[0]
    return out


def outage_seconds(st: dict[str, str]) -> float | None:
    value = st["outage"]
    return None if value == "-" else float(value.removesuffix(" s"))


def stall(changes: list[float], fault: float, until: float = float("inf")) -> float:
    """The longest time without progress that began at or after `fault` and ended before
    `until`: from max(previous change, fault) to the next change. changes are the times at
    which the application's progress moved, in order."""
    longest = 0.0
    for before, after in pairwise(changes):
        if after > fault and before < until:
            longest = max(longest, after - max(before, fault))
    return longest


class Reader(threading.Thread):
    """An application reading a LUN file sequentially with 1 MiB preads. hooks[i] runs in
    this thread just before read number i: a fault injected there is certain to hit the
    middle of the read, and the next read is the one that meets the outage."""

    def __init__(self, path: Path, size: int, hooks: dict[int, Callable[[], None]] | None = None,
                 ) -> None:
        super().__init__(daemon=True)
        self.path, self.size = path, size
        self.hooks = hooks or {}
        self.hash = hashlib.sha256()
        self.done = 0
        self.ends: list[float] = []  # when each read returned
        self.starts: list[float] = []
        self.error: OSError | None = None
        self.error_at: float | None = None
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                for i, off in enumerate(range(0, self.size, MiB)):
                    if i in self.hooks:
                        self.hooks[i]()
                    self.starts.append(time.monotonic())
                    try:
                        data = os.pread(fd, MiB, off)
                    except OSError as e:
                        self.error, self.error_at = e, time.monotonic()
                        return
                    self.ends.append(time.monotonic())
                    assert len(data) == MiB, f"short read at {off}"
                    self.hash.update(data)
                    self.done = off + len(data)
            finally:
                os.close(fd)
        except BaseException as e:  # surfaced by finish()
            self.crash = e

    def finish(self, timeout: float) -> Reader:
        self.join(timeout)
        assert not self.is_alive(), f"the read still waits after {timeout} s"
        if self.crash is not None:
            raise self.crash
        return self

    def waited(self, fault: float) -> float:
        """From the fault to the end of the first read that returned after it."""
        return stall([fault, *[t for t in self.ends if t > fault]], fault)


class Progress(threading.Thread):
    """Samples the output position of a running dd (/proc/PID/fdinfo/1: GNU dd opens of= as
    its standard output) and keeps the times at which it moved."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.pos = 0
        self.changes: list[float] = [time.monotonic()]
        self.stopping = threading.Event()

    def _read(self) -> int | None:
        try:
            text = Path(f"/proc/{self.pid}/fdinfo/1").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("pos:"):
                return int(line.split()[1])
        return None

    def run(self) -> None:
        while not self.stopping.is_set():
            pos = self._read()
            if pos is None:
                return
            if pos != self.pos:
                self.pos = pos
                self.changes.append(time.monotonic())
            time.sleep(POLL)


def eio_read(lun: Path, offset: int = 0) -> tuple[OSError | None, float]:
    """One 1 MiB read: the error it got (None when it worked) and how long it took."""
    t0 = time.monotonic()
    try:
        with open(lun, "rb", buffering=0) as f:
            f.seek(offset)
            f.read(MiB)
    except OSError as e:
        return e, time.monotonic() - t0
    return None, time.monotonic() - t0


# ----------------------------------------------------------------------------- beds


@dataclass
class Bed:
    tgtd: testbed.Tgtd
    target: testbed.Target
    mount: Mount
    portal: Path
    size: int
    digest: str  # of the LUN's content as filled in
    netns: testbed.Netns | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lun(self) -> Path:
        return self.portal / "lun1"

    def sessions(self) -> list[testbed.Nexus]:
        return self.tgtd.sessions(self.target.tid)


def _mount(stack: contextlib.ExitStack, tmp: Path, tgtd: testbed.Tgtd, target: testbed.Target,
           host: str, timeouts: dict[str, Any]) -> tuple[Mount, Path]:
    mount = Mount(tmp, [PortalSpec(target.iqn, host, tgtd.port, timeouts=timeouts)])
    stack.callback(mount.stop)
    mount.start()
    portal = mount.portal_dir(target.iqn, host, tgtd.port)
    mount.wait_for(portal / "lun1")
    return mount, portal


@pytest.fixture
def loop_bed(tmp_path: Path, tgtd: testbed.Tgtd, make_target: Any
             ) -> Iterator[Callable[..., Bed]]:
    """Factory: a target on the loopback tgtd with one LUN of `size` filled with random data,
    mounted with the given timeouts."""
    with contextlib.ExitStack() as stack:

        def make(size: int, timeouts: dict[str, Any]) -> Bed:
            target = make_target(luns=(size,))
            digest = fill(target.lun_path(1), size)
            mount, portal = _mount(stack, tmp_path, tgtd, target, "127.0.0.1", timeouts)
            return Bed(tgtd, target, mount, portal, size, digest)

        yield make


@pytest.fixture
def ns_bed(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Bed]]:
    """Factory: a network namespace (private /30 behind a blackhole route), tgtd inside it
    listening on the namespace address, a target with one LUN of `size` filled with random
    data, and a mount in the root namespace reaching it through the veth."""
    require_tools("ip", "nft", "tgtd", "tgtadm", "timeout")
    with contextlib.ExitStack() as stack:

        def make(size: int, timeouts: dict[str, Any]) -> Bed:
            ns = stack.enter_context(testbed.Netns())
            tgtd = stack.enter_context(testbed.NetnsTgtd(ns))
            tgtd.start()
            target = tgtd.add_target(f"iqn.2024-01.org.iscsifs.test:outage-{ns.tag}", [size])
            digest = fill(target.lun_path(1), size)
            # The route check of TESTBED.md: the namespace address goes out on the veth.
            assert f"dev {ns.host_dev} " in ns.route() + " ", ns.route()
            mount, portal = _mount(stack, tmp_path, tgtd, target, ns.ns_address, timeouts)
            assert mount.pid is not None
            ns.protect(mount.pid)  # the blackhole route stays while the initiator may live
            # Unwinding runs this first: no cut outlives a test, so umount can log out.
            stack.callback(ns.restore)
            bed = Bed(tgtd, target, mount, portal, size, digest, netns=ns)
            [nexus] = bed.sessions()
            assert [c.ip for c in nexus.connections] == [ns.host_address]
            return bed

        yield make


def assert_back(bed: Bed, pid: int, what: str) -> None:
    """Reads work again on the same mount: the same daemon, the whole LUN reads correctly."""
    deadline = time.monotonic() + 45
    while True:
        err, _ = eio_read(bed.lun)
        if err is None:
            break
        assert err.errno == errno.EIO, f"{what}: {err}"
        assert time.monotonic() < deadline, f"{what}: reads still fail: {err}"
        time.sleep(0.1)
    assert bed.mount.pid == pid and alive(pid) and mounted(bed.mount.point)
    assert sha(bed.lun, bed.size) == bed.digest
    assert status(bed.portal)["word"] == "connected"


# ----------------------------------------------------------------------------- tgtd faults


def test_dd_write_survives_tgtd_killed_and_restarted_three_times(loop_bed, tmp_path):
    size = 256 * MiB
    bed = loop_bed(size, {})
    pattern = tmp_path / "pattern"
    digest = fill(pattern, size)
    dd = subprocess.Popen(["dd", f"if={pattern}", f"of={bed.lun}", "bs=1M",
                           "conv=fsync,notrunc", "status=none"], stderr=subprocess.PIPE)
    progress = Progress(dd.pid)
    progress.start()
    faults: list[tuple[float, int]] = []
    try:
        for share in (0.25, 0.5, 0.75):
            floor = max(int(size * share), faults[-1][1] + 2 * MiB if faults else 0)
            wait_until(lambda f=floor: progress.pos >= f or dd.poll() is not None,
                       f"dd wrote {floor} bytes", 120)
            assert dd.poll() is None, "dd finished before the fault"
            at, pos = time.monotonic(), progress.pos
            bed.tgtd.restart()  # SIGKILL, then the same port, targets and backing files
            faults.append((at, pos))
            # The next fault only once the application moved on past this one.
            wait_until(lambda p=pos: progress.pos > p + MiB or dd.poll() is not None,
                       "dd made progress after the restart", 120)
        rc = dd.wait(timeout=180)
    finally:
        if dd.poll() is None:
            dd.kill()
            dd.wait()
        progress.stopping.set()
        progress.join()
    assert rc == 0, dd.stderr.read().decode() if dd.stderr else rc
    assert sha(bed.lun, size) == digest
    assert sha(bed.target.lun_path(1), size) == digest
    st = status(bed.portal)
    assert st["word"] == "connected"
    assert int(st["reconnects"]) >= 3
    ends = [at for at, _ in faults[1:]] + [float("inf")]
    for n, ((at, pos), until) in enumerate(zip(faults, ends, strict=True), start=1):
        record(f"tgtd SIGKILL + restart #{n} (at {pos // MiB} MiB)",
               "dd 256 MiB write, conv=fsync", "completed, data matches",
               stall(progress.changes, at, until))


def test_read_survives_connections_deleted_by_the_target(loop_bed):
    size = 128 * MiB
    bed = loop_bed(size, {})
    reconnects = int(status(bed.portal)["reconnects"])
    reader = Reader(bed.lun, size)
    faults: list[float] = []
    reader.start()
    # From this thread while the reader runs, so that READs are in flight when tgtd closes
    # the connection (the reader spends nearly all its time inside pread).
    for floor in (size // 4, size * 3 // 5):
        wait_until(lambda f=floor: reader.done >= f or not reader.is_alive(),
                   f"{floor} bytes read", 60)
        assert reader.is_alive(), "the read finished before the fault"
        [nexus] = bed.sessions()
        faults.append(time.monotonic())
        bed.tgtd.delete_connection(bed.target.tid, nexus.sid, nexus.connections[0].cid)
        wait_until(lambda r=reconnects: int(status(bed.portal)["reconnects"]) > r,
                   "the session reconnected", 60)
        reconnects = int(status(bed.portal)["reconnects"])
    reader.finish(120)
    assert reader.error is None, reader.error
    assert reader.done == size
    assert reader.hash.hexdigest() == bed.digest
    for n, at in enumerate(faults, start=1):
        record(f"tgtadm --mode conn --op delete #{n}", "Python 128 MiB sequential read",
               "completed, data matches", reader.waited(at))


def test_concurrent_writers_keep_their_last_acknowledged_version_across_restarts(loop_bed):
    """16 threads rewrite their own 64 KiB blocks with O_DIRECT, each write stamped with a
    version, while tgtd is killed and restarted: every block must end with the last version
    the application was told was written (nothing lost, nothing stale re-issued over it)."""
    bed = loop_bed(64 * MiB, {})
    block, threads, blocks_each = 64 * 1024, 16, 8
    stop = threading.Event()
    last: dict[int, int] = {}
    completions: list[float] = []
    errors: list[OSError] = []

    def stamp(b: int, v: int) -> bytes:
        return struct.pack("<QQ", b, v) * (block // 16)

    def writer(i: int) -> None:
        fd = os.open(bed.lun, os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT wants
        try:
            v = 0
            while not stop.is_set():
                v += 1
                for b in range(i * blocks_each, (i + 1) * blocks_each):
                    buf.seek(0)
                    buf.write(stamp(b, v))
                    os.pwritev(fd, [buf], b * block)
                    last[b] = v
                    completions.append(time.monotonic())
        except OSError as e:
            errors.append(e)
        finally:
            os.close(fd)
            buf.close()

    workers = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    faults: list[float] = []
    try:
        for _ in range(3):
            done = len(completions)
            wait_until(lambda d=done: len(completions) >= d + 500 or errors,
                       "the writers made progress", 60)
            assert not errors, errors
            faults.append(time.monotonic())
            bed.tgtd.restart()
        done = len(completions)
        wait_until(lambda d=done: len(completions) >= d + 500 or errors,
                   "the writers made progress after the last restart", 60)
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert not errors, errors
    assert not any(w.is_alive() for w in workers)
    with open(bed.target.lun_path(1), "rb") as f:
        for b, v in sorted(last.items()):
            f.seek(b * block)
            got = f.read(block)
            assert got == stamp(b, v), (b, v, struct.unpack("<QQ", got[:16]))
    assert int(status(bed.portal)["reconnects"]) >= 3
    ends = [*faults[1:], float("inf")]
    for n, (at, until) in enumerate(zip(faults, ends, strict=True), start=1):
        record(f"tgtd SIGKILL + restart #{n}", "16 O_DIRECT 64 KiB writers",
               "every block holds its last acknowledged version",
               stall(sorted(completions), at, until))


# ----------------------------------------------------------------------------- network cuts


def test_read_lives_through_a_30_second_silent_network(ns_bed):
    size = 64 * MiB
    bed = ns_bed(size, {**FAST, "hold_time": 90})
    ns = bed.netns
    assert ns is not None
    cut_at: list[float] = []

    def cut() -> None:
        ns.cut()
        cut_at.append(time.monotonic())

    reader = Reader(bed.lun, size, {16: cut})
    reader.start()
    try:
        # While the link is down the status shows the outage, growing, with I/O waiting.
        wait_until(lambda: status(bed.portal)["state"] == "recovering",
                   "status shows the session recovering", CUT_SECONDS - 5)
        first = status(bed.portal)
        assert first["word"] == "unavailable"
        o1 = outage_seconds(first)
        assert o1 is not None
        assert int(first["commands waiting"]) >= 1
        wait_until(lambda: (outage_seconds(status(bed.portal)) or 0) > o1 + 2,
                   "the outage time grows", CUT_SECONDS - 5)
        later = status(bed.portal)
        assert later["state"] == "recovering" and int(later["commands waiting"]) >= 1
        assert reader.is_alive() and reader.error is None
        left = cut_at[0] + CUT_SECONDS - time.monotonic()
        if left > 0:
            time.sleep(left)  # the outage itself: 30 s of silence, as the issue asks
        assert reader.is_alive() and reader.error is None, "the read did not wait"
    finally:
        ns.restore()
    restored = time.monotonic()
    reader.finish(60)
    assert reader.error is None, reader.error
    assert reader.hash.hexdigest() == bed.digest
    st = status(bed.portal)
    assert st["word"] == "connected" and int(st["reconnects"]) >= 1
    record(f"network silent {restored - cut_at[0]:.0f} s (nft drop, hold time 90 s)",
           "Python 64 MiB read", "completed, data matches", reader.waited(cut_at[0]))


def test_silent_network_past_the_hold_time_fails_io_then_recovers(ns_bed):
    size = 32 * MiB
    bed = ns_bed(size, {**FAST, "hold_time": HOLD})
    ns = bed.netns
    assert ns is not None
    pid = bed.mount.pid
    cut_at: list[float] = []

    def cut() -> None:
        ns.cut()
        cut_at.append(time.monotonic())

    reader = Reader(bed.lun, size, {8: cut})
    reader.start()
    try:
        reader.finish(HOLD + FAST["noop_timeout"] + 30)
        still_cut = ns.cut_active
        assert reader.error is not None, "the read succeeded through a cut network"
        assert reader.error.errno == errno.EIO, reader.error
        assert still_cut
        assert reader.error_at is not None
        failed_after = reader.error_at - cut_at[0]
        # While the link stays down, new I/O fails at once.
        st = status(bed.portal)
        assert st["word"] == "unavailable" and st["state"] == "unavailable"
        err, took = eio_read(bed.lun, 4 * MiB)
        assert err is not None and err.errno == errno.EIO, err
    finally:
        ns.restore()
    record(f"network silent > hold time ({HOLD} s; ping {FAST['noop_interval']}+"
           f"{FAST['noop_timeout']} s)", "Python read meeting the outage", "EIO", failed_after)
    record("network still silent, session unavailable", "new 1 MiB read", "EIO at once", took)
    back = time.monotonic()
    assert_back(bed, pid, "after the link came back")
    record("network back after the hold time ran out", "new reads, no remount",
           "work again, data matches", time.monotonic() - back)


# ----------------------------------------------------------------------------- silent tgtd


def test_tgtd_stopped_past_the_hold_time_fails_io_then_recovers(loop_bed):
    size = 32 * MiB
    bed = loop_bed(size, {**FAST, "hold_time": HOLD})
    pid = bed.mount.pid
    stopped_at: list[float] = []

    def stop() -> None:
        bed.tgtd.stop()
        stopped_at.append(time.monotonic())

    reader = Reader(bed.lun, size, {8: stop})
    reader.start()
    try:
        reader.finish(HOLD + FAST["noop_timeout"] + 30)
        assert bed.tgtd.state == "T", "tgtd woke up during the test"
        assert reader.error is not None, "the read succeeded from a stopped tgtd"
        assert reader.error.errno == errno.EIO, reader.error
        assert reader.error_at is not None
        failed_after = reader.error_at - stopped_at[0]
        assert status(bed.portal)["state"] == "unavailable"
        err, took = eio_read(bed.lun, 4 * MiB)
        assert err is not None and err.errno == errno.EIO, err
    finally:
        if bed.tgtd.state == "T":
            bed.tgtd.cont()
    record(f"tgtd SIGSTOP > hold time ({HOLD} s)", "Python read meeting the outage", "EIO",
           failed_after)
    record("tgtd still stopped, session unavailable", "new 1 MiB read", "EIO at once", took)
    back = time.monotonic()
    assert_back(bed, pid, "after SIGCONT")
    record("tgtd SIGCONT after the hold time ran out", "new reads, no remount",
           "work again, data matches", time.monotonic() - back)


def test_hold_time_changed_live_during_an_outage(loop_bed):
    size = 32 * MiB
    bed = loop_bed(size, {**FAST, "hold_time": HOLD})
    pid = bed.mount.pid
    hold = bed.portal / "hold_time"
    assert hold.read_text().strip() == str(HOLD)
    stopped_at: list[float] = []

    def stop() -> None:
        bed.tgtd.stop()
        stopped_at.append(time.monotonic())

    reader = Reader(bed.lun, size, {8: stop})
    reader.start()
    try:
        wait_until(lambda: status(bed.portal)["state"] == "recovering",
                   "status shows the outage", HOLD)
        # Lengthen it before it runs out: the waiting read keeps waiting past the old one.
        hold.write_text("600\n")
        assert hold.read_text().strip() == "600"
        assert "hold time: 600 s" in (bed.portal / "status").read_text()
        wait_until(lambda: (outage_seconds(status(bed.portal)) or 0) > HOLD + 4,
                   "the outage outlasts the old hold time", 60)
        st = status(bed.portal)
        assert st["state"] == "recovering", st
        assert int(st["commands waiting"]) >= 1
        assert reader.is_alive() and reader.error is None, reader.error
        # Shorten it below the outage so far: the waiting read fails at once.
        shortened = time.monotonic()
        hold.write_text("1\n")
        reader.finish(30)
        assert reader.error is not None and reader.error.errno == errno.EIO, reader.error
        assert reader.error_at is not None
        assert bed.tgtd.state == "T"
        assert status(bed.portal)["state"] == "unavailable"
    finally:
        if bed.tgtd.state == "T":
            bed.tgtd.cont()
    record("tgtd SIGSTOP; hold time 8 -> 600 s during the outage", "Python read meeting the outage",
           f"still waiting after {HOLD + 4} s", None)
    record("hold time 600 -> 1 s during the outage", "the same read", "EIO",
           reader.error_at - shortened)
    assert_back(bed, pid, "after SIGCONT")
    hold.write_text(f"{HOLD}\n")
    assert hold.read_text().strip() == str(HOLD)
