# One TCP connection for an iSCSI session: connect with a timeout, a gathering send path and a
# recv_into receive path. It knows bytes, not PDUs.
#
# Sending is synchronous and happens in whichever task produced the PDUs: a FUSE handler that
# submits a READ writes the command to the socket itself, with no hop to another task (on these
# machines a hop costs ~44 us per request, see TESTBED.md). Only when the kernel's send buffer is
# full does the rest wait in a queue for the writer task, so the reader, which answers R2Ts and
# NOP-Ins, never blocks on a send. Order is kept because queueing and sending are one synchronous
# step. Receiving is done by the one reader task, straight into the view the framer chooses.
# Must not parse PDUs or keep session state.

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import deque
from collections.abc import Iterable

import trio

from ..proto.pdu import Buffer

IOV_MAX = 1024


class TransportError(OSError):
    """The connection could not be made, or broke; the message names the peer and the cause."""


class ConnectionClosed(TransportError):
    """The peer closed the connection."""


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno)) + " " + (e.strerror or "")
    return str(e) or type(e).__name__


def format_portal(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Transport:
    """A connected non-blocking TCP socket."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self._out: deque[memoryview] = deque()
        self._blocked = False
        self._kicked = False
        self._wake = trio.Event()
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_receive = trio.current_time()

    @classmethod
    async def connect(
        cls, host: str, port: int, *, timeout: float, source: str | None = None
    ) -> Transport:
        """Resolve and connect, trying each address in turn, all within `timeout` seconds."""
        peer = format_portal(host, port)
        try:
            with trio.fail_after(timeout):
                infos = await trio.socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
                last: BaseException | None = None
                for family, stype, proto, _name, addr in infos:
                    sock = socket.socket(family, stype, proto)
                    try:
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        if source is not None:
                            sock.bind((source, 0))
                        await _connect(sock, addr)
                    except OSError as e:
                        sock.close()
                        last = e
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return cls(sock, peer)
                raise TransportError(f"cannot connect to {peer}: {_describe(last or OSError())}")
        except trio.TooSlowError:
            raise TransportError(f"cannot connect to {peer}: no answer within {timeout:g} s") from None
        except socket.gaierror as e:
            raise TransportError(f"cannot resolve {host}: {e.strerror}") from None

    # -- sending ---------------------------------------------------------------------------

    def send(self, buffers: Iterable[Buffer]) -> None:
        """Queue buffers and send as much as the socket takes now, without waiting."""
        if self._closed:
            raise ConnectionClosed(f"connection to {self.peer} is closed")
        out = self._out
        for b in buffers:
            out.append(b if isinstance(b, memoryview) else memoryview(b))
        if not self._blocked:
            self._flush()

    def send_soon(self, buffers: Iterable[Buffer]) -> None:
        """Queue buffers for the writer task, which sends everything queued by then in one
        sendmsg when it next runs (in the same scheduler round as the tasks that queued).
        For commands issued while others are in flight: on loopback a send also pays for the
        receiving side's TCP work, so one syscall for a round's worth of commands is much
        cheaper than one each, and the pipeline is busy anyway."""
        if self._closed:
            raise ConnectionClosed(f"connection to {self.peer} is closed")
        out = self._out
        for b in buffers:
            out.append(b if isinstance(b, memoryview) else memoryview(b))
        if not self._kicked:
            self._kicked = True
            self._wake.set()

    def _flush(self) -> None:
        out = self._out
        sock = self.sock
        while out:
            batch = list(out) if len(out) <= IOV_MAX else [out[i] for i in range(IOV_MAX)]
            try:
                n = sock.sendmsg(batch)
            except BlockingIOError:
                self._blocked = True
                self._wake.set()
                return
            except OSError as e:
                self._closed = True
                raise TransportError(f"send to {self.peer} failed: {_describe(e)}") from None
            self.bytes_sent += n
            while n:
                head = out[0]
                if n >= len(head):
                    n -= len(head)
                    out.popleft()
                else:
                    out[0] = head[n:]
                    n = 0
        self._blocked = False

    @property
    def send_backlog(self) -> int:
        return sum(len(b) for b in self._out)

    async def run_writer(self) -> None:
        """Send what send_soon() queued and drain what the socket refused earlier. Runs for
        the life of the connection."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._kicked = False
            if not self._blocked:
                self._flush()
            while self._out:
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                except trio.ClosedResourceError:
                    raise ConnectionClosed(f"connection to {self.peer} is closed") from None
                self._blocked = False
                self._flush()

    # -- receiving -------------------------------------------------------------------------

    async def recv_into(self, view: memoryview, *, wait_first: bool = False) -> int:
        """Receive at least one byte into view; ConnectionClosed at end of stream.
        wait_first: the caller just found the socket empty, so skip the first recv attempt
        (it would only fail with EAGAIN again: one syscall per idle wait saved)."""
        sock = self.sock
        while True:
            if wait_first:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:
                    raise ConnectionClosed(f"connection to {self.peer} is closed") from None
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                wait_first = True
                continue
            except OSError as e:
                raise TransportError(f"receive from {self.peer} failed: {_describe(e)}") from None
            if n == 0:
                raise ConnectionClosed(f"{self.peer} closed the connection")
            self.bytes_received += n
            self.last_receive = trio.current_time()
            return n

    def recv_nowait(self, view: memoryview) -> int:
        """Receive what is already there without waiting: 0 when nothing is."""
        try:
            n = self.sock.recv_into(view)
        except BlockingIOError:
            return 0
        except OSError as e:
            raise TransportError(f"receive from {self.peer} failed: {_describe(e)}") from None
        if n == 0:
            raise ConnectionClosed(f"{self.peer} closed the connection")
        self.bytes_received += n
        self.last_receive = trio.current_time()
        return n

    def close(self) -> None:
        """Close now; tasks waiting on the socket wake with ClosedResourceError."""
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
        self._closed = True
        self._wake.set()

    def abort(self) -> None:
        """Close with a reset rather than a FIN: for a peer we no longer trust."""
        if self.sock.fileno() >= 0:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.close()

    @property
    def local_address(self) -> str:
        try:
            host, port = self.sock.getsockname()[:2]
        except OSError:
            return "?"
        return format_portal(host, port)


async def _connect(sock: socket.socket, addr: tuple) -> None:
    try:
        sock.connect(addr)
        return
    except BlockingIOError:
        pass
    await trio.lowlevel.wait_writable(sock)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
