# iSNS discovery over TCP (RFC 4171) on trio: connect to the server, register our initiator
# node (queries are scoped to the discovery domains of a registered source), ask for the targets,
# deregister, close. The wire format and the meaning of the answers live in iscsifs.proto.isns;
# this module only moves bytes, keeps time (timeouts at the call site) and turns transport
# failures into one-line exceptions. It keeps no state between calls.

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable
from functools import partial

import trio

from iscsifs.proto.discovery import DiscoveredTarget
from iscsifs.proto.errors import RemoteProtocolError
from iscsifs.proto.isns import (
    DEFAULT_ISNS_PORT,
    IsnsError,
    IsnsFramer,
    IsnsFunction,
    IsnsMessage,
    IsnsStatus,
    NodeRecord,
    PortalGroupRecord,
    check_status,
    dev_attr_qry_node,
    dev_attr_qry_targets,
    dev_attr_reg_initiator,
    dev_dereg,
    dev_get_next,
    dev_get_next_portal_group,
    encode_message,
    node_from_get_next_response,
    portal_group_from_get_next_response,
    targets_from_query_response,
    targets_from_records,
)

__all__ = [
    "DEREGISTER_TIMEOUT",
    "IsnsError",
    "IsnsTimeout",
    "IsnsUnreachable",
    "isns_discover",
    "isns_ping",
]

log = logging.getLogger(__name__)

# The DevDereg in `finally` runs shielded (it must happen even when the caller cancels us), so
# it gets its own short bound: a server that stopped answering must not hold the caller.
DEREGISTER_TIMEOUT = 2.0
# A DevGetNext walk is one round trip per object; stop a server that never says "no more".
MAX_WALK_STEPS = 10_000
# Unsolicited messages (SCN, ESI, stale responses) tolerated while waiting for one answer.
MAX_IGNORED_MESSAGES = 64
# Status codes that mean "this server will not do that query", so a DevGetNext walk may work.
_QUERY_REFUSED = frozenset(
    {
        IsnsStatus.MESSAGE_FORMAT_ERROR,
        IsnsStatus.INVALID_QUERY,
        IsnsStatus.OPTION_NOT_UNDERSTOOD,
        IsnsStatus.MESSAGE_NOT_SUPPORTED,
        IsnsStatus.ATTRIBUTE_NOT_IMPLEMENTED,
    }
)
_RECEIVE_SIZE = 65536


class IsnsUnreachable(ConnectionError):
    """The iSNS server could not be reached, or the connection to it failed."""


class IsnsTimeout(TimeoutError):
    """The iSNS server did not complete the exchange in time."""


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _os_error_text(exc: BaseException) -> str:
    """The most specific OS reason behind `exc`. trio.open_tcp_stream raises a generic OSError
    whose cause is a group of per-address failures; the first of those says what happened
    (refused, unreachable); trio's stream errors carry the OSError as their cause."""
    cause: BaseException = exc
    for _ in range(4):
        nxt = cause.__cause__
        if isinstance(nxt, BaseExceptionGroup) and nxt.exceptions:
            nxt = nxt.exceptions[0]
        if not isinstance(nxt, OSError):
            break
        cause = nxt
    # getaddrinfo errors use negative codes that os.strerror does not know.
    gai = isinstance(cause, socket.gaierror)
    if isinstance(cause, OSError) and not gai and cause.errno and cause.errno > 0:
        return os.strerror(cause.errno)
    if isinstance(cause, OSError) and cause.strerror:
        return str(cause.strerror)
    return str(cause).splitlines()[0] if str(cause) else type(cause).__name__


class _Client:
    """One request at a time over a stream: send, then read until the matching response."""

    def __init__(self, stream: trio.abc.Stream, where: str) -> None:
        self._stream = stream
        self._where = where
        self._framer = IsnsFramer()
        self._next_xid = 1
        # A send cancelled half way leaves a partial PDU on the wire: no more requests then.
        self.usable = True

    def _xid(self) -> int:
        xid = self._next_xid
        self._next_xid = xid % 0xFFFF + 1
        return xid

    async def call(self, build: Callable[..., IsnsMessage]) -> IsnsMessage:
        """Send build(transaction_id=...) and return the response to it."""
        request = build(transaction_id=self._xid())
        expected = IsnsFunction(request.function).response
        if not self.usable:
            raise IsnsUnreachable(f"iSNS connection to {self._where} is no longer usable")
        try:
            await self._stream.send_all(encode_message(request))
        except BaseException:
            self.usable = False
            raise
        ignored = 0
        while True:
            for message in self._framer:
                if (
                    message.function == expected
                    and message.transaction_id == request.transaction_id
                ):
                    return message
                ignored += 1
                log.debug(
                    "iSNS %s: ignoring unsolicited function 0x%04x xid %d",
                    self._where,
                    message.function,
                    message.transaction_id,
                )
                if ignored > MAX_IGNORED_MESSAGES:
                    raise RemoteProtocolError(
                        f"iSNS server {self._where} sent {ignored} messages but no "
                        f"{expected.name} for transaction {request.transaction_id}"
                    )
            data = await self._stream.receive_some(_RECEIVE_SIZE)
            if not data:
                self.usable = False
                raise RemoteProtocolError(
                    f"iSNS server {self._where} closed the connection before answering "
                    f"{IsnsFunction(request.function).name}"
                )
            self._framer.receive_data(data)


async def _connect(host: str, port: int, where: str) -> trio.SocketStream:
    try:
        return await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise IsnsUnreachable(f"iSNS server {where} unreachable: {_os_error_text(exc)}") from None


async def _walk_targets(client: _Client, me: str) -> tuple[DiscoveredTarget, ...]:
    """DevGetNext over target nodes, then over portal groups (RFC 4171 section 5.6.5.3)."""
    nodes: list[NodeRecord] = []
    seen: set[str] = set()
    last: str | None = None
    for _ in range(MAX_WALK_STEPS):
        node = node_from_get_next_response(await client.call(partial(dev_get_next, me, last)))
        if node is None:
            break
        if node.name in seen:
            raise RemoteProtocolError(f"iSNS DevGetNext walk returned {node.name!r} twice")
        seen.add(node.name)
        nodes.append(node)
        last = node.name
    else:
        raise RemoteProtocolError(f"iSNS DevGetNext walk exceeded {MAX_WALK_STEPS} nodes")
    groups: list[PortalGroupRecord] = []
    key = None
    seen_keys: set[tuple[bytes, ...]] = set()
    try:
        for _ in range(MAX_WALK_STEPS):
            step = portal_group_from_get_next_response(
                await client.call(partial(dev_get_next_portal_group, me, key))
            )
            if step is None:
                break
            key, group = step
            marker = tuple(attr.value for attr in key)
            if marker in seen_keys:
                raise RemoteProtocolError("iSNS DevGetNext portal group walk did not advance")
            seen_keys.add(marker)
            if group is not None:
                groups.append(group)
        else:
            raise RemoteProtocolError(f"iSNS DevGetNext walk exceeded {MAX_WALK_STEPS} groups")
    except IsnsError as exc:
        # Nodes without portals are still worth listing; the user sees the targets exist.
        log.info("iSNS %s refused the portal group walk: %s", client._where, exc)
    return targets_from_records(nodes, groups)


async def _discover(client: _Client, me: str) -> tuple[DiscoveredTarget, ...]:
    check_status(await client.call(partial(dev_attr_reg_initiator, me)), IsnsFunction.DEV_ATTR_REG)
    try:
        answer = await client.call(partial(dev_attr_qry_targets, me))
        if answer.status in _QUERY_REFUSED:
            log.info(
                "iSNS %s refused DevAttrQry (status %d); walking", client._where, answer.status
            )
            return await _walk_targets(client, me)
        return targets_from_query_response(answer)
    finally:
        await _deregister(client, me)


async def _deregister(client: _Client, me: str) -> None:
    if not client.usable:
        return
    with trio.move_on_after(DEREGISTER_TIMEOUT, shield=True):
        try:
            answer = await client.call(partial(dev_dereg, me, me))
            if answer.status:
                log.info("iSNS %s: DevDereg answered status %d", client._where, answer.status)
        except (RemoteProtocolError, OSError, trio.BrokenResourceError) as exc:
            # Best effort: the server also drops us when the registration period ends.
            log.info("iSNS %s: deregistration failed: %s", client._where, exc)


def _check_arguments(initiator_name: str, timeout: float) -> None:
    # Refuse our own misuse before touching the network, so it never looks like a server fault.
    if not initiator_name:
        raise ValueError("iSNS discovery needs the initiator's iSCSI name")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"iSNS timeout must be a positive number of seconds, not {timeout!r}")


async def isns_discover(
    host: str,
    port: int = DEFAULT_ISNS_PORT,
    *,
    initiator_name: str,
    timeout: float = 10.0,
) -> tuple[DiscoveredTarget, ...]:
    """Discover the targets an iSNS server lets `initiator_name` see.

    Registers the initiator (node type Initiator), queries the target nodes with their portals
    and portal group tags (falling back to a DevGetNext walk when the query is refused), and
    deregisters in a shielded, bounded `finally`. `timeout` bounds connect plus exchange.

    Raises IsnsUnreachable (connect or transport failure, with the OS reason), IsnsTimeout,
    IsnsError (the server answered with a non-zero status) or RemoteProtocolError (the server
    broke the protocol). Each message is one line naming the server.
    """
    _check_arguments(initiator_name, timeout)
    where = _where(host, port)
    try:
        with trio.fail_after(timeout):
            stream = await _connect(host, port, where)
            async with stream:
                try:
                    return await _discover(_Client(stream, where), initiator_name)
                except trio.BrokenResourceError as exc:
                    raise IsnsUnreachable(
                        f"iSNS connection to {where} failed: {_os_error_text(exc)}"
                    ) from None
    except trio.TooSlowError:
        raise IsnsTimeout(f"iSNS server {where} did not answer within {timeout:g} s") from None


async def isns_ping(
    host: str,
    port: int = DEFAULT_ISNS_PORT,
    *,
    initiator_name: str,
    timeout: float = 10.0,
) -> int:
    """The manual's "Verify iSNS": prove an iSNS server answers at host:port.

    Sends a read-only DevAttrQry for our own node (it changes nothing on the server, unlike a
    registration) and returns the status the server answered with: 0, or typically 9 (No Such
    Entry) for an unregistered initiator; any answer proves a live iSNS server. Raises like
    isns_discover when there is no answer.
    """
    _check_arguments(initiator_name, timeout)
    where = _where(host, port)

    try:
        with trio.fail_after(timeout):
            stream = await _connect(host, port, where)
            async with stream:
                try:
                    answer = await _Client(stream, where).call(
                        partial(dev_attr_qry_node, initiator_name, initiator_name)
                    )
                except trio.BrokenResourceError as exc:
                    raise IsnsUnreachable(
                        f"iSNS connection to {where} failed: {_os_error_text(exc)}"
                    ) from None
    except trio.TooSlowError:
        raise IsnsTimeout(f"iSNS server {where} did not answer within {timeout:g} s") from None
    try:
        return IsnsStatus(answer.status or 0)
    except ValueError:
        return answer.status or 0
