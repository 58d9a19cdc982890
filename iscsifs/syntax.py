# The manual's option-value syntax (Appendix A), shared by the CLI and the control files of the
# tree: -address values, -security / -discoverySecurity strings with their \, and \\ escapes,
# and the -connection / -session option lists. Parses text into config types; no I/O.
# Error messages are one line and never repeat a secret.

from __future__ import annotations

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


def parse_security(text: str, *, option: str = "-security", allow_none: bool = False) -> Security:
    """-security / -discoverySecurity: "<Protocol>,<Option>,...". Protocol CHAP, or NONE where
    allowed (-discoverySecurity)."""
    parts = split_escaped(text)
    protocol = parts[0]
    if protocol.upper() == "NONE" and allow_none:
        if len(parts) > 1:
            raise SyntaxProblem(f"{option} NONE takes no options")
        return Security(method="None")
    if protocol != "CHAP":
        allowed = "NONE or CHAP" if allow_none else "CHAP"
        raise SyntaxProblem(f"{option}: unknown security protocol {protocol!r}; available: "
                            f"{allowed}")
    values: dict[str, object] = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq:
            raise SyntaxProblem(f"{option}: {key!r} is not Option=Value")
        field = _SECURITY_KEYS.get(key)
        if field is None:
            raise SyntaxProblem(f"{option}: unknown option {key!r}; options: "
                                f"{', '.join(_SECURITY_KEYS)}")
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
            if not value.isdigit() or not 512 <= int(value) <= 16777215:
                raise SyntaxProblem(f"{option}: {key} must be an integer from 512 to 16777215")
            out[spec.field] = int(value)
    return out


def apply_options(base: LoginParams, overrides: Mapping[str, object]) -> LoginParams:
    """LoginParams with overrides, validated together (FirstBurst <= MaxBurst...)."""
    import dataclasses

    try:
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    except ConfigError as e:
        raise SyntaxProblem(str(e)) from None


def parse_yes_no(text: str, *, option: str) -> bool:
    if text not in ("Yes", "No"):
        raise SyntaxProblem(f"{option} must be Yes or No")
    return text == "Yes"
