# The manual's option-value syntax (iscsifs/syntax.py): -address forms and default ports, the
# \, and \\ escapes, the valid -security combinations, -connection/-session ranges, and that no
# error message ever repeats a secret.

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.config import LoginParams
from iscsifs.syntax import (
    SyntaxProblem,
    apply_options,
    format_address,
    format_security,
    parse_address,
    parse_options,
    parse_security,
    parse_yes_no,
    secret_values,
    split_escaped,
)

SECRET = "s3cr3tValue-Xyz"
OTHER = "0therSecret-Abc"


@pytest.mark.parametrize(("text", "isns", "expected"), [
    ("192.168.10.6", False, ("192.168.10.6", 3260)),
    ("192.168.10.6:3261", False, ("192.168.10.6", 3261)),
    ("192.168.10.6", True, ("192.168.10.6", 3205)),
    ("192.168.10.6:3260", True, ("192.168.10.6", 3260)),
    ("fec0::9427:8d67:b6f3:3576", False, ("fec0::9427:8d67:b6f3:3576", 3260)),
    ("[fec0::9427:8d67:b6f3:3576]:3262", False, ("fec0::9427:8d67:b6f3:3576", 3262)),
    ("::1", True, ("::1", 3205)),
    ("[::1]", False, ("::1", 3260)),
    ("storage.example", False, ("storage.example", 3260)),
    ("storage.example:65535", False, ("storage.example", 65535)),
    ("localhost:1", False, ("localhost", 1)),
])
def test_address_forms_and_default_ports(text: str, isns: bool,
                                         expected: tuple[str, int]) -> None:
    assert parse_address(text, isns=isns) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("host:0", "port '0'"),
    ("host:70000", "port '70000'"),
    ("host:", "port ''"),
    ("1.2.3.4:abc", "port 'abc'"),
    ("", "empty"),
    ("a b", "space"),
    ("a,b", "','"),
    ("-x", "host name"),
    # The manual's own IPv6 example has several "::" and is not an IPv6 address.
    ("fec0::9427::8d67::b6f3::3576", "invalid IPv6"),
])
def test_bad_addresses_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(SyntaxProblem) as e:
        parse_address(text)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("host", "port", "text"), [
    ("127.0.0.1", 3260, "127.0.0.1:3260"),
    ("::1", 3261, "[::1]:3261"),
    ("h.example", 1, "h.example:1"),
])
def test_format_address(host: str, port: int, text: str) -> None:
    assert format_address(host, port) == text
    assert parse_address(text) == (host, port)


def test_the_manuals_escape_example() -> None:
    # 'TargetUserName=Exam\\p\,le' produces "TargetUserName=Exam\p,le"
    assert split_escaped("TargetUserName=Exam\\\\p\\,le") == ["TargetUserName=Exam\\p,le"]


@pytest.mark.parametrize(("text", "parts"), [
    ("a,b,c", ["a", "b", "c"]),
    ("a\\,b,c", ["a,b", "c"]),
    ("a\\\\,b", ["a\\", "b"]),
    ("\\\\\\,", ["\\,"]),
    ("", [""]),
    ("a,", ["a", ""]),
])
def test_split_escaped(text: str, parts: list[str]) -> None:
    assert split_escaped(text) == parts


@pytest.mark.parametrize("text", ["a\\b", "a\\", "\\n"])
def test_a_lone_backslash_is_refused(text: str) -> None:
    with pytest.raises(SyntaxProblem, match="backslash"):
        split_escaped(text)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


@given(st.lists(st.text(st.characters(codec="utf-8")), min_size=1, max_size=5))
def test_split_escaped_inverts_escaping(values: list[str]) -> None:
    assert split_escaped(",".join(_escape(v) for v in values)) == values


def test_one_way_chap() -> None:
    sec = parse_security(f"CHAP,TargetUserName=example,TargetSecret={SECRET}")
    assert sec.is_chap and sec.target_user == "example" and not sec.mutual
    assert sec.target_secret is not None and sec.target_secret.reveal() == SECRET.encode()
    assert SECRET not in repr(sec)


def test_mutual_chap_with_escapes() -> None:
    sec = parse_security(
        "CHAP,TargetUserName=Exam\\\\p\\,le,TargetSecret=" + _escape("a,b\\c-0123456")
        + f",InitiatorUserName=me,InitiatorSecret={OTHER},MutualAuthentication=Yes")
    assert sec.target_user == "Exam\\p,le"
    assert sec.target_secret is not None and sec.target_secret.reveal() == b"a,b\\c-0123456"
    assert sec.mutual and sec.initiator_user == "me"


def test_discovery_security_none() -> None:
    assert not parse_security("NONE", allow_none=True).is_chap
    with pytest.raises(SyntaxProblem, match="available: CHAP"):
        parse_security("NONE")
    with pytest.raises(SyntaxProblem, match="takes no options"):
        parse_security("NONE,TargetUserName=x", allow_none=True)


@pytest.mark.parametrize(("text", "words"), [
    ("", "needs <Protocol>"),
    ("KRB5,TargetUserName=u", "unknown security protocol 'KRB5'"),
    ("CHAP", "valid option combinations"),
    ("CHAP,TargetUserName=u", "valid option combinations"),
    (f"CHAP,TargetSecret={SECRET}", "valid option combinations"),
    (f"CHAP,TargetUserName=u,TargetSecret={SECRET},InitiatorUserName=i",
     "valid option combinations"),
    (f"CHAP,TargetUserName=u,TargetSecret={SECRET},InitiatorUserName=i,"
     f"InitiatorSecret={OTHER}", "valid option combinations"),
    (f"CHAP,TargetUserName=u,TargetSecret={SECRET},TargetUserName=v", "given twice"),
    (f"CHAP,Colour=red,TargetUserName=u,TargetSecret={SECRET}", "unknown option 'Colour'"),
    ("CHAP,TargetUserName=,TargetSecret=x", "TargetUserName is empty"),
    (f"CHAP,TargetUserName=u,TargetSecret={SECRET},InitiatorUserName=i,"
     f"InitiatorSecret={OTHER},MutualAuthentication=yes", "must be Yes or No"),
    (f"CHAP,TargetUserName=u,TargetSecret={SECRET},InitiatorUserName=i,"
     f"InitiatorSecret={SECRET},MutualAuthentication=Yes", "same as target_secret"),
])
def test_security_errors(text: str, words: str) -> None:
    with pytest.raises(SyntaxProblem) as e:
        parse_security(text, allow_none=True)
    assert words in str(e.value)
    assert SECRET not in str(e.value) and OTHER not in str(e.value)


@pytest.mark.parametrize("text", [
    # a secret with an unescaped comma: its tail must not be echoed
    "CHAP,TargetUserName=u,TargetSecret=abc,tail0fSecret",
    "CHAP,TargetUserName=u,TargetSecret=abc,tail0fSecret=more",
    # a secret written where the protocol belongs
    "tail0fSecret,TargetUserName=u",
    "TargetSecret=tail0fSecret,CHAP",
])
def test_security_errors_do_not_echo_what_may_be_a_secret(text: str) -> None:
    with pytest.raises(SyntaxProblem) as e:
        parse_security(text)
    assert "tail0fSecret" not in str(e.value)


def test_an_unescaped_comma_after_a_secret_gets_a_hint() -> None:
    with pytest.raises(SyntaxProblem, match=r"unescaped comma.*write \\,"):
        parse_security("CHAP,TargetUserName=u,TargetSecret=abc,def")


def test_secret_values_finds_both_secrets_unescaped() -> None:
    text = ("CHAP,TargetUserName=u,TargetSecret=a\\,b,InitiatorUserName=i,"
            "InitiatorSecret=c\\\\d,MutualAuthentication=Yes")
    assert secret_values(text) == ["a,b", "c\\d"]
    assert secret_values("not security at all") == []
    assert secret_values("CHAP,TargetSecret=x\\") == ["x\\"]  # never raises


def test_format_security_never_shows_a_secret() -> None:
    sec = parse_security(f"CHAP,TargetUserName=u,TargetSecret={SECRET},InitiatorUserName=i,"
                         f"InitiatorSecret={OTHER},MutualAuthentication=Yes")
    text = format_security(sec)
    assert text == "CHAP,TargetUserName=u,InitiatorUserName=i,MutualAuthentication=Yes"
    assert format_security(None) == "None"


def test_connection_options() -> None:
    assert parse_options("DataDigest=CRC32C,MaxRecvDataSegmentLength=1024",
                         option="-connection") == {
        "data_digest": "CRC32C", "max_recv_data_segment_length": 1024}
    assert parse_options("HeaderDigest=None", option="-connection") == {
        "header_digest": "None"}


def test_session_options() -> None:
    assert parse_options("ErrorRecoveryLevel=0,ImmediateData=Yes,MaxBurstLength=1024",
                         option="-session") == {
        "error_recovery_level": 0, "immediate_data": True, "max_burst_length": 1024}
    assert parse_options("InitialR2T=No,FirstBurstLength=512", option="-session") == {
        "initial_r2t": False, "first_burst_length": 512}


@pytest.mark.parametrize(("text", "option", "words"), [
    ("DataDigest=MD5", "-connection", "None or CRC32C"),
    ("MaxRecvDataSegmentLength=511", "-connection", "512 to 16777215"),
    ("MaxRecvDataSegmentLength=16777216", "-connection", "512 to 16777215"),
    ("MaxRecvDataSegmentLength=-1", "-connection", "512 to 16777215"),
    ("MaxRecvDataSegmentLength=\u0661\u0662\u0663\u0664", "-connection", "512 to 16777215"),
    ("ErrorRecoveryLevel=2", "-session", "0 or 1"),
    ("ImmediateData=yes", "-session", "Yes or No"),
    ("MaxBurstLength=1024,MaxBurstLength=2048", "-session", "given twice"),
    ("DataDigest=None", "-session", "unknown option"),
    ("ErrorRecoveryLevel=0", "-connection", "unknown option"),
    ("ImmediateData", "-session", "unknown option"),
])
def test_option_list_errors(text: str, option: str, words: str) -> None:
    with pytest.raises(SyntaxProblem) as e:
        parse_options(text, option=option)
    assert words in str(e.value) and str(e.value).startswith(option)


def test_apply_options_checks_burst_lengths_together() -> None:
    base = LoginParams()
    with pytest.raises(SyntaxProblem, match="first_burst_length"):
        apply_options(base, {"first_burst_length": 4096, "max_burst_length": 1024})
    with pytest.raises(SyntaxProblem, match="first_burst_length"):
        apply_options(base, {"first_burst_length": base.max_burst_length + 512})


def test_the_manuals_session_example_lowers_first_burst_with_max_burst() -> None:
    overrides = parse_options("ErrorRecoveryLevel=0,ImmediateData=Yes,MaxBurstLength=1024",
                              option="-session")
    params = apply_options(LoginParams(), overrides)
    assert (params.max_burst_length, params.first_burst_length) == (1024, 1024)
    assert params.immediate_data and params.error_recovery_level == 0
    # a larger MaxBurstLength leaves FirstBurstLength alone
    assert apply_options(LoginParams(), {"max_burst_length": 1 << 20}).first_burst_length == (
        LoginParams().first_burst_length)


def test_yes_no() -> None:
    assert parse_yes_no("Yes", option="-autoLogin") is True
    assert parse_yes_no("No", option="-autoLogin") is False
    with pytest.raises(SyntaxProblem, match="-autoLogin must be Yes or No"):
        parse_yes_no("yes", option="-autoLogin")
