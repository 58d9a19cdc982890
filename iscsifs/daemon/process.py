# The process around the daemon: finding the config, the registry of running mounts, logging,
# daemonising, and the mount and umount commands. This is all of the daemon package that the
# CLI loads: it must not import trio, the engine or the FUSE code at module level (serve.py
# runs the mount, imported when a mount starts).

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..config import ConfigError, ConfigStore
from .logs import RingHandler, setup_logging

log = logging.getLogger("iscsifs")

RUNTIME_DIR = Path(os.environ.get("ISCSIFS_RUNTIME_DIR", "/run/iscsifs"))
DEFAULT_CONFIG = "/etc/iscsifs/iscsifs.toml"
DEFAULT_LOG = "/var/log/iscsifs.log"


def config_path(explicit: str | None = None) -> Path:
    """--config, else $ISCSIFS_CONFIG, else /etc/iscsifs/iscsifs.toml; made absolute so that
    every command names the same mount the same way."""
    return Path(explicit or os.environ.get("ISCSIFS_CONFIG") or DEFAULT_CONFIG).absolute()


def registry_file(config: Path) -> Path:
    """Where a running mount records itself, keyed by its config file."""
    key = hashlib.sha256(str(config).encode()).hexdigest()[:16]
    return RUNTIME_DIR / f"{key}.json"


def mount(config: str | None, mountpoint: str | None, *, foreground: bool,
          log_file: str | None = None, log_level: str = "INFO") -> int:
    """`iscsifs mount`: returns an exit status; errors are one line on stderr."""
    cfg_path = config_path(config)
    store = ConfigStore(cfg_path)
    try:
        cfg = store.load()
    except ConfigError as e:
        print(f"ERROR. {e}", file=sys.stderr)
        return 1
    point = os.path.abspath(mountpoint or cfg.mount.point)
    running = find_mount(cfg_path)
    if running is not None:
        print(f"ERROR. already mounted at {running['mountpoint']} (pid {running['pid']})",
              file=sys.stderr)
        return 1
    if is_mounted(point):
        print(f"ERROR. {point} is already a mount point", file=sys.stderr)
        return 1
    try:
        os.makedirs(point, exist_ok=True)
    except OSError as e:
        print(f"ERROR. cannot create mount point {point}: {e.strerror}", file=sys.stderr)
        return 1
    log_file = log_file or os.environ.get("ISCSIFS_LOG") or DEFAULT_LOG
    if foreground:
        ring = setup_logging(log_file, foreground=True, level=log_level)
        return _run(store, point, ring, cfg_path)
    return _daemonize(store, point, cfg_path, log_file, log_level)


def _run(store: ConfigStore, point: str, ring: RingHandler, cfg_path: Path,
         ready: Any = None) -> int:
    import trio

    from ..fuse.channel import MountError
    from .serve import serve

    try:
        trio.run(lambda: serve(store, point, ring=ring, config_file=cfg_path, ready=ready))
    except MountError as e:
        log.error("%s", e.strerror)
        print(f"ERROR. {e.strerror}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug of ours: the whole story in the log, one line here
        log.exception("the daemon failed")
        leaf = e
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]  # type: ignore[assignment]
        print(f"ERROR. the daemon failed ({type(leaf).__name__}: {leaf}); see the log",
              file=sys.stderr)
        return 1
    return 0


def _daemonize(store: ConfigStore, point: str, cfg_path: Path, log_file: str,
               log_level: str) -> int:
    """Fork into the background; the parent returns once the mount is ready (or failed)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            msg = r.read().decode(errors="replace")
        os.waitpid(pid, 0)
        if msg.startswith("ok"):
            return 0
        print(msg.strip() or "ERROR. the daemon exited before the mount was ready",
              file=sys.stderr)
        return 1
    # First child: new session, fork again so the daemon is not a session leader.
    os.close(rfd)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    ring = setup_logging(log_file, foreground=False, level=log_level)
    sent = False

    def ready() -> None:
        nonlocal sent
        os.write(wfd, b"ok\n")
        os.close(wfd)
        sent = True

    status = 1
    try:
        status = _run(store, point, ring, cfg_path, ready=ready)
    except BaseException as e:  # never let the parent wait forever
        log.exception("daemon failed")
        if not sent:
            os.write(wfd, f"ERROR. {e}\n".encode())
    finally:
        if not sent:
            with contextlib.suppress(OSError):
                os.write(wfd, b"ERROR. mount failed; see the log\n")
                os.close(wfd)
        os._exit(status)


def is_mounted(point: str) -> bool:
    point = os.path.abspath(point)
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == point for line in f if len(line.split()) > 1)
    except OSError:
        return False


def find_mount(cfg_path: Path) -> dict[str, Any] | None:
    """The running mount of this config, if its daemon is alive and its mount is up."""
    reg = registry_file(cfg_path)
    try:
        info = json.loads(reg.read_text())
        pid = int(info["pid"])
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, owned by root: the caller will meet EACCES on the tree and say so
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not is_mounted(info["mountpoint"]):
        return None
    return info


def umount(config: str | None, mountpoint: str | None, *, timeout: float = 60) -> int:
    """`iscsifs umount`: ask the daemon to log out and unmount, wait until it is gone."""
    cfg_path = config_path(config)
    info = find_mount(cfg_path)
    if mountpoint is not None:
        point = os.path.abspath(mountpoint)
        if info is None or info["mountpoint"] != point:
            info = _find_by_mountpoint(point) or info
    if info is None:
        print("ERROR. The daemon process does not appear to be running", file=sys.stderr)
        return 1
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            return 0
        time.sleep(0.02)
    print(f"ERROR. the daemon (pid {pid}) did not stop within {timeout:g} s", file=sys.stderr)
    return 1


def _running(pid: int) -> bool:
    """Alive and not a zombie (a foreground daemon's parent may not have reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _find_by_mountpoint(point: str) -> dict[str, Any] | None:
    try:
        entries = list(RUNTIME_DIR.glob("*.json"))
    except OSError:
        return None
    for reg in entries:
        try:
            info = json.loads(reg.read_text())
        except (OSError, ValueError):
            continue
        if info.get("mountpoint") == point:
            try:
                os.kill(int(info["pid"]), 0)
            except (OSError, ValueError, KeyError):
                continue
            return info
    return None

