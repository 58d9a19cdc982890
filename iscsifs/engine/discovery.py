# Discovery runs: SendTargets over a discovery session (RFC 7143 section 4.3 and appendix C),
# with discovery CHAP, and iSNS through engine/isns.py. Each run connects, asks, logs out and
# closes; results are the shared proto.discovery model. Must not keep state between runs: the
# daemon keeps what was discovered.

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import trio

from ..proto.chap import ChapCredentials
from ..proto.connection import Connection, TextReply
from ..proto.discovery import DiscoveredTarget, Portal, parse_sendtargets
from ..proto.errors import RemoteProtocolError
from ..proto.login import (
    LoginComplete,
    LoginConfig,
    LoginRedirect,
    LoginStateMachine,
    default_offers,
)
from ..proto.text import decode_text
from .session import login_exchange, new_isid
from .transport import Transport, TransportError, format_portal


class DiscoveryTimeout(TransportError):
    """The discovery portal accepted the connection but did not finish in time."""


async def send_targets(
    host: str,
    port: int = 3260,
    *,
    initiator_name: str,
    chap: ChapCredentials | None = None,
    mutual: ChapCredentials | None = None,
    timeout: float = 15.0,
    max_redirects: int = 5,
) -> tuple[DiscoveredTarget, ...]:
    """Log in to a discovery session, send SendTargets=All, log out. Targets that came with no
    TargetAddress are reachable at the portal asked, which is filled in."""
    where = format_portal(host, port)
    try:
        with trio.fail_after(timeout):
            for _ in range(max_redirects + 1):
                transport = await Transport.connect(host, port, timeout=timeout)
                try:
                    result = await _discover_on(transport, initiator_name, chap, mutual)
                finally:
                    transport.close()
                if isinstance(result, LoginRedirect):
                    host, port = result.address, result.port
                    continue
                return tuple(
                    t if t.portals else replace(t, portals=(Portal(address=host, port=port,
                                                                   tpgt=None),))
                    for t in result
                )
            raise TransportError(f"discovery at {where}: more than {max_redirects} redirects")
    except trio.TooSlowError:
        raise DiscoveryTimeout(f"discovery at {where}: no answer within {timeout:g} s") from None


async def _discover_on(
    transport: Transport,
    initiator_name: str,
    chap: ChapCredentials | None,
    mutual: ChapCredentials | None,
) -> tuple[DiscoveredTarget, ...] | LoginRedirect:
    config = LoginConfig(
        initiator_name=initiator_name,
        target_name=None,
        session_type="Discovery",
        isid=new_isid(),
        tsih=0,
        cid=0,
        cmdsn=1,
        itt=0,
        chap=chap,
        mutual_chap=mutual,
        operational_offers=default_offers("Discovery"),
    )
    result, leftover = await login_exchange(transport, LoginStateMachine(config, random=os.urandom))
    if isinstance(result, LoginRedirect):
        return result
    assert isinstance(result, LoginComplete)
    conn = Connection(result.params, cmdsn=1, exp_statsn=(result.statsn + 1) & 0xFFFFFFFF,
                      exp_cmdsn=result.exp_cmdsn, max_cmdsn=result.max_cmdsn)
    if leftover:
        conn.receive_data(leftover)
    itt = conn.text(b"SendTargets=All\0")
    reply = await _wait_for(transport, conn, lambda ev: isinstance(ev, TextReply) and ev.itt == itt)
    assert isinstance(reply, TextReply)
    targets = parse_sendtargets(decode_text(reply.data))
    # Polite logout; a target that does not answer it loses nothing.
    with trio.move_on_after(2):
        lit = conn.logout()
        await _wait_for(transport, conn, lambda ev: getattr(ev, "itt", None) == lit)
    return targets


async def _wait_for(
    transport: Transport, conn: Connection, match: Callable[[object], bool]
) -> object:
    while True:
        if conn.outbound:
            transport.send(conn.take_outbound())
        for ev in conn.events:
            if match(ev):
                conn.events.remove(ev)
                return ev
        conn.events.clear()
        n = await transport.recv_into(conn.get_buffer())
        conn.buffer_updated(n)


__all__ = ["DiscoveryTimeout", "RemoteProtocolError", "send_targets"]
