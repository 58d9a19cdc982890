# The iSNS protocol (RFC 4171) as a sans-I/O codec: wire codes, the 12-byte PDU header, TLV
# attributes, whole-message framing with multi-PDU reassembly, the few requests an initiator
# needs for discovery (register itself, query targets, walk with DevGetNext, deregister) and
# the parsing of their responses into the shared discovery model (proto/discovery.py).
# It must not do I/O or keep time: the engine (engine/isns.py) owns the socket and timeouts.

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from iscsifs.proto.discovery import DiscoveredTarget, Portal
from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_ISNS_PORT",
    "HEADER_LENGTH",
    "ISNSP_VERSION",
    "EntityProtocol",
    "IsnsAttribute",
    "IsnsError",
    "IsnsFlags",
    "IsnsFramer",
    "IsnsFunction",
    "IsnsMessage",
    "IsnsStatus",
    "IsnsTag",
    "NodeRecord",
    "NodeType",
    "PortalGroupRecord",
    "check_status",
    "decode_attributes",
    "decode_message",
    "dev_attr_qry_node",
    "dev_attr_qry_targets",
    "dev_attr_reg_initiator",
    "dev_dereg",
    "dev_get_next",
    "dev_get_next_portal_group",
    "encode_message",
    "make_request",
    "node_from_get_next_response",
    "portal_group_from_get_next_response",
    "targets_from_query_response",
    "targets_from_records",
]

ISNSP_VERSION = 0x0001  # RFC 4171 section 5.1.1
DEFAULT_ISNS_PORT = 3205  # RFC 4171 section 5.1 (IANA iSNS port, TCP)
HEADER_LENGTH = (
    12  # RFC 4171 section 5.1: version, function, length, flags, xid, seq (2 bytes each)
)
_HEADER = struct.Struct("!HHHHHH")
_TL = struct.Struct("!II")
_U32 = struct.Struct("!I")

# The PDU Length field is 16 bits; we split bigger messages at a 4-byte boundary below it.
MAX_PDU_PAYLOAD = 65532
# open-isns caps a whole message at 8 KiB; a discovery answer for thousands of targets can be
# bigger, so accept up to 1 MiB before calling it a runaway peer.
DEFAULT_MAX_MESSAGE = 1 << 20


class IsnsFunction(enum.IntEnum):
    """iSNSP Function IDs, RFC 4171 section 5.1.3 (responses are the request | 0x8000)."""

    DEV_ATTR_REG = 0x0001
    DEV_ATTR_QRY = 0x0002
    DEV_GET_NEXT = 0x0003
    DEV_DEREG = 0x0004
    SCN_REG = 0x0005
    SCN_DEREG = 0x0006
    SCN_EVENT = 0x0007
    SCN = 0x0008
    DD_REG = 0x0009
    DD_DEREG = 0x000A
    DDS_REG = 0x000B
    DDS_DEREG = 0x000C
    ESI = 0x000D
    HEARTBEAT = 0x000E
    RQST_DOM_ID = 0x0011
    RLSE_DOM_ID = 0x0012
    GET_DOM_ID = 0x0013
    DEV_ATTR_REG_RSP = 0x8001
    DEV_ATTR_QRY_RSP = 0x8002
    DEV_GET_NEXT_RSP = 0x8003
    DEV_DEREG_RSP = 0x8004
    SCN_REG_RSP = 0x8005
    SCN_DEREG_RSP = 0x8006
    SCN_EVENT_RSP = 0x8007
    SCN_RSP = 0x8008
    DD_REG_RSP = 0x8009
    DD_DEREG_RSP = 0x800A
    DDS_REG_RSP = 0x800B
    DDS_DEREG_RSP = 0x800C
    ESI_RSP = 0x800D
    RQST_DOM_ID_RSP = 0x8011
    RLSE_DOM_ID_RSP = 0x8012
    GET_DOM_ID_RSP = 0x8013

    @property
    def response(self) -> IsnsFunction:
        """The response function of this request (RFC 4171 section 5.1.3)."""
        return IsnsFunction(self | 0x8000)


RESPONSE_BIT = 0x8000


class IsnsStatus(enum.IntEnum):
    """Response status codes, RFC 4171 section 5.4 (the first 4 bytes of every response)."""

    SUCCESSFUL = 0
    UNKNOWN_ERROR = 1
    MESSAGE_FORMAT_ERROR = 2
    INVALID_REGISTRATION = 3
    # 4 is reserved
    INVALID_QUERY = 5
    SOURCE_UNKNOWN = 6
    SOURCE_ABSENT = 7
    SOURCE_UNAUTHORIZED = 8
    NO_SUCH_ENTRY = 9
    VERSION_NOT_SUPPORTED = 10
    INTERNAL_ERROR = 11
    BUSY = 12
    OPTION_NOT_UNDERSTOOD = 13
    INVALID_UPDATE = 14
    MESSAGE_NOT_SUPPORTED = 15
    SCN_EVENT_REJECTED = 16
    SCN_REGISTRATION_REJECTED = 17
    ATTRIBUTE_NOT_IMPLEMENTED = 18
    FC_DOMAIN_ID_NOT_AVAILABLE = 19
    FC_DOMAIN_ID_NOT_ALLOCATED = 20
    ESI_NOT_AVAILABLE = 21
    INVALID_DEREGISTRATION = 22
    REGISTRATION_FEATURE_NOT_SUPPORTED = 23


class IsnsTag(enum.IntEnum):
    """Attribute tags, RFC 4171 section 6.1 (the iSCSI, entity, portal, PG and DD ones)."""

    DELIMITER = 0
    ENTITY_IDENTIFIER = 1
    ENTITY_PROTOCOL = 2
    MANAGEMENT_IP_ADDRESS = 3
    TIMESTAMP = 4
    PROTOCOL_VERSION_RANGE = 5
    REGISTRATION_PERIOD = 6
    ENTITY_INDEX = 7
    ENTITY_NEXT_INDEX = 8
    ENTITY_ISAKMP_PHASE_1 = 11
    ENTITY_CERTIFICATE = 12
    PORTAL_IP_ADDRESS = 16
    PORTAL_TCP_UDP_PORT = 17
    PORTAL_SYMBOLIC_NAME = 18
    ESI_INTERVAL = 19
    ESI_PORT = 20
    PORTAL_INDEX = 22
    SCN_PORT = 23
    PORTAL_NEXT_INDEX = 24
    PORTAL_SECURITY_BITMAP = 27
    PORTAL_ISAKMP_PHASE_1 = 28
    PORTAL_ISAKMP_PHASE_2 = 29
    PORTAL_CERTIFICATE = 31
    ISCSI_NAME = 32
    ISCSI_NODE_TYPE = 33
    ISCSI_ALIAS = 34
    ISCSI_SCN_BITMAP = 35
    ISCSI_NODE_INDEX = 36
    WWNN_TOKEN = 37
    ISCSI_NODE_NEXT_INDEX = 38
    ISCSI_AUTH_METHOD = 42
    PG_ISCSI_NAME = 48
    PG_PORTAL_IP_ADDR = 49
    PG_PORTAL_TCP_UDP_PORT = 50
    PG_TAG = 51
    PG_INDEX = 52
    PG_NEXT_INDEX = 53
    DD_SET_ID = 2049
    DD_SET_SYMBOLIC_NAME = 2050
    DD_SET_STATUS = 2051
    DD_SET_NEXT_ID = 2052
    DD_ID = 2065
    DD_SYMBOLIC_NAME = 2066
    DD_MEMBER_ISCSI_INDEX = 2067
    DD_MEMBER_ISCSI_NAME = 2068
    DD_MEMBER_FC_PORT_NAME = 2069
    DD_MEMBER_PORTAL_INDEX = 2070
    DD_MEMBER_PORTAL_IP_ADDR = 2071
    DD_MEMBER_PORTAL_TCP_UDP_PORT = 2072
    DD_FEATURES = 2078
    DD_ID_NEXT_ID = 2079


class NodeType(enum.IntFlag):
    """iSCSI Node Type bitmap, RFC 4171 section 6.4.2 (bits 31, 30, 29 counted from the MSB)."""

    TARGET = 0x1
    INITIATOR = 0x2
    CONTROL = 0x4


class EntityProtocol(enum.IntEnum):
    """Entity Protocol values, RFC 4171 section 6.2.2."""

    NO_PROTOCOL = 1
    ISCSI = 2
    IFCP = 3


class IsnsFlags(enum.IntFlag):
    """PDU header flags, RFC 4171 section 5.1.4 (bits 16..21 of the header word)."""

    CLIENT = 0x8000
    SERVER = 0x4000
    AUTH = 0x2000
    REPLACE = 0x1000
    LAST_PDU = 0x0800
    FIRST_PDU = 0x0400


_FRAMING_FLAGS = IsnsFlags.LAST_PDU | IsnsFlags.FIRST_PDU
# Port attributes: bits 16..31 hold the port, bit 15 (0x10000) says UDP (RFC 4171 6.3.2).
_UDP_BIT = 0x0001_0000
_PORT_TAGS = frozenset(
    {
        IsnsTag.PORTAL_TCP_UDP_PORT,
        IsnsTag.ESI_PORT,
        IsnsTag.SCN_PORT,
        IsnsTag.PG_PORTAL_TCP_UDP_PORT,
        IsnsTag.DD_MEMBER_PORTAL_TCP_UDP_PORT,
    }
)


def _show(value: object, limit: int = 60) -> str:
    """repr() for error messages, cut short: peer data must not make a message unbounded."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status_text(status: int) -> str:
    try:
        return f"{status} ({IsnsStatus(status).name.replace('_', ' ').title()})"
    except ValueError:
        return f"{status} (unknown status)"


def _function_text(function: int) -> str:
    try:
        return IsnsFunction(function).name
    except ValueError:
        return f"function 0x{function:04x}"


class IsnsError(RemoteProtocolError):
    """The iSNS server answered with a non-zero status (RFC 4171 section 5.4)."""

    def __init__(self, status: int, function: int) -> None:
        self.status = status
        self.function = function
        super().__init__(
            f"iSNS server answered {_function_text(function)} with status {_status_text(status)}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.status, self.function))


@dataclass(frozen=True, slots=True, kw_only=True)
class IsnsAttribute:
    """One TLV attribute, RFC 4171 section 5.3.1. `value` is the wire value INCLUDING padding
    (its length is the TLV length, always a multiple of 4); an empty value is a zero-length TLV,
    which in queries means "return this attribute" and in keys means "any object of this type".
    """

    tag: int
    value: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.tag <= 0xFFFFFFFF:
            raise LocalProtocolError(f"iSNS tag {self.tag} does not fit 32 bits")
        if len(self.value) % 4:
            raise LocalProtocolError(
                f"iSNS attribute {self.tag} value is {len(self.value)} bytes, not 4-aligned"
            )

    # Builders --------------------------------------------------------------------------------

    @classmethod
    def nil(cls, tag: int) -> IsnsAttribute:
        return cls(tag=tag)

    @classmethod
    def string(cls, tag: int, text: str) -> IsnsAttribute:
        """UTF-8, NUL terminated, padded with NULs to 4 bytes (RFC 4171 section 5.3.1)."""
        raw = text.encode("utf-8")
        if b"\0" in raw:
            raise LocalProtocolError(f"iSNS string attribute {tag} contains a NUL")
        raw += b"\0"
        return cls(tag=tag, value=raw + b"\0" * (-len(raw) % 4))

    @classmethod
    def uint32(cls, tag: int, number: int) -> IsnsAttribute:
        if not 0 <= number <= 0xFFFFFFFF:
            raise LocalProtocolError(f"iSNS attribute {tag} value {number} does not fit 32 bits")
        return cls(tag=tag, value=_U32.pack(number))

    @classmethod
    def ip(cls, tag: int, address: str) -> IsnsAttribute:
        """16 bytes; IPv4 as an IPv4-mapped IPv6 address (RFC 4171 section 6.3.1)."""
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise LocalProtocolError(f"not an IP address: {_show(address)}") from None
        if isinstance(parsed, ipaddress.IPv4Address):
            return cls(tag=tag, value=b"\0" * 10 + b"\xff\xff" + parsed.packed)
        return cls(tag=tag, value=parsed.packed)

    @classmethod
    def port(cls, tag: int, port: int, *, udp: bool = False) -> IsnsAttribute:
        if not 0 <= port <= 0xFFFF:
            raise LocalProtocolError(f"port {port} does not fit 16 bits")
        return cls(tag=tag, value=_U32.pack(port | (_UDP_BIT if udp else 0)))

    # Readers (used on peer data, hence RemoteProtocolError) ---------------------------------

    @property
    def is_nil(self) -> bool:
        return not self.value

    def _name(self) -> str:
        try:
            return IsnsTag(self.tag).name
        except ValueError:
            return f"tag {self.tag}"

    def as_string(self) -> str:
        """The text up to the first NUL (a missing NUL is tolerated: the length bounds it)."""
        raw = self.value.split(b"\0", 1)[0]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"iSNS {self._name()} is not valid UTF-8") from None

    def as_uint32(self) -> int:
        if len(self.value) != 4:
            raise RemoteProtocolError(
                f"iSNS {self._name()} has length {len(self.value)}, expected 4"
            )
        return int(_U32.unpack(self.value)[0])

    def as_ip(self) -> str:
        """The address as text: IPv4 for IPv4-mapped (::ffff:a.b.c.d) and for IPv4-compatible
        (::a.b.c.d, what open-isns 0.101 sends) values, else compressed IPv6."""
        raw = self.value
        if len(raw) == 4:  # not RFC 4171, but unambiguous
            return str(ipaddress.IPv4Address(raw))
        if len(raw) != 16:
            raise RemoteProtocolError(f"iSNS {self._name()} has length {len(raw)}, expected 16")
        if raw[:10] == b"\0" * 10 and raw[10:12] == b"\xff\xff":
            return str(ipaddress.IPv4Address(raw[12:]))
        if raw[:12] == b"\0" * 12 and raw[12] != 0:
            # IPv4-compatible (deprecated by RFC 4291). A first byte of 0 would be "::" or
            # "::1"-like, which are real IPv6 addresses, so those stay IPv6.
            return str(ipaddress.IPv4Address(raw[12:]))
        return str(ipaddress.IPv6Address(raw))

    def as_port(self) -> tuple[int, bool]:
        """(port, is_udp) from a TCP/UDP port attribute (RFC 4171 section 6.3.2)."""
        word = self.as_uint32()
        return word & 0xFFFF, bool(word & _UDP_BIT)

    def encode(self) -> bytes:
        return _TL.pack(self.tag, len(self.value)) + self.value


DELIMITER = IsnsAttribute(tag=IsnsTag.DELIMITER)


def decode_attributes(payload: bytes | memoryview) -> tuple[IsnsAttribute, ...]:
    """Split a TLV sequence. Raises RemoteProtocolError on truncation or misalignment."""
    data = memoryview(payload)
    out: list[IsnsAttribute] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _TL.size:
            raise RemoteProtocolError(
                f"iSNS attribute header truncated: {len(data) - offset} bytes left"
            )
        tag, length = _TL.unpack_from(data, offset)
        offset += _TL.size
        if length % 4:
            raise RemoteProtocolError(f"iSNS attribute {tag} length {length} is not 4-aligned")
        if length > len(data) - offset:
            raise RemoteProtocolError(
                f"iSNS attribute {tag} length {length} runs past the message end"
            )
        out.append(IsnsAttribute(tag=tag, value=bytes(data[offset : offset + length])))
        offset += length
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class IsnsMessage:
    """A whole iSNSP message (one or more PDUs), RFC 4171 section 5.

    Requests carry Source, Message Key, Delimiter, Operating Attributes (section 5.6.1);
    responses a 4-byte status first, then Message Key, Delimiter, Operating Attributes
    (section 5.7). `attributes` is the TLV list in wire order, delimiter included. `flags`
    holds the sender, replace and auth bits; FIRST_PDU/LAST_PDU belong to framing and are set
    by encode_message.
    """

    function: int
    transaction_id: int
    attributes: tuple[IsnsAttribute, ...] = ()
    status: int | None = None
    flags: int = IsnsFlags.CLIENT

    def __post_init__(self) -> None:
        if not 0 <= self.function <= 0xFFFF:
            raise LocalProtocolError(f"iSNS function {self.function} does not fit 16 bits")
        if not 0 <= self.transaction_id <= 0xFFFF:
            raise LocalProtocolError(f"iSNS transaction id {self.transaction_id} out of range")
        if self.is_response != (self.status is not None):
            raise LocalProtocolError(
                f"{_function_text(self.function)}: a status goes with responses, and only them"
            )
        if self.status is not None and not 0 <= self.status <= 0xFFFFFFFF:
            raise LocalProtocolError(f"iSNS status {self.status} does not fit 32 bits")
        if self.flags & ~0xF000 & 0xFFFF or not 0 <= self.flags <= 0xFFFF:
            raise LocalProtocolError(f"iSNS flags 0x{self.flags:x}: only sender/auth/replace")
        if not isinstance(self.attributes, tuple):
            raise LocalProtocolError("IsnsMessage.attributes must be a tuple")

    @property
    def is_response(self) -> bool:
        return bool(self.function & RESPONSE_BIT)

    def _body(self) -> tuple[IsnsAttribute, ...]:
        return self.attributes if self.is_response else self.attributes[1:]

    @property
    def source(self) -> IsnsAttribute | None:
        """The Source Attribute of a request (its first TLV); None for responses."""
        if self.is_response or not self.attributes:
            return None
        return self.attributes[0]

    @property
    def message_key(self) -> tuple[IsnsAttribute, ...]:
        body = self._body()
        for i, attr in enumerate(body):
            if attr.tag == IsnsTag.DELIMITER:
                return body[:i]
        return body

    @property
    def operating(self) -> tuple[IsnsAttribute, ...]:
        body = self._body()
        for i, attr in enumerate(body):
            if attr.tag == IsnsTag.DELIMITER:
                return body[i + 1 :]
        return ()

    def payload(self) -> bytes:
        head = b"" if self.status is None else _U32.pack(self.status)
        return head + b"".join(attr.encode() for attr in self.attributes)


def make_request(
    function: IsnsFunction,
    *,
    transaction_id: int,
    source: IsnsAttribute,
    key: Sequence[IsnsAttribute] = (),
    operating: Sequence[IsnsAttribute] = (),
    flags: int = IsnsFlags.CLIENT,
) -> IsnsMessage:
    """Source, Message Key, Delimiter, Operating Attributes (RFC 4171 section 5.6.1)."""
    return IsnsMessage(
        function=function,
        transaction_id=transaction_id,
        attributes=(source, *key, DELIMITER, *operating),
        flags=flags,
    )


def encode_message(message: IsnsMessage, *, max_pdu_payload: int = MAX_PDU_PAYLOAD) -> bytes:
    """Serialise a message as one PDU, or as several when the payload exceeds max_pdu_payload
    (RFC 4171 sections 5.1.6 and 5.2: same function and transaction id, sequence ids counting
    from 0, FIRST_PDU on the first, LAST_PDU on the last, lengths 4-aligned; TLVs may straddle
    PDUs)."""
    if not 4 <= max_pdu_payload <= 0xFFFF or max_pdu_payload % 4:
        # RFC 4171 5.1.3: every PDU Length MUST be 4-byte aligned.
        raise LocalProtocolError(f"max_pdu_payload {max_pdu_payload}: not 4-aligned in 4..65532")
    payload = message.payload()
    chunks = [payload[i : i + max_pdu_payload] for i in range(0, len(payload), max_pdu_payload)]
    if not chunks:
        chunks = [b""]
    if len(chunks) > 0x10000:
        raise LocalProtocolError("iSNS message needs more than 65536 PDUs")
    out = bytearray()
    for seq, chunk in enumerate(chunks):
        flags = int(message.flags)
        if seq == 0:
            flags |= IsnsFlags.FIRST_PDU
        if seq == len(chunks) - 1:
            flags |= IsnsFlags.LAST_PDU
        out += _HEADER.pack(
            ISNSP_VERSION, message.function, len(chunk), flags, message.transaction_id, seq
        )
        out += chunk
    return bytes(out)


@dataclass(slots=True)
class _Partial:
    flags: int
    next_seq: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class IsnsFramer:
    """Incremental decoder: feed bytes with receive_data(), take whole messages with
    next_message() (None until one is complete). PDUs of several transactions may interleave;
    each is reassembled by (function, transaction id) with sequence ids checked in order.

    Any protocol error is sticky (docs/design.md rule 3): the stream is not resynchronisable.
    """

    def __init__(
        self, *, max_message_size: int = DEFAULT_MAX_MESSAGE, max_pending: int = 16
    ) -> None:
        self._buffer = bytearray()
        self._partials: dict[tuple[int, int], _Partial] = {}
        self._max_message_size = max_message_size
        self._max_pending = max_pending
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message (0 at a clean boundary)."""
        return len(self._buffer) + sum(p.size for p in self._partials.values())

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data

    def next_message(self) -> IsnsMessage | None:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def __iter__(self) -> Iterator[IsnsMessage]:
        while (message := self.next_message()) is not None:
            yield message

    def _next(self) -> IsnsMessage | None:
        while len(self._buffer) >= HEADER_LENGTH:
            version, function, length, flags, xid, seq = _HEADER.unpack_from(self._buffer, 0)
            if version != ISNSP_VERSION:
                raise RemoteProtocolError(f"iSNSP version {version} is not supported (only 1)")
            if flags & IsnsFlags.AUTH:
                # Unicast iSNSP relies on IPsec, not authentication blocks (RFC 4171 5.5).
                raise RemoteProtocolError("iSNS PDU carries an authentication block (unsupported)")
            if length % 4:
                raise RemoteProtocolError(f"iSNS PDU length {length} is not 4-byte aligned")
            if len(self._buffer) < HEADER_LENGTH + length:
                return None
            chunk = bytes(self._buffer[HEADER_LENGTH : HEADER_LENGTH + length])
            del self._buffer[: HEADER_LENGTH + length]
            message = self._add_pdu(function, flags, xid, seq, chunk)
            if message is not None:
                return message
        return None

    def _add_pdu(
        self, function: int, flags: int, xid: int, seq: int, chunk: bytes
    ) -> IsnsMessage | None:
        key = (function, xid)
        partial = self._partials.get(key)
        if flags & IsnsFlags.FIRST_PDU:
            if partial is not None:
                raise RemoteProtocolError(
                    f"iSNS {_function_text(function)} transaction {xid} restarted mid-message"
                )
            if seq != 0:
                raise RemoteProtocolError(f"iSNS first PDU has sequence id {seq}, expected 0")
            if len(self._partials) >= self._max_pending:
                raise RemoteProtocolError("too many unfinished multi-PDU iSNS messages")
            partial = _Partial(flags=flags & ~_FRAMING_FLAGS, next_seq=0)
            self._partials[key] = partial
        elif partial is None:
            raise RemoteProtocolError(
                f"iSNS {_function_text(function)} PDU {seq} of transaction {xid} without a first PDU"
            )
        if seq != partial.next_seq:
            raise RemoteProtocolError(
                f"iSNS PDU sequence id {seq} out of order, expected {partial.next_seq}"
            )
        partial.next_seq += 1
        partial.size += len(chunk)
        if partial.size > self._max_message_size:
            raise RemoteProtocolError(f"iSNS message exceeds {self._max_message_size} bytes")
        partial.chunks.append(chunk)
        if not flags & IsnsFlags.LAST_PDU:
            if partial.next_seq > 0xFFFF:
                raise RemoteProtocolError("iSNS message has more than 65536 PDUs")
            return None
        del self._partials[key]
        return _decode_payload(function, xid, partial.flags, b"".join(partial.chunks))


def _decode_payload(function: int, xid: int, flags: int, payload: bytes) -> IsnsMessage:
    status: int | None = None
    body: bytes | memoryview = payload
    if function & RESPONSE_BIT:
        if len(payload) < 4:
            raise RemoteProtocolError(
                f"iSNS {_function_text(function)} has no status code ({len(payload)} bytes)"
            )
        status = _U32.unpack_from(payload, 0)[0]
        body = memoryview(payload)[4:]
    return IsnsMessage(
        function=function,
        transaction_id=xid,
        attributes=decode_attributes(body),
        status=status,
        flags=flags & 0xF000,
    )


def decode_message(data: bytes) -> IsnsMessage:
    """Decode exactly one whole message (test and tooling helper)."""
    framer = IsnsFramer()
    framer.receive_data(data)
    message = framer.next_message()
    if message is None or framer.buffered:
        raise RemoteProtocolError("data is not exactly one complete iSNS message")
    return message


# --- Builders for an initiator's discovery ----------------------------------------------------


def _name(tag: int, name: str) -> IsnsAttribute:
    if not name:
        raise LocalProtocolError("an iSNS source or key name must not be empty")
    return IsnsAttribute.string(tag, name)


def dev_attr_reg_initiator(
    initiator_name: str,
    *,
    transaction_id: int,
    entity_id: str | None = None,
    alias: str | None = None,
) -> IsnsMessage:
    """Register ourselves as an iSCSI node of type Initiator (RFC 4171 section 5.6.5.1).

    Registration makes the source known so that the server scopes later queries to our
    discovery domains. Without an entity_id the Message Key is a zero-length EID and the
    server creates an entity and assigns the EID (returned in the response).
    """
    source = _name(IsnsTag.ISCSI_NAME, initiator_name)
    operating: list[IsnsAttribute] = []
    if entity_id:
        key = IsnsAttribute.string(IsnsTag.ENTITY_IDENTIFIER, entity_id)
        operating += [key, IsnsAttribute.uint32(IsnsTag.ENTITY_PROTOCOL, EntityProtocol.ISCSI)]
    else:
        key = IsnsAttribute.nil(IsnsTag.ENTITY_IDENTIFIER)
    operating += [
        source,
        IsnsAttribute.uint32(IsnsTag.ISCSI_NODE_TYPE, NodeType.INITIATOR),
    ]
    if alias:
        operating.append(IsnsAttribute.string(IsnsTag.ISCSI_ALIAS, alias))
    return make_request(
        IsnsFunction.DEV_ATTR_REG,
        transaction_id=transaction_id,
        source=source,
        key=(key,),
        operating=operating,
    )


# What a target query asks for, in the order the response lists each object's attributes
# (RFC 4171 section 5.6.5.2): the node, then its portals, then its portal groups.
TARGET_QUERY_TAGS: tuple[IsnsTag, ...] = (
    IsnsTag.ISCSI_NAME,
    IsnsTag.ISCSI_NODE_TYPE,
    IsnsTag.ISCSI_ALIAS,
    IsnsTag.PORTAL_IP_ADDRESS,
    IsnsTag.PORTAL_TCP_UDP_PORT,
    IsnsTag.PG_ISCSI_NAME,
    IsnsTag.PG_PORTAL_IP_ADDR,
    IsnsTag.PG_PORTAL_TCP_UDP_PORT,
    IsnsTag.PG_TAG,
)


def dev_attr_qry_targets(source_name: str, *, transaction_id: int) -> IsnsMessage:
    """Query every target node visible to `source_name` (RFC 4171 section 5.6.5.2).

    Message Key: iSCSI Node Type = Target (a non-key attribute matching many nodes). Operating
    Attributes: zero-length TLVs naming what to return for each matching node and for the
    portals and portal groups related to it.
    """
    return make_request(
        IsnsFunction.DEV_ATTR_QRY,
        transaction_id=transaction_id,
        source=_name(IsnsTag.ISCSI_NAME, source_name),
        key=(IsnsAttribute.uint32(IsnsTag.ISCSI_NODE_TYPE, NodeType.TARGET),),
        operating=tuple(IsnsAttribute.nil(tag) for tag in TARGET_QUERY_TAGS),
    )


def dev_attr_qry_node(source_name: str, node_name: str, *, transaction_id: int) -> IsnsMessage:
    """Ask for one node by iSCSI Name, returning its name and type (RFC 4171 5.6.5.2). Changes
    nothing on the server, so it serves as a liveness check ("Verify iSNS")."""
    return make_request(
        IsnsFunction.DEV_ATTR_QRY,
        transaction_id=transaction_id,
        source=_name(IsnsTag.ISCSI_NAME, source_name),
        key=(_name(IsnsTag.ISCSI_NAME, node_name),),
        operating=(
            IsnsAttribute.nil(IsnsTag.ISCSI_NAME),
            IsnsAttribute.nil(IsnsTag.ISCSI_NODE_TYPE),
        ),
    )


def dev_get_next(source: str, last_name: str | None, *, transaction_id: int) -> IsnsMessage:
    """Ask for the target node after `last_name` (None or "" for the first), RFC 4171 5.6.5.3.

    The Node Type = Target operating attribute scopes the walk to targets; the zero-length ones
    that follow it (they must come last) name the attributes to return.
    """
    key = (
        IsnsAttribute.string(IsnsTag.ISCSI_NAME, last_name)
        if last_name
        else IsnsAttribute.nil(IsnsTag.ISCSI_NAME)
    )
    return make_request(
        IsnsFunction.DEV_GET_NEXT,
        transaction_id=transaction_id,
        source=_name(IsnsTag.ISCSI_NAME, source),
        key=(key,),
        operating=(
            IsnsAttribute.uint32(IsnsTag.ISCSI_NODE_TYPE, NodeType.TARGET),
            IsnsAttribute.nil(IsnsTag.ISCSI_NAME),
            IsnsAttribute.nil(IsnsTag.ISCSI_NODE_TYPE),
            IsnsAttribute.nil(IsnsTag.ISCSI_ALIAS),
        ),
    )


_PG_KEY_TAGS = (IsnsTag.PG_ISCSI_NAME, IsnsTag.PG_PORTAL_IP_ADDR, IsnsTag.PG_PORTAL_TCP_UDP_PORT)


def dev_get_next_portal_group(
    source: str, last_key: Sequence[IsnsAttribute] | None, *, transaction_id: int
) -> IsnsMessage:
    """Ask for the portal group after `last_key` (the Message Key of the previous
    DevGetNextRsp; None for the first). Used when DevAttrQry is refused, to learn portals."""
    if last_key:
        if tuple(attr.tag for attr in last_key) != _PG_KEY_TAGS:
            raise LocalProtocolError("a portal group walk continues from PG name, address, port")
        key = tuple(last_key)
    else:
        key = tuple(IsnsAttribute.nil(tag) for tag in _PG_KEY_TAGS)
    return make_request(
        IsnsFunction.DEV_GET_NEXT,
        transaction_id=transaction_id,
        source=_name(IsnsTag.ISCSI_NAME, source),
        key=key,
        operating=tuple(IsnsAttribute.nil(tag) for tag in (*_PG_KEY_TAGS, IsnsTag.PG_TAG)),
    )


def dev_dereg(source: str, name: str, *, transaction_id: int) -> IsnsMessage:
    """Remove node `name` (RFC 4171 section 5.6.5.4: no Message Key, the object to remove is an
    Operating Attribute). The server drops the entity too once it has no nodes or portals."""
    return make_request(
        IsnsFunction.DEV_DEREG,
        transaction_id=transaction_id,
        source=_name(IsnsTag.ISCSI_NAME, source),
        key=(),
        operating=(_name(IsnsTag.ISCSI_NAME, name),),
    )


# --- Parsing responses --------------------------------------------------------------------------


def check_status(message: IsnsMessage, expected: IsnsFunction) -> None:
    """Raise unless `message` is the response to `expected` with status 0."""
    if message.function != expected.response:
        raise RemoteProtocolError(
            f"expected {expected.response.name}, got {_function_text(message.function)}"
        )
    if message.status:
        raise IsnsError(message.status, message.function)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """An iSCSI Storage Node as listed in a response; `portals` are those listed right after
    it (used only when the server sends no portal groups for the node)."""

    name: str
    node_type: int | None = None
    alias: str | None = None
    portals: tuple[Portal, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PortalGroupRecord:
    """A Portal Group object: node name, portal, and tag (None when the PGT is NULL, which
    RFC 4171 section 5.6.5.2 defines as "no relationship")."""

    node_name: str
    address: str
    port: int
    tag: int | None


@dataclass(slots=True)
class _NodeAcc:
    name: str
    node_type: int | None = None
    alias: str | None = None
    portals: list[Portal] = field(default_factory=list)


@dataclass(slots=True)
class _PortalAcc:
    address: str
    port: int | None = None
    udp: bool = False


@dataclass(slots=True)
class _GroupAcc:
    name: str | None = None
    address: str | None = None
    port: int | None = None
    udp: bool = False
    tag: int | None = None
    has_tag: bool = False


def _usable_port(port: int | None, udp: bool) -> bool:
    # iSCSI runs over TCP, and port 0 ("the protocol's canonical port", RFC 4171 6.3.2) is not
    # an address we can connect to, so neither makes a usable portal.
    return port is not None and port != 0 and not udp


class _RecordBuilder:
    """Groups a response's operating attributes into node and portal-group records.

    An object starts at its first key attribute (iSCSI Name; Portal IP Address; PG iSCSI Name
    or PG Portal IP Addr) and ends where another object starts. Attributes of objects we did
    not ask for (entities, DDs) are skipped; their key ends the current portal or group.
    """

    def __init__(self) -> None:
        self.nodes: list[NodeRecord] = []
        self.groups: list[PortalGroupRecord] = []
        self._node: _NodeAcc | None = None
        self._portal: _PortalAcc | None = None
        self._group: _GroupAcc | None = None

    def _flush_portal(self) -> None:
        acc, self._portal = self._portal, None
        if acc is None or self._node is None or not _usable_port(acc.port, acc.udp):
            return
        assert acc.port is not None
        portal = Portal(acc.address, acc.port, None)
        if portal not in self._node.portals:
            self._node.portals.append(portal)

    def _flush_group(self) -> None:
        acc, self._group = self._group, None
        if acc is None or acc.name is None or acc.address is None:
            return
        if not _usable_port(acc.port, acc.udp):
            return
        assert acc.port is not None
        self.groups.append(
            PortalGroupRecord(node_name=acc.name, address=acc.address, port=acc.port, tag=acc.tag)
        )

    def _flush_node(self) -> None:
        self._flush_portal()
        acc, self._node = self._node, None
        if acc is not None:
            self.nodes.append(
                NodeRecord(
                    name=acc.name,
                    node_type=acc.node_type,
                    alias=acc.alias,
                    portals=tuple(acc.portals),
                )
            )

    def add(self, attr: IsnsAttribute) -> None:
        tag = attr.tag
        if tag == IsnsTag.ISCSI_NAME:
            self._flush_group()
            self._flush_node()
            name = attr.as_string()
            if not name:
                raise RemoteProtocolError("iSNS response lists a node with an empty iSCSI Name")
            self._node = _NodeAcc(name=name)
        elif tag in (IsnsTag.ISCSI_NODE_TYPE, IsnsTag.ISCSI_ALIAS):
            node = self._node
            if node is None or self._portal is not None or self._group is not None:
                return
            if tag == IsnsTag.ISCSI_NODE_TYPE:
                node.node_type = attr.as_uint32()
            else:
                node.alias = attr.as_string() or None
        elif tag == IsnsTag.PORTAL_IP_ADDRESS:
            self._flush_group()
            self._flush_portal()
            self._portal = _PortalAcc(address=attr.as_ip())
        elif tag == IsnsTag.PORTAL_TCP_UDP_PORT:
            if self._portal is not None and self._portal.port is None:
                self._portal.port, self._portal.udp = attr.as_port()
        elif tag == IsnsTag.PG_ISCSI_NAME:
            self._flush_portal()
            if self._group is None or self._group.name is not None:
                self._flush_group()
                self._group = _GroupAcc()
            self._group.name = attr.as_string()
        elif tag == IsnsTag.PG_PORTAL_IP_ADDR:
            self._flush_portal()
            if self._group is None or self._group.address is not None:
                self._flush_group()
                self._group = _GroupAcc()
            self._group.address = attr.as_ip()
        elif tag == IsnsTag.PG_PORTAL_TCP_UDP_PORT:
            if self._group is not None and self._group.port is None:
                self._group.port, self._group.udp = attr.as_port()
        elif tag == IsnsTag.PG_TAG:
            group = self._group
            if group is None or group.has_tag:
                return
            group.has_tag = True
            if not attr.is_nil:  # a zero-length PGT is NULL: no relationship
                tpgt = attr.as_uint32()
                if tpgt > 0xFFFF:
                    raise RemoteProtocolError(f"iSNS portal group tag {tpgt} exceeds 65535")
                group.tag = tpgt
        elif tag in (IsnsTag.ENTITY_IDENTIFIER, IsnsTag.DD_ID, IsnsTag.DD_SET_ID):
            self._flush_group()
            self._flush_portal()

    def finish(self) -> tuple[list[NodeRecord], list[PortalGroupRecord]]:
        self._flush_group()
        self._flush_node()
        return self.nodes, self.groups


def _records(
    attributes: Iterable[IsnsAttribute],
) -> tuple[list[NodeRecord], list[PortalGroupRecord]]:
    builder = _RecordBuilder()
    for attr in attributes:
        builder.add(attr)
    return builder.finish()


def targets_from_records(
    nodes: Iterable[NodeRecord], groups: Iterable[PortalGroupRecord]
) -> tuple[DiscoveredTarget, ...]:
    """Combine nodes and portal groups into targets (RFC 4171 section 3.4 / 5.6.5.2).

    A node's portals are its portal groups with a non-NULL tag, as Portal(address, port, tag).
    A node that no portal group mentions at all falls back to the portals listed with it (no
    tag known). Nodes whose type lacks the Target bit are dropped; a node listed twice (once
    per matching key, or per entity container) is merged.
    """
    group_list = list(groups)
    by_node: dict[str, list[Portal]] = {}
    mentioned: set[str] = set()
    for group in group_list:
        mentioned.add(group.node_name)
        if group.tag is None:
            continue
        portal = Portal(group.address, group.port, group.tag)
        entries = by_node.setdefault(group.node_name, [])
        if portal not in entries:
            entries.append(portal)
    order: list[str] = []
    merged: dict[str, tuple[list[Portal], str | None]] = {}
    for node in nodes:
        if node.node_type is not None and not node.node_type & NodeType.TARGET:
            continue
        if node.name not in merged:
            order.append(node.name)
            merged[node.name] = ([], node.alias)
        portals, alias = merged[node.name]
        if alias is None and node.alias:
            merged[node.name] = (portals, node.alias)
        candidates = by_node.get(node.name, []) if node.name in mentioned else node.portals
        for portal in candidates:
            if portal not in portals:
                portals.append(portal)
    return tuple(
        DiscoveredTarget(name=name, portals=tuple(merged[name][0]), alias=merged[name][1])
        for name in order
    )


def targets_from_query_response(message: IsnsMessage) -> tuple[DiscoveredTarget, ...]:
    """Targets from the DevAttrQryRsp to dev_attr_qry_targets().

    Status 9 (No Such Entry) means no target is visible: open-isns answers that way where
    RFC 4171 section 5.6.5.2 asks for success with no operating attributes. Other non-zero
    status codes raise IsnsError.
    """
    if message.function != IsnsFunction.DEV_ATTR_QRY_RSP:
        raise RemoteProtocolError(
            f"expected DEV_ATTR_QRY_RSP, got {_function_text(message.function)}"
        )
    if message.status == IsnsStatus.NO_SUCH_ENTRY:
        return ()
    check_status(message, IsnsFunction.DEV_ATTR_QRY)
    nodes, groups = _records(message.operating)
    return targets_from_records(nodes, groups)


def node_from_get_next_response(message: IsnsMessage) -> NodeRecord | None:
    """The node of a DevGetNextRsp to dev_get_next(), or None at the end of the walk
    (status 9, No Such Entry, RFC 4171 section 5.6.5.3)."""
    if message.function == IsnsFunction.DEV_GET_NEXT_RSP and (
        message.status == IsnsStatus.NO_SUCH_ENTRY
    ):
        return None
    check_status(message, IsnsFunction.DEV_GET_NEXT)
    key = message.message_key
    if len(key) != 1 or key[0].tag != IsnsTag.ISCSI_NAME or not key[0].as_string():
        raise RemoteProtocolError("DevGetNextRsp for a node lacks its iSCSI Name key")
    nodes, _ = _records(message.operating)
    name = key[0].as_string()
    for node in nodes:
        if node.name == name:
            return node
    # The server returned the key only (attributes it has no value for are omitted).
    return NodeRecord(name=name)


def portal_group_from_get_next_response(
    message: IsnsMessage,
) -> tuple[tuple[IsnsAttribute, ...], PortalGroupRecord | None] | None:
    """(next walk key, the group or None if unusable) from a DevGetNextRsp to
    dev_get_next_portal_group(); None at the end of the walk (status 9)."""
    if message.function == IsnsFunction.DEV_GET_NEXT_RSP and (
        message.status == IsnsStatus.NO_SUCH_ENTRY
    ):
        return None
    check_status(message, IsnsFunction.DEV_GET_NEXT)
    key = message.message_key
    if tuple(attr.tag for attr in key) != _PG_KEY_TAGS or any(a.is_nil for a in key):
        raise RemoteProtocolError("DevGetNextRsp for a portal group lacks its PG key")
    # The operating attributes repeat the key with the tag; a server that sends only the key
    # has no PGT value, which RFC 4171 section 5.6.5.2 treats as NULL (no relationship).
    _, groups = _records(message.operating)
    if not groups:
        _, groups = _records(key)
    return key, (groups[0] if groups else None)
