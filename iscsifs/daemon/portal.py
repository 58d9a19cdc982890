# One added portal of a target: its session's lifecycle (login, logout, the scan of LUNs after
# each login and on a change of inventory), its LUN files in the tree, and its control
# commands. The Session object is kept across logout and login, so that a LUN file held open
# (by a loop device, say) works again after a re-login.
# Must not format texts (daemon/views.py does) nor parse command lines (daemon/commands.py);
# every change of the saved setup goes through the daemon (Daemon.save).

from __future__ import annotations

import dataclasses
import errno
import logging
from typing import TYPE_CHECKING, Any

import trio

from .. import config, scsi
from ..config import PortalSetup, TargetSetup
from ..engine import lun as lunmod
from ..engine.lun import BlockDevice, LunInfo
from ..engine.session import Listener, Session, SessionError, SessionSettings, State, Timeouts
from ..engine.transport import TransportError
from ..fs import CommandError, FsError
from ..proto.chap import MutualAuthenticationFailed
from ..proto.errors import IscsiError
from ..proto.login import AuthenticationFailed, AuthorizationFailed
from ..syntax import format_address
from . import commands as C
from . import views

if TYPE_CHECKING:
    from .core import Daemon

log = logging.getLogger("iscsifs")

#: The tree's directory of a portal, and its LUN files.
PORTAL_DIR = "targets/{iqn}/{portal}"
LUN_FILE = PORTAL_DIR + "/lun{n}"

#: A network or target fault, as opposed to a bug of ours: one log line, never a traceback.
FAULTS = (SessionError, IscsiError, scsi.ScsiError, TransportError, trio.TooSlowError)
AUTH_FAILURES = (AuthenticationFailed, AuthorizationFailed, MutualAuthenticationFailed)


def session_timeouts(t: config.Timeouts) -> Timeouts:
    """The engine's timers from the saved ones: the only place the two meet (same names)."""
    return Timeouts(**dataclasses.asdict(t))  # TEMP-RENAME

def _old_names(t: config.Timeouts) -> Timeouts:  # TEMP-RENAME until the engine's rename lands
    return Timeouts(connect=t.connect_timeout, login=t.login_timeout, noop_interval=t.noop_interval,
                    noop_timeout=t.noop_timeout, command=t.command_timeout, hold=t.hold_time)



def session_settings(initiator: str, target: TargetSetup, portal: PortalSetup) -> SessionSettings:
    chap, mutual = target.security.chap_credentials()
    return SessionSettings(
        initiator_name=initiator, target_name=target.name, host=portal.address,
        port=portal.port, chap=chap, mutual=mutual, offers=target.params.to_offers(),
        timeouts=_old_names(target.timeouts),
    )


class PortalState(Listener):
    """An added portal of a target: its session and LUNs, as shown under targets/."""

    def __init__(self, daemon: Daemon, target: TargetSetup, portal: PortalSetup) -> None:
        self.daemon = daemon
        self.target = target
        self.portal = portal
        self.iqn = target.name
        self.dirname = format_address(portal.address, portal.port)
        self.session: Session | None = None
        self.luns: list[LunInfo] = []
        self.devices: dict[int, BlockDevice] = {}
        self.last_login_error: str | None = None
        self.shown = False  # its directory is in the tree
        self._running = False
        self._scanned = trio.Event()  # set when the scan after the latest login has finished

    @property
    def hold_time(self) -> float:
        return self.target.timeouts.hold_time

    def update(self, target: TargetSetup, portal: PortalSetup) -> None:
        """The saved setup changed: keep the new one; a new hold time applies at once."""
        self.target, self.portal = target, portal
        if self.session is not None and self.session.hold_time != self.hold_time:
            self.session.set_hold_time(self.hold_time)

    # -- in the tree -----------------------------------------------------------------------

    def show(self) -> None:
        """Put the portal's directory, and its LUN files, in the tree."""
        tree = self.daemon.tree
        tree.add(PORTAL_DIR, self, iqn=self.iqn, portal=self.dirname)
        self.shown = True
        for number, dev in self.devices.items():
            tree.add(LUN_FILE, dev, iqn=self.iqn, portal=self.dirname, n=number)

    def hide(self) -> None:
        self.daemon.tree.remove(PORTAL_DIR, iqn=self.iqn, portal=self.dirname)
        self.shown = False

    def _set_devices(self, devices: dict[int, BlockDevice]) -> None:
        old, self.devices = self.devices, devices
        if not self.shown:
            return
        tree = self.daemon.tree
        for number in old.keys() - devices.keys():
            tree.remove(LUN_FILE, iqn=self.iqn, portal=self.dirname, n=number)
        for number, dev in devices.items():
            if old.get(number) is not dev:
                tree.add(LUN_FILE, dev, iqn=self.iqn, portal=self.dirname, n=number)

    # -- session ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    def _session(self) -> Session:
        """The session to log in with: the same object (and ISID) unless the settings
        changed since it was made."""
        settings = session_settings(self.daemon.config.initiator.name, self.target, self.portal)
        old = self.session
        if old is None or old.settings != dataclasses.replace(settings, isid=old.settings.isid):
            isid = old.settings.isid if old is not None else b""
            self.session = Session(dataclasses.replace(settings, isid=isid), listener=self,
                                   connector=self.daemon.connector)
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
            raise CommandError(str(error),
                               errno.EACCES if isinstance(error, AUTH_FAILURES) else errno.EIO)
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
        except FAULTS as e:
            log.warning("%s %s: LUN scan failed: %s", self.iqn, self.dirname, e)
            return
        except Exception:
            log.exception("%s %s: LUN scan failed", self.iqn, self.dirname)
            return
        self.luns = luns
        devices = {}
        for info in luns:
            if info.is_block_device:
                old = self.devices.get(info.number)
                devices[info.number] = (old if old is not None and old.info == info
                                        else BlockDevice(session, info))
        self._set_devices(devices)

    # -- the manual's word -----------------------------------------------------------------

    def state_word(self) -> str:
        """connected, not connected or unavailable."""
        s = self.session
        if s is None or not self._running:
            return "not connected"
        if s.state in (State.CONNECTED, State.LOGGING_OUT):
            return "connected"
        if s.state is State.CONNECTING and s.login_info is None and s.last_error is None:
            return "not connected"
        return "unavailable"

    # -- commands --------------------------------------------------------------------------

    async def control(self, line: str) -> str:
        request = C.parse_portal_command(line)
        match request:
            case C.Login():
                await self.login()
                return "connected"
            case C.Logout():
                await self.logout()
                return "not connected"
            case C.Rescan():
                await self.rescan()
                return views.luns(self)
            case C.SetPortal(key=key, value=value, word=word):
                await self.daemon.save(lambda st: st.set_portal(
                    self.iqn, self.portal.address, self.portal.port, **{key: value}))
                return f"{word} {'yes' if value else 'no'}"
            case C.Unmap():
                return await self._unmap(request)
        raise AssertionError(request)

    async def set_hold_time(self, line: str) -> str:
        request = C.parse_hold_time(line)
        # Saved first: the schema checks the value before anything is applied; update() then
        # gives it to the live session.
        await self.daemon.save(lambda st: st.set_timeout(self.iqn, "hold_time", request.seconds))
        log.info("%s %s: hold time set to %g s", self.iqn, self.dirname, self.hold_time)
        return f"hold time {self.hold_time:g} s"

    async def _unmap(self, request: C.Unmap) -> str:
        dev = self.devices.get(request.lun)
        if dev is None:
            raise CommandError(f"no LUN file 'lun{request.lun}'", errno.ENOENT)
        try:
            await dev.unmap(request.offset, request.length)
        except lunmod.LunNotSupported as e:
            raise CommandError(str(e), errno.EOPNOTSUPP) from None
        except (*FAULTS, FsError) as e:
            raise CommandError(f"unmap failed: {e}", errno.EIO) from None
        return "unmapped"
