# A small iSCSI target written for the engine tests: login (no authentication, CHAP MD5 one-way
# and mutual), operational negotiation, and a full feature phase over in-memory disks, plus the
# faults a real target cannot be made to show on demand (silence, resets mid-transfer, bad
# digests, Async Messages, Rejects, commands that never finish, redirects, slow logins).
#
# It speaks through iscsifs.proto.pdu only (encode / Framer / decode_frame), never through the
# initiator's Connection, so a bug there cannot hide itself by agreeing with its twin. It is a
# test double, not a target: one connection per session, DataPDUInOrder and
# DataSequenceInOrder Yes, MaxOutstandingR2T 1. Every protocol violation it notices in what the
# initiator sends is appended to `errors` (tests assert it stays empty) rather than raised.
#
# Use: `connector = fake.connect` for Session(connector=...), run inside `async with
# fake.serving():`. Each dial makes a socket.socketpair(): one end becomes the initiator's
# Transport, the fake serves the other with trio. Fault hooks are plain attributes; the one-shot
# ones count down as they fire. The small helpers at the end set up Sessions against the fake.

from __future__ import annotations

import dataclasses
import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from iscsifs import scsi
from iscsifs.engine.session import Listener, Session, SessionSettings, State, Timeouts
from iscsifs.engine.transport import Transport, TransportError, format_portal
from iscsifs.proto import pdu as P
from iscsifs.proto import serial
from iscsifs.proto.chap import ChapCredentials, Secret
from iscsifs.proto.errors import IscsiError
from iscsifs.proto.text import (
    KEYS,
    NOT_UNDERSTOOD,
    KeyKind,
    answer_offer,
    decode_text,
    encode_text,
    format_binary,
    parse_binary,
    parse_list,
    parse_number,
)

TARGET = "iqn.2024-01.test.fake:disk"
INITIATOR = "iqn.2024-01.test.fake:initiator"
RESERVED = serial.RESERVED_TAG
MEDIA_OPCODES = frozenset({0x28, 0x2A, 0x88, 0x8A})  # READ/WRITE (10)/(16)
WRITE_OPCODES = frozenset({0x2A, 0x8A})
GOOD, CHECK_CONDITION = 0x00, 0x02


# ---------------------------------------------------------------------------------------------
# Logical units
# ---------------------------------------------------------------------------------------------


class Disk:
    """A direct-access LUN backed by a bytearray. Its content starts as a pattern that differs
    in every 4-byte word, so a read from the wrong place cannot pass for the right one."""

    device_type = 0x00

    def __init__(self, blocks: int = 2048, block_size: int = 512, *, serial_no: str = "FAKE0001",
                 unmap: bool = True, max_transfer_blocks: int = 0) -> None:
        self.block_size = block_size
        self.blocks = blocks
        self.serial = serial_no
        self.unmap = unmap
        self.max_transfer_blocks = max_transfer_blocks
        size = blocks * block_size
        self.data = bytearray(b"".join(struct.pack(">I", i * 2654435761 & 0xFFFFFFFF)
                                       for i in range(size // 4)))

    @property
    def size(self) -> int:
        return self.blocks * self.block_size


class Controller:
    """LUN 0 as tgtd has it: a storage array controller (type 0x0C) with no medium."""

    device_type = 0x0C


def fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    """Fixed format sense data (SPC-4 4.5.3), current error, 18 bytes."""
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


class _Check(Exception):
    """A SCSI command ends in CHECK CONDITION with this sense."""

    def __init__(self, key: int, asc: int, ascq: int = 0) -> None:
        super().__init__(f"sense {key:x}/{asc:02x}/{ascq:02x}")
        self.sense = fixed_sense(key, asc, ascq)


# ---------------------------------------------------------------------------------------------
# Records the tests look at
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoginRecord:
    time: float
    portal: str
    isid: bytes
    tsih_requested: int
    tsih: int
    conn: int
    auth: str


@dataclass(frozen=True, kw_only=True)
class CommandRecord:
    time: float
    conn: int
    lun: int
    cdb: bytes
    cmdsn: int
    itt: int
    length: int

    @property
    def opcode(self) -> int:
        return self.cdb[0]

    @property
    def lba_range(self) -> tuple[int, int]:
        return _lba_range(self.cdb)


@dataclass(frozen=True)
class Redirect:
    host: str
    port: int
    permanent: bool = False


def _lba_range(cdb: bytes) -> tuple[int, int]:
    """(first LBA, block count) of a READ/WRITE (10)/(16) CDB."""
    if cdb[0] in (0x28, 0x2A):
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
    return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")


# ---------------------------------------------------------------------------------------------
# The target
# ---------------------------------------------------------------------------------------------


class FakeTarget:
    """Configuration, fault hooks, and what was seen. See the module comment for use."""

    def __init__(
        self,
        name: str = TARGET,
        *,
        luns: dict[int, Disk | Controller] | None = None,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        erl: int = 0,
        digests: bool = True,
        mrdsl: int = 65536,
        max_burst: int = 262144,
        first_burst: int = 65536,
        initial_r2t: bool = False,
        immediate_data: bool = True,
        window: int = 64,
    ) -> None:
        self.name = name
        self.luns: dict[int, Disk | Controller] = (
            luns if luns is not None else {0: Controller(), 1: Disk()})
        # Security: what the initiator must prove (user, secret), and what we prove back.
        self.chap = chap
        self.mutual = mutual
        # What we accept in operational negotiation (answers are the RFC 7143 results).
        self.erl = erl
        self.digests = digests
        self.mrdsl = mrdsl
        self.max_burst = max_burst
        self.first_burst = first_burst
        self.initial_r2t = initial_r2t
        self.immediate_data = immediate_data
        self.window = window  # commands the initiator may have outstanding (MaxCmdSN)

        # -- fault hooks (the counters are one-shot: they count down as they fire) --
        self.refuse = False  # the connector raises TransportError ("connection refused")
        self.login_silent = False  # read login requests, never answer
        self.login_delay = 0.0  # seconds before each login response
        self.redirects: dict[tuple[str, int], Redirect] = {}  # dialled portal -> where to go
        self.close_after_commands: int | None = None  # drop when command N+1 arrives
        self.drop_mid_transfer = 0  # reads: half the Data-In, then drop; writes: at Data-Out
        self.reset = False  # drops are resets (SO_LINGER 0) rather than FINs
        self.silent_after_pdus: int | None = None  # answer nothing after N PDUs
        self.corrupt: tuple[str, int] | None = None  # ("header"|"data", DataSN) of next READ
        self.corrupt_skip = 0  # READs to let through before `corrupt` applies
        self.reject: Callable[[P.ScsiCommand], int | None] | None = None  # -> Reject reason
        self.hold_next = 0  # READ/WRITE commands to keep without an answer
        self.gate = 0  # hold READ/WRITEs until this many are held, then answer them all
        self.abort_response: int | None = P.TmfResponse.COMPLETE  # None: ignore ABORT TASK
        self.lun_reset_response: int | None = P.TmfResponse.COMPLETE  # None: ignore
        self.unit_attention: tuple[int, int] | None = None  # next command: UA asc/ascq
        self.trickle = False  # send every byte with a separate send
        self.trickle_delay = 0.0  # with trickle: seconds between two bytes (1.0: a byte a second)
        self.empty_data_in = 0  # READs that start with a 0-length Data-In (RFC 7143 11.7.7)
        self.after_next_answer: Any = None  # a PDU or raw bytes sent in the same segment as
        # the answer to the next READ/WRITE (hostile input right behind good data)

        # -- what was seen --
        self.dials: list[tuple[str, int]] = []
        self.connections: list[FakeConnection] = []
        self.logins: list[LoginRecord] = []
        self.commands: list[CommandRecord] = []
        self.write_status: list[tuple[int, int, int]] = []  # (lun, lba, blocks) given GOOD
        self.errors: list[str] = []
        self.max_outstanding = 0
        self._next_tsih = 1
        self._nursery: trio.Nursery | None = None

    # -- running -----------------------------------------------------------------------------

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeTarget]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()
                self._nursery = None

    async def connect(self, host: str, port: int, *, timeout: float) -> Transport:
        """The Session's connector: a socketpair whose far end this target serves."""
        self.dials.append((host, port))
        portal = format_portal(host, port)
        if self.refuse:
            await trio.lowlevel.checkpoint()
            raise TransportError(f"cannot connect to {portal}: ECONNREFUSED Connection refused")
        assert self._nursery is not None, "use `async with fake.serving():`"
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        conn = FakeConnection(self, theirs, host, port, len(self.connections) + 1)
        self.connections.append(conn)
        self._nursery.start_soon(conn.serve)
        await trio.lowlevel.checkpoint()
        return Transport(ours, portal)

    # -- driving from a test -------------------------------------------------------------------

    @property
    def current(self) -> FakeConnection:
        """The newest connection in the full feature phase."""
        for conn in reversed(self.connections):
            if conn.full_feature and not conn.closed:
                return conn
        raise AssertionError("no connection in the full feature phase")

    async def release(self) -> None:
        """Answer every held command on every open connection."""
        for conn in list(self.connections):
            if not conn.closed:
                await conn.release()

    async def send_async(self, event: int, *, parameter1: int = 0, parameter2: int = 0,
                         parameter3: int = 0, sense: bytes = b"", lun: int = 0) -> None:
        """Send an Asynchronous Message (RFC 7143 11.9) on the current connection."""
        await self.current.send_async(event, parameter1=parameter1, parameter2=parameter2,
                                      parameter3=parameter3, sense=sense, lun=lun)

    @property
    def outstanding(self) -> int:
        return sum(len(c.tasks) for c in self.connections if not c.closed)

    def disk(self, lun: int = 1) -> Disk:
        d = self.luns[lun]
        assert isinstance(d, Disk)
        return d

    def _new_tsih(self) -> int:
        tsih = self._next_tsih
        self._next_tsih += 1
        return tsih

    def _inflight_writes(self) -> list[tuple[FakeConnection, _Task]]:
        return [(c, t) for c in self.connections if not c.closed for t in c.tasks.values()
                if t.cdb[0] in WRITE_OPCODES]


@dataclass(eq=False)
class _Task:
    """A command the target has received and not yet answered."""

    cmd: P.ScsiCommand
    lun: int
    buf: bytearray = field(default_factory=bytearray)
    got: int = 0  # bytes of write data received, in order
    unsolicited: bool = False  # unsolicited Data-Out still to come
    ttt: int = RESERVED  # the open R2T's Target Transfer Tag
    r2t_end: int = 0
    r2tsn: int = 0
    held: bool = False
    drop_on_data: bool = False

    @property
    def cdb(self) -> bytes:
        return self.cmd.cdb

    @property
    def itt(self) -> int:
        return self.cmd.itt


class _Drop(Exception):
    """Stop serving this connection (after flushing what is queued)."""


class FakeConnection:
    """One TCP connection of the fake: login, then the full feature phase."""

    def __init__(self, target: FakeTarget, sock: socket.socket, host: str, port: int,
                 number: int) -> None:
        self.target = target
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.stream = trio.SocketStream(self.sock)
        self.host, self.port = host, port
        self.portal = format_portal(host, port)
        self.number = number
        self.framer = P.Framer(max_data_segment=8192)
        self.scope = trio.CancelScope()
        self.send_lock = trio.Lock()
        self.out: list[bytes] = []
        self.closed = False
        self.silent = False
        self.full_feature = False
        self.isid = b""
        self.tsih = 0
        self.statsn = 0x1000
        self.exp_cmdsn = 0
        self.max_cmdsn_sent = 0
        self.hd = self.dd = False
        self.erl = 0
        self.initiator_mrdsl = 8192
        self.max_burst = target.max_burst
        self.first_burst = target.first_burst
        self.initial_r2t = target.initial_r2t
        self.immediate_data = target.immediate_data
        self.tasks: dict[int, _Task] = {}
        self.sent_data_in: dict[int, list[P.DataIn]] = {}  # ITT -> its Data-In (for SNACK)
        self.pdus = 0
        self.commands = 0
        self.next_ttt = 0x100
        # What arrived, for assertions (arrivals[i] is when received[i] came).
        self.received: list[Any] = []
        self.arrivals: list[float] = []
        self.tmfs: list[tuple[float, P.TaskMgmtRequest]] = []
        self.snacks: list[P.SnackRequest] = []
        self.pings: list[float] = []
        self.logouts: list[P.LogoutRequest] = []
        self.texts: list[P.TextRequest] = []
        self.closed_at: float | None = None

    # -- plumbing ------------------------------------------------------------------------------

    async def serve(self) -> None:
        with self.scope:
            try:
                if await self._login():
                    await self._full_feature()
            except _Drop:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except IscsiError as e:
                self.target.errors.append(f"conn {self.number}: {e}")
            finally:
                if not self.silent:
                    with trio.CancelScope(shield=True):
                        try:
                            await self._flush()
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                self._close_now()

    def _close_now(self) -> None:
        if not self.closed:
            self.closed = True
            self.closed_at = trio.current_time()
            if self.target.reset:
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.sock.close()
        self.tasks.clear()

    async def drop(self) -> None:
        """Close the connection now (from a test), discarding its tasks; a reset when the
        target's `reset` is set."""
        self._close_now()
        self.scope.cancel()
        await trio.lowlevel.checkpoint()

    def queue(self, pdu: Any, corrupt: str | None = None) -> None:
        raw = bytearray(P.encode(pdu, header_digest=self.hd, data_digest=self.dd))
        if corrupt == "header":
            raw[P.BHS_LEN] ^= 0xFF  # first byte of the header digest
        elif corrupt == "data":
            raw[-1] ^= 0xFF  # last byte of the data digest
        self.out.append(bytes(raw))

    async def _flush(self) -> None:
        if self.silent or self.closed:
            self.out.clear()
            return
        async with self.send_lock:
            while self.out:
                data = b"".join(self.out)
                self.out.clear()
                if self.target.trickle:
                    for i in range(len(data)):
                        if self.closed:
                            return
                        await self.stream.send_all(data[i : i + 1])
                        await trio.sleep(self.target.trickle_delay)
                        await trio.sleep(0)
                else:
                    await self.stream.send_all(data)

    async def _read_frame(self) -> P.Frame | None:
        while True:
            frame = self.framer.next_frame()
            if frame is not None:
                return frame
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            self.framer.receive_data(data)

    def _error(self, what: str) -> None:
        self.target.errors.append(f"conn {self.number}: {what}")

    def _next_statsn(self) -> int:
        sn = self.statsn
        self.statsn = serial.add(sn, 1)
        return sn

    def _window(self) -> tuple[int, int]:
        """ExpCmdSN and MaxCmdSN to report. The window counts outstanding commands, so it closes
        while commands are held (and MaxCmdSN never goes backwards)."""
        room = max(0, self.target.window - len(self.tasks))
        max_cmdsn = serial.add(self.exp_cmdsn, room - 1)
        if self.full_feature and serial.lt(max_cmdsn, self.max_cmdsn_sent):
            max_cmdsn = self.max_cmdsn_sent
        self.max_cmdsn_sent = max_cmdsn
        return self.exp_cmdsn, max_cmdsn

    # -- login ---------------------------------------------------------------------------------

    async def _login(self) -> bool:
        t = self.target
        chap_id = 0
        challenge = b""
        stage = "start"  # start -> chap_a -> chap_r -> operational
        auth = "None"
        while True:
            await self._flush()  # the answer to the previous request
            frame = await self._read_frame()
            if frame is None:
                return False
            req = P.decode_frame(frame)
            if not isinstance(req, P.LoginRequest):
                self._error(f"{type(req).__name__} during login")
                return False
            if t.login_silent:
                continue
            if t.login_delay:
                await trio.sleep(t.login_delay)
            pairs = dict(decode_text(req.data))
            if stage == "start":
                self.isid = req.isid
                self.exp_cmdsn = req.cmdsn
                redirect = t.redirects.get((self.host, self.port))
                if redirect is not None:
                    address = f"{format_portal(redirect.host, redirect.port)},1"
                    self._login_response(req, transit=False, status=(1, 2 if redirect.permanent
                                                                      else 1),
                                         pairs=[("TargetAddress", address)])
                    raise _Drop
                if pairs.get("TargetName") != t.name:
                    self._login_response(req, transit=False, status=(2, 3))
                    raise _Drop
            if req.csg == P.Stage.SECURITY:
                answer: list[tuple[str, str]] = []
                if stage == "start":
                    methods = parse_list(pairs.get("AuthMethod", "None"))
                    answer.append(("TargetPortalGroupTag", "1"))
                    if t.chap is not None:
                        if "CHAP" not in methods:
                            self._login_response(req, transit=False, status=(2, 1))
                            raise _Drop
                        answer.append(("AuthMethod", "CHAP"))
                        auth, stage = "CHAP", "chap_a"
                        self._login_response(req, transit=False, pairs=answer)
                        continue
                    answer.append(("AuthMethod", "None" if "None" in methods else "Reject"))
                    stage = "operational"
                    self._login_response(req, transit=req.transit, pairs=answer)
                    continue
                if stage == "chap_a":
                    if "5" not in parse_list(pairs.get("CHAP_A", "")):
                        self._login_response(req, transit=False, pairs=[("CHAP_A", "Reject")])
                        continue
                    chap_id = 7 + self.number
                    challenge = hashlib.sha256(b"challenge%d" % self.number).digest()[:24]
                    stage = "chap_r"
                    self._login_response(req, transit=False, pairs=[
                        ("CHAP_A", "5"), ("CHAP_I", str(chap_id)),
                        ("CHAP_C", format_binary(challenge))])
                    continue
                if stage == "chap_r":
                    assert t.chap is not None
                    user, secret = t.chap
                    want = hashlib.md5(bytes([chap_id]) + secret.encode() + challenge).digest()
                    try:
                        got = parse_binary(pairs.get("CHAP_R", ""))
                    except ValueError:
                        got = b""
                    if pairs.get("CHAP_N") != user or got != want:
                        self._login_response(req, transit=False, status=(2, 1))
                        raise _Drop
                    proof: list[tuple[str, str]] = []
                    if "CHAP_C" in pairs and t.mutual is not None:
                        m_user, m_secret = t.mutual
                        their_id = parse_number(pairs["CHAP_I"])
                        their_c = parse_binary(pairs["CHAP_C"])
                        r = hashlib.md5(bytes([their_id]) + m_secret.encode() + their_c).digest()
                        proof = [("CHAP_N", m_user), ("CHAP_R", format_binary(r))]
                    elif "CHAP_C" in pairs:  # challenged, but no mutual secret: refuse
                        self._login_response(req, transit=False, status=(2, 1))
                        raise _Drop
                    stage = "operational"
                    self._login_response(req, transit=req.transit, pairs=proof)
                    continue
                self._error(f"security-stage login request in stage {stage}")
                return False
            # Operational stage.
            if stage in ("chap_a", "chap_r"):
                self._error("initiator skipped CHAP")
                return False
            answers = self._negotiate(list(pairs.items()))
            if not (req.transit and req.nsg == P.Stage.FULL_FEATURE):
                self._login_response(req, transit=False, pairs=answers)
                stage = "operational"
                continue
            if req.tsih == 0:
                # A new session; an old one with the same ISID is reinstated (RFC 7143 6.3.5):
                # its connections are closed and their tasks forgotten.
                for other in t.connections:
                    if other is not self and other.isid == self.isid and not other.closed:
                        await other.drop()
                self.tsih = t._new_tsih()
            else:
                self.tsih = req.tsih
            self._login_response(req, transit=True, pairs=answers, final=True)
            t.logins.append(LoginRecord(time=trio.current_time(), portal=self.portal,
                                        isid=req.isid, tsih_requested=req.tsih, tsih=self.tsih,
                                        conn=self.number, auth=auth))
            await self._flush()
            self.framer = P.Framer(header_digest=self.hd, data_digest=self.dd,
                                   max_data_segment=t.mrdsl)
            self.full_feature = True
            return True

    def _login_response(self, req: P.LoginRequest, *, transit: bool,
                        pairs: list[tuple[str, str]] | None = None,
                        status: tuple[int, int] = (0, 0), final: bool = False) -> None:
        exp, mx = self.exp_cmdsn, serial.add(self.exp_cmdsn, self.target.window - 1)
        self.out.append(P.encode(P.LoginResponse(
            transit=transit, csg=req.csg, nsg=req.nsg, isid=req.isid,
            tsih=self.tsih if final else req.tsih, itt=req.itt, statsn=self._next_statsn(),
            exp_cmdsn=exp, max_cmdsn=mx, status_class=status[0], status_detail=status[1],
            data=encode_text(pairs or []))))
        self.max_cmdsn_sent = mx

    def _negotiate(self, offers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        t = self.target
        ours = {
            "HeaderDigest": "CRC32C,None" if t.digests else "None",
            "DataDigest": "CRC32C,None" if t.digests else "None",
            "MaxBurstLength": str(t.max_burst),
            "FirstBurstLength": str(t.first_burst),
            "InitialR2T": "Yes" if t.initial_r2t else "No",
            "ImmediateData": "Yes" if t.immediate_data else "No",
            "MaxOutstandingR2T": "1",
            "ErrorRecoveryLevel": str(t.erl),
            "MaxConnections": "1",
            "DefaultTime2Wait": "2",
            "DefaultTime2Retain": "20",
        }
        answers: list[tuple[str, str]] = []
        for key, value in offers:
            spec = KEYS.get(key)
            if spec is None:
                answers.append((key, NOT_UNDERSTOOD))
                continue
            if spec.kind is KeyKind.DECLARATIVE:
                if key == "MaxRecvDataSegmentLength":
                    self.initiator_mrdsl = parse_number(value)
                continue
            result = answer_offer(spec, value, ours.get(key, spec.default or ""))
            answers.append((key, result))
            if key == "HeaderDigest":
                self.hd = result == "CRC32C"
            elif key == "DataDigest":
                self.dd = result == "CRC32C"
            elif key == "ErrorRecoveryLevel":
                self.erl = parse_number(result)
            elif key == "MaxBurstLength":
                self.max_burst = parse_number(result)
            elif key == "FirstBurstLength":
                self.first_burst = parse_number(result)
            elif key == "InitialR2T":
                self.initial_r2t = result == "Yes"
            elif key == "ImmediateData":
                self.immediate_data = result == "Yes"
        answers.append(("MaxRecvDataSegmentLength", str(t.mrdsl)))
        return answers

    # -- full feature phase ---------------------------------------------------------------------

    async def _full_feature(self) -> None:
        t = self.target
        while True:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return
            try:
                self.framer.receive_data(data)
            except IscsiError as e:
                self._error(f"cannot frame what the initiator sent: {e}")
                return
            while (frame := self.framer.next_frame()) is not None:
                if self.silent:  # a hung target: what arrives is drained, never answered
                    self._record(P.decode_frame(frame))
                    continue
                self.pdus += 1
                self._handle(frame)
                if t.silent_after_pdus is not None and self.pdus >= t.silent_after_pdus:
                    t.silent_after_pdus = None
                    await self._flush()
                    self.silent = True
            await self._flush()

    def _record(self, pdu: Any) -> None:
        self.received.append(pdu)
        self.arrivals.append(trio.current_time())

    def _handle(self, frame: P.Frame) -> None:
        if not frame.data_digest_ok:
            self._error("data digest error in a PDU from the initiator")
            raise _Drop
        pdu = P.decode_frame(frame)
        self._record(pdu)
        if isinstance(pdu, P.ScsiCommand):
            self._on_command(pdu)
        elif isinstance(pdu, P.DataOut):
            self._on_data_out(pdu)
        elif isinstance(pdu, P.NopOut):
            self._on_nop_out(pdu)
        elif isinstance(pdu, P.TaskMgmtRequest):
            self._on_tmf(pdu)
        elif isinstance(pdu, P.SnackRequest):
            self._on_snack(pdu)
        elif isinstance(pdu, P.TextRequest):
            self._take_cmdsn(pdu.cmdsn, pdu.immediate)
            self.texts.append(pdu)
            exp, mx = self._window()
            self.queue(P.TextResponse(final=True, itt=pdu.itt, ttt=RESERVED,
                                      statsn=self._next_statsn(), exp_cmdsn=exp, max_cmdsn=mx))
        elif isinstance(pdu, P.LogoutRequest):
            self.logouts.append(pdu)
            exp, mx = self._window()
            self.queue(P.LogoutResponse(response=0, itt=pdu.itt, statsn=self._next_statsn(),
                                        exp_cmdsn=exp, max_cmdsn=mx, time2wait=0,
                                        time2retain=0))
            raise _Drop
        else:
            self._error(f"unexpected {type(pdu).__name__} in the full feature phase")

    def _take_cmdsn(self, cmdsn: int, immediate: bool) -> None:
        if immediate:
            return
        if serial.gt(cmdsn, self.max_cmdsn_sent):
            self._error(f"CmdSN {cmdsn} beyond MaxCmdSN {self.max_cmdsn_sent}")
        if cmdsn != self.exp_cmdsn:
            self._error(f"CmdSN {cmdsn}, expected {self.exp_cmdsn}")
        self.exp_cmdsn = serial.add(cmdsn, 1)

    # -- SCSI commands ------------------------------------------------------------------------

    def _on_command(self, cmd: P.ScsiCommand) -> None:
        t = self.target
        self._take_cmdsn(cmd.cmdsn, cmd.immediate)
        self.commands += 1
        lun = scsi.decode_lun(cmd.lun)
        t.commands.append(CommandRecord(time=trio.current_time(), conn=self.number, lun=lun,
                                        cdb=cmd.cdb, cmdsn=cmd.cmdsn, itt=cmd.itt,
                                        length=cmd.expected_length))
        if cmd.itt in self.tasks:
            self._error(f"ITT 0x{cmd.itt:08x} reused while its command is open")
        if t.close_after_commands is not None and self.commands > t.close_after_commands:
            t.close_after_commands = None
            raise _Drop
        task = _Task(cmd=cmd, lun=lun)
        if cmd.cdb[0] in WRITE_OPCODES:
            first, count = _lba_range(cmd.cdb)
            for other_conn, other in t._inflight_writes():
                o_first, o_count = _lba_range(other.cdb)
                if other.lun == lun and first < o_first + o_count and o_first < first + count:
                    self._error(f"WRITE of blocks {first}+{count} while WRITE {o_first}+"
                                f"{o_count} (conn {other_conn.number}) is in flight")
        self.tasks[cmd.itt] = task
        t.max_outstanding = max(t.max_outstanding, t.outstanding)
        if t.reject is not None:
            reason = t.reject(cmd)
            if reason is not None:
                del self.tasks[cmd.itt]
                exp, mx = self._window()
                header = P.encode_header(cmd)[: P.BHS_LEN]
                self.queue(P.Reject(reason=reason, statsn=self._next_statsn(), exp_cmdsn=exp,
                                    max_cmdsn=mx, data=header))
                return
        if cmd.write:
            self._begin_write(task)
            if task.drop_on_data and task.got >= cmd.expected_length:
                t.drop_mid_transfer -= 1
                raise _Drop
        if cmd.cdb[0] in MEDIA_OPCODES and (t.hold_next > 0 or t.gate):
            if t.hold_next > 0:
                t.hold_next -= 1
            task.held = True
            if t.gate and sum(x.held for x in self.tasks.values()) >= t.gate:
                t.gate = 0
                self._release_now()
            return
        self._maybe_run(task)

    def _release_now(self) -> None:
        for task in list(self.tasks.values()):
            if task.held:
                task.held = False
                self._maybe_run(task)

    async def release(self) -> None:
        self._release_now()
        await self._flush()

    def _maybe_run(self, task: _Task) -> None:
        """Execute the task once it has all its data and is not held."""
        if task.held or self.tasks.get(task.itt) is not task:
            return
        if task.cmd.write and (task.got < task.cmd.expected_length or task.unsolicited):
            return
        self._run(task)

    def _begin_write(self, task: _Task) -> None:
        t = self.target
        cmd = task.cmd
        task.buf = bytearray(cmd.expected_length)
        imm = cmd.data
        if imm:
            if not self.immediate_data:
                self._error("immediate data although ImmediateData=No")
            if len(imm) > min(self.first_burst, t.mrdsl):
                self._error(f"{len(imm)} bytes of immediate data exceed the limits")
            task.buf[: len(imm)] = imm
            task.got = len(imm)
        task.unsolicited = not cmd.final
        if task.unsolicited and self.initial_r2t:
            self._error("unsolicited Data-Out although InitialR2T=Yes")
        if t.drop_mid_transfer and cmd.cdb[0] in WRITE_OPCODES:
            task.drop_on_data = True
        if not task.unsolicited:
            self._next_r2t(task)

    def _next_r2t(self, task: _Task) -> None:
        if task.got >= task.cmd.expected_length or task.held:
            return
        length = min(self.max_burst, task.cmd.expected_length - task.got)
        task.ttt = self.next_ttt
        self.next_ttt += 1
        task.r2t_end = task.got + length
        exp, mx = self._window()
        self.queue(P.R2T(lun=task.cmd.lun, itt=task.itt, ttt=task.ttt, statsn=self.statsn,
                         exp_cmdsn=exp, max_cmdsn=mx, r2tsn=task.r2tsn, buffer_offset=task.got,
                         desired_length=length))
        task.r2tsn += 1

    def _on_data_out(self, d: P.DataOut) -> None:
        task = self.tasks.get(d.itt)
        if task is None:
            return  # for a task we dropped (abort, reset): ignored, as targets do
        if task.drop_on_data:
            self.target.drop_mid_transfer -= 1
            raise _Drop
        if len(d.data) > self.target.mrdsl:
            self._error(f"Data-Out of {len(d.data)} bytes exceeds MaxRecvDataSegmentLength")
        if d.buffer_offset != task.got:
            self._error(f"Data-Out at offset {d.buffer_offset}, expected {task.got}")
            return
        if d.ttt == RESERVED:
            if not task.unsolicited:
                self._error("unsolicited Data-Out not announced by the command")
            if task.got + len(d.data) > self.first_burst:
                self._error("unsolicited data beyond FirstBurstLength")
        elif d.ttt != task.ttt:
            self._error(f"Data-Out with TTT 0x{d.ttt:08x}, the open R2T has 0x{task.ttt:08x}")
            return
        elif task.got + len(d.data) > task.r2t_end or d.final != (
                task.got + len(d.data) == task.r2t_end):
            self._error(f"Data-Out for {task.got}+{len(d.data)} does not end the R2T burst "
                        f"at {task.r2t_end} with its F bit")
        end = task.got + len(d.data)
        if end > task.cmd.expected_length:
            self._error("Data-Out beyond the expected transfer length")
            return
        task.buf[task.got : end] = d.data
        task.got = end
        if d.final:
            if d.ttt == RESERVED:
                task.unsolicited = False
            task.ttt = RESERVED
            if task.got < task.cmd.expected_length:
                self._next_r2t(task)
        self._maybe_run(task)

    def _run(self, task: _Task) -> None:
        """Execute a command whose data (if any) is all here, and answer it."""
        self._execute(task)
        extra = self.target.after_next_answer
        if extra is not None and task.cdb[0] in MEDIA_OPCODES:
            self.target.after_next_answer = None
            if isinstance(extra, bytes | bytearray):
                self.out.append(bytes(extra))
            else:
                self.queue(extra)

    def _execute(self, task: _Task) -> None:
        t = self.target
        cmd = task.cmd
        if t.unit_attention is not None:
            asc, ascq = t.unit_attention
            t.unit_attention = None
            self._status(task, CHECK_CONDITION, fixed_sense(0x6, asc, ascq))
            return
        try:
            data_in = self._scsi(task.lun, cmd.cdb, bytes(task.buf))
        except _Check as c:
            self._status(task, CHECK_CONDITION, c.sense)
            return
        if cmd.read and cmd.expected_length:
            self._data_in(task, data_in)
        else:
            if cmd.cdb[0] in WRITE_OPCODES:
                first, count = _lba_range(cmd.cdb)
                t.write_status.append((task.lun, first, count))
            self._status(task, GOOD, b"")

    def _status(self, task: _Task, status: int, sense: bytes, residual: int = 0,
                under: bool = False) -> None:
        del self.tasks[task.itt]
        exp, mx = self._window()
        data = struct.pack(">H", len(sense)) + sense if sense else b""
        self.queue(P.ScsiResponse(status=status, itt=task.itt, statsn=self._next_statsn(),
                                  exp_cmdsn=exp, max_cmdsn=mx, underflow=under,
                                  residual=residual, data=data))

    def _data_in(self, task: _Task, data: bytes) -> None:
        t = self.target
        cmd = task.cmd
        length = cmd.expected_length
        send = data[:length]
        under, over = len(data) < length, len(data) > length
        residual = abs(length - len(data))
        if not send:  # nothing to carry: status alone, all of it residual
            self._status(task, GOOD, b"", residual=length, under=True)
            return
        del self.tasks[task.itt]
        pdus: list[P.DataIn] = []
        offset = datasn = 0
        burst_left = self.max_burst
        exp, mx = self._window()
        statsn = self._next_statsn()
        while offset < len(send):
            n = min(self.initiator_mrdsl, len(send) - offset, burst_left)
            last = offset + n >= len(send)
            burst_left -= n
            pdus.append(P.DataIn(
                final=last or burst_left == 0, status_present=last, status=GOOD,
                underflow=last and under, overflow=last and over,
                residual=residual if last else 0, lun=cmd.lun, itt=cmd.itt,
                statsn=statsn if last else 0, exp_cmdsn=exp, max_cmdsn=mx, datasn=datasn,
                buffer_offset=offset, data=send[offset : offset + n]))
            offset += n
            datasn += 1
            if burst_left == 0:
                burst_left = self.max_burst
        if t.empty_data_in and cmd.cdb[0] in MEDIA_OPCODES:
            t.empty_data_in -= 1
            empty = P.DataIn(final=False, lun=cmd.lun, itt=cmd.itt, exp_cmdsn=exp, max_cmdsn=mx,
                             datasn=0, buffer_offset=0)
            pdus = [empty] + [dataclasses.replace(p, datasn=p.datasn + 1) for p in pdus]
        if self.erl >= 1:
            self.sent_data_in[cmd.itt] = pdus
        corrupt = t.corrupt if cmd.cdb[0] in MEDIA_OPCODES else None
        if corrupt is not None and t.corrupt_skip:
            t.corrupt_skip -= 1
            corrupt = None
        elif corrupt is not None:
            t.corrupt = None
        drop = t.drop_mid_transfer > 0 and cmd.cdb[0] in MEDIA_OPCODES
        for i, p in enumerate(pdus):
            if drop and i >= max(1, len(pdus) // 2):
                t.drop_mid_transfer -= 1
                raise _Drop
            kind = corrupt[0] if corrupt is not None and corrupt[1] == p.datasn else None
            self.queue(p, corrupt=kind)
        if drop:  # a one-PDU read: drop before its status
            t.drop_mid_transfer -= 1
            self.out.pop()
            raise _Drop

    def _scsi(self, lun: int, cdb: bytes, data_out: bytes) -> bytes:
        """SPC-4 / SBC-3 semantics, just enough for the initiator's probe and block I/O."""
        op = cdb[0]
        unit = self.target.luns.get(lun)
        if op == 0x12:  # INQUIRY
            return self._inquiry(unit, cdb)
        if op == 0xA0:  # REPORT LUNS
            entries = b"".join(struct.pack(">Q", scsi.encode_lun(n))
                               for n in sorted(self.target.luns))
            return struct.pack(">I4x", len(entries)) + entries
        if unit is None:
            raise _Check(0x5, 0x25)  # LOGICAL UNIT NOT SUPPORTED
        if op == 0x00:  # TEST UNIT READY
            return b""
        if not isinstance(unit, Disk):
            raise _Check(0x5, 0x20)  # INVALID COMMAND OPERATION CODE
        if op == 0x25:  # READ CAPACITY (10)
            return struct.pack(">II", min(unit.blocks - 1, 0xFFFFFFFF), unit.block_size)
        if op == 0x9E and cdb[1] & 0x1F == 0x10:  # READ CAPACITY (16)
            flags = 0xC000 if unit.unmap else 0  # LBPME, LBPRZ
            return struct.pack(">QIBBH", unit.blocks - 1, unit.block_size, 0, 0, flags).ljust(
                32, b"\0")
        if op in MEDIA_OPCODES:
            lba, count = _lba_range(cdb)
            if lba + count > unit.blocks:
                raise _Check(0x5, 0x21)  # LOGICAL BLOCK ADDRESS OUT OF RANGE
            bs = unit.block_size
            if op in WRITE_OPCODES:
                if len(data_out) != count * bs:
                    raise _Check(0x5, 0x24)
                unit.data[lba * bs : (lba + count) * bs] = data_out
                return b""
            return bytes(unit.data[lba * bs : (lba + count) * bs])
        if op in (0x35, 0x91):  # SYNCHRONIZE CACHE (10)/(16)
            return b""
        if op == 0x42:  # UNMAP
            if not unit.unmap:
                raise _Check(0x5, 0x20)
            n = int.from_bytes(data_out[2:4], "big") // 16
            for i in range(n):
                lba, count = struct.unpack_from(">QI", data_out, 8 + 16 * i)
                if lba + count > unit.blocks:
                    raise _Check(0x5, 0x21)
                bs = unit.block_size
                unit.data[lba * bs : (lba + count) * bs] = bytes(count * bs)
            return b""
        raise _Check(0x5, 0x20)

    def _inquiry(self, unit: Disk | Controller | None, cdb: bytes) -> bytes:
        alloc = int.from_bytes(cdb[3:5], "big")
        dtype = unit.device_type if unit is not None else 0x1F
        qualifier = 0 if unit is not None else 3
        if not cdb[1] & 1:
            body = bytes([qualifier << 5 | dtype, 0, 6, 0x02, 91, 0, 0, 0x02])
            body += b"FAKE    " + b"iscsifs-fake    " + b"0001"
            return body.ljust(96, b"\0")[:alloc]
        if not isinstance(unit, Disk):
            raise _Check(0x5, 0x24)  # INVALID FIELD IN CDB
        page = cdb[2]
        if page == 0x00:
            body = bytes([0x00, 0x80, 0xB0, 0xB2])
        elif page == 0x80:
            body = unit.serial.encode()
        elif page == 0xB0:
            body = struct.pack(">BBHIIIIIIIQ", 0, 0, 0, unit.max_transfer_blocks, 0, 0,
                               0xFFFFFFFF if unit.unmap else 0, 16 if unit.unmap else 0, 1, 0,
                               0).ljust(60, b"\0")
        elif page == 0xB2:
            body = bytes([0, 0x84 if unit.unmap else 0, 2, 0])
        else:
            raise _Check(0x5, 0x24)
        return (bytes([dtype, page]) + struct.pack(">H", len(body)) + body)[:alloc]

    # -- other PDUs ------------------------------------------------------------------------

    def _on_nop_out(self, nop: P.NopOut) -> None:
        if nop.itt == RESERVED:
            return  # an answer to a ping of ours
        self.pings.append(trio.current_time())
        exp, mx = self._window()
        self.queue(P.NopIn(itt=nop.itt, ttt=RESERVED, statsn=self._next_statsn(),
                           exp_cmdsn=exp, max_cmdsn=mx, data=nop.data))

    def _on_tmf(self, req: P.TaskMgmtRequest) -> None:
        t = self.target
        self.tmfs.append((trio.current_time(), req))
        if req.function == P.TmfFunction.ABORT_TASK:
            response = t.abort_response
            if response is None:
                return
            task = self.tasks.get(req.referenced_tag)
            if task is not None and response == P.TmfResponse.COMPLETE:
                del self.tasks[task.itt]
            elif task is None and response == P.TmfResponse.COMPLETE:
                response = P.TmfResponse.TASK_DOES_NOT_EXIST
        elif req.function == P.TmfFunction.LOGICAL_UNIT_RESET:
            response = t.lun_reset_response
            if response is None:
                return
            if response == P.TmfResponse.COMPLETE:
                for task in list(self.tasks.values()):
                    if task.cmd.lun == req.lun:
                        del self.tasks[task.itt]
        else:
            response = P.TmfResponse.NOT_SUPPORTED
        exp, mx = self._window()
        self.queue(P.TaskMgmtResponse(response=response, itt=req.itt,
                                      statsn=self._next_statsn(), exp_cmdsn=exp, max_cmdsn=mx))

    def _on_snack(self, snack: P.SnackRequest) -> None:
        self.snacks.append(snack)
        if snack.snack_type != P.SnackType.DATA_R2T:
            return
        if self.erl < 1:
            self._error("SNACK at ErrorRecoveryLevel 0")
            return
        pdus = self.sent_data_in.get(snack.itt)
        if pdus is None:
            self._error(f"SNACK for unknown ITT 0x{snack.itt:08x}")
            return
        end = len(pdus) if snack.run_length == 0 else snack.begrun + snack.run_length
        for p in pdus[snack.begrun : end]:
            self.queue(p)

    async def send(self, what: Any) -> None:
        """Send a PDU (encoded with this connection's digests) or raw bytes, as they are."""
        if isinstance(what, bytes | bytearray):
            self.out.append(bytes(what))
        else:
            self.queue(what)
        await self._flush()

    async def send_async(self, event: int, *, parameter1: int = 0, parameter2: int = 0,
                         parameter3: int = 0, sense: bytes = b"", lun: int = 0) -> None:
        exp, mx = self._window()
        data = struct.pack(">H", len(sense)) + sense if sense else b""
        self.queue(P.AsyncMessage(lun=lun, statsn=self._next_statsn(), exp_cmdsn=exp,
                                  max_cmdsn=mx, async_event=event, parameter1=parameter1,
                                  parameter2=parameter2, parameter3=parameter3, data=data))
        await self._flush()


# ---------------------------------------------------------------------------------------------
# Helpers for tests that drive a Session against the fake
# ---------------------------------------------------------------------------------------------


def settings(fake: FakeTarget, *, host: str = "127.0.0.1", port: int = 3260,
             timeouts: Timeouts | None = None, **kw: Any) -> SessionSettings:
    return SessionSettings(initiator_name=INITIATOR, target_name=fake.name, host=host,
                           port=port, timeouts=timeouts or Timeouts(), **kw)


def creds(user: str, secret: str) -> ChapCredentials:
    return ChapCredentials(user=user, secret=Secret(secret))


class Recorder(Listener):
    """A Listener that writes down every call with the time and the session's state."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, State, tuple[Any, ...]]] = []

    def _note(self, what: str, session: Session, *args: Any) -> None:
        self.calls.append((what, trio.current_time(), session.state, args))

    def connected(self, session: Session) -> None:
        self._note("connected", session)

    def disconnected(self, session: Session, reason: str) -> None:
        self._note("disconnected", session, reason)

    def luns_changed(self, session: Session) -> None:
        self._note("luns_changed", session)

    def portal_moved(self, session: Session, host: str, port: int) -> None:
        self._note("portal_moved", session, host, port)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


async def wait_for(predicate: Callable[[], bool], *, step: float = 0.001,
                   limit: float = 1000.0) -> float:
    """Poll on the (virtual) clock until predicate() holds; returns the time it did."""
    with trio.fail_after(limit):
        while not predicate():
            await trio.sleep(step)
    return trio.current_time()


async def read_blocks(session: Session, lun: int, lba: int, blocks: int,
                      block_size: int = 512) -> bytes:
    buf = bytearray(blocks * block_size)
    await session.command(lun, scsi.read_cdb(lba, blocks), read=memoryview(buf))
    return bytes(buf)


async def write_blocks(session: Session, lun: int, lba: int, data: bytes,
                       block_size: int = 512) -> None:
    await session.command(lun, scsi.write_cdb(lba, len(data) // block_size), write=data)
