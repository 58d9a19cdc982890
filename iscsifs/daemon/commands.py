# What a line written to a control file asks for: pure functions that parse one line into a
# request object (or raise CommandError with a one-line message), so every command's syntax is
# unit-tested without a mount, as cli.parse_invocation is for the command line.
# Owns the syntax of the tree's commands. Must not carry a request out (daemon/core.py and
# daemon/portal.py do), nor check a value's range: the config schema does that, once, before
# anything is applied (docs/design.md rule 14).

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ..config import Security
from ..fs import CommandError
from ..syntax import (
    SyntaxProblem,
    parse_address,
    parse_options,
    parse_security,
    parse_yes_no,
)

# -- a portal's control file -----------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    pass


@dataclass(frozen=True)
class Logout:
    pass


@dataclass(frozen=True)
class Rescan:
    pass


@dataclass(frozen=True)
class SetPortal:
    """autologin yes|no, visible yes|no: one box of the Setup tab."""

    key: str  # "auto_login" | "visible"
    value: bool
    word: str  # the command as typed ("autologin"), for the reply


@dataclass(frozen=True)
class Unmap:
    lun: int
    offset: int
    length: int


PortalRequest = Login | Logout | Rescan | SetPortal | Unmap

PORTAL_COMMANDS = ("login, logout, rescan, autologin yes|no, visible yes|no, "
                   "unmap lunN OFFSET LENGTH")


def parse_portal_command(line: str) -> PortalRequest:
    words = line.split()
    cmd, args = (words[0], words[1:]) if words else ("", [])
    if not args and cmd in ("login", "logout", "rescan"):
        return {"login": Login, "logout": Logout, "rescan": Rescan}[cmd]()
    if cmd in ("autologin", "visible") and len(args) == 1:
        value = args[0].lower()
        if value not in ("yes", "no"):
            raise CommandError(f"{cmd} takes yes or no, not {args[0]!r}")
        return SetPortal("auto_login" if cmd == "autologin" else "visible", value == "yes", cmd)
    if cmd == "unmap" and len(args) == 3:
        name, offset, length = args
        number = name[3:]
        if not (name.startswith("lun") and all(v.isascii() and v.isdigit()
                                               for v in (number, offset, length))):
            raise CommandError("unmap takes lunN OFFSET LENGTH in bytes")
        return Unmap(int(number), int(offset), int(length))
    raise CommandError(f"unknown command {line!r}; commands: {PORTAL_COMMANDS}")


@dataclass(frozen=True)
class SetHoldTime:
    seconds: float


def parse_hold_time(text: str) -> SetHoldTime:
    try:
        return SetHoldTime(float(text))
    except ValueError:
        raise CommandError(f"hold time must be a number of seconds from 0 up, not "
                           f"{text!r}") from None


# -- the initiator's files -------------------------------------------------------------------


@dataclass(frozen=True)
class SetInitiatorName:
    suffix: str


@dataclass(frozen=True)
class SetBootDelay:
    seconds: int


@dataclass(frozen=True)
class SetIsns:
    host: str | None  # None: no iSNS server
    port: int | None = None


def parse_initiator_name(line: str) -> SetInitiatorName:
    return SetInitiatorName(line.strip())


def parse_boot_delay(line: str) -> SetBootDelay:
    if not line.strip().isdigit():
        raise CommandError(f"boot delay must be a whole number of seconds, not {line!r}")
    return SetBootDelay(int(line))


def parse_isns(line: str) -> SetIsns:
    line = line.strip()
    if not line or line.lower() == "none":
        return SetIsns(None)
    return SetIsns(*_address(line, isns=True))


# -- discovery/control -----------------------------------------------------------------------


@dataclass(frozen=True)
class SendTargets:
    host: str
    port: int
    security: Security | None = None  # None: no CHAP for discovery


@dataclass(frozen=True)
class IsnsDiscovery:
    host: str | None = None  # None: the configured server
    port: int | None = None


def parse_discovery_command(line: str) -> SendTargets | IsnsDiscovery:
    words = split_line(line)
    if not words:
        raise CommandError("empty command")
    cmd = words[0].lower()
    if cmd == "sendtargets":
        if len(words) not in (2, 4) or (len(words) == 4 and words[2] != "-security"):
            raise CommandError("usage: sendtargets ADDRESS[:PORT] [-security CHAP,...|NONE]")
        host, port = _address(words[1])
        # NONE is accepted so that a -discoverySecurity NONE passes straight through.
        security = _syntax(parse_security, words[3], allow_none=True) if len(words) == 4 else None
        return SendTargets(host, port, security if security is None or security.is_chap
                           else None)
    if cmd == "isns":
        if len(words) > 2:
            raise CommandError("usage: isns [ADDRESS[:PORT]]")
        if len(words) == 2:
            return IsnsDiscovery(*_address(words[1], isns=True))
        return IsnsDiscovery()
    raise CommandError(f"unknown command {words[0]!r}; commands: sendtargets, isns")


# -- targets/control -------------------------------------------------------------------------


@dataclass(frozen=True)
class AddTargets:
    host: str
    port: int
    names: tuple[str, ...]  # ("All",) for every target discovered there
    auto_login: bool = False
    security: Security = field(default_factory=Security)
    discovery_security: Security | None = None  # None: the same as security
    #: LoginParams field overrides from -session and -connection, in that order
    options: tuple[dict[str, object], ...] = ()


@dataclass(frozen=True)
class RemoveTargets:
    host: str
    port: int
    names: tuple[str, ...]


TARGETS_USAGE = ("commands: add ADDRESS[:PORT] NAME...|All [-autoLogin Yes|No] [-security ...] "
                 "[-discoverySecurity ...] [-session ...] [-connection ...]; "
                 "remove ADDRESS[:PORT] NAME...|All")
_ADD_OPTIONS = ("-autoLogin", "-security", "-discoverySecurity", "-session", "-connection")


def parse_targets_command(line: str) -> AddTargets | RemoveTargets:
    words = split_line(line)
    if not words or words[0] not in ("add", "remove"):
        raise CommandError(TARGETS_USAGE)
    cmd = words[0]
    allowed = set(_ADD_OPTIONS) if cmd == "add" else set()
    opts: dict[str, str] = {}
    plain: list[str] = []
    rest = words[1:]
    i = 0
    while i < len(rest):
        w = rest[i]
        if w.startswith("-"):
            if w not in allowed:
                raise CommandError(f"unknown option {w}")
            if i + 1 >= len(rest):
                raise CommandError(f"{w} needs a value")
            if w in opts:
                raise CommandError(f"{w} given twice")
            opts[w] = rest[i + 1]
            i += 2
            continue
        plain.append(w)
        i += 1
    if len(plain) < 2:
        raise CommandError(f"usage: {cmd} ADDRESS[:PORT] NAME...|All")
    host, port = _address(plain[0])
    names = tuple(plain[1:])
    if "All" in names and len(names) > 1:
        raise CommandError('The "All" target names option cannot be used with other '
                           "target names.")
    if cmd == "remove":
        return RemoveTargets(host, port, names)
    return AddTargets(
        host, port, names,
        auto_login=(_syntax(parse_yes_no, opts["-autoLogin"], option="-autoLogin")
                    if "-autoLogin" in opts else False),
        security=(_syntax(parse_security, opts["-security"]) if "-security" in opts
                  else Security()),
        discovery_security=(_syntax(parse_security, opts["-discoverySecurity"],
                                    option="-discoverySecurity", allow_none=True)
                            if "-discoverySecurity" in opts else None),
        options=tuple(_syntax(parse_options, opts[o], option=o)
                      for o in ("-session", "-connection") if o in opts),
    )


# -- helpers ---------------------------------------------------------------------------------


def split_line(line: str) -> list[str]:
    """A control line split as a shell would (quotes group words)."""
    try:
        return shlex.split(line)
    except ValueError as e:  # "No closing quotation" and the like
        raise CommandError(f"cannot split the line: {e}") from None


def _address(text: str, *, isns: bool = False) -> tuple[str, int]:
    return _syntax(parse_address, text, isns=isns)


def _syntax(parse, *args, **kw):  # type: ignore[no-untyped-def]
    """Call a parser of syntax.py; its SyntaxProblem becomes the command's error."""
    try:
        return parse(*args, **kw)
    except SyntaxProblem as e:
        raise CommandError(str(e)) from None
