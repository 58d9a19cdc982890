# Golden byte tables for iscsifs/proto/isns.py, derived by hand from RFC 4171 (header 5.1, TLV
# 5.3.1, message layouts 5.6/5.7, attribute formats 6.x), plus answers captured from open-isns
# 0.101 (isnsd) on this machine. Every table is decoded whole, byte by byte and with trailing
# bytes; hypothesis checks round trips and that garbage raises only RemoteProtocolError.

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto.discovery import DiscoveredTarget, Portal
from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError
from iscsifs.proto.isns import (
    DELIMITER,
    EntityProtocol,
    IsnsAttribute,
    IsnsError,
    IsnsFlags,
    IsnsFramer,
    IsnsFunction,
    IsnsMessage,
    IsnsStatus,
    IsnsTag,
    NodeRecord,
    NodeType,
    PortalGroupRecord,
    check_status,
    decode_attributes,
    decode_message,
    dev_attr_qry_node,
    dev_attr_qry_targets,
    dev_attr_reg_initiator,
    dev_dereg,
    dev_get_next,
    dev_get_next_portal_group,
    encode_message,
    node_from_get_next_response,
    portal_group_from_get_next_response,
    targets_from_query_response,
    targets_from_records,
)


def h(text: str) -> bytes:
    """Hex with spaces and line breaks allowed, so tables can be laid out field by field."""
    return bytes.fromhex(text)


ME = "iqn.2005-03.org.x:i"
ME_TLV_VALUE = "69716e2e323030352d30332e6f72672e783a69 00"  # 19 bytes + NUL = 20, no pad needed
T1 = "iqn.2024-01.test:t1"
T1_VALUE = "69716e2e323032342d30312e746573743a7431 00"
T2 = "iqn.2024-01.test:t2"
T2_VALUE = "69716e2e323032342d30312e746573743a7432 00"

# --- Feeding helpers --------------------------------------------------------------------------


def feed_whole(data: bytes) -> list[IsnsMessage]:
    framer = IsnsFramer()
    framer.receive_data(data)
    out = list(framer)
    assert framer.buffered == 0
    return out


def feed_bytewise(data: bytes) -> list[IsnsMessage]:
    framer = IsnsFramer()
    out: list[IsnsMessage] = []
    for i in range(len(data)):
        framer.receive_data(data[i : i + 1])
        out.extend(framer)
    assert framer.buffered == 0
    return out


# A following PDU's first bytes: the framer must keep them and return nothing for them.
TRAILING = h("0001 8002 0008 4c00 0009")


def feed_trailing(data: bytes) -> list[IsnsMessage]:
    framer = IsnsFramer()
    framer.receive_data(data + TRAILING)
    out = list(framer)
    assert framer.buffered == len(TRAILING)
    return out


def decode_all_ways(data: bytes) -> IsnsMessage:
    results = [feed_whole(data), feed_bytewise(data), feed_trailing(data)]
    for result in results:
        assert len(result) == 1
        assert result[0] == results[0][0]
    return results[0][0]


# --- Attribute encodings (RFC 4171 5.3.1 and 6.x) ---------------------------------------------

ATTRIBUTE_GOLDEN = [
    # strings: UTF-8, NUL terminated, padded with NULs to a multiple of 4
    (IsnsAttribute.string(IsnsTag.ISCSI_ALIAS, ""), "00000022 00000004 00000000"),
    (IsnsAttribute.string(IsnsTag.ISCSI_ALIAS, "a"), "00000022 00000004 61000000"),
    (IsnsAttribute.string(IsnsTag.ISCSI_ALIAS, "abc"), "00000022 00000004 61626300"),
    (IsnsAttribute.string(IsnsTag.ISCSI_ALIAS, "abcd"), "00000022 00000008 61626364 00000000"),
    (IsnsAttribute.string(IsnsTag.ISCSI_ALIAS, "é"), "00000022 00000004 c3a90000"),
    (IsnsAttribute.string(IsnsTag.ISCSI_NAME, ME), f"00000020 00000014 {ME_TLV_VALUE}"),
    # 32-bit integers, network byte order
    (IsnsAttribute.uint32(IsnsTag.ISCSI_NODE_TYPE, NodeType.TARGET), "00000021 00000004 00000001"),
    (IsnsAttribute.uint32(IsnsTag.ENTITY_PROTOCOL, 2), "00000002 00000004 00000002"),
    (IsnsAttribute.uint32(IsnsTag.PG_TAG, 0x12345678), "00000033 00000004 12345678"),
    # IP addresses: 16 bytes, IPv4 as IPv4-mapped IPv6 (6.3.1)
    (
        IsnsAttribute.ip(IsnsTag.PORTAL_IP_ADDRESS, "10.1.2.3"),
        "00000010 00000010 00000000 00000000 0000ffff 0a010203",
    ),
    (
        IsnsAttribute.ip(IsnsTag.PG_PORTAL_IP_ADDR, "2001:db8::1"),
        "00000031 00000010 20010db8 00000000 00000000 00000001",
    ),
    # ports: bits 16..31 the port, bit 15 (0x00010000) UDP (6.3.2)
    (IsnsAttribute.port(IsnsTag.PORTAL_TCP_UDP_PORT, 3260), "00000011 00000004 00000cbc"),
    (IsnsAttribute.port(IsnsTag.ESI_PORT, 3260, udp=True), "00000014 00000004 00010cbc"),
    (IsnsAttribute.port(IsnsTag.PG_PORTAL_TCP_UDP_PORT, 65535), "00000032 00000004 0000ffff"),
    # zero-length TLVs and the delimiter
    (IsnsAttribute.nil(IsnsTag.PG_TAG), "00000033 00000000"),
    (IsnsAttribute.nil(IsnsTag.DD_ID), "00000811 00000000"),
    (DELIMITER, "00000000 00000000"),
]


@pytest.mark.parametrize(("attr", "wire"), ATTRIBUTE_GOLDEN)
def test_attribute_golden(attr: IsnsAttribute, wire: str) -> None:
    assert attr.encode() == h(wire)
    assert decode_attributes(h(wire)) == (attr,)
    # With trailing TLVs the first one still decodes the same.
    assert decode_attributes(h(wire) + DELIMITER.encode())[0] == attr


def test_attribute_readers() -> None:
    assert IsnsAttribute.string(IsnsTag.ISCSI_ALIAS, "abcd").as_string() == "abcd"
    assert IsnsAttribute.string(IsnsTag.ISCSI_ALIAS, "é").as_string() == "é"
    assert IsnsAttribute.uint32(IsnsTag.PG_TAG, 7).as_uint32() == 7
    assert IsnsAttribute.port(IsnsTag.ESI_PORT, 3260, udp=True).as_port() == (3260, True)
    assert IsnsAttribute.port(IsnsTag.PORTAL_TCP_UDP_PORT, 860).as_port() == (860, False)
    assert IsnsAttribute.ip(IsnsTag.PORTAL_IP_ADDRESS, "10.1.2.3").as_ip() == "10.1.2.3"
    assert IsnsAttribute.ip(IsnsTag.PORTAL_IP_ADDRESS, "::1").as_ip() == "::1"
    assert IsnsAttribute.nil(IsnsTag.PG_TAG).is_nil


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("00000000000000000000ffff7f000001", "127.0.0.1"),  # IPv4-mapped, RFC 4171 6.3.1
        ("0000000000000000000000007f000001", "127.0.0.1"),  # IPv4-compatible, open-isns 0.101
        ("00000000000000000000000000000001", "::1"),
        ("00000000000000000000000000000000", "::"),
        ("fe800000000000000000000000000001", "fe80::1"),
        ("0a000001", "10.0.0.1"),  # 4 bytes: not RFC 4171, but unambiguous
    ],
)
def test_ip_attribute_decoding(value: str, address: str) -> None:
    assert IsnsAttribute(tag=IsnsTag.PORTAL_IP_ADDRESS, value=h(value)).as_ip() == address


@pytest.mark.parametrize(
    ("attr", "method", "fragment"),
    [
        (IsnsAttribute(tag=IsnsTag.PG_TAG, value=h("00000000 00000001")), "as_uint32", "length 8"),
        (IsnsAttribute(tag=IsnsTag.PORTAL_IP_ADDRESS, value=h("00000000 00000000")), "as_ip", "16"),
        (IsnsAttribute(tag=IsnsTag.ISCSI_NAME, value=h("ff000000")), "as_string", "UTF-8"),
        (IsnsAttribute(tag=IsnsTag.PORTAL_TCP_UDP_PORT, value=b""), "as_port", "expected 4"),
    ],
)
def test_attribute_readers_reject_bad_values(
    attr: IsnsAttribute, method: str, fragment: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=fragment):
        getattr(attr, method)()


def test_string_without_nul_is_bounded_by_length() -> None:
    assert IsnsAttribute(tag=IsnsTag.ISCSI_ALIAS, value=b"abcd").as_string() == "abcd"


@pytest.mark.parametrize(
    "make",
    [
        lambda: IsnsAttribute(tag=1, value=b"abc"),
        lambda: IsnsAttribute(tag=-1),
        lambda: IsnsAttribute(tag=1 << 32),
        lambda: IsnsAttribute.string(IsnsTag.ISCSI_NAME, "a\0b"),
        lambda: IsnsAttribute.uint32(IsnsTag.PG_TAG, 1 << 32),
        lambda: IsnsAttribute.uint32(IsnsTag.PG_TAG, -1),
        lambda: IsnsAttribute.ip(IsnsTag.PORTAL_IP_ADDRESS, "host.example"),
        lambda: IsnsAttribute.port(IsnsTag.PORTAL_TCP_UDP_PORT, 65536),
    ],
)
def test_attribute_builders_reject_misuse(make: object) -> None:
    with pytest.raises(LocalProtocolError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        ("00000020 0000", "truncated"),
        ("00000020 00000003 61620000", "not 4-aligned"),
        ("00000020 00000008 00000000", "runs past"),
        ("00000000 00000000 00000001", "truncated"),
    ],
)
def test_decode_attributes_errors(wire: str, fragment: str) -> None:
    with pytest.raises(RemoteProtocolError, match=fragment):
        decode_attributes(h(wire))


# --- Requests (hand-derived from RFC 4171 5.1 and 5.6.5) --------------------------------------

REQUEST_GOLDEN = [
    (
        "DevAttrReg: register ME as an Initiator, server assigns the entity",
        dev_attr_reg_initiator(ME, transaction_id=1),
        f"""
        0001 0001 0054 8c00 0001 0000
        00000020 00000014 {ME_TLV_VALUE}
        00000001 00000000
        00000000 00000000
        00000020 00000014 {ME_TLV_VALUE}
        00000021 00000004 00000002
        """,
        # version 1, DevAttrReg, 84 payload bytes, flags client|last|first, xid 1, seq 0
        # Source: iSCSI Name; Key: zero-length EID; Delimiter; Operating: name, type Initiator
    ),
    (
        "DevAttrReg with an entity identifier and an alias",
        dev_attr_reg_initiator(ME, transaction_id=0x1234, entity_id="ent", alias="a"),
        f"""
        0001 0001 007c 8c00 1234 0000
        00000020 00000014 {ME_TLV_VALUE}
        00000001 00000004 656e7400
        00000000 00000000
        00000001 00000004 656e7400
        00000002 00000004 00000002
        00000020 00000014 {ME_TLV_VALUE}
        00000021 00000004 00000002
        00000022 00000004 61000000
        """,
        # Key EID "ent"; Operating: EID, Entity Protocol iSCSI (2), name, type, alias "a"
    ),
    (
        "DevAttrQry: targets with their portals and portal groups",
        dev_attr_qry_targets(ME, transaction_id=2),
        f"""
        0001 0002 0078 8c00 0002 0000
        00000020 00000014 {ME_TLV_VALUE}
        00000021 00000004 00000001
        00000000 00000000
        00000020 00000000  00000021 00000000  00000022 00000000
        00000010 00000000  00000011 00000000
        00000030 00000000  00000031 00000000  00000032 00000000  00000033 00000000
        """,
        # Key: Node Type = Target; Operating: zero-length TLVs naming what to return (5.6.5.2)
    ),
    (
        "DevAttrQry: one node by name (isns_ping)",
        dev_attr_qry_node(ME, ME, transaction_id=5),
        f"""
        0001 0002 0050 8c00 0005 0000
        00000020 00000014 {ME_TLV_VALUE}
        00000020 00000014 {ME_TLV_VALUE}
        00000000 00000000
        00000020 00000000  00000021 00000000
        """,
    ),
    (
        "DevGetNext: first target node",
        dev_get_next(ME, None, transaction_id=3),
        f"""
        0001 0003 0050 8c00 0003 0000
        00000020 00000014 {ME_TLV_VALUE}
        00000020 00000000
        00000000 00000000
        00000021 00000004 00000001
        00000020 00000000  00000021 00000000  00000022 00000000
        """,
        # Key: zero-length iSCSI Name = first object; Operating: scope Node Type = Target
        # (non-zero-length first), then the zero-length attributes to return (5.6.5.3)
    ),
    (
        "DevGetNext: the target after T1",
        dev_get_next(ME, T1, transaction_id=4),
        f"""
        0001 0003 0064 8c00 0004 0000
        00000020 00000014 {ME_TLV_VALUE}
        00000020 00000014 {T1_VALUE}
        00000000 00000000
        00000021 00000004 00000001
        00000020 00000000  00000021 00000000  00000022 00000000
        """,
    ),
    (
        "DevGetNext: first portal group",
        dev_get_next_portal_group(ME, None, transaction_id=6),
        f"""
        0001 0003 005c 8c00 0006 0000
        00000020 00000014 {ME_TLV_VALUE}
        00000030 00000000  00000031 00000000  00000032 00000000
        00000000 00000000
        00000030 00000000  00000031 00000000  00000032 00000000  00000033 00000000
        """,
    ),
    (
        "DevDereg: remove our node (no Message Key, 5.6.5.4)",
        dev_dereg(ME, ME, transaction_id=4),
        f"""
        0001 0004 0040 8c00 0004 0000
        00000020 00000014 {ME_TLV_VALUE}
        00000000 00000000
        00000020 00000014 {ME_TLV_VALUE}
        """,
    ),
]


@pytest.mark.parametrize(
    ("message", "wire"),
    [(m, w) for _, m, w in REQUEST_GOLDEN],
    ids=[d for d, _, _ in REQUEST_GOLDEN],
)
def test_request_golden(message: IsnsMessage, wire: str) -> None:
    assert encode_message(message) == h(wire)
    assert decode_all_ways(h(wire)) == message
    assert decode_message(h(wire)) == message


def test_request_structure() -> None:
    message = dev_attr_qry_targets(ME, transaction_id=2)
    assert not message.is_response
    assert message.source == IsnsAttribute.string(IsnsTag.ISCSI_NAME, ME)
    assert message.message_key == (IsnsAttribute.uint32(IsnsTag.ISCSI_NODE_TYPE, 1),)
    assert [a.tag for a in message.operating] == [32, 33, 34, 16, 17, 48, 49, 50, 51]
    assert all(a.is_nil for a in message.operating)
    dereg = dev_dereg(ME, T1, transaction_id=1)
    assert dereg.message_key == ()
    assert dereg.operating == (IsnsAttribute.string(IsnsTag.ISCSI_NAME, T1),)


def test_dev_get_next_portal_group_follow_up_uses_response_key() -> None:
    key = (
        IsnsAttribute.string(IsnsTag.PG_ISCSI_NAME, T1),
        IsnsAttribute.ip(IsnsTag.PG_PORTAL_IP_ADDR, "127.0.0.1"),
        IsnsAttribute.port(IsnsTag.PG_PORTAL_TCP_UDP_PORT, 3260),
    )
    message = dev_get_next_portal_group(ME, key, transaction_id=9)
    assert message.message_key == key
    with pytest.raises(LocalProtocolError):
        dev_get_next_portal_group(ME, key[:2], transaction_id=9)


@pytest.mark.parametrize(
    "make",
    [
        lambda: dev_attr_reg_initiator("", transaction_id=1),
        lambda: dev_attr_qry_targets("", transaction_id=1),
        lambda: dev_dereg(ME, "", transaction_id=1),
        lambda: dev_attr_reg_initiator(ME, transaction_id=0x10000),
        lambda: IsnsMessage(function=IsnsFunction.DEV_ATTR_QRY, transaction_id=1, status=0),
        lambda: IsnsMessage(function=IsnsFunction.DEV_ATTR_QRY_RSP, transaction_id=1),
        lambda: IsnsMessage(function=0x10000, transaction_id=1),
        lambda: IsnsMessage(function=1, transaction_id=1, flags=IsnsFlags.FIRST_PDU),
        lambda: IsnsMessage(function=1, transaction_id=1, attributes=[DELIMITER]),  # type: ignore[arg-type]
        lambda: encode_message(dev_dereg(ME, ME, transaction_id=1), max_pdu_payload=3),
        lambda: encode_message(dev_dereg(ME, ME, transaction_id=1), max_pdu_payload=6),
    ],
)
def test_message_misuse_is_local_protocol_error(make: object) -> None:
    with pytest.raises(LocalProtocolError):
        make()  # type: ignore[operator]


def test_function_response_codes() -> None:
    assert IsnsFunction.DEV_ATTR_REG.response is IsnsFunction.DEV_ATTR_REG_RSP
    assert IsnsFunction.DEV_ATTR_QRY.response == 0x8002
    assert IsnsFunction.DEV_DEREG.response == 0x8004
    assert IsnsFunction.SCN == 0x0008 and IsnsFunction.ESI == 0x000D
    assert IsnsFunction.ESI.response == 0x800D


# --- Responses --------------------------------------------------------------------------------

# DevAttrRegRsp captured from isnsd (open-isns 0.101) for dev_attr_reg_initiator(ME, xid 1).
REG_RESPONSE_CAPTURED = f"""
    0001 8001 0078 4c00 0001 0000
    00000000
    00000001 00000014 69736e732e656e746974792e30303034 00000000
    00000000 00000000
    00000001 00000014 69736e732e656e746974792e30303034 00000000
    00000002 00000004 00000002
    00000020 00000014 {ME_TLV_VALUE}
    00000021 00000004 00000002
"""
# version 1, DevAttrRegRsp, 120 bytes, flags server|last|first; status 0; Key: the assigned
# EID "isns.entity.0004"; Operating: EID, protocol iSCSI, our name, type Initiator


def test_dev_attr_reg_response_captured() -> None:
    message = decode_all_ways(h(REG_RESPONSE_CAPTURED))
    assert message.function == IsnsFunction.DEV_ATTR_REG_RSP
    assert message.flags == IsnsFlags.SERVER
    assert message.status == 0
    assert message.source is None
    check_status(message, IsnsFunction.DEV_ATTR_REG)
    (eid,) = message.message_key
    assert eid.tag == IsnsTag.ENTITY_IDENTIFIER and eid.as_string() == "isns.entity.0004"
    assert [a.tag for a in message.operating] == [1, 2, 32, 33]
    assert message.operating[1].as_uint32() == EntityProtocol.ISCSI
    assert encode_message(message) == h(REG_RESPONSE_CAPTURED)


# DevAttrQryRsp captured from isnsd for dev_attr_qry_targets(ME, xid 2), with targets registered
# by `isnsadm --register entity=ent1 target=T1,alias=disk1 portal=127.0.0.1:3260 pg,pgt=1
# portal=127.0.0.1:3261 pg,pgt=2` and `entity=ent2 target=T2 portal=[::1]:3262 pg,pgt=7`.
# Note the IPv4-compatible (::127.0.0.1) addresses: open-isns does not map IPv4 as 6.3.1 says.
QUERY_RESPONSE_CAPTURED = f"""
    0001 8002 01c8 4c00 0002 0000
    00000000
    00000021 00000004 00000001
    00000000 00000000
    00000020 00000014 {T1_VALUE}
    00000021 00000004 00000001
    00000022 00000008 6469736b31000000
    00000010 00000010 00000000 00000000 00000000 7f000001
    00000011 00000004 00000cbc
    00000030 00000014 {T1_VALUE}
    00000031 00000010 00000000 00000000 00000000 7f000001
    00000032 00000004 00000cbc
    00000033 00000004 00000001
    00000010 00000010 00000000 00000000 00000000 7f000001
    00000011 00000004 00000cbd
    00000030 00000014 {T1_VALUE}
    00000031 00000010 00000000 00000000 00000000 7f000001
    00000032 00000004 00000cbd
    00000033 00000004 00000002
    00000020 00000014 {T2_VALUE}
    00000021 00000004 00000001
    00000010 00000010 00000000000000000000000000000001
    00000011 00000004 00000cbe
    00000030 00000014 {T2_VALUE}
    00000031 00000010 00000000000000000000000000000001
    00000032 00000004 00000cbe
    00000033 00000004 00000007
"""


def test_dev_attr_qry_response_captured() -> None:
    message = decode_all_ways(h(QUERY_RESPONSE_CAPTURED))
    assert message.message_key == (IsnsAttribute.uint32(IsnsTag.ISCSI_NODE_TYPE, 1),)
    assert targets_from_query_response(message) == (
        DiscoveredTarget(
            name=T1,
            portals=(Portal("127.0.0.1", 3260, 1), Portal("127.0.0.1", 3261, 2)),
            alias="disk1",
        ),
        DiscoveredTarget(name=T2, portals=(Portal("::1", 3262, 7),)),
    )


# Hand-derived DevAttrQryRsp exercising the combining rules of RFC 4171 5.6.5.2:
#   T1 has portals 10.0.0.1:3260 (PG tag 1) and 10.0.0.2:3260 (PG tag NULL: no relationship),
#   T2 has no portal group at all, so the portals listed with it are used (tag unknown); its
#   UDP portal is dropped; an Initiator node in the answer is not a target.
QUERY_RESPONSE_RULES = f"""
    0001 8002 01c0 4c00 0002 0000
    00000000
    00000021 00000004 00000001
    00000000 00000000
    00000020 00000014 {T1_VALUE}
    00000021 00000004 00000001
    00000010 00000010 00000000 00000000 0000ffff 0a000001
    00000011 00000004 00000cbc
    00000010 00000010 00000000 00000000 0000ffff 0a000002
    00000011 00000004 00000cbc
    00000030 00000014 {T1_VALUE}
    00000031 00000010 00000000 00000000 0000ffff 0a000001
    00000032 00000004 00000cbc
    00000033 00000004 00000001
    00000030 00000014 {T1_VALUE}
    00000031 00000010 00000000 00000000 0000ffff 0a000002
    00000032 00000004 00000cbc
    00000033 00000000
    00000020 00000014 {T2_VALUE}
    00000021 00000004 00000001
    00000022 00000004 74320000
    00000010 00000010 20010db8 00000000 00000000 00000001
    00000011 00000004 00000cbd
    00000010 00000010 20010db8 00000000 00000000 00000002
    00000011 00000004 00010cbd
    00000020 00000014 {ME_TLV_VALUE}
    00000021 00000004 00000002
"""


def test_dev_attr_qry_response_combining_rules() -> None:
    message = decode_all_ways(h(QUERY_RESPONSE_RULES))
    assert targets_from_query_response(message) == (
        DiscoveredTarget(name=T1, portals=(Portal("10.0.0.1", 3260, 1),)),
        DiscoveredTarget(name=T2, portals=(Portal("2001:db8::1", 3261, None),), alias="t2"),
    )


def _response(function: int, status: int, *attrs: IsnsAttribute, xid: int = 2) -> IsnsMessage:
    return IsnsMessage(
        function=function,
        transaction_id=xid,
        status=status,
        attributes=attrs,
        flags=IsnsFlags.SERVER,
    )


def test_query_status_no_such_entry_means_no_targets() -> None:
    # open-isns answers status 9 when nothing matches; RFC 4171 5.6.5.2 says success, empty.
    wire = "0001 8002 0004 4c00 0002 0000  00000009"
    message = decode_all_ways(h(wire))
    assert message.status == IsnsStatus.NO_SUCH_ENTRY
    assert targets_from_query_response(message) == ()
    empty = _response(IsnsFunction.DEV_ATTR_QRY_RSP, 0, DELIMITER)
    assert targets_from_query_response(empty) == ()


def test_query_error_status_is_typed() -> None:
    message = decode_all_ways(h("0001 8002 0004 4c00 0002 0000  00000005"))
    with pytest.raises(IsnsError) as info:
        targets_from_query_response(message)
    assert info.value.status == IsnsStatus.INVALID_QUERY
    assert info.value.function == IsnsFunction.DEV_ATTR_QRY_RSP
    assert str(info.value) == (
        "iSNS server answered DEV_ATTR_QRY_RSP with status 5 (Invalid Query)"
    )
    assert isinstance(info.value, RemoteProtocolError)
    unknown = IsnsError(4711, 0x8001)
    assert "4711 (unknown status)" in str(unknown)


def test_query_response_of_wrong_function() -> None:
    with pytest.raises(RemoteProtocolError, match="expected DEV_ATTR_QRY_RSP"):
        targets_from_query_response(_response(IsnsFunction.DEV_ATTR_REG_RSP, 0))


def test_check_status() -> None:
    check_status(_response(IsnsFunction.DEV_DEREG_RSP, 0), IsnsFunction.DEV_DEREG)
    with pytest.raises(IsnsError, match=r"status 8 \(Source Unauthorized\)"):
        check_status(_response(IsnsFunction.DEV_DEREG_RSP, 8), IsnsFunction.DEV_DEREG)
    with pytest.raises(RemoteProtocolError, match="expected DEV_DEREG_RSP"):
        check_status(_response(0x8099, 0), IsnsFunction.DEV_DEREG)


# DevGetNextRsp captured from isnsd for dev_get_next(ME, None, xid 3).
GET_NEXT_RESPONSE_CAPTURED = f"""
    0001 8003 0060 4c00 0003 0000
    00000000
    00000020 00000014 {T1_VALUE}
    00000000 00000000
    00000020 00000014 {T1_VALUE}
    00000021 00000004 00000001
    00000022 00000008 6469736b31000000
"""


def test_dev_get_next_response_captured() -> None:
    message = decode_all_ways(h(GET_NEXT_RESPONSE_CAPTURED))
    assert node_from_get_next_response(message) == NodeRecord(
        name=T1, node_type=NodeType.TARGET, alias="disk1"
    )


def test_dev_get_next_end_and_errors() -> None:
    end = _response(IsnsFunction.DEV_GET_NEXT_RSP, IsnsStatus.NO_SUCH_ENTRY)
    assert node_from_get_next_response(end) is None
    assert portal_group_from_get_next_response(end) is None
    key_only = _response(
        IsnsFunction.DEV_GET_NEXT_RSP, 0, IsnsAttribute.string(IsnsTag.ISCSI_NAME, T2), DELIMITER
    )
    assert node_from_get_next_response(key_only) == NodeRecord(name=T2)
    no_key = _response(IsnsFunction.DEV_GET_NEXT_RSP, 0, DELIMITER)
    with pytest.raises(RemoteProtocolError, match="lacks its iSCSI Name"):
        node_from_get_next_response(no_key)
    with pytest.raises(RemoteProtocolError, match="lacks its PG key"):
        portal_group_from_get_next_response(no_key)
    with pytest.raises(IsnsError):
        node_from_get_next_response(_response(IsnsFunction.DEV_GET_NEXT_RSP, 15))


# DevGetNextRsp for the first portal group, as isnsd answers dev_get_next_portal_group().
PG_GET_NEXT_RESPONSE = f"""
    0001 8003 0098 4c00 0006 0000
    00000000
    00000030 00000014 {T1_VALUE}
    00000031 00000010 00000000 00000000 00000000 7f000001
    00000032 00000004 00000cbc
    00000000 00000000
    00000030 00000014 {T1_VALUE}
    00000031 00000010 00000000 00000000 00000000 7f000001
    00000032 00000004 00000cbc
    00000033 00000004 00000001
"""


def test_portal_group_get_next_response() -> None:
    message = decode_all_ways(h(PG_GET_NEXT_RESPONSE))
    step = portal_group_from_get_next_response(message)
    assert step is not None
    key, group = step
    assert key == message.message_key
    assert group == PortalGroupRecord(node_name=T1, address="127.0.0.1", port=3260, tag=1)
    # Without the operating attributes there is no PGT value: NULL, no relationship.
    bare = _response(IsnsFunction.DEV_GET_NEXT_RSP, 0, *key, DELIMITER)
    bare_step = portal_group_from_get_next_response(bare)
    assert bare_step is not None and bare_step[1] is not None and bare_step[1].tag is None


def test_targets_from_records_rules() -> None:
    nodes = [
        NodeRecord(name=T1, node_type=1, portals=(Portal("10.9.9.9", 3260),)),
        NodeRecord(name="iqn.2024-01.test:init", node_type=NodeType.INITIATOR),
        NodeRecord(name=T2, node_type=NodeType.TARGET | NodeType.CONTROL),
        NodeRecord(name=T1, node_type=1, alias="late alias"),
    ]
    groups = [
        PortalGroupRecord(node_name=T1, address="10.0.0.1", port=3260, tag=1),
        PortalGroupRecord(node_name=T1, address="10.0.0.1", port=3260, tag=1),
        PortalGroupRecord(node_name=T1, address="10.0.0.2", port=3260, tag=None),
        PortalGroupRecord(node_name=T2, address="::1", port=3261, tag=0),
    ]
    assert targets_from_records(nodes, groups) == (
        DiscoveredTarget(name=T1, portals=(Portal("10.0.0.1", 3260, 1),), alias="late alias"),
        DiscoveredTarget(name=T2, portals=(Portal("::1", 3261, 0),)),
    )


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ((IsnsAttribute.string(IsnsTag.ISCSI_NAME, ""),), "empty iSCSI Name"),
        (
            (
                IsnsAttribute.string(IsnsTag.PG_ISCSI_NAME, T1),
                IsnsAttribute.uint32(IsnsTag.PG_TAG, 0x10000),
            ),
            "exceeds 65535",
        ),
        (
            (
                IsnsAttribute.string(IsnsTag.ISCSI_NAME, T1),
                IsnsAttribute(tag=IsnsTag.PORTAL_IP_ADDRESS, value=b"\0" * 8),
            ),
            "expected 16",
        ),
    ],
)
def test_query_response_attribute_errors(attrs: tuple[IsnsAttribute, ...], fragment: str) -> None:
    message = _response(IsnsFunction.DEV_ATTR_QRY_RSP, 0, DELIMITER, *attrs)
    with pytest.raises(RemoteProtocolError, match=fragment):
        targets_from_query_response(message)


# DevDeregRsp captured from isnsd: status 0 and a lone delimiter.
DEREG_RESPONSE_CAPTURED = "0001 8004 000c 4c00 0004 0000  00000000  00000000 00000000"


def test_dev_dereg_response_captured() -> None:
    message = decode_all_ways(h(DEREG_RESPONSE_CAPTURED))
    check_status(message, IsnsFunction.DEV_DEREG)
    assert message.attributes == (DELIMITER,)
    assert message.message_key == () and message.operating == ()


# --- Multi-PDU messages (RFC 4171 5.2) --------------------------------------------------------

# dev_dereg(ME, ME, xid 4) split at 24 payload bytes: sequence ids 0, 1, 2; FIRST_PDU on the
# first, LAST_PDU on the last; the split falls inside TLVs, which the RFC allows.
DEREG_PAYLOAD = (
    f"00000020 00000014 {ME_TLV_VALUE} 00000000 00000000 00000020 00000014 {ME_TLV_VALUE}"
)
MULTI_PDU = (
    h("0001 0004 0018 8400 0004 0000")
    + h(DEREG_PAYLOAD)[:24]
    + h("0001 0004 0018 8000 0004 0001")
    + h(DEREG_PAYLOAD)[24:48]
    + h("0001 0004 0010 8800 0004 0002")
    + h(DEREG_PAYLOAD)[48:]
)


def test_multi_pdu_golden() -> None:
    message = dev_dereg(ME, ME, transaction_id=4)
    assert encode_message(message, max_pdu_payload=24) == MULTI_PDU
    assert decode_all_ways(MULTI_PDU) == message


def test_multi_pdu_interleaved_transactions() -> None:
    first = encode_message(dev_dereg(ME, ME, transaction_id=4), max_pdu_payload=24)
    second = encode_message(dev_dereg(ME, T1, transaction_id=5), max_pdu_payload=24)
    pdus_a = [first[:36], first[36:72], first[72:]]
    pdus_b = [second[:36], second[36:72], second[72:]]
    stream = pdus_a[0] + pdus_b[0] + pdus_b[1] + pdus_a[1] + pdus_b[2] + pdus_a[2]
    messages = feed_whole(stream)
    assert [m.transaction_id for m in messages] == [5, 4]
    assert messages[1] == dev_dereg(ME, ME, transaction_id=4)
    assert feed_bytewise(stream) == messages


def test_several_messages_in_one_stream() -> None:
    stream = h(REG_RESPONSE_CAPTURED) + h(QUERY_RESPONSE_CAPTURED) + h(DEREG_RESPONSE_CAPTURED)
    functions = [m.function for m in feed_whole(stream)]
    assert functions == [0x8001, 0x8002, 0x8004]
    assert [m.function for m in feed_bytewise(stream)] == functions


# --- Framing errors ---------------------------------------------------------------------------

FRAMING_ERRORS = [
    ("0002 0001 0000 8c00 0001 0000", "version 2"),
    ("0001 0001 0000 ac00 0001 0000", "authentication block"),
    ("0001 0001 0000 8800 0001 0001", "without a first PDU"),
    ("0001 0001 0000 8c00 0001 0001", "sequence id 1, expected 0"),
    ("0001 0001 0000 8400 0001 0000  0001 0001 0000 8800 0001 0002", "out of order"),
    ("0001 0001 0000 8400 0001 0000  0001 0001 0000 8400 0001 0000", "restarted"),
    ("0001 8001 0000 4c00 0001 0000", "no status code"),
    ("0001 8001 0002 4c00 0001 0000  0000", "not 4-byte aligned"),
    ("0001 0001 0004 8c00 0001 0000  00000020", "truncated"),
    ("0001 0001 000c 8c00 0001 0000  00000020 00000003 61620000", "not 4-aligned"),
]


@pytest.mark.parametrize(("wire", "fragment"), FRAMING_ERRORS)
def test_framing_errors(wire: str, fragment: str) -> None:
    for feed in (feed_whole, feed_bytewise):
        with pytest.raises(RemoteProtocolError, match=fragment) as info:
            feed(h(wire))
        assert "\n" not in str(info.value)


def test_framing_error_is_sticky() -> None:
    framer = IsnsFramer()
    framer.receive_data(h("0002 0001 0000 8c00 0001 0000"))
    with pytest.raises(RemoteProtocolError) as first:
        framer.next_message()
    with pytest.raises(RemoteProtocolError) as again:
        framer.receive_data(h(DEREG_RESPONSE_CAPTURED))
    assert again.value is first.value
    with pytest.raises(RemoteProtocolError):
        framer.next_message()


def test_framer_bounds() -> None:
    big = IsnsFramer(max_message_size=16)
    big.receive_data(h("0001 8004 0014 4c00 0004 0000") + bytes(20))
    with pytest.raises(RemoteProtocolError, match="exceeds 16 bytes"):
        big.next_message()
    pending = IsnsFramer(max_pending=1)
    pending.receive_data(h("0001 0001 0000 8400 0001 0000  0001 0001 0000 8400 0002 0000"))
    with pytest.raises(RemoteProtocolError, match="too many unfinished"):
        pending.next_message()


def test_framer_incomplete_header_and_payload_wait() -> None:
    framer = IsnsFramer()
    wire = h(DEREG_RESPONSE_CAPTURED)
    framer.receive_data(wire[:11])
    assert framer.next_message() is None
    framer.receive_data(wire[11:-1])
    assert framer.next_message() is None
    framer.receive_data(wire[-1:])
    assert framer.next_message() is not None
    assert framer.next_message() is None


def test_decode_message_requires_exactly_one() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(h(DEREG_RESPONSE_CAPTURED)[:-1])
    with pytest.raises(RemoteProtocolError):
        decode_message(h(DEREG_RESPONSE_CAPTURED) + b"\0")


# --- Properties -------------------------------------------------------------------------------

_values = st.binary(max_size=24).map(lambda b: b + b"\0" * (-len(b) % 4))
_attributes = st.builds(
    lambda tag, value: IsnsAttribute(tag=tag, value=value),
    st.one_of(st.sampled_from(list(IsnsTag)), st.integers(0, 0xFFFFFFFF)),
    _values,
)


@st.composite
def _messages(draw: st.DrawFn) -> IsnsMessage:
    function = draw(st.one_of(st.sampled_from(list(IsnsFunction)), st.integers(0, 0xFFFF)))
    response = bool(function & 0x8000)
    return IsnsMessage(
        function=function,
        transaction_id=draw(st.integers(0, 0xFFFF)),
        attributes=tuple(draw(st.lists(_attributes, max_size=6))),
        status=draw(st.integers(0, 0xFFFFFFFF)) if response else None,
        flags=draw(st.sampled_from([0, IsnsFlags.CLIENT, IsnsFlags.SERVER]))
        | draw(st.sampled_from([0, IsnsFlags.REPLACE])),
    )


@given(
    _messages(), st.integers(1, 10).map(lambda n: 4 * n), st.lists(st.integers(1, 50), max_size=30)
)
def test_round_trip_in_any_chunking(
    message: IsnsMessage, max_pdu_payload: int, cuts: list[int]
) -> None:
    wire = encode_message(message, max_pdu_payload=max_pdu_payload)
    framer = IsnsFramer()
    out: list[IsnsMessage] = []
    offset = 0
    for cut in [*cuts, len(wire)]:
        framer.receive_data(wire[offset : offset + cut])
        offset += cut
        out.extend(framer)
    assert out == [message]
    assert framer.buffered == 0


@given(st.binary(max_size=200), st.integers(1, 64))
def test_garbage_only_raises_remote_protocol_error(data: bytes, chunk: int) -> None:
    framer = IsnsFramer(max_message_size=4096)
    try:
        for i in range(0, len(data), chunk):
            framer.receive_data(data[i : i + chunk])
            for message in framer:
                assert isinstance(message, IsnsMessage)
    except RemoteProtocolError as exc:
        assert "\n" not in str(exc)


_discovery_tags = st.sampled_from(
    [
        IsnsTag.DELIMITER,
        IsnsTag.ENTITY_IDENTIFIER,
        IsnsTag.ISCSI_NAME,
        IsnsTag.ISCSI_NODE_TYPE,
        IsnsTag.ISCSI_ALIAS,
        IsnsTag.PORTAL_IP_ADDRESS,
        IsnsTag.PORTAL_TCP_UDP_PORT,
        IsnsTag.PG_ISCSI_NAME,
        IsnsTag.PG_PORTAL_IP_ADDR,
        IsnsTag.PG_PORTAL_TCP_UDP_PORT,
        IsnsTag.PG_TAG,
    ]
)
_discovery_values = st.one_of(
    _values,
    st.sampled_from(
        [
            b"",
            b"\0\0\0\x01",
            b"\0\0\x0c\xbc",
            b"\0\x01\x0c\xbc",
            IsnsAttribute.string(IsnsTag.ISCSI_NAME, T1).value,
            IsnsAttribute.ip(IsnsTag.PORTAL_IP_ADDRESS, "10.0.0.1").value,
            IsnsAttribute.ip(IsnsTag.PORTAL_IP_ADDRESS, "::1").value,
        ]
    ),
)


@given(
    st.lists(
        st.builds(lambda t, v: IsnsAttribute(tag=t, value=v), _discovery_tags, _discovery_values),
        max_size=20,
    )
)
def test_query_response_garbage_only_raises_remote_protocol_error(
    attrs: list[IsnsAttribute],
) -> None:
    message = _response(IsnsFunction.DEV_ATTR_QRY_RSP, 0, *attrs)
    try:
        targets = targets_from_query_response(message)
    except RemoteProtocolError:
        return
    for target in targets:
        assert isinstance(target, DiscoveredTarget)
        assert target.name
        assert len(set(target.portals)) == len(target.portals)
