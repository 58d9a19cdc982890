# The shared model of a discovery result (Portal, DiscoveredTarget) and the text formats around
# it: RFC 7143 TargetAddress values, SendTargets responses, iSCSI names, and the portal arguments
# users type. Both SendTargets and iSNS discovery produce these objects, so everything above
# (engine, fs, cli) deals with one shape. Sans-I/O: it parses and validates strings, it never
# resolves a hostname or opens a socket (a hostname stays a hostname until the engine connects).

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_ISCSI_PORT",
    "MAX_ISCSI_NAME_BYTES",
    "DiscoveredTarget",
    "Portal",
    "is_valid_iscsi_name",
    "parse_portal_argument",
    "parse_sendtargets",
    "parse_target_address",
]

DEFAULT_ISCSI_PORT = 3260  # RFC 7143 section 13.2 (IANA well-known port for iSCSI targets)
MAX_ISCSI_NAME_BYTES = 223  # RFC 3720 section 3.2.6.1 (UTF-8 encoded, without terminator)

# RFC 1123 host names, lenient on '_' (seen in real DNS) but never on empty labels.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_DIGITS_RE = re.compile(r"^[0-9]+$")
_DOTTED_NUMERIC_RE = re.compile(r"^[0-9.]+$")


def _show(value: object, limit: int = 60) -> str:
    """repr() for messages, cut short: a peer's or user's junk must not make them unbounded."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_address(address: str) -> str | None:
    """Why `address` is not a hostname, IPv4 or bare IPv6 address, or None when it is one."""
    if not address:
        return "empty address"
    if ":" in address:
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return f"invalid IPv6 address {_show(address)}"
        return None
    if _DOTTED_NUMERIC_RE.match(address):
        # All digits and dots: only a real IPv4 address makes sense ("999.1.1.1" is junk, not
        # a host name a resolver would look up).
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            return f"invalid IPv4 address {_show(address)}"
        return None
    if len(address) > 253 or not _HOSTNAME_RE.match(address):
        return f"invalid host name {_show(address)}"
    return None


def _parse_port(text: str, what: str) -> int:
    if not _DIGITS_RE.match(text) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid {what} port {_show(text)} (expected 1..65535)")
    return int(text)


@dataclass(frozen=True, slots=True)
class Portal:
    """One network portal of a target: where to connect, and its target portal group tag.

    `address` is a hostname, an IPv4 address, or an IPv6 address WITHOUT brackets (brackets are
    a property of the text form, added by __str__). `tpgt` is None when the source did not say
    (RFC 7143 section 13.9 makes the tag optional in TargetAddress).
    """

    address: str
    port: int
    tpgt: int | None = None

    def __post_init__(self) -> None:
        problem = _check_address(self.address)
        if problem is not None:
            raise LocalProtocolError(f"bad portal address: {problem}")
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise LocalProtocolError(f"bad portal port {self.port!r} (expected 1..65535)")
        if self.tpgt is not None and (
            not isinstance(self.tpgt, int) or not 0 <= self.tpgt <= 65535
        ):
            raise LocalProtocolError(f"bad portal group tag {self.tpgt!r} (expected 0..65535)")

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.is_ipv6 else self.address
        return f"{host}:{self.port}"

    def target_address(self) -> str:
        """The RFC 7143 TargetAddress text: "host:port" plus ",tpgt" when the tag is known."""
        return str(self) if self.tpgt is None else f"{self},{self.tpgt}"


@dataclass(frozen=True, slots=True)
class DiscoveredTarget:
    """A target found by discovery. Empty `portals` (SendTargets only) means the target is
    reachable through the portal the discovery session used; the engine fills that in."""

    name: str
    portals: tuple[Portal, ...]
    alias: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise LocalProtocolError("a discovered target needs a name")
        if not isinstance(self.portals, tuple):
            raise LocalProtocolError("DiscoveredTarget.portals must be a tuple of Portal")


def _split_host_port(text: str, default_port: int, what: str) -> tuple[str, int]:
    """Split "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address (no port).

    Raises ValueError with a one-line message. The address is checked, not resolved.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unclosed '[' in {what} {_show(text)}")
        host, rest = text[1:close], text[close + 1 :]
        if ":" not in host:
            raise ValueError(f"brackets hold no IPv6 address in {what} {_show(text)}")
        if rest == "":
            port = default_port
        elif rest.startswith(":"):
            port = _parse_port(rest[1:], what)
        else:
            raise ValueError(f"unexpected {_show(rest)} after ']' in {what} {_show(text)}")
    elif text.count(":") >= 2:
        # A bare IPv6 address: its colons leave no room for a port (RFC 3986 section 3.2.2
        # brackets exist for exactly this reason), so the whole text is the address.
        host, port = text, default_port
    elif ":" in text:
        host, _, port_text = text.partition(":")
        port = _parse_port(port_text, what)
    else:
        host, port = text, default_port
    problem = _check_address(host)
    if problem is not None:
        raise ValueError(f"{problem} in {what} {_show(text)}")
    return host, port


def parse_target_address(value: str, default_port: int = DEFAULT_ISCSI_PORT) -> Portal:
    """Parse an RFC 7143 section 13.9 TargetAddress: domainname[:port][,portal-group-tag].

    IPv6 addresses come in brackets ("[fe80::1]:3260,1"); a bare IPv6 address is accepted
    without a port, because some targets send it that way and it is unambiguous.
    """
    try:
        if value != value.strip() or not value:
            raise ValueError(f"empty or space-padded TargetAddress {_show(value)}")
        host_port, comma, tag_text = value.rpartition(",") if "," in value else (value, "", "")
        tpgt: int | None = None
        if comma:
            if not _DIGITS_RE.match(tag_text) or len(tag_text) > 5 or int(tag_text) > 65535:
                raise ValueError(f"invalid portal group tag {_show(tag_text)} in TargetAddress")
            tpgt = int(tag_text)
        if "," in host_port:
            raise ValueError(f"more than one ',' in TargetAddress {_show(value)}")
        host, port = _split_host_port(host_port, default_port, "TargetAddress")
    except ValueError as exc:
        raise RemoteProtocolError(str(exc)) from None
    return Portal(host, port, tpgt)


def parse_sendtargets(pairs: Sequence[tuple[str, str]]) -> tuple[DiscoveredTarget, ...]:
    """Build the targets of a SendTargets text response (RFC 7143 appendix C).

    Each TargetName starts a record; TargetAddress and TargetAlias belong to the latest one. A
    TargetName seen twice extends the first record; repeated addresses are kept once, in first-
    seen order. Other keys are ignored (a response may carry unrelated negotiation keys).
    """
    order: list[str] = []
    portals: dict[str, list[Portal]] = {}
    aliases: dict[str, str] = {}
    current: str | None = None
    for key, value in pairs:
        if key == "TargetName":
            if not value:
                raise RemoteProtocolError("SendTargets response has an empty TargetName")
            current = value
            if value not in portals:
                order.append(value)
                portals[value] = []
        elif key in ("TargetAddress", "TargetAlias"):
            if current is None:
                raise RemoteProtocolError(f"SendTargets response has {key} before any TargetName")
            if key == "TargetAlias":
                aliases.setdefault(current, value)
                continue
            portal = parse_target_address(value)
            if portal not in portals[current]:
                portals[current].append(portal)
    return tuple(
        DiscoveredTarget(name=name, portals=tuple(portals[name]), alias=aliases.get(name))
        for name in order
    )


_IQN_RE = re.compile(r"^iqn\.(\d{4})-(\d{2})\.([^:]*)(?::(.*))?$", re.DOTALL)
_IQN_AUTHORITY_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_HEX_RE = re.compile(r"^[0-9A-Fa-f]+$")
_NAME_ASCII_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.:")


def is_valid_iscsi_name(name: str) -> str | None:
    """Check an iSCSI name against RFC 3720 section 3.2.6.3 (iqn., eui.) and RFC 3980 (naa.).

    Returns None for a valid name, else a one-line reason fit for a user. Names are compared
    in their stringprep-normalised form (RFC 3722), so ASCII upper case is refused rather than
    silently folded: the user must see the name we will actually send.
    """
    if not name:
        return "iSCSI name is empty"
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if size > MAX_ISCSI_NAME_BYTES:
        return f"iSCSI name is {size} bytes long; the limit is {MAX_ISCSI_NAME_BYTES}"
    if name.startswith("eui."):
        digits = name[4:]
        if len(digits) != 16 or not _HEX_RE.match(digits):
            return "an eui. name needs exactly 16 hexadecimal digits after 'eui.'"
        return None
    if name.startswith("naa."):
        digits = name[4:]
        if len(digits) not in (16, 32) or not _HEX_RE.match(digits):
            return "an naa. name needs 16 or 32 hexadecimal digits after 'naa.'"
        return None
    if not name.startswith("iqn."):
        return "an iSCSI name must start with 'iqn.', 'eui.' or 'naa.'"
    for ch in name:
        if ch.isascii() and ch not in _NAME_ASCII_OK:
            if "A" <= ch <= "Z":
                return "an iqn. name must be lower case (RFC 3722 normalises it)"
            return f"character {ch!r} is not allowed in an iSCSI name"
        if not ch.isascii() and not ch.isprintable():
            return f"character {ch!r} is not allowed in an iSCSI name"
    match = _IQN_RE.match(name)
    if match is None:
        if re.match(r"^iqn\.\d{4}-\d{2}(?::|$)", name):
            return (
                "an iqn. name needs a reversed domain name after the date (iqn.2001-04.com.example)"
            )
        return "an iqn. name needs a date: iqn.yyyy-mm.reversed.domain[:identifier]"
    month = int(match.group(2))
    if not 1 <= month <= 12:
        return f"month {match.group(2)} in the iqn. date is not 01..12"
    authority = match.group(3)
    labels = authority.split(".")
    if not authority or not all(_IQN_AUTHORITY_LABEL_RE.match(label) for label in labels):
        return "an iqn. name needs a reversed domain name after the date (iqn.2001-04.com.example)"
    if match.group(4) is not None and match.group(4) == "":
        return "nothing follows ':' in the iqn. name"
    return None


def parse_portal_argument(text: str, default_port: int = DEFAULT_ISCSI_PORT) -> tuple[str, int]:
    """Parse a portal typed by a user: "1.2.3.4", "1.2.3.4:3261", "::1", "[::1]:3261",
    "fe80::1", "host.example", "host:3261". Returns (address without brackets, port).

    A bare IPv6 address never carries a port: write "[::1]:3261" for that. Raises ValueError
    with a one-line message naming the problem.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty portal address")
    if "," in stripped or any(ch.isspace() for ch in stripped):
        raise ValueError(f"unexpected ',' or space in portal {_show(text.strip())}")
    return _split_host_port(stripped, default_port, "portal")


def host_key(host: str) -> str:
    """A portal address as it compares: IP addresses by value ("::1" == "0::1", brackets
    ignored), host names without case or a trailing dot."""
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower().rstrip(".")
