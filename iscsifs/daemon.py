# The running initiator: what the tree shows and what its control files do, and the process
# around it (logging, the FUSE mount, signals, auto-login, clean shutdown).
#
# Owns: one Session per added target portal (kept across logout/login so that a LUN file held
# open, e.g. by a loop device, works again after a re-login), the LUNs found on each, the
# discovery records, and the saved setup (through config.ConfigStore). Must not format CLI
# output (cli.py does) nor answer FUSE requests: fs.py owns the file mechanics.

from __future__ import annotations

import collections
import contextlib
import errno
import gc
import hashlib
import ipaddress
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from . import __version__
from .config import ConfigError, ConfigStore, LoginParams, PortalSetup, Security, TargetSetup
from .engine import lun as lunmod
from .engine.discovery import send_targets
from .engine.isns import isns_discover
from .engine.lun import BlockDevice, LunInfo
from .engine.session import (
    Listener,
    Session,
    SessionError,
    SessionSettings,
    State,
    Timeouts,
)
from .engine.transport import TransportError
from .fs import CommandError, Tree
from .fuse import channel as fusechan
from .proto.chap import ChapCredentials
from .proto.discovery import DiscoveredTarget, Portal
from .proto.errors import IscsiError
from .syntax import (
    SyntaxProblem,
    apply_options,
    format_address,
    format_security,
    parse_address,
    parse_options,
    parse_security,
    parse_yes_no,
)

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


# ---------------------------------------------------------------------------------------------
# One added target portal.
# ---------------------------------------------------------------------------------------------


def _engine_timeouts(t: Any) -> Timeouts:
    return Timeouts(
        connect=t.connect_timeout, login=t.login_timeout, noop_interval=t.noop_interval,
        noop_timeout=t.noop_timeout, command=t.command_timeout, hold=t.hold_time,
    )


def _since(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class PortalState(Listener):
    """An added portal of a target: its session and LUNs, as shown under targets/."""

    def __init__(self, daemon: Daemon, target: TargetSetup, portal: PortalSetup) -> None:
        self.daemon = daemon
        self.target = target
        self.portal = portal
        self.iqn = target.name
        self.dirname = format_address(portal.address, portal.port)
        self.session: Session | None = None
        self._settings: SessionSettings | None = None
        self.luns: list[LunInfo] = []
        self._devices: dict[int, BlockDevice] = {}
        self._running = False
        self.since_wall = time.time()
        self.last_login_error: str | None = None
        self._hold_time = target.timeouts.hold_time
        self._scanned = trio.Event()  # set when the scan after the latest login has finished

    # -- session ---------------------------------------------------------------------------

    def settings(self) -> SessionSettings:
        sec = self.target.security
        chap = mutual = None
        if sec.is_chap and sec.target_user and sec.target_secret is not None:
            chap = ChapCredentials(user=sec.target_user, secret=sec.target_secret)
            if sec.mutual and sec.initiator_user and sec.initiator_secret is not None:
                mutual = ChapCredentials(user=sec.initiator_user, secret=sec.initiator_secret)
        return SessionSettings(
            initiator_name=self.daemon.config.initiator.name,
            target_name=self.iqn,
            host=self.portal.address,
            port=self.portal.port,
            chap=chap,
            mutual=mutual,
            offers=self.target.params.to_offers(),
            timeouts=_engine_timeouts(self.target.timeouts),
        )

    def _session(self) -> Session:
        settings = self.settings()
        old = self._settings
        if self.session is None or old is None or old != replace(settings, isid=old.isid):
            isid = self.session.settings.isid if self.session is not None else b""
            self.session = Session(replace(settings, isid=isid), listener=self)
            self._settings = self.session.settings
            self.session.set_hold_time(self._hold_time)
        return self.session

    async def login(self, *, persistent: bool = False) -> None:
        if not self.portal.visible:
            raise CommandError(f"{self.iqn} at {self.dirname} is not visible; set visible yes "
                               "first")
        if self._running:
            if self.session is not None and self.session.state is State.CONNECTED:
                return
            if persistent:
                return
            raise CommandError(f"{self.iqn} at {self.dirname}: a login is already in progress",
                               errno.EBUSY)
        session = self._session()
        self._running = True
        self._scanned = trio.Event()
        try:
            error = await self.daemon.nursery.start(self._run, session, persistent)
        except BaseException:
            self._running = False
            raise
        if error is not None:
            self.last_login_error = str(error)
            raise CommandError(str(error), errno.EACCES if _is_auth(error) else errno.EIO)
        self.last_login_error = None
        if not persistent:
            # `echo login > control; ls` must see the LUN files: return after the first scan.
            with trio.move_on_after(self.target.timeouts.command_timeout * 2 + 5):
                await self._scanned.wait()

    async def _run(self, session: Session, persistent: bool,
                   task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await session.run(persistent=persistent, task_status=task_status)
        finally:
            self._running = False
            self._set_devices({})

    async def logout(self) -> None:
        if self.session is not None:
            await self.session.logout()
        self._set_devices({})

    # -- Listener --------------------------------------------------------------------------

    def connected(self, session: Session) -> None:
        self.daemon.nursery.start_soon(self.rescan)

    def luns_changed(self, session: Session) -> None:
        log.info("%s %s: LUN inventory changed; rescanning", self.iqn, self.dirname)
        self.daemon.nursery.start_soon(self.rescan)

    def portal_moved(self, session: Session, host: str, port: int) -> None:
        log.info("%s: permanently moved from %s to %s", self.iqn, self.dirname,
                 format_address(host, port))
        self.daemon.nursery.start_soon(self.daemon.move_portal, self, host, port)

    async def rescan(self) -> None:
        try:
            await self._rescan()
        finally:
            self._scanned.set()

    async def _rescan(self) -> None:
        session = self.session
        if session is None or not session.connected:
            return
        try:
            with trio.fail_after(self.target.timeouts.command_timeout * 2):
                luns = await lunmod.discover(session)
        except (SessionError, IscsiError, trio.TooSlowError, Exception) as e:
            if not isinstance(e, SessionError | IscsiError | trio.TooSlowError):
                log.exception("%s %s: LUN scan failed", self.iqn, self.dirname)
            else:
                log.warning("%s %s: LUN scan failed: %s", self.iqn, self.dirname, e)
            return
        self.luns = luns
        devices = dict(self._devices)
        seen = set()
        for info in luns:
            if not info.is_block_device:
                continue
            seen.add(info.number)
            old = devices.get(info.number)
            if old is None or old.info != info:
                devices[info.number] = BlockDevice(session, info)
        for number in list(devices):
            if number not in seen:
                del devices[number]
        self._set_devices(devices)

    def _set_devices(self, devices: dict[int, BlockDevice]) -> None:
        changed = set(self._devices) ^ set(devices) | {
            n for n in devices if n in self._devices and devices[n] is not self._devices[n]}
        self._devices = devices
        for number in changed:
            self.daemon.invalidate(("targets", self.iqn, self.dirname, f"lun{number}"))

    def devices(self) -> dict[int, BlockDevice]:
        return self._devices

    # -- texts -----------------------------------------------------------------------------

    def state_word(self) -> str:
        """The manual's three states."""
        s = self.session
        if s is None or not self._running:
            return "not connected"
        if s.state in (State.CONNECTED, State.LOGGING_OUT):
            return "connected"
        if s.state is State.CONNECTING and s.login_info is None and s.last_error is None:
            return "not connected"
        return "unavailable"

    def status_text(self) -> str:
        s = self.session
        now = trio.current_time()
        lines = [self.state_word()]
        tpgt = self.portal.tpgt
        lines += [f"target: {self.iqn}", f"portal: {self.dirname}",
                  f"portal group tag: {tpgt if tpgt is not None else '-'}"]
        if s is None:
            lines += ["state: idle", "since: -", "reconnects: 0", "commands in flight: 0",
                      "commands waiting: 0", "outage: -",
                      f"hold time: {self._hold_time:g} s",
                      f"last error: {self.last_login_error or '-'}"]
            return "\n".join(lines) + "\n"
        since_wall = time.time() - (now - s.since)
        outage = "-" if s.outage_since is None else f"{now - s.outage_since:.1f} s"
        info = s.login_info
        lines += [
            f"state: {s.state.value}",
            f"since: {_since(since_wall)} ({now - s.since:.0f} s ago)",
            f"reconnects: {s.reconnects}",
            f"commands in flight: {s.in_flight}",
            f"commands waiting: {s.waiting}",
            f"outage: {outage}",
            f"hold time: {s.hold_time:g} s",
            f"last error: {s.last_error or self.last_login_error or '-'}",
            f"tsih: {info.tsih if info is not None and s.connected else '-'}",
            f"commands done: {s.commands_done}",
            f"bytes read: {s.bytes_read}",
            f"bytes written: {s.bytes_written}",
            f"luns: {' '.join(f'lun{n}' for n in sorted(self._devices)) or '-'}",
        ]
        return "\n".join(lines) + "\n"

    def params_text(self) -> str:
        s = self.session
        if s is None or not s.connected or s.params is None:
            return ""
        return "".join(f"{k}={v}\n" for k, v in s.params.as_pairs())

    def luns_text(self) -> str:
        out = []
        for info in self.luns:
            size = info.size if info.is_block_device else 0
            out.append(f"{info.number}\t{size}\t{info.block_size}\t{info.vendor}\t"
                       f"{info.product}\t{info.serial or '-'}\t{info.type_name}\n")
        return "".join(out)

    def setup_text(self) -> str:
        t, p = self.target, self.portal
        lines = [
            f"target: {t.name}",
            f"alias: {t.alias or '-'}",
            f"portal: {self.dirname}",
            f"portal group tag: {p.tpgt if p.tpgt is not None else '-'}",
            f"visible: {'Yes' if p.visible else 'No'}",
            f"auto login: {'Yes' if p.auto_login else 'No'}",
            f"security: {format_security(t.security)}",
            f"discovery security: {_discovery_security_text(t)}",
        ]
        for key, value in t.params.to_offers().items():
            lines.append(f"{key}: {value}")
        for name in ("hold_time", "noop_interval", "noop_timeout", "command_timeout",
                     "connect_timeout", "login_timeout"):
            lines.append(f"{name}: {getattr(t.timeouts, name):g}")
        return "\n".join(lines) + "\n"

    def hold_time_text(self) -> str:
        return f"{self._hold_time:g}\n"

    async def set_hold_time(self, text: str) -> str:
        try:
            value = float(text)
            if not 0 <= value <= 86400 * 365:
                raise ValueError
        except ValueError:
            raise CommandError(f"hold time must be a number of seconds from 0 up, not "
                               f"{text!r}") from None
        self._hold_time = value
        if self.session is not None:
            self.session.set_hold_time(value)
        await self.daemon.save(lambda st: st.set_timeout(self.iqn, "hold_time", value))
        log.info("%s %s: hold time set to %g s", self.iqn, self.dirname, value)
        return f"hold time {value:g} s"

    # -- control ---------------------------------------------------------------------------

    async def control(self, line: str) -> str:
        words = line.split()
        cmd, args = words[0], words[1:]
        if cmd == "login" and not args:
            await self.login()
            return "connected"
        if cmd == "logout" and not args:
            await self.logout()
            return "not connected"
        if cmd == "rescan" and not args:
            await self.rescan()
            return self.luns_text()
        if cmd in ("autologin", "visible") and len(args) == 1:
            value = args[0].lower()
            if value not in ("yes", "no"):
                raise CommandError(f"{cmd} takes yes or no, not {args[0]!r}")
            key = "auto_login" if cmd == "autologin" else "visible"
            await self.daemon.save(lambda st: st.set_portal(
                self.iqn, self.portal.address, self.portal.port, **{key: value == "yes"}))
            return f"{cmd} {value}"
        if cmd == "unmap" and len(args) == 3:
            return await self._unmap(*args)
        raise CommandError(
            f"unknown command {line!r}; commands: login, logout, rescan, autologin yes|no, "
            "visible yes|no, unmap lunN OFFSET LENGTH")

    async def _unmap(self, name: str, offset: str, length: str) -> str:
        number = name[3:]
        if not (name.startswith("lun") and all(v.isascii() and v.isdigit()
                                               for v in (number, offset, length))):
            raise CommandError("unmap takes lunN OFFSET LENGTH in bytes")
        dev = self._devices.get(int(number))
        if dev is None:
            raise CommandError(f"no LUN file {name!r}", errno.ENOENT)
        try:
            await dev.unmap(int(offset), int(length))
        except lunmod.LunNotSupported as e:
            raise CommandError(str(e), errno.EOPNOTSUPP) from None
        except (SessionError, IscsiError, Exception) as e:
            raise CommandError(f"unmap failed: {e}", errno.EIO) from None
        return "unmapped"


def _is_auth(error: BaseException) -> bool:
    name = type(error).__name__
    return "Authentication" in name or "Authorization" in name


def _discovery_security_text(t: TargetSetup) -> str:
    if t.discovery_security is None:
        return "same as security"
    return format_security(t.discovery_security)


# ---------------------------------------------------------------------------------------------
# The daemon.
# ---------------------------------------------------------------------------------------------


@dataclass
class DiscoveryRecord:
    target: DiscoveredTarget
    how: str  # "SendTargets 127.0.0.1:3260" or "iSNS 127.0.0.1:3205"
    when: float = field(default_factory=time.time)


class RingHandler(logging.Handler):
    """Keeps the last lines of the log for <mnt>/log."""

    def __init__(self, size: int = 2000) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            pass


class Daemon:
    """The Backend of the tree."""

    def __init__(self, store: ConfigStore, *, mountpoint: str, ring: RingHandler | None = None
                 ) -> None:
        self.store = store
        self.config = store.config
        self.mountpoint = mountpoint
        self.ring = ring or RingHandler()
        self.nursery: trio.Nursery = None  # type: ignore[assignment]  # set by run()
        self.tree: Tree | None = None
        self.states: dict[tuple[str, str, int], PortalState] = {}
        self.discovered: dict[str, DiscoveryRecord] = {}
        self._save_lock = trio.Lock()
        self._sync_states()

    # -- state -----------------------------------------------------------------------------

    def _sync_states(self) -> None:
        """Portal states follow the saved setup; a state survives as long as its portal."""
        wanted: dict[tuple[str, str, int], tuple[TargetSetup, PortalSetup]] = {}
        for t in self.config.targets:
            for p in t.portals:
                wanted[(t.name, p.address, p.port)] = (t, p)
        for key in list(self.states):
            if key not in wanted:
                state = self.states.pop(key)
                if state.session is not None and state._running:
                    self.nursery.start_soon(state.logout)
        for key, (t, p) in wanted.items():
            existing = self.states.get(key)
            if existing is None:
                self.states[key] = PortalState(self, t, p)
            else:
                existing.target, existing.portal = t, p

    async def save(self, change: Any) -> None:
        """Apply a change to the saved setup and write it (atomically, mode 0600)."""
        async with self._save_lock:
            try:
                change(self.store)
                self.store.save()
            except ConfigError as e:
                raise CommandError(str(e)) from None
            self.config = self.store.config
            self._sync_states()

    def invalidate(self, path: tuple[str, ...]) -> None:
        if self.tree is not None:
            self.tree.invalidate(path)

    async def move_portal(self, state: PortalState, host: str, port: int) -> None:
        old = state.portal
        try:
            await self.save(lambda st: st.move_portal(
                state.iqn, (old.address, old.port), (host, port)))
        except CommandError as e:
            log.warning("%s: could not save the new portal: %s", state.iqn, e)

    # -- Backend ---------------------------------------------------------------------------

    def portals(self) -> Sequence[PortalState]:
        return [s for s in self.states.values() if s.portal.visible]

    def text(self, name: str) -> str:
        cfg = self.config
        if name == "version":
            return f"iscsifs {__version__}\n"
        if name == "log":
            return "\n".join(self.ring.lines) + ("\n" if self.ring.lines else "")
        if name == "initiator/name":
            return cfg.initiator.name + "\n"
        if name == "initiator/boot_delay":
            return f"{cfg.initiator.boot_delay}\n"
        if name == "initiator/isns":
            isns = cfg.initiator.isns
            return (isns + "\n") if isns else ""
        if name == "discovery/targets":
            out = []
            for rec in self.discovered.values():
                for p in rec.target.portals or (None,):
                    where = format_address(p.address, p.port) if p else "-"
                    tag = p.tpgt if p is not None and p.tpgt is not None else "-"
                    out.append(f"{rec.target.name}\t{tag}\t{where}\t{rec.how}\n")
            return "".join(out)
        if name == "targets/setup":
            out = []
            for s in self.states.values():
                out.append(f"{s.iqn}\t{s.portal.tpgt if s.portal.tpgt is not None else '-'}\t"
                           f"{s.dirname}\t{'Yes' if s.portal.auto_login else 'No'}\t"
                           f"{'Yes' if s.portal.visible else 'No'}\n")
            return "".join(out)
        if name == "targets/status":
            out = []
            for s in self.portals():
                out.append(f"{s.iqn}\t{s.portal.tpgt if s.portal.tpgt is not None else '-'}\t"
                           f"{s.dirname}\t{s.state_word()}\n")
            return "".join(out)
        if name.endswith("control"):
            return ""
        raise CommandError(f"no such file {name}", errno.ENOENT)

    async def command(self, name: str, line: str) -> str:
        try:
            if name == "initiator/name":
                return await self._set_initiator_name(line)
            if name == "initiator/boot_delay":
                return await self._set_boot_delay(line)
            if name == "initiator/isns":
                return await self._set_isns(line)
            if name == "discovery/control":
                return await self._discovery_command(line)
            if name == "targets/control":
                return await self._targets_command(line)
        except SyntaxProblem as e:
            raise CommandError(str(e)) from None
        raise CommandError(f"{name} takes no commands", errno.EBADF)

    async def _set_initiator_name(self, line: str) -> str:
        await self.save(lambda st: st.set_initiator_suffix(line.strip()))
        return self.config.initiator.name

    async def _set_boot_delay(self, line: str) -> str:
        if not line.strip().isdigit():
            raise CommandError(f"boot delay must be a whole number of seconds, not {line!r}")
        await self.save(lambda st: st.set_boot_delay(int(line)))
        return f"{self.config.initiator.boot_delay}"

    async def _set_isns(self, line: str) -> str:
        line = line.strip()
        if not line or line.lower() == "none":
            await self.save(lambda st: st.set_isns(None))
            return "none"
        host, port = parse_address(line, isns=True)
        await self.save(lambda st: st.set_isns(host, port))
        return format_address(host, port)

    # -- discovery -------------------------------------------------------------------------

    async def _discovery_command(self, line: str) -> str:
        words = _split_line(line)
        if not words:
            raise CommandError("empty command")
        cmd = words[0].lower()
        if cmd == "sendtargets":
            if len(words) not in (2, 4) or (len(words) == 4 and words[2] != "-security"):
                raise CommandError("usage: sendtargets ADDRESS[:PORT] [-security CHAP,...|NONE]")
            host, port = parse_address(words[1])
            # NONE is accepted so that a -discoverySecurity NONE passes straight through.
            security = (parse_security(words[3], allow_none=True) if len(words) == 4
                        else None)
            found = await self.discover_sendtargets(host, port, security)
        elif cmd == "isns":
            if len(words) > 2:
                raise CommandError("usage: isns [ADDRESS[:PORT]]")
            if len(words) == 2:
                host, port = parse_address(words[1], isns=True)
            elif self.config.initiator.isns:
                host, port = parse_address(self.config.initiator.isns, isns=True)
            else:
                raise CommandError("no iSNS server given and none configured")
            found = await self.discover_isns(host, port)
        else:
            raise CommandError(f"unknown command {words[0]!r}; commands: sendtargets, isns")
        return "".join(_discovered_lines(t) for t in found)

    async def discover_sendtargets(self, host: str, port: int,
                                   security: Security | None) -> tuple[DiscoveredTarget, ...]:
        chap = mutual = None
        if security is not None and security.is_chap and security.target_user:
            assert security.target_secret is not None
            chap = ChapCredentials(user=security.target_user, secret=security.target_secret)
            if security.mutual and security.initiator_user and security.initiator_secret:
                mutual = ChapCredentials(user=security.initiator_user, secret=security.initiator_secret)
        where = format_address(host, port)
        try:
            found = await send_targets(host, port, initiator_name=self.config.initiator.name,
                                       chap=chap, mutual=mutual,
                                       timeout=self.config.default_timeouts.login_timeout)
        except (TransportError, IscsiError) as e:
            log.warning("discovery at %s failed: %s", where, e)
            code = errno.EACCES if _is_auth(e) else errno.EHOSTUNREACH
            raise CommandError(f"discovery at {where} failed: {e}", code) from None
        log.info("SendTargets at %s: %d target(s)", where, len(found))
        for t in found:
            self.discovered[t.name] = DiscoveryRecord(t, f"SendTargets {where}")
        return found

    async def discover_isns(self, host: str, port: int) -> tuple[DiscoveredTarget, ...]:
        where = format_address(host, port)
        try:
            found = await isns_discover(host, port, initiator_name=self.config.initiator.name,
                                        timeout=self.config.default_timeouts.login_timeout)
        except (OSError, IscsiError) as e:
            log.warning("iSNS discovery at %s failed: %s", where, e)
            raise CommandError(f"iSNS discovery at {where} failed: {e}",
                               errno.EHOSTUNREACH) from None
        log.info("iSNS at %s: %d target(s)", where, len(found))
        for t in found:
            self.discovered[t.name] = DiscoveryRecord(t, f"iSNS {where}")
        return found

    # -- adding and removing targets -------------------------------------------------------

    async def _targets_command(self, line: str) -> str:
        words = _split_line(line)
        if not words or words[0] not in ("add", "remove"):
            raise CommandError("commands: add ADDRESS[:PORT] NAME...|All [-autoLogin Yes|No] "
                               "[-security ...] [-discoverySecurity ...] [-session ...] "
                               "[-connection ...]; remove ADDRESS[:PORT] NAME...|All")
        cmd = words[0]
        opts: dict[str, str] = {}
        names: list[str] = []
        allowed = ({"-autoLogin", "-security", "-discoverySecurity", "-session", "-connection"}
                   if cmd == "add" else set())
        rest = words[1:]
        i = 0
        while i < len(rest):
            w = rest[i]
            if w.startswith("-") and w in allowed:
                if i + 1 >= len(rest):
                    raise CommandError(f"{w} needs a value")
                if w in opts:
                    raise CommandError(f"{w} given twice")
                opts[w] = rest[i + 1]
                i += 2
                continue
            if w.startswith("-"):
                raise CommandError(f"unknown option {w}")
            names.append(w)
            i += 1
        if len(names) < 2:
            raise CommandError(f"usage: {cmd} ADDRESS[:PORT] NAME...|All")
        host, port = parse_address(names[0])
        targets = names[1:]
        if "All" in targets and len(targets) > 1:
            raise CommandError('The "All" target names option cannot be used with other '
                               "target names.")
        if cmd == "add":
            return await self.add_targets(host, port, targets, opts)
        return await self.remove_targets(host, port, targets)

    async def add_targets(self, host: str, port: int, names: list[str],
                          opts: dict[str, str]) -> str:
        auto = parse_yes_no(opts["-autoLogin"], option="-autoLogin") if (
            "-autoLogin" in opts) else False
        security = parse_security(opts["-security"]) if "-security" in opts else Security()
        dsec = (parse_security(opts["-discoverySecurity"], option="-discoverySecurity",
                               allow_none=True) if "-discoverySecurity" in opts else None)
        params: LoginParams = self.config.default_params
        if "-session" in opts:
            params = apply_options(params, parse_options(opts["-session"], option="-session"))
        if "-connection" in opts:
            params = apply_options(params, parse_options(opts["-connection"],
                                                         option="-connection"))
        at = format_address(host, port)
        # A host name matches the portals of the addresses it resolves to: SendTargets and
        # iSNS answer with IP addresses.
        keys = await self._address_keys(host)

        def matches(p: Portal) -> bool:
            return p.port == port and _host_key(p.address) in keys

        def here(t: DiscoveredTarget) -> bool:
            return any(matches(p) for p in t.portals)

        wanted = None if names == ["All"] else set(names)
        known = [r.target for r in self.discovered.values() if here(r.target)]
        if wanted is None or not wanted <= {t.name for t in known}:
            # Not (all) discovered at this address yet: discover now, with the discovery
            # security (the manual's -discoverySecurity; by default the login security).
            use = dsec if dsec is not None else security
            await self.discover_sendtargets(host, port, use if use.is_chap else None)
            known = [r.target for r in self.discovered.values() if here(r.target)]
        chosen = known if wanted is None else [t for t in known if t.name in wanted]
        if wanted is None and not chosen:
            raise CommandError(f"No targets were discovered at {at}.", errno.ENOENT)
        missing = set() if wanted is None else wanted - {t.name for t in chosen}
        errors = [f'ERROR. Target "{n}" was not discovered at {at}.' for n in sorted(missing)]
        added = []
        for t in chosen:
            if self.config.target(t.name) is not None:
                errors.append(f'ERROR. Target "{t.name}" has already been added.')
                continue
            portals = [PortalSetup(address=p.address, port=p.port, tpgt=p.tpgt,
                                   visible=matches(p), auto_login=auto and matches(p))
                       for p in t.portals]
            await self.save(lambda st, t=t, portals=portals: st.add_target(
                t.name, portals, security=security, discovery_security=dsec, params=params))
            added.append(t.name)
            log.info("added %s at %s", t.name, at)
        if errors and not added:
            # fs.py puts "ERROR. " before the message: every further line keeps its own.
            raise CommandError("\n".join(errors).removeprefix("ERROR. "),
                               errno.EEXIST if not missing else errno.ENOENT)
        return "".join(f"added\t{n}\n" for n in added) + "".join(e + "\n" for e in errors)

    async def _address_keys(self, host: str) -> set[str]:
        """The name and, for a host name, the IP addresses it resolves to (normalised)."""
        keys = {_host_key(host)}
        try:
            ipaddress.ip_address(host)
            return keys
        except ValueError:
            pass
        with trio.move_on_after(self.config.default_timeouts.connect_timeout):
            try:
                infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
            except OSError as e:
                log.warning("cannot resolve %s: %s", host, e)
                return keys
            keys |= {_host_key(str(info[4][0]).split("%")[0]) for info in infos}
        return keys

    async def remove_targets(self, host: str, port: int, names: list[str]) -> str:
        at = format_address(host, port)
        keys = await self._address_keys(host)

        def portal_here(t: TargetSetup) -> PortalSetup | None:
            return next((p for p in t.portals
                         if p.port == port and _host_key(p.address) in keys), None)

        matching = [t for t in self.config.targets if portal_here(t) is not None]
        if names != ["All"]:
            unknown = set(names) - {t.name for t in matching}
            if unknown:
                raise CommandError("\nERROR. ".join(
                    f'Target "{n}" has not been added at {at}.' for n in sorted(unknown)),
                    errno.ENOENT)
            matching = [t for t in matching if t.name in names]
        if not matching:
            raise CommandError(f"No targets have been added at {at}.", errno.ENOENT)
        removed = []
        for t in matching:
            here = portal_here(t)
            assert here is not None
            where = (here.address, here.port)  # as saved: the -address may be a host name
            for key, state in list(self.states.items()):
                if key[0] == t.name and state.portal.matches(*where):
                    await state.logout()
            await self.save(lambda st, t=t, where=where: st.remove_target(t.name, where))
            removed.append(t.name)
            log.info("removed %s at %s", t.name, at)
        return "".join(f"removed\t{n}\n" for n in removed)

    # -- lifecycle -------------------------------------------------------------------------

    async def auto_login(self) -> None:
        delay = self.config.initiator.boot_delay
        if delay:
            log.info("boot delay: waiting %d s before auto-login", delay)
            await trio.sleep(delay)
        for state in list(self.states.values()):
            if state.portal.visible and state.portal.auto_login:
                log.info("auto-login to %s at %s", state.iqn, state.dirname)
                with contextlib.suppress(CommandError):
                    await state.login(persistent=True)

    async def shutdown(self) -> None:
        """Log every session out, concurrently, bounded by the longest logout timeout."""
        async with trio.open_nursery() as n:
            for state in self.states.values():
                if state.session is not None and state._running:
                    n.start_soon(state.logout)


def _split_line(line: str) -> list[str]:
    """A control line split as a shell would (quotes group words)."""
    try:
        return shlex.split(line)
    except ValueError as e:  # "No closing quotation" and the like
        raise CommandError(f"cannot split the line: {e}") from None


def _same_host(a: str, b: str) -> bool:
    return _host_key(a) == _host_key(b)


def _host_key(host: str) -> str:
    """IP addresses compare by value ("::1" == "0::1"), host names without case."""
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower().rstrip(".")


def _discovered_lines(t: DiscoveredTarget) -> str:
    portals: Sequence[Portal | None] = t.portals or (None,)
    out = []
    for p in portals:
        where = format_address(p.address, p.port) if p else "-"
        tag = p.tpgt if p is not None and p.tpgt is not None else "-"
        out.append(f"{t.name}\t{tag}\t{where}\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# The process.
# ---------------------------------------------------------------------------------------------


def setup_logging(log_file: str | None, *, foreground: bool, level: str = "INFO") -> RingHandler:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    ring = RingHandler()
    ring.setFormatter(fmt)
    root.addHandler(ring)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)
    return ring


def fuse_max_request(want: int = 0, cap: int = 8 << 20) -> int:
    """The FUSE request size to ask for: `want` bytes in whole pages (at least one), or with
    want 0 the largest the kernel will send, its max_pages_limit (256 pages, 1 MiB, unless
    raised with the fs.fuse.max_pages_limit sysctl); never more than that limit or `cap`."""
    try:
        limit = int(Path("/proc/sys/fs/fuse/max_pages_limit").read_text())
    except (OSError, ValueError):
        limit = 256
    limit = max(32, min(limit, cap // 4096))
    return (min(limit, max(1, want // 4096)) if want else limit) * 4096


async def serve(store: ConfigStore, mountpoint: str, *, ring: RingHandler,
                config_file: Path, ready: Any = None) -> None:
    """Mount, run until unmounted or signalled, log out, unmount."""
    daemon = Daemon(store, mountpoint=mountpoint, ring=ring)
    setup = store.config.mount
    tree = Tree(daemon, max_write=fuse_max_request(setup.max_write),
                max_read=fuse_max_request(setup.max_read))
    daemon.tree = tree
    fd = fusechan.mount(mountpoint, allow_other=setup.allow_other, max_read=tree.max_read)
    channel = fusechan.Channel(fd, max_write=tree.max_write,
                               max_background=tree.max_background)
    tree.channel = channel
    reg = registry_file(config_file)
    try:
        RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
        reg.write_text(json.dumps({"pid": os.getpid(), "mountpoint": mountpoint,
                                   "config": str(config_file)}))
        for warning in store.config.warnings:
            log.warning("config: %s", warning)
        log.info("iscsifs %s mounted at %s (initiator %s)", __version__, mountpoint,
                 store.config.initiator.name)
        # The I/O path allocates a couple dozen short-lived objects per request and makes no
        # reference cycles; at the default threshold (700) the cyclic collector scanned them
        # every ~30 requests and took 7-10 % of the daemon at 15,000 IOPS. Collect rarely, and
        # never rescan what exists at start-up.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 50)
        async with trio.open_nursery() as nursery:
            daemon.nursery = nursery
            tree.nursery = nursery
            fuse_done = trio.Event()

            async def fuse_main() -> None:
                try:
                    await channel.serve(tree.dispatch)
                finally:
                    fuse_done.set()

            nursery.start_soon(fuse_main)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                if ready is not None:
                    ready()
                nursery.start_soon(daemon.auto_login)

                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("signal %s: shutting down", signal.Signals(signum).name)
                        fuse_done.set()
                        return

                nursery.start_soon(on_signal)
                await fuse_done.wait()
            log.info("logging out")
            tree.closing = True
            with trio.move_on_after(30):
                await daemon.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(OSError):
            fusechan.unmount(mountpoint)
        channel.close()
        with contextlib.suppress(OSError):
            reg.unlink()
        log.info("unmounted %s", mountpoint)


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
    try:
        trio.run(lambda: serve(store, point, ring=ring, config_file=cfg_path, ready=ready))
    except fusechan.MountError as e:
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

