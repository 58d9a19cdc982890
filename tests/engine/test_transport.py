"""Transport.recv_into over a real socket pair: with and without the first recv attempt."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from iscsifs.engine.transport import ConnectionClosed, Transport


def pair() -> tuple[Transport, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return Transport(a, "peer"), b


@pytest.mark.parametrize("wait_first", [False, True])
async def test_recv_into_returns_bytes_already_there(wait_first: bool) -> None:
    t, b = pair()
    b.sendall(b"hello")
    buf = bytearray(16)
    n = await t.recv_into(memoryview(buf), wait_first=wait_first)
    assert buf[:n] == b"hello" and t.bytes_received == 5
    t.close()
    b.close()


@pytest.mark.parametrize("wait_first", [False, True])
async def test_recv_into_waits_for_bytes_that_come_later(wait_first: bool) -> None:
    t, b = pair()
    buf = bytearray(16)
    got: list[int] = []

    async def receive() -> None:
        got.append(await t.recv_into(memoryview(buf), wait_first=wait_first))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing there yet: it waits
        b.sendall(b"late")
    assert buf[: got[0]] == b"late"
    t.close()
    b.close()


async def test_recv_into_end_of_stream_is_connection_closed() -> None:
    t, b = pair()
    b.close()
    with pytest.raises(ConnectionClosed):
        await t.recv_into(memoryview(bytearray(4)), wait_first=True)
    t.close()
