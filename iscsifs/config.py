# The saved setup (the manual's Setup tab) as a TOML file: reading it into frozen dataclasses with
# one-line errors, and changing it through tomlkit so that a person's comments, key order and
# formatting survive every change the daemon or the CLI makes. It owns the file's safety too:
# atomic 0600 writes, repairing a loose mode on a file that holds CHAP secrets, refusing a file
# another user controls. It must not import trio or pyfuse3, do I/O other than on the config file
# itself, or let a secret reach a message, repr or warning (secrets live in chap.Secret).

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import json
import math
import os
import re
import secrets as _secrets
import socket
import stat
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import tomlkit
import tomlkit.exceptions
from tomlkit.container import Container
from tomlkit.items import AoT, Array, Comment, InlineTable, Item, Null, Table, Whitespace

from iscsifs.proto.chap import ChapCredentials, Secret, secret_warnings
from iscsifs.proto.discovery import (
    DEFAULT_ISCSI_PORT,
    Portal,
    host_key,
    is_valid_iscsi_name,
    parse_portal_argument,
)
from iscsifs.proto.errors import IscsiError, LocalProtocolError

__all__ = [
    "DEFAULT_ISNS_PORT",
    "DEFAULT_MOUNT_POINT",
    "DEFAULT_PATH",
    "DIGEST_CHOICES",
    "INITIATOR_PREFIX",
    "PARAM_KEYS",
    "SCHEMA",
    "Config",
    "ConfigError",
    "ConfigStore",
    "InitiatorSetup",
    "KeySpec",
    "LoginParams",
    "MountSetup",
    "PortalSetup",
    "Security",
    "TargetSetup",
    "Timeouts",
    "dumps",
    "load",
]

#: Where the daemon and the CLI look by default (both take another path on the command line).
DEFAULT_PATH = Path("/etc/iscsifs/iscsifs.toml")
#: The project's fixed part of every initiator name it generates; setInitiatorName (manual,
#: Appendix A) changes only what follows it, as Xtend SAN keeps its 'xtendsan:' prefix.
INITIATOR_PREFIX = "iqn.2026-11.org.iscsifs:"
#: The manual's default iSNS port (Target Discovery, and -address with -isns).
DEFAULT_ISNS_PORT = 3205
DEFAULT_MOUNT_POINT = "/mnt/iscsifs"
#: HeaderDigest/DataDigest values. "CRC32C" makes the digest mandatory (a target that cannot
#: do it fails the login), "CRC32C,None" prefers it but lets such a target log in without,
#: "None,CRC32C" prefers none but accepts a target that insists, "None" refuses digests.
DIGEST_CHOICES = ("None", "CRC32C", "CRC32C,None", "None,CRC32C")

_MAX_SECONDS = 86400  # a day: any larger delay or timeout is a typo, not a wish
_FIRST_SUFFIX_CHARS = re.compile(r"[^a-z0-9.-]+")
_SECURITY_METHODS = ("None", "CHAP")


class ConfigError(IscsiError):
    """The setup file (or a value meant for it) is wrong. The message is one line naming the
    file, the key path, the bad value (never a secret) and what is allowed."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.key = key


class _Bad(Exception):
    """A value failed its check; `problem` reads after 'key = value' ("is out of range")."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


# --------------------------------------------------------------------------------------------
# The schema: every key, its check, default and one line of documentation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    """One scalar key of the file. `check` returns the value or raises _Bad; `default` is None
    for a key that may be absent without a default (alias, tpgt, isns, the CHAP keys)."""

    name: str
    allowed: str
    default: object
    doc: str
    check: Callable[[object], object]
    required: bool = False
    secret: bool = False
    #: The RFC 7143 key this one is offered as (login parameters only).
    iscsi_key: str | None = None
    #: The manual lists it "for information only": changing it draws a warning.
    informational: bool = False


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return "a date/time"
    return f"a {type(value).__name__}"


def _show(value: object, *, secret: bool = False) -> str:
    """A value as it would look in the file, short, for a message. Secrets never show."""
    if secret:
        return "<hidden>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[...]"
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return f"<{type(value).__name__}>"


def _qkey(key: str) -> str:
    return f"'{key}'" if key.isprintable() and "'" not in key else json.dumps(key)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _path_key(key: str) -> str:
    """A key as it appears in a key path: bare, or quoted as TOML would (never a newline)."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _plain(text: str) -> str:
    """A name or address from a caller, safe for a one-line message."""
    return text if text.isprintable() else json.dumps(text)


def _int(lo: int, hi: int | None) -> tuple[Callable[[object], object], str]:
    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"is {_type_name(value)}")
        if value < lo or (hi is not None and value > hi):
            raise _Bad("is out of range")
        return value

    return check, f"an integer {lo}..{hi}" if hi is not None else f"an integer >= {lo}"


def _seconds(lo: float, hi: float, *, above: bool) -> tuple[Callable[[object], object], str]:
    """Seconds as an integer or a float; `above` excludes lo itself."""

    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(f"is {_type_name(value)}")
        if not math.isfinite(value) or value > hi or value < lo or (above and value == lo):
            raise _Bad("is out of range")
        return value

    if above:
        return check, f"a number of seconds more than {lo:g} and at most {hi:g}"
    return check, f"a number of seconds from {lo:g} to {hi:g}"


def _bool() -> tuple[Callable[[object], object], str]:
    def check(value: object) -> object:
        if not isinstance(value, bool):
            raise _Bad(f"is {_type_name(value)}")
        return value

    return check, "true or false"


def _choice(choices: Sequence[str]) -> tuple[Callable[[object], object], str]:
    def check(value: object) -> object:
        if not isinstance(value, str):
            raise _Bad(f"is {_type_name(value)}")
        if value not in choices:
            raise _Bad("is not one of the choices")
        return value

    shown = [json.dumps(c) for c in choices]
    return check, ", ".join(shown[:-1]) + " or " + shown[-1]


def _text(
    what: str, extra: Callable[[str], str | None] | None = None
) -> tuple[Callable[[object], object], str]:
    def check(value: object) -> object:
        if not isinstance(value, str):
            raise _Bad(f"is {_type_name(value)}")
        if extra is not None:
            why = extra(value)
            if why is not None:
                raise _Bad(why)
        return value

    return check, what


def _iscsi_name_problem(value: str) -> str | None:
    why = is_valid_iscsi_name(value)
    return None if why is None else f"is not a valid iSCSI name ({why})"


def _portal_address_problem(value: str) -> str | None:
    try:
        Portal(value, DEFAULT_ISCSI_PORT)
    except LocalProtocolError:
        return "is not an IPv4 address, an IPv6 address without brackets or a host name"
    return None


def _isns_problem(value: str) -> str | None:
    try:
        parse_portal_argument(value, DEFAULT_ISNS_PORT)
    except ValueError:
        return "is not a valid host[:port]"
    return None


def _label_problem(value: str) -> str | None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= 255:
        return "is not 1..255 bytes long"
    if not value.isprintable():
        return "contains a control character"
    return None


def _secret_problem(value: str) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes from argv that are not UTF-8 arrive as surrogates
        return "is not valid UTF-8 text"
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= 255:
        return "is not 1..255 bytes long"
    if "\0" in value:
        return "contains a NUL character"
    return None


def _mount_point_problem(value: str) -> str | None:
    if not value.startswith("/") or "\0" in value:
        return "is not an absolute path"
    if not os.path.normpath(value).strip("/"):  # normpath keeps a leading "//"
        return "is the root directory"
    return None


def _spec(
    name: str,
    checker: tuple[Callable[[object], object], str],
    default: object,
    doc: str,
    **kw: Any,
) -> KeySpec:
    check, allowed = checker
    return KeySpec(name=name, allowed=allowed, default=default, doc=doc, check=check, **kw)


_NAME_ALLOWED = (
    "an iSCSI name: iqn.yyyy-mm.reversed.domain[:id], eui.<16 hex> or naa.<16 or 32 hex>"
)

_INITIATOR_KEYS: tuple[KeySpec, ...] = (
    _spec("name", _text(_NAME_ALLOWED, _iscsi_name_problem), None,
          f"RFC 3720 name; default {INITIATOR_PREFIX!r} + '<hostname>-<6 hex>', made once, saved"),
    _spec("boot_delay", _int(0, _MAX_SECONDS), 0,
          "seconds the daemon waits before its first login; 0 = normal start (setBootDelay)"),
    _spec("isns", _text('"host[:port]" (the port defaults to 3205)', _isns_problem), None,
          "iSNS server for discovery, \"host[:port]\", port default 3205; unset = no iSNS"),
)

_MOUNT_KEYS: tuple[KeySpec, ...] = (
    _spec("point", _text("an absolute path other than /", _mount_point_problem),
          DEFAULT_MOUNT_POINT, "where the FUSE tree (/initiator, /discovery, /targets) appears"),
    _spec("allow_other", _bool(), False,
          "let users other than the one who mounted read the tree (FUSE allow_other)"),
    _spec("max_read", _int(0, 16 << 20), 512 * 1024,
          "largest FUSE read request in bytes (whole pages); 0 = the kernel's limit; smaller "
          "lets one large read go as pieces that overlap"),
    _spec("max_write", _int(0, 16 << 20), 512 * 1024,
          "largest FUSE write request in bytes (whole pages); 0 = the kernel's limit"),
)

_BYTES_24 = (512, 16777215)  # the manual's range, which is RFC 7143's 2^24 - 1 upper bound

_PARAM_KEYS: tuple[KeySpec, ...] = (
    _spec("header_digest", _choice(DIGEST_CHOICES), "None",
          'HeaderDigest: "None" off, "CRC32C" required, "CRC32C,None" preferred, '
          '"None,CRC32C" accepted',
          iscsi_key="HeaderDigest"),
    _spec("data_digest", _choice(DIGEST_CHOICES), "None",
          'DataDigest: "None" off, "CRC32C" required, "CRC32C,None" preferred, '
          '"None,CRC32C" accepted',
          iscsi_key="DataDigest"),
    _spec("max_recv_data_segment_length", _int(*_BYTES_24), 262144,
          "MaxRecvDataSegmentLength: largest data segment the target may send us",
          iscsi_key="MaxRecvDataSegmentLength"),
    _spec("first_burst_length", _int(*_BYTES_24), 262144,
          "FirstBurstLength: unsolicited data per write; at most max_burst_length",
          iscsi_key="FirstBurstLength"),
    _spec("max_burst_length", _int(*_BYTES_24), 1048576,
          "MaxBurstLength: largest data sequence of one read or R2T",
          iscsi_key="MaxBurstLength"),
    _spec("immediate_data", _bool(), True,
          "ImmediateData: send write data with the command", iscsi_key="ImmediateData"),
    _spec("initial_r2t", _bool(), False,
          "InitialR2T: false lets us send unsolicited data before the first R2T",
          iscsi_key="InitialR2T"),
    _spec("error_recovery_level", _int(0, 1), 0,
          "ErrorRecoveryLevel: 0 (session recovery) or 1 (digest errors retried)",
          iscsi_key="ErrorRecoveryLevel"),
    _spec("max_connections", _int(1, 65535), 1,
          "MaxConnections (information only): iscsifs opens one connection per session",
          iscsi_key="MaxConnections", informational=True),
    _spec("data_pdu_in_order", _bool(), True,
          "DataPDUInOrder (information only)", iscsi_key="DataPDUInOrder", informational=True),
    _spec("data_sequence_in_order", _bool(), True,
          "DataSequenceInOrder (information only)", iscsi_key="DataSequenceInOrder",
          informational=True),
    _spec("max_outstanding_r2t", _int(1, 65535), 1,
          "MaxOutstandingR2T (information only)", iscsi_key="MaxOutstandingR2T",
          informational=True),
    _spec("default_time2wait", _int(0, 3600), 2,
          "DefaultTime2Wait (information only): seconds before reconnecting after a logout",
          iscsi_key="DefaultTime2Wait", informational=True),
    _spec("default_time2retain", _int(0, 3600), 0,
          "DefaultTime2Retain (information only): 0, we do not reassign tasks after a drop",
          iscsi_key="DefaultTime2Retain", informational=True),
)

_TIMEOUT_KEYS: tuple[KeySpec, ...] = (
    _spec("hold_time", _seconds(0, _MAX_SECONDS, above=False), 120,
          "seconds I/O waits through an outage before failing with EIO (replacement_timeout)"),
    _spec("noop_interval", _seconds(0, 3600, above=False), 5,
          "seconds between NOP-Out probes on an idle connection; 0 = no probes"),
    _spec("noop_timeout", _seconds(0, 3600, above=True), 5,
          "seconds a NOP-Out probe may wait for its answer before the connection is dropped"),
    _spec("command_timeout", _seconds(0, _MAX_SECONDS, above=True), 30,
          "seconds one SCSI command may take before it is aborted"),
    _spec("connect_timeout", _seconds(0, 3600, above=True), 10,
          "seconds a TCP connect to a portal may take"),
    _spec("login_timeout", _seconds(0, 3600, above=True), 15,
          "seconds a whole login (security and operational stages) may take"),
)

_TARGET_KEYS: tuple[KeySpec, ...] = (
    _spec("name", _text(_NAME_ALLOWED, _iscsi_name_problem), None,
          "the target's iSCSI name (iqn., eui. or naa.); required", required=True),
    _spec("alias", _text("a string of 1..255 bytes", _label_problem), None,
          "a local label for the target (TargetAlias); unset = none"),
)

_PORTAL_KEYS: tuple[KeySpec, ...] = (
    _spec("address", _text("an IPv4 address, an IPv6 address without brackets or a host name",
                           _portal_address_problem), None,
          "IPv4 address, IPv6 address without brackets, or host name; required", required=True),
    _spec("port", _int(1, 65535), DEFAULT_ISCSI_PORT, "TCP port of the portal"),
    _spec("tpgt", _int(0, 65535), None,
          "target portal group tag, when discovery reported one; unset = unknown"),
    _spec("visible", _bool(), True, "show this portal under /targets and allow logins through it"),
    _spec("auto_login", _bool(), False,
          "log in through this portal when the daemon starts (needs visible = true)"),
)

_SECURITY_KEYS: tuple[KeySpec, ...] = (
    _spec("method", _choice(_SECURITY_METHODS), "None",
          'authentication: "None" (the default, no CHAP) or "CHAP"'),
    _spec("target_user", _text("a string of 1..255 bytes", _label_problem), None,
          "TargetUserName: the CHAP name we answer the target's challenge with "
          "(no default)"),
    _spec("target_secret", _text("a string of 1..255 bytes", _secret_problem), None,
          "TargetSecret: the secret that answers the target's challenge (no default)",
          secret=True),
    _spec("initiator_user", _text("a string of 1..255 bytes", _label_problem), None,
          "InitiatorUserName: the name the target answers our challenge with (no default)"),
    _spec("initiator_secret", _text("a string of 1..255 bytes", _secret_problem), None,
          "InitiatorSecret: the secret the target must prove it knows (no default)",
          secret=True),
    _spec("mutual", _bool(), False,
          "MutualAuthentication: challenge the target back after it challenged us "
          "(default false)"),
)

#: Every scalar key of the file by the table it lives in ("target.portal" for [[target.portal]]).
SCHEMA: Mapping[str, Mapping[str, KeySpec]] = {
    section: {spec.name: spec for spec in specs}
    for section, specs in (
        ("initiator", _INITIATOR_KEYS),
        ("mount", _MOUNT_KEYS),
        ("defaults.params", _PARAM_KEYS),
        ("defaults.timeouts", _TIMEOUT_KEYS),
        ("target", _TARGET_KEYS),
        ("target.portal", _PORTAL_KEYS),
        ("target.security", _SECURITY_KEYS),
        ("target.discovery_security", _SECURITY_KEYS),
        ("target.params", _PARAM_KEYS),
        ("target.timeouts", _TIMEOUT_KEYS),
    )
}

#: Tables inside tables: what each table may hold besides its scalar keys.
_SUBTABLES: Mapping[str, tuple[str, ...]] = {
    "": ("initiator", "mount", "defaults", "target"),
    "defaults": ("params", "timeouts"),
    "target": ("portal", "security", "discovery_security", "params", "timeouts"),
}

#: snake_case TOML key -> RFC 7143 key name, in the order offers are made.
PARAM_KEYS: Mapping[str, str] = {s.name: s.iscsi_key for s in _PARAM_KEYS if s.iscsi_key}

_PARAMS = SCHEMA["defaults.params"]
_TIMEOUTS = SCHEMA["defaults.timeouts"]
_SECURITY = SCHEMA["target.security"]


def _check_fields(owner: str, specs: Iterable[KeySpec], obj: object) -> None:
    """Run the schema checks on a dataclass built by code (not read from a file)."""
    for spec in specs:
        value = getattr(obj, spec.name)
        if value is None and not spec.required and spec.default is None:
            continue
        try:
            spec.check(value)
        except _Bad as bad:
            raise ConfigError(
                f"{owner}.{spec.name} = {_show(value, secret=spec.secret)} {bad.problem}; "
                f"allowed: {spec.allowed}",
                key=spec.name,
            ) from None


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginParams:
    """The manual's login parameters (Configure iSCSI login parameters) as we offer them.

    The defaults are the engine's. to_offers() gives the RFC 7143 key=value offers; a digest of
    "CRC32C" makes it mandatory, "CRC32C,None" only preferred (see DIGEST_CHOICES).
    """

    header_digest: str = "None"
    data_digest: str = "None"
    max_recv_data_segment_length: int = 262144
    first_burst_length: int = 262144
    max_burst_length: int = 1048576
    immediate_data: bool = True
    initial_r2t: bool = False
    error_recovery_level: int = 0
    max_connections: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    max_outstanding_r2t: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 0

    def __post_init__(self) -> None:
        _check_fields("LoginParams", _PARAM_KEYS, self)
        problem = _burst_problem(self.first_burst_length, self.max_burst_length)
        if problem is not None:
            raise ConfigError(f"LoginParams: {problem}", key="first_burst_length")

    def to_offers(self) -> dict[str, str]:
        """RFC 7143 key -> value text to offer at login (operational keys only)."""
        offers: dict[str, str] = {}
        for name, key in PARAM_KEYS.items():
            value = getattr(self, name)
            if isinstance(value, bool):
                offers[key] = "Yes" if value else "No"
            else:
                offers[key] = str(value)
        return offers


def _burst_problem(first: int, most: int) -> str | None:
    if first > most:
        return (
            f"first_burst_length = {first} is more than max_burst_length = {most}; "
            "allowed: first_burst_length <= max_burst_length (RFC 7143 section 13.14)"
        )
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """How long things may take, in seconds (int or float as written)."""

    hold_time: float = 120
    noop_interval: float = 5
    noop_timeout: float = 5
    command_timeout: float = 30
    connect_timeout: float = 10
    login_timeout: float = 15

    def __post_init__(self) -> None:
        _check_fields("Timeouts", _TIMEOUT_KEYS, self)


_COMBINATIONS = (
    'allowed combinations: method = "None" alone, or method = "CHAP" with target_user + '
    "target_secret, or with target_user + target_secret + initiator_user + initiator_secret + "
    "mutual"
)


def _security_problem(method: str, present: Sequence[str], mutual: bool) -> str | None:
    """Why these keys are not one of the manual's valid combinations, or None.

    `present` lists the keys given besides method, in schema order.
    """
    if method == "None":
        if present:
            return (
                f'method = "None" takes no {" or ".join(present)}; '
                f'set method = "CHAP" to use them; {_COMBINATIONS}'
            )
        return None
    missing = [k for k in ("target_user", "target_secret") if k not in present]
    if missing:
        return f'method = "CHAP" needs {" and ".join(missing)}; {_COMBINATIONS}'
    rest = [k for k in present if k not in ("target_user", "target_secret")]
    group = ("initiator_user", "initiator_secret", "mutual")
    if rest == ["mutual"] and not mutual:
        return None  # mutual = false alone is the first combination said out loud
    if rest == ["mutual"]:
        return f"mutual = true needs initiator_user and initiator_secret; {_COMBINATIONS}"
    if rest and len(rest) < len(group):
        lacking = [k for k in group if k not in rest]
        return f"{' and '.join(rest)} needs {' and '.join(lacking)}; {_COMBINATIONS}"
    return None


_SAME_SECRET = (
    " = <hidden> is the same as target_secret; allowed: a different secret when mutual = true "
    "(RFC 7143 section 9.2.1)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    """CHAP settings in the manual's terms (Configure Security, -security).

    target_user/target_secret answer the target's challenge; initiator_user/initiator_secret
    are what the target must prove it knows when mutual is true. Secrets given as str are
    wrapped in chap.Secret, whose repr and str never show them.
    """

    method: str = "None"
    target_user: str | None = None
    target_secret: Secret | None = None
    initiator_user: str | None = None
    initiator_secret: Secret | None = None
    mutual: bool = False

    def __post_init__(self) -> None:
        for name in ("target_secret", "initiator_secret"):
            value = getattr(self, name)
            if isinstance(value, str):
                problem = _secret_problem(value)
                if problem is not None:
                    raise ConfigError(
                        f"Security.{name} = <hidden> {problem}; allowed: a string of 1..255 bytes",
                        key=name,
                    )
                object.__setattr__(self, name, Secret(value))
            elif value is not None and not isinstance(value, Secret):
                raise ConfigError(
                    f"Security.{name} = <hidden> is {_type_name(value)}; "
                    "allowed: a Secret or a string",
                    key=name,
                )
        for spec in _SECURITY_KEYS:
            if spec.secret:
                continue
            value = getattr(self, spec.name)
            if value is None:
                continue
            try:
                spec.check(value)
            except _Bad as bad:
                raise ConfigError(
                    f"Security.{spec.name} = {_show(value)} {bad.problem}; "
                    f"allowed: {spec.allowed}",
                    key=spec.name,
                ) from None
        present = [
            s.name for s in _SECURITY_KEYS[1:-1] if getattr(self, s.name) is not None
        ]
        if self.mutual or "initiator_user" in present or "initiator_secret" in present:
            present.append("mutual")
        problem = _security_problem(self.method, present, self.mutual)
        if problem is not None:
            raise ConfigError(f"Security: {problem}")
        if self.mutual and self.initiator_secret == self.target_secret:
            raise ConfigError(f"Security.initiator_secret{_SAME_SECRET}", key="initiator_secret")

    @property
    def is_chap(self) -> bool:
        return self.method == "CHAP"

    @property
    def target_credentials(self) -> tuple[str, Secret] | None:
        """(TargetUserName, TargetSecret) to answer the target's challenge, or None."""
        if self.target_user is None or self.target_secret is None:
            return None
        return self.target_user, self.target_secret

    @property
    def mutual_credentials(self) -> tuple[str, Secret] | None:
        """(InitiatorUserName, InitiatorSecret) the target must prove, when mutual is on."""
        if not self.mutual or self.initiator_user is None or self.initiator_secret is None:
            return None
        return self.initiator_user, self.initiator_secret

    def secrets(self) -> tuple[Secret, ...]:
        return tuple(s for s in (self.target_secret, self.initiator_secret) if s is not None)

    def chap_credentials(self) -> tuple[ChapCredentials | None, ChapCredentials | None]:
        """What a login or discovery session answers the target with, and what it makes the
        target prove (mutual CHAP); (None, None) without CHAP."""
        if not self.is_chap or self.target_credentials is None:
            return None, None
        (user, secret), mutual = self.target_credentials, self.mutual_credentials
        return (ChapCredentials(user=user, secret=secret),
                ChapCredentials(user=mutual[0], secret=mutual[1]) if mutual is not None
                else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class PortalSetup:
    """One port of a target on the Setup tab: where, and the Visible / Auto Login boxes."""

    address: str
    port: int = DEFAULT_ISCSI_PORT
    tpgt: int | None = None
    visible: bool = True
    auto_login: bool = False

    def __post_init__(self) -> None:
        _check_fields("PortalSetup", _PORTAL_KEYS, self)
        if self.auto_login and not self.visible:
            raise ConfigError(f"PortalSetup: {_AUTO_LOGIN_INVISIBLE}", key="auto_login")

    @property
    def portal(self) -> Portal:
        return Portal(self.address, self.port, self.tpgt)

    def matches(self, address: str, port: int | None = None) -> bool:
        return _same_address(self.address, address) and (port is None or port == self.port)

    def __str__(self) -> str:
        return str(self.portal)


_AUTO_LOGIN_INVISIBLE = (
    "auto_login = true needs visible = true (the manual: only a visible port logs in); "
    "allowed: visible = true, or auto_login = false"
)


def _same_address(a: str, b: str) -> bool:
    return host_key(a) == host_key(b)


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetSetup:
    """A saved target: its portals, security and the parameters it logs in with.

    params and timeouts are the effective values ([defaults] overridden by the target's own
    tables). discovery_security None means "the same as security" (the manual's
    -discoverySecurity left out); Security() with method "None" means no security for discovery.
    """

    name: str
    alias: str | None = None
    portals: tuple[PortalSetup, ...]
    security: Security = Security()
    discovery_security: Security | None = None
    params: LoginParams = LoginParams()
    timeouts: Timeouts = Timeouts()

    def __post_init__(self) -> None:
        object.__setattr__(self, "portals", tuple(self.portals))
        _check_fields("TargetSetup", _TARGET_KEYS, self)
        if not self.portals:
            raise ConfigError(
                f"TargetSetup {self.name}: {_NO_PORTALS}", key="portal"
            )
        for index, portal in enumerate(self.portals):
            if not isinstance(portal, PortalSetup):
                raise ConfigError(f"TargetSetup.portals[{index}] is not a PortalSetup")
            first = _first_duplicate(self.portals, index)
            if first is not None:
                raise ConfigError(
                    f"TargetSetup.portals[{index}] {portal} is listed twice (also portals[{first}])"
                )

    @property
    def effective_discovery_security(self) -> Security:
        return self.security if self.discovery_security is None else self.discovery_security

    @property
    def saved_portal(self) -> PortalSetup:
        """The portal the target was added through (the first one): removing its address
        removes the whole target (manual, removeTargets)."""
        return self.portals[0]

    def portal(self, address: str, port: int | None = None) -> PortalSetup | None:
        for candidate in self.portals:
            if candidate.matches(address, port):
                return candidate
        return None


_NO_PORTALS = "a target needs at least one [[target.portal]] with an address"


def _first_duplicate(portals: Sequence[PortalSetup], index: int) -> int | None:
    me = portals[index]
    for earlier in range(index):
        if portals[earlier].matches(me.address, me.port):
            return earlier
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiatorSetup:
    """The manual's Initiator tab: our name, the boot delay and the iSNS server.

    isns is the "host[:port]" text as written (the port defaults to 3205); isns_portal parses it.
    """

    name: str
    boot_delay: int = 0
    isns: str | None = None

    def __post_init__(self) -> None:
        _check_fields("InitiatorSetup", _INITIATOR_KEYS, self)

    @property
    def isns_portal(self) -> Portal | None:
        if self.isns is None:
            return None
        host, port = parse_portal_argument(self.isns, DEFAULT_ISNS_PORT)
        return Portal(host, port)

    @property
    def suffix(self) -> str:
        """The part setInitiatorName changes (after the project prefix, or the first ':')."""
        return _split_initiator_name(self.name)[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class MountSetup:
    point: str = DEFAULT_MOUNT_POINT
    allow_other: bool = False
    max_read: int = 512 * 1024
    max_write: int = 512 * 1024

    def __post_init__(self) -> None:
        _check_fields("MountSetup", _MOUNT_KEYS, self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole saved setup.

    `warnings` (not part of equality) lists what load() noticed but did not refuse: secrets
    outside the manual's guidelines, informational login parameters changed, a loose file
    mode it repaired, a generated name it could not save. Callers show them; none holds a secret.
    """

    initiator: InitiatorSetup
    mount: MountSetup = MountSetup()
    default_params: LoginParams = LoginParams()
    default_timeouts: Timeouts = Timeouts()
    targets: tuple[TargetSetup, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        seen: dict[str, int] = {}
        for index, target in enumerate(self.targets):
            key = _name_key(target.name)
            if key in seen:
                raise ConfigError(
                    f"Config.targets[{index}]: {target.name} is already configured as "
                    f"targets[{seen[key]}]"
                )
            seen[key] = index

    def target(self, name: str) -> TargetSetup | None:
        key = _name_key(name)
        for target in self.targets:
            if _name_key(target.name) == key:
                return target
        return None

    def auto_logins(self) -> list[tuple[TargetSetup, PortalSetup]]:
        """(target, portal) pairs to log in through when the daemon starts, in file order."""
        return [(t, p) for t in self.targets for p in t.portals if p.visible and p.auto_login]

    def has_secrets(self) -> bool:
        return any(
            sec.secrets()
            for t in self.targets
            for sec in (t.security, t.discovery_security)
            if sec is not None
        )


def _name_key(name: str) -> str:
    """iqn. names are already lower case (RFC 3722); eui./naa. hex compares without case."""
    return name.lower()


def _split_initiator_name(name: str) -> tuple[str, str]:
    """(prefix, suffix) as setInitiatorName sees them: after our own prefix, or after the
    naming authority's ':' of another iqn. name; eui./naa. names have no suffix."""
    if name.startswith(INITIATOR_PREFIX):
        return INITIATOR_PREFIX, name[len(INITIATOR_PREFIX) :]
    if name.startswith("iqn.") and ":" in name:
        head, _, tail = name.partition(":")
        return head + ":", tail
    return "", name


# --------------------------------------------------------------------------------------------
# Reading: TOML data -> Config, every error one line with file, key path, value and choices
# --------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def fail(self, where: str, message: str) -> NoReturn:
        prefix = f"{self.source}: {where}" if where else f"{self.source}:"
        raise ConfigError(f"{prefix}{message}", file=self.source, key=where or None)

    def table(self, value: object, where: str, header: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(
                where, f" = {_show(value)} is {_type_name(value)}; allowed: a table [{header}]"
            )
        return value

    def array_of_tables(self, value: object, where: str, header: str) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            self.fail(
                where,
                f" is {_type_name(value)}; allowed: an array of tables [[{header}]]",
            )
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(
                    f"{where}[{index}]",
                    f" = {_show(item)} is {_type_name(item)}; allowed: a table [[{header}]]",
                )
        return value

    def known_keys(self, table: Mapping[str, object], where: str, section: str) -> None:
        specs = SCHEMA.get(section, {})
        allowed = [*specs, *_SUBTABLES.get(section, ())]
        for key in table:
            if key in allowed:
                continue
            place = f"in [{section}]" if section else "at the top level"
            path = f"{where}.{_path_key(key)}" if where else _path_key(key)
            hint = ""
            for sub in _SUBTABLES.get(section, ()):
                home = f"{section}.{sub}" if section else sub
                if key in SCHEMA.get(home, {}):
                    hint = f"; it belongs in [{home}]"
                    break
            else:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                if close:
                    hint = f"; did you mean {_qkey(close[0])}?"
            self.fail(
                path,
                f": unknown key {_qkey(key)} {place}{hint} (allowed: {', '.join(allowed)})",
            )

    def scalar(self, table: Mapping[str, object], where: str, spec: KeySpec) -> Any:
        path = f"{where}.{spec.name}" if where else spec.name
        if spec.name not in table:
            if spec.required:
                self.fail(where, f": {spec.name} is missing; allowed: {spec.allowed}")
            return spec.default
        value = table[spec.name]
        try:
            return spec.check(value)
        except _Bad as bad:
            self.fail(
                path,
                f" = {_show(value, secret=spec.secret)} {bad.problem}; allowed: {spec.allowed}",
            )

    def scalars(
        self, table: Mapping[str, object], where: str, section: str
    ) -> dict[str, Any]:
        self.known_keys(table, where, section)
        return {name: self.scalar(table, where, spec) for name, spec in SCHEMA[section].items()}

    # --- sections ---------------------------------------------------------------------------

    def params(
        self, raw: object, where: str, section: str, base: LoginParams
    ) -> LoginParams:
        table = self.table(raw, where, section)
        self.known_keys(table, where, section)
        values = {
            name: self.scalar(table, where, spec) if name in table else getattr(base, name)
            for name, spec in _PARAMS.items()
        }
        problem = _burst_problem(values["first_burst_length"], values["max_burst_length"])
        if problem is not None:
            self.fail(where, f": {problem}")
        for name, spec in _PARAMS.items():
            if spec.informational and name in table and values[name] != spec.default:
                self.warnings.append(
                    f"{self.source}: {where}.{name} = {_show(values[name])} differs from the "
                    f"engine's {_show(spec.default)}; the manual lists {spec.iscsi_key} for "
                    "information only, change it only if the target needs it"
                )
        return LoginParams(**values)

    def timeouts(self, raw: object, where: str, section: str, base: Timeouts) -> Timeouts:
        table = self.table(raw, where, section)
        self.known_keys(table, where, section)
        values = {
            name: self.scalar(table, where, spec) if name in table else getattr(base, name)
            for name, spec in _TIMEOUTS.items()
        }
        return Timeouts(**values)

    def security(self, raw: object, where: str, section: str) -> Security:
        table = self.table(raw, where, section)
        values = self.scalars(table, where, section)
        present = [name for name in _SECURITY if name != "method" and name in table]
        problem = _security_problem(values["method"], present, values["mutual"])
        if problem is not None:
            self.fail(where, f": {problem}")
        if values["mutual"] and values["initiator_secret"] == values["target_secret"]:
            self.fail(f"{where}.initiator_secret", _SAME_SECRET)
        for name in ("target_secret", "initiator_secret"):
            if values[name] is not None:
                self.warnings.extend(
                    f"{self.source}: {where}.{name}: {warning}"
                    for warning in secret_warnings(values[name])
                )
        return Security(**values)

    def portal(self, raw: dict[str, Any], where: str) -> PortalSetup:
        values = self.scalars(raw, where, "target.portal")
        if values["auto_login"] and not values["visible"]:
            self.fail(f"{where}.auto_login", f": {_AUTO_LOGIN_INVISIBLE}")
        return PortalSetup(**values)

    def target(
        self, raw: dict[str, Any], where: str, params: LoginParams, timeouts: Timeouts
    ) -> TargetSetup:
        values = self.scalars(raw, where, "target")
        if "portal" not in raw:
            self.fail(where, f": {_NO_PORTALS}")
        portals_raw = self.array_of_tables(raw["portal"], f"{where}.portal", "target.portal")
        if not portals_raw:
            self.fail(f"{where}.portal", f": {_NO_PORTALS}")
        portals: list[PortalSetup] = []
        for index, item in enumerate(portals_raw):
            portal = self.portal(item, f"{where}.portal[{index}]")
            portals.append(portal)
            first = _first_duplicate(portals, index)
            if first is not None:
                self.fail(
                    f"{where}.portal[{index}]",
                    f": {portal} is listed twice (also portal[{first}]); "
                    "allowed: each address and port once per target",
                )
        security = Security()
        if "security" in raw:
            security = self.security(raw["security"], f"{where}.security", "target.security")
        discovery: Security | None = None
        if "discovery_security" in raw:
            discovery = self.security(
                raw["discovery_security"],
                f"{where}.discovery_security",
                "target.discovery_security",
            )
        if "params" in raw:
            params = self.params(raw["params"], f"{where}.params", "target.params", params)
        if "timeouts" in raw:
            timeouts = self.timeouts(
                raw["timeouts"], f"{where}.timeouts", "target.timeouts", timeouts
            )
        return TargetSetup(
            name=values["name"],
            alias=values["alias"],
            portals=tuple(portals),
            security=security,
            discovery_security=discovery,
            params=params,
            timeouts=timeouts,
        )

    def config(self, data: Mapping[str, Any], *, name_fallback: str | None) -> Config:
        self.known_keys(data, "", "")
        initiator_raw = self.table(data.get("initiator", {}), "initiator", "initiator")
        init = self.scalars(initiator_raw, "initiator", "initiator")
        name = init["name"] if init["name"] is not None else name_fallback
        if name is None:
            self.fail("initiator", ": name is missing; allowed: " + _NAME_ALLOWED)
        initiator = InitiatorSetup(name=name, boot_delay=init["boot_delay"], isns=init["isns"])
        mount = MountSetup(**self.scalars(self.table(data.get("mount", {}), "mount", "mount"),
                                          "mount", "mount"))
        defaults = self.table(data.get("defaults", {}), "defaults", "defaults")
        self.known_keys(defaults, "defaults", "defaults")
        params = self.params(
            defaults.get("params", {}), "defaults.params", "defaults.params", LoginParams()
        )
        timeouts = self.timeouts(
            defaults.get("timeouts", {}), "defaults.timeouts", "defaults.timeouts", Timeouts()
        )
        targets: list[TargetSetup] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(self.array_of_tables(data.get("target", []), "target",
                                                         "target")):
            where = f"target[{index}]"
            target = self.target(raw, where, params, timeouts)
            key = _name_key(target.name)
            if key in seen:
                self.fail(
                    f"{where}.name",
                    f" = {_show(target.name)} is already configured as target[{seen[key]}]; "
                    "allowed: each target once",
                )
            seen[key] = index
            targets.append(target)
        return Config(
            initiator=initiator,
            mount=mount,
            default_params=params,
            default_timeouts=timeouts,
            targets=tuple(targets),
            warnings=tuple(self.warnings),
        )


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "invalid TOML"
        match = _TOML_POSITION.search(message)
        if match:
            message = message[: match.start()]
            where = f"line {match.group(1)}, column {match.group(2)}: "
        else:
            where = ""
        raise ConfigError(
            f"{source}: {where}TOML syntax error: {message}", file=source
        ) from None


def _parse_document(text: str, source: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        # tomllib accepted it, so this is a corner where the two parsers differ.
        raise ConfigError(
            f"{source}: line {exc.line}, column {exc.col}: TOML the editor library cannot keep: "
            f"{str(exc).splitlines()[0]}",
            file=source,
        ) from None


def _build(text: str, source: str, *, name_fallback: str | None = None) -> Config:
    return _Reader(source).config(_parse_toml(text, source), name_fallback=name_fallback)


# --------------------------------------------------------------------------------------------
# Writing: Config pieces -> TOML items, and tomlkit edits that keep comments where they belong
# --------------------------------------------------------------------------------------------


def _toml_value(value: object) -> object:
    if isinstance(value, Secret):
        try:
            return value.reveal().decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("a CHAP secret to save must be UTF-8 text") from None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _security_items(security: Security) -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = [("method", security.method)]
    if security.method == "CHAP":
        items += [("target_user", security.target_user), ("target_secret", security.target_secret)]
        if security.initiator_user is not None:
            items += [
                ("initiator_user", security.initiator_user),
                ("initiator_secret", security.initiator_secret),
                ("mutual", security.mutual),
            ]
    return items


def _portal_items(portal: PortalSetup) -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = [("address", portal.address), ("port", portal.port)]
    if portal.tpgt is not None:
        items.append(("tpgt", portal.tpgt))
    items += [("visible", portal.visible), ("auto_login", portal.auto_login)]
    return items


def _diff_items(obj: object, base: object, specs: Iterable[KeySpec]) -> list[tuple[str, object]]:
    return [
        (s.name, getattr(obj, s.name))
        for s in specs
        if getattr(obj, s.name) != getattr(base, s.name)
    ]


def _new_table(items: Iterable[tuple[str, object]]) -> Table:
    table = tomlkit.table()
    for key, value in items:
        table.add(key, _toml_value(value))
    return table


def _target_table(target: TargetSetup, params: LoginParams, timeouts: Timeouts) -> Table:
    table = tomlkit.table()
    table.add("name", target.name)
    if target.alias is not None:
        table.add("alias", target.alias)
    portals = tomlkit.aot()
    for portal in target.portals:
        portals.append(_new_table(_portal_items(portal)))
    table.add("portal", portals)
    if target.security.method != "None":
        table.add("security", _new_table(_security_items(target.security)))
    if target.discovery_security is not None:
        table.add("discovery_security", _new_table(_security_items(target.discovery_security)))
    changed = _diff_items(target.params, params, _PARAM_KEYS)
    if changed:
        table.add("params", _new_table(changed))
    changed = _diff_items(target.timeouts, timeouts, _TIMEOUT_KEYS)
    if changed:
        table.add("timeouts", _new_table(changed))
    return table


def _initiator_items(initiator: InitiatorSetup) -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = [("name", initiator.name)]
    if initiator.boot_delay != 0:
        items.append(("boot_delay", initiator.boot_delay))
    if initiator.isns is not None:
        items.append(("isns", initiator.isns))
    return items


def _isns_text(host: str, port: int | None) -> str:
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dumps(config: Config) -> str:
    """The TOML text of a Config: the initiator name always, everything else only where it
    differs from the built-in defaults (targets: from the file's [defaults])."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment("iscsifs setup; every key is described in conf/iscsifs.example.toml"))
    doc.add("initiator", _new_table(_initiator_items(config.initiator)))
    mount = _diff_items(config.mount, MountSetup(), _MOUNT_KEYS)
    if mount:
        doc.add("mount", _new_table(mount))
    params = _diff_items(config.default_params, LoginParams(), _PARAM_KEYS)
    timeouts = _diff_items(config.default_timeouts, Timeouts(), _TIMEOUT_KEYS)
    if params or timeouts:
        defaults = tomlkit.table(is_super_table=True)
        if params:
            defaults.add("params", _new_table(params))
        if timeouts:
            defaults.add("timeouts", _new_table(timeouts))
        doc.add("defaults", defaults)
    if config.targets:
        aot = tomlkit.aot()
        for target in config.targets:
            aot.append(_target_table(target, config.default_params, config.default_timeouts))
        doc.add("target", aot)
    return doc.as_string()


# tomlkit keeps a comment that stands above a table header inside the PREVIOUS table's body, as
# trailing trivia. Appending a key or a table naively would land it after such a comment, i.e.
# under the next table's description; and deleting a table would take the next table's comment
# with it. These helpers move that trailing trivia so comments stay next to what they describe.


def _container(obj: Any) -> Container:
    return obj.value if isinstance(obj, (Table, InlineTable)) else obj


def _last_rendered(obj: Any) -> Container | None:
    """The container whose body is rendered last inside obj (a table, AoT element or doc)."""
    if isinstance(obj, InlineTable):
        return None
    container = _container(obj)
    for _key, item in reversed(container.body):
        if isinstance(item, Null):
            continue
        if isinstance(item, Table):
            return _last_rendered(item)
        if isinstance(item, AoT):
            if item.body:
                return _last_rendered(item.body[-1])
            continue
        return container
    return container


def _pop_trailing(obj: Any) -> list[Item]:
    container = _last_rendered(obj)
    if container is None:
        return []
    body = container.body
    start = len(body)
    while (
        start > 0
        and body[start - 1][0] is None
        and isinstance(body[start - 1][1], (Comment, Whitespace, Null))
    ):
        start -= 1
    # Of those key-less items at the very end, only the block from the last blank line on
    # introduces what follows; comments right under the last key belong to this table.
    # Popping only from the end keeps the indices of keyed items valid.
    cut = next(
        (
            i
            for i in range(len(body) - 1, start - 1, -1)
            if isinstance(body[i][1], Whitespace) and "\n" in body[i][1].as_string()
        ),
        None,
    )
    if cut is None:
        return []
    popped = [item for _key, item in body[cut:] if not isinstance(item, Null)]
    del body[cut:]
    return popped


def _push_trailing(obj: Any, items: list[Item]) -> None:
    container = _last_rendered(obj)
    if container is None or not items:
        return
    items = _without_extra_blank_lines(container.as_string(), items)
    container.body.extend((None, item) for item in items)


def _without_extra_blank_lines(before: str, items: list[Item]) -> list[Item]:
    """Drop leading blank lines from items when the text before them already ends with one,
    so that moving comments around never stacks up empty lines."""
    if before.endswith("\n\n"):
        items = list(items)
        while items and isinstance(items[0], Whitespace) and not items[0].as_string().strip():
            items.pop(0)
    return items


def _rendered_before(parent: Any, key: str) -> str:
    """The text rendered just before parent[key] (enough of it to see its last lines)."""
    body = _container(parent).body
    position = next(i for i, (k, _item) in enumerate(body) if k is not None and k.key == key)
    for _k, item in reversed(body[:position]):
        if isinstance(item, Null):
            continue
        if isinstance(item, (Table, AoT)):
            container = _last_rendered(item)
            return container.as_string() if container is not None else ""
        return item.as_string()
    return ""


def _comment_text(item: Item) -> str:
    return item.as_string().strip() if isinstance(item, Comment) else ""


def _set_key(table: Any, key: str, value: object) -> None:
    """Set a scalar key, in place when it exists (its trailing comment stays). A new key goes
    under a commented-out '# key = ...' line when there is one (as in the example file), else
    after the table's last key, before any comment that introduces what follows."""
    value = _toml_value(value)
    if key in table:
        table[key] = value
        return
    if isinstance(table, InlineTable):
        table[key] = value
        return
    container = _container(table)
    body = container.body
    pattern = re.compile(rf"^#\s*{re.escape(key)}\s*=")
    index: int | None = None
    for position, (_k, item) in enumerate(body):
        if isinstance(item, Comment) and pattern.match(_comment_text(item)):
            index = position + 1
            break
    if index is None:
        index = 0
        for position, (k, item) in enumerate(body):
            if k is not None and not isinstance(item, (Table, AoT, Null)):
                index = position + 1
    if index >= len(body):
        table[key] = value  # nothing follows the last key: a plain append is right
        return
    item = tomlkit.item(value)
    container._insert_at(index, key, item)
    if isinstance(table, Table):
        dict.__setitem__(table, key, item)


def _append_table(parent: Any, key: str, table: Table) -> None:
    """Add a sub-table (or an array of tables) at the end of parent, keeping the comments that
    end parent (they describe whatever follows parent) after the new table."""
    trailing = _pop_trailing(parent)
    _ensure_blank_line_before(parent, table)
    parent[key] = table
    _push_trailing(parent, trailing)


def _append_aot_element(parent: Any, aot: Any, element: Table) -> None:
    """Append an element to an array of tables; the comments that ended the last element
    (they introduce what follows the array) move to the end of the new one."""
    if isinstance(aot, Array):
        inline = tomlkit.inline_table()
        inline.update(element.unwrap())
        aot.append(inline)
        return
    if not aot.body:
        _ensure_blank_line_before(parent, element)
        aot.append(element)
        return
    last = aot.body[-1]
    trailing = _pop_trailing(last)
    _ensure_blank_line_before(last, element)
    aot.append(element)
    _push_trailing(element, trailing)


def _ensure_blank_line_before(parent: Any, table: Table) -> None:
    container = _last_rendered(parent)
    if container is None or not container.body:
        return
    rendered = container.as_string()
    if rendered and not rendered.endswith("\n\n"):
        table.trivia.indent = "\n" if rendered.endswith("\n") else "\n\n"


def _insert_table_after(doc: Any, anchor: str, key: str, table: Table) -> None:
    """Insert a top-level table right after the table `anchor`; the comments that ended the
    anchor (they introduce the next table) move to the end of the new one."""
    body = doc.body
    position = next(i for i, (k, _item) in enumerate(body) if k is not None and k.key == anchor)
    trailing = _pop_trailing(doc[anchor])
    _ensure_blank_line_before(doc[anchor], table)
    if position + 1 < len(body):
        doc._insert_at(position + 1, key, table)
    else:
        doc[key] = table
    _push_trailing(doc[key], trailing)


def _remove_aot_element(parent: Any, key: str, index: int) -> None:
    """Remove element `index` of parent[key] with its traces: the comment block that introduced
    it (the previous element's trailing block) goes too. The comments at its own end introduce
    the element after it, so they move to where the removed one was. The block above the first
    element often introduces the whole list, so it stays."""
    aot = parent[key]
    if isinstance(aot, Array):
        del aot[index]
        if not len(aot):
            del parent[key]
        return
    trailing = _pop_trailing(aot.body[index])
    if index > 0:
        _pop_trailing(aot.body[index - 1])  # the removed element's introduction
        del aot[index]
        if trailing and not isinstance(trailing[0], Whitespace):
            trailing.insert(0, tomlkit.ws("\n"))
        _push_trailing(aot.body[index - 1], trailing)
    else:
        before = _rendered_before(parent, key)
        removed_indent = aot.body[0].trivia.indent
        del aot[index]
        if len(aot.body):
            # The next element takes the removed one's place: right after what preceded it,
            # with the comments that introduced it, set off by one blank line.
            while trailing and isinstance(trailing[0], Whitespace):
                trailing.pop(0)
            text = "".join(item.as_string() for item in trailing)
            if text and before and not before.endswith("\n\n"):
                text = "\n" + text
            aot.body[0].trivia.indent = removed_indent + text
        else:
            del parent[key]
            _push_trailing(parent, trailing)


# --------------------------------------------------------------------------------------------
# The store: load, change, save
# --------------------------------------------------------------------------------------------

_Identity = tuple[int, int, int, int] | None
_UNSET: Any = object()


def _identity(path: Path) -> _Identity:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _valid_host_label(hostname: str) -> str:
    text = _FIRST_SUFFIX_CHARS.sub("-", hostname.lower())
    text = re.sub(r"-{2,}", "-", text).strip("-.")
    text = re.sub(r"\.{2,}", ".", text)
    return text[:160].strip("-.") or "host"


class ConfigStore:
    """The setup file, loaded once and changed in place.

    load() reads and validates; the Config it returns carries warnings (see Config). When
    [initiator].name is missing it generates INITIATOR_PREFIX + '<hostname>-<6 hex>' and saves
    it at once, so the name is stable from the first start on (if that save fails, a warning
    says so). When the file holds a CHAP secret and group or others may read or write it, load()
    chmods it to 0600 and adds a warning (like ssh with key files, but repairing: we own the
    file). A file owned by another user than us or root is refused.

    Every change is made on a copy of the document and validated before it replaces the
    current one, so a bad change raises ConfigError and leaves the store as it was. save()
    validates again, refuses when the file changed on disk since it was read (someone edited
    it: load again and redo the change) and writes atomically (temp file, fsync, rename) with
    mode 0600, creating the directory if needed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hostname: Callable[[], str] = socket.gethostname,
        token_hex: Callable[[int], str] = _secrets.token_hex,
    ) -> None:
        self._path = Path(path)
        self._source = str(path)
        self._hostname = hostname
        self._token_hex = token_hex
        self._doc: tomlkit.TOMLDocument | None = None
        self._config: Config | None = None
        self._identity: _Identity = None

    def __repr__(self) -> str:
        return f"ConfigStore({self._source!r})"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def config(self) -> Config:
        if self._config is None:
            return self.load()
        return self._config

    def text(self) -> str:
        """The document as it would be saved (it holds secrets: never log it)."""
        self._ensure_loaded()
        assert self._doc is not None
        return self._doc.as_string()

    # --- loading ----------------------------------------------------------------------------

    def load(self) -> Config:
        text, st = self._read()
        warnings: list[str] = []
        generated: str | None = None
        data = _parse_toml(text, self._source)
        doc = _parse_document(text, self._source) if text.strip() else None
        initiator = data.get("initiator")
        if not isinstance(initiator, dict) or "name" not in initiator:
            generated = self._generate_name()
        config = _build(text, self._source, name_fallback=generated)
        warnings.extend(config.warnings)
        if st is not None and config.has_secrets() and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            try:
                os.chmod(self._path, 0o600)
            except OSError as exc:
                raise ConfigError(
                    f"{self._source}: holds CHAP secrets but group or others may read or write it "
                    f"(mode {mode:04o}) and it cannot be changed ({exc.strerror}); allowed: "
                    f"mode 0600 (chmod 600 {self._source})",
                    file=self._source,
                ) from None
            warnings.append(
                f"{self._source}: holds CHAP secrets but group or others could read or write it "
                f"(mode {mode:04o}); changed its mode to 0600"
            )
        self._identity = _identity(self._path) if st is not None else None
        if doc is None:
            doc = tomlkit.document()
            doc.add(tomlkit.comment(
                "iscsifs setup; every key is described in conf/iscsifs.example.toml"
            ))
        self._doc = doc
        self._config = dataclasses.replace(config, warnings=tuple(warnings))
        if generated is not None:
            self._save_generated_name(generated, warnings)
        return self._config

    def _read(self) -> tuple[str, os.stat_result | None]:
        try:
            # O_NONBLOCK: a FIFO put where the file should be must not hang the daemon.
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                st = os.fstat(handle.fileno())
                self._check_owner(st)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError
                if not stat.S_ISREG(st.st_mode):
                    raise ConfigError(
                        f"{self._source}: is not a regular file; allowed: a TOML file",
                        file=self._source,
                    )
                raw = handle.read()
        except FileNotFoundError:
            return "", None
        except IsADirectoryError:
            raise ConfigError(
                f"{self._source}: is a directory; allowed: a TOML file", file=self._source
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"{self._source}: cannot read it: {exc.strerror}", file=self._source
            ) from None
        try:
            return raw.decode("utf-8"), st
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise ConfigError(
                f"{self._source}: line {line}: not UTF-8 text (byte {exc.start}); "
                "allowed: a UTF-8 TOML file",
                file=self._source,
            ) from None

    def _check_owner(self, st: os.stat_result) -> None:
        me = os.geteuid()
        if st.st_uid not in (0, me):
            raise ConfigError(
                f"{self._source}: owned by uid {st.st_uid}, not by root or by us (uid {me}); "
                "refusing a setup another user controls; allowed: a file owned by root or by us",
                file=self._source,
            )

    def _generate_name(self) -> str:
        try:
            host = self._hostname()
        except OSError:
            host = ""
        suffix = f"{_valid_host_label(host)}-{self._token_hex(3)[:6]}"
        name = INITIATOR_PREFIX + suffix
        if is_valid_iscsi_name(name) is not None:
            name = f"{INITIATOR_PREFIX}host-{self._token_hex(3)[:6]}"
        return name

    def _save_generated_name(self, name: str, warnings: list[str]) -> None:
        def change(doc: tomlkit.TOMLDocument) -> None:
            _set_key(self._initiator_table(doc), "name", name)

        self._mutate(change)
        try:
            self.save()
        except ConfigError as exc:
            warnings.append(
                f"{self._source}: could not save the generated initiator name ({exc}); "
                "it will change at the next start"
            )
        assert self._config is not None
        self._config = dataclasses.replace(self._config, warnings=tuple(warnings))

    def _ensure_loaded(self) -> None:
        if self._doc is None:
            self.load()

    # --- changing ---------------------------------------------------------------------------

    def _mutate(self, change: Callable[[tomlkit.TOMLDocument], None]) -> Config:
        """Apply change to a copy of the document; keep it only if the result validates."""
        self._ensure_loaded()
        assert self._doc is not None and self._config is not None
        doc = tomlkit.parse(self._doc.as_string())
        try:
            change(doc)
        except tomlkit.exceptions.TOMLKitError as exc:
            self._fail(f"cannot make that change in this file's layout: {exc}")
        text = doc.as_string()
        config = _build(text, self._source)
        self._doc = _parse_document(text, self._source)
        self._config = config
        return config

    def _fail(self, message: str, key: str | None = None) -> NoReturn:
        raise ConfigError(f"{self._source}: {message}", file=self._source, key=key)

    def _initiator_table(self, doc: tomlkit.TOMLDocument) -> Any:
        if "initiator" not in doc:
            table = tomlkit.table()
            body = doc.body
            keyed = [i for i, (key, _item) in enumerate(body) if key is not None]
            if not keyed:
                doc["initiator"] = table  # after the file's opening comments
            else:
                # After the opening comments up to their last blank line: the comments below
                # that line introduce the first table, and stay with it.
                index = 0
                for position in range(keyed[0]):
                    if isinstance(body[position][1], Whitespace):
                        index = position + 1
                table.add(tomlkit.nl())
                doc._insert_at(index, "initiator", table)
        return doc["initiator"]

    def _target_index(self, name: str) -> int:
        key = _name_key(name)
        for index, target in enumerate(self.config.targets):
            if _name_key(target.name) == key:
                return index
        self._fail(f"target {_plain(name)} is not configured")

    @staticmethod
    def _target_element(doc: tomlkit.TOMLDocument, index: int) -> Any:
        return doc["target"][index]

    def _subtable(self, element: Any, key: str) -> Any:
        if key not in element:
            if isinstance(element, InlineTable):
                element[key] = tomlkit.inline_table()
            else:
                _append_table(element, key, tomlkit.table())
        return element[key]

    def set_initiator_suffix(self, suffix: str) -> Config:
        """setInitiatorName: replace the part after INITIATOR_PREFIX (or after the naming
        authority's ':' of a hand-written iqn. name). An eui./naa. name, having no such part,
        is replaced by INITIATOR_PREFIX + suffix."""
        prefix, _ = _split_initiator_name(self.config.initiator.name)
        name = (prefix or INITIATOR_PREFIX) + suffix
        return self._mutate(lambda doc: _set_key(self._initiator_table(doc), "name", name))

    def set_boot_delay(self, seconds: int) -> Config:
        return self._mutate(
            lambda doc: _set_key(self._initiator_table(doc), "boot_delay", seconds)
        )

    def set_isns(self, host: str | None, port: int | None = None) -> Config:
        """Set the iSNS server ("host", or "host:port" when port is given); None removes it."""

        def change(doc: tomlkit.TOMLDocument) -> None:
            table = self._initiator_table(doc)
            if host is None:
                if "isns" in table:
                    del table["isns"]
                return
            _set_key(table, "isns", _isns_text(host.strip("[]"), port))

        return self._mutate(change)

    def add_target(
        self,
        name: str,
        portals: Sequence[PortalSetup | Portal | str],
        *,
        alias: str | None = None,
        security: Security | None = None,
        discovery_security: Security | None = None,
        params: LoginParams | None = None,
        timeouts: Timeouts | None = None,
        auto_login: bool = False,
    ) -> Config:
        """addTargets: save a target with its portals (the first is the one it was added
        through). Portal or "host[:port]" entries become visible portals with `auto_login`;
        PortalSetup entries keep their own boxes. params/timeouts are saved as the keys that
        differ from the file's [defaults]. A target already configured is an error."""
        if self.config.target(name) is not None:
            self._fail(
                f"target {_plain(name)} is already configured; allowed: a target not yet added"
            )
        entries: list[PortalSetup] = []
        for portal in portals:
            if isinstance(portal, PortalSetup):
                entries.append(portal)
                continue
            if isinstance(portal, str):
                try:
                    host, port = parse_portal_argument(portal)
                except ValueError as exc:
                    self._fail(f"target {_plain(name)}: {exc}")
                portal = Portal(host, port)
            try:
                entries.append(PortalSetup(
                    address=portal.address, port=portal.port, tpgt=portal.tpgt,
                    visible=True, auto_login=auto_login,
                ))
            except ConfigError as exc:
                self._fail(f"target {_plain(name)}: {exc}")
        config = self.config
        try:
            target = TargetSetup(
                name=name,
                alias=alias,
                portals=tuple(entries),
                security=security if security is not None else Security(),
                discovery_security=discovery_security,
                params=params if params is not None else config.default_params,
                timeouts=timeouts if timeouts is not None else config.default_timeouts,
            )
        except ConfigError as exc:
            self._fail(f"target {_plain(name)}: {exc}")
        table = _target_table(target, config.default_params, config.default_timeouts)

        def change(doc: tomlkit.TOMLDocument) -> None:
            if "target" in doc:
                _append_aot_element(doc, doc["target"], table)
            else:
                aot = tomlkit.aot()
                trailing = _pop_trailing(doc)
                _ensure_blank_line_before(doc, table)
                aot.append(table)
                doc["target"] = aot
                _push_trailing(doc, trailing)

        return self._mutate(change)

    def remove_target(
        self,
        name: str,
        address: str | tuple[str, int] | Portal | None = None,
        port: int | None = None,
    ) -> bool:
        """removeTargets: without an address the whole target goes. With one ("host",
        "host:port", (host, port) or a Portal; a port narrows it), the portals at that address
        go; if it is the target's saved address (its first portal) or no portal is left, all
        traces of the target go. Returns True when the whole target was removed."""
        index = self._target_index(name)
        target = self.config.targets[index]
        if isinstance(address, Portal):
            port = address.port
            address = address.address
        elif isinstance(address, tuple):
            address, port = address
        if address is None:
            whole = True
            doomed: list[int] = []
        else:
            host, given_port = address.strip(), port
            if port is None:
                try:
                    host, parsed = parse_portal_argument(address, 0)
                except ValueError as exc:
                    self._fail(f"target {_plain(name)}: {exc}")
                given_port = parsed or None
            doomed = [i for i, p in enumerate(target.portals) if p.matches(host, given_port)]
            if not doomed:
                self._fail(f"target {_plain(name)} has no portal at {_plain(address)}")
            whole = 0 in doomed or len(doomed) == len(target.portals)

        def change(doc: tomlkit.TOMLDocument) -> None:
            if whole:
                _remove_aot_element(doc, "target", index)
                return
            element = self._target_element(doc, index)
            for i in reversed(doomed):
                _remove_aot_element(element, "portal", i)

        self._mutate(change)
        return whole

    def set_portal(
        self,
        name: str,
        address: str,
        port: int = DEFAULT_ISCSI_PORT,
        *,
        visible: bool | None = None,
        auto_login: bool | None = None,
        tpgt: int | None = _UNSET,
    ) -> Config:
        """Set a portal's Visible / Auto Login boxes (and tpgt); adds the portal when the
        target does not have it yet (visible, no auto login unless told)."""
        index = self._target_index(name)
        target = self.config.targets[index]
        address = address.strip("[]")
        existing = [i for i, p in enumerate(target.portals) if p.matches(address, port)]

        def change(doc: tomlkit.TOMLDocument) -> None:
            element = self._target_element(doc, index)
            if existing:
                table = element["portal"][existing[0]]
            else:
                table = _new_table([("address", address), ("port", port)])
                _append_aot_element(element, element["portal"], table)
                table = element["portal"][-1]
            if tpgt is not _UNSET:
                if tpgt is None:
                    if "tpgt" in table:
                        del table["tpgt"]
                else:
                    _set_key(table, "tpgt", tpgt)
            if visible is not None:
                _set_key(table, "visible", visible)
            if auto_login is not None:
                _set_key(table, "auto_login", auto_login)

        return self._mutate(change)

    def move_portal(
        self,
        name: str,
        old: Portal | tuple[str, int],
        new: Portal | tuple[str, int],
    ) -> Config:
        """A permanent login redirect: the portal at `old` is now at `new`. Its boxes and
        comments stay; its tpgt becomes new's (unknown for a tuple). If the target already
        has `new`, the old portal is dropped and its boxes are or-ed into the existing one."""
        old_address, old_port = (old.address, old.port) if isinstance(old, Portal) else old
        new_address, new_port = (new.address, new.port) if isinstance(new, Portal) else new
        new_tpgt = new.tpgt if isinstance(new, Portal) else None
        index = self._target_index(name)
        target = self.config.targets[index]
        source = next(
            (i for i, p in enumerate(target.portals) if p.matches(old_address, old_port)), None
        )
        if source is None:
            self._fail(
                f"target {_plain(name)} has no portal at "
                f"{_plain(_isns_text(old_address, old_port))}"
            )
        dest = next(
            (i for i, p in enumerate(target.portals) if p.matches(new_address, new_port)), None
        )
        moving = target.portals[source]

        def change(doc: tomlkit.TOMLDocument) -> None:
            element = self._target_element(doc, index)
            if dest is not None and dest != source:
                table = element["portal"][dest]
                kept = target.portals[dest]
                if moving.visible and not kept.visible:
                    _set_key(table, "visible", True)
                if moving.auto_login and not kept.auto_login:
                    _set_key(table, "auto_login", True)
                _remove_aot_element(element, "portal", source)
                return
            table = element["portal"][source]
            _set_key(table, "address", new_address)
            _set_key(table, "port", new_port)
            if new_tpgt is not None:
                _set_key(table, "tpgt", new_tpgt)
            elif "tpgt" in table:
                del table["tpgt"]

        return self._mutate(change)

    def set_timeout(self, name: str | None, key: str, value: float) -> Config:
        """Set one timeout of a target, or of [defaults.timeouts] when name is None."""
        return self._set_in(name, "timeouts", _TIMEOUTS, {key: value})

    def set_param(self, name: str | None, key: str, value: object) -> Config:
        """Set one login parameter (snake_case key) of a target, or of [defaults.params]."""
        return self._set_in(name, "params", _PARAMS, {key: value})

    def set_params(self, name: str | None, values: Mapping[str, object]) -> Config:
        """Set several login parameters in one change, so that e.g. raising both burst
        lengths never passes through first_burst_length > max_burst_length."""
        return self._set_in(name, "params", _PARAMS, values)

    def _set_in(
        self,
        name: str | None,
        section: str,
        specs: Mapping[str, KeySpec],
        values: Mapping[str, object],
    ) -> Config:
        for key in values:
            if key not in specs:
                hint = difflib.get_close_matches(key, list(specs), n=1, cutoff=0.6)
                self._fail(
                    f"unknown key {_qkey(key)} in [{section}]"
                    + (f"; did you mean {_qkey(hint[0])}?" if hint else "")
                    + f" (allowed: {', '.join(specs)})"
                )
        index = None if name is None else self._target_index(name)

        def change(doc: tomlkit.TOMLDocument) -> None:
            if not values:
                return
            if index is None and "defaults" not in doc:
                defaults = tomlkit.table(is_super_table=True)
                defaults.add(section, _new_table(values.items()))
                self._initiator_table(doc)
                body_keys = [k.key for k, _item in doc.body if k is not None]
                anchor = max(
                    (k for k in ("initiator", "mount") if k in body_keys), key=body_keys.index
                )
                _insert_table_after(doc, anchor, "defaults", defaults)
                return
            parent = doc["defaults"] if index is None else self._target_element(doc, index)
            table = self._subtable(parent, section)
            for key, value in values.items():
                _set_key(table, key, value)

        return self._mutate(change)

    def set_security(
        self, name: str, security: Security | None, *, discovery: bool = False
    ) -> Config:
        """Replace a target's security (or discovery_security; None there means "same as
        security"). Keys are set in place, so comments on them stay."""
        index = self._target_index(name)
        key = "discovery_security" if discovery else "security"
        if security is None and not discovery:
            security = Security()

        def change(doc: tomlkit.TOMLDocument) -> None:
            element = self._target_element(doc, index)
            if security is None:
                if key in element:
                    trailing = _pop_trailing(element[key])
                    del element[key]
                    _push_trailing(element, trailing)
                return
            table = self._subtable(element, key)
            items = dict(_security_items(security))
            for spec in _SECURITY_KEYS:
                if spec.name in items:
                    _set_key(table, spec.name, items[spec.name])
                elif spec.name in table:
                    del table[spec.name]

        return self._mutate(change)

    # --- saving -----------------------------------------------------------------------------

    def save(self) -> None:
        self._ensure_loaded()
        assert self._doc is not None
        text = self._doc.as_string()
        config = _build(text, self._source)  # nothing half-valid reaches the disk
        if _identity(self._path) != self._identity:
            self._fail(
                "changed on disk since it was loaded; load it again and redo the change "
                "(allowed: saving over the version that was loaded)"
            )
        try:
            _atomic_write(self._path, text)
        except OSError as exc:
            self._fail(f"cannot save it: {exc.strerror or exc}")
        self._identity = _identity(self._path)
        assert self._config is not None
        self._config = dataclasses.replace(config, warnings=self._config.warnings)


def _atomic_write(path: Path, text: str) -> None:
    real = Path(os.path.realpath(path))  # a symlinked config stays a symlink
    directory = real.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, real)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike[str]) -> Config:
    """Read the setup at path. A missing or empty file gives the built-in defaults. Like
    ConfigStore.load(), the one write it may do is saving a newly generated initiator name
    (and a chmod 0600 repair); warnings are on Config.warnings."""
    return ConfigStore(path).load()
