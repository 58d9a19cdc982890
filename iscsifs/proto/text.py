# The text layer of iSCSI login and text negotiation (RFC 7143 sections 6 and 13): the
# key=value\0 codec with its size rules, reassembly of text split over PDUs by the C bit, the value
# codecs (numbers, booleans, lists, binary), the declarative table of every RFC 7143 section 13 key,
# and the initiator side of text mode negotiation that turns offers and answers into a typed
# NegotiatedParams. It must not do I/O, build PDUs (pdu.py) or know about CHAP arithmetic (chap.py).
# Error messages name keys but never the value of a sensitive (CHAP) key.

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError

# --------------------------------------------------------------------------------------------
# Limits (RFC 7143 section 6.1)
# --------------------------------------------------------------------------------------------

#: A key name (standard-label) is at most 63 characters.
MAX_KEY_LENGTH = 63
#: A simple value is at most 255 bytes unless its key says otherwise.
MAX_VALUE_LENGTH = 255
#: Long binary items (CHAP_C, CHAP_R as encoded text) and whole lists of values.
MAX_LONG_VALUE_LENGTH = 8192
#: Every implementation must accept at least this much key=value text in one negotiation
#: sequence; used as the default cap of TextAssembler.
MIN_TEXT_CAPACITY = 8192

#: Reserved answer values (RFC 7143 section 6.2).
NOT_UNDERSTOOD = "NotUnderstood"
REJECT = "Reject"
IRRELEVANT = "Irrelevant"
_RESERVED_ANSWERS = frozenset({NOT_UNDERSTOOD, REJECT, IRRELEVANT})


# --------------------------------------------------------------------------------------------
# key=value\0 codec
# --------------------------------------------------------------------------------------------


def _check_key(key: str, *, local: bool) -> None:
    error = LocalProtocolError if local else RemoteProtocolError
    if not key:
        raise error("text key=value pair with an empty key")
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY_LENGTH:
        raise error(f"text key {key[:MAX_KEY_LENGTH]!r}... is longer than 63 bytes")
    # standard-label characters, plus '#' of X# keys; RFC 7144's iSCSIProtocolLevel starts with
    # a lower-case letter, so the "must begin with a capital" rule is not enforced.
    if not all(0x21 <= b <= 0x7E and b != 0x3D for b in raw):
        raise error(f"text key {key!r} has a character a key name cannot contain")


def _value_limit(key: str) -> int:
    spec = KEYS.get(key)
    if spec is not None:
        return spec.max_length
    # An unknown key may carry a list-of-values: cap the whole, and each element below.
    return MAX_LONG_VALUE_LENGTH


def _check_value(key: str, value: str, raw: bytes, *, local: bool) -> None:
    error = LocalProtocolError if local else RemoteProtocolError
    if b"\0" in raw:
        raise error(f"text value of {key} contains a NUL byte")
    spec = KEYS.get(key)
    limit = _value_limit(key)
    shown = "" if _is_sensitive(key) else f" ({len(raw)} bytes)"
    if len(raw) > limit:
        raise error(f"text value of {key} is longer than {limit} bytes{shown}")
    # A list-of-values: the 255-byte limit applies to each element (RFC 7143 section 6.1).
    if (spec is None or spec.value_type is ValueType.LIST) and any(
        len(part.encode("utf-8")) > MAX_VALUE_LENGTH for part in value.split(",")
    ):
        raise error(f"an element of the value of {key} is longer than 255 bytes")


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """key=value\\0 for each pair, in order (RFC 7143 section 6.1). Checks what we send."""
    out = bytearray()
    for key, value in pairs:
        _check_key(key, local=True)
        raw = value.encode("utf-8")
        _check_value(key, value, raw, local=True)
        out += key.encode("ascii")
        out += b"="
        out += raw
        out += b"\0"
    return bytes(out)


def decode_text(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Split a whole logical text data segment into (key, value) pairs, in order.

    Every pair must end in a NUL, contain '=', have a valid key and a UTF-8 value within the
    length limits; anything else is the peer's fault (RemoteProtocolError). Duplicates are kept:
    whether a repeated key is allowed is for the negotiation to judge.
    """
    raw = bytes(data)
    if not raw:
        return []
    if raw[-1] != 0:
        raise RemoteProtocolError("text data does not end with a NUL after its last key=value")
    pairs: list[tuple[str, str]] = []
    for item in raw[:-1].split(b"\0"):
        if not item:
            raise RemoteProtocolError("text data has an empty key=value pair (two NULs in a row)")
        key_raw, eq, value_raw = item.partition(b"=")
        if not eq:
            raise RemoteProtocolError("text key=value pair without '='")
        try:
            key = key_raw.decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError("text key is not ASCII") from None
        _check_key(key, local=False)
        try:
            value = value_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"text value of {key} is not valid UTF-8") from None
        _check_value(key, value, value_raw, local=False)
        pairs.append((key, value))
    return pairs


class TextAssembler:
    """Joins the data segments of a run of PDUs with the C (continue) bit set.

    RFC 7143 section 6.1: segments of PDUs with C=1, ended by one with C=0, form one logical
    text data segment; a key=value pair may be split anywhere across them. feed() returns None
    while more is to come and the decoded pairs when the run ends. The size cap is checked
    before anything more is buffered, so a peer cannot make us hold more than max_size bytes.
    """

    __slots__ = ("_buffer", "_max_size")

    def __init__(self, max_size: int = MIN_TEXT_CAPACITY) -> None:
        if max_size < MIN_TEXT_CAPACITY:
            raise LocalProtocolError(f"text size cap {max_size} is below the RFC minimum 8192")
        self._max_size = max_size
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """True while a run of C=1 segments is open."""
        return bool(self._buffer)

    @property
    def max_size(self) -> int:
        return self._max_size

    def feed(self, data: bytes | bytearray | memoryview, *, cont: bool) -> list[tuple[str, str]] | None:
        if len(self._buffer) + len(data) > self._max_size:
            self._buffer.clear()
            raise RemoteProtocolError(
                f"text split over PDUs exceeds {self._max_size} bytes in total"
            )
        self._buffer += data
        if cont:
            return None
        whole = bytes(self._buffer)
        self._buffer.clear()
        return decode_text(whole)

    def reset(self) -> None:
        self._buffer.clear()


# --------------------------------------------------------------------------------------------
# Value codecs (RFC 7143 section 6.1)
# --------------------------------------------------------------------------------------------

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def parse_number(text: str, *, large: bool = False) -> int:
    """numerical-value: a decimal-constant or hex-constant below 2**64.

    With large=True, a large-numerical-value: hex- or base64-constant of any size as well.
    Raises ValueError (callers turn it into the error of whoever sent it).
    """
    if len(text) > 2 and text[0] == "0" and text[1] in "xX":
        digits = text[2:]
        if not set(digits) <= _HEX_DIGITS:
            raise ValueError(f"bad hex constant {text!r}")
        n = int(digits, 16)
    elif large and len(text) > 2 and text[0] == "0" and text[1] in "bB":
        n = int.from_bytes(parse_binary(text), "big")
        return n
    elif text.isascii() and text.isdigit() and (text == "0" or text[0] != "0"):
        n = int(text)
    else:
        raise ValueError(f"bad number {text!r}")
    if not large and n >= 1 << 64:
        raise ValueError(f"number {text!r} is not below 2**64")
    return n


def format_number(n: int) -> str:
    """Decimal below 2**64 (RFC 7143 section 6.1 forbids decimal from there on), else hex."""
    if n < 0:
        raise LocalProtocolError(f"negative number {n} has no iSCSI text form")
    if n < 1 << 64:
        return str(n)
    return "0x" + format(n, "x")


def parse_bool(text: str) -> bool:
    """boolean-value: exactly "Yes" or "No"."""
    if text == "Yes":
        return True
    if text == "No":
        return False
    raise ValueError(f"bad boolean {text!r}")


def format_bool(value: bool) -> str:
    return "Yes" if value else "No"


def parse_list(text: str) -> list[str]:
    """list-of-values: text-values separated by commas, none of them empty."""
    items = text.split(",")
    if any(not item for item in items):
        raise ValueError(f"bad list {text!r}")
    return items


def format_list(items: Iterable[str]) -> str:
    items = list(items)
    if not items or any(not item or "," in item for item in items):
        raise LocalProtocolError(f"list {items!r} cannot be sent as a list-of-values")
    return ",".join(items)


def parse_binary(text: str) -> bytes:
    """binary-value as hex-constant (0x..) or base64-constant (0b..) (RFC 7143 section 6.1).

    An odd number of hex digits has an implied leading zero digit: n digits make (n+1)//2 bytes.
    """
    if len(text) < 3 or text[0] != "0":
        raise ValueError("binary value is neither 0x hex nor 0b base64")
    body = text[2:]
    if text[1] in "xX":
        if not set(body) <= _HEX_DIGITS:
            raise ValueError("bad hex binary value")
        if len(body) % 2:
            body = "0" + body
        return bytes.fromhex(body)
    if text[1] in "bB":
        stripped = body.rstrip("=")
        if (
            not stripped
            or not set(stripped) <= _B64_CHARS
            or len(body) - len(stripped) > 2
            or len(stripped) % 4 == 1
        ):
            raise ValueError("bad base64 binary value")
        padded = stripped + "=" * (-len(stripped) % 4)
        try:
            return base64.b64decode(padded, validate=True)
        except binascii.Error:
            raise ValueError("bad base64 binary value") from None
    raise ValueError("binary value is neither 0x hex nor 0b base64")


def format_binary(data: bytes, *, use_base64: bool = False) -> str:
    if not data:
        raise LocalProtocolError("an empty binary value has no iSCSI text form")
    if use_base64:
        return "0b" + base64.b64encode(data).decode("ascii")
    return "0x" + data.hex()


# --------------------------------------------------------------------------------------------
# The key table (RFC 7143 sections 12.1 and 13, RFC 7144 section 2.1)
# --------------------------------------------------------------------------------------------


class KeyKind(enum.Enum):
    """How a key's value is settled (RFC 7143 section 6.2 and each key's "Result function")."""

    BOOL_AND = "and"  # result is offer AND answer
    BOOL_OR = "or"  # result is offer OR answer
    NUMERIC_MIN = "min"  # answer must be <= offer; result is the answer
    NUMERIC_MAX = "max"  # answer must be >= offer; result is the answer
    LIST = "list"  # answer is the first value of the offer's list the responder supports
    DECLARATIVE = "declarative"  # one side states its value; nobody answers
    OBSOLETE = "obsolete"  # RFC 7143 section 13.25: answered with Reject, never offered


class ValueType(enum.Enum):
    BOOLEAN = "boolean-value"
    NUMBER = "numerical-value"
    LIST = "list-of-values"
    ENUM = "one of a fixed set of text-values"
    TEXT = "text-value"
    ISCSI_NAME = "iSCSI-name-value"
    LOCAL_NAME = "iSCSI-local-name-value"
    ADDRESS = "TargetAddress value"
    BINARY = "binary-value"


class Use(enum.Enum):
    """When a key may appear ("Use:" in RFC 7143 section 13)."""

    LO = "leading only"  # the leading connection's login of a session
    IO = "initialize only"  # the login of any connection
    ALL = "any time"  # login or full feature phase
    FFPO = "full feature phase only"
    SECURITY = "security negotiation stage"  # RFC 7143 section 12.1: AuthMethod and its keys


class Sender(enum.Enum):
    INITIATOR = "initiator"
    TARGET = "target"
    BOTH = "initiator and target"


class Scope(enum.Enum):
    SW = "session-wide"
    CO = "connection only"


#: One way a key becomes irrelevant: all of these (key, value) results hold.
IrrelevantWhen = tuple[tuple[str, str], ...]

_DISCOVERY: IrrelevantWhen = (("SessionType", "Discovery"),)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    """One row of the key table: everything needed to offer, answer and check the key."""

    name: str
    kind: KeyKind
    value_type: ValueType
    default: str | None
    use: Use
    senders: Sender
    scope: Scope
    section: str
    range: tuple[int, int] | None = None
    #: The values we understand for LIST/ENUM keys (others are answered or judged unknown).
    values: tuple[str, ...] | None = None
    #: The key is irrelevant when any one of these conjunctions holds.
    irrelevant_when: tuple[IrrelevantWhen, ...] = ()
    max_length: int = MAX_VALUE_LENGTH
    #: Values of this key never appear in messages (CHAP material).
    sensitive: bool = False
    #: Defined after RFC 3720, so an older peer may answer NotUnderstood.
    post_rfc3720: bool = False


def _spec(**kw: object) -> KeySpec:
    return KeySpec(**kw)  # type: ignore[arg-type]


_BYTES_24 = (512, 2**24 - 1)

_TABLE: tuple[KeySpec, ...] = (
    # --- security (RFC 7143 section 12.1) ---
    _spec(name="AuthMethod", kind=KeyKind.LIST, value_type=ValueType.LIST, default="None",
          use=Use.SECURITY, senders=Sender.BOTH, scope=Scope.CO, section="12.1",
          values=("CHAP", "None"), max_length=MAX_LONG_VALUE_LENGTH),
    _spec(name="CHAP_A", kind=KeyKind.LIST, value_type=ValueType.LIST, default=None,
          use=Use.SECURITY, senders=Sender.BOTH, scope=Scope.CO, section="12.1.3",
          sensitive=True, max_length=MAX_LONG_VALUE_LENGTH),
    _spec(name="CHAP_I", kind=KeyKind.DECLARATIVE, value_type=ValueType.NUMBER, default=None,
          use=Use.SECURITY, senders=Sender.BOTH, scope=Scope.CO, section="12.1.3",
          range=(0, 255), sensitive=True),
    _spec(name="CHAP_C", kind=KeyKind.DECLARATIVE, value_type=ValueType.BINARY, default=None,
          use=Use.SECURITY, senders=Sender.BOTH, scope=Scope.CO, section="12.1.3",
          sensitive=True, max_length=MAX_LONG_VALUE_LENGTH),
    _spec(name="CHAP_N", kind=KeyKind.DECLARATIVE, value_type=ValueType.TEXT, default=None,
          use=Use.SECURITY, senders=Sender.BOTH, scope=Scope.CO, section="12.1.3",
          sensitive=True),
    _spec(name="CHAP_R", kind=KeyKind.DECLARATIVE, value_type=ValueType.BINARY, default=None,
          use=Use.SECURITY, senders=Sender.BOTH, scope=Scope.CO, section="12.1.3",
          sensitive=True, max_length=MAX_LONG_VALUE_LENGTH),
    # --- operational (RFC 7143 section 13) ---
    _spec(name="HeaderDigest", kind=KeyKind.LIST, value_type=ValueType.LIST, default="None",
          use=Use.IO, senders=Sender.BOTH, scope=Scope.CO, section="13.1",
          values=("CRC32C", "None"), max_length=MAX_LONG_VALUE_LENGTH),
    _spec(name="DataDigest", kind=KeyKind.LIST, value_type=ValueType.LIST, default="None",
          use=Use.IO, senders=Sender.BOTH, scope=Scope.CO, section="13.1",
          values=("CRC32C", "None"), max_length=MAX_LONG_VALUE_LENGTH),
    _spec(name="MaxConnections", kind=KeyKind.NUMERIC_MIN, value_type=ValueType.NUMBER,
          default="1", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.2",
          range=(1, 65535), irrelevant_when=(_DISCOVERY,)),
    _spec(name="SendTargets", kind=KeyKind.DECLARATIVE, value_type=ValueType.TEXT, default=None,
          use=Use.FFPO, senders=Sender.INITIATOR, scope=Scope.SW, section="13.3"),
    _spec(name="TargetName", kind=KeyKind.DECLARATIVE, value_type=ValueType.ISCSI_NAME,
          default=None, use=Use.IO, senders=Sender.BOTH, scope=Scope.SW, section="13.4",
          max_length=223),
    _spec(name="InitiatorName", kind=KeyKind.DECLARATIVE, value_type=ValueType.ISCSI_NAME,
          default=None, use=Use.IO, senders=Sender.INITIATOR, scope=Scope.SW, section="13.5",
          max_length=223),
    _spec(name="TargetAlias", kind=KeyKind.DECLARATIVE, value_type=ValueType.LOCAL_NAME,
          default=None, use=Use.ALL, senders=Sender.TARGET, scope=Scope.SW, section="13.6"),
    _spec(name="InitiatorAlias", kind=KeyKind.DECLARATIVE, value_type=ValueType.LOCAL_NAME,
          default=None, use=Use.ALL, senders=Sender.INITIATOR, scope=Scope.SW, section="13.7"),
    _spec(name="TargetAddress", kind=KeyKind.DECLARATIVE, value_type=ValueType.ADDRESS,
          default=None, use=Use.ALL, senders=Sender.TARGET, scope=Scope.SW, section="13.8"),
    _spec(name="TargetPortalGroupTag", kind=KeyKind.DECLARATIVE, value_type=ValueType.NUMBER,
          default=None, use=Use.IO, senders=Sender.TARGET, scope=Scope.SW, section="13.9",
          range=(0, 65535)),
    _spec(name="InitialR2T", kind=KeyKind.BOOL_OR, value_type=ValueType.BOOLEAN, default="Yes",
          use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.10",
          irrelevant_when=(_DISCOVERY,)),
    _spec(name="ImmediateData", kind=KeyKind.BOOL_AND, value_type=ValueType.BOOLEAN,
          default="Yes", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.11",
          irrelevant_when=(_DISCOVERY,)),
    _spec(name="MaxRecvDataSegmentLength", kind=KeyKind.DECLARATIVE,
          value_type=ValueType.NUMBER, default="8192", use=Use.ALL, senders=Sender.BOTH,
          scope=Scope.CO, section="13.12", range=_BYTES_24),
    _spec(name="MaxBurstLength", kind=KeyKind.NUMERIC_MIN, value_type=ValueType.NUMBER,
          default="262144", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.13",
          range=_BYTES_24, irrelevant_when=(_DISCOVERY,)),
    _spec(name="FirstBurstLength", kind=KeyKind.NUMERIC_MIN, value_type=ValueType.NUMBER,
          default="65536", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.14",
          range=_BYTES_24,
          irrelevant_when=(_DISCOVERY, (("InitialR2T", "Yes"), ("ImmediateData", "No")))),
    _spec(name="DefaultTime2Wait", kind=KeyKind.NUMERIC_MAX, value_type=ValueType.NUMBER,
          default="2", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.15",
          range=(0, 3600)),
    _spec(name="DefaultTime2Retain", kind=KeyKind.NUMERIC_MIN, value_type=ValueType.NUMBER,
          default="20", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.16",
          range=(0, 3600)),
    _spec(name="MaxOutstandingR2T", kind=KeyKind.NUMERIC_MIN, value_type=ValueType.NUMBER,
          default="1", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.17",
          range=(1, 65535), irrelevant_when=(_DISCOVERY,)),
    _spec(name="DataPDUInOrder", kind=KeyKind.BOOL_OR, value_type=ValueType.BOOLEAN,
          default="Yes", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.18",
          irrelevant_when=(_DISCOVERY,)),
    _spec(name="DataSequenceInOrder", kind=KeyKind.BOOL_OR, value_type=ValueType.BOOLEAN,
          default="Yes", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.19",
          irrelevant_when=(_DISCOVERY,)),
    _spec(name="ErrorRecoveryLevel", kind=KeyKind.NUMERIC_MIN, value_type=ValueType.NUMBER,
          default="0", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.20",
          range=(0, 2)),
    _spec(name="SessionType", kind=KeyKind.DECLARATIVE, value_type=ValueType.ENUM,
          default="Normal", use=Use.LO, senders=Sender.INITIATOR, scope=Scope.SW,
          section="13.21", values=("Discovery", "Normal")),
    _spec(name="TaskReporting", kind=KeyKind.LIST, value_type=ValueType.LIST,
          default="RFC3720", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.23",
          values=("RFC3720", "ResponseFence", "FastAbort"), irrelevant_when=(_DISCOVERY,),
          post_rfc3720=True),
    _spec(name="iSCSIProtocolLevel", kind=KeyKind.NUMERIC_MIN, value_type=ValueType.NUMBER,
          default="1", use=Use.LO, senders=Sender.BOTH, scope=Scope.SW,
          section="13.24 (RFC 7144 2.1)", range=(0, 31), irrelevant_when=(_DISCOVERY,),
          post_rfc3720=True),
    _spec(name="X#NodeArchitecture", kind=KeyKind.DECLARATIVE, value_type=ValueType.LIST,
          default=None, use=Use.LO, senders=Sender.BOTH, scope=Scope.SW, section="13.26",
          post_rfc3720=True),
    # --- obsoleted by RFC 7143 section 13.25: answer Reject (never NotUnderstood) ---
    _spec(name="OFMarker", kind=KeyKind.OBSOLETE, value_type=ValueType.BOOLEAN, default="No",
          use=Use.IO, senders=Sender.BOTH, scope=Scope.CO, section="13.25"),
    _spec(name="IFMarker", kind=KeyKind.OBSOLETE, value_type=ValueType.BOOLEAN, default="No",
          use=Use.IO, senders=Sender.BOTH, scope=Scope.CO, section="13.25"),
    _spec(name="OFMarkInt", kind=KeyKind.OBSOLETE, value_type=ValueType.TEXT, default=None,
          use=Use.IO, senders=Sender.BOTH, scope=Scope.CO, section="13.25"),
    _spec(name="IFMarkInt", kind=KeyKind.OBSOLETE, value_type=ValueType.TEXT, default=None,
          use=Use.IO, senders=Sender.BOTH, scope=Scope.CO, section="13.25"),
)

#: Every key iscsifs knows, by name.
KEYS: Mapping[str, KeySpec] = {spec.name: spec for spec in _TABLE}


def is_extension_key(key: str) -> bool:
    """X-<vendor> (private) or X#<registered> (public) extension key (RFC 7143 section 13.22)."""
    return key.startswith(("X-", "X#")) and len(key) > 2


def _is_sensitive(key: str) -> bool:
    spec = KEYS.get(key)
    return spec is not None and spec.sensitive


def describe(key: str, value: str) -> str:
    """key=value for messages, with the value hidden for sensitive keys."""
    return f"{key}=<hidden>" if _is_sensitive(key) else f"{key}={value!r}"


def is_irrelevant(spec: KeySpec, settled: Mapping[str, str]) -> bool:
    """Whether one of the key's "Irrelevant when" conditions holds for these results."""
    return any(
        all(settled.get(key) == value for key, value in condition)
        for condition in spec.irrelevant_when
    )


def check_value(spec: KeySpec, value: str) -> str | None:
    """None if value is admissible for the key, else a short reason (without the value)."""
    try:
        match spec.value_type:
            case ValueType.BOOLEAN:
                parse_bool(value)
            case ValueType.NUMBER:
                n = parse_number(value)
                if spec.range is not None and not spec.range[0] <= n <= spec.range[1]:
                    return f"outside {spec.range[0]}..{spec.range[1]}"
            case ValueType.LIST:
                parse_list(value)
            case ValueType.ENUM:
                if spec.values is not None and value not in spec.values:
                    return "not one of " + ", ".join(spec.values)
            case ValueType.BINARY:
                parse_binary(value)
            case ValueType.ISCSI_NAME | ValueType.TEXT | ValueType.ADDRESS:
                if not value:
                    return "empty"
            case ValueType.LOCAL_NAME:
                pass
    except ValueError as exc:
        return "malformed" if spec.sensitive else str(exc)
    return None


# --------------------------------------------------------------------------------------------
# Negotiated result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiatedParams:
    """Every operational value of a connection and its session after login, typed.

    Defaults are the RFC 7143 section 13 defaults, which is what holds for any key that was not
    negotiated (or was answered Reject/Irrelevant/NotUnderstood).
    """

    session_type: str = "Normal"
    header_digest: bool = False
    data_digest: bool = False
    #: What WE declared: the largest data segment the target may send us in one PDU.
    max_recv_data_segment_length: int = 8192
    #: What the TARGET declared: the largest data segment we may send it (8192 if it said
    #: nothing, as tgtd does).
    max_xmit_data_segment_length: int = 8192
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    initial_r2t: bool = True
    immediate_data: bool = True
    max_outstanding_r2t: int = 1
    max_connections: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    default_time2wait: int = 2
    default_time2retain: int = 20
    task_reporting: str = "RFC3720"
    iscsi_protocol_level: int = 1
    target_portal_group_tag: int | None = None
    target_alias: str | None = None

    def as_pairs(self) -> list[tuple[str, str]]:
        """Key=Value lines for display (MaxXmitDataSegmentLength is not a wire key)."""
        digest = {True: "CRC32C", False: "None"}
        pairs = [
            ("SessionType", self.session_type),
            ("HeaderDigest", digest[self.header_digest]),
            ("DataDigest", digest[self.data_digest]),
            ("MaxRecvDataSegmentLength", str(self.max_recv_data_segment_length)),
            ("MaxXmitDataSegmentLength", str(self.max_xmit_data_segment_length)),
            ("MaxBurstLength", str(self.max_burst_length)),
            ("FirstBurstLength", str(self.first_burst_length)),
            ("InitialR2T", format_bool(self.initial_r2t)),
            ("ImmediateData", format_bool(self.immediate_data)),
            ("MaxOutstandingR2T", str(self.max_outstanding_r2t)),
            ("MaxConnections", str(self.max_connections)),
            ("DataPDUInOrder", format_bool(self.data_pdu_in_order)),
            ("DataSequenceInOrder", format_bool(self.data_sequence_in_order)),
            ("ErrorRecoveryLevel", str(self.error_recovery_level)),
            ("DefaultTime2Wait", str(self.default_time2wait)),
            ("DefaultTime2Retain", str(self.default_time2retain)),
            ("TaskReporting", self.task_reporting),
            ("iSCSIProtocolLevel", str(self.iscsi_protocol_level)),
        ]
        if self.target_portal_group_tag is not None:
            pairs.append(("TargetPortalGroupTag", str(self.target_portal_group_tag)))
        if self.target_alias is not None:
            pairs.append(("TargetAlias", self.target_alias))
        return pairs


# --------------------------------------------------------------------------------------------
# Result functions (RFC 7143 section 6.2)
# --------------------------------------------------------------------------------------------


def answer_offer(spec: KeySpec, offered: str, ours: str) -> str:
    """What a responder whose own value is `ours` answers to an offer (RFC 7143 6.2.1, 6.2.2).

    Returns Reject when the offer is inadmissible or there is nothing in common.
    """
    match spec.kind:
        case KeyKind.LIST:
            try:
                theirs = parse_list(offered)
                acceptable = parse_list(ours)
            except ValueError:
                return REJECT
            for item in theirs:  # the first value of the OFFER's list that we support
                if item in acceptable:
                    return item
            return REJECT
        case KeyKind.BOOL_AND | KeyKind.BOOL_OR:
            try:
                a, b = parse_bool(offered), parse_bool(ours)
            except ValueError:
                return REJECT
            return format_bool(a and b if spec.kind is KeyKind.BOOL_AND else a or b)
        case KeyKind.NUMERIC_MIN | KeyKind.NUMERIC_MAX:
            if check_value(spec, offered) is not None or check_value(spec, ours) is not None:
                return REJECT
            x, y = parse_number(offered), parse_number(ours)
            return format_number(min(x, y) if spec.kind is KeyKind.NUMERIC_MIN else max(x, y))
        case KeyKind.OBSOLETE:
            return REJECT
        case KeyKind.DECLARATIVE:
            raise LocalProtocolError(f"{spec.name} is declarative and is never answered")


def check_answer(spec: KeySpec, offered: str, answer: str) -> str:
    """Validate a responder's answer to our offer; return the resulting value.

    The answer must be what the result function allows for our offer (RFC 7143 section 6.2):
    one value out of our list, a number on the correct side of ours and inside the key's range,
    a boolean the function can produce. Violations are RemoteProtocolError naming the key.
    """
    name = spec.name

    def bad(why: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"target answered {describe(name, answer)}: {why}")

    match spec.kind:
        case KeyKind.LIST:
            if "," in answer:
                raise bad("a list where one value must be chosen")
            if answer not in parse_list(offered):
                raise bad(f"not one of the offered values {offered!r}" if not spec.sensitive
                          else "not one of the offered values")
            return answer
        case KeyKind.BOOL_AND | KeyKind.BOOL_OR:
            try:
                got = parse_bool(answer)
            except ValueError:
                raise bad("not Yes or No") from None
            ours = parse_bool(offered)
            if spec.kind is KeyKind.BOOL_AND and not ours and got:
                raise bad("the AND of our No can only be No")
            if spec.kind is KeyKind.BOOL_OR and ours and not got:
                raise bad("the OR of our Yes can only be Yes")
            return answer
        case KeyKind.NUMERIC_MIN | KeyKind.NUMERIC_MAX:
            why = check_value(spec, answer)
            if why is not None:
                raise bad(why)
            got_n, ours_n = parse_number(answer), parse_number(offered)
            if spec.kind is KeyKind.NUMERIC_MIN and got_n > ours_n:
                raise bad(f"above our offer {ours_n} (result function is Minimum)")
            if spec.kind is KeyKind.NUMERIC_MAX and got_n < ours_n:
                raise bad(f"below our offer {ours_n} (result function is Maximum)")
            return format_number(got_n)
        case _:
            raise LocalProtocolError(f"{name} is not a negotiated key")


def answer_optional(spec: KeySpec, offered: str) -> bool:
    """The two cases where the responder may stay silent (RFC 7143 section 6.2.2).

    AND with our No is No, and OR with our Yes is Yes, whatever the other side thinks.
    """
    if spec.kind is KeyKind.BOOL_AND:
        return offered == "No"
    if spec.kind is KeyKind.BOOL_OR:
        return offered == "Yes"
    return False


# --------------------------------------------------------------------------------------------
# The initiator's negotiator
# --------------------------------------------------------------------------------------------


class Negotiator:
    """Initiator side of login/text operational negotiation (RFC 7143 section 6.2).

    Built with our offers (key -> value text) for one login; initial_pairs() is what we send
    first; receive() takes the target's pairs (answers to our offers, its declarations and its
    own offers) and returns the answers we owe it; done says every offer is settled; result()
    gives the typed NegotiatedParams. Security keys (AuthMethod, CHAP_*) are not handled here.

    Offers of keys that are irrelevant for the session (e.g. MaxBurstLength in a discovery
    session, FirstBurstLength when our InitialR2T=Yes and ImmediateData=No already force the
    outcome) are dropped rather than sent.
    """

    def __init__(
        self,
        offers: Mapping[str, str],
        *,
        session_type: str = "Normal",
        leading: bool = True,
    ) -> None:
        if session_type not in ("Normal", "Discovery"):
            raise LocalProtocolError(f"unknown session type {session_type!r}")
        self._session_type = session_type
        self._leading = leading
        # Values we hold for every key we might have to answer: our offers, else defaults.
        self._ours: dict[str, str] = {}
        for key, value in offers.items():
            self._validate_offer(key, value)
            self._ours[key] = value
        # Results known before anyone answers: used to decide irrelevance of our own offers.
        forced: dict[str, str] = {"SessionType": session_type}
        for key, value in self._ours.items():
            spec = KEYS.get(key)
            if spec is not None and answer_optional(spec, value):
                forced[key] = value
        self._offers: dict[str, str] = {}
        for key, value in self._ours.items():
            spec = KEYS.get(key)
            if spec is not None and (
                is_irrelevant(spec, forced) or (spec.use is Use.LO and not leading)
            ):
                continue
            self._offers[key] = value
        self._settled: dict[str, str] = {"SessionType": session_type}
        self._answered: set[str] = set()  # our offers the target has answered
        self._declared: dict[str, str] = {}  # the target's declarations
        self._target_addresses: list[str] = []
        self._not_understood: list[str] = []
        self._sent = False
        for key, value in self._offers.items():
            spec = KEYS.get(key)
            if spec is not None and (
                spec.kind is KeyKind.DECLARATIVE or answer_optional(spec, value)
            ):
                self._settled[key] = value

    def _validate_offer(self, key: str, value: str) -> None:
        _check_key(key, local=True)
        if is_extension_key(key):
            return
        spec = KEYS.get(key)
        if spec is None:
            raise LocalProtocolError(f"cannot offer unknown key {key}")
        if spec.use in (Use.SECURITY, Use.FFPO) or spec.kind is KeyKind.OBSOLETE:
            raise LocalProtocolError(f"{key} cannot be offered in operational negotiation")
        if spec.senders is Sender.TARGET:
            raise LocalProtocolError(f"{key} is sent by targets only")
        if key in ("SessionType", "InitiatorName", "TargetName"):
            raise LocalProtocolError(f"{key} is set by the login, not an offer")
        why = check_value(spec, value)
        if why is not None:
            raise LocalProtocolError(f"bad offer {describe(key, value)}: {why}")
        if spec.kind is KeyKind.LIST:
            unknown = [v for v in parse_list(value) if spec.values and v not in spec.values]
            if unknown:
                raise LocalProtocolError(f"offer of {key} has unsupported values {unknown}")

    @property
    def session_type(self) -> str:
        return self._session_type

    def initial_pairs(self) -> list[tuple[str, str]]:
        """Our offers and declarations, to send in the first operational request."""
        self._sent = True
        return list(self._offers.items())

    @property
    def unanswered(self) -> tuple[str, ...]:
        """Offered keys the target still owes an answer for."""
        return tuple(
            key
            for key in self._offers
            if key not in self._answered
            and key not in self._settled
            and not self._is_declarative(key)
        )

    @property
    def done(self) -> bool:
        return self._sent and not self.unanswered

    @property
    def not_understood(self) -> tuple[str, ...]:
        """Our offers the target answered with NotUnderstood (for diagnostics)."""
        return tuple(self._not_understood)

    @staticmethod
    def _is_declarative(key: str) -> bool:
        spec = KEYS.get(key)
        return spec is not None and spec.kind is KeyKind.DECLARATIVE

    def receive(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Take one logical text segment from the target; return the answers we owe it."""
        answers: list[tuple[str, str]] = []
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen and key != "TargetAddress":
                raise RemoteProtocolError(f"target sent {key} twice in one response")
            seen.add(key)
            answer = self._receive_one(key, value)
            if answer is not None:
                answers.append((key, answer))
        return answers

    def _receive_one(self, key: str, value: str) -> str | None:
        spec = KEYS.get(key)
        if spec is None:
            if key in self._offers:  # an extension key we offered: take whatever comes back
                if key in self._answered:
                    raise RemoteProtocolError(f"target answered {key} twice")
                self._answered.add(key)
                self._settled[key] = value
                if value == NOT_UNDERSTOOD:
                    self._not_understood.append(key)
                return None
            if value in _RESERVED_ANSWERS:
                raise RemoteProtocolError(f"target answered {key}, which we never offered")
            return NOT_UNDERSTOOD  # RFC 7143 6.2: not understood keys are answered so
        if spec.use is Use.SECURITY:
            raise RemoteProtocolError(f"target sent security key {key} outside security stage")
        if spec.use is Use.FFPO:
            raise RemoteProtocolError(f"target sent {key} during login")
        if spec.senders is Sender.INITIATOR:
            raise RemoteProtocolError(f"target sent {key}, which only initiators send")
        if spec.kind is KeyKind.DECLARATIVE:
            self._receive_declaration(spec, value)
            return None
        if spec.kind is KeyKind.OBSOLETE:
            if key in self._answered or key in self._settled:
                raise RemoteProtocolError(f"target sent {key} twice")
            self._settled[key] = REJECT
            return REJECT  # RFC 7143 13.25: Reject, never NotUnderstood
        if spec.use is Use.LO and not self._leading:
            raise RemoteProtocolError(f"target sent leading-only key {key} in a non-leading login")
        if key in self._offers:
            self._receive_answer(spec, value)
            return None
        return self._receive_offer(spec, value)

    def _receive_declaration(self, spec: KeySpec, value: str) -> None:
        key = spec.name
        why = check_value(spec, value)
        if why is not None:
            raise RemoteProtocolError(f"target declared {describe(key, value)}: {why}")
        if key == "TargetAddress":
            self._target_addresses.append(value)
            return
        previous = self._declared.get(key)
        if previous is not None and previous != value:
            raise RemoteProtocolError(f"target declared {key} again with a different value")
        self._declared[key] = value

    def _receive_answer(self, spec: KeySpec, value: str) -> None:
        key = spec.name
        if key in self._answered:
            raise RemoteProtocolError(f"target answered {key} twice")
        self._answered.add(key)
        offered = self._offers[key]
        if value == NOT_UNDERSTOOD:
            if not spec.post_rfc3720:
                raise RemoteProtocolError(
                    f"target answered NotUnderstood to {key}, a key every iSCSI node supports"
                )
            self._not_understood.append(key)
            self._settle_default(spec)
        elif value == REJECT:
            self._settle_default(spec)  # RFC 7143 6.2: the key keeps its default
        elif value == IRRELEVANT:
            if not spec.irrelevant_when:
                raise RemoteProtocolError(f"target answered Irrelevant to {key}")
            self._settle_default(spec)
        else:
            self._settled[key] = check_answer(spec, offered, value)

    def _settle_default(self, spec: KeySpec) -> None:
        if spec.default is not None:
            self._settled[spec.name] = spec.default
        else:
            self._settled.pop(spec.name, None)

    def _receive_offer(self, spec: KeySpec, value: str) -> str:
        key = spec.name
        if key in self._settled and key not in self._offers:
            raise RemoteProtocolError(f"target offered {key} again after it was settled")
        if value in _RESERVED_ANSWERS:
            raise RemoteProtocolError(f"target answered {key}, which we never offered")
        if is_irrelevant(spec, self._settled):
            self._settle_default(spec)
            return IRRELEVANT
        ours = self._ours.get(key, spec.default)
        if ours is None:  # pragma: no cover - every negotiated key has a default
            return REJECT
        answer = answer_offer(spec, value, ours)
        if answer == REJECT:
            self._settle_default(spec)
        else:
            self._settled[key] = answer
        return answer

    def result(self) -> NegotiatedParams:
        """The typed outcome. Raises LocalProtocolError while offers are unanswered."""
        if not self.done:
            raise LocalProtocolError(
                "negotiation is not finished: no answer yet for " + ", ".join(self.unanswered)
            )
        s = self._settled

        def num(key: str) -> int:
            return parse_number(s.get(key) or KEYS[key].default or "0")

        def flag(key: str) -> bool:
            return parse_bool(s.get(key) or KEYS[key].default or "No")

        def digest(key: str) -> bool:
            return s.get(key) == "CRC32C"

        max_burst = num("MaxBurstLength")
        # FirstBurstLength must not exceed MaxBurstLength (RFC 7143 13.14); both answers can be
        # individually valid Minimum results and still cross, so the smaller one rules.
        first_burst = min(num("FirstBurstLength"), max_burst)
        tpgt = self._declared.get("TargetPortalGroupTag")
        return NegotiatedParams(
            session_type=self._session_type,
            header_digest=digest("HeaderDigest"),
            data_digest=digest("DataDigest"),
            max_recv_data_segment_length=parse_number(
                self._offers.get("MaxRecvDataSegmentLength", "8192")
            ),
            max_xmit_data_segment_length=parse_number(
                self._declared.get("MaxRecvDataSegmentLength", "8192")
            ),
            max_burst_length=max_burst,
            first_burst_length=first_burst,
            initial_r2t=flag("InitialR2T"),
            immediate_data=flag("ImmediateData"),
            max_outstanding_r2t=num("MaxOutstandingR2T"),
            max_connections=num("MaxConnections"),
            data_pdu_in_order=flag("DataPDUInOrder"),
            data_sequence_in_order=flag("DataSequenceInOrder"),
            error_recovery_level=num("ErrorRecoveryLevel"),
            default_time2wait=num("DefaultTime2Wait"),
            default_time2retain=num("DefaultTime2Retain"),
            task_reporting=s.get("TaskReporting") or "RFC3720",
            iscsi_protocol_level=num("iSCSIProtocolLevel"),
            target_portal_group_tag=parse_number(tpgt) if tpgt is not None else None,
            target_alias=self._declared.get("TargetAlias"),
        )

    @property
    def target_addresses(self) -> tuple[str, ...]:
        """TargetAddress values the target declared (redirects carry one)."""
        return tuple(self._target_addresses)

    @property
    def declarations(self) -> Mapping[str, str]:
        """The target's other declarations (TargetAlias, TargetPortalGroupTag, ...)."""
        return dict(self._declared)
