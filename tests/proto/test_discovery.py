# Golden tables and properties for iscsifs/proto/discovery.py: TargetAddress (RFC 7143 13.9),
# SendTargets records (RFC 7143 appendix C), iSCSI names (RFC 3720 3.2.6.3) and user portals.

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto.discovery import (
    DiscoveredTarget,
    Portal,
    is_valid_iscsi_name,
    parse_portal_argument,
    parse_sendtargets,
    parse_target_address,
)
from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError

# --- Portal -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("portal", "text", "target_address"),
    [
        (Portal("1.2.3.4", 3260, None), "1.2.3.4:3260", "1.2.3.4:3260"),
        (Portal("1.2.3.4", 3261, 2), "1.2.3.4:3261", "1.2.3.4:3261,2"),
        (Portal("::1", 3260, 1), "[::1]:3260", "[::1]:3260,1"),
        (Portal("fe80::1%eth0", 860, 0), "[fe80::1%eth0]:860", "[fe80::1%eth0]:860,0"),
        (Portal("san.example.com", 3260), "san.example.com:3260", "san.example.com:3260"),
    ],
)
def test_portal_text_forms(portal: Portal, text: str, target_address: str) -> None:
    assert str(portal) == text
    assert portal.target_address() == target_address
    assert parse_target_address(target_address) == portal


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("", 3260, None), "empty address"),
        (("[::1]", 3260, None), "invalid IPv6"),
        (("1.2.3.4", 0, None), "bad portal port"),
        (("1.2.3.4", 65536, None), "bad portal port"),
        (("1.2.3.4", 3260, -1), "bad portal group tag"),
        (("1.2.3.4", 3260, 65536), "bad portal group tag"),
        (("bad host", 3260, None), "invalid host name"),
    ],
)
def test_portal_rejects_bad_fields(args: tuple[str, int, int | None], fragment: str) -> None:
    with pytest.raises(LocalProtocolError, match=fragment):
        Portal(*args)


def test_discovered_target_requires_name_and_tuple() -> None:
    with pytest.raises(LocalProtocolError):
        DiscoveredTarget(name="", portals=())
    with pytest.raises(LocalProtocolError):
        DiscoveredTarget(name="iqn.2001-04.com.example:t", portals=[])  # type: ignore[arg-type]
    target = DiscoveredTarget(name="iqn.2001-04.com.example:t", portals=())
    assert target.alias is None


# --- TargetAddress ----------------------------------------------------------------------------

TARGET_ADDRESSES = [
    ("10.0.0.1", Portal("10.0.0.1", 3260, None)),
    ("10.0.0.1:3261", Portal("10.0.0.1", 3261, None)),
    ("10.0.0.1:3260,1", Portal("10.0.0.1", 3260, 1)),
    ("10.0.0.1,7", Portal("10.0.0.1", 3260, 7)),
    ("10.0.0.1:65535,65535", Portal("10.0.0.1", 65535, 65535)),
    ("10.0.0.1:3260,0", Portal("10.0.0.1", 3260, 0)),
    ("[fe80::1]:3260,1", Portal("fe80::1", 3260, 1)),
    ("[fe80::1],1", Portal("fe80::1", 3260, 1)),
    ("[fe80::1]", Portal("fe80::1", 3260, None)),
    ("[::1]:3262", Portal("::1", 3262, None)),
    ("[2001:db8::10]:860,4", Portal("2001:db8::10", 860, 4)),
    ("[::ffff:10.1.2.3]:3260,1", Portal("::ffff:10.1.2.3", 3260, 1)),
    # RFC 7143 wants brackets, but a bare IPv6 address is unambiguous without a port.
    ("fe80::1,1", Portal("fe80::1", 3260, 1)),
    ("::1", Portal("::1", 3260, None)),
    ("san.example.com", Portal("san.example.com", 3260, None)),
    ("san.example.com:3261,2", Portal("san.example.com", 3261, 2)),
    ("localhost:3260,1", Portal("localhost", 3260, 1)),
    ("storage-1:3260", Portal("storage-1", 3260, None)),
]


@pytest.mark.parametrize(("value", "portal"), TARGET_ADDRESSES)
def test_parse_target_address_golden(value: str, portal: Portal) -> None:
    assert parse_target_address(value) == portal


def test_parse_target_address_default_port() -> None:
    assert parse_target_address("10.0.0.1,1", default_port=3261) == Portal("10.0.0.1", 3261, 1)
    assert parse_target_address("[::1]", default_port=860) == Portal("::1", 860, None)


JUNK_TARGET_ADDRESSES = [
    "",
    " 10.0.0.1",
    "10.0.0.1 ",
    ",1",
    "10.0.0.1:",
    "10.0.0.1:abc",
    "10.0.0.1:0",
    "10.0.0.1:65536",
    "10.0.0.1:3260,",
    "10.0.0.1:3260,x",
    "10.0.0.1:3260,65536",
    "10.0.0.1:3260,-1",
    "10.0.0.1:3260,1,2",
    "999.1.1.1:3260",
    "1.2.3:3260",
    "[::1",
    "[::1]:",
    "[::1]3260",
    "[zzz]:3260",
    "[1.2.3.4]:3260",
    "[]:3260",
    "fe80::zz",
    "a..b",
    "-host",
    "host_:x",
    "ho st",
    "host\n",
]


@pytest.mark.parametrize("value", JUNK_TARGET_ADDRESSES)
def test_parse_target_address_junk(value: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_target_address(value)
    assert "\n" not in str(info.value)


def test_junk_is_cut_short_in_messages() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_target_address("h" * 300 + ".-bad")
    assert len(str(info.value)) < 200
    with pytest.raises(ValueError) as user:
        parse_portal_argument("[" + "1" * 300, 3260)
    assert len(str(user.value)) < 200


# --- SendTargets ------------------------------------------------------------------------------

T1 = "iqn.2001-04.com.example:storage.disk1"
T2 = "iqn.2001-04.com.example:storage.disk2"


def test_parse_sendtargets_golden() -> None:
    pairs = [
        ("TargetName", T1),
        ("TargetAddress", "10.0.0.1:3260,1"),
        ("TargetAddress", "[fe80::1]:3260,2"),
        ("TargetAlias", "disk one"),
        ("TargetName", T2),
        ("SomethingElse", "ignored"),
    ]
    assert parse_sendtargets(pairs) == (
        DiscoveredTarget(
            name=T1,
            portals=(Portal("10.0.0.1", 3260, 1), Portal("fe80::1", 3260, 2)),
            alias="disk one",
        ),
        DiscoveredTarget(name=T2, portals=()),
    )


def test_parse_sendtargets_empty_and_unrelated_keys() -> None:
    assert parse_sendtargets([]) == ()
    assert parse_sendtargets([("HeaderDigest", "None")]) == ()


def test_parse_sendtargets_merges_duplicates_in_first_seen_order() -> None:
    pairs = [
        ("TargetName", T1),
        ("TargetAddress", "10.0.0.1:3260,1"),
        ("TargetAddress", "10.0.0.1:3260,1"),
        ("TargetName", T2),
        ("TargetAddress", "10.0.0.2:3260,1"),
        ("TargetName", T1),
        ("TargetAddress", "10.0.0.3:3260,1"),
        ("TargetAddress", "10.0.0.1:3260,1"),
    ]
    assert parse_sendtargets(pairs) == (
        DiscoveredTarget(
            name=T1, portals=(Portal("10.0.0.1", 3260, 1), Portal("10.0.0.3", 3260, 1))
        ),
        DiscoveredTarget(name=T2, portals=(Portal("10.0.0.2", 3260, 1),)),
    )


def test_parse_sendtargets_same_address_other_tag_is_another_portal() -> None:
    pairs = [("TargetName", T1), ("TargetAddress", "10.0.0.1,1"), ("TargetAddress", "10.0.0.1,2")]
    (target,) = parse_sendtargets(pairs)
    assert [p.tpgt for p in target.portals] == [1, 2]


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        ([("TargetAddress", "10.0.0.1:3260,1")], "TargetAddress before any TargetName"),
        ([("TargetAlias", "x"), ("TargetName", T1)], "TargetAlias before any TargetName"),
        ([("TargetName", "")], "empty TargetName"),
        ([("TargetName", T1), ("TargetAddress", "10.0.0.1:x")], "invalid TargetAddress port"),
    ],
)
def test_parse_sendtargets_errors(pairs: list[tuple[str, str]], fragment: str) -> None:
    with pytest.raises(RemoteProtocolError, match=fragment):
        parse_sendtargets(pairs)


# --- iSCSI names ------------------------------------------------------------------------------

VALID_NAMES = [
    "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
    "iqn.2001-04.com.example",
    "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
    "iqn.1992-08.com.netapp:sn.12345",
    "iqn.2005-03.org.open-iscsi:9a1b2c3d",
    "iqn.2024-01.xn--bcher-kva.example:lun",
    "iqn.2024-01.com.example:bücher",
    "eui.02004567A425678D",
    "eui.02004567a425678d",
    "naa.52004567BA64678D",
    "naa.52004567BA64678D52004567BA64678D",
    "iqn.2001-04.com.example:" + "a" * (223 - len("iqn.2001-04.com.example:")),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_iscsi_names(name: str) -> None:
    assert is_valid_iscsi_name(name) is None


INVALID_NAMES = [
    ("", "empty"),
    ("iqn.2001-04.com.example:" + "a" * 200, "224 bytes long"),
    ("iqn.2001-04.com.example:" + "é" * 100, "bytes long"),
    ("IQN.2001-04.com.example", "must start with"),
    ("iqn.2001-04.com.Example:x", "lower case"),
    ("iqn.2001-04.com.example:x y", "not allowed"),
    ("iqn.2001-04.com.example:a_b", "not allowed"),
    ("iqn.2001-04.com.example:a/b", "not allowed"),
    ("iqn.2001-4.com.example", "needs a date"),
    ("iqn.01-04.com.example", "needs a date"),
    ("iqn.2001-13.com.example", "month 13"),
    ("iqn.2001-00.com.example", "month 00"),
    ("iqn.2001-04", "reversed domain"),
    ("iqn.2001-04:x", "reversed domain"),
    ("iqn.2001-04.", "reversed domain"),
    ("iqn.2001-04.com..example", "reversed domain"),
    ("iqn.2001-04.-com.example", "reversed domain"),
    ("iqn.2001-04.com.example:", "nothing follows"),
    ("eui.02004567A425678", "16 hexadecimal"),
    ("eui.02004567A425678DX", "16 hexadecimal"),
    ("eui.0200456GA425678D", "16 hexadecimal"),
    ("naa.5200", "16 or 32"),
    ("naa." + "5" * 24, "16 or 32"),
    ("target1", "must start with"),
]


@pytest.mark.parametrize(("name", "fragment"), INVALID_NAMES)
def test_invalid_iscsi_names(name: str, fragment: str) -> None:
    reason = is_valid_iscsi_name(name)
    assert reason is not None
    assert fragment in reason
    assert "\n" not in reason


# --- Portal arguments typed by users ----------------------------------------------------------

PORTAL_ARGUMENTS = [
    ("1.2.3.4", (("1.2.3.4", 3260))),
    ("1.2.3.4:3261", ("1.2.3.4", 3261)),
    ("::1", ("::1", 3260)),
    ("[::1]:3261", ("::1", 3261)),
    ("[::1]", ("::1", 3260)),
    ("fe80::1", ("fe80::1", 3260)),
    ("fe80::1%eth0", ("fe80::1%eth0", 3260)),
    ("[2001:db8::1]:860", ("2001:db8::1", 860)),
    ("host.example", ("host.example", 3260)),
    ("host:3261", ("host", 3261)),
    ("  host:3261 \n", ("host", 3261)),
    ("localhost", ("localhost", 3260)),
]


@pytest.mark.parametrize(("text", "expected"), PORTAL_ARGUMENTS)
def test_parse_portal_argument_golden(text: str, expected: tuple[str, int]) -> None:
    assert parse_portal_argument(text, 3260) == expected


def test_parse_portal_argument_default_port() -> None:
    assert parse_portal_argument("127.0.0.1", 3205) == ("127.0.0.1", 3205)
    assert parse_portal_argument("::1", 3205) == ("::1", 3205)
    assert parse_portal_argument("[::1]:3206", 3205) == ("::1", 3206)


JUNK_PORTAL_ARGUMENTS = [
    "",
    "   ",
    "host:",
    ":3260",
    "host:port",
    "host:0",
    "host:99999",
    "1.2.3.4:3260,1",
    "1.2.3.4 3260",
    "[::1",
    "[::1]x",
    "[::1]:",
    "[host]:3260",
    "999.1.2.3",
    "fe80::zz",
    "a..b",
    "h@st",
]


@pytest.mark.parametrize("text", JUNK_PORTAL_ARGUMENTS)
def test_parse_portal_argument_junk(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_portal_argument(text, 3260)
    assert "\n" not in str(info.value)


# --- Properties -------------------------------------------------------------------------------

_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_hostname = (
    st.lists(_label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: not h.replace(".", "").isdigit())
)
_address = st.one_of(_ipv4, _ipv6, _hostname)
_portals = st.builds(
    Portal,
    _address,
    st.integers(1, 65535),
    st.one_of(st.none(), st.integers(0, 65535)),
)


@given(_portals)
def test_target_address_round_trip(portal: Portal) -> None:
    assert parse_target_address(portal.target_address()) == portal


@given(_portals)
def test_portal_argument_round_trip(portal: Portal) -> None:
    assert parse_portal_argument(str(portal), 1) == (portal.address, portal.port)


@given(st.text(max_size=60))
def test_target_address_garbage_only_raises_remote_protocol_error(text: str) -> None:
    try:
        portal = parse_target_address(text)
    except RemoteProtocolError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(portal, Portal)


@given(st.text(max_size=60))
def test_portal_argument_garbage_only_raises_value_error(text: str) -> None:
    try:
        address, port = parse_portal_argument(text, 3260)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert 1 <= port <= 65535
        assert Portal(address, port).address == address


@given(st.text(max_size=300))
def test_name_validator_never_raises(name: str) -> None:
    reason = is_valid_iscsi_name(name)
    assert reason is None or (isinstance(reason, str) and reason)


_keys = st.sampled_from(["TargetName", "TargetAddress", "TargetAlias", "Other"])


@given(st.lists(st.tuples(_keys, st.text(max_size=30)), max_size=12))
def test_sendtargets_garbage_only_raises_remote_protocol_error(
    pairs: list[tuple[str, str]],
) -> None:
    try:
        targets = parse_sendtargets(pairs)
    except RemoteProtocolError:
        return
    names = [t.name for t in targets]
    assert len(names) == len(set(names))
    for target in targets:
        assert len(target.portals) == len(set(target.portals))
