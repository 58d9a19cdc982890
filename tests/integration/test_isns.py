# iSNS discovery against the real open-isns server (isnsd) on loopback. The server comes from the
# testbed's `isnsd` fixture (tests/integration/conftest.py, scripts/testbed.py: isnsd on
# 127.0.0.1 with the TESTBED.md configuration; this file needs only its `port`). Until that
# fixture exists, `isns_server` starts a private isnsd the same way. Targets are registered here
# with isnsadm under names unique to each test, so a shared server does not matter.

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from iscsifs.engine.isns import (
    IsnsTimeout,
    IsnsUnreachable,
    _Client,
    _walk_targets,
    isns_discover,
    isns_ping,
)
from iscsifs.proto.discovery import DiscoveredTarget, Portal
from iscsifs.proto.isns import (
    IsnsFramer,
    IsnsFunction,
    IsnsMessage,
    IsnsStatus,
    IsnsTag,
    check_status,
    dev_attr_reg_initiator,
    dev_dereg,
    encode_message,
)

pytestmark = pytest.mark.integration

ISNSADM_TIMEOUT = 20


def _unique(prefix: str) -> str:
    return f"iqn.2024-01.test.iscsifs:{prefix}-{uuid.uuid4().hex[:10]}"


class Admin:
    """isnsadm pointed at the fixture's server (config per TESTBED.md: no security)."""

    def __init__(self, directory: Path, port: int) -> None:
        self.port = port
        self.config = directory / "isnsadm.conf"
        self.config.write_text(
            f"SourceName = {_unique('admin')}\nServerAddress = 127.0.0.1:{port}\nSecurity = 0\n"
        )

    async def run(self, *args: str) -> str:
        with trio.fail_after(ISNSADM_TIMEOUT):
            result = await trio.run_process(
                ["isnsadm", "-c", str(self.config), *args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        output = result.stdout.decode(errors="replace")
        assert result.returncode == 0, f"isnsadm {' '.join(args)}: {result.stderr!r} {output!r}"
        return output

    async def register_target(
        self, entity: str, name: str, portals: list[tuple[str, int, int]], alias: str = ""
    ) -> None:
        objects = [f"entity={entity}", f"target={name}" + (f",alias={alias}" if alias else "")]
        for address, number, tag in portals:
            host = f"[{address}]" if ":" in address else address
            objects += [f"portal={host}:{number}/tcp", f"pg,pgt={tag}"]
        await self.run("--register", *objects)

    async def deregister_entity(self, entity: str) -> None:
        await self.run("--deregister", f"eid={entity}")

    async def node_names(self) -> str:
        return await self.run("--list", "nodes")


def _isnsd_port(server: Any) -> int:
    return int(server.port)


@dataclass
class _PrivateIsnsd:
    port: int
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def isns_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The testbed's `isnsd`; failing that, a private isnsd per TESTBED.md, stopped by PID."""
    try:
        server = request.getfixturevalue("isnsd")
    except pytest.FixtureLookupError:
        server = None
    if server is not None:
        yield server
        return
    port = _free_port()
    config = tmp_path / "isnsd.conf"
    config.write_text(
        f"BindAddress = 127.0.0.1:{port}\nSecurity = 0\nDefaultDiscoveryDomain = 1\n"
        "SLPRegister = 0\nRegistrationPeriod = 0\nESIRetries = 0\n"
        # Private PID file and control socket: the defaults in /var/run clash with other isnsd.
        f"PIDFile = {tmp_path}/isnsd.pid\nControlSocket = {tmp_path}/isnsctl\n"
    )
    process = subprocess.Popen(
        ["isnsd", "-c", str(config), "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):  # readiness: the port accepts connections (at most ~10 s)
            assert process.poll() is None, "isnsd exited at start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"isnsd did not listen on 127.0.0.1:{port}")
        yield _PrivateIsnsd(port=port, process=process)
    finally:
        process.terminate()  # SIGTERM stops isnsd (TESTBED.md)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def admin(isns_server: Any, tmp_path: Path) -> Admin:
    return Admin(tmp_path, _isnsd_port(isns_server))


@pytest.fixture
async def two_targets(admin: Admin) -> Any:
    """Two targets in two entities: one with two portals (tags 1 and 2), one on IPv6 (tag 7)."""
    first, second = _unique("target-a"), _unique("target-b")
    entities = [f"ent-{uuid.uuid4().hex[:8]}", f"ent-{uuid.uuid4().hex[:8]}"]
    await admin.register_target(
        entities[0], first, [("127.0.0.1", 3260, 1), ("127.0.0.2", 3261, 2)], alias="disk-a"
    )
    await admin.register_target(entities[1], second, [("::1", 3262, 7)])
    expected = {
        first: DiscoveredTarget(
            name=first,
            portals=(Portal("127.0.0.1", 3260, 1), Portal("127.0.0.2", 3261, 2)),
            alias="disk-a",
        ),
        second: DiscoveredTarget(name=second, portals=(Portal("::1", 3262, 7),)),
    }
    yield expected
    for entity in entities:
        await admin.deregister_entity(entity)


def _same_targets(
    found: tuple[DiscoveredTarget, ...], expected: dict[str, DiscoveredTarget]
) -> None:
    mine = {t.name: t for t in found if t.name in expected}
    assert mine.keys() == expected.keys()
    for name, target in expected.items():
        # iSNS does not promise an order of portals: compare them as sets, exactly.
        assert set(mine[name].portals) == set(target.portals)
        assert len(mine[name].portals) == len(target.portals)
        assert mine[name].alias == target.alias


async def test_discovers_registered_targets_with_portals_and_tags(
    isns_server: Any, admin: Admin, two_targets: dict[str, DiscoveredTarget]
) -> None:
    me = _unique("initiator")
    found = await isns_discover(
        "127.0.0.1", _isnsd_port(isns_server), initiator_name=me, timeout=10
    )
    _same_targets(found, two_targets)
    # Only targets come back, and our own registration was removed again (DevDereg).
    assert me not in {t.name for t in found}
    assert me not in await admin.node_names()


async def test_get_next_walk_finds_the_same_targets(
    isns_server: Any, two_targets: dict[str, DiscoveredTarget]
) -> None:
    # The fallback used when a server refuses DevAttrQry, run against the real server.
    me = _unique("initiator")
    port = _isnsd_port(isns_server)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        client = _Client(stream, f"127.0.0.1:{port}")
        reg = await client.call(
            lambda transaction_id: dev_attr_reg_initiator(me, transaction_id=transaction_id)
        )
        check_status(reg, IsnsFunction.DEV_ATTR_REG)
        found = await _walk_targets(client, me)
        dereg = await client.call(
            lambda transaction_id: dev_dereg(me, me, transaction_id=transaction_id)
        )
        check_status(dereg, IsnsFunction.DEV_DEREG)
    _same_targets(found, two_targets)


async def test_registration_with_entity_id_and_deregistration(
    isns_server: Any, admin: Admin
) -> None:
    me, entity = _unique("initiator"), f"ent-{uuid.uuid4().hex[:8]}"
    port = _isnsd_port(isns_server)
    framer = IsnsFramer()

    async def call(stream: trio.SocketStream, message: IsnsMessage) -> IsnsMessage:
        await stream.send_all(encode_message(message))
        while (answer := framer.next_message()) is None:
            data = await stream.receive_some(65536)
            assert data, "isnsd closed the connection"
            framer.receive_data(data)
        return answer

    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            reg = await call(
                stream, dev_attr_reg_initiator(me, transaction_id=1, entity_id=entity, alias="x")
            )
            check_status(reg, IsnsFunction.DEV_ATTR_REG)
            (key,) = reg.message_key
            assert key.tag == IsnsTag.ENTITY_IDENTIFIER and key.as_string() == entity
            assert me in await admin.node_names()
            assert entity in await admin.run("--list", "entities")
            dereg = await call(stream, dev_dereg(me, me, transaction_id=2))
            check_status(dereg, IsnsFunction.DEV_DEREG)
    assert me not in await admin.node_names()
    # RFC 4171 5.6.5.4: an entity left without nodes and portals goes too.
    assert entity not in await admin.run("--list", "entities")


async def test_ping_answers(isns_server: Any) -> None:
    status = await isns_ping(
        "127.0.0.1", _isnsd_port(isns_server), initiator_name=_unique("initiator"), timeout=10
    )
    assert status in (IsnsStatus.SUCCESSFUL, IsnsStatus.NO_SUCH_ENTRY)


async def test_unreachable_server_fails_fast_with_the_os_reason() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = sock.getsockname()[1]
        # A long timeout: the refusal must surface as IsnsUnreachable, not as a timeout.
        with pytest.raises(IsnsUnreachable, match="Connection refused"):
            await isns_discover("127.0.0.1", port, initiator_name=_unique("i"), timeout=600)


async def test_server_that_never_answers_times_out(autojump_clock: Any) -> None:
    received = bytearray()
    accepted = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        accepted.set()
        async with stream:
            while data := await stream.receive_some():
                received.extend(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(IsnsTimeout, match=f"127.0.0.1:{port} did not answer within 5 s"):
            await isns_discover("127.0.0.1", port, initiator_name=_unique("i"), timeout=5)
        nursery.cancel_scope.cancel()
    assert accepted.is_set()
    # What the silent server got was our DevAttrReg (function 0x0001), nothing after it.
    assert bytes(received[:4]) == b"\x00\x01\x00\x01"


def _pcap(segments: list[tuple[bool, bytes]], server_port: int) -> bytes:
    """A pcap (LINKTYPE_RAW, IPv4) of one TCP connection carrying `segments` ((from_client,
    payload) in wire order), with a handshake and per-direction sequence numbers, so that
    tshark reassembles and dissects it like a live capture."""
    client, server = (b"\x7f\x00\x00\x01", 40000), (b"\x7f\x00\x00\x01", server_port)
    seq = {True: 1000, False: 5000}

    def packet(from_client: bool, flags: int, payload: bytes = b"") -> bytes:
        (src, sport), (dst, dport) = (client, server) if from_client else (server, client)
        tcp = struct.pack(
            "!HHIIHHHH",
            sport,
            dport,
            seq[from_client],
            seq[not from_client] if flags & 0x10 else 0,
            (5 << 12) | flags,
            65535,
            0,
            0,
        )
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst
        )
        words = struct.unpack("!10H", header)
        total = sum(words)
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
        header = header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]
        return header + tcp + payload

    frames = []
    seq[True] -= 1
    frames.append(packet(True, 0x02))  # SYN
    seq[True] += 1
    seq[False] -= 1
    frames.append(packet(False, 0x12))  # SYN+ACK
    seq[False] += 1
    frames.append(packet(True, 0x10))  # ACK
    for from_client, payload in segments:
        frames.append(packet(from_client, 0x18, payload))  # PSH+ACK
        seq[from_client] += len(payload)
    out = struct.pack("!IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    for number, frame in enumerate(frames):
        out += struct.pack("!IIII", number, 0, len(frame), len(frame)) + frame
    return out


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
async def test_exchange_decodes_as_isns_without_malformed_packets(
    isns_server: Any, two_targets: dict[str, DiscoveredTarget], tmp_path: Path
) -> None:
    # The real exchange with isnsd, recorded by a relay and written as a pcap: deterministic,
    # unlike a live capture on lo (dumpcap drops what it has not flushed when stopped).
    port = _isnsd_port(isns_server)
    segments: list[tuple[bool, bytes]] = []

    async def pump(source: trio.SocketStream, sink: trio.SocketStream, from_client: bool) -> None:
        while data := await source.receive_some():
            segments.append((from_client, data))
            await sink.send_all(data)
        await sink.send_eof()

    async def relay(downstream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", port)
        async with downstream, upstream, trio.open_nursery() as inner:
            inner.start_soon(pump, downstream, upstream, True)
            inner.start_soon(pump, upstream, downstream, False)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
        relay_port = listeners[0].socket.getsockname()[1]
        found = await isns_discover(
            "127.0.0.1", relay_port, initiator_name=_unique("initiator"), timeout=10
        )
        nursery.cancel_scope.cancel()
    _same_targets(found, two_targets)
    capture = tmp_path / "isns.pcap"
    capture.write_bytes(_pcap(segments, port))

    def read(*args: str) -> str:
        done = subprocess.run(
            ["tshark", "-r", str(capture), "-d", f"tcp.port=={port},isns", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    functions = [
        int(f, 0) for f in read("-Y", "isns", "-T", "fields", "-e", "isns.functionid").split()
    ]
    assert functions == [0x0001, 0x8001, 0x0002, 0x8002, 0x0004, 0x8004]
    names = read("-Y", "isns.functionid == 0x8002", "-T", "fields", "-e", "isns.iscsi_name")
    assert set(two_targets) <= set(names.strip().replace(",", " ").split())
    bad = read("-Y", "_ws.malformed || _ws.expert.severity >= warning")
    assert bad.strip() == ""
