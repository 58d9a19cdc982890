# A real iscsifs mount for integration tests: writes a config naming the test's targets, runs
# `iscsifs mount` as its own process with a private runtime directory, mount point and log, and
# takes it all down afterwards (umount, then SIGKILL by PID if it lingers; loop devices backed
# by the mount are detached first). Owns nothing in the product; used by tests only.

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

ISCSIFS = [sys.executable, "-m", "iscsifs.cli"]


@dataclass
class PortalSpec:
    iqn: str
    host: str
    port: int
    auto_login: bool = True
    chap: tuple[str, str] | None = None
    mutual: tuple[str, str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timeouts: dict[str, Any] = field(default_factory=dict)


def write_config(path: Path, mountpoint: Path, portals: Sequence[PortalSpec],
                 initiator: str = "iqn.2026-11.org.iscsifs:test") -> None:
    doc = tomlkit.document()
    doc.add(tomlkit.comment("written by tests/integration/mounting.py"))
    doc["initiator"] = {"name": initiator}
    doc["mount"] = {"point": str(mountpoint)}
    targets = tomlkit.aot()
    for p in portals:
        t = tomlkit.table()
        t["name"] = p.iqn
        portal = tomlkit.aot()
        portal.append({"address": p.host, "port": p.port, "auto_login": p.auto_login})
        t["portal"] = portal
        if p.chap:
            sec: dict[str, Any] = {"method": "CHAP", "target_user": p.chap[0],
                                   "target_secret": p.chap[1]}
            if p.mutual:
                sec.update(initiator_user=p.mutual[0], initiator_secret=p.mutual[1],
                           mutual=True)
            t["security"] = sec
        if p.params:
            t["params"] = p.params
        if p.timeouts:
            t["timeouts"] = p.timeouts
        targets.append(t)
    if portals:
        doc["target"] = targets
    path.write_text(tomlkit.dumps(doc))
    path.chmod(0o600)


class Mount:
    """`iscsifs mount` of a private config, as a separate process."""

    def __init__(self, tmp: Path, portals: Sequence[PortalSpec] = (), *,
                 foreground: bool = True) -> None:
        self.tmp = tmp
        self.config = tmp / "iscsifs.toml"
        self.point = tmp / "mnt"
        self.log = tmp / "iscsifs.log"
        self.runtime = tmp / "run"
        self.env = {**os.environ, "ISCSIFS_RUNTIME_DIR": str(self.runtime),
                    "ISCSIFS_CONFIG": str(self.config)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.foreground = foreground
        self.pid: int | None = None
        self.loops: list[str] = []
        write_config(self.config, self.point, portals)

    def cli(self, *args: str, check: bool = False, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*ISCSIFS, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode:
            raise AssertionError(f"iscsifs {' '.join(args)} failed: {r.stderr}{r.stdout}")
        return r

    def start(self, timeout: float = 30) -> Mount:
        self.point.mkdir(exist_ok=True)
        if self.foreground:
            self.proc = subprocess.Popen(
                [*ISCSIFS, "mount", "--foreground", "--config", str(self.config), "--log",
                 str(self.log), str(self.point)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True)
            self.pid = self.proc.pid
            deadline = time.monotonic() + timeout
            while not (self.point / "version").exists():
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise AssertionError(f"iscsifs mount exited: {err}")
                if time.monotonic() > deadline:
                    raise AssertionError("iscsifs mount not ready in time")
                time.sleep(0.05)
        else:
            self.cli("mount", "--config", str(self.config), "--log", str(self.log),
                     str(self.point), check=True)
            import json
            info = json.loads(next(self.runtime.glob("*.json")).read_text())
            self.pid = int(info["pid"])
        return self

    def portal_dir(self, iqn: str, host: str, port: int) -> Path:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.point / "targets" / iqn / where

    def wait_for(self, path: Path, timeout: float = 30, gone: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while path.exists() == gone:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} {'still there' if gone else 'did not appear'}")
            time.sleep(0.05)

    def losetup(self, path: Path) -> str:
        dev = subprocess.run(["losetup", "--find", "--show", str(path)], check=True,
                             capture_output=True, text=True).stdout.strip()
        self.loops.append(dev)
        return dev

    def detach(self, dev: str) -> None:
        subprocess.run(["losetup", "-d", dev], check=True)
        self.loops.remove(dev)

    def stop(self) -> None:
        """Unmount through the CLI; if that fails, kill by PID and lazy-unmount."""
        for dev in list(self.loops):
            with contextlib.suppress(Exception):
                self.detach(dev)
        if self.pid is None:
            return
        r = self.cli("umount", "--config", str(self.config), timeout=90)
        if r.returncode and _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        if _mounted(self.point):
            subprocess.run(["fusermount3", "-uz", str(self.point)], check=False)
        self.pid = None

    def __enter__(self) -> Mount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    """Running, not a zombie: an orphaned daemon stays a zombie where PID 1 does not reap."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _mounted(point: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(point) for line in f)


def mounted(point: Path) -> bool:
    return _mounted(point)


def alive(pid: int) -> bool:
    return _alive(pid)
