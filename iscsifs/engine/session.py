# A normal iSCSI session to one target portal, run by trio: connect, login (following
# redirects), the full feature phase, and the recovery that keeps applications' I/O alive.
#
# Owns: the tasks waiting for a connection, the connection's reader / writer / watchdog tasks,
# NOP-Out pings, per-command timeouts (ABORT TASK -> LUN RESET -> drop), ERL 0 session
# reinstatement (same ISID, every unfinished task re-issued), the hold time after which waiting
# I/O fails, Async Messages, and logout. Must not know SCSI beyond the retry policy, nor files.
#
# One hop per command: the caller's task writes its command to the socket itself
# (Transport.send is synchronous) and sleeps on the task's Event; the reader sets it.

from __future__ import annotations

import logging
import math
import os
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import trio

from .. import scsi
from ..proto import pdu as P
from ..proto.chap import DEFAULT_ALGORITHMS, ChapAlgorithm, ChapCredentials
from ..proto.connection import (
    AsyncReceived,
    Connection,
    LogoutDone,
    PingReply,
    RecoveryStarted,
    RejectReceived,
    Task,
    TextReply,
    TmfDone,
)
from ..proto.errors import IscsiError, RemoteProtocolError
from ..proto.login import (
    LoginComplete,
    LoginConfig,
    LoginError,
    LoginRedirect,
    LoginStateMachine,
    default_offers,
)
from ..proto.pdu import AsyncEvent, Framer, LogoutReason, TmfFunction, TmfResponse
from ..proto.text import NegotiatedParams
from .transport import Transport, TransportError, format_portal

log = logging.getLogger(__name__)


class SessionError(Exception):
    """Base of the errors a session gives its callers; messages are one line."""


class SessionUnavailable(SessionError):
    """The session is not logged in, or the hold time of an outage ran out (I/O gets EIO)."""


class SessionClosed(SessionUnavailable):
    """The session was logged out while the command waited."""


class CommandFailed(SessionError):
    """A command could not be completed (aborted too often, rejected, target failure)."""


class State(Enum):
    """What `status` shows first. The manual's three states map onto these."""

    IDLE = "not connected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECOVERING = "recovering"
    FAILED = "unavailable"
    LOGGING_OUT = "logging out"


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Every timer of a session, in seconds. Defaults follow open-iscsi's where it has one."""

    connect: float = 10.0
    login: float = 15.0
    logout: float = 10.0
    noop_interval: float = 5.0
    noop_timeout: float = 5.0
    command: float = 30.0
    tmf: float = 10.0
    hold: float = 120.0  # open-iscsi's replacement_timeout
    reconnect_min: float = 0.25
    reconnect_max: float = 10.0


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    initiator_name: str
    target_name: str
    host: str
    port: int = 3260
    chap: ChapCredentials | None = None  # answers the target's challenge (TargetUserName/Secret)
    mutual: ChapCredentials | None = None  # what the target must prove (InitiatorUserName/Secret)
    offers: Mapping[str, str] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_redirects: int = 5
    max_in_flight: int = 128
    chap_algorithms: tuple[ChapAlgorithm, ...] | None = None  # None: chap.DEFAULT_ALGORITHMS
    isid: bytes = b""

    @property
    def portal(self) -> str:
        return format_portal(self.host, self.port)


class Listener:
    """What a session tells its owner. Methods are called from the session's tasks and must not
    block; the defaults do nothing."""

    def connected(self, session: Session) -> None: ...

    def disconnected(self, session: Session, reason: str) -> None: ...

    def luns_changed(self, session: Session) -> None: ...

    def portal_moved(self, session: Session, host: str, port: int) -> None: ...


#: connector(host, port, *, timeout) -> Transport. Tests pass one that returns a socketpair to
#: a fake target; the default is Transport.connect.
Connector = Callable[..., Any]


class _Callback:
    """A task's completion, delivered by calling a function instead of setting an Event: the
    session calls .set() on task.context either way."""

    __slots__ = ("fn", "task")

    def __init__(self, task: Task, fn: Callable[[Task], None]) -> None:
        self.task = task
        self.fn: Callable[[Task], None] | None = fn

    def set(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            task = self.task
            # Break the task <-> callback cycle now: left to the cyclic collector, one cycle
            # per command had it running ~10 % of the time at 15,000 IOPS.
            task.context = None
            try:
                fn(task)
            except Exception:
                log.exception("completion callback failed")


def new_isid() -> bytes:
    """A random-format ISID (RFC 7143 11.12.5: T=10b), fixed for the life of a Session object so
    that a re-login reinstates the old session at the target instead of adding one."""
    return bytes([0x80]) + os.urandom(3) + os.urandom(2)


class _ConnectionLost(Exception):
    def __init__(self, reason: str, *, wait: float = 0.0, planned: bool = False,
                 silent_since: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait
        self.planned = planned
        self.silent_since = silent_since


@dataclass
class _Live:
    """One connection in the full feature phase."""

    transport: Transport
    conn: Connection
    scope: trio.CancelScope
    nursery: trio.Nursery | None = None
    lost: _ConnectionLost | None = None
    ping_itt: int | None = None
    ping_sent: float = 0.0
    draining: bool = False
    waiters: dict[int, tuple[trio.Event, list[Any]]] = field(default_factory=dict)
    escalating: set[int] = field(default_factory=set)


class Session:
    """A session to one portal of one target. Create it, `await nursery.start(session.run)`."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        listener: Listener | None = None,
        connector: Connector | None = None,
    ) -> None:
        if not settings.isid:
            settings = _replace(settings, isid=new_isid())
        self.settings = settings
        self.listener = listener or Listener()
        self._connect = connector or Transport.connect
        self.hold_time = settings.timeouts.hold  # changeable live
        self.state = State.IDLE
        self.since = trio.current_time()
        self.params: NegotiatedParams | None = None
        self.login_info: LoginComplete | None = None
        self.reconnects = 0
        self.last_error: str | None = None
        self.outage_since: float | None = None
        self.commands_done = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self._waiting: deque[Task] = deque()
        self._live: _Live | None = None
        self._want = False
        self._changed = trio.Event()
        self._stopped = trio.Event()
        self._stopped.set()
        # Commands inside execute(), capped at max_in_flight. A counter and an Event rather
        # than a trio.Semaphore: this is on every command's path and the cap is rarely hit.
        self._active = 0
        self._slot_freed: trio.Event | None = None
        self._home: tuple[str, int] | None = None  # set by a permanent redirect

    # -- status ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state is State.CONNECTED

    @property
    def in_flight(self) -> int:
        live = self._live
        return len(live.conn.tasks) + len(live.conn.pending) if live else 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self.since = trio.current_time()
        self._kick()

    def _kick(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def set_hold_time(self, seconds: float) -> None:
        """Change how long I/O waits through an outage; takes effect at once."""
        if seconds < 0:
            raise ValueError("hold time must be 0 or more seconds")
        self.hold_time = seconds
        self._kick()

    # -- I/O -------------------------------------------------------------------------------

    async def execute(self, task: Task) -> Task:
        """Run one task to completion, through outages, until the hold time runs out.

        Returns the finished task (status, sense and residual in it); raises SessionUnavailable
        when the session cannot carry it and CommandFailed when the target refused it.
        """
        if not self._want or self.state is State.FAILED:
            raise SessionUnavailable(self._unavailable_reason())
        while self._active >= self.settings.max_in_flight:
            if self._slot_freed is None:
                self._slot_freed = trio.Event()
            await self._slot_freed.wait()
        self._active += 1
        try:
            done = trio.Event()
            task.context = done
            self._issue(task)
            try:
                await done.wait()
            except BaseException:
                if task in self._waiting:
                    # Never sent: forget it.
                    self._waiting.remove(task)
                    task.context = None
                elif task.is_write and not task.done:
                    # Sent: the target may still apply it. Keep the caller (and so the block
                    # range lock of BlockDevice.write) until it is done, bounded by the command
                    # timeout, so a newer write to the same blocks cannot overtake it.
                    with trio.CancelScope(shield=True), trio.move_on_after(
                        self.settings.timeouts.command
                    ):
                        await done.wait()
                    task.context = None
                else:
                    task.context = None
                raise
        finally:
            self._active -= 1
            if self._slot_freed is not None:
                self._slot_freed.set()
                self._slot_freed = None
        err = task.error
        if err is not None:
            if isinstance(err, SessionError):
                raise err
            raise CommandFailed(str(err)) from None
        self.commands_done += 1
        return task

    def start(self, task: Task, on_done: Callable[[Task], None]) -> None:
        """Submit a task without waiting: on_done(task) is called once it has finished, from
        whichever task finishes it (usually the reader, the moment its status arrives; or the
        hold timer and logout, with task.error set). Callers that serve many small requests
        use this to complete them without a task of their own each. Raises
        SessionUnavailable at once when the session cannot take it, as execute() would.
        The caller reads the outcome with result_error(task)."""
        if not self._want or self.state is State.FAILED:
            raise SessionUnavailable(self._unavailable_reason())
        task.context = _Callback(task, on_done)
        self._issue(task)

    def _issue(self, task: Task) -> None:
        """Send the task on the live connection, or queue it for the next one. A connection
        already lost (lost is set) but not yet cleaned up would raise its failure from
        submit(): such commands wait for the next connection instead."""
        live = self._live
        if (live is not None and live.lost is None and self.state is State.CONNECTED
                and not live.draining):
            self._submit(live, task)
            # Alone in flight: send now (latency). Otherwise batch with the round.
            self._flush(live, soon=len(live.conn.tasks) > 1)
        else:
            self._waiting.append(task)

    def result_error(self, task: Task) -> Exception | None:
        """The outcome of a finished task started with start(), as execute()/command() would
        raise it: None for GOOD (or RECOVERED ERROR); SessionError or CommandFailed when it
        did not complete; the scsi.ScsiError for any other status. Counts it when GOOD."""
        err = task.error
        if err is not None:
            return err if isinstance(err, SessionError) else CommandFailed(str(err))
        if task.status != 0:
            error = scsi.error_for_status(task.status, task.sense)
            if error is not None and not isinstance(error, scsi.RecoveredError):
                if isinstance(error, scsi.UnitAttention) and error.luns_changed:
                    self.listener.luns_changed(self)
                return error
        self.commands_done += 1
        if task.read_buf is not None:
            self.bytes_read += task.transferred
        elif task.write_buf is not None:
            self.bytes_written += task.expected_length
        return None

    async def command(
        self,
        lun: int,
        cdb: bytes,
        *,
        read: memoryview | None = None,
        write: P.Buffer | None = None,
        length: int | None = None,
    ) -> Task:
        """A SCSI command with the retry policy of scsi.retry_decision (UNIT ATTENTION, BUSY...):
        returns the task on GOOD status, raises scsi.ScsiError otherwise."""
        if length is None:
            length = len(read) if read is not None else (len(write) if write is not None else 0)
        attempt = 0
        while True:
            task = Task(lun=scsi.encode_lun(lun), cdb=cdb, read_buf=read, write_buf=write,
                        expected_length=length)
            await self.execute(task)
            # GOOD needs no decoding; RECOVERED ERROR means it completed after recovery.
            error = None if task.status == 0 else scsi.error_for_status(task.status, task.sense)
            if error is None or isinstance(error, scsi.RecoveredError):
                if read is not None:
                    self.bytes_read += task.transferred
                elif write is not None:
                    self.bytes_written += length
                return task
            attempt += 1
            decision = scsi.retry_decision(error, attempt)
            if isinstance(error, scsi.UnitAttention) and error.luns_changed:
                self.listener.luns_changed(self)
            if not decision.retry:
                raise error
            log.debug("%s: %s on %s, retry %d", self.settings.portal, error,
                      scsi.cdb_name(cdb), attempt)
            if decision.delay_s:
                await trio.sleep(decision.delay_s)

    def _unavailable_reason(self) -> str:
        name = self.settings.target_name
        if not self._want:
            return f"{name} at {self.settings.portal} is not logged in"
        return (f"{name} at {self.settings.portal} unavailable for more than the "
                f"{self.hold_time:g} s hold time: {self.last_error or 'no connection'}")

    def _flush(self, live: _Live, *, soon: bool = False) -> None:
        """Hand the connection's output to the transport: now, or with `soon` at the writer's
        next run, batched with whatever else this scheduler round queues."""
        out = live.conn.outbound
        if out:
            live.conn.outbound = []
            try:
                if soon:
                    live.transport.send_soon(out)
                else:
                    live.transport.send(out)
            except TransportError as e:
                self._lose(live, _ConnectionLost(str(e)))

    # -- lifecycle -------------------------------------------------------------------------

    async def run(
        self, *, persistent: bool = False, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Log in and keep the session up until logout().

        task_status.started() is called after the first login, or with the error when it fails
        and `persistent` is False (an interactive login reports rather than retries). With
        `persistent` (auto-login) failures are retried with backoff and started() comes at once.
        """
        self._want = True
        self._stopped = trio.Event()
        reported = False
        if persistent:
            task_status.started(None)
            reported = True
        backoff = self.settings.timeouts.reconnect_min
        wait = 0.0
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._holder)
                while self._want:
                    if wait:
                        with trio.move_on_after(wait):
                            while self._want:
                                await self._changed.wait()
                        if not self._want:
                            break
                    if self.state is not State.RECOVERING and self.state is not State.FAILED:
                        self._set_state(State.CONNECTING)
                    try:
                        transport, conn, info = await self._establish()
                    except (LoginError, TransportError, RemoteProtocolError, IscsiError) as e:
                        self.last_error = str(e)
                        log.warning("%s: login failed: %s", self.settings.portal, e)
                        if not reported:
                            # Settle the state before the caller hears of the failure.
                            self._want = False
                            self._set_state(State.IDLE)
                            task_status.started(e)
                            reported = True
                            break
                        if self.state is State.CONNECTING:
                            self._set_state(State.FAILED)
                            # No connection was lost, so no hold time runs: I/O queued during
                            # this first attempt fails now, as new I/O does while FAILED.
                            self._fail_waiting(SessionUnavailable(
                                f"{self.settings.target_name} at {self.settings.portal} "
                                f"unavailable: {e}"))
                        wait = min(backoff * (0.5 + random.random()),
                                   self.settings.timeouts.reconnect_max)
                        backoff = min(backoff * 2, self.settings.timeouts.reconnect_max)
                        if isinstance(e, LoginError) and not e.retryable:
                            wait = max(wait, self.settings.timeouts.reconnect_max)
                        continue
                    backoff = self.settings.timeouts.reconnect_min
                    if self.outage_since is not None or self.login_info is not None:
                        self.reconnects += 1
                    self.login_info = info
                    self.params = info.params
                    self.outage_since = None
                    self._set_state(State.CONNECTED)
                    log.info("%s: logged in to %s (TSIH %d)", self.settings.portal,
                             self.settings.target_name, info.tsih)
                    if not reported:
                        task_status.started(None)
                        reported = True
                    lost = await self._run_connection(transport, conn)
                    if lost is None:  # logged out
                        break
                    self.last_error = lost.reason
                    if lost.planned:
                        log.info("%s: %s", self.settings.portal, lost.reason)
                    else:
                        log.warning("%s: connection lost: %s", self.settings.portal, lost.reason)
                    # Planned or not, the hold time counts from here: a target that announced
                    # its drop may still never come back.
                    if self.outage_since is None:
                        self.outage_since = (lost.silent_since if lost.silent_since
                                             is not None else trio.current_time())
                    self._set_state(State.RECOVERING)
                    self.listener.disconnected(self, lost.reason)
                    wait = lost.wait
                nursery.cancel_scope.cancel()
        finally:
            self._want = False
            self._fail_waiting(SessionClosed(
                f"{self.settings.target_name} at {self.settings.portal} logged out"))
            self._live = None
            self.params = None
            self._set_state(State.IDLE)
            self._stopped.set()

    async def logout(self) -> None:
        """Log out cleanly: let commands in flight finish (bounded), send Logout, close."""
        if self._stopped.is_set():
            return
        self._want = False
        self._kick()
        with trio.move_on_after(self.settings.timeouts.logout * 2 + 1):
            await self._stopped.wait()

    async def _holder(self) -> None:
        """Fail waiting I/O when an outage outlasts the hold time; re-armed by every change."""
        while True:
            since = self.outage_since
            if since is None or self.state is State.FAILED:
                await self._changed.wait()
                continue
            with trio.move_on_at(since + self.hold_time) as scope:
                await self._changed.wait()
            if scope.cancelled_caught and self.outage_since is not None:
                reason = self._unavailable_reason()
                log.error("%s: hold time of %g s expired; failing %d waiting commands",
                          self.settings.portal, self.hold_time, len(self._waiting))
                self._set_state(State.FAILED)
                self._fail_waiting(SessionUnavailable(reason))

    def _fail_waiting(self, error: Exception) -> None:
        while self._waiting:
            task = self._waiting.popleft()
            task.error = error
            task.done = True
            if task.context is not None:
                task.context.set()

    # -- establishing ----------------------------------------------------------------------

    async def _establish(self) -> tuple[Transport, Connection, LoginComplete]:
        s = self.settings
        # A permanent redirect changes where this session lives from then on; a temporary one
        # applies to that login only (RFC 7143 11.13.5: 0x0101 vs 0x0102).
        host, port = self._home or (s.host, s.port)
        for _hop in range(s.max_redirects + 1):
            transport = await self._connect(host, port, timeout=s.timeouts.connect)
            try:
                with trio.fail_after(s.timeouts.login):
                    result, leftover = await self._login(transport)
            except trio.TooSlowError:
                transport.abort()
                raise TransportError(
                    f"login to {s.target_name} at {format_portal(host, port)}: no answer "
                    f"within {s.timeouts.login:g} s") from None
            except BaseException:
                transport.abort()
                raise
            if isinstance(result, LoginRedirect):
                transport.close()
                log.info("%s: %s redirect to %s", s.portal,
                         "permanent" if result.permanent else "temporary",
                         format_portal(result.address, result.port))
                host, port = result.address, result.port
                if result.permanent:
                    self._home = (host, port)
                    self.listener.portal_moved(self, host, port)
                continue
            conn = Connection(result.params, cmdsn=self._initial_cmdsn,
                              exp_statsn=(result.statsn + 1) & 0xFFFFFFFF,
                              exp_cmdsn=result.exp_cmdsn, max_cmdsn=result.max_cmdsn)
            if leftover:
                conn.receive_data(leftover)
            return transport, conn, result
        raise TransportError(f"login to {s.target_name}: more than {s.max_redirects} redirects")

    _initial_cmdsn = 1

    async def _login(self, transport: Transport) -> tuple[LoginComplete | LoginRedirect, bytes]:
        s = self.settings
        config = LoginConfig(
            initiator_name=s.initiator_name,
            target_name=s.target_name,
            session_type="Normal",
            isid=s.isid,
            tsih=0,
            cid=0,
            cmdsn=self._initial_cmdsn,
            itt=0,
            chap=s.chap,
            mutual_chap=s.mutual,
            operational_offers=default_offers("Normal", **s.offers),
            chap_algorithms=s.chap_algorithms or DEFAULT_ALGORITHMS,
        )
        return await login_exchange(transport, LoginStateMachine(config, random=os.urandom))

    # -- the full feature phase ------------------------------------------------------------

    async def _run_connection(
        self, transport: Transport, conn: Connection
    ) -> _ConnectionLost | None:
        """Run one connection until it is lost (returns why) or logged out (returns None)."""
        live = _Live(transport=transport, conn=conn, scope=trio.CancelScope())
        self._live = live
        try:
            with live.scope:
                async with trio.open_nursery() as nursery:
                    live.nursery = nursery
                    nursery.start_soon(self._reader, live)
                    nursery.start_soon(self._writer, live)
                    nursery.start_soon(self._watchdog, live)
                    self._resubmit(live)
                    self.listener.connected(self)
                    while self._want and live.lost is None:
                        await self._changed.wait()
                    if live.lost is None:
                        await self._logout(live)
                        nursery.cancel_scope.cancel()
        finally:
            self._live = None
            transport.close()
            # Commands completed by the same receive that then failed (a good answer followed
            # by a bad one in one segment) never reached _dispatch: they are done, wake them.
            done, conn.completed = conn.completed, []
            for task in done:
                if task.context is not None:
                    task.context.set()
            # Whatever was on this connection goes back to wait for the next one, oldest first.
            for task in reversed(conn.unfinished()):
                self._waiting.appendleft(task)
        if not self._want:
            return None  # logged out: the target closing its end afterwards is expected
        return live.lost

    def _resubmit(self, live: _Live) -> None:
        waiting = self._waiting
        while waiting:
            task = waiting.popleft()
            if task.context is None:  # its caller went away
                continue
            self._submit(live, task)
        self._flush(live)

    @staticmethod
    def _submit(live: _Live, task: Task) -> None:
        """Hand a task to the connection. Its command timeout runs from when it is sent: one
        held back by a closed CmdSN window is stamped when the window opens (_stamp_sent)."""
        conn = live.conn
        conn.submit(task)
        if conn.pending:  # FIFO: anything still pending includes this task, the newest
            task.issued_at = math.inf
        else:
            task.issued_at = trio.current_time()

    @staticmethod
    def _stamp_sent(conn: Connection) -> None:
        """After a receive that may have opened the window: stamp the tasks it let go."""
        now = trio.current_time()
        for task in conn.tasks.values():
            if task.issued_at == math.inf:
                task.issued_at = now

    def _lose(self, live: _Live, lost: _ConnectionLost) -> None:
        if live.lost is None:
            live.lost = lost
        live.scope.cancel()
        self._kick()

    async def _reader(self, live: _Live) -> None:
        transport, conn = live.transport, live.conn
        try:
            count = 0
            while True:
                view = conn.get_buffer()
                n = transport.recv_nowait(view)
                if n == 0:
                    n = await transport.recv_into(conn.get_buffer(), wait_first=True)
                    count = 0
                held = bool(conn.pending)
                conn.buffer_updated(n)
                if held:
                    self._stamp_sent(conn)
                self._dispatch(live)
                count += 1
                if count >= 16:  # data keeps coming: let woken callers run
                    count = 0
                    await trio.lowlevel.checkpoint()
        except (TransportError, IscsiError) as e:
            self._lose(live, _ConnectionLost(str(e)))
        except Exception as e:  # a bug of ours: log it whole, recover like any other loss
            log.exception("%s: internal error in the receive path", self.settings.portal)
            self._lose(live, _ConnectionLost(f"internal error: {type(e).__name__}: {e}"))

    async def _writer(self, live: _Live) -> None:
        try:
            await live.transport.run_writer()
        except TransportError as e:
            self._lose(live, _ConnectionLost(str(e)))

    def _dispatch(self, live: _Live) -> None:
        conn = live.conn
        if conn.completed:
            done, conn.completed = conn.completed, []
            for task in done:
                ctx = task.context
                if ctx is not None:
                    ctx.set()
            if live.draining:  # a logout waits for the last command to finish
                self._kick()
        if conn.events:
            events, conn.events = conn.events, []
            for ev in events:
                self._on_event(live, ev)
        if conn.outbound:
            self._flush(live)

    def _on_event(self, live: _Live, ev: Any) -> None:
        portal = self.settings.portal
        if isinstance(ev, PingReply):
            if ev.itt == live.ping_itt:
                live.ping_itt = None
        elif isinstance(ev, TmfDone | LogoutDone | TextReply):
            if isinstance(ev, LogoutDone) and live.lost is None:
                # The target closes the connection after its Logout Response, and the reader
                # may see that close first: it is the logout, not a failure.
                live.lost = _ConnectionLost(
                    "logged out at the target's request; logging in again" if self._want
                    else "logged out", planned=True)
            waiter = live.waiters.pop(ev.itt, None)
            if waiter is not None:
                waiter[1].append(ev)
                waiter[0].set()
        elif isinstance(ev, AsyncReceived):
            self._on_async(live, ev.message)
        elif isinstance(ev, RejectReceived):
            log.warning("%s: target rejected a PDU (reason 0x%02x)", portal, ev.reject.reason)
            waiter = live.waiters.pop(ev.itt, None)
            if waiter is not None:
                waiter[1].append(ev)
                waiter[0].set()
        elif isinstance(ev, RecoveryStarted):
            log.warning("%s: recovering %r: %s", portal, ev.task, ev.reason)

    def _on_async(self, live: _Live, msg: P.AsyncMessage) -> None:
        portal = self.settings.portal
        event = msg.async_event
        if event == AsyncEvent.SCSI_ASYNC_EVENT:
            try:
                sense = scsi.decode_sense(msg.sense)
                text = scsi.describe_sense(sense)
                changed = (sense.asc, sense.ascq) == (0x3F, 0x0E)
            except (scsi.ScsiParseError, RemoteProtocolError):
                text, changed = "undecodable sense data", False
            log.info("%s: SCSI asynchronous event: %s", portal, text)
            if changed:
                self.listener.luns_changed(self)
        elif event == AsyncEvent.LOGOUT_REQUEST:
            log.info("%s: target requests logout within %d s", portal, msg.parameter3)
            live.draining = True
            self._spawn(live, self._async_logout, live, msg.parameter3)
        elif event in (AsyncEvent.CONNECTION_DROP, AsyncEvent.SESSION_DROP):
            what = "connection" if event == AsyncEvent.CONNECTION_DROP else "session"
            self._lose(live, _ConnectionLost(
                f"target dropped the {what} (Time2Wait {msg.parameter2} s)",
                wait=float(msg.parameter2), planned=True))
        elif event == AsyncEvent.NEGOTIATION_REQUEST:
            log.info("%s: target requests parameter negotiation", portal)
            try:
                itt = live.conn.text(b"")
                live.waiters[itt] = (trio.Event(), [])
                self._flush(live)
            except IscsiError as e:
                self._lose(live, _ConnectionLost(f"renegotiation failed: {e}"))
        elif event == AsyncEvent.TASK_TERMINATION:
            log.warning("%s: target terminated all tasks of a LUN; re-issuing them", portal)
            self._lose(live, _ConnectionLost("target terminated tasks", planned=True))
        else:
            log.info("%s: asynchronous message %d ignored", portal, event)

    async def _async_logout(self, live: _Live, within: int) -> None:
        """The target asked us to log out (Async event 1): drain, log out, log back in."""
        deadline = trio.current_time() + max(within, 1) * 0.8
        with trio.move_on_at(deadline):
            while live.conn.tasks and live.lost is None:
                await self._wait_change()
        if live.lost is None:
            with trio.move_on_after(self.settings.timeouts.logout):
                await self._logout(live)
            self._lose(live, _ConnectionLost("logged out at the target's request; logging in "
                                             "again", planned=True))

    @staticmethod
    def _spawn(live: _Live, fn: Callable[..., Any], *args: Any) -> None:
        """Start a helper task in the connection's nursery: it dies with the connection."""
        assert live.nursery is not None
        live.nursery.start_soon(fn, *args)

    async def _wait_change(self) -> None:
        await self._changed.wait()

    async def _watchdog(self, live: _Live) -> None:
        """NOP-Out pings when idle, and the per-command timeout. It sleeps until the earliest
        deadline rather than polling on a tick, so each timer fires at its configured time."""
        t = self.settings.timeouts
        conn, transport = live.conn, live.transport
        while True:
            now = trio.current_time()
            if live.ping_itt is not None:
                if now >= live.ping_sent + t.noop_timeout:
                    self._lose(live, _ConnectionLost(
                        f"no answer to NOP-Out ping within {t.noop_timeout:g} s",
                        silent_since=transport.last_receive))
                    return
            elif t.noop_interval > 0 and now >= transport.last_receive + t.noop_interval:
                try:
                    live.ping_itt = conn.ping()
                except IscsiError as e:  # the reader failed in this same instant
                    self._lose(live, _ConnectionLost(str(e)))
                    return
                live.ping_sent = now
                self._flush(live)
            # A command issued after now cannot time out before now + t.command.
            wake = now + t.command
            for task in list(conn.tasks.values()):
                if task.itt in live.escalating:
                    continue
                due = task.issued_at + t.command
                if now >= due:
                    live.escalating.add(task.itt)
                    self._spawn(live, self._escalate, live, task)
                else:
                    wake = min(wake, due)
            if live.ping_itt is not None:
                wake = min(wake, live.ping_sent + t.noop_timeout)
            elif t.noop_interval > 0:
                wake = min(wake, transport.last_receive + t.noop_interval)
            # Data arriving meanwhile only moves deadlines later: waking early is harmless.
            await trio.sleep_until(wake)

    async def _tmf(self, live: _Live, function: int, *, lun: int, task: Task | None) -> int | None:
        itt = live.conn.task_management(function, lun=lun, task=task)
        ev: trio.Event = trio.Event()
        box: list[Any] = []
        live.waiters[itt] = (ev, box)
        self._flush(live)
        with trio.move_on_after(self.settings.timeouts.tmf):
            await ev.wait()
        live.waiters.pop(itt, None)
        if box and isinstance(box[0], TmfDone):
            return box[0].response
        return None

    async def _escalate(self, live: _Live, task: Task) -> None:
        """RFC 7143 error handling for a command that does not complete: ABORT TASK, then
        LOGICAL UNIT RESET, then drop the connection. Each step is logged."""
        portal = self.settings.portal
        t = self.settings.timeouts
        try:
            log.warning("%s: %s timed out after %g s: sending ABORT TASK", portal,
                        scsi.cdb_name(task.cdb), t.command)
            response = await self._tmf(live, TmfFunction.ABORT_TASK, lun=task.lun, task=task)
            if task.done or live.lost is not None:
                return
            if response in (TmfResponse.COMPLETE, TmfResponse.TASK_DOES_NOT_EXIST):
                live.conn.forget(task)
                log.warning("%s: task aborted; re-issuing it", portal)
                if task.attempts >= 3:
                    self._finish_error(task, CommandFailed(
                        f"{scsi.cdb_name(task.cdb)} timed out {task.attempts} times"))
                else:
                    self._submit(live, task)
                    self._flush(live)
                return
            log.warning("%s: ABORT TASK %s: sending LOGICAL UNIT RESET", portal,
                        "got no answer" if response is None else f"answered {response}")
            response = await self._tmf(live, TmfFunction.LOGICAL_UNIT_RESET, lun=task.lun,
                                       task=None)
            if live.lost is not None:
                return
            if response == TmfResponse.COMPLETE:
                log.warning("%s: LUN reset; re-issuing its commands", portal)
                for other in [x for x in live.conn.tasks.values() if x.lun == task.lun]:
                    live.conn.forget(other)
                    self._submit(live, other)
                self._flush(live)
                return
            log.error("%s: LOGICAL UNIT RESET %s: dropping the connection", portal,
                      "got no answer" if response is None else f"answered {response}")
            self._lose(live, _ConnectionLost("command timeout not resolved by task management"))
        except IscsiError as e:
            self._lose(live, _ConnectionLost(str(e)))
        finally:
            live.escalating.discard(task.itt)

    def _finish_error(self, task: Task, error: Exception) -> None:
        task.error = error
        task.done = True
        if task.context is not None:
            task.context.set()

    async def _logout(self, live: _Live) -> None:
        """Clean logout of the live connection: wait for in-flight commands (bounded)."""
        t = self.settings.timeouts
        self._set_state(State.LOGGING_OUT)
        live.draining = True
        with trio.move_on_after(t.logout):
            while live.conn.tasks and live.lost is None:
                await self._changed.wait()
        if live.lost is not None:
            return
        try:
            itt = live.conn.logout(LogoutReason.CLOSE_SESSION)
        except IscsiError:
            return
        ev = trio.Event()
        box: list[Any] = []
        live.waiters[itt] = (ev, box)
        self._flush(live)
        with trio.move_on_after(t.logout):
            await ev.wait()
        if not box:
            log.warning("%s: no logout response within %g s", self.settings.portal, t.logout)


def _replace(settings: SessionSettings, **kw: Any) -> SessionSettings:
    import dataclasses

    return dataclasses.replace(settings, **kw)


async def login_exchange(
    transport: Transport, sm: LoginStateMachine
) -> tuple[LoginComplete | LoginRedirect, bytes]:
    """Run a login state machine over a transport. Returns the outcome and any bytes received
    after the final login response (they belong to the full feature phase)."""
    framer = Framer(max_data_segment=1 << 16)
    transport.send(P.encode_parts(sm.start()))
    while True:
        frame = framer.next_frame()
        while frame is None:
            n = await transport.recv_into(framer.get_buffer())
            framer.buffer_updated(n)
            frame = framer.next_frame()
        pdu = P.decode_frame(frame)
        if not isinstance(pdu, P.LoginResponse):
            raise RemoteProtocolError(f"{type(pdu).__name__} during login")
        result = sm.receive(pdu)
        if isinstance(result, LoginComplete | LoginRedirect):
            return result, framer.take_unparsed()
        transport.send(P.encode_parts(result))


__all__ = [
    "Callable",
    "CommandFailed",
    "Listener",
    "Session",
    "SessionClosed",
    "SessionError",
    "SessionSettings",
    "SessionUnavailable",
    "State",
    "Timeouts",
    "login_exchange",
]
