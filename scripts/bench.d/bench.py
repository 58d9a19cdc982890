#!/usr/bin/env python3
# The benchmark behind scripts/bench: one tmpfs tgtd LUN read and written through (a) an iscsifs
# mount, (b) qemu-storage-daemon's FUSE export (libiscsi), (c) iscsi-perf (libiscsi, no FUSE),
# with fio jobs interleaved a,b,c round by round, CPU seconds per GiB of every process involved
# and the iscsifs daemon's peak RSS. Owns starting, measuring and stopping those processes and
# its temp files; must not touch product code or any process it did not start (stop by PID).
# Facts it relies on are in shared/TESTBED.md; what the figures mean is in docs/bench.md.
"""Benchmark iscsifs against qemu-storage-daemon and iscsi-perf on one tgtd LUN."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import testbed  # noqa: E402  (stdlib only; lives beside us in scripts/)

MiB = 1 << 20
GiB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")
TARGET_IQN = "iqn.2026-11.org.iscsifs:bench"
IFS_INITIATOR = "iqn.2026-11.org.iscsifs:bench-iscsifs"
QSD_INITIATOR = "iqn.2026-11.org.iscsifs:bench-qsd"
PERF_INITIATOR = "iqn.2026-11.org.iscsifs:bench-perf"
SYSTEMS = ("iscsifs", "qsd", "iscsi-perf")


class BenchError(RuntimeError):
    """Something the benchmark needs could not be started or measured."""


# --------------------------------------------------------------------------- the jobs


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One workload, run the same way on every system that supports it."""

    name: str
    rw: str  # fio's rw=
    bs: int
    depth: int
    streams: int = 1

    @property
    def unit(self) -> str:
        """Big blocks are judged by bandwidth, small ones by IOPS."""
        return "MiB/s" if self.bs >= 64 * 1024 else "IOPS"

    @property
    def reads(self) -> bool:
        return "read" in self.rw

    @property
    def perf_ok(self) -> bool:
        """iscsi-perf only reads (sequential or random), at one block size and queue depth."""
        return self.reads


def default_jobs(streams: Sequence[int], stream_depth: int) -> list[Job]:
    jobs = [
        Job(name="seq-read-1M-qd1", rw="read", bs=MiB, depth=1),
        Job(name="seq-read-1M-qd8", rw="read", bs=MiB, depth=8),
        Job(name="seq-write-1M-qd1", rw="write", bs=MiB, depth=1),
        Job(name="seq-write-1M-qd8", rw="write", bs=MiB, depth=8),
        Job(name="rand-read-4K-qd1", rw="randread", bs=4096, depth=1),
        Job(name="rand-read-4K-qd32", rw="randread", bs=4096, depth=32),
        Job(name="rand-write-4K-qd1", rw="randwrite", bs=4096, depth=1),
        Job(name="rand-write-4K-qd32", rw="randwrite", bs=4096, depth=32),
    ]
    jobs += [Job(name=f"streams-{n}x1M-qd{stream_depth}", rw="read", bs=MiB, depth=stream_depth,
                 streams=n) for n in streams]
    return jobs


# --------------------------------------------------------------------------- /proc readings


def proc_cpu(pid: int | None) -> float:
    """utime + stime of a whole process (all its threads, live and gone), in seconds."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


def proc_status_kib(pid: int | None, key: str) -> int | None:
    """A 'kB' line of /proc/PID/status (VmRSS, VmHWM), or None when the process is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy() -> float:
    """Seconds of CPU spent in user, nice and system mode by the whole machine so far."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    return (int(parts[1]) + int(parts[2]) + int(parts[3])) / TICK


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class RssSampler:
    """Samples VmRSS of the daemons every `period` s: the peak per job key and overall.
    VmHWM gives the overall peak too; sampling is what tells which job made it."""

    def __init__(self, pids: Callable[[], dict[str, int | None]], period: float = 0.1) -> None:
        self._pids = pids
        self._period = period
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._key: str | None = None
        self.peak: dict[str, int] = {}
        self.by_key: dict[str, dict[str, int]] = {}
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.sample()

    def sample(self) -> None:
        for name, pid in self._pids().items():
            kib = proc_status_kib(pid, "VmRSS")
            if kib is None:
                continue
            with self._lock:
                self.peak[name] = max(self.peak.get(name, 0), kib)
                if self._key is not None:
                    d = self.by_key.setdefault(self._key, {})
                    d[name] = max(d.get(name, 0), kib)

    @contextlib.contextmanager
    def job(self, key: str) -> Iterator[None]:
        with self._lock:
            self._key = key
        try:
            yield
        finally:
            self.sample()
            with self._lock:
                self._key = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


# --------------------------------------------------------------------------- child processes


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def stop_child(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
               grace: float = 10.0) -> None:
    """Stop one child by its PID: sig, then SIGKILL after grace seconds; reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def fuse_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def _alive(pid: int | None) -> bool:
    """Running and not a zombie (an orphaned daemon stays a zombie where PID 1 does not reap)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_until(what: str, ok: Callable[[], bool], timeout: float,
                failed: Callable[[], str | None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        why = failed()
        if why:
            raise BenchError(f"{what}: {why}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.05)


@contextlib.contextmanager
def _reraise_timeout(what: str, log: Path) -> Iterator[None]:
    try:
        yield
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}; its log ends: {_tail(log, 4)}") from None


def _tail(path: Path, n: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- the test bed


@dataclass
class Bed:
    """tgtd with one LUN, an iscsifs mount of it and a qemu-storage-daemon export of it."""

    tmp: Path
    lun_size: int
    tgtd: testbed.Tgtd | None = None
    port: int = 0
    backing: str = ""
    config: Path = field(init=False)
    mnt: Path = field(init=False)
    runtime: Path = field(init=False)
    ifs_log: Path = field(init=False)
    ifs_pid: int | None = None
    ifs_lun: Path | None = None
    qsd: subprocess.Popen[bytes] | None = None
    qsd_file: Path = field(init=False)
    qsd_log: Path = field(init=False)
    mounted: bool = False
    mount_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = self.tmp / "iscsifs.toml"
        self.mnt = self.tmp / "mnt"
        self.runtime = self.tmp / "run"
        self.ifs_log = self.tmp / "iscsifs.log"
        self.qsd_file = self.tmp / "qsd-export.img"
        self.qsd_log = self.tmp / "qsd.log"

    @property
    def env(self) -> dict[str, str]:
        # PYTHONPATH: benchmark the iscsifs of the checkout this script is in, whatever
        # checkout the venv's editable install points at (PathFinder runs before its finder).
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "ISCSIFS_RUNTIME_DIR": str(self.runtime),
                "ISCSIFS_CONFIG": str(self.config), "PYTHONPATH": path}

    @property
    def tgtd_pid(self) -> int | None:
        return self.tgtd.pid if self.tgtd else None

    @property
    def qsd_pid(self) -> int | None:
        return self.qsd.pid if self.qsd else None

    def perf_url(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{TARGET_IQN}/1"

    # -- bring-up

    def start_tgtd(self) -> None:
        self.tgtd = testbed.Tgtd().start()
        target = self.tgtd.add_target(TARGET_IQN, luns=(self.lun_size,))
        self.port = self.tgtd.port
        self.backing = target.lun_path(1)
        # Fill the LUN before anyone logs in: reads of a sparse tmpfs hole cost tgtd less than
        # reads of real pages, and writes would otherwise first allocate them.
        pattern = os.urandom(MiB)
        with open(self.backing, "r+b") as f:
            for _ in range(self.lun_size // MiB):
                f.write(pattern)
        _log(f"tgtd pid {self.tgtd.pid} on 127.0.0.1:{self.port} (control {self.tgtd.control}),"
             f" LUN {self.lun_size // MiB} MiB on {self.backing}")

    def mount_iscsifs(self, timeout: float = 30) -> None:
        import tomlkit  # the venv's; the config is TOML written by a TOML library

        doc = tomlkit.document()
        doc.add(tomlkit.comment("written by scripts/bench for one run"))
        doc["initiator"] = {"name": IFS_INITIATOR}
        doc["mount"] = {"point": str(self.mnt), **self.mount_options}
        targets = tomlkit.aot()
        t = tomlkit.table()
        t["name"] = TARGET_IQN
        portals = tomlkit.aot()
        portals.append({"address": "127.0.0.1", "port": self.port, "auto_login": True})
        t["portal"] = portals
        targets.append(t)
        doc["target"] = targets
        self.config.write_text(tomlkit.dumps(doc))
        self.config.chmod(0o600)
        self.mnt.mkdir()
        out = self.tmp / "iscsifs-mount.out"
        with open(out, "wb") as o, _reraise_timeout(
                f"iscsifs mount did not return in {timeout:.0f}s", self.ifs_log):
            r = subprocess.run(
                [sys.executable, "-m", "iscsifs.cli", "mount", "--config", str(self.config),
                 "--log", str(self.ifs_log), str(self.mnt)],
                env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=o,
                stderr=subprocess.STDOUT, timeout=timeout, start_new_session=True, check=False)
        self.mounted = fuse_mounted(self.mnt)
        regs = list(self.runtime.glob("*.json"))
        if regs:
            self.ifs_pid = int(json.loads(regs[0].read_text())["pid"])
        if r.returncode != 0 or self.ifs_pid is None:
            raise BenchError(f"iscsifs mount failed (rc={r.returncode}): {_tail(out)} "
                             f"{_tail(self.ifs_log)}")
        lun = self.mnt / "targets" / TARGET_IQN / f"127.0.0.1:{self.port}" / "lun1"
        _wait_until("iscsifs lun1", lun.exists, timeout,
                    lambda: None if _alive(self.ifs_pid) else "daemon died: "
                    + _tail(self.ifs_log))
        self.ifs_lun = lun
        _log(f"iscsifs daemon pid {self.ifs_pid}, {lun}")

    def start_qsd(self, timeout: float = 30) -> None:
        self.qsd_file.touch()  # a FUSE export mounts over an existing regular file
        blockdev = ",".join([
            "driver=iscsi", "node-name=lun", "transport=tcp", f"portal=127.0.0.1:{self.port}",
            f"target={TARGET_IQN}", "lun=1", f"initiator-name={QSD_INITIATOR}"])
        export = f"type=fuse,id=e,node-name=lun,mountpoint={self.qsd_file},writable=on"
        with open(self.qsd_log, "wb") as log:
            self.qsd = subprocess.Popen(
                ["qemu-storage-daemon", "--blockdev", blockdev, "--export", export],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        _wait_until("qemu-storage-daemon export",
                    lambda: fuse_mounted(self.qsd_file)
                    and self.qsd_file.stat().st_size == self.lun_size, timeout,
                    lambda: None if self.qsd and self.qsd.poll() is None
                    else "exited: " + _tail(self.qsd_log))
        _log(f"qemu-storage-daemon pid {self.qsd_pid}, {self.qsd_file}")

    # -- teardown, each step on its own: one failure must not leave the rest running

    def close(self) -> None:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("iscsifs umount", self._umount),
            ("qemu-storage-daemon", self._stop_qsd),
            ("tgtd", self._stop_tgtd),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as e:  # keep going: the next daemon must still be stopped
                _log(f"cleanup of {what} failed: {e}")

    def _daemon_pids(self) -> list[int]:
        """The iscsifs daemon(s) of THIS run, also when the mount never said its PID (cut short
        or hung before it wrote the runtime JSON): the processes whose command line names our
        private config file, which no other process on the machine names."""
        pids = {self.ifs_pid} if self.ifs_pid else set()
        for reg in self.runtime.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.add(int(json.loads(reg.read_text())["pid"]))
        me = str(os.getpid())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or entry.name == me:
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"iscsifs.cli" in argv and str(self.config).encode() in argv:
                pids.add(int(entry.name))
        return sorted(p for p in pids if _alive(p))

    def _umount(self) -> None:
        pids = self._daemon_pids()
        if not pids and not fuse_mounted(self.mnt):
            return
        if pids and self.ifs_lun is None:
            # The mount never got ready: its tree may not answer at all (a daemon blocked
            # before it serves FUSE), so the CLI would only hang. Signal it directly.
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        elif pids:
            try:
                r = subprocess.run(
                    [sys.executable, "-m", "iscsifs.cli", "umount", "--config", str(self.config)],
                    env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                    text=True, timeout=60, start_new_session=True, check=False)
                if r.returncode:
                    _log(f"iscsifs umount rc={r.returncode}: {(r.stderr or r.stdout).strip()}")
            except subprocess.TimeoutExpired:
                _log("iscsifs umount timed out")
        if pids:
            deadline = time.monotonic() + (15 if self.ifs_lun else 5)
            while any(map(_alive, pids)) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in filter(_alive, pids):
                # Its death closes /dev/fuse, which fails every request still waiting on it.
                _log(f"iscsifs daemon {pid} still running: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if fuse_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], check=False,
                           capture_output=True)
        self.ifs_pid = None
        self.mounted = False

    def _stop_qsd(self) -> None:
        stop_child(self.qsd, signal.SIGTERM)  # it unmounts its export on SIGTERM
        self.qsd = None
        if fuse_mounted(self.qsd_file):
            subprocess.run(["fusermount3", "-uz", str(self.qsd_file)], check=False,
                           capture_output=True)

    def _stop_tgtd(self) -> None:
        if self.tgtd is not None:
            self.tgtd.close()  # SIGKILL by PID, backing file, socket files, its temp dir
            self.tgtd = None


# --------------------------------------------------------------------------- running one job


def fio_filename(path: Path) -> str:
    """fio splits filename= on ':' (several files): the portal directory has one."""
    return str(path).replace(":", "\\:")


def fio_argv(job: Job, path: Path, runtime: float, lun_size: int) -> list[str]:
    argv = [
        "fio", "--output-format=json", f"--name={job.name}", f"--filename={fio_filename(path)}",
        "--direct=1", "--ioengine=libaio", f"--rw={job.rw}", f"--bs={job.bs}",
        f"--iodepth={job.depth}", "--time_based=1", f"--runtime={runtime:g}s",
        "--norandommap=1", "--randrepeat=1", "--invalidate=0",
    ]
    if job.streams > 1:
        part = lun_size // job.streams // MiB * MiB
        argv += [f"--numjobs={job.streams}", f"--size={part}", f"--offset_increment={part}",
                 "--group_reporting=1"]
    return argv


@dataclass
class Sample:
    """One run of one job on one system, and what every process spent meanwhile."""

    system: str
    round: int
    ok: bool = True
    error: str = ""
    bytes: int = 0
    seconds: float = 0.0
    iops: float = 0.0
    mib_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in this run
    other_cores: float = 0.0  # CPU the rest of the machine used, in cores, meanwhile
    rss_kib: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def per_gib(self, who: str) -> float | None:
        if not self.ok or self.bytes <= 0 or who not in self.cpu:
            return None
        return self.cpu[who] / (self.bytes / GiB)


def run_fio(job: Job, path: Path, runtime: float, lun_size: int, sample: Sample) -> None:
    argv = fio_argv(job, path, runtime, lun_size)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=runtime + 60)
    except subprocess.TimeoutExpired:
        stop_child(proc, signal.SIGKILL)
        raise BenchError(f"fio {job.name} on {path} did not finish") from None
    finally:
        stop_child(proc, signal.SIGKILL)  # a no-op unless interrupted (Ctrl-C) meanwhile
    text = out.decode(errors="replace")
    try:
        doc = json.loads(text[text.index("{"):])  # fio may print notes before the JSON
    except ValueError:
        raise BenchError(f"fio {job.name}: rc={proc.returncode}, no JSON: "
                         f"{err.decode(errors='replace').strip()[-300:]}") from None
    j = doc["jobs"][0]
    if j.get("error") or proc.returncode:
        raise BenchError(f"fio {job.name}: error {j.get('error')} rc={proc.returncode}: "
                         f"{err.decode(errors='replace').strip()[-300:]}")
    # With group_reporting, bw_bytes and iops are the sum over the streams and runtime is
    # the longest stream's.
    rd, wr = j["read"], j["write"]
    sample.bytes = int(rd["io_bytes"]) + int(wr["io_bytes"])
    sample.seconds = max(int(rd["runtime"]), int(wr["runtime"])) / 1000
    sample.iops = float(rd["iops"]) + float(wr["iops"])
    sample.mib_s = (int(rd["bw_bytes"]) + int(wr["bw_bytes"])) / MiB
    lat = j["read" if job.reads else "write"]["clat_ns"]
    sample.extra = {"clat_mean_us": lat.get("mean", 0) / 1000,
                    "clat_p99_us": lat.get("percentile", {}).get("99.000000", 0) / 1000,
                    "fio_usr_pct": j.get("usr_cpu"), "fio_sys_pct": j.get("sys_cpu")}


PERF_LINE = re.compile(r"iops current (\d+) .*?iops average (\d+)")


def run_perf(job: Job, url: str, runtime: float, sample: Sample) -> None:
    """iscsi-perf, one process per stream (each its own session), stopped with SIGINT after
    `runtime` s. Its per-second 'iops current' figures, less the first (login, ramp), give the
    rate; the last 'iops average' times the seconds seen gives the bytes for CPU per GiB."""
    blocks = job.bs // 512
    procs = []
    try:
        for i in range(job.streams):
            argv = ["iscsi-perf", "-i", f"{PERF_INITIATOR}-{i}", "-m", str(job.depth),
                    "-b", str(blocks)]
            if job.rw.startswith("rand"):
                argv.append("-r")
            procs.append(subprocess.Popen([*argv, url], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        time.sleep(runtime + 0.5)  # +0.5: it counts seconds from after its login
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
        outs = []
        for p in procs:
            try:
                outs.append(p.communicate(timeout=30)[0].decode(errors="replace"))
            except subprocess.TimeoutExpired:
                stop_child(p, signal.SIGKILL)
                raise BenchError("iscsi-perf did not stop on SIGINT") from None
    finally:
        for p in procs:
            stop_child(p, signal.SIGKILL)
    rate = total = 0.0
    seconds = 0
    for p, text in zip(procs, outs, strict=True):
        found = [(int(a), int(b)) for a, b in PERF_LINE.findall(text)]
        if p.returncode or not found:
            raise BenchError(f"iscsi-perf rc={p.returncode}: {text.strip()[-300:]}")
        steady = [cur for cur, _ in found[1:]] or [found[0][0]]
        rate += statistics.fmean(steady)
        total += found[-1][1] * len(found)
        seconds = max(seconds, len(found))
    sample.iops = rate
    sample.mib_s = rate * job.bs / MiB
    sample.bytes = int(total * job.bs)
    sample.seconds = float(seconds)


def measure(bed: Bed, rss: RssSampler, key: str, sample: Sample,
            run: Callable[[], None]) -> Sample:
    """Run one job, reading every process's CPU before and after it."""
    pids = {"iscsifs": bed.ifs_pid, "qsd": bed.qsd_pid, "tgtd": bed.tgtd_pid}
    before = {k: proc_cpu(p) for k, p in pids.items()}
    kids0, busy0, t0 = children_cpu(), machine_busy(), time.monotonic()
    try:
        with rss.job(key):
            run()
    except BenchError as e:
        sample.ok, sample.error = False, str(e)
    wall = time.monotonic() - t0
    sample.cpu = {k: proc_cpu(p) - before[k] for k, p in pids.items()}
    sample.cpu["client"] = children_cpu() - kids0  # fio or iscsi-perf, reaped just now
    ours = sum(sample.cpu.values())
    sample.other_cores = max(0.0, (machine_busy() - busy0 - ours) / max(wall, 1e-9))
    sample.rss_kib = dict(rss.by_key.get(key, {}))
    return sample


# --------------------------------------------------------------------------- report


INITIATOR = {"iscsifs": "iscsifs", "qsd": "qsd", "iscsi-perf": "client"}


def _median(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def summarize(job: Job, samples: list[Sample]) -> dict[str, Any]:
    """Medians over the rounds, per system: the rate, CPU s/GiB of the initiator and tgtd."""
    out: dict[str, Any] = {}
    for system in SYSTEMS:
        mine = [s for s in samples if s.system == system]
        good = [s for s in mine if s.ok]
        if not mine:
            continue
        value = [s.mib_s if job.unit == "MiB/s" else s.iops for s in good]
        out[system] = {
            "value": _median(value),
            "mib_s": _median([s.mib_s for s in good]),
            "iops": _median([s.iops for s in good]),
            "cpu_s_per_gib": _median([s.per_gib(INITIATOR[system]) for s in good]),
            "tgtd_cpu_s_per_gib": _median([s.per_gib("tgtd") for s in good]),
            "client_cpu_s_per_gib": _median([s.per_gib("client") for s in good]),
            "rss_peak_kib": max((s.rss_kib.get(system, 0) for s in mine), default=0) or None,
            "errors": [s.error for s in mine if not s.ok],
            "rounds": len(good),
        }
    for other, key in (("qsd", "ratio_iscsifs_qsd"), ("iscsi-perf", "ratio_iscsifs_perf")):
        # Paired by round: the two runs of a round are seconds apart, so a neighbour's burst
        # of load tends to hit both; the median of the paired ratios shrugs off a bad round.
        mine = {s.round: s for s in samples if s.system == "iscsifs" and s.ok}
        theirs = {s.round: s for s in samples if s.system == other and s.ok}
        ratios = []
        for r in sorted(mine.keys() & theirs.keys()):
            x, y = mine[r], theirs[r]
            a, b = (x.mib_s, y.mib_s) if job.unit == "MiB/s" else (x.iops, y.iops)
            if b > 0:
                ratios.append(a / b)
        out[key] = statistics.median(ratios) if ratios else None
        out[key + "_range"] = [min(ratios), max(ratios)] if ratios else None
        out[key + "_rounds"] = ratios
    return out


def _range(r: list[float] | None) -> str:
    return f"{r[0]:.2f}-{r[1]:.2f}" if r and len(r) == 2 and r[0] != r[1] else "-"


def _num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "cpu":
        return f"{v:.2f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


COLUMNS = [
    ("job", 22), ("unit", 5), ("iscsifs", 8), ("qsd", 8), ("iscsi-perf", 10), ("ifs/qsd", 7),
    ("(range)", 11), ("ifs/perf", 8), ("cpu:ifs", 7), ("tgtd(a)", 7), ("cpu:qsd", 7), ("tgtd(b)", 7),
    ("cpu:perf", 8), ("tgtd(c)", 7), ("ifsRSS", 6),
]


def table(jobs: list[Job], summary: dict[str, dict[str, Any]]) -> str:
    def row(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True)))

    lines = [row([name for name, _ in COLUMNS]), row(["-" * w for _, w in COLUMNS])]
    for job in jobs:
        s = summary.get(job.name)
        if s is None:
            continue
        a, b, c = (s.get(k, {}) for k in SYSTEMS)

        def cell(d: dict[str, Any], key: str, unit: str = "") -> str:
            if d and d.get("errors") and d.get("value") is None:
                return "ERR"
            return _num(d.get(key), unit) if d else "-"

        rss = a.get("rss_peak_kib")
        lines.append(row([
            job.name, job.unit, cell(a, "value"), cell(b, "value"), cell(c, "value"),
            _num(s.get("ratio_iscsifs_qsd"), "x"), _range(s.get("ratio_iscsifs_qsd_range")),
            _num(s.get("ratio_iscsifs_perf"), "x"),
            cell(a, "cpu_s_per_gib", "cpu"), cell(a, "tgtd_cpu_s_per_gib", "cpu"),
            cell(b, "cpu_s_per_gib", "cpu"), cell(b, "tgtd_cpu_s_per_gib", "cpu"),
            cell(c, "cpu_s_per_gib", "cpu"), cell(c, "tgtd_cpu_s_per_gib", "cpu"),
            f"{rss / 1024:.0f}" if rss else "-",
        ]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def mount_option(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=INTEGER, e.g. max_read=0")
    return key, int(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="iscsifs vs qemu-storage-daemon (FUSE, libiscsi) vs iscsi-perf on one "
                    "tmpfs tgtd LUN; see docs/bench.md.")
    p.add_argument("--runtime", type=float, default=5.0, metavar="S",
                   help="seconds per job per system per round (default 5)")
    p.add_argument("--warmup", type=float, default=2.0, metavar="S",
                   help="unmeasured write+read on each mount before the rounds (default 2 s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows "
                   "the median (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round of 2 s per job (overrides --runtime/--rounds)")
    p.add_argument("--only", metavar="JOBS", default="",
                   help="comma-separated job names (or substrings) to run")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--streams", default="1,2,4",
                   help="stream counts for the concurrent-readers jobs (default 1,2,4)")
    p.add_argument("--stream-depth", type=int, default=1,
                   help="queue depth of each concurrent reader (default 1)")
    p.add_argument("--lun-size", default="256M", help="tmpfs LUN size (default 256M)")
    p.add_argument("--mount", metavar="KEY=N", action="append", default=[], type=mount_option,
                   help="an integer [mount] setting for the iscsifs config, e.g. max_read=0 "
                        "(repeatable)")
    p.add_argument("--json", metavar="FILE", help="write every raw number here")
    p.add_argument("--keep-logs", metavar="DIR",
                   help="copy the iscsifs, qemu-storage-daemon and tgtd logs here at the end")
    p.add_argument("--list", action="store_true", help="list the jobs and exit")
    p.add_argument("--report", metavar="FILE",
                   help="print the table of an earlier run's --json FILE and exit")
    a = p.parse_args(argv)
    if a.quick:
        a.runtime, a.rounds, a.warmup = 2.0, 1, 1.0
    a.systems = [s for s in a.systems.split(",") if s]
    bad = set(a.systems) - set(SYSTEMS)
    if bad or not a.systems:
        p.error(f"--systems: unknown {','.join(sorted(bad)) or '(empty)'}")
    if a.runtime < 1 or a.rounds < 1:
        p.error("--runtime must be >= 1 s and --rounds >= 1")
    return a


def _git(*args: str) -> str:
    r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip()


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def report(path: str) -> int:
    """The table and footer again, from the raw numbers of an earlier --json."""
    doc = json.loads(Path(path).read_text())
    jobs = [Job(name=name, rw=j["fio"]["rw"], bs=j["fio"]["bs"], depth=j["fio"]["iodepth"],
                streams=j["fio"]["numjobs"]) for name, j in doc["jobs"].items()]
    samples = {name: [Sample(**s) for s in j["samples"]] for name, j in doc["jobs"].items()}
    summary = {j.name: summarize(j, samples[j.name]) for j in jobs}
    print(table(jobs, summary))
    print()
    print(footer(doc["peak_rss_kib"]["vmhwm"], samples, doc["meta"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    streams = [int(x) for x in args.streams.split(",") if x]
    jobs = default_jobs(streams, args.stream_depth)
    if args.only:
        wanted = [w for w in args.only.split(",") if w]
        jobs = [j for j in jobs if any(w == j.name or w in j.name for w in wanted)]
    if args.list:
        for j in jobs:
            print(f"{j.name:24} fio rw={j.rw} bs={j.bs} iodepth={j.depth} numjobs={j.streams}"
                  f"{'  (+iscsi-perf)' if j.perf_ok else ''}")
        return 0
    if not jobs:
        print("bench: no job matches --only", file=sys.stderr)
        return 2
    missing = [c for c in ("tgtd", "tgtadm", "fio", "qemu-storage-daemon", "iscsi-perf",
                           "fusermount3", "timeout") if shutil.which(c) is None]
    if missing:
        print(f"bench: missing {', '.join(missing)}: run scripts/setup (as root)",
              file=sys.stderr)
        return 2
    lun_size = testbed.parse_size(args.lun_size)

    runs = sum(len([s for s in args.systems if s != "iscsi-perf" or j.perf_ok]) for j in jobs)
    _log(f"{len(jobs)} jobs, {runs} runs a round, {args.rounds} round(s) of {args.runtime:g} s:"
         f" about {runs * args.rounds * (args.runtime + 1.5) / 60:.1f} min plus set-up")

    # SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so the finally below stops everything.
    # SIGINT explicitly: a shell starts a background job with SIGINT ignored, and Python then
    # never raises KeyboardInterrupt. A SIGHUP ignored on purpose (nohup) stays ignored. Set
    # before testbed starts tgtd, so its own last-resort SIGTERM hook stays out of the way.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if sig != signal.SIGHUP or signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="iscsifs-bench-"))
    bed = Bed(tmp=tmp, lun_size=lun_size, mount_options=dict(args.mount))
    rss = RssSampler(lambda: {"iscsifs": bed.ifs_pid, "qsd": bed.qsd_pid, "tgtd": bed.tgtd_pid})
    samples: dict[str, list[Sample]] = {j.name: [] for j in jobs}
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runtime_s": args.runtime,
        "rounds": args.rounds, "lun_size": lun_size, "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "systems": args.systems,
        "mount_options": dict(args.mount),
        "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain",
                                                                 "--", "iscsifs")),
    }
    hwm: dict[str, int | None] = {}
    rc = 0
    try:
        bed.start_tgtd()
        if "iscsifs" in args.systems:
            bed.mount_iscsifs()
        if "qsd" in args.systems:
            bed.start_qsd()
        meta.update(tgtd_pid=bed.tgtd_pid, iscsifs_pid=bed.ifs_pid, qsd_pid=bed.qsd_pid,
                    port=bed.port)
        rss.start()
        warm_up(args, bed, lun_size)
        run_all(args, bed, rss, jobs, samples, runs * args.rounds, lun_size)
    except KeyboardInterrupt as e:
        _log(f"interrupted ({e or 'Ctrl-C'}): cleaning up")
        rc = 130
    except (BenchError, testbed.TestbedError, subprocess.SubprocessError, OSError) as e:
        _log(f"ERROR: {e}")
        rc = 1
    finally:
        # VmHWM is the peak over the daemon's whole life: read it while it still lives.
        hwm = {"iscsifs": proc_status_kib(bed.ifs_pid, "VmHWM"),
               "qsd": proc_status_kib(bed.qsd_pid, "VmHWM"),
               "tgtd": proc_status_kib(bed.tgtd_pid, "VmHWM")}
        _finish_cleanup(bed, rss, tmp, args.keep_logs)
    if not any(samples.values()):
        return rc

    summary = {j.name: summarize(j, samples[j.name]) for j in jobs}
    print()
    if rc:
        print("PARTIAL RESULTS: the run was cut short")
    print(table(jobs, summary))
    print()
    print(footer(hwm, samples, meta))
    if args.json:
        doc = {
            "meta": meta,
            "peak_rss_kib": {"vmhwm": hwm, "sampled_vmrss": rss.peak},
            "jobs": {j.name: {"fio": {"rw": j.rw, "bs": j.bs, "iodepth": j.depth,
                                      "numjobs": j.streams},
                              "unit": j.unit, "summary": summary[j.name],
                              "samples": [vars(s) for s in samples[j.name]]} for j in jobs},
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        _log(f"raw numbers in {args.json}")
    failed = sum(not s.ok for ss in samples.values() for s in ss)
    if failed:
        _log(f"{failed} run(s) failed: see the ERR cells and the JSON 'error' fields")
    return rc or (1 if failed else 0)


def warm_up(args: argparse.Namespace, bed: Bed, lun_size: int) -> None:
    """Unmeasured sequential write and read on each FUSE file: the first I/O after a login
    pays for things (the target's unit attention, first allocations) no later run pays."""
    if args.warmup <= 0:
        return
    paths = [p for s, p in (("iscsifs", bed.ifs_lun), ("qsd", bed.qsd_file))
             if s in args.systems and p is not None]
    for path in paths:
        for rw in ("write", "read"):
            job = Job(name=f"warmup-{rw}", rw=rw, bs=MiB, depth=8)
            try:
                run_fio(job, path, args.warmup, lun_size, Sample(system="warmup", round=-1))
            except BenchError as e:
                _log(f"warm-up on {path} failed: {e}")
    _log(f"warmed up {len(paths)} mount(s) for {args.warmup:g} s each way")


def run_all(args: argparse.Namespace, bed: Bed, rss: RssSampler, jobs: list[Job],
            samples: dict[str, list[Sample]], total: int, lun_size: int) -> None:
    """Round by round, every job, every system in turn (a,b,c then b,c,a ...)."""
    n = 0
    # Rounds outermost: a burst of load from a neighbour then spoils one round of several
    # jobs, which the median drops, rather than every round of one job.
    for r in range(args.rounds):
        for job in jobs:
            systems = [s for s in args.systems if s != "iscsi-perf" or job.perf_ok]
            # Rotate who goes first each round: a drift (tmpfs, caches, a neighbour's load)
            # then hits every system alike instead of always the same one.
            order = systems[r % len(systems):] + systems[:r % len(systems)]
            for system in order:
                n += 1
                sample = Sample(system=system, round=r)
                if system == "iscsifs":
                    assert bed.ifs_lun is not None
                    run = functools.partial(run_fio, job, bed.ifs_lun, args.runtime, lun_size,
                                            sample)
                elif system == "qsd":
                    run = functools.partial(run_fio, job, bed.qsd_file, args.runtime, lun_size,
                                            sample)
                else:
                    run = functools.partial(run_perf, job, bed.perf_url(), args.runtime, sample)
                measure(bed, rss, f"{job.name}/{system}/{r}", sample, run)
                samples[job.name].append(sample)
                if sample.ok:
                    val = sample.mib_s if job.unit == "MiB/s" else sample.iops
                    cpu = sample.per_gib(INITIATOR[system]) or 0.0
                    _log(f"[{n}/{total}] {job.name} {system} r{r}: {val:,.0f} {job.unit}, "
                         f"cpu {cpu:.2f} s/GiB, tgtd {sample.per_gib('tgtd') or 0:.2f} s/GiB, "
                         f"others {sample.other_cores:.2f} cores")
                else:
                    _log(f"[{n}/{total}] {job.name} {system} r{r}: FAILED {sample.error}")


def footer(hwm: dict[str, int | None], samples: dict[str, list[Sample]],
           meta: dict[str, Any]) -> str:
    def mib(k: int | None) -> str:
        return f"{k / 1024:.0f} MiB" if k else "-"

    others = [s.other_cores for ss in samples.values() for s in ss]
    busiest = max(others, default=0.0)
    typical = statistics.median(others) if others else 0.0
    lines = [
        f"median of {meta['rounds']} interleaved round(s) of {meta['runtime_s']:g} s; fio direct=1 "
        f"libaio; LUN {meta['lun_size'] // MiB} MiB on tmpfs; {meta['cpus']} CPUs; "
        "numbers move from run to run.",
        "ifs/qsd, ifs/perf = median over rounds of iscsifs / the other in the same round "
        "(range: lowest-highest round); > 1 means iscsifs is faster.",
        "cpu:* = CPU s per GiB moved by that initiator process (cpu:perf = iscsi-perf); "
        "tgtd(a/b/c) = tgtd's CPU s per GiB during the iscsifs / qsd / iscsi-perf runs.",
        f"peak RSS (VmHWM, whole run): iscsifs daemon {mib(hwm.get('iscsifs'))}, "
        f"qemu-storage-daemon {mib(hwm.get('qsd'))}, tgtd {mib(hwm.get('tgtd'))}; "
        "ifsRSS = peak sampled VmRSS of the iscsifs daemon (MiB) during that job.",
        f"iscsifs at commit {meta['commit'][:10] or '?'}"
        + (" with uncommitted changes in iscsifs/" if meta["dirty"] else "")
        + f"; load average at start {meta['loadavg_start'][0]:.2f}; other processes used "
        f"{typical:.2f} cores during a typical run, {busiest:.2f} at most"
        + (" (NOISY: others competed for the CPUs)" if typical > 0.25 else "") + ".",
    ]
    return "\n".join(lines)


def _finish_cleanup(bed: Bed, rss: RssSampler, tmp: Path, keep: str | None) -> None:
    # A second Ctrl-C (or a SIGTERM) must not cut the cleanup short and leave daemons or
    # mounts behind.
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rss.stop()
        if keep:
            dest = Path(keep)
            dest.mkdir(parents=True, exist_ok=True)
            for src in (bed.ifs_log, bed.qsd_log):
                if src.exists():
                    shutil.copy(src, dest / src.name)
            if bed.tgtd is not None and bed.tgtd.log_path.exists():
                shutil.copy(bed.tgtd.log_path, dest / "tgtd.log")
        bed.close()
        if fuse_mounted(bed.mnt) or fuse_mounted(bed.qsd_file):
            _log(f"WARNING: a mount is still there under {tmp}: left it in place")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
