# The command line: `iscsifs mount|umount|version` and the manual's commands (ATTO Xtend SAN
# manual, Appendix A: addTargets, discoverTargets, ... with their -option syntax, output formats
# and error messages). Every manual command is a client of the mounted tree: it reads and writes
# files under the mount point, so each can also be done with echo and cat (docs/cli.md shows the
# two side by side).
#
# Owns: parsing the manual's -option syntax (by hand: argparse wants --options and would accept
# abbreviations the manual does not), finding the running mount, talking to control files under a
# deadline, and formatting the manual's output. Must not: touch the config file or talk to a
# target (the daemon does both; the CLI only resolves a host name given as -address), print a
# secret, or let a traceback reach the user (docs/design.md rule 11: errors become one line and an exit
# status here).

from __future__ import annotations

import argparse
import errno
import functools
import ipaddress
import os
import shlex
import socket
import sys
import textwrap
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import __version__, daemon
from .config import ConfigError, InitiatorSetup
from .proto.discovery import host_key, is_valid_iscsi_name
from .syntax import (
    SyntaxProblem,
    format_address,
    parse_address,
    parse_options,
    parse_security,
    parse_yes_no,
    secret_values,
)

EXIT_OK = 0
EXIT_ERROR = 1  # the command ran and failed, or the daemon could not be reached
EXIT_USAGE = 2  # the command line itself is wrong

# The manual's own error messages ("CLI error messages"), verbatim.
NOT_RUNNING = "ERROR. The daemon process does not appear to be running"
UNAVAILABLE = "ERROR. The daemon process is temporarily unavailable"
ALL_MIXED = 'ERROR. The "All" target names option cannot be used with other target names.'

#: Seconds a file operation on the mount may take before the daemon counts as unavailable.
#: Commands that reach a target (discovery, login) get the longer one: the daemon bounds them
#: by its own connect and login timeouts (10 + 15 s by default). $ISCSIFS_TIMEOUT overrides both.
LOCAL_TIMEOUT = 30.0
REMOTE_TIMEOUT = 60.0

#: A secret shorter than this is not searched for in output: replacing every "ab" in a message
#: would garble it, and the daemon's messages never carry a secret in the first place.
_MIN_SCRUBBED = 4


class CliError(Exception):
    """A failure to report: `lines` go to stderr as they are (each starts "ERROR. ")."""

    def __init__(self, *lines: str, status: int = EXIT_ERROR) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = [ln if ln.startswith("ERROR.") else f"ERROR. {ln}" for ln in lines]
        self.status = status


class UsageError(CliError):
    """The command line does not follow the syntax (exit status 2)."""

    def __init__(self, *lines: str) -> None:
        super().__init__(*lines, status=EXIT_USAGE)


# ---------------------------------------------------------------------------------------------
# The commands of the manual, and their syntax.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    synopsis: str
    description: str
    values: tuple[str, ...] = ()  # options that take a value
    flags: tuple[str, ...] = ()  # options that take none
    address: str = "none"  # "required" | "optional" | "none": is -address needed?
    targets: bool = False  # takes Target(s)
    argument: str | None = None  # the one plain argument (setBootDelay, setInitiatorName)
    remote: bool = False  # reaches a target: the longer deadline applies


_ADDRESS = "-address"
COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("addTargets",
            "addTargets [Options] -address <address> Target(s)",
            "Adds targets found at the address to the configuration. The targets' port that "
            "match the address will be visible after addition. A target not yet discovered "
            "at the address is discovered first (with -discoverySecurity). A target already "
            "added is reported and omitted.",
            values=(_ADDRESS, "-autoLogin", "-connection", "-session", "-security",
                    "-discoverySecurity"),
            address="required", targets=True, remote=True),
    Command("discoverTargets",
            "discoverTargets [Options] -address <address>",
            "Lists all of the iSCSI targets available at the specified address.",
            values=(_ADDRESS, "-security"), flags=("-isns", "-verbose"),
            address="required", remote=True),
    Command("getInitiatorName", "getInitiatorName [Options]",
            "Gets the initiator name for the host.", flags=("-verbose",)),
    Command("getBootDelay", "getBootDelay",
            "Gets the number of seconds the daemon will wait before starting."),
    Command("help", "help [<command>]", "Writes the usage information to standard output.",
            argument="command"),
    Command("listTargetsSetup", "listTargetsSetup [Options] Target(s)",
            "Writes the setup of the added targets whose names match to standard output.",
            values=(_ADDRESS,), flags=("-verbose",), address="optional", targets=True),
    Command("listTargetsStatus", "listTargetsStatus [Options] Target(s)",
            "Writes the connection status of the targets whose names match to standard "
            "output: from the configuration, or, with -address, obtained from the target "
            "itself (a discovery).",
            values=(_ADDRESS, "-discoverySecurity"), flags=("-verbose",), address="optional",
            targets=True, remote=True),
    Command("loginTargets", "loginTargets -address <address> Target(s)",
            "Connects to a configured target.", values=(_ADDRESS,), address="required",
            targets=True, remote=True),
    Command("logoutTargets", "logoutTargets -address <address> Target(s)",
            "Disconnects from a configured target.", values=(_ADDRESS,), address="required",
            targets=True, remote=True),
    Command("removeTargets", "removeTargets -address <address> Target(s)",
            "Removes the configuration for the target(s) that use the specified address "
            "(logging them out first). If the address is the one a target was added through, "
            "all traces of the target are removed.",
            values=(_ADDRESS,), address="required", targets=True, remote=True),
    Command("setBootDelay", "setBootDelay <seconds>",
            "Sets the number of seconds the daemon will wait before starting (0 to 86400; "
            "0 is a normal start).", argument="seconds"),
    Command("setInitiatorName", "setInitiatorName <name>",
            "Sets the initiator name for this host: only the suffix, the part after the "
            "prefix that getInitiatorName -verbose shows.", argument="name"),
    Command("version", "version", "Writes the version information to standard output."),
)}

ALL_OPTIONS = sorted({o for c in COMMANDS.values() for o in (*c.values, *c.flags)})

OPTION_HELP = (
    ("-address <address>",
     "IPv4, IPv4:port, IPv6, [IPv6]:port or a hostname; port 3260 by default, 3205 with "
     "-isns."),
    ("-autoLogin <Yes | No>", "Log in to the target when the daemon starts (default No)."),
    ("-connection <Option>,...",
     "DataDigest=<None | CRC32C>, HeaderDigest=<None | CRC32C>, "
     "MaxRecvDataSegmentLength=<512 to 16777215>."),
    ("-session <Option>,...",
     "ErrorRecoveryLevel=<0 | 1>, FirstBurstLength=<512 to 16777215>, "
     "ImmediateData=<Yes | No>, InitialR2T=<Yes | No>, MaxBurstLength=<512 to 16777215>."),
    ("-security <Protocol>,<Option>,...",
     "CHAP,TargetUserName=<u>,TargetSecret=<s> for one-way CHAP; add "
     ",InitiatorUserName=<u>,InitiatorSecret=<s>,MutualAuthentication=<Yes | No> for mutual "
     "CHAP. Write \\, for a comma and \\\\ for a backslash in a value, and quote the whole "
     "string with '...'."),
    ("-discoverySecurity <Protocol>,<Option>,...",
     "As -security, for the discovery; NONE for no security at discovery. Left out: the "
     "same as -security."),
    ("-isns", "The address is an iSNS server."),
    ("-verbose", "Prints more detailed output."),
    ("Target(s)", 'One or more target names separated by spaces, or "All" for every target '
     "at the address."),
)


@dataclass
class Invocation:
    """A parsed and checked command line of one of COMMANDS."""

    command: Command
    options: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    address: tuple[str, int] | None = None
    names: list[str] | None = None  # None: All
    argument: str | None = None

    @property
    def verbose(self) -> bool:
        return "-verbose" in self.flags

    @property
    def at(self) -> str:
        assert self.address is not None
        return format_address(*self.address)

    def secrets(self) -> list[str]:
        return [s for o in ("-security", "-discoverySecurity")
                for s in secret_values(self.options.get(o, ""))]


def _looks_like_option(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not word[1:].isdigit()


def _case_hint(word: str, choices: Iterable[str], what: str = "commands") -> str:
    for c in choices:
        if c.lower() == word.lower():
            return f" (did you mean {c}? {what} are case sensitive)"
    return ""


def parse_request(argv: Sequence[str]) -> Invocation:
    """Parse the words after `iscsifs` for one of the manual's commands; raise UsageError with
    the manual's message, or one clear line, for anything wrong."""
    name, words = argv[0], list(argv[1:])
    command = COMMANDS.get(name)
    if command is None:
        raise UsageError(f'Unknown command "{name}"{_case_hint(name, COMMANDS)}; '
                         "run iscsifs help for the list")
    req = Invocation(command)
    plain: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if not _looks_like_option(w):
            plain.append(w)
            i += 1
            continue
        if w in command.values:
            if w in req.options:
                raise UsageError(f"{w} given more than once")
            if i + 1 >= len(words) or words[i + 1] in ALL_OPTIONS:
                raise UsageError(f"{w} needs a value")
            req.options[w] = words[i + 1]
            i += 2
            continue
        if w in command.flags:
            if w in req.flags:
                raise UsageError(f"{w} given more than once")
            req.flags.add(w)
            i += 1
            continue
        options = (*command.values, *command.flags)
        if w in ALL_OPTIONS:
            raise UsageError(f"{name} does not take {w}; its options: "
                             f"{', '.join(options) or 'none'}")
        raise UsageError(f"unknown option {w}{_case_hint(w, options, 'options')}; options of {name}: "
                         f"{', '.join(options) or 'none'}")
    _positionals(req, plain)
    _check_values(req)
    return req


def _positionals(req: Invocation, plain: list[str]) -> None:
    command = req.command
    name = command.name
    if command.argument is not None:
        if name == "help":
            if len(plain) > 1:
                raise UsageError("help takes at most one command name")
            req.argument = plain[0] if plain else None
            return
        if len(plain) != 1:
            raise UsageError(f"{name} takes exactly one <{command.argument}>; "
                             f"usage: {command.synopsis}")
        req.argument = plain[0]
        return
    if not command.targets:
        if plain:
            raise UsageError(f"{name} takes no arguments, not {plain[0]!r}; "
                             f"usage: {command.synopsis}")
        return
    if _ADDRESS not in req.options and command.address == "required" and len(plain) >= 2 \
            and plain[0] != "All" and is_valid_iscsi_name(plain[0]) is not None:
        # The manual's summary writes `addTargets 192.168.0.1 All`: an address in front of
        # the target names is taken as the -address.
        req.options[_ADDRESS] = plain.pop(0)
    if not plain:
        raise UsageError(f"{name} needs Target(s): one or more target names, or All; "
                         f"usage: {command.synopsis}")
    if "All" in plain:
        if len(plain) > 1:
            raise UsageError(ALL_MIXED)
        req.names = None
        return
    names: list[str] = []
    for n in plain:
        problem = is_valid_iscsi_name(n)
        if problem is not None:
            hint = " (did you mean All?)" if n.lower() == "all" else ""
            raise UsageError(f"target name {n!r}: {problem}{hint}")
        if n not in names:
            names.append(n)
    req.names = names


def _check_values(req: Invocation) -> None:
    command, opts = req.command, req.options
    name = command.name
    try:
        if _ADDRESS in opts:
            req.address = parse_address(opts[_ADDRESS], isns="-isns" in req.flags)
        elif command.address == "required":
            raise UsageError(f"{name} needs -address <address>; usage: {command.synopsis}")
        if "-autoLogin" in opts:
            parse_yes_no(opts["-autoLogin"], option="-autoLogin")
        if "-security" in opts:
            if "-isns" in req.flags:
                raise UsageError("-security cannot be used with -isns: it is for a target "
                                 "address, not an iSNS server")
            parse_security(opts["-security"])
        if "-discoverySecurity" in opts:
            if _ADDRESS not in opts:
                raise UsageError("-discoverySecurity needs -address: it is used for the "
                                 "discovery at that address")
            parse_security(opts["-discoverySecurity"], option="-discoverySecurity",
                           allow_none=True)
        for o in ("-connection", "-session"):
            if o in opts:
                parse_options(opts[o], option=o)
    except SyntaxProblem as e:
        raise UsageError(_option_message(str(e), opts)) from None
    if name == "setBootDelay":
        text = req.argument or ""
        if not (text.isascii() and text.isdigit()) or int(text) > 86400:
            raise UsageError(f"setBootDelay takes a whole number of seconds from 0 to 86400, "
                             f"not {text!r}")
        req.argument = str(int(text))
    elif name == "setInitiatorName":
        text = req.argument or ""
        problem = is_valid_iscsi_name(f"iqn.2000-01.org.example:{text}") if text else (
            "the name is empty")
        if problem is not None or ":" in text:
            raise UsageError(f"setInitiatorName {text!r}: {problem or 'a colon is not allowed'}"
                             "; allowed in the suffix: a-z, 0-9, '.' and '-'")


def _option_message(message: str, opts: dict[str, str]) -> str:
    """Messages from syntax.py name the option themselves; an address problem does not."""
    if message.startswith("-"):
        return message
    return f"-address: {message}"


# ---------------------------------------------------------------------------------------------
# The mounted tree, with a deadline on every file operation.
# ---------------------------------------------------------------------------------------------


T = TypeVar("T")


class ControlFailed(Exception):
    """A control-file command failed: the reply lines the daemon left ("ERROR. ...")."""

    def __init__(self, lines: list[str], code: int) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = lines
        self.errno = code


class TreeClient:
    """Reads and commands under a mount point. A file operation the daemon does not answer
    within `timeout` seconds gives the manual's "temporarily unavailable" (the thread doing it
    stays blocked in the kernel, which is why it is a daemon thread)."""

    def __init__(self, root: Path, timeout: float = LOCAL_TIMEOUT,
                 remote_timeout: float | None = None) -> None:
        self.root = root
        self.timeout = timeout
        #: for commands that reach a target (discovery, login, logout, add, remove)
        self.remote_timeout = (max(timeout, REMOTE_TIMEOUT) if remote_timeout is None
                               else remote_timeout)

    def _call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        result: list[T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                result.append(fn())
            except BaseException as e:  # handed to the waiting thread
                failure.append(e)

        t = threading.Thread(target=run, name="iscsifs-cli-io", daemon=True)
        t.start()
        t.join(self.timeout if timeout is None else timeout)
        if t.is_alive():
            raise CliError(UNAVAILABLE)
        if failure:
            e = failure[0]
            if isinstance(e, OSError) and e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                raise CliError(NOT_RUNNING) from None  # the daemon died under its mount
            if isinstance(e, PermissionError):
                raise CliError(f"{e.filename}: permission denied (only the user who mounted "
                               "may use the tree, unless [mount] allow_other = true)") from None
            raise e
        return result[0]

    def read(self, rel: str) -> str:
        path = self.root / rel

        def go() -> str:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")

        return self._call(go)

    def command(self, rel: str, line: str, *, timeout: float | None = None) -> str:
        """Write one command line to a control file and read the reply on the same open
        file; raise ControlFailed with the "ERROR. ..." reply when the write fails."""
        path = self.root / rel
        data = (line + "\n").encode()

        def go() -> tuple[str, OSError | None]:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                err: OSError | None = None
                try:
                    os.write(fd, data)
                except OSError as e:
                    err = e
                # The reply is read from offset 0: the write moved this file's offset.
                chunks: list[bytes] = []
                offset = 0
                while True:
                    chunk = os.pread(fd, 65536, offset)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    offset += len(chunk)
                return b"".join(chunks).decode("utf-8", "replace"), err
            finally:
                os.close(fd)

        reply, err = self._call(go, timeout)
        if err is not None:
            lines = [ln for ln in reply.splitlines() if ln.strip()]
            if not lines:
                lines = [f"ERROR. {err.strerror or err}"]
            raise ControlFailed(lines, err.errno or errno.EIO)
        return reply


def find_tree(config: str | None) -> TreeClient:
    """The mount of the config (--config, $ISCSIFS_CONFIG or the default), or the manual's
    "not running" error. $ISCSIFS_TIMEOUT, when set, is the deadline of every operation."""
    timeout = _timeout()
    info = daemon.find_mount(daemon.config_path(config))
    if info is None:
        raise CliError(NOT_RUNNING)
    root = Path(info["mountpoint"])
    if timeout is None:
        return TreeClient(root)
    return TreeClient(root, timeout, timeout)


# ---------------------------------------------------------------------------------------------
# The files' contents, and the manual's output formats (pure functions).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortalRow:
    """One line of targets/setup, targets/status or a discovery reply."""

    name: str
    tpgt: str
    portal: str  # "127.0.0.1:3260", "[::1]:3260": the directory name under targets/<iqn>/
    auto_login: bool = False
    visible: bool = True
    state: str = ""  # connected | not connected | unavailable


def _fields(text: str, least: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if line.strip() and len(parts) >= least:
            rows.append(parts)
    return rows


def parse_setup(text: str) -> list[PortalRow]:
    """targets/setup: iqn, tpgt, address:port, auto login, visible (Yes/No), tab-separated."""
    return [PortalRow(p[0], p[1], p[2], auto_login=p[3] == "Yes", visible=p[4] == "Yes")
            for p in _fields(text, 5)]


def parse_status(text: str) -> list[PortalRow]:
    """targets/status: iqn, tpgt, address:port, state, tab-separated."""
    return [PortalRow(p[0], p[1], p[2], state=p[3]) for p in _fields(text, 4)]


def parse_discovered(text: str) -> list[PortalRow]:
    """A discovery/control reply: iqn, tpgt, address:port."""
    return [PortalRow(p[0], p[1], p[2]) for p in _fields(text, 3)]


def _resolve(host: str) -> set[str]:
    """The IP addresses a host name stands for ({} when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    return {host_key(str(info[4][0]).split("%")[0]) for info in infos}


#: How host names are looked up; the tests put a table here (no DNS from the test suite).
resolve: Callable[[str], set[str]] = _resolve


@functools.lru_cache(maxsize=64)
def address_keys(host: str) -> frozenset[str]:
    """What a portal's address may be for it to be at -address `host`: the address itself,
    and for a host name the IP addresses it resolves to (the tree lists IP addresses, as
    SendTargets and iSNS give them)."""
    key = host_key(host)
    try:
        ipaddress.ip_address(key)
        return frozenset({key})
    except ValueError:
        return frozenset({key} | resolve(host))


def portal_at(portal: str, address: tuple[str, int]) -> bool:
    """Does "host:port" (as the tree writes it) name the -address?"""
    try:
        host, port = parse_address(portal)
    except SyntaxProblem:
        return False
    return port == address[1] and host_key(host) in address_keys(address[0])


def select(rows: Iterable[PortalRow], names: list[str] | None,
           address: tuple[str, int] | None) -> list[PortalRow]:
    wanted = None if names is None else {n.lower() for n in names}
    return [r for r in rows
            if (wanted is None or r.name.lower() in wanted)
            and (address is None or portal_at(r.portal, address))]


def _yes_no(value: bool) -> str:
    return "Yes" if value else "No"


def format_setup(rows: Iterable[PortalRow], verbose: bool = False) -> str:
    """listTargetsSetup. Non-verbose: <Target Name> <PortGroupTag> <Address:Port> <AutoLogin>
    with a tab between values (the manual's note); verbose: its `***** Name:` block."""
    out = []
    for r in rows:
        if verbose:
            out.append(f"***** Name:\n{r.name} Port Group Tag: {r.tpgt}\n"
                       f"Address: {r.portal} Auto Login: {_yes_no(r.auto_login)}\n")
        else:
            out.append(f"{r.name}\t{r.tpgt}\t{r.portal}\t{_yes_no(r.auto_login)}\n")
    return "".join(out)


def connection_status(state: str) -> str:
    """The manual: "true" signifies that the initiator is connected to the target via the
    socket address; anything else (not connected, unavailable, not added) is "false"."""
    return "true" if state == "connected" else "false"


def format_status(rows: Iterable[PortalRow], verbose: bool = False) -> str:
    """listTargetsStatus. Non-verbose: <Target Name> <PortGroupTag> <Address:Port>
    <Connection Status>, tab-separated; verbose: the `***** Name:` block."""
    out = []
    for r in rows:
        status = connection_status(r.state)
        if verbose:
            out.append(f"***** Name:\n{r.name} Port Group Tag: {r.tpgt}\n"
                       f"Address: {r.portal} Connection Status: {status}\n")
        else:
            out.append(f"{r.name}\t{r.tpgt}\t{r.portal}\t{status}\n")
    return "".join(out)


def format_discovered(rows: Iterable[PortalRow], verbose: bool = False) -> str:
    """discoverTargets: one line per portal, <Target Name> <PortGroupTag> <Address:Port>,
    tab-separated like the list commands; verbose: a `***** Name:` block per portal."""
    out = []
    for r in rows:
        if verbose:
            out.append(f"***** Name:\n{r.name} Port Group Tag: {r.tpgt}\nAddress: {r.portal}\n")
        else:
            out.append(f"{r.name}\t{r.tpgt}\t{r.portal}\n")
    return "".join(out)


def format_initiator_name(name: str, verbose: bool = False) -> str:
    """getInitiatorName; verbose also splits off the suffix setInitiatorName changes."""
    if not verbose:
        return name + "\n"
    try:
        suffix = InitiatorSetup(name=name).suffix
    except ConfigError:
        suffix = ""
    prefix = name[: len(name) - len(suffix)] if suffix else name
    return (f"Initiator Name: {name}\nPrefix: {prefix}\n"
            f"Suffix: {suffix or '-'} (the part setInitiatorName sets)\n")


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, 88, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def _option_lines(keys: Iterable[str]) -> list[str]:
    lines: list[str] = []
    for key, text in OPTION_HELP:
        if key.split()[0] in keys:
            lines += [f"  {key}", *_wrap(text, "      ")]
    return lines


def usage(name: str | None = None) -> str:
    """help: every command, or one."""
    placeholder = {k.split()[0]: k for k, _ in OPTION_HELP}
    if name is not None:
        command = COMMANDS.get(name)
        if command is None:
            raise UsageError(f'Unknown command "{name}"{_case_hint(name, COMMANDS)}; '
                             "run iscsifs help for the list")
        lines = [f"usage: iscsifs [--config FILE] {command.synopsis}", "",
                 *_wrap(command.description, "  ")]
        keys = {*command.values, *command.flags, *(["Target(s)"] if command.targets else [])}
        if keys:
            lines += ["", "Options:", *_option_lines(keys)]
        return "\n".join(lines) + "\n"
    lines = [
        "usage: iscsifs [--config FILE] <command> [options]",
        "",
        "Commands (case sensitive; they need a running mount of the config, found through",
        "--config FILE or $ISCSIFS_CONFIG):",
    ]
    for c in COMMANDS.values():
        lines.append(f"  {c.synopsis}")
        opts = " ".join(f"[{placeholder[o]}]" for o in (*c.values, *c.flags)
                        if o != _ADDRESS or c.address == "optional")
        if opts:
            lines += _wrap(f"Options: {opts}", "      ")
    lines += ["", "Options and elements:", *_option_lines(placeholder)]
    lines += [
        "",
        "The mount itself:",
        "  mount [--config FILE] [--foreground] [--log FILE] [--debug] [MOUNTPOINT]",
        "  umount [--config FILE] [MOUNTPOINT]",
        "",
        "iscsifs help <command> shows one command. Exit status: 0 done, 1 failed, 2 the",
        "command line is wrong. $ISCSIFS_TIMEOUT: seconds to wait for the daemon.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Running the manual's commands against the tree.
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    out: str = ""
    errors: list[str] = field(default_factory=list)


def _reply_errors(reply: str) -> list[str]:
    return [ln for ln in reply.splitlines() if ln.startswith("ERROR.")]


def _failed(e: ControlFailed) -> CliError:
    return CliError(*e.lines)


def run_request(req: Invocation, tree: TreeClient) -> Outcome:
    """Carry out a parsed command against a tree (a real mount, or a directory that looks
    like one in the tests)."""
    name = req.command.name
    handler = _HANDLERS[name]
    try:
        return handler(req, tree)
    except ControlFailed as e:
        raise _failed(e) from None


def _add(req: Invocation, tree: TreeClient) -> Outcome:
    words = ["add", req.at, *(req.names or ["All"])]
    for o in ("-autoLogin", "-security", "-discoverySecurity", "-session", "-connection"):
        if o in req.options:
            words += [o, req.options[o]]
    reply = tree.command("targets/control", shlex.join(words), timeout=tree.remote_timeout)
    return Outcome(errors=_reply_errors(reply))


def _discover(req: Invocation, tree: TreeClient) -> Outcome:
    if "-isns" in req.flags:
        line = shlex.join(["isns", req.at])
    else:
        words = ["sendtargets", req.at]
        if "-security" in req.options:
            words += ["-security", req.options["-security"]]
        line = shlex.join(words)
    reply = tree.command("discovery/control", line, timeout=tree.remote_timeout)
    return Outcome(format_discovered(parse_discovered(reply), req.verbose))


def _get_initiator_name(req: Invocation, tree: TreeClient) -> Outcome:
    return Outcome(format_initiator_name(tree.read("initiator/name").strip(), req.verbose))


def _get_boot_delay(req: Invocation, tree: TreeClient) -> Outcome:
    return Outcome(tree.read("initiator/boot_delay").strip() + "\n")


def _set_boot_delay(req: Invocation, tree: TreeClient) -> Outcome:
    assert req.argument is not None
    tree.command("initiator/boot_delay", req.argument)
    return Outcome()


def _set_initiator_name(req: Invocation, tree: TreeClient) -> Outcome:
    assert req.argument is not None
    tree.command("initiator/name", req.argument)
    return Outcome()


def _not_found(req: Invocation, rows: list[PortalRow], what: str) -> list[str]:
    """Errors for target names given but not among rows."""
    if req.names is None:
        return []
    seen = {r.name.lower() for r in rows}
    where = f" at {req.at}" if req.address is not None else ""
    return [f'ERROR. Target "{n}" {what}{where}.' for n in req.names if n.lower() not in seen]


def _list_setup(req: Invocation, tree: TreeClient) -> Outcome:
    rows = select(parse_setup(tree.read("targets/setup")), req.names, req.address)
    return Outcome(format_setup(rows, req.verbose), _not_found(req, rows, "has not been added"))


def _list_status(req: Invocation, tree: TreeClient) -> Outcome:
    configured = parse_status(tree.read("targets/status"))
    if req.address is None:
        rows = select(configured, req.names, None)
        return Outcome(format_status(rows, req.verbose),
                       _not_found(req, rows, "has not been added"))
    # With an address the targets come from the target itself: a discovery there, joined
    # with the state of the sessions we hold.
    words = ["sendtargets", req.at]
    if "-discoverySecurity" in req.options:
        words += ["-security", req.options["-discoverySecurity"]]
    reply = tree.command("discovery/control", shlex.join(words), timeout=tree.remote_timeout)
    states = {(r.name.lower(), _portal_key(r.portal)): r.state for r in configured}
    rows = [PortalRow(r.name, r.tpgt, r.portal,
                      state=states.get((r.name.lower(), _portal_key(r.portal)), ""))
            for r in select(parse_discovered(reply), req.names, None)]
    return Outcome(format_status(rows, req.verbose),
                   _not_found(req, rows, "was not discovered"))


def _portal_key(portal: str) -> tuple[str, int] | str:
    try:
        host, port = parse_address(portal)
    except SyntaxProblem:
        return portal
    return host_key(host), port


def _added_at(req: Invocation, tree: TreeClient) -> tuple[list[PortalRow], list[str]]:
    """The added portals at the -address whose names match, and errors for the rest."""
    rows = select(parse_setup(tree.read("targets/setup")), req.names, req.address)
    errors = _not_found(req, rows, "has not been added")
    if req.names is None and not rows:
        errors.append(f"ERROR. No targets have been added at {req.at}.")
    return rows, errors


def _session_command(word: str) -> Callable[[Invocation, TreeClient], Outcome]:
    def run(req: Invocation, tree: TreeClient) -> Outcome:
        rows, errors = _added_at(req, tree)
        for r in rows:
            if word == "login" and not r.visible:
                errors.append(f'ERROR. Target "{r.name}" at {r.portal} is not visible; '
                              f'write "visible yes" to targets/{r.name}/{r.portal}/control')
                continue
            try:
                tree.command(f"targets/{r.name}/{r.portal}/control", word,
                             timeout=tree.remote_timeout)
            except ControlFailed as e:
                errors += [ln if ln.startswith("ERROR.") else f"ERROR. {ln}" for ln in e.lines]
            except FileNotFoundError:
                errors.append(f'ERROR. Target "{r.name}" at {r.portal} is not visible.')
        return Outcome(errors=errors)

    return run


def _remove(req: Invocation, tree: TreeClient) -> Outcome:
    line = shlex.join(["remove", req.at, *(req.names or ["All"])])
    reply = tree.command("targets/control", line, timeout=tree.remote_timeout)
    return Outcome(errors=_reply_errors(reply))


_HANDLERS: dict[str, Callable[[Invocation, TreeClient], Outcome]] = {
    "addTargets": _add,
    "discoverTargets": _discover,
    "getInitiatorName": _get_initiator_name,
    "getBootDelay": _get_boot_delay,
    "listTargetsSetup": _list_setup,
    "listTargetsStatus": _list_status,
    "loginTargets": _session_command("login"),
    "logoutTargets": _session_command("logout"),
    "removeTargets": _remove,
    "setBootDelay": _set_boot_delay,
    "setInitiatorName": _set_initiator_name,
}


# ---------------------------------------------------------------------------------------------
# mount / umount, and main().
# ---------------------------------------------------------------------------------------------


def _mount_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iscsifs mount", description="Mount the iscsifs tree.")
    p.add_argument("mountpoint", nargs="?", help="default: the config's [mount] point")
    p.add_argument("--config", help="config file (default $ISCSIFS_CONFIG or "
                   "/etc/iscsifs/iscsifs.toml)")
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    p.add_argument("--log", help="log file (default $ISCSIFS_LOG or /var/log/iscsifs.log)")
    p.add_argument("--debug", action="store_true", help="log at debug level")
    return p


def _umount_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iscsifs umount", description="Log out and unmount.")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--config")
    return p


def _take_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """Remove `--config FILE` / `--config=FILE` from the words of a manual command (it may
    come before or after the command name)."""
    config = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        w = argv[i]
        if w == "--config" or w.startswith("--config="):
            if config is not None:
                raise UsageError("--config given more than once")
            if w == "--config":
                if i + 1 >= len(argv):
                    raise UsageError("--config needs a file name")
                config = argv[i + 1]
                i += 2
            else:
                config = w.split("=", 1)[1]
                i += 1
            if not config:
                raise UsageError("--config needs a file name")
            continue
        rest.append(w)
        i += 1
    return config, rest


def _timeout() -> float | None:
    text = os.environ.get("ISCSIFS_TIMEOUT")
    if text is None:
        return None
    try:
        value = float(text)
        if not 0 < value <= 86400:
            raise ValueError
    except ValueError:
        raise UsageError(f"ISCSIFS_TIMEOUT must be a number of seconds above 0, not "
                         f"{text!r}") from None
    return value


class _Scrubber:
    """Prints, with every secret given on the command line replaced: the daemon never puts
    one in a message, and this makes sure an echo of the user's own input cannot either."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= _MIN_SCRUBBED}, key=len,
                              reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "<hidden>")
        return text


def main(argv: list[str] | None = None, *, tree: TreeClient | None = None) -> int:
    """The `iscsifs` entry point. `tree` replaces the lookup of the running mount (tests)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    scrub = _Scrubber(s for w in argv for s in secret_values(w))
    try:
        return _main(argv, tree, scrub)
    except CliError as e:
        for line in e.lines:
            print(scrub(line), file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as e:  # the last resort: one line, never a traceback
        print(scrub(f"ERROR. {type(e).__name__}: {e}"), file=sys.stderr)
        return EXIT_ERROR


def _main(argv: list[str], tree: TreeClient | None, scrub: _Scrubber) -> int:
    if not argv:
        print("usage: iscsifs <command> [options]; run iscsifs help for the commands",
              file=sys.stderr)
        return EXIT_USAGE
    if argv[0] in ("mount", "umount"):
        return _mount_commands(argv[0], argv[1:])
    config, words = _take_config(argv)
    if words and words[0] in ("mount", "umount"):
        return _mount_commands(words[0], [*words[1:], *(["--config", config] if config else [])])
    if not words:
        raise UsageError("no command given; run iscsifs help for the commands")
    if words[0] in ("-h", "--help"):
        words = ["help", *words[1:]]
    if words[0] == "--version":
        words = ["version", *words[1:]]
    req = parse_request(words)
    name = req.command.name
    if name == "help":
        sys.stdout.write(usage(req.argument))
        return EXIT_OK
    if name == "version":
        print(f"iscsifs {__version__}")
        return EXIT_OK
    if tree is None:
        tree = find_tree(config)
    outcome = run_request(req, tree)
    if outcome.out:
        sys.stdout.write(scrub(outcome.out))
        sys.stdout.flush()
    for line in outcome.errors:
        print(scrub(line), file=sys.stderr)
    return EXIT_ERROR if outcome.errors else EXIT_OK


def _mount_commands(cmd: str, rest: list[str]) -> int:
    if cmd == "mount":
        a = _mount_parser().parse_args(rest)
        return daemon.mount(a.config, a.mountpoint, foreground=a.foreground,
                            log_file=a.log, log_level="DEBUG" if a.debug else "INFO")
    a = _umount_parser().parse_args(rest)
    return daemon.umount(a.config, a.mountpoint)


if __name__ == "__main__":
    sys.exit(main())
