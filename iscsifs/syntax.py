# The manual's option-value syntax (Appendix A), shared by the CLI and the control files of the
# tree: -address values, -security / -discoverySecurity strings with their \, and \\ escapes,
# and the -connection / -session option lists. Parses text into config types; no I/O.
# Error messages are one line and never repeat a secret.

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .config import ConfigError, LoginParams, Security
from .proto.discovery import parse_portal_argument

DEFAULT_ISCSI_PORT = 3260
DEFAULT_ISNS_PORT = 3205


class SyntaxProblem(ValueError):
    """Input that does not follow the manual's syntax; the message says what was expected."""


def parse_address(text: str, *, isns: bool = False) -> tuple[str, int]:
    """-address: IPv4, IPv4:port, IPv6, [IPv6]:port or a hostname; port 3260, or 3205 with
    -isns, when none is given."""
    default = DEFAULT_ISNS_PORT if isns else DEFAULT_ISCSI_PORT
    try:
        return parse_portal_argument(text, default)
    except ValueError as e:
        raise SyntaxProblem(str(e)) from None


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_escaped(text: str) -> list[str]:
    """Split at commas not escaped; unescape \\, and \\\\. Any other backslash is an error:
    the manual asks that both characters always be escaped, so a lone one is a typo."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 < len(text) and text[i + 1] in "\\,":
                cur.append(text[i + 1])
                i += 2
                continue
            raise SyntaxProblem(
                "a backslash must be followed by \\ or , (write \\\\ for a backslash and \\, "
                "for a comma)")
        if c == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


_SECURITY_KEYS = {
    "TargetUserName": "target_user",
    "TargetSecret": "target_secret",
    "InitiatorUserName": "initiator_user",
    "InitiatorSecret": "initiator_secret",
    "MutualAuthentication": "mutual",
}
_SECRET_KEYS = {"TargetSecret", "InitiatorSecret"}
_VALID_COMBINATIONS = (
    "[TargetUserName, TargetSecret] or [TargetUserName, TargetSecret, InitiatorUserName, "
    "InitiatorSecret, MutualAuthentication]"
)


# A first item this short and plain is a protocol name gone wrong (KRB5, SRP): safe to repeat.
# Anything else may be a secret typed in the wrong place.
_PROTOCOL_WORD = re.compile(r"[A-Za-z0-9]{1,8}")


def parse_security(text: str, *, option: str = "-security", allow_none: bool = False) -> Security:
    """-security / -discoverySecurity: "<Protocol>,<Option>,...". Protocol CHAP, or NONE where
    allowed (-discoverySecurity).

    Messages name items by position and repeat only known option names: a secret with an
    unescaped comma splits into items that must not be echoed to a terminal or a log."""
    allowed = "NONE or CHAP" if allow_none else "CHAP"
    if not text.strip():
        raise SyntaxProblem(f"{option} needs <Protocol>,<Option>,... (protocol {allowed})")
    parts = split_escaped(text)
    protocol = parts[0]
    if protocol.upper() == "NONE" and allow_none:
        if len(parts) > 1:
            raise SyntaxProblem(f"{option} NONE takes no options")
        return Security(method="None")
    if protocol != "CHAP":
        what = (f"unknown security protocol {protocol!r}" if _PROTOCOL_WORD.fullmatch(protocol)
                else "the first item must be the security protocol")
        raise SyntaxProblem(f"{option}: {what}; available: {allowed}")
    values: dict[str, object] = {}
    after_secret = False
    for number, part in enumerate(parts[1:], start=2):
        key, eq, value = part.partition("=")
        field = _SECURITY_KEYS.get(key) if eq else None
        if field is None:
            hint = " (an unescaped comma in a secret? write \\, for a comma)" if (
                after_secret) else ""
            what = (f"unknown option {key!r}" if eq and key.isalpha() and not after_secret
                    else f"item {number} is not a known Option=Value")
            raise SyntaxProblem(f"{option}: {what}{hint}; options: {', '.join(_SECURITY_KEYS)}")
        after_secret = key in _SECRET_KEYS
        if field in values:
            raise SyntaxProblem(f"{option}: {key} given twice")
        if key == "MutualAuthentication":
            if value not in ("Yes", "No"):
                raise SyntaxProblem(f"{option}: MutualAuthentication must be Yes or No")
            values[field] = value == "Yes"
        else:
            if not value:
                raise SyntaxProblem(f"{option}: {key} is empty")
            values[field] = value
    given = {k for k, f in _SECURITY_KEYS.items() if f in values}
    if given not in ({"TargetUserName", "TargetSecret"}, set(_SECURITY_KEYS)):
        raise SyntaxProblem(f"{option}: valid option combinations are {_VALID_COMBINATIONS}")
    try:
        return Security(method="CHAP", **values)  # type: ignore[arg-type]
    except ConfigError as e:
        raise SyntaxProblem(f"{option}: {e}") from None


def secret_values(text: str) -> list[str]:
    """The TargetSecret / InitiatorSecret values in a -security string, unescaped, so that a
    caller can make sure none of them is ever printed. Never raises."""
    try:
        parts = split_escaped(text)
    except SyntaxProblem:
        parts = text.split(",")
    out = []
    for part in parts:
        key, eq, value = part.partition("=")
        if eq and key in _SECRET_KEYS and value:
            out.append(value)
    return out


def format_security(sec: Security | None) -> str:
    """For display: the method and user names, never a secret."""
    if sec is None or not sec.is_chap:
        return "None"
    out = f"CHAP,TargetUserName={sec.target_user}"
    if sec.mutual:
        out += f",InitiatorUserName={sec.initiator_user},MutualAuthentication=Yes"
    return out


@dataclass(frozen=True)
class _Opt:
    field: str
    kind: str  # "digest" | "int" | "bool" | "erl"


CONNECTION_OPTIONS: Mapping[str, _Opt] = {
    "DataDigest": _Opt("data_digest", "digest"),
    "HeaderDigest": _Opt("header_digest", "digest"),
    "MaxRecvDataSegmentLength": _Opt("max_recv_data_segment_length", "int"),
}
SESSION_OPTIONS: Mapping[str, _Opt] = {
    "ErrorRecoveryLevel": _Opt("error_recovery_level", "erl"),
    "FirstBurstLength": _Opt("first_burst_length", "int"),
    "ImmediateData": _Opt("immediate_data", "bool"),
    "InitialR2T": _Opt("initial_r2t", "bool"),
    "MaxBurstLength": _Opt("max_burst_length", "int"),
}


def parse_options(text: str, *, option: str) -> dict[str, object]:
    """-connection / -session: "Key=Value,..." into LoginParams field overrides."""
    table = CONNECTION_OPTIONS if option == "-connection" else SESSION_OPTIONS
    out: dict[str, object] = {}
    for part in split_escaped(text):
        key, eq, value = part.partition("=")
        spec = table.get(key)
        if spec is None or not eq:
            raise SyntaxProblem(f"{option}: unknown option {part!r}; options: "
                                f"{', '.join(k + '=...' for k in table)}")
        if spec.field in out:
            raise SyntaxProblem(f"{option}: {key} given twice")
        if spec.kind == "digest":
            if value not in ("None", "CRC32C"):
                raise SyntaxProblem(f"{option}: {key} must be None or CRC32C")
            out[spec.field] = value
        elif spec.kind == "bool":
            if value not in ("Yes", "No"):
                raise SyntaxProblem(f"{option}: {key} must be Yes or No")
            out[spec.field] = value == "Yes"
        elif spec.kind == "erl":
            if value not in ("0", "1"):
                raise SyntaxProblem(f"{option}: {key} must be 0 or 1")
            out[spec.field] = int(value)
        else:
            if (not (value.isascii() and value.isdigit()) or len(value) > 8
                    or not 512 <= int(value) <= 16777215):
                raise SyntaxProblem(f"{option}: {key} must be an integer from 512 to 16777215")
            out[spec.field] = int(value)
    return out


def apply_options(base: LoginParams, overrides: Mapping[str, object]) -> LoginParams:
    """LoginParams with overrides, validated together (FirstBurst <= MaxBurst...).

    A MaxBurstLength below the base FirstBurstLength, with no FirstBurstLength given, takes
    FirstBurstLength down with it: the manual's own example (-session MaxBurstLength=1024) must
    work against the default FirstBurstLength of 64 KiB (RFC 7143 13.14 wants First <= Max)."""
    import dataclasses

    most = overrides.get("max_burst_length")
    if (isinstance(most, int) and "first_burst_length" not in overrides
            and base.first_burst_length > most):
        overrides = {**overrides, "first_burst_length": most}
    try:
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    except ConfigError as e:
        raise SyntaxProblem(str(e)) from None


def parse_yes_no(text: str, *, option: str) -> bool:
    if text not in ("Yes", "No"):
        raise SyntaxProblem(f"{option} must be Yes or No")
    return text == "Yes"
