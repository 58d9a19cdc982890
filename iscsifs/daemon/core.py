# The running initiator's state: the saved setup (through config.ConfigStore), one PortalState
# per added portal, what discovery found, and the commands of the initiator/, discovery/ and
# targets/ files. Every change of the setup is validated by the config schema and saved before
# it is applied (Daemon.save), then the portals follow the saved setup (_sync_states).
# Must not answer FUSE requests (fs/ does), parse command lines (daemon/commands.py) or format
# texts (daemon/views.py); must not touch the process (daemon/process.py and serve.py do).

from __future__ import annotations

import errno
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from ..config import ConfigError, ConfigStore, PortalSetup, Security, TargetSetup
from ..engine.discovery import send_targets
from ..engine.isns import isns_discover
from ..engine.transport import TransportError
from ..fs import CommandError, Tree
from ..proto.discovery import DiscoveredTarget, Portal, host_key
from ..proto.errors import IscsiError
from ..syntax import apply_options, format_address, parse_address
from . import commands as C
from . import views
from .logs import RingHandler
from .portal import AUTH_FAILURES, PortalState
from .table import table

log = logging.getLogger("iscsifs")

PortalKey = tuple[str, str, int]  # (iqn, address, port) as saved


class Daemon:
    """The daemon's state and commands. Its tasks run in `nursery`; its files are served by
    `tree`, whose table it registers at construction."""

    def __init__(self, store: ConfigStore, *, tree: Tree, nursery: trio.Nursery,
                 mountpoint: str, ring: RingHandler | None = None,
                 connector: Callable[..., Any] | None = None) -> None:
        self.store = store
        self.config = store.config
        self.tree = tree
        self.nursery = nursery
        self.mountpoint = mountpoint
        self.ring = ring or RingHandler()
        self.connector = connector  # how sessions dial a portal; None: TCP (tests: a fake)
        self.states: dict[PortalKey, PortalState] = {}
        self.discovered: dict[str, views.DiscoveryRecord] = {}
        self._save_lock = trio.Lock()
        tree.register(table(self))
        self._sync_states()

    # -- the setup -------------------------------------------------------------------------

    def _sync_states(self) -> None:
        """Portal states follow the saved setup; a state survives as long as its portal, and
        its directory is in the tree while it is visible."""
        wanted: dict[PortalKey, tuple[TargetSetup, PortalSetup]] = {
            (t.name, p.address, p.port): (t, p) for t in self.config.targets for p in t.portals}
        for key in list(self.states):
            if key not in wanted:
                state = self.states.pop(key)
                if state.shown:
                    state.hide()
                if state.running:
                    self.nursery.start_soon(state.logout)
        for key, (t, p) in wanted.items():
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = PortalState(self, t, p)
            else:
                state.update(t, p)
            if p.visible and not state.shown:
                state.show()
            elif not p.visible and state.shown:
                state.hide()

    async def save(self, change: Callable[[ConfigStore], object]) -> None:
        """Apply a change to the saved setup and write it (atomically, mode 0600); the schema
        refuses a bad value before anything is applied."""
        async with self._save_lock:
            try:
                change(self.store)
                self.store.save()
            except ConfigError as e:
                raise CommandError(str(e)) from None
            self.config = self.store.config
            self._sync_states()

    async def move_portal(self, state: PortalState, host: str, port: int) -> None:
        old = state.portal
        try:
            await self.save(lambda st: st.move_portal(
                state.iqn, (old.address, old.port), (host, port)))
        except CommandError as e:
            log.warning("%s: could not save the new portal: %s", state.iqn, e)

    # -- what the files show ---------------------------------------------------------------

    def log_text(self) -> str:
        return "\n".join(self.ring.lines) + ("\n" if self.ring.lines else "")

    def status_text(self, state: PortalState) -> str:
        return views.status(state, now=trio.current_time(), wall=time.time())

    # -- initiator/ ------------------------------------------------------------------------

    async def set_initiator_name(self, request: C.SetInitiatorName) -> str:
        await self.save(lambda st: st.set_initiator_suffix(request.suffix))
        return self.config.initiator.name

    async def set_boot_delay(self, request: C.SetBootDelay) -> str:
        await self.save(lambda st: st.set_boot_delay(request.seconds))
        return f"{self.config.initiator.boot_delay}"

    async def set_isns(self, request: C.SetIsns) -> str:
        await self.save(lambda st: st.set_isns(request.host, request.port))
        if request.host is None or request.port is None:
            return "none"
        return format_address(request.host, request.port)

    # -- discovery/ ------------------------------------------------------------------------

    async def discovery_command(self, line: str) -> str:
        request = C.parse_discovery_command(line)
        if isinstance(request, C.SendTargets):
            found = await self.discover_sendtargets(request.host, request.port,
                                                    request.security)
        else:
            host, port = request.host, request.port
            if host is None:
                if not self.config.initiator.isns:
                    raise CommandError("no iSNS server given and none configured")
                host, port = parse_address(self.config.initiator.isns, isns=True)
            assert port is not None
            found = await self.discover_isns(host, port)
        return views.discovery_reply(found)

    async def discover_sendtargets(self, host: str, port: int, security: Security | None
                                   ) -> tuple[DiscoveredTarget, ...]:
        chap, mutual = security.chap_credentials() if security is not None else (None, None)
        where = format_address(host, port)
        try:
            found = await send_targets(host, port, initiator_name=self.config.initiator.name,
                                       chap=chap, mutual=mutual,
                                       timeout=self.config.default_timeouts.login_timeout)
        except (TransportError, IscsiError) as e:
            log.warning("discovery at %s failed: %s", where, e)
            code = errno.EACCES if isinstance(e, AUTH_FAILURES) else errno.EHOSTUNREACH
            raise CommandError(f"discovery at {where} failed: {e}", code) from None
        log.info("SendTargets at %s: %d target(s)", where, len(found))
        for t in found:
            self.discovered[t.name] = views.DiscoveryRecord(t, f"SendTargets {where}")
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
            self.discovered[t.name] = views.DiscoveryRecord(t, f"iSNS {where}")
        return found

    # -- targets/ --------------------------------------------------------------------------

    async def targets_command(self, line: str) -> str:
        request = C.parse_targets_command(line)
        if isinstance(request, C.AddTargets):
            return await self.add_targets(request)
        return await self.remove_targets(request)

    async def add_targets(self, request: C.AddTargets) -> str:
        host, port = request.host, request.port
        params = self.config.default_params
        for overrides in request.options:
            params = C._syntax(apply_options, params, overrides)
        at = format_address(host, port)
        # A host name matches the portals of the addresses it resolves to: SendTargets and
        # iSNS answer with IP addresses.
        keys = await self._address_keys(host)

        def matches(p: Portal) -> bool:
            return p.port == port and host_key(p.address) in keys

        def here(t: DiscoveredTarget) -> bool:
            return any(matches(p) for p in t.portals)

        wanted = None if request.names == ("All",) else set(request.names)
        known = [r.target for r in self.discovered.values() if here(r.target)]
        if wanted is None or not wanted <= {t.name for t in known}:
            # Not (all) discovered at this address yet: discover now, with the discovery
            # security (the manual's -discoverySecurity; by default the login security).
            use = (request.discovery_security if request.discovery_security is not None
                   else request.security)
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
                                   visible=matches(p), auto_login=request.auto_login
                                   and matches(p))
                       for p in t.portals]
            await self.save(lambda st, t=t, portals=portals: st.add_target(
                t.name, portals, security=request.security,
                discovery_security=request.discovery_security, params=params))
            added.append(t.name)
            log.info("added %s at %s", t.name, at)
        if errors and not added:
            # The tree puts "ERROR. " before the message: every further line keeps its own.
            raise CommandError("\n".join(errors).removeprefix("ERROR. "),
                               errno.EEXIST if not missing else errno.ENOENT)
        return "".join(f"added\t{n}\n" for n in added) + "".join(e + "\n" for e in errors)

    async def _address_keys(self, host: str) -> set[str]:
        """The name and, for a host name, the IP addresses it resolves to (normalised)."""
        keys = {host_key(host)}
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
            keys |= {host_key(str(info[4][0]).split("%")[0]) for info in infos}
        return keys

    async def remove_targets(self, request: C.RemoveTargets) -> str:
        host, port, names = request.host, request.port, request.names
        at = format_address(host, port)
        keys = await self._address_keys(host)

        def portal_here(t: TargetSetup) -> PortalSetup | None:
            return next((p for p in t.portals
                         if p.port == port and host_key(p.address) in keys), None)

        matching = [t for t in self.config.targets if portal_here(t) is not None]
        if names != ("All",):
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
                try:
                    await state.login(persistent=True)
                except CommandError:
                    pass  # persistent: the session retries by itself and says why in status

    async def shutdown(self) -> None:
        """Log every session out, concurrently, bounded by the longest logout timeout."""
        async with trio.open_nursery() as n:
            for state in self.states.values():
                if state.session is not None and state.running:
                    n.start_soon(state.logout)
