# The manual's command line (iscsifs/cli.py) without a daemon: the syntax of every command and
# option, each error message, the output formats from canned file contents (a FakeTree answers
# the reads and records the control lines a command writes), the deadline on a file operation
# that never answers, the "not running" error, and that no secret and no traceback is printed.

from __future__ import annotations

import errno
import os
import shlex
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from iscsifs import __version__, cli
from iscsifs.cli import (
    ALL_MIXED,
    COMMANDS,
    NOT_RUNNING,
    UNAVAILABLE,
    ControlFailed,
    PortalRow,
    TreeClient,
    UsageError,
    format_discovered,
    format_initiator_name,
    format_setup,
    format_status,
    parse_request,
    parse_setup,
    parse_status,
    portal_at,
    select,
    usage,
)
from iscsifs.daemon import process as daemon

A = "iqn.2024-01.org.example:a"
B = "iqn.2024-01.org.example:b"
C = "iqn.2024-01.org.example:c"
SECRET = "s3cr3t-Value-0123"
ISECRET = "1nit-Secret-98765"

SETUP = (f"{A}\t1\t127.0.0.1:3260\tNo\tYes\n"
         f"{B}\t2\t127.0.0.1:3260\tYes\tYes\n"
         f"{B}\t3\t127.0.0.2:3261\tNo\tNo\n"
         f"{C}\t-\t[::1]:3260\tNo\tYes\n")
STATUS = (f"{A}\t1\t127.0.0.1:3260\tconnected\n"
          f"{B}\t2\t127.0.0.1:3260\tnot connected\n"
          f"{C}\t-\t[::1]:3260\tunavailable\n")


class FakeTree(TreeClient):
    """Files with canned contents; control files answer from `replies` (a reply text, or a
    ControlFailed to raise) and record every line written."""

    def __init__(self, files: dict[str, str] | None = None,
                 replies: dict[str, str | ControlFailed | Callable[[str], str]] | None = None
                 ) -> None:
        super().__init__(Path("/nonexistent"), 1.0)
        self.files = files or {}
        self.replies = replies or {}
        self.written: list[tuple[str, str]] = []
        self.timeouts: list[float | None] = []

    def read(self, rel: str) -> str:
        if rel not in self.files:
            raise FileNotFoundError(errno.ENOENT, "No such file", rel)
        return self.files[rel]

    def command(self, rel: str, line: str, *, timeout: float | None = None) -> str:
        self.written.append((rel, line))
        self.timeouts.append(timeout)
        reply = self.replies.get(rel, "")
        if isinstance(reply, ControlFailed):
            raise reply
        if callable(reply):
            return reply(line)
        return reply


HOSTS = {"localhost": {"127.0.0.1", "::1"}, "san.example": {"127.0.0.1"}}


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host names come from a table: the tests send no DNS query anywhere."""
    monkeypatch.setattr(cli, "resolve", lambda host: HOSTS.get(host.lower(), set()))
    cli.address_keys.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str, tree: TreeClient | None = None
        ) -> tuple[int, str, str]:
    status = cli.main(list(argv), tree=tree if tree is not None else FakeTree())
    out, err = capsys.readouterr()
    return status, out, err


def failed(*lines: str, code: int = errno.EINVAL) -> ControlFailed:
    return ControlFailed(list(lines), code)


# ---------------------------------------------------------------------------------------------
# Syntax.
# ---------------------------------------------------------------------------------------------


def test_every_manual_command_is_known() -> None:
    assert set(COMMANDS) == {
        "addTargets", "discoverTargets", "getInitiatorName", "getBootDelay", "help",
        "listTargetsSetup", "listTargetsStatus", "loginTargets", "logoutTargets",
        "removeTargets", "setBootDelay", "setInitiatorName", "version"}


def test_address_forms_and_default_ports() -> None:
    assert parse_request(["loginTargets", "-address", "192.168.0.1", "All"]).address == (
        "192.168.0.1", 3260)
    assert parse_request(["loginTargets", "-address", "192.168.0.1:3261", "All"]).address == (
        "192.168.0.1", 3261)
    assert parse_request(["loginTargets", "-address", "fe80::1", "All"]).address == (
        "fe80::1", 3260)
    assert parse_request(["loginTargets", "-address", "[fe80::1]:3262", "All"]).address == (
        "fe80::1", 3262)
    assert parse_request(["loginTargets", "-address", "san.example", "All"]).address == (
        "san.example", 3260)
    assert parse_request(["discoverTargets", "-address", "isns.example", "-isns"]).address == (
        "isns.example", 3205)
    # -isns may come before or after -address: the default port follows it either way
    assert parse_request(["discoverTargets", "-isns", "-address", "::1"]).address == (
        "::1", 3205)
    assert parse_request(["discoverTargets", "-isns", "-address", "[::1]:1"]).address == (
        "::1", 1)


def test_options_and_names_in_any_order() -> None:
    req = parse_request(["addTargets", A, "-autoLogin", "Yes", "-address", "10.0.0.1", B,
                         "-session", "MaxBurstLength=1024"])
    assert req.names == [A, B] and req.address == ("10.0.0.1", 3260)
    assert req.options == {"-autoLogin": "Yes", "-address": "10.0.0.1",
                           "-session": "MaxBurstLength=1024"}


def test_all_and_repeated_names() -> None:
    assert parse_request(["removeTargets", "-address", "h", "All"]).names is None
    assert parse_request(["removeTargets", "-address", "h", A, A, B]).names == [A, B]


def test_the_summarys_address_before_the_names() -> None:
    # CLI Summary: `xtendsancli addTargets 192.168.0.1 All`
    req = parse_request(["addTargets", "192.168.0.1", "All"])
    assert req.address == ("192.168.0.1", 3260) and req.names is None
    req = parse_request(["removeTargets", "[::1]:3261", A])
    assert req.address == ("::1", 3261) and req.names == [A]


@pytest.mark.parametrize(("argv", "message"), [
    (["addtargets", "-address", "h", "All"],
     'ERROR. Unknown command "addtargets" (did you mean addTargets? commands are case '
     "sensitive); run iscsifs help for the list"),
    (["frobnicate"], 'ERROR. Unknown command "frobnicate"; run iscsifs help for the list'),
    (["addTargets", "-address", "h", "All", A], ALL_MIXED),
    (["loginTargets", "-address", "h", A, "All"], ALL_MIXED),
    (["listTargetsSetup", "All", B], ALL_MIXED),
    (["addTargets", "-address", "h"],
     "ERROR. addTargets needs Target(s): one or more target names, or All; usage: addTargets "
     "[Options] -address <address> Target(s)"),
    (["loginTargets", A],
     "ERROR. loginTargets needs -address <address>; usage: loginTargets -address <address> "
     "Target(s)"),
    (["discoverTargets"],
     "ERROR. discoverTargets needs -address <address>; usage: discoverTargets [Options] "
     "-address <address>"),
    (["addTargets", "-address", "h", "-address", "g", "All"],
     "ERROR. -address given more than once"),
    (["discoverTargets", "-address", "h", "-verbose", "-verbose"],
     "ERROR. -verbose given more than once"),
    (["addTargets", "All", "-address"], "ERROR. -address needs a value"),
    (["addTargets", "-address", "-autoLogin", "Yes", "All"], "ERROR. -address needs a value"),
    (["addTargets", "-address", "h", "-Address", "g", "All"],
     "ERROR. unknown option -Address (did you mean -address? options are case sensitive); "
     "options of addTargets: -address, -autoLogin, -connection, -session, -security, "
     "-discoverySecurity"),
    (["getBootDelay", "-frob"], "ERROR. unknown option -frob; options of getBootDelay: none"),
    (["loginTargets", "-address", "h", "-verbose", "All"],
     "ERROR. loginTargets does not take -verbose; its options: -address"),
    (["addTargets", "-address", "h:0", "All"],
     "ERROR. -address: invalid portal port '0' (expected 1..65535)"),
    (["addTargets", "-address", "h:70000", "All"],
     "ERROR. -address: invalid portal port '70000' (expected 1..65535)"),
    (["addTargets", "-address", "a b", "All"],
     "ERROR. -address: unexpected ',' or space in portal 'a b'"),
    (["addTargets", "-address", "h", "-autoLogin", "yes", "All"],
     "ERROR. -autoLogin must be Yes or No"),
    (["addTargets", "-address", "h", "all"],
     "ERROR. target name 'all': an iSCSI name must start with 'iqn.', 'eui.' or 'naa.' "
     "(did you mean All?)"),
    (["addTargets", "-address", "h", "iqn.2024-01.org.example:a b"],
     "ERROR. target name 'iqn.2024-01.org.example:a b': character ' ' is not allowed in an "
     "iSCSI name"),
    (["addTargets", "-address", "h", "-connection", "DataDigest=MD5", "All"],
     "ERROR. -connection: DataDigest must be None or CRC32C"),
    (["addTargets", "-address", "h", "-session", "MaxBurstLength=511", "All"],
     "ERROR. -session: MaxBurstLength must be an integer from 512 to 16777215"),
    (["addTargets", "-address", "h", "-session", "HeaderDigest=None", "All"],
     "ERROR. -session: unknown option 'HeaderDigest=None'; options: ErrorRecoveryLevel=..., "
     "FirstBurstLength=..., ImmediateData=..., InitialR2T=..., MaxBurstLength=..."),
    (["addTargets", "-address", "h", "-security", "CHAP,TargetUserName=u", "All"],
     "ERROR. -security: valid option combinations are [TargetUserName, TargetSecret] or "
     "[TargetUserName, TargetSecret, InitiatorUserName, InitiatorSecret, "
     "MutualAuthentication]"),
    (["addTargets", "-address", "h", "-security", "NONE", "All"],
     "ERROR. -security: unknown security protocol 'NONE'; available: CHAP"),
    (["addTargets", "-address", "h", "-discoverySecurity", "SRP", "All"],
     "ERROR. -discoverySecurity: unknown security protocol 'SRP'; available: NONE or CHAP"),
    (["discoverTargets", "-address", "h", "-isns", "-security",
      f"CHAP,TargetUserName=u,TargetSecret={SECRET}"],
     "ERROR. -security cannot be used with -isns: it is for a target address, not an iSNS "
     "server"),
    (["discoverTargets", "-address", "h", A],
     "ERROR. discoverTargets takes no arguments, not 'iqn.2024-01.org.example:a'; usage: "
     "discoverTargets [Options] -address <address>"),
    (["listTargetsStatus", "-discoverySecurity", "NONE", "All"],
     "ERROR. -discoverySecurity needs -address: it is used for the discovery at that address"),
    (["listTargetsSetup"],
     "ERROR. listTargetsSetup needs Target(s): one or more target names, or All; usage: "
     "listTargetsSetup [Options] Target(s)"),
    (["setBootDelay"], "ERROR. setBootDelay takes exactly one <seconds>; usage: setBootDelay "
     "<seconds>"),
    (["setBootDelay", "1", "2"], "ERROR. setBootDelay takes exactly one <seconds>; usage: "
     "setBootDelay <seconds>"),
    (["setBootDelay", "-1"],
     "ERROR. setBootDelay takes a whole number of seconds from 0 to 86400, not '-1'"),
    (["setBootDelay", "1.5"],
     "ERROR. setBootDelay takes a whole number of seconds from 0 to 86400, not '1.5'"),
    (["setBootDelay", "86401"],
     "ERROR. setBootDelay takes a whole number of seconds from 0 to 86400, not '86401'"),
    (["setInitiatorName", "my host"],
     "ERROR. setInitiatorName 'my host': character ' ' is not allowed in an iSCSI name; "
     "allowed in the suffix: a-z, 0-9, '.' and '-'"),
    (["setInitiatorName", "Host"],
     "ERROR. setInitiatorName 'Host': an iqn. name must be lower case (RFC 3722 normalises "
     "it); allowed in the suffix: a-z, 0-9, '.' and '-'"),
    (["setInitiatorName", "a:b"],
     "ERROR. setInitiatorName 'a:b': a colon is not allowed; allowed in the suffix: a-z, 0-9, "
     "'.' and '-'"),
    (["setInitiatorName", ""],
     "ERROR. setInitiatorName '': the name is empty; allowed in the suffix: a-z, 0-9, '.' "
     "and '-'"),
    (["getInitiatorName", "x"],
     "ERROR. getInitiatorName takes no arguments, not 'x'; usage: getInitiatorName [Options]"),
    (["version", "-verbose"], "ERROR. version does not take -verbose; its options: none"),
    (["help", "a", "b"], "ERROR. help takes at most one command name"),
    (["help", "nope"], 'ERROR. Unknown command "nope"; run iscsifs help for the list'),
    (["--config"], "ERROR. --config needs a file name"),
    (["--config", "a", "--config", "b", "version"], "ERROR. --config given more than once"),
    (["--config", "x.toml"], "ERROR. no command given; run iscsifs help for the commands"),
])
def test_usage_errors_are_one_clear_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                         message: str) -> None:
    tree = FakeTree()
    status, out, err = run(capsys, *argv, tree=tree)
    assert status == cli.EXIT_USAGE
    assert out == ""
    assert err == message + "\n"
    assert tree.written == []  # nothing reached the daemon


def test_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys)
    assert status == cli.EXIT_USAGE and out == ""
    assert err == "usage: iscsifs <command> [options]; run iscsifs help for the commands\n"


@pytest.mark.parametrize("argv", [
    ["addTargets", "-address", "h", "-security",
     f"CHAP,TargetUserName=u,TargetSecret={SECRET},junk", "All"],
    ["addTargets", "-address", "h", "-security",
     f"CHAP,TargetUserName=u,TargetSecret={SECRET},InitiatorUserName=i,"
     f"InitiatorSecret={SECRET},MutualAuthentication=Yes", "All"],
    ["addTargets", "-address", "h", "-discoverySecurity", f"CHAP,TargetSecret={SECRET}",
     "All"],
    ["discoverTargets", "-address", "h", "-security", f"{SECRET},TargetUserName=u"],
    ["discoverTargets", "-address", "h", "-isns", "-security",
     f"CHAP,TargetUserName=u,TargetSecret={SECRET}"],
])
def test_security_errors_never_show_the_secret(capsys: pytest.CaptureFixture[str],
                                               argv: list[str]) -> None:
    status, out, err = run(capsys, *argv)
    assert status == cli.EXIT_USAGE
    assert err.startswith("ERROR. ") and err.count("\n") == 1
    assert SECRET not in out + err


# ---------------------------------------------------------------------------------------------
# What each command writes and prints.
# ---------------------------------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "help")
    assert status == 0 and err == ""
    for c in COMMANDS.values():
        assert f"  {c.synopsis}\n" in out
    for option in cli.ALL_OPTIONS:
        assert f"  {option}" in out
    assert "mount [--config FILE]" in out and "umount" in out
    assert out == usage()
    assert run(capsys, "-h") == (0, out, "")
    assert run(capsys, "--help") == (0, out, "")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_for_one_command(capsys: pytest.CaptureFixture[str], name: str) -> None:
    status, out, err = run(capsys, "help", name)
    assert status == 0 and err == ""
    command = COMMANDS[name]
    assert out.startswith(f"usage: iscsifs [--config FILE] {command.synopsis}\n")
    for option in (*command.values, *command.flags):
        assert f"\n  {option}" in out
    assert ("Target(s)\n" in out) == command.targets


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "version") == (0, f"iscsifs {__version__}\n", "")
    assert run(capsys, "--version") == (0, f"iscsifs {__version__}\n", "")


def test_get_initiator_name(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"initiator/name": "iqn.2026-11.org.iscsifs:host-1a2b3c\n"})
    assert run(capsys, "getInitiatorName", tree=tree) == (
        0, "iqn.2026-11.org.iscsifs:host-1a2b3c\n", "")
    assert run(capsys, "getInitiatorName", "-verbose", tree=tree) == (0, (
        "Initiator Name: iqn.2026-11.org.iscsifs:host-1a2b3c\n"
        "Prefix: iqn.2026-11.org.iscsifs:\n"
        "Suffix: host-1a2b3c (the part setInitiatorName sets)\n"), "")


def test_initiator_name_verbose_for_other_names() -> None:
    assert format_initiator_name("iqn.1991-05.com.microsoft:pc", True).splitlines()[1:] == [
        "Prefix: iqn.1991-05.com.microsoft:", "Suffix: pc (the part setInitiatorName sets)"]
    assert format_initiator_name("eui.0123456789ABCDEF", True).splitlines()[1] == (
        "Prefix: ")


def test_boot_delay(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"initiator/boot_delay": "30\n"})
    assert run(capsys, "getBootDelay", tree=tree) == (0, "30\n", "")
    assert run(capsys, "setBootDelay", "0045", tree=tree) == (0, "", "")
    assert run(capsys, "setBootDelay", "0", tree=tree) == (0, "", "")
    assert tree.written == [("initiator/boot_delay", "45"), ("initiator/boot_delay", "0")]


def test_set_initiator_name(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree()
    assert run(capsys, "setInitiatorName", "attofast", tree=tree) == (0, "", "")
    assert tree.written == [("initiator/name", "attofast")]


def test_a_failed_command_prints_the_daemons_error(capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    tree = FakeTree(replies={"initiator/boot_delay": failed(
        "ERROR. /etc/iscsifs/iscsifs.toml: cannot save it: Read-only file system")})
    assert run(capsys, "setBootDelay", "5", tree=tree) == (
        1, "", "ERROR. /etc/iscsifs/iscsifs.toml: cannot save it: Read-only file system\n")


def test_discover_sendtargets(capsys: pytest.CaptureFixture[str]) -> None:
    reply = f"{A}\t1\t127.0.0.1:3260\n{A}\t2\t[::1]:3260\n{B}\t1\t127.0.0.1:3260\n"
    tree = FakeTree(replies={"discovery/control": reply})
    assert run(capsys, "discoverTargets", "-address", "127.0.0.1", tree=tree) == (
        0, reply, "")
    assert tree.written == [("discovery/control", "sendtargets 127.0.0.1:3260")]
    assert tree.timeouts == [tree.remote_timeout]
    status, out, _ = run(capsys, "discoverTargets", "-verbose", "-address", "127.0.0.1",
                         tree=tree)
    assert status == 0
    assert out == (f"***** Name:\n{A} Port Group Tag: 1\nAddress: 127.0.0.1:3260\n"
                   f"***** Name:\n{A} Port Group Tag: 2\nAddress: [::1]:3260\n"
                   f"***** Name:\n{B} Port Group Tag: 1\nAddress: 127.0.0.1:3260\n")


def test_discover_with_security_passes_it_on_quoted(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    spec = f"CHAP,TargetUserName=Exam\\\\p\\,le,TargetSecret={SECRET}"
    tree = FakeTree(replies={"discovery/control": ""})
    assert run(capsys, "discoverTargets", "-address", "[::1]:3261", "-security", spec,
               tree=tree) == (0, "", "")
    rel, line = tree.written[0]
    assert rel == "discovery/control"
    assert shlex.split(line) == ["sendtargets", "[::1]:3261", "-security", spec]


def test_discover_isns(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree(replies={"discovery/control": f"{C}\t7\t10.1.1.1:3260\n"})
    assert run(capsys, "discoverTargets", "-address", "isns.example", "-isns", tree=tree) == (
        0, f"{C}\t7\t10.1.1.1:3260\n", "")
    assert tree.written == [("discovery/control", "isns isns.example:3205")]


def test_discovery_failure(capsys: pytest.CaptureFixture[str]) -> None:
    message = ("ERROR. discovery at 127.0.0.1:3260 failed: login failed: authentication "
               "failure (0x0201)")
    tree = FakeTree(replies={"discovery/control": failed(message, code=errno.EACCES)})
    spec = f"CHAP,TargetUserName=u,TargetSecret={SECRET}"
    assert run(capsys, "discoverTargets", "-address", "127.0.0.1", "-security", spec,
               tree=tree) == (1, "", message + "\n")


def test_add_targets_writes_one_line_with_every_option(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    tree = FakeTree(replies={"targets/control": f"added\t{A}\nadded\t{B}\n"})
    security = (f"CHAP,TargetUserName=u,TargetSecret={SECRET},InitiatorUserName=i,"
                f"InitiatorSecret={ISECRET},MutualAuthentication=Yes")
    argv = ["addTargets", "-address", "192.168.0.1", A, B, "-autoLogin", "Yes",
            "-connection", "DataDigest=CRC32C,MaxRecvDataSegmentLength=1024",
            "-session", "ErrorRecoveryLevel=0,ImmediateData=Yes,MaxBurstLength=1024",
            "-security", security, "-discoverySecurity", "NONE"]
    assert run(capsys, *argv, tree=tree) == (0, "", "")
    rel, line = tree.written[0]
    assert rel == "targets/control"
    assert shlex.split(line) == [
        "add", "192.168.0.1:3260", A, B, "-autoLogin", "Yes", "-security", security,
        "-discoverySecurity", "NONE", "-session",
        "ErrorRecoveryLevel=0,ImmediateData=Yes,MaxBurstLength=1024", "-connection",
        "DataDigest=CRC32C,MaxRecvDataSegmentLength=1024"]


def test_add_all(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree(replies={"targets/control": f"added\t{A}\n"})
    assert run(capsys, "addTargets", "192.168.0.1", "All", tree=tree) == (0, "", "")
    assert tree.written == [("targets/control", "add 192.168.0.1:3260 All")]


def test_add_reports_each_target_that_failed(capsys: pytest.CaptureFixture[str]) -> None:
    reply = (f"added\t{A}\nERROR. Target \"{B}\" has already been added.\n"
             f"ERROR. Target \"{C}\" was not discovered at 10.0.0.1:3260.\n")
    tree = FakeTree(replies={"targets/control": reply})
    assert run(capsys, "addTargets", "-address", "10.0.0.1", A, B, C, tree=tree) == (
        1, "", f"ERROR. Target \"{B}\" has already been added.\n"
               f"ERROR. Target \"{C}\" was not discovered at 10.0.0.1:3260.\n")


def test_add_where_all_failed(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree(replies={"targets/control": failed(
        f'ERROR. Target "{A}" has already been added.',
        f'ERROR. Target "{B}" has already been added.', code=errno.EEXIST)})
    assert run(capsys, "addTargets", "-address", "10.0.0.1", A, B, tree=tree) == (
        1, "", f'ERROR. Target "{A}" has already been added.\n'
               f'ERROR. Target "{B}" has already been added.\n')


def test_remove_targets(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree(replies={"targets/control": f"removed\t{A}\n"})
    assert run(capsys, "removeTargets", "-address", "[::1]", A, tree=tree) == (0, "", "")
    assert run(capsys, "removeTargets", "-address", "h.example:3999", "All", tree=tree) == (
        0, "", "")
    assert [(rel, shlex.split(line)) for rel, line in tree.written] == [
        ("targets/control", ["remove", "[::1]:3260", A]),
        ("targets/control", ["remove", "h.example:3999", "All"])]
    tree = FakeTree(replies={"targets/control": failed(
        "ERROR. No targets have been added at h:3260.", code=errno.ENOENT)})
    assert run(capsys, "removeTargets", "-address", "h", "All", tree=tree) == (
        1, "", "ERROR. No targets have been added at h:3260.\n")


def test_list_setup(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"targets/setup": SETUP})
    assert run(capsys, "listTargetsSetup", "All", tree=tree) == (0, (
        f"{A}\t1\t127.0.0.1:3260\tNo\n"
        f"{B}\t2\t127.0.0.1:3260\tYes\n"
        f"{B}\t3\t127.0.0.2:3261\tNo\n"
        f"{C}\t-\t[::1]:3260\tNo\n"), "")
    assert run(capsys, "listTargetsSetup", "-address", "127.0.0.1", "All", tree=tree) == (0, (
        f"{A}\t1\t127.0.0.1:3260\tNo\n"
        f"{B}\t2\t127.0.0.1:3260\tYes\n"), "")
    assert run(capsys, "listTargetsSetup", B, "-verbose", tree=tree) == (0, (
        f"***** Name:\n{B} Port Group Tag: 2\nAddress: 127.0.0.1:3260 Auto Login: Yes\n"
        f"***** Name:\n{B} Port Group Tag: 3\nAddress: 127.0.0.2:3261 Auto Login: No\n"), "")
    assert run(capsys, "listTargetsSetup", "-address", "0:0:0::1", C, tree=tree) == (
        0, f"{C}\t-\t[::1]:3260\tNo\n", "")


def test_list_setup_of_a_name_not_added(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"targets/setup": SETUP})
    assert run(capsys, "listTargetsSetup", A, "iqn.2024-01.org.example:zz", tree=tree) == (
        1, f"{A}\t1\t127.0.0.1:3260\tNo\n",
        'ERROR. Target "iqn.2024-01.org.example:zz" has not been added.\n')
    assert run(capsys, "listTargetsSetup", "-address", "127.0.0.2", A, tree=tree) == (
        1, "", f'ERROR. Target "{A}" has not been added at 127.0.0.2:3260.\n')
    # All with nothing added: an empty list, not an error
    assert run(capsys, "listTargetsSetup", "All", tree=FakeTree({"targets/setup": ""})) == (
        0, "", "")


def test_list_status_from_the_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"targets/status": STATUS})
    assert run(capsys, "listTargetsStatus", "All", tree=tree) == (0, (
        f"{A}\t1\t127.0.0.1:3260\ttrue\n"
        f"{B}\t2\t127.0.0.1:3260\tfalse\n"
        f"{C}\t-\t[::1]:3260\tfalse\n"), "")
    assert run(capsys, "listTargetsStatus", "-verbose", A, C, tree=tree) == (0, (
        f"***** Name:\n{A} Port Group Tag: 1\nAddress: 127.0.0.1:3260 Connection Status: true\n"
        f"***** Name:\n{C} Port Group Tag: -\nAddress: [::1]:3260 Connection Status: false\n"),
        "")
    assert tree.written == []


def test_list_status_with_an_address_asks_the_target(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    discovered = (f"{A}\t1\t127.0.0.1:3260\n{B}\t2\t127.0.0.1:3260\n"
                  f"iqn.2024-01.org.example:new\t1\t127.0.0.1:3260\n")
    tree = FakeTree({"targets/status": STATUS}, {"discovery/control": discovered})
    assert run(capsys, "listTargetsStatus", "-address", "127.0.0.1", "All", tree=tree) == (0, (
        f"{A}\t1\t127.0.0.1:3260\ttrue\n"
        f"{B}\t2\t127.0.0.1:3260\tfalse\n"
        "iqn.2024-01.org.example:new\t1\t127.0.0.1:3260\tfalse\n"), "")
    assert tree.written == [("discovery/control", "sendtargets 127.0.0.1:3260")]
    assert run(capsys, "listTargetsStatus", "-address", "127.0.0.1", "-discoverySecurity",
               f"CHAP,TargetUserName=u,TargetSecret={SECRET}", A, C, tree=tree) == (
        1, f"{A}\t1\t127.0.0.1:3260\ttrue\n",
        f'ERROR. Target "{C}" was not discovered at 127.0.0.1:3260.\n')
    assert shlex.split(tree.written[1][1]) == [
        "sendtargets", "127.0.0.1:3260", "-security",
        f"CHAP,TargetUserName=u,TargetSecret={SECRET}"]
    run(capsys, "listTargetsStatus", "-address", "127.0.0.1", "-discoverySecurity", "NONE",
        A, tree=tree)
    assert tree.written[2] == ("discovery/control", "sendtargets 127.0.0.1:3260 -security NONE")


def test_login_every_visible_portal_at_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"targets/setup": SETUP})
    assert run(capsys, "loginTargets", "-address", "127.0.0.1", "All", tree=tree) == (
        0, "", "")
    assert tree.written == [(f"targets/{A}/127.0.0.1:3260/control", "login"),
                            (f"targets/{B}/127.0.0.1:3260/control", "login")]
    assert tree.timeouts == [tree.remote_timeout] * 2


def test_a_host_name_address_matches_the_portals_it_resolves_to(
        capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"targets/setup": SETUP})
    assert run(capsys, "loginTargets", "-address", "san.example", A, tree=tree) == (0, "", "")
    assert tree.written == [(f"targets/{A}/127.0.0.1:3260/control", "login")]
    assert run(capsys, "listTargetsSetup", "-address", "localhost", "All", tree=tree) == (0, (
        f"{A}\t1\t127.0.0.1:3260\tNo\n{B}\t2\t127.0.0.1:3260\tYes\n{C}\t-\t[::1]:3260\tNo\n"), "")


def test_login_of_an_invisible_portal(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"targets/setup": SETUP})
    assert run(capsys, "loginTargets", "-address", "127.0.0.2:3261", B, tree=tree) == (
        1, "", f'ERROR. Target "{B}" at 127.0.0.2:3261 is not visible; write "visible yes" '
               f"to targets/{B}/127.0.0.2:3261/control\n")
    assert tree.written == []


def test_login_errors_per_target(capsys: pytest.CaptureFixture[str]) -> None:
    def reply(line: str) -> str:
        raise failed("ERROR. login failed: authentication failure (0x0201)",
                     code=errno.EACCES)

    tree = FakeTree({"targets/setup": SETUP}, {f"targets/{A}/127.0.0.1:3260/control": reply})
    assert run(capsys, "loginTargets", "-address", "127.0.0.1", A, B, "iqn.2024-01.org.x:q",
               tree=tree) == (
        1, "", 'ERROR. Target "iqn.2024-01.org.x:q" has not been added at 127.0.0.1:3260.\n'
               "ERROR. login failed: authentication failure (0x0201)\n")
    # B was still logged in to after A failed
    assert tree.written[-1] == (f"targets/{B}/127.0.0.1:3260/control", "login")


def test_login_or_logout_where_nothing_was_added(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"targets/setup": SETUP})
    for command in ("loginTargets", "logoutTargets"):
        assert run(capsys, command, "-address", "10.9.9.9", "All", tree=tree) == (
            1, "", "ERROR. No targets have been added at 10.9.9.9:3260.\n")


def test_logout(capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeTree({"targets/setup": SETUP})
    assert run(capsys, "logoutTargets", "-address", "::1", C, tree=tree) == (0, "", "")
    assert tree.written == [(f"targets/{C}/[::1]:3260/control", "logout")]


def test_a_reply_that_echoes_a_secret_is_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    # The daemon never does this; the CLI makes sure of it anyway.
    tree = FakeTree(replies={"discovery/control": failed(f"ERROR. bad secret {SECRET}")})
    status, out, err = run(capsys, "discoverTargets", "-address", "h", "-security",
                           f"CHAP,TargetUserName=u,TargetSecret={SECRET}", tree=tree)
    assert (status, out, err) == (1, "", "ERROR. bad secret <hidden>\n")


def test_an_unexpected_failure_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    class Broken(FakeTree):
        def read(self, rel: str) -> str:
            raise RuntimeError("something odd")

    assert run(capsys, "getBootDelay", tree=Broken()) == (
        1, "", "ERROR. RuntimeError: something odd\n")


# ---------------------------------------------------------------------------------------------
# Pure pieces.
# ---------------------------------------------------------------------------------------------


def test_parse_setup_and_status_skip_junk() -> None:
    assert parse_setup(SETUP + "\n\nshort\tline\n")[3] == PortalRow(
        C, "-", "[::1]:3260", auto_login=False, visible=True)
    assert len(parse_setup(SETUP)) == 4
    assert [r.state for r in parse_status(STATUS)] == ["connected", "not connected",
                                                       "unavailable"]


@pytest.mark.parametrize(("portal", "address", "match"), [
    ("127.0.0.1:3260", ("127.0.0.1", 3260), True),
    ("127.0.0.1:3260", ("127.0.0.1", 3261), False),
    ("[::1]:3260", ("0::1", 3260), True),
    ("[::1]:3260", ("::2", 3260), False),
    ("SAN.example:3260", ("san.example.", 3260), True),
    ("127.0.0.1:3260", ("SAN.example", 3260), True),
    ("127.0.0.2:3260", ("san.example", 3260), False),
    ("[::1]:3260", ("localhost", 3260), True),
    ("127.0.0.1:3260", ("nowhere.example", 3260), False),
    ("garbage", ("garbage", 3260), True),
    ("bad:port:x", ("bad", 3260), False),
])
def test_portal_at(portal: str, address: tuple[str, int], match: bool) -> None:
    assert portal_at(portal, address) is match


def test_select_by_name_is_case_blind_for_names() -> None:
    rows = parse_setup(SETUP)
    assert [r.tpgt for r in select(rows, [B.upper()], None)] == ["2", "3"]
    assert select(rows, None, ("127.0.0.2", 3261))[0].name == B


def test_formats_with_no_rows() -> None:
    assert format_setup([]) == format_status([]) == format_discovered([]) == ""


# ---------------------------------------------------------------------------------------------
# The real TreeClient: reading, deadlines, no mount.
# ---------------------------------------------------------------------------------------------


def test_tree_reads_files(tmp_path: Path) -> None:
    (tmp_path / "initiator").mkdir()
    (tmp_path / "initiator" / "name").write_text("iqn.2026-11.org.iscsifs:x\n")
    assert TreeClient(tmp_path).read("initiator/name") == "iqn.2026-11.org.iscsifs:x\n"
    with pytest.raises(FileNotFoundError):
        TreeClient(tmp_path).read("nope")


def test_a_file_operation_that_never_answers(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # A FIFO with no writer: reading it blocks, as a read of a stopped daemon's file does.
    os.mkfifo(tmp_path / "boot_delay")
    tree = TreeClient(tmp_path, timeout=0.2, remote_timeout=0.2)
    with pytest.raises(cli.CliError) as e:
        tree.read("boot_delay")
    assert e.value.lines == [UNAVAILABLE]
    (tmp_path / "initiator").mkdir()
    os.mkfifo(tmp_path / "initiator" / "boot_delay")
    assert run(capsys, "getBootDelay", tree=tree) == (1, "", UNAVAILABLE + "\n")


def test_a_command_whose_reply_never_comes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # The write is taken; reading the reply blocks (as on a daemon stopped mid-command).
    (tmp_path / "discovery").mkdir()
    (tmp_path / "discovery" / "control").write_text("")
    release = threading.Event()

    def stuck(fd: int, size: int, offset: int) -> bytes:
        release.wait(30)
        return b""

    monkeypatch.setattr(cli.os, "pread", stuck)
    tree = TreeClient(tmp_path, timeout=5, remote_timeout=0.2)
    try:
        assert run(capsys, "discoverTargets", "-address", "h", tree=tree) == (
            1, "", UNAVAILABLE + "\n")
    finally:
        release.set()
    assert (tmp_path / "discovery" / "control").read_text() == "sendtargets h:3260\n"


def test_a_tree_we_may_not_use(tmp_path: Path) -> None:
    def denied() -> str:
        raise PermissionError(errno.EACCES, "Permission denied", "/mnt/iscsifs/initiator/name")

    with pytest.raises(cli.CliError) as e:
        TreeClient(tmp_path)._call(denied)
    assert e.value.lines == [
        "ERROR. /mnt/iscsifs/initiator/name: permission denied (only the user who mounted may "
        "use the tree, unless [mount] allow_other = true)"]


def test_a_daemon_that_died_under_its_mount(tmp_path: Path) -> None:
    def gone() -> str:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    with pytest.raises(cli.CliError) as e:
        TreeClient(tmp_path)._call(gone)
    assert e.value.lines == [NOT_RUNNING]


def test_no_mount_prints_the_manuals_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(daemon, "RUNTIME_DIR", tmp_path / "run")
    monkeypatch.setenv("ISCSIFS_CONFIG", str(tmp_path / "iscsifs.toml"))
    for argv in (["getInitiatorName"], ["listTargetsStatus", "All"],
                 ["--config", str(tmp_path / "other.toml"), "getBootDelay"],
                 ["addTargets", "-address", "127.0.0.1", "All"]):
        assert cli.main(argv) == 1
        out, err = capsys.readouterr()
        assert (out, err) == ("", NOT_RUNNING + "\n")


def test_a_stale_registration_is_not_a_running_daemon(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    config = tmp_path / "iscsifs.toml"
    monkeypatch.setattr(daemon, "RUNTIME_DIR", tmp_path / "run")
    (tmp_path / "run").mkdir()
    # our own pid is alive, but the mount point is not mounted
    daemon.registry_file(config.absolute()).write_text(
        f'{{"pid": {os.getpid()}, "mountpoint": "{tmp_path}", "config": "{config}"}}')
    assert cli.main(["--config", str(config), "getBootDelay"]) == 1
    assert capsys.readouterr() == ("", NOT_RUNNING + "\n")


def test_bad_timeout_setting(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(daemon, "RUNTIME_DIR", tmp_path)
    monkeypatch.setenv("ISCSIFS_TIMEOUT", "soon")
    assert cli.main(["getBootDelay"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        "ERROR. ISCSIFS_TIMEOUT must be a number of seconds above 0, not 'soon'\n")


def test_usage_error_type() -> None:
    with pytest.raises(UsageError):
        parse_request(["addTargets"])
