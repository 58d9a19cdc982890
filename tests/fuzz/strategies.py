# Hypothesis strategies that build the input bytes of the fuzz targets (tests/fuzz/targets.py)
# with structure: valid PDUs with correct digests, key=value text from the real key table with
# hostile values, well-formed login exchanges cut short and continued by a hostile target, iSNS
# messages with the attributes discovery reads, sense and parameter data laid out per SPC-4.
# Random bytes alone rarely get past the first length or digest check; these do, and then
# `mutate` breaks them at the places parsers trust. Owns no product code.

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from iscsifs.proto import isns, pdu
from iscsifs.proto.digest import crc32c
from iscsifs.proto.login import LoginStatus
from iscsifs.proto.serial import RESERVED_TAG

from . import targets

# --------------------------------------------------------------------------------------------
# Example counts
# --------------------------------------------------------------------------------------------

#: When set, every fuzz test runs this many examples instead of its default (long campaigns:
#: ISCSIFS_FUZZ_EXAMPLES=20000 scripts/test tests/fuzz).
ENV_EXAMPLES = "ISCSIFS_FUZZ_EXAMPLES"


def examples(default: int) -> int:
    value = os.environ.get(ENV_EXAMPLES)
    return int(value) if value else default


def fuzz_settings(default: int, *, deadline_ms: int | None = 2000) -> settings:
    """settings for one fuzz test: `default` examples unless ISCSIFS_FUZZ_EXAMPLES says more,
    a per-example deadline (the hang guard in targets.run catches what never ends)."""
    return settings(
        max_examples=examples(default),
        deadline=deadline_ms,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.large_base_example],
    )


# --------------------------------------------------------------------------------------------
# Mutation
# --------------------------------------------------------------------------------------------


@st.composite
def mutate(draw: st.DrawFn, data: bytes, max_ops: int = 3) -> bytes:
    """Up to max_ops damaging edits: flip, set to a boundary byte, cut, insert, duplicate a
    range, overwrite a 3-byte or 4-byte field with an extreme value."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup", "len24", "len32"]))
        if not buf and op != "insert":
            op = "insert"
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            buf[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFE, 0xFF]))
        elif op == "cut":
            del buf[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "dup":
            n = draw(st.integers(1, 64))
            buf[pos:pos] = buf[pos : pos + n]
        else:
            width = 3 if op == "len24" else 4
            value = draw(st.sampled_from([0, 1, 3, 0x1FF, 0x2000, 0xFFFF, 0x10000, 0xFFFFFF,
                                          0xFFFFFFFF, 0x80000000]))
            buf[pos : pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# PDUs
# --------------------------------------------------------------------------------------------

u32 = st.one_of(st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, RESERVED_TAG]),
                st.integers(0, 0xFFFFFFFF))
u16 = st.integers(0, 0xFFFF)
u8 = st.integers(0, 0xFF)


def _data(max_size: int = 600) -> st.SearchStrategy[bytes]:
    return st.one_of(st.just(b""), st.binary(max_size=max_size),
                     st.integers(1, 20000).map(lambda n: bytes([0xA5]) * n))


def _sense_segment() -> st.SearchStrategy[bytes]:
    return st.one_of(
        sense_data().map(lambda s: len(s).to_bytes(2, "big") + s),
        st.binary(max_size=64),
    )


def target_pdus() -> st.SearchStrategy[pdu.Pdu]:
    common = {"statsn": u32, "exp_cmdsn": u32, "max_cmdsn": u32}
    return st.one_of(
        st.builds(pdu.NopIn, lun=st.integers(0, 2**64 - 1), itt=u32, ttt=u32, data=_data(),
                  **common),
        st.builds(pdu.ScsiResponse, bidi_overflow=st.booleans(), bidi_underflow=st.booleans(),
                  overflow=st.booleans(), underflow=st.booleans(), response=u8, status=u8,
                  itt=u32, snack_tag=u32, exp_datasn=u32, bidi_residual=u32, residual=u32,
                  data=_sense_segment(), **common),
        st.builds(pdu.TaskMgmtResponse, response=u8, itt=u32, **common),
        st.builds(pdu.LoginResponse, transit=st.booleans(), cont=st.booleans(),
                  csg=st.integers(0, 3), nsg=st.integers(0, 3), version_max=u8,
                  version_active=u8, isid=st.binary(min_size=6, max_size=6), tsih=u16, itt=u32,
                  status_class=u8, status_detail=u8, data=_data(), **common),
        st.builds(pdu.TextResponse, final=st.booleans(), cont=st.booleans(), itt=u32,
                  ttt=u32, data=_data(), **common),
        st.builds(pdu.DataIn, final=st.booleans(), ack=st.booleans(), overflow=st.booleans(),
                  underflow=st.booleans(), status_present=st.booleans(), status=u8, itt=u32,
                  ttt=u32, datasn=u32, buffer_offset=u32, residual=u32, data=_data(),
                  **common),
        st.builds(pdu.LogoutResponse, response=u8, itt=u32, time2wait=u16, time2retain=u16,
                  **common),
        st.builds(pdu.R2T, itt=u32, ttt=u32, r2tsn=u32, buffer_offset=u32,
                  desired_length=u32, **common),
        st.builds(pdu.AsyncMessage, async_event=u8, async_vcode=u8, parameter1=u16,
                  parameter2=u16, parameter3=u16, data=_sense_segment(), **common),
        st.builds(pdu.Reject, reason=u8, itt=u32, datasn=u32, data=st.binary(max_size=64),
                  **common),
    )


def initiator_pdus() -> st.SearchStrategy[pdu.Pdu]:
    return st.one_of(
        st.builds(pdu.ScsiCommand, immediate=st.booleans(), read=st.booleans(),
                  write=st.booleans(), attr=st.integers(0, 7), itt=u32, expected_length=u32,
                  cmdsn=u32, exp_statsn=u32, cdb=st.binary(min_size=16, max_size=16),
                  ahs=st.lists(st.builds(pdu.Ahs, ahs_type=u8,
                                         data=st.binary(min_size=1, max_size=40)),
                               max_size=3).map(tuple),
                  data=_data(100)),
        st.builds(pdu.NopOut, itt=u32, ttt=u32, cmdsn=u32, exp_statsn=u32, data=_data(100)),
        st.builds(pdu.DataOut, final=st.booleans(), itt=u32, ttt=u32, exp_statsn=u32,
                  datasn=u32, buffer_offset=u32, data=_data(100)),
        st.builds(pdu.SnackRequest, snack_type=st.integers(0, 15), itt=u32, exp_statsn=u32,
                  begrun=u32, run_length=u32),
    )


@st.composite
def pdu_stream(draw: st.DrawFn, *, header_digest: bool, data_digest: bool) -> bytes:
    """Several encoded PDUs, digests as told, some of them damaged."""
    out = bytearray()
    for p in draw(st.lists(st.one_of(target_pdus(), initiator_pdus()), min_size=1,
                           max_size=4)):
        wire = pdu.encode(p, header_digest=header_digest, data_digest=data_digest)
        if draw(st.integers(0, 4)) == 0:
            wire = draw(mutate(wire))
        out += wire
    if draw(st.booleans()):
        out += draw(st.binary(max_size=60))
    return bytes(out)


@st.composite
def framer_input(draw: st.DrawFn) -> bytes:
    b0 = draw(u8)
    b1 = draw(u8)
    opt = targets.framer_options(b0, b1)
    stream = draw(st.one_of(
        pdu_stream(header_digest=bool(opt["header_digest"]),
                   data_digest=bool(opt["data_digest"])),
        oversized_header(bool(opt["header_digest"])),
        st.binary(max_size=300),
    ))
    return bytes([b0, b1]) + stream


@st.composite
def oversized_header(draw: st.DrawFn, header_digest: bool) -> bytes:
    """A BHS (digest right) declaring a data segment of any 24-bit length, then a little data."""
    bhs = bytearray(draw(st.binary(min_size=48, max_size=48)))
    bhs[0] = draw(st.sampled_from([0x25, 0x21, 0x20, 0x23, 0x24, 0x32, 0x3F])) | (bhs[0] & 0xC0)
    bhs[4] = draw(st.sampled_from([0, 0, 1, 255]))
    bhs[5:8] = draw(st.integers(1, 0xFFFFFF)).to_bytes(3, "big")
    header = bytes(bhs) + bytes(4 * bhs[4])
    if header_digest:
        header += struct.pack("<I", crc32c(header))
    return header + draw(st.binary(max_size=100))


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------

KEY_NAMES = [*targets.text.KEYS, "TargetAddress", "X-com.example.Foo", "X#Bar", "Foo",
             "iSCSIProtocolLevel", "MaxRecvDataSegmentLength", "A" * 63, "A" * 64, "Key With Space",
             "Ké", ""]

VALUES = [
    "", "Yes", "No", "yes", "None", "CRC32C", "CRC32C,None", "None,CRC32C", "CRC32C,,None",
    "0", "1", "2", "3", "511", "512", "8192", "65536", "262144", "16777215", "16777216",
    "65535", "65536", "3600", "3601", "0x10", "0X2000", "0x", "0b", "0bAAAA", "0b====",
    "00", "01", "-1", "+1", "1e3", "18446744073709551615", "18446744073709551616",
    "NotUnderstood", "Reject", "Irrelevant", "Discovery", "Normal", "CHAP", "None,CHAP", "CHAP,None",
    "KRB5", "5", "6", "7", "8", "5,7", "0x" + "ab" * 16, "0x" + "ab" * 8, "0x" + "ab" * 1025,
    "0b" + "q80" * 8, "²", "٣", "\uff11\uff12", "127.0.0.1:3260,1", "[::1]:3260,1", "[::1]", "[::1",
    "host:²", "host,²", "host:0", "host:65536", "h o s t:3260", "127.0.0.1:3260,65536",
    "iqn.2024-01.org.example:t1", "RFC3720", "ResponseFence", "FastAbort", "x" * 255, "x" * 256,
    "y" * 300 + "," + "z" * 10, "é" * 200, "\x7f", "a=b",
]


def _value() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(VALUES), st.text(max_size=40),
                     st.text(alphabet="0123456789abcdefxXbB,=:[]", max_size=30))


def pairs_strategy(keys: list[str] | None = None) -> st.SearchStrategy[list[tuple[str, str]]]:
    key = st.one_of(st.sampled_from(keys or KEY_NAMES),
                    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij_#-.", max_size=10))
    return st.lists(st.tuples(key, _value()), max_size=12)


def raw_text(pairs: list[tuple[str, str]]) -> bytes:
    """key=value\\0 without any checking (encode_text would refuse the hostile ones)."""
    return b"".join(k.encode("utf-8", "surrogatepass") + b"=" + v.encode("utf-8", "surrogatepass")
                    + b"\0" for k, v in pairs)


@st.composite
def text_bytes(draw: st.DrawFn, keys: list[str] | None = None) -> bytes:
    data = raw_text(draw(pairs_strategy(keys)))
    if draw(st.integers(0, 3)) == 0:
        data = draw(mutate(data))
    return data


# --------------------------------------------------------------------------------------------
# Login
# --------------------------------------------------------------------------------------------

_GOOD: dict[int, list[pdu.LoginResponse]] = {}


def good_exchange(mode: int) -> list[pdu.LoginResponse]:
    if mode not in _GOOD:
        _GOOD[mode] = targets.good_exchange(mode)
    return _GOOD[mode]


LOGIN_KEYS = [*targets.text.KEYS, "TargetAddress", "X-com.example.Foo", "Foo"]


@st.composite
def hostile_login_response(draw: st.DrawFn, like: pdu.LoginResponse) -> pdu.LoginResponse:
    """A response near a good one: some fields changed, text replaced or damaged."""
    changes: dict[str, object] = {}
    for name, strategy in [
        ("transit", st.booleans()), ("cont", st.booleans()), ("csg", st.integers(0, 3)),
        ("nsg", st.integers(0, 3)),
        ("tsih", st.sampled_from([0, 1, 0x100, 0x1234, 0xFFFF])),
        ("isid", st.sampled_from([bytes(6), targets.ISID[::-1]])),
        ("itt", st.sampled_from([0, 2, RESERVED_TAG])), ("version_active", st.sampled_from([1, 0xFF])),
        ("statsn", u32),
    ]:
        if draw(st.integers(0, 6)) == 0:
            changes[name] = draw(strategy)
    if draw(st.integers(0, 4)) == 0:  # a status: every RFC 7143 11.13.5 one, and others
        status = draw(st.one_of(st.sampled_from([int(x) for x in LoginStatus]), u16))
        changes["status_class"], changes["status_detail"] = status >> 8, status & 0xFF
    how = draw(st.integers(0, 7))
    if how >= 5 and like.data:
        pairs = targets.text.decode_text(like.data)
        i = draw(st.integers(0, len(pairs) - 1))
        if how == 5:  # one value made hostile
            pairs[i] = (pairs[i][0], draw(_value()))
        elif how == 6:  # one pair missing
            del pairs[i]
        else:  # one pair repeated, maybe with another value
            pairs.insert(i, (pairs[i][0], draw(st.one_of(st.just(pairs[i][1]), _value()))))
        changes["data"] = raw_text(pairs)
    elif how == 1:
        changes["data"] = raw_text(draw(pairs_strategy(LOGIN_KEYS)))
    elif how == 2:
        changes["data"] = like.data + raw_text(draw(pairs_strategy(LOGIN_KEYS)))
    elif how == 3:
        changes["data"] = draw(mutate(like.data))
    elif how == 4:
        changes["data"] = draw(st.binary(max_size=80))
    return dataclasses.replace(like, **changes)  # type: ignore[arg-type]


@st.composite
def login_input(draw: st.DrawFn) -> bytes:
    """Mode byte, then Login Response PDUs: a good exchange up to some stage, then hostile
    responses (sometimes a redirect or a C-bit split of the good text)."""
    mode = draw(st.integers(0, targets.LOGIN_MODES - 1))
    good = good_exchange(mode)
    stage = draw(st.integers(0, len(good) - 1))
    responses = list(good[:stage])
    kind = draw(st.integers(0, 5))
    like = good[stage]
    if kind == 0:  # split the good text over C=1 PDUs
        data = like.data
        cut = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=4))))
        pieces = [data[a:b] for a, b in zip([0, *cut], [*cut, len(data)], strict=True)]
        for piece in pieces[:-1]:
            responses.append(dataclasses.replace(like, transit=False, cont=True, nsg=0,
                                                 data=piece))
        responses.append(dataclasses.replace(like, data=pieces[-1]))
    elif kind == 1:  # a redirect
        address = draw(st.one_of(st.sampled_from(VALUES), st.text(max_size=30)))
        responses.append(dataclasses.replace(
            like, status_class=1, status_detail=draw(st.integers(0, 3)),
            data=raw_text([("TargetAddress", address)] * draw(st.integers(0, 2)))))
    else:
        for _ in range(draw(st.integers(1, 3))):
            responses.append(draw(hostile_login_response(like)))
    stream = b"".join(pdu.encode(r) for r in responses)
    return bytes([mode]) + stream


# --------------------------------------------------------------------------------------------
# CHAP
# --------------------------------------------------------------------------------------------

_CHAP_C = ["0x" + "5a" * 16, "0x" + "5a" * 15, "0x" + "5a" * 1024, "0x" + "5a" * 1025,
           "0b" + "Wlpa" * 6, "0b" + "Wlpa" * 5 + "Wg==", "0x5", "0x", "0b", "", "5a" * 16]


@st.composite
def chap_input(draw: st.DrawFn) -> bytes:
    """Mode byte (bit 0 mutual, bit 1 base64, bits 2-3 how many algorithms we offer), the
    target's challenge text, 0xff, its proof text: often right, then damaged one way."""
    mode = draw(u8)
    challenge = [("CHAP_A", draw(st.one_of(st.sampled_from(["5", "6", "7", "8", "5,7", "0x5",
                                                              "05", "9", "255"]), _value()))),
                 ("CHAP_I", draw(st.one_of(st.sampled_from(["0", "7", "255", "256", "0x07"]),
                                           _value()))),
                 ("CHAP_C", draw(st.one_of(st.sampled_from(_CHAP_C), _value())))]
    challenge = [p for p in challenge if draw(st.integers(0, 9))]
    algorithm = 5
    with contextlib.suppress(ValueError):
        algorithm = int(dict(challenge).get("CHAP_A", "5"), 0)
    # What our side sends as its own challenge, to build a right proof from.
    random = targets.make_random()
    identifier, ours = random(1)[0], random(32)
    proof = b""
    with contextlib.suppress(ValueError, KeyError):
        proof = targets.chap_response(targets.ChapAlgorithm(algorithm), identifier,
                                      targets.Secret(draw(st.sampled_from(
                                          [targets.MUTUAL_SECRET, targets.TARGET_SECRET,
                                           "another-secret-123"]))), ours)
    second = [("CHAP_N", draw(st.sampled_from([targets.MUTUAL_USER, targets.TARGET_USER, ""]))),
              ("CHAP_R", draw(st.one_of(st.just("0x" + proof.hex()), _value())) if proof
               else draw(_value()))]
    second = [p for p in second if draw(st.integers(0, 9))]
    data = raw_text(challenge) + b"\xff" + raw_text(second)
    if draw(st.integers(0, 5)) == 0:
        data = draw(mutate(data))
    return bytes([mode]) + data


# --------------------------------------------------------------------------------------------
# SendTargets
# --------------------------------------------------------------------------------------------

ADDRESSES = [
    "127.0.0.1:3260,1", "127.0.0.1", "[::1]:3260,1", "::1", "fe80::1%eth0", "[fe80::1]:0",
    "host.example:3261,2", "host_x.example", "-bad.example", "a..b", "999.1.1.1", "1.2.3",
    "127.0.0.1:3260,1,2", " 127.0.0.1", "127.0.0.1:", "127.0.0.1:03260", "[::1]x", "[1.2.3.4]",
    "127.0.0.1,²", "127.0.0.1:٣٢٦٠", "x" * 254, ("a" * 63 + ".") * 4, "",
]


@st.composite
def sendtargets_bytes(draw: st.DrawFn) -> bytes:
    pairs: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 5)):
            pairs.append(("TargetName", draw(st.sampled_from(
                ["iqn.2024-01.org.example:t1", "iqn.2024-01.org.example:t2", "x", ""]))))
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from(["TargetAddress", "TargetAddress", "TargetAlias", "Foo"]))
            pairs.append((key, draw(st.one_of(st.sampled_from(ADDRESSES), st.text(max_size=30)))))
    data = raw_text(pairs)
    if draw(st.integers(0, 4)) == 0:
        data = draw(mutate(data))
    return data


# --------------------------------------------------------------------------------------------
# iSNS
# --------------------------------------------------------------------------------------------

ISNS_TAGS = [0, 1, 16, 17, 32, 33, 34, 48, 49, 50, 51, 2049, 2065, 7, 99, 0xFFFFFFFF]


def _isns_value(tag: int) -> st.SearchStrategy[bytes]:
    choices = [st.just(b""), st.binary(max_size=24).map(lambda b: b + bytes(-len(b) % 4))]
    if tag in (17, 50, 33, 51):
        choices.append(st.integers(0, 0xFFFFFFFF).map(lambda n: n.to_bytes(4, "big")))
        choices.append(st.sampled_from([3260, 0x10000 | 3260, 0, 70000]).map(
            lambda n: n.to_bytes(4, "big")))
    if tag in (16, 49):
        choices.append(st.sampled_from([
            bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]), bytes(12) + bytes([127, 0, 0, 1]),
            bytes(15) + b"\x01", bytes([0xFE, 0x80]) + bytes(13) + b"\x01", bytes([127, 0, 0, 1]),
            bytes(16), bytes(12)]))
    if tag in (32, 34, 48, 1):
        choices.append(st.sampled_from(["iqn.2024-01.org.example:t1", "", "x" * 60, "é"]).map(
            lambda s: isns.IsnsAttribute.string(tag, s).value))
        choices.append(st.just(b"\xff\xfe\0\0"))
    return st.one_of(choices)


@st.composite
def isns_attribute(draw: st.DrawFn) -> isns.IsnsAttribute:
    tag = draw(st.sampled_from(ISNS_TAGS))
    return isns.IsnsAttribute(tag=tag, value=draw(_isns_value(tag)))


@st.composite
def isns_message(draw: st.DrawFn) -> isns.IsnsMessage:
    function = draw(st.sampled_from([0x8002, 0x8003, 0x8001, 0x8004, 0x0008, 0x8099, 0x0002]))
    response = bool(function & 0x8000)
    attrs = draw(st.lists(isns_attribute(), max_size=14))
    if draw(st.booleans()) and response:
        # a plausible query answer: node, portal, group
        attrs = [isns.IsnsAttribute(tag=0), *attrs]
    return isns.IsnsMessage(
        function=function, transaction_id=draw(u16), attributes=tuple(attrs),
        status=draw(st.sampled_from([0, 0, 9, 2, 0xFFFFFFFF])) if response else None,
        flags=draw(st.sampled_from([0x8000, 0x4000, 0x1000, 0])),
    )


@st.composite
def isns_stream(draw: st.DrawFn) -> bytes:
    b0 = draw(u8)
    out = bytearray()
    for m in draw(st.lists(isns_message(), min_size=1, max_size=3)):
        wire = isns.encode_message(m, max_pdu_payload=draw(st.sampled_from([4, 8, 64, 65532])))
        if draw(st.integers(0, 3)) == 0:
            wire = draw(mutate(wire))
        out += wire
    return bytes([b0]) + bytes(out)


# --------------------------------------------------------------------------------------------
# SCSI
# --------------------------------------------------------------------------------------------


@st.composite
def sense_data(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):  # fixed format
        body = bytearray(draw(st.binary(min_size=18, max_size=32)))
        body[0] = draw(st.sampled_from([0x70, 0x71, 0xF0, 0xF1]))
        body[7] = draw(st.sampled_from([0, 10, len(body) - 8, 255]))
    else:
        descs = bytearray()
        for _ in range(draw(st.integers(0, 4))):
            dtype = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 0x80]))
            payload = draw(st.binary(max_size=14))
            descs += bytes([dtype, len(payload)]) + payload
        body = bytearray([draw(st.sampled_from([0x72, 0x73])), draw(u8), draw(u8), draw(u8),
                          0, 0, 0, min(255, len(descs))]) + descs
    data = bytes(body)
    return draw(mutate(data)) if draw(st.integers(0, 3)) == 0 else data


@st.composite
def scsi_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(sense_data())
    if kind == 1:  # a VPD page
        page = draw(st.sampled_from([0x00, 0x80, 0x83, 0xB0, 0xB2]))
        body = draw(st.binary(max_size=80))
        n = draw(st.sampled_from([len(body), 0, 0xFFFF, len(body) + 3]))
        return bytes([0, page]) + n.to_bytes(2, "big") + body
    if kind == 2:  # REPORT LUNS
        luns = draw(st.lists(st.integers(0, 2**64 - 1), max_size=6))
        n = draw(st.sampled_from([8 * len(luns), 0xFFFFFFFF, 8 * len(luns) + 4]))
        return n.to_bytes(4, "big") + bytes(4) + b"".join(x.to_bytes(8, "big") for x in luns)
    if kind == 3:  # INQUIRY
        body = bytearray(draw(st.binary(min_size=5, max_size=96)))
        body[4] = draw(st.sampled_from([0, 31, 91, 255, len(body) - 5]))
        return bytes(body)
    return draw(st.binary(max_size=64))


# --------------------------------------------------------------------------------------------
# Option syntax
# --------------------------------------------------------------------------------------------

# \udcb3: a byte that is not UTF-8, as argv hands it to Python (surrogateescape).
_SECRETISH = st.text(alphabet="qxzjQXZJ0123456789#%!~^,\\=\udcb3", min_size=1, max_size=24)
_SEC_ITEMS = ["TargetUserName", "TargetSecret", "InitiatorUserName", "InitiatorSecret",
              "MutualAuthentication", "Foo", "targetsecret", ""]


@st.composite
def security_text(draw: st.DrawFn) -> str:
    items = [draw(st.sampled_from(["CHAP", "NONE", "none", "KRB5", "", "CHAP "]))]
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(_SEC_ITEMS))
        value = draw(st.one_of(_SECRETISH, st.sampled_from(["Yes", "No", "user", ""])))
        items.append(f"{key}={value}" if draw(st.integers(0, 5)) else key)
    return ",".join(items)


@st.composite
def syntax_bytes(draw: st.DrawFn) -> bytes:
    which = draw(st.integers(0, 5))
    if which <= 1:
        arg = draw(st.one_of(security_text(), st.text(max_size=40)))
    elif which <= 3:
        key = st.sampled_from(["DataDigest", "HeaderDigest", "MaxRecvDataSegmentLength",
                               "ErrorRecoveryLevel", "FirstBurstLength", "ImmediateData",
                               "InitialR2T", "MaxBurstLength", "Foo", ""])
        value = st.one_of(st.sampled_from(["None", "CRC32C", "Yes", "No", "0", "1", "2", "511",
                                           "512", "16777215", "16777216", "²", "1" * 5000,
                                           "0x200", ""]), st.text(max_size=10))
        arg = ",".join(f"{k}={v}" for k, v in draw(st.lists(st.tuples(key, value), max_size=4)))
    else:
        arg = draw(st.one_of(st.sampled_from([*ADDRESSES, "::", "[::1]:3205", "1.2.3.4:²"]),
                             st.text(max_size=30)))
    raw = arg.encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 5)) == 0:
        raw = draw(mutate(raw))
    return bytes([which]) + raw
