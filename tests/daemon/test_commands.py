# The control files' command syntax (daemon/commands.py), as pure functions: each command into
# its request, each mistake into its one-line message and errno.

from __future__ import annotations

import errno

import pytest

from iscsifs.config import Security
from iscsifs.daemon import commands as C
from iscsifs.fs import CommandError


def refused(parse, line: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError) as e:
        parse(line)
    assert e.value.errno == errno.EINVAL
    return str(e.value)


@pytest.mark.parametrize(("line", "request_"), [
    ("login", C.Login()),
    ("logout", C.Logout()),
    ("  rescan ", C.Rescan()),
    ("autologin yes", C.SetPortal("auto_login", True, "autologin")),
    ("autologin NO", C.SetPortal("auto_login", False, "autologin")),
    ("visible no", C.SetPortal("visible", False, "visible")),
    ("unmap lun1 4096 8192", C.Unmap(1, 4096, 8192)),
])
def test_portal_commands(line: str, request_: object) -> None:
    assert C.parse_portal_command(line) == request_


@pytest.mark.parametrize(("line", "message"), [
    ("login now", "unknown command 'login now'; commands: " + C.PORTAL_COMMANDS),
    ("", "unknown command ''; commands: " + C.PORTAL_COMMANDS),
    ("visible maybe", "visible takes yes or no, not 'maybe'"),
    ("unmap lunx 0 1", "unmap takes lunN OFFSET LENGTH in bytes"),
    ("unmap lun1 -1 1", "unmap takes lunN OFFSET LENGTH in bytes"),
    ("unmap lun² 0 1", "unmap takes lunN OFFSET LENGTH in bytes"),
])
def test_portal_command_mistakes(line: str, message: str) -> None:
    assert refused(C.parse_portal_command, line) == message


def test_hold_time_is_a_number_and_its_range_is_left_to_the_schema() -> None:
    assert C.parse_hold_time(" 30 ") == C.SetHoldTime(30.0)
    assert C.parse_hold_time("100000") == C.SetHoldTime(100000.0)  # the schema refuses it
    assert refused(C.parse_hold_time, "soon") == (
        "hold time must be a number of seconds from 0 up, not 'soon'")


def test_initiator_files() -> None:
    assert C.parse_initiator_name(" host-1 ") == C.SetInitiatorName("host-1")
    assert C.parse_boot_delay("30\n") == C.SetBootDelay(30)
    assert refused(C.parse_boot_delay, "-1") == (
        "boot delay must be a whole number of seconds, not '-1'")
    assert C.parse_isns("none") == C.SetIsns(None)
    assert C.parse_isns("") == C.SetIsns(None)
    assert C.parse_isns("10.0.0.1") == C.SetIsns("10.0.0.1", 3205)
    assert C.parse_isns("[::1]:4000") == C.SetIsns("::1", 4000)
    assert "port" in refused(C.parse_isns, "10.0.0.1:99999")


def test_discovery_commands() -> None:
    assert C.parse_discovery_command("sendtargets 127.0.0.1") == C.SendTargets("127.0.0.1", 3260)
    st = C.parse_discovery_command(
        "sendtargets 127.0.0.1:3261 -security CHAP,TargetUserName=u,TargetSecret=s3cret-value-12")
    assert isinstance(st, C.SendTargets) and st.port == 3261
    assert st.security is not None and st.security.is_chap and st.security.target_user == "u"
    none = C.parse_discovery_command("sendtargets 127.0.0.1 -security NONE")
    assert none == C.SendTargets("127.0.0.1", 3260, None)
    assert C.parse_discovery_command("isns") == C.IsnsDiscovery()
    assert C.parse_discovery_command("ISNS 10.1.1.1") == C.IsnsDiscovery("10.1.1.1", 3205)


@pytest.mark.parametrize(("line", "message"), [
    ("", "empty command"),
    ("probe 1.2.3.4", "unknown command 'probe'; commands: sendtargets, isns"),
    ("sendtargets", "usage: sendtargets ADDRESS[:PORT] [-security CHAP,...|NONE]"),
    ("sendtargets 1.2.3.4 -x y", "usage: sendtargets ADDRESS[:PORT] [-security CHAP,...|NONE]"),
    ("isns a b", "usage: isns [ADDRESS[:PORT]]"),
    ('sendtargets "1.2.3.4', "cannot split the line: No closing quotation"),
])
def test_discovery_mistakes(line: str, message: str) -> None:
    assert refused(C.parse_discovery_command, line) == message


def test_add_and_remove() -> None:
    add = C.parse_targets_command(
        "add 127.0.0.1:3261 iqn.a iqn.b -autoLogin Yes -session MaxBurstLength=1024 "
        "-connection HeaderDigest=CRC32C")
    assert add == C.AddTargets("127.0.0.1", 3261, ("iqn.a", "iqn.b"), auto_login=True,
                               security=Security(), discovery_security=None,
                               options=({"max_burst_length": 1024},
                                        {"header_digest": "CRC32C"}))
    assert C.parse_targets_command("remove ::1 All") == C.RemoveTargets("::1", 3260, ("All",))
    dsec = C.parse_targets_command("add 10.0.0.1 All -discoverySecurity NONE")
    assert isinstance(dsec, C.AddTargets)
    assert dsec.discovery_security == Security(method="None")


@pytest.mark.parametrize(("line", "message"), [
    ("list", C.TARGETS_USAGE),
    ("add 127.0.0.1", "usage: add ADDRESS[:PORT] NAME...|All"),
    ("add 127.0.0.1 All iqn.a",
     'The "All" target names option cannot be used with other target names.'),
    ("remove 127.0.0.1 iqn.a -autoLogin Yes", "unknown option -autoLogin"),
    ("add 127.0.0.1 iqn.a -autoLogin", "-autoLogin needs a value"),
    ("add 127.0.0.1 iqn.a -autoLogin Yes -autoLogin No", "-autoLogin given twice"),
    ("add 127.0.0.1 iqn.a -autoLogin yes", "-autoLogin must be Yes or No"),
    ("add 127.0.0.1 iqn.a -session Foo=1", "-session: unknown option 'Foo=1'; options: "
     "ErrorRecoveryLevel=..., FirstBurstLength=..., ImmediateData=..., InitialR2T=..., "
     "MaxBurstLength=..."),
])
def test_targets_mistakes(line: str, message: str) -> None:
    assert refused(C.parse_targets_command, line) == message
