# iscsifs/engine/isns.py against a scripted iSNS server on loopback: the faults and refusals a
# real isnsd cannot be made to show (refused queries, silence, early close, unsolicited
# messages, a hanging deregistration, cancellation). Timed cases run on the autojump clock.

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
import trio

from iscsifs.engine.isns import (
    DEREGISTER_TIMEOUT,
    IsnsTimeout,
    IsnsUnreachable,
    isns_discover,
    isns_ping,
)
from iscsifs.proto.discovery import DiscoveredTarget, Portal
from iscsifs.proto.errors import RemoteProtocolError
from iscsifs.proto.isns import (
    DELIMITER,
    IsnsAttribute,
    IsnsError,
    IsnsFlags,
    IsnsFramer,
    IsnsFunction,
    IsnsMessage,
    IsnsStatus,
    IsnsTag,
    encode_message,
)

ME = "iqn.2024-01.test:initiator"
T1 = "iqn.2024-01.test:t1"
T2 = "iqn.2024-01.test:t2"


class _Close:
    """Responder result: close the connection instead of answering."""


CLOSE = _Close()
Reply = Sequence[IsnsMessage | bytes] | _Close | None


def reply(request: IsnsMessage, status: int = 0, *attrs: IsnsAttribute) -> IsnsMessage:
    return IsnsMessage(
        function=request.function | 0x8000,
        transaction_id=request.transaction_id,
        status=status,
        attributes=attrs,
        flags=IsnsFlags.SERVER,
    )


def s(tag: int, text: str) -> IsnsAttribute:
    return IsnsAttribute.string(tag, text)


def u(tag: int, number: int) -> IsnsAttribute:
    return IsnsAttribute.uint32(tag, number)


def ip(tag: int, address: str) -> IsnsAttribute:
    return IsnsAttribute.ip(tag, address)


def port(tag: int, number: int) -> IsnsAttribute:
    return IsnsAttribute.port(tag, number)


def pg(name: str, address: str, number: int, tag: int) -> list[IsnsAttribute]:
    return [
        s(IsnsTag.PG_ISCSI_NAME, name),
        ip(IsnsTag.PG_PORTAL_IP_ADDR, address),
        port(IsnsTag.PG_PORTAL_TCP_UDP_PORT, number),
        u(IsnsTag.PG_TAG, tag),
    ]


QUERY_ANSWER = [
    u(IsnsTag.ISCSI_NODE_TYPE, 1),
    DELIMITER,
    s(IsnsTag.ISCSI_NAME, T1),
    u(IsnsTag.ISCSI_NODE_TYPE, 1),
    s(IsnsTag.ISCSI_ALIAS, "one"),
    ip(IsnsTag.PORTAL_IP_ADDRESS, "127.0.0.1"),
    port(IsnsTag.PORTAL_TCP_UDP_PORT, 3260),
    *pg(T1, "127.0.0.1", 3260, 1),
    s(IsnsTag.ISCSI_NAME, T2),
    u(IsnsTag.ISCSI_NODE_TYPE, 1),
    ip(IsnsTag.PORTAL_IP_ADDRESS, "::1"),
    port(IsnsTag.PORTAL_TCP_UDP_PORT, 3261),
    *pg(T2, "::1", 3261, 5),
]
EXPECTED = (
    DiscoveredTarget(name=T1, portals=(Portal("127.0.0.1", 3260, 1),), alias="one"),
    DiscoveredTarget(name=T2, portals=(Portal("::1", 3261, 5),)),
)


def standard(request: IsnsMessage) -> Reply:
    """A well-behaved server: registration, query and deregistration all succeed."""
    if request.function == IsnsFunction.DEV_ATTR_QRY:
        return [reply(request, 0, *QUERY_ANSWER)]
    return [reply(request, 0)]


@dataclass
class FakeIsns:
    responder: Callable[[IsnsMessage], Reply]
    seen: list[IsnsMessage] = field(default_factory=list)
    connections: int = 0

    def functions(self) -> list[int]:
        return [m.function for m in self.seen]

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        framer = IsnsFramer()
        async with stream:
            while data := await stream.receive_some(65536):
                framer.receive_data(data)
                for message in framer:
                    self.seen.append(message)
                    answer = self.responder(message)
                    if isinstance(answer, _Close):
                        return
                    for item in answer or ():
                        wire = item if isinstance(item, bytes) else encode_message(item)
                        await stream.send_all(wire)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)


async def start(
    nursery: trio.Nursery, responder: Callable[[IsnsMessage], Reply]
) -> tuple[FakeIsns, int]:
    fake = FakeIsns(responder)
    number = await nursery.start(fake.serve)
    return fake, number


REG, QRY, NEXT, DEREG = (
    IsnsFunction.DEV_ATTR_REG,
    IsnsFunction.DEV_ATTR_QRY,
    IsnsFunction.DEV_GET_NEXT,
    IsnsFunction.DEV_DEREG,
)


async def test_discover_registers_queries_and_deregisters(nursery: trio.Nursery) -> None:
    fake, number = await start(nursery, standard)
    targets = await isns_discover("127.0.0.1", number, initiator_name=ME, timeout=5)
    assert targets == EXPECTED
    assert fake.functions() == [REG, QRY, DEREG]
    assert all(m.source == s(IsnsTag.ISCSI_NAME, ME) for m in fake.seen)
    assert fake.seen[2].operating == (s(IsnsTag.ISCSI_NAME, ME),)
    assert len({m.transaction_id for m in fake.seen}) == 3


async def test_query_no_such_entry_is_an_empty_result(nursery: trio.Nursery) -> None:
    def responder(request: IsnsMessage) -> Reply:
        status = IsnsStatus.NO_SUCH_ENTRY if request.function == QRY else 0
        return [reply(request, status)]

    fake, number = await start(nursery, responder)
    assert await isns_discover("127.0.0.1", number, initiator_name=ME) == ()
    assert fake.functions() == [REG, QRY, DEREG]


def walking_server(*, refuse_groups: bool) -> Callable[[IsnsMessage], Reply]:
    nodes = [T1, T2]
    groups = [pg(T1, "127.0.0.1", 3260, 1), pg(T1, "127.0.0.2", 3260, 2), pg(T2, "::1", 3261, 3)]

    def responder(request: IsnsMessage) -> Reply:
        if request.function == QRY:
            return [reply(request, IsnsStatus.MESSAGE_NOT_SUPPORTED)]
        if request.function != NEXT:
            return [reply(request, 0)]
        (first, *rest) = request.message_key
        if first.tag == IsnsTag.ISCSI_NAME:
            index = 0 if first.is_nil else nodes.index(first.as_string()) + 1
            if index == len(nodes):
                return [reply(request, IsnsStatus.NO_SUCH_ENTRY)]
            name = s(IsnsTag.ISCSI_NAME, nodes[index])
            return [reply(request, 0, name, DELIMITER, name, u(IsnsTag.ISCSI_NODE_TYPE, 1))]
        if refuse_groups:
            return [reply(request, IsnsStatus.INVALID_QUERY)]
        keys = [tuple(g[:3]) for g in groups]
        index = 0 if first.is_nil else keys.index((first, *rest)) + 1
        if index == len(groups):
            return [reply(request, IsnsStatus.NO_SUCH_ENTRY)]
        return [reply(request, 0, *groups[index][:3], DELIMITER, *groups[index])]

    return responder


async def test_refused_query_falls_back_to_get_next_walk(nursery: trio.Nursery) -> None:
    fake, number = await start(nursery, walking_server(refuse_groups=False))
    targets = await isns_discover("127.0.0.1", number, initiator_name=ME)
    assert targets == (
        DiscoveredTarget(
            name=T1, portals=(Portal("127.0.0.1", 3260, 1), Portal("127.0.0.2", 3260, 2))
        ),
        DiscoveredTarget(name=T2, portals=(Portal("::1", 3261, 3),)),
    )
    # reg, qry, 3 node steps (2 + end), 4 group steps (3 + end), dereg
    assert fake.functions() == [REG, QRY] + [NEXT] * 7 + [DEREG]


async def test_walk_without_portal_groups_lists_targets_without_portals(
    nursery: trio.Nursery,
) -> None:
    fake, number = await start(nursery, walking_server(refuse_groups=True))
    targets = await isns_discover("127.0.0.1", number, initiator_name=ME)
    assert targets == (
        DiscoveredTarget(name=T1, portals=()),
        DiscoveredTarget(name=T2, portals=()),
    )
    assert fake.functions()[-1] == DEREG


async def test_walk_that_does_not_advance_is_a_protocol_error(nursery: trio.Nursery) -> None:
    def responder(request: IsnsMessage) -> Reply:
        if request.function == QRY:
            return [reply(request, IsnsStatus.INVALID_QUERY)]
        if request.function == NEXT:
            name = s(IsnsTag.ISCSI_NAME, T1)
            return [reply(request, 0, name, DELIMITER, name)]
        return [reply(request, 0)]

    fake, number = await start(nursery, responder)
    with pytest.raises(RemoteProtocolError, match=re.escape(f"returned {T1!r} twice")):
        await isns_discover("127.0.0.1", number, initiator_name=ME)
    assert fake.functions()[-1] == DEREG


async def test_refused_registration_raises_and_skips_deregistration(
    nursery: trio.Nursery,
) -> None:
    fake, number = await start(
        nursery, lambda request: [reply(request, IsnsStatus.SOURCE_UNAUTHORIZED)]
    )
    with pytest.raises(IsnsError) as info:
        await isns_discover("127.0.0.1", number, initiator_name=ME)
    assert info.value.status == IsnsStatus.SOURCE_UNAUTHORIZED
    assert "Source Unauthorized" in str(info.value)
    assert fake.functions() == [REG]


async def test_query_error_still_deregisters(nursery: trio.Nursery) -> None:
    def responder(request: IsnsMessage) -> Reply:
        status = IsnsStatus.INTERNAL_ERROR if request.function == QRY else 0
        return [reply(request, status)]

    fake, number = await start(nursery, responder)
    with pytest.raises(IsnsError, match=r"status 11 \(Internal Error\)"):
        await isns_discover("127.0.0.1", number, initiator_name=ME)
    assert fake.functions() == [REG, QRY, DEREG]


async def test_server_closing_early_is_a_protocol_error(nursery: trio.Nursery) -> None:
    def responder(request: IsnsMessage) -> Reply:
        return CLOSE if request.function == QRY else [reply(request, 0)]

    fake, number = await start(nursery, responder)
    with pytest.raises(RemoteProtocolError, match="closed the connection before answering"):
        await isns_discover("127.0.0.1", number, initiator_name=ME)
    assert fake.functions() == [REG, QRY]


async def test_garbage_from_server_is_a_protocol_error(nursery: trio.Nursery) -> None:
    fake, number = await start(nursery, lambda request: [b"\x00\x02" + bytes(10)])
    with pytest.raises(RemoteProtocolError, match="version 2"):
        await isns_discover("127.0.0.1", number, initiator_name=ME)
    assert fake.functions() == [REG]


async def test_unsolicited_messages_are_skipped(nursery: trio.Nursery) -> None:
    def responder(request: IsnsMessage) -> Reply:
        scn = IsnsMessage(
            function=IsnsFunction.SCN,
            transaction_id=77,
            attributes=(s(IsnsTag.ISCSI_NAME, ME),),
            flags=IsnsFlags.SERVER,
        )
        stale = IsnsMessage(
            function=request.function | 0x8000,
            transaction_id=(request.transaction_id + 100) % 0x10000,
            status=IsnsStatus.INTERNAL_ERROR,
            flags=IsnsFlags.SERVER,
        )
        return [scn, stale, *standard(request)]  # type: ignore[misc]

    fake, number = await start(nursery, responder)
    assert await isns_discover("127.0.0.1", number, initiator_name=ME) == EXPECTED
    assert fake.functions() == [REG, QRY, DEREG]


async def test_endless_unsolicited_messages_are_bounded(nursery: trio.Nursery) -> None:
    def responder(request: IsnsMessage) -> Reply:
        other = IsnsMessage(function=IsnsFunction.ESI, transaction_id=1, flags=IsnsFlags.SERVER)
        return [other] * 100

    fake, number = await start(nursery, responder)
    with pytest.raises(RemoteProtocolError, match="messages but no DEV_ATTR_REG_RSP"):
        await isns_discover("127.0.0.1", number, initiator_name=ME)
    assert fake.functions() == [REG]


async def test_silent_server_times_out(nursery: trio.Nursery, autojump_clock: object) -> None:
    fake, number = await start(nursery, lambda request: None)
    start_time = trio.current_time()
    with pytest.raises(IsnsTimeout, match=r"did not answer within 7 s") as info:
        await isns_discover("127.0.0.1", number, initiator_name=ME, timeout=7)
    assert isinstance(info.value, TimeoutError)
    # The registration was never confirmed, so no deregistration was attempted or waited for.
    assert trio.current_time() - start_time == pytest.approx(7)
    assert fake.functions() == [REG]


async def test_hanging_deregistration_is_bounded(
    nursery: trio.Nursery, autojump_clock: object
) -> None:
    def responder(request: IsnsMessage) -> Reply:
        return None if request.function == DEREG else standard(request)

    fake, number = await start(nursery, responder)
    start_time = trio.current_time()
    assert await isns_discover("127.0.0.1", number, initiator_name=ME, timeout=60) == EXPECTED
    assert trio.current_time() - start_time == pytest.approx(DEREGISTER_TIMEOUT)
    assert fake.functions() == [REG, QRY, DEREG]


async def test_cancelled_discovery_still_deregisters(
    nursery: trio.Nursery, autojump_clock: object
) -> None:
    def responder(request: IsnsMessage) -> Reply:
        return None if request.function == QRY else [reply(request, 0)]

    fake, number = await start(nursery, responder)
    with trio.move_on_after(3) as scope:
        await isns_discover("127.0.0.1", number, initiator_name=ME, timeout=60)
    assert scope.cancelled_caught
    assert fake.functions() == [REG, QRY, DEREG]


async def test_unreachable_server() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connect is refused
        with pytest.raises(IsnsUnreachable) as info:
            await isns_discover("127.0.0.1", closed_port, initiator_name=ME)
    assert str(info.value) == f"iSNS server 127.0.0.1:{closed_port} unreachable: Connection refused"
    assert isinstance(info.value, ConnectionError)


async def test_ping(nursery: trio.Nursery) -> None:
    def responder(request: IsnsMessage) -> Reply:
        return [reply(request, IsnsStatus.NO_SUCH_ENTRY)]

    fake, number = await start(nursery, responder)
    assert await isns_ping("127.0.0.1", number, initiator_name=ME) == IsnsStatus.NO_SUCH_ENTRY
    (query,) = fake.seen
    assert query.function == QRY
    assert query.message_key == (s(IsnsTag.ISCSI_NAME, ME),)


async def test_ping_silent_server_times_out(nursery: trio.Nursery, autojump_clock: object) -> None:
    fake, number = await start(nursery, lambda request: None)
    with pytest.raises(IsnsTimeout):
        await isns_ping("127.0.0.1", number, initiator_name=ME, timeout=3)
    assert len(fake.seen) == 1


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
async def test_bad_timeout_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        await isns_discover("127.0.0.1", 1, initiator_name=ME, timeout=timeout)


async def test_missing_initiator_name_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="initiator's iSCSI name"):
        await isns_discover("127.0.0.1", 1, initiator_name="")
    with pytest.raises(ValueError, match="initiator's iSCSI name"):
        await isns_ping("127.0.0.1", 1, initiator_name="")
