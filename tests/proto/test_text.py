# Tests of iscsifs/proto/text.py: golden key=value byte tables (whole, byte by byte through the
# C-bit assembler, with trailing bytes), the RFC 7143 6.1 limits, value codecs, the section 13
# key table, the result functions of section 6.2 and the Negotiator, plus hypothesis round trips.
# The tgtd conversation below is the one tgtd 1.0.85 really sent to this code (captured by hand).

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError
from iscsifs.proto.text import (
    KEYS,
    MAX_LONG_VALUE_LENGTH,
    KeyKind,
    NegotiatedParams,
    Negotiator,
    Scope,
    Sender,
    TextAssembler,
    Use,
    ValueType,
    answer_offer,
    answer_optional,
    check_answer,
    check_value,
    decode_text,
    describe,
    encode_text,
    format_binary,
    format_bool,
    format_list,
    format_number,
    is_extension_key,
    is_irrelevant,
    parse_binary,
    parse_bool,
    parse_list,
    parse_number,
)

# --------------------------------------------------------------------------------------------
# Golden text sets
# --------------------------------------------------------------------------------------------

GOLDEN: list[tuple[list[tuple[str, str]], bytes]] = [
    ([], b""),
    ([("AuthMethod", "None")], b"AuthMethod=None\x00"),
    ([("TargetAlias", "")], b"TargetAlias=\x00"),
    (
        [("InitiatorName", "iqn.2024-01.test:init"), ("SessionType", "Normal")],
        b"InitiatorName=iqn.2024-01.test:init\x00SessionType=Normal\x00",
    ),
    ([("HeaderDigest", "CRC32C,None")], b"HeaderDigest=CRC32C,None\x00"),
    # a value may contain '=': only the first one separates key and value
    ([("X-com.example.k", "a=b=c")], b"X-com.example.k=a=b=c\x00"),
    # UTF-8 alias (iSCSI-local-name-value)
    ([("TargetAlias", "Disque \u00e9t\u00e9")], b"TargetAlias=Disque \xc3\xa9t\xc3\xa9\x00"),
    # what tgtd 1.0.85 answered in the security stage
    ([("TargetPortalGroupTag", "1"), ("AuthMethod", "None")],
     b"TargetPortalGroupTag=1\x00AuthMethod=None\x00"),
]


@pytest.mark.parametrize(("pairs", "wire"), GOLDEN)
def test_golden_whole(pairs: list[tuple[str, str]], wire: bytes) -> None:
    assert encode_text(pairs) == wire
    assert decode_text(wire) == pairs
    assert decode_text(bytearray(wire)) == pairs
    assert decode_text(memoryview(wire)) == pairs


@pytest.mark.parametrize(("pairs", "wire"), GOLDEN)
def test_golden_byte_by_byte(pairs: list[tuple[str, str]], wire: bytes) -> None:
    asm = TextAssembler()
    for i in range(len(wire) - 1):
        assert asm.feed(wire[i : i + 1], cont=True) is None
        assert asm.pending
    assert asm.feed(wire[-1:], cont=False) == pairs
    assert not asm.pending


@pytest.mark.parametrize(("pairs", "wire"), [g for g in GOLDEN if g[1]])
def test_golden_with_trailing_bytes(pairs: list[tuple[str, str]], wire: bytes) -> None:
    # Bytes after the last NUL that are not a whole pair are the peer's error...
    with pytest.raises(RemoteProtocolError, match="does not end with a NUL"):
        decode_text(wire + b"Key=va")
    # ... and a whole extra pair is simply one more pair.
    assert decode_text(wire + b"Key=v\x00") == [*pairs, ("Key", "v")]


# --------------------------------------------------------------------------------------------
# Decoding errors and limits (RFC 7143 section 6.1)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"AuthMethod=None", "does not end with a NUL"),
        (b"A=1\x00\x00", "empty key=value"),
        (b"\x00", "empty key=value"),
        (b"AuthMethod\x00", "without '='"),
        (b"=x\x00", "empty key"),
        (b"K" * 64 + b"=x\x00", "longer than 63"),
        (b"Ke y=x\x00", "cannot contain"),
        (b"K\xc3\xa9=x\x00", "not ASCII"),
        (b"TargetAlias=\xff\xfe\x00", "not valid UTF-8"),
        (b"TargetAlias=" + b"a" * 256 + b"\x00", "longer than 255"),
        (b"CHAP_C=0x" + b"a" * (MAX_LONG_VALUE_LENGTH - 1) + b"\x00", "longer than 8192"),
        (b"HeaderDigest=" + b"a" * 256 + b",None\x00", "element"),
        (b"X-vendor.key=" + b"a" * 256 + b"\x00", "element"),
    ],
)
def test_decode_errors(wire: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_text(wire)


def test_limits_allow_what_the_rfc_allows() -> None:
    key = "K" * 63
    assert decode_text(key.encode() + b"=x\x00") == [(key, "x")]
    assert decode_text(b"TargetAlias=" + b"a" * 255 + b"\x00")[0][1] == "a" * 255
    long_c = "0x" + "ab" * 4095  # 8192 characters: the longest encoded CHAP_C we take
    assert decode_text(b"CHAP_C=" + long_c.encode() + b"\x00") == [("CHAP_C", long_c)]
    # iSCSIProtocolLevel begins with a lower-case letter although standard-labels should not.
    assert decode_text(b"iSCSIProtocolLevel=2\x00") == [("iSCSIProtocolLevel", "2")]
    assert decode_text(b"X#NodeArchitecture=a,b\x00") == [("X#NodeArchitecture", "a,b")]


def test_sensitive_lengths_are_not_shown() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_text(b"CHAP_R=0x" + b"1" * 8200 + b"\x00")
    assert "bytes)" not in str(info.value)
    assert "1111" not in str(info.value)


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([("", "x")], "empty key"),
        ([("A=B", "x")], "cannot contain"),
        ([("TargetAlias", "a\x00b")], "NUL"),
        ([("TargetAlias", "a" * 256)], "longer than 255"),
    ],
)
def test_encode_refuses_bad_pairs(pairs: list[tuple[str, str]], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_text(pairs)


# --------------------------------------------------------------------------------------------
# The assembler (C bit)
# --------------------------------------------------------------------------------------------


def test_assembler_joins_a_pair_split_across_pdus() -> None:
    asm = TextAssembler()
    assert asm.feed(b"MaxBurstLen", cont=True) is None
    assert asm.feed(b"gth=2621", cont=True) is None
    assert asm.feed(b"44\x00TargetAl", cont=True) is None
    assert asm.feed(b"ias=x\x00", cont=False) == [("MaxBurstLength", "262144"), ("TargetAlias", "x")]
    # and it starts afresh afterwards
    assert asm.feed(b"A=1\x00", cont=False) == [("A", "1")]


def test_assembler_refuses_before_buffering_beyond_the_cap() -> None:
    asm = TextAssembler(8192)
    assert asm.max_size == 8192
    assert asm.feed(b"a" * 8000, cont=True) is None
    with pytest.raises(RemoteProtocolError, match="exceeds 8192"):
        asm.feed(b"b" * 193, cont=True)
    assert not asm.pending  # nothing of the refused segment (or before) is held
    assert asm.feed(b"A=1\x00", cont=False) == [("A", "1")]


def test_assembler_exactly_at_the_cap_is_fine() -> None:
    asm = TextAssembler(8192)
    body = b"TargetAlias=" + b"a" * 200 + b"\x00"
    chunks = body * (8192 // len(body))
    rest = 8192 - len(chunks)
    assert asm.feed(chunks, cont=True) is None
    tail = b"X-k=" + b"b" * (rest - 5) + b"\x00"
    assert len(chunks) + len(tail) == 8192
    assert len(asm.feed(tail, cont=False) or []) == 8192 // len(body) + 1


def test_assembler_reset_and_minimum_cap() -> None:
    asm = TextAssembler(10000)
    asm.feed(b"abc", cont=True)
    asm.reset()
    assert not asm.pending
    assert asm.feed(b"", cont=False) == []
    with pytest.raises(LocalProtocolError):
        TextAssembler(100)


def test_assembler_decodes_errors_of_the_whole() -> None:
    asm = TextAssembler()
    asm.feed(b"NoEquals", cont=True)
    with pytest.raises(RemoteProtocolError):
        asm.feed(b"Here\x00", cont=False)


# --------------------------------------------------------------------------------------------
# Value codecs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("8192", 8192), ("0x2000", 8192), ("0X1f", 31), ("18446744073709551615", 2**64 - 1)],
)
def test_parse_number(text: str, value: int) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "text", ["", "08192", "-1", "1.5", "0x", "0xg1", "18446744073709551616", "0x10000000000000000",
             "\u0661", "0b AA==", "Yes"]
)
def test_parse_number_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_number(text)


def test_large_numbers() -> None:
    assert parse_number("0x10000000000000000", large=True) == 2**64
    assert parse_number("0bAQAAAAAAAAAA", large=True) == 2**64
    assert format_number(2**64) == "0x10000000000000000"
    assert format_number(2**64 - 1) == "18446744073709551615"
    with pytest.raises(LocalProtocolError):
        format_number(-1)


def test_booleans_and_lists() -> None:
    assert parse_bool("Yes") is True
    assert parse_bool("No") is False
    for bad in ("yes", "NO", "", "1"):
        with pytest.raises(ValueError):
            parse_bool(bad)
    assert format_bool(True) == "Yes"
    assert format_bool(False) == "No"
    assert parse_list("CRC32C,None") == ["CRC32C", "None"]
    assert parse_list("None") == ["None"]
    for bad in ("", ",", "a,,b", "a,"):
        with pytest.raises(ValueError):
            parse_list(bad)
    assert format_list(["8", "6", "5"]) == "8,6,5"
    for bad_items in ([], [""], ["a,b"]):
        with pytest.raises(LocalProtocolError):
            format_list(bad_items)


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("0x00ff", b"\x00\xff"),
        ("0XABCD", b"\xab\xcd"),
        ("0xabc", b"\x0a\xbc"),  # odd digit count: (n+1)//2 bytes, leading zero implied
        ("0bAAE=", b"\x00\x01"),
        ("0bAAE", b"\x00\x01"),  # padding optional
        ("0BAQID", b"\x01\x02\x03"),
        ("0b+/8=", b"\xfb\xff"),
    ],
)
def test_parse_binary(text: str, data: bytes) -> None:
    assert parse_binary(text) == data


@pytest.mark.parametrize(
    "text", ["", "0x", "0b", "ab", "1xab", "0xzz", "0b@@@@", "0bA", "0bAAAAA", "0bAA===", "0c12"]
)
def test_parse_binary_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_binary(text)


def test_format_binary() -> None:
    assert format_binary(b"\x00\x01\xfe") == "0x0001fe"
    assert format_binary(b"\x00\x01", use_base64=True) == "0bAAE="
    with pytest.raises(LocalProtocolError):
        format_binary(b"")


@given(st.binary(min_size=1, max_size=300), st.booleans())
def test_binary_round_trip(data: bytes, b64: bool) -> None:
    assert parse_binary(format_binary(data, use_base64=b64)) == data


@given(st.integers(min_value=0, max_value=2**80))
def test_number_round_trip(n: int) -> None:
    assert parse_number(format_number(n), large=True) == n
    if n < 2**64:
        assert parse_number(format_number(n)) == n


# --------------------------------------------------------------------------------------------
# The key table
# --------------------------------------------------------------------------------------------

SECTION_13_KEYS = [
    "HeaderDigest", "DataDigest", "MaxConnections", "SendTargets", "TargetName",
    "InitiatorName", "TargetAlias", "InitiatorAlias", "TargetAddress", "TargetPortalGroupTag",
    "InitialR2T", "ImmediateData", "MaxRecvDataSegmentLength", "MaxBurstLength",
    "FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T",
    "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel", "SessionType",
    "TaskReporting", "iSCSIProtocolLevel", "X#NodeArchitecture",
    "OFMarker", "IFMarker", "OFMarkInt", "IFMarkInt",
    "AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R",
]


def test_every_key_is_in_the_table() -> None:
    assert sorted(KEYS) == sorted(SECTION_13_KEYS)
    for name, spec in KEYS.items():
        assert spec.name == name
        if spec.kind not in (KeyKind.DECLARATIVE, KeyKind.OBSOLETE) and name != "CHAP_A":
            assert spec.default is not None, name
            assert check_value(spec, spec.default) is None, name


# (name, kind, default, range, use, senders, scope) as RFC 7143 section 13 lists them.
TABLE_ROWS = [
    ("HeaderDigest", KeyKind.LIST, "None", None, Use.IO, Sender.BOTH, Scope.CO),
    ("MaxConnections", KeyKind.NUMERIC_MIN, "1", (1, 65535), Use.LO, Sender.BOTH, Scope.SW),
    ("TargetPortalGroupTag", KeyKind.DECLARATIVE, None, (0, 65535), Use.IO, Sender.TARGET,
     Scope.SW),
    ("InitialR2T", KeyKind.BOOL_OR, "Yes", None, Use.LO, Sender.BOTH, Scope.SW),
    ("ImmediateData", KeyKind.BOOL_AND, "Yes", None, Use.LO, Sender.BOTH, Scope.SW),
    ("MaxRecvDataSegmentLength", KeyKind.DECLARATIVE, "8192", (512, 16777215), Use.ALL,
     Sender.BOTH, Scope.CO),
    ("MaxBurstLength", KeyKind.NUMERIC_MIN, "262144", (512, 16777215), Use.LO, Sender.BOTH,
     Scope.SW),
    ("FirstBurstLength", KeyKind.NUMERIC_MIN, "65536", (512, 16777215), Use.LO, Sender.BOTH,
     Scope.SW),
    ("DefaultTime2Wait", KeyKind.NUMERIC_MAX, "2", (0, 3600), Use.LO, Sender.BOTH, Scope.SW),
    ("DefaultTime2Retain", KeyKind.NUMERIC_MIN, "20", (0, 3600), Use.LO, Sender.BOTH, Scope.SW),
    ("MaxOutstandingR2T", KeyKind.NUMERIC_MIN, "1", (1, 65535), Use.LO, Sender.BOTH, Scope.SW),
    ("DataPDUInOrder", KeyKind.BOOL_OR, "Yes", None, Use.LO, Sender.BOTH, Scope.SW),
    ("DataSequenceInOrder", KeyKind.BOOL_OR, "Yes", None, Use.LO, Sender.BOTH, Scope.SW),
    ("ErrorRecoveryLevel", KeyKind.NUMERIC_MIN, "0", (0, 2), Use.LO, Sender.BOTH, Scope.SW),
    ("SessionType", KeyKind.DECLARATIVE, "Normal", None, Use.LO, Sender.INITIATOR, Scope.SW),
    ("TaskReporting", KeyKind.LIST, "RFC3720", None, Use.LO, Sender.BOTH, Scope.SW),
    ("iSCSIProtocolLevel", KeyKind.NUMERIC_MIN, "1", (0, 31), Use.LO, Sender.BOTH, Scope.SW),
    ("SendTargets", KeyKind.DECLARATIVE, None, None, Use.FFPO, Sender.INITIATOR, Scope.SW),
    ("InitiatorName", KeyKind.DECLARATIVE, None, None, Use.IO, Sender.INITIATOR, Scope.SW),
    ("TargetAlias", KeyKind.DECLARATIVE, None, None, Use.ALL, Sender.TARGET, Scope.SW),
    ("AuthMethod", KeyKind.LIST, "None", None, Use.SECURITY, Sender.BOTH, Scope.CO),
    ("IFMarkInt", KeyKind.OBSOLETE, None, None, Use.IO, Sender.BOTH, Scope.CO),
]


@pytest.mark.parametrize("row", TABLE_ROWS, ids=[r[0] for r in TABLE_ROWS])
def test_table_rows(row: tuple) -> None:
    name, kind, default, rng, use, senders, scope = row
    spec = KEYS[name]
    assert (spec.kind, spec.default, spec.range, spec.use, spec.senders, spec.scope) == (
        kind, default, rng, use, senders, scope
    )


def test_irrelevance_rules() -> None:
    discovery = {"SessionType": "Discovery"}
    normal = {"SessionType": "Normal"}
    for name in ("MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
                 "FirstBurstLength", "MaxOutstandingR2T", "DataPDUInOrder",
                 "DataSequenceInOrder", "TaskReporting", "iSCSIProtocolLevel"):
        assert is_irrelevant(KEYS[name], discovery), name
        assert not is_irrelevant(KEYS[name], normal), name
    for name in ("HeaderDigest", "MaxRecvDataSegmentLength", "ErrorRecoveryLevel",
                 "DefaultTime2Wait", "DefaultTime2Retain"):
        assert not is_irrelevant(KEYS[name], discovery), name
    fb = KEYS["FirstBurstLength"]
    assert is_irrelevant(fb, {**normal, "InitialR2T": "Yes", "ImmediateData": "No"})
    assert not is_irrelevant(fb, {**normal, "InitialR2T": "Yes", "ImmediateData": "Yes"})
    assert not is_irrelevant(fb, {**normal, "InitialR2T": "No", "ImmediateData": "No"})


def test_sensitive_keys_and_describe() -> None:
    assert {k for k, s in KEYS.items() if s.sensitive} == {
        "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"
    }
    assert describe("CHAP_R", "0x1234") == "CHAP_R=<hidden>"
    assert describe("MaxBurstLength", "512") == "MaxBurstLength='512'"
    assert is_extension_key("X-com.example.thing")
    assert is_extension_key("X#NodeArchitecture")
    assert not is_extension_key("X-")
    assert not is_extension_key("MaxBurstLength")


def test_check_value() -> None:
    assert check_value(KEYS["MaxBurstLength"], "511") == "outside 512..16777215"
    assert check_value(KEYS["MaxBurstLength"], "512") is None
    assert check_value(KEYS["SessionType"], "Other") is not None
    assert check_value(KEYS["ImmediateData"], "yes") is not None
    assert check_value(KEYS["CHAP_C"], "0xzz") == "malformed"
    assert check_value(KEYS["TargetName"], "") == "empty"
    assert check_value(KEYS["TargetAlias"], "") is None
    assert check_value(KEYS["HeaderDigest"], "CRC32C,,None") is not None


# --------------------------------------------------------------------------------------------
# Result functions (RFC 7143 section 6.2)
# --------------------------------------------------------------------------------------------

# (key, offer, responder's own value, expected answer)
ANSWERS = [
    ("HeaderDigest", "CRC32C,None", "None", "None"),
    ("HeaderDigest", "CRC32C,None", "None,CRC32C", "CRC32C"),  # the OFFER's order rules
    ("HeaderDigest", "CRC32C", "None", "Reject"),
    ("HeaderDigest", "CRC32C,,x", "None", "Reject"),
    ("ImmediateData", "Yes", "No", "No"),
    ("ImmediateData", "Yes", "Yes", "Yes"),
    ("InitialR2T", "No", "Yes", "Yes"),
    ("InitialR2T", "No", "No", "No"),
    ("InitialR2T", "maybe", "No", "Reject"),
    ("MaxBurstLength", "262144", "1048576", "262144"),
    ("MaxBurstLength", "0x100000", "262144", "262144"),
    ("MaxBurstLength", "100", "262144", "Reject"),
    ("DefaultTime2Wait", "2", "5", "5"),
    ("DefaultTime2Wait", "7200", "5", "Reject"),
    ("OFMarker", "Yes", "No", "Reject"),
]


@pytest.mark.parametrize(("key", "offer", "ours", "expected"), ANSWERS)
def test_answer_offer(key: str, offer: str, ours: str, expected: str) -> None:
    assert answer_offer(KEYS[key], offer, ours) == expected


def test_answer_offer_refuses_declarative() -> None:
    with pytest.raises(LocalProtocolError):
        answer_offer(KEYS["TargetAlias"], "x", "y")


# (key, our offer, the answer, resulting value or None for RemoteProtocolError)
CHECKS = [
    ("HeaderDigest", "CRC32C,None", "None", "None"),
    ("HeaderDigest", "CRC32C,None", "CRC32C", "CRC32C"),
    ("HeaderDigest", "None", "CRC32C", None),
    ("HeaderDigest", "CRC32C,None", "CRC32C,None", None),
    ("ImmediateData", "Yes", "No", "No"),
    ("ImmediateData", "No", "Yes", None),
    ("ImmediateData", "No", "No", "No"),
    ("InitialR2T", "No", "Yes", "Yes"),  # what tgtd does
    ("InitialR2T", "Yes", "No", None),
    ("InitialR2T", "No", "Maybe", None),
    ("MaxBurstLength", "1048576", "262144", "262144"),
    ("MaxBurstLength", "262144", "1048576", None),
    ("MaxBurstLength", "262144", "100", None),
    ("MaxBurstLength", "262144", "0x40000", "262144"),
    ("MaxBurstLength", "262144", "abc", None),
    ("DefaultTime2Wait", "2", "1", None),
    ("DefaultTime2Wait", "2", "20", "20"),
    ("DefaultTime2Wait", "2", "3601", None),
    ("ErrorRecoveryLevel", "2", "3", None),
]


@pytest.mark.parametrize(("key", "offer", "answer", "result"), CHECKS)
def test_check_answer(key: str, offer: str, answer: str, result: str | None) -> None:
    if result is None:
        with pytest.raises(RemoteProtocolError, match=key):
            check_answer(KEYS[key], offer, answer)
    else:
        assert check_answer(KEYS[key], offer, answer) == result


def test_check_answer_hides_chap_values() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check_answer(KEYS["CHAP_A"], "8,6,5", "99")
    assert "99" not in str(info.value)
    assert "8,6,5" not in str(info.value)
    with pytest.raises(LocalProtocolError):
        check_answer(KEYS["TargetAlias"], "a", "b")


def test_answer_optional() -> None:
    assert answer_optional(KEYS["ImmediateData"], "No")
    assert not answer_optional(KEYS["ImmediateData"], "Yes")
    assert answer_optional(KEYS["InitialR2T"], "Yes")
    assert not answer_optional(KEYS["InitialR2T"], "No")
    assert not answer_optional(KEYS["MaxBurstLength"], "512")


# --------------------------------------------------------------------------------------------
# Negotiator
# --------------------------------------------------------------------------------------------

OFFERS = {
    "HeaderDigest": "None",
    "DataDigest": "None",
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "1048576",
    "FirstBurstLength": "262144",
    "ImmediateData": "Yes",
    "InitialR2T": "No",
    "MaxOutstandingR2T": "1",
    "ErrorRecoveryLevel": "0",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "0",
    "MaxConnections": "1",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
}

OFFER_WIRE = (
    b"HeaderDigest=None\x00DataDigest=None\x00MaxRecvDataSegmentLength=262144\x00"
    b"MaxBurstLength=1048576\x00FirstBurstLength=262144\x00ImmediateData=Yes\x00InitialR2T=No\x00"
    b"MaxOutstandingR2T=1\x00ErrorRecoveryLevel=0\x00DefaultTime2Wait=2\x00"
    b"DefaultTime2Retain=0\x00MaxConnections=1\x00DataPDUInOrder=Yes\x00DataSequenceInOrder=Yes\x00"
)

# tgtd 1.0.85's answer to OFFER_WIRE, byte for byte.
TGTD_ANSWER = (
    b"HeaderDigest=None\x00DataDigest=None\x00MaxBurstLength=262144\x00FirstBurstLength=65536\x00"
    b"ImmediateData=Yes\x00InitialR2T=Yes\x00MaxOutstandingR2T=1\x00ErrorRecoveryLevel=0\x00"
    b"DefaultTime2Wait=2\x00DefaultTime2Retain=0\x00MaxConnections=1\x00DataPDUInOrder=Yes\x00"
    b"DataSequenceInOrder=Yes\x00"
)


def test_negotiator_against_tgtd_transcript() -> None:
    n = Negotiator(OFFERS)
    assert not n.done  # nothing sent yet
    assert encode_text(n.initial_pairs()) == OFFER_WIRE
    assert set(n.unanswered) == set(OFFERS) - {
        "MaxRecvDataSegmentLength", "DataPDUInOrder", "DataSequenceInOrder"
    }
    assert n.receive(decode_text(b"TargetPortalGroupTag=1\x00")) == []
    assert n.receive(decode_text(TGTD_ANSWER)) == []
    assert n.done
    assert n.result() == NegotiatedParams(
        session_type="Normal",
        max_recv_data_segment_length=262144,
        max_xmit_data_segment_length=8192,  # tgtd declares nothing
        max_burst_length=262144,
        first_burst_length=65536,
        initial_r2t=True,
        immediate_data=True,
        default_time2retain=0,
        target_portal_group_tag=1,
    )


def test_negotiator_target_declarations_and_offers() -> None:
    n = Negotiator({"MaxRecvDataSegmentLength": "65536", "MaxBurstLength": "262144",
                    "HeaderDigest": "CRC32C,None", "InitialR2T": "Yes", "ImmediateData": "Yes"})
    n.initial_pairs()
    answers = n.receive([
        ("MaxRecvDataSegmentLength", "131072"),  # its declaration: not an answer
        ("TargetAlias", "disk one"),
        ("MaxBurstLength", "131072"),
        ("HeaderDigest", "CRC32C"),
        ("ImmediateData", "Yes"),
        ("MaxOutstandingR2T", "16"),  # the target's offer: we answer Minimum(16, default 1)
        ("DefaultTime2Wait", "5"),  # Maximum(5, default 2)
        ("DataDigest", "CRC32C,None"),  # we have no wish: the default None is ours
        ("ErrorRecoveryLevel", "7"),  # out of range: Reject
        ("IFMarker", "Yes"),  # obsoleted: Reject, never NotUnderstood
        ("IFMarkInt", "1~65535"),
        ("X-com.example.k", "1"),  # unknown extension key: NotUnderstood
        ("FooBar", "1"),
        ("X#NodeArchitecture", "tgt/1"),  # known declaration: no answer
    ])
    assert answers == [
        ("MaxOutstandingR2T", "1"), ("DefaultTime2Wait", "5"), ("DataDigest", "None"),
        ("ErrorRecoveryLevel", "Reject"), ("IFMarker", "Reject"), ("IFMarkInt", "Reject"),
        ("X-com.example.k", "NotUnderstood"), ("FooBar", "NotUnderstood"),
    ]
    p = n.result()
    assert p.header_digest is True
    assert p.data_digest is False
    assert p.max_recv_data_segment_length == 65536
    assert p.max_xmit_data_segment_length == 131072
    assert p.max_burst_length == 131072
    assert p.first_burst_length == 65536  # default, not above MaxBurstLength
    assert p.max_outstanding_r2t == 1
    assert p.default_time2wait == 5
    assert p.error_recovery_level == 0
    assert p.target_alias == "disk one"
    assert n.declarations["X#NodeArchitecture"] == "tgt/1"


def test_negotiator_target_offer_irrelevant_when_settled() -> None:
    n = Negotiator({"InitialR2T": "Yes", "ImmediateData": "No"})
    assert n.initial_pairs() == [("InitialR2T", "Yes"), ("ImmediateData", "No")]
    assert n.done  # both outcomes are forced by our own values: answers are optional
    assert n.receive([("FirstBurstLength", "65536")]) == [("FirstBurstLength", "Irrelevant")]
    assert n.result().initial_r2t is True
    assert n.result().immediate_data is False


def test_negotiator_drops_offers_that_cannot_matter() -> None:
    # Our InitialR2T=Yes and ImmediateData=No fix the outcome: FirstBurstLength is irrelevant.
    n = Negotiator({"InitialR2T": "Yes", "ImmediateData": "No", "FirstBurstLength": "8192"})
    assert [k for k, _ in n.initial_pairs()] == ["InitialR2T", "ImmediateData"]
    d = Negotiator(OFFERS, session_type="Discovery")
    assert [k for k, _ in d.initial_pairs()] == [
        "HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength", "ErrorRecoveryLevel",
        "DefaultTime2Wait", "DefaultTime2Retain",
    ]
    # a non-leading connection sends no leading-only keys
    c = Negotiator(OFFERS, leading=False)
    assert [k for k, _ in c.initial_pairs()] == [
        "HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength"
    ]


def test_negotiator_reserved_answers() -> None:
    n = Negotiator({
        "MaxBurstLength": "262144", "FirstBurstLength": "65536", "TaskReporting": "FastAbort",
        "iSCSIProtocolLevel": "2", "X-com.example.k": "1", "HeaderDigest": "CRC32C",
    })
    n.initial_pairs()
    n.receive([
        ("MaxBurstLength", "Reject"), ("FirstBurstLength", "Irrelevant"),
        ("TaskReporting", "NotUnderstood"), ("iSCSIProtocolLevel", "NotUnderstood"),
        ("X-com.example.k", "NotUnderstood"), ("HeaderDigest", "Reject"),
    ])
    assert n.done
    assert n.not_understood == ("TaskReporting", "iSCSIProtocolLevel", "X-com.example.k")
    p = n.result()
    assert p.max_burst_length == 262144
    assert p.first_burst_length == 65536
    assert p.task_reporting == "RFC3720"
    assert p.iscsi_protocol_level == 1
    assert p.header_digest is False


@pytest.mark.parametrize(
    ("offers", "pairs", "match"),
    [
        ({"MaxBurstLength": "262144"}, [("MaxBurstLength", "1048576")], "above our offer"),
        ({"MaxBurstLength": "262144"}, [("MaxBurstLength", "512"), ("MaxBurstLength", "512")],
         "twice"),
        ({"MaxBurstLength": "262144"}, [("MaxBurstLength", "NotUnderstood")],
         "every iSCSI node"),
        ({"ErrorRecoveryLevel": "0"}, [("ErrorRecoveryLevel", "Irrelevant")], "Irrelevant"),
        ({}, [("MaxBurstLength", "Reject")], "never offered"),
        ({}, [("FooBar", "NotUnderstood")], "never offered"),
        ({}, [("InitiatorName", "iqn.x")], "only initiators"),
        ({}, [("SessionType", "Normal")], "only initiators"),
        ({}, [("CHAP_R", "0x00112233")], "security key"),
        ({}, [("SendTargets", "All")], "during login"),
        ({}, [("TargetPortalGroupTag", "65536")], "outside"),
        ({}, [("MaxRecvDataSegmentLength", "100")], "outside"),
        ({}, [("TargetAlias", "a"), ("TargetAlias", "a")], "twice"),
        ({"HeaderDigest": "None"}, [("HeaderDigest", "CRC32C")], "not one of"),
    ],
)
def test_negotiator_protocol_errors(
    offers: dict[str, str], pairs: list[tuple[str, str]], match: str
) -> None:
    n = Negotiator(offers)
    n.initial_pairs()
    with pytest.raises(RemoteProtocolError, match=match):
        n.receive(pairs)


def test_negotiator_changed_or_repeated_keys_across_segments() -> None:
    n = Negotiator({"MaxBurstLength": "262144"})
    n.initial_pairs()
    n.receive([("MaxBurstLength", "8192"), ("TargetAlias", "a"), ("MaxConnections", "1")])
    with pytest.raises(RemoteProtocolError, match="answered MaxBurstLength twice"):
        n.receive([("MaxBurstLength", "8192")])
    n2 = Negotiator({})
    n2.receive([("TargetAlias", "a"), ("MaxConnections", "4")])
    assert n2.receive([("TargetAlias", "a")]) == []  # same declaration again is harmless
    with pytest.raises(RemoteProtocolError, match="different value"):
        n2.receive([("TargetAlias", "b")])
    n3 = Negotiator({})
    n3.receive([("MaxConnections", "4")])
    with pytest.raises(RemoteProtocolError, match="again after it was settled"):
        n3.receive([("MaxConnections", "4")])


def test_negotiator_leading_only_in_a_non_leading_login() -> None:
    n = Negotiator({}, leading=False)
    with pytest.raises(RemoteProtocolError, match="leading-only"):
        n.receive([("MaxBurstLength", "512")])


def test_negotiator_sensitive_values_stay_out_of_messages() -> None:
    n = Negotiator({})
    with pytest.raises(RemoteProtocolError) as info:
        n.receive([("CHAP_C", "0xdeadbeefcafe")])
    assert "deadbeef" not in str(info.value)


def test_negotiator_target_addresses_accumulate() -> None:
    n = Negotiator({})
    n.receive([("TargetAddress", "10.0.0.1:3260,1"), ("TargetAddress", "[::1]:3260,1")])
    assert n.target_addresses == ("10.0.0.1:3260,1", "[::1]:3260,1")


@pytest.mark.parametrize(
    ("offers", "match"),
    [
        ({"Nonsense": "1"}, "unknown key"),
        ({"CHAP_A": "5"}, "cannot be offered"),
        ({"SendTargets": "All"}, "cannot be offered"),
        ({"OFMarker": "No"}, "cannot be offered"),
        ({"TargetAlias": "x"}, "targets only"),
        ({"SessionType": "Normal"}, "set by the login"),
        ({"MaxBurstLength": "100"}, "outside"),
        ({"HeaderDigest": "MD5"}, "unsupported"),
        ({"ImmediateData": "yes"}, "bad offer"),
        ({"": "x"}, "empty key"),
    ],
)
def test_negotiator_refuses_bad_offers(offers: dict[str, str], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        Negotiator(offers)


def test_negotiator_result_before_done_and_bad_session_type() -> None:
    n = Negotiator({"MaxBurstLength": "262144"})
    n.initial_pairs()
    with pytest.raises(LocalProtocolError, match="MaxBurstLength"):
        n.result()
    with pytest.raises(LocalProtocolError):
        Negotiator({}, session_type="Other")
    assert Negotiator({}, session_type="Discovery").session_type == "Discovery"


def test_first_burst_never_exceeds_max_burst() -> None:
    n = Negotiator({"MaxBurstLength": "262144", "FirstBurstLength": "65536"})
    n.initial_pairs()
    n.receive([("MaxBurstLength", "16384"), ("FirstBurstLength", "65536")])
    p = n.result()
    assert (p.max_burst_length, p.first_burst_length) == (16384, 16384)


def test_negotiated_params_as_pairs() -> None:
    p = NegotiatedParams(header_digest=True, target_alias="a", target_portal_group_tag=3)
    pairs = dict(p.as_pairs())
    assert pairs["HeaderDigest"] == "CRC32C"
    assert pairs["DataDigest"] == "None"
    assert pairs["MaxXmitDataSegmentLength"] == "8192"
    assert pairs["InitialR2T"] == "Yes"
    assert pairs["TargetAlias"] == "a"
    assert pairs["TargetPortalGroupTag"] == "3"
    assert "TargetAlias" not in dict(NegotiatedParams().as_pairs())
    assert len(p.as_pairs()) == 20


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_key = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="="),
    min_size=1, max_size=63,
).filter(lambda k: k not in KEYS)
_value = st.text(
    alphabet=st.characters(exclude_characters="\x00,", exclude_categories=("Cs",)), max_size=60
).filter(lambda v: len(v.encode()) <= 255)


@given(st.lists(st.tuples(_key, _value), max_size=20))
def test_round_trip(pairs: list[tuple[str, str]]) -> None:
    assert decode_text(encode_text(pairs)) == pairs


@given(st.lists(st.tuples(_key, _value), max_size=10), st.data())
def test_assembler_any_split_equals_whole(pairs: list[tuple[str, str]], data: st.DataObject) -> None:
    wire = encode_text(pairs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    asm = TextAssembler()
    for piece in pieces[:-1]:
        assert asm.feed(piece, cont=True) is None
    assert asm.feed(pieces[-1], cont=False) == pairs


@given(st.binary(max_size=400))
def test_garbage_only_raises_remote_protocol_error(data: bytes) -> None:
    try:
        decode_text(data)
    except RemoteProtocolError:
        pass


@given(st.lists(st.tuples(st.sampled_from(sorted(KEYS)), st.text(max_size=30)), max_size=12))
def test_negotiator_garbage_only_raises_remote_protocol_error(
    pairs: list[tuple[str, str]]
) -> None:
    n = Negotiator(OFFERS)
    n.initial_pairs()
    try:
        n.receive(pairs)
    except RemoteProtocolError:
        pass


def test_value_types_cover_the_table() -> None:
    used = {spec.value_type for spec in KEYS.values()}
    assert used == set(ValueType)
