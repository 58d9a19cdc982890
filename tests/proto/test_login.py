# Tests of iscsifs/proto/login.py: whole login conversations (the tgtd ones are byte-exact
# transcripts of what tgtd 1.0.85 sent this code), CHAP one-way and mutual, redirects, every
# RFC 7143 11.13.5 status, C-bit continuation down to one byte per PDU, targets that offer keys
# or do not transit, every protocol violation the machine must catch, every (state, input) pair
# of its transition table, and that secrets never show.

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto import pdu
from iscsifs.proto.chap import ChapAlgorithm, ChapCredentials, Secret
from iscsifs.proto.errors import IscsiError, LocalProtocolError, RemoteProtocolError
from iscsifs.proto.login import (
    DEFAULT_OFFERS,
    LOGIN_TRANSITIONS,
    MAX_LOGIN_EXCHANGES,
    AuthenticationFailed,
    AuthorizationFailed,
    CantIncludeInSession,
    InitiatorError,
    InvalidDuringLogin,
    LoginComplete,
    LoginConfig,
    LoginError,
    LoginInput,
    LoginRedirect,
    LoginState,
    LoginStateMachine,
    LoginStatus,
    MissingParameter,
    MutualAuthenticationFailed,
    OutOfResources,
    ServiceUnavailable,
    SessionDoesNotExist,
    SessionTypeNotSupported,
    TargetError,
    TargetNotFound,
    TargetRemoved,
    TooManyConnections,
    UnknownLoginStatus,
    UnsupportedVersion,
    default_offers,
    login_error_for,
    parse_target_address,
)
from iscsifs.proto.pdu import LoginRequest, LoginResponse
from iscsifs.proto.text import NegotiatedParams, decode_text, encode_text

ISID = bytes.fromhex("800000000001")
INITIATOR = "iqn.2024-01.test:init"
TARGET = "iqn.2024-01.test:tgt1"
USER1 = ChapCredentials(user="user1", secret=Secret("secretsecret1"))
TGTUSER = ChapCredentials(user="tgtuser", secret=Secret("tgtsecret12345"))
OUR_CHALLENGE = bytes.fromhex("c7d6f9c52b6106a56ccba9a176024fffb0534f75edc195c6a8c3f6072cb8c4f3")


def no_random(n: int) -> bytes:
    raise AssertionError("this login must not draw random bytes")


def scripted(*chunks: bytes) -> Callable[[int], bytes]:
    queue = list(chunks)
    return lambda n: queue.pop(0)


def config(**kw: object) -> LoginConfig:
    base: dict[str, object] = {
        "initiator_name": INITIATOR, "target_name": TARGET, "isid": ISID, "cmdsn": 1, "itt": 1,
    }
    base.update(kw)
    return LoginConfig(**base)  # type: ignore[arg-type]


def response(
    req: LoginRequest,
    data: bytes = b"",
    *,
    transit: bool | None = None,
    cont: bool = False,
    csg: int | None = None,
    nsg: int | None = None,
    status: int = 0,
    tsih: int | None = None,
    statsn: int = 0,
    isid: bytes | None = None,
    itt: int | None = None,
    version_active: int = 0,
) -> LoginResponse:
    """The target's answer to req; by default it echoes everything and follows T."""
    transit = req.transit if transit is None else transit
    nsg = req.nsg if nsg is None else nsg
    if tsih is None:
        tsih = 0x100 if (transit and nsg == 3 and status == 0) else req.tsih
    return LoginResponse(
        transit=transit, cont=cont, csg=req.csg if csg is None else csg, nsg=nsg,
        version_max=0, version_active=version_active, isid=ISID if isid is None else isid,
        tsih=tsih, itt=req.itt if itt is None else itt, statsn=statsn, exp_cmdsn=1,
        max_cmdsn=2, status_class=status >> 8, status_detail=status & 0xFF, data=data,
    )


def fields(req: LoginRequest) -> tuple[int, int, bool, bool, bytes]:
    return (req.csg, req.nsg, req.transit, req.cont, req.data)


# --------------------------------------------------------------------------------------------
# Transcripts of tgtd 1.0.85
# --------------------------------------------------------------------------------------------

IDENTITY = b"InitiatorName=iqn.2024-01.test:init\x00SessionType=Normal\x00TargetName=" + \
    TARGET.encode() + b"\x00"
OFFERS = (
    b"HeaderDigest=None\x00DataDigest=None\x00MaxRecvDataSegmentLength=262144\x00"
    b"MaxBurstLength=1048576\x00FirstBurstLength=262144\x00ImmediateData=Yes\x00InitialR2T=No\x00"
    b"MaxOutstandingR2T=1\x00ErrorRecoveryLevel=0\x00DefaultTime2Wait=2\x00"
    b"DefaultTime2Retain=0\x00MaxConnections=1\x00DataPDUInOrder=Yes\x00DataSequenceInOrder=Yes\x00"
)
TGTD_OPERATIONAL = (
    b"HeaderDigest=None\x00DataDigest=None\x00MaxBurstLength=262144\x00FirstBurstLength=65536\x00"
    b"ImmediateData=Yes\x00InitialR2T=Yes\x00MaxOutstandingR2T=1\x00ErrorRecoveryLevel=0\x00"
    b"DefaultTime2Wait=2\x00DefaultTime2Retain=0\x00MaxConnections=1\x00DataPDUInOrder=Yes\x00"
    b"DataSequenceInOrder=Yes\x00"
)
TGTD_PARAMS = NegotiatedParams(
    max_recv_data_segment_length=262144, max_xmit_data_segment_length=8192,
    max_burst_length=262144, first_burst_length=65536, default_time2retain=0,
    target_portal_group_tag=1,
)


def test_first_request_bytes() -> None:
    """The first PDU on the wire, laid out by hand from RFC 7143 section 11.12."""
    req = LoginStateMachine(config(), random=no_random).start()
    data = IDENTITY + b"AuthMethod=None\x00"
    header = struct.pack(
        ">BBBBB3s6sHIHHII16x",
        0x43,  # immediate | Login Request
        0x81,  # T=1, C=0, CSG=0 (security), NSG=1 (operational)
        0, 0,  # Version-max, Version-min
        0, len(data).to_bytes(3, "big"),
        ISID, 0,  # TSIH 0: a new session
        1, 0, 0,  # ITT, CID, reserved
        1, 0,  # CmdSN, ExpStatSN
    )
    assert pdu.encode(req) == header + data + b"\x00" * (-len(data) % 4)


def test_no_authentication_tgtd() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = sm.start()
    assert fields(req) == (0, 1, True, False, IDENTITY + b"AuthMethod=None\x00")
    assert sm.state is LoginState.SECURITY
    req = sm.receive(response(req, b"TargetPortalGroupTag=1\x00AuthMethod=None\x00", statsn=0))
    assert isinstance(req, LoginRequest)
    assert fields(req) == (1, 3, True, False, OFFERS)
    assert req.exp_statsn == 1
    assert sm.state is LoginState.OPERATIONAL
    done = sm.receive(response(req, TGTD_OPERATIONAL, statsn=1, tsih=256))
    assert done == LoginComplete(
        params=TGTD_PARAMS, tsih=256, statsn=1, exp_statsn=2, cmdsn=1, exp_cmdsn=1,
        max_cmdsn=2, target_alias=None, portal_group_tag=1, auth_method="None",
        chap_algorithm=None, not_understood=(),
    )
    assert sm.state is LoginState.COMPLETE


def test_skip_security_tgtd() -> None:
    sm = LoginStateMachine(config(skip_security=True), random=no_random)
    req = sm.start()
    assert sm.state is LoginState.OPERATIONAL
    assert fields(req) == (1, 3, True, False, IDENTITY + OFFERS)
    done = sm.receive(response(req, b"TargetPortalGroupTag=1\x00" + TGTD_OPERATIONAL, tsih=512))
    assert isinstance(done, LoginComplete)
    assert done.params == TGTD_PARAMS
    assert done.tsih == 512


def test_discovery_tgtd() -> None:
    cfg = config(target_name=None, session_type="Discovery",
                 operational_offers=default_offers("Discovery"))
    sm = LoginStateMachine(cfg, random=no_random)
    req = sm.start()
    assert req.data == (b"InitiatorName=iqn.2024-01.test:init\x00SessionType=Discovery\x00"
                        b"AuthMethod=None\x00")
    req = sm.receive(response(req, b"TargetPortalGroupTag=1\x00AuthMethod=None\x00"))
    assert isinstance(req, LoginRequest)
    assert req.data == (b"HeaderDigest=None\x00DataDigest=None\x00"
                        b"MaxRecvDataSegmentLength=262144\x00ErrorRecoveryLevel=0\x00"
                        b"DefaultTime2Wait=2\x00DefaultTime2Retain=0\x00")
    done = sm.receive(response(req, b"HeaderDigest=None\x00DataDigest=None\x00"
                                    b"ErrorRecoveryLevel=0\x00DefaultTime2Wait=2\x00"
                                    b"DefaultTime2Retain=0\x00"))
    assert isinstance(done, LoginComplete)
    assert done.params.session_type == "Discovery"


TGTD_CHALLENGE = (
    b"CHAP_A=5\x00CHAP_I=1\x00CHAP_C=0x0df274f37bc3b67976c4dc8c0e74669f607e5bb64869b9032d2acc12"
    b"2d489d6dc49c60e4cdefe697ed322c71e1e43a5b6643\x00"
)


def test_one_way_chap_tgtd() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    assert fields(req) == (0, 1, False, False, IDENTITY + b"AuthMethod=CHAP,None\x00")
    req = sm.receive(response(req, b"TargetPortalGroupTag=1\x00AuthMethod=CHAP\x00"))
    assert isinstance(req, LoginRequest)
    assert fields(req) == (0, 1, False, False, b"CHAP_A=8,6,5,7\x00")
    req = sm.receive(response(req, TGTD_CHALLENGE, statsn=1))
    assert isinstance(req, LoginRequest)
    assert fields(req) == (
        0, 1, True, False, b"CHAP_N=user1\x00CHAP_R=0xf447f6e1d9ae5dcb6b856cd7deef800c\x00"
    )
    req = sm.receive(response(req, b"", statsn=2))
    assert isinstance(req, LoginRequest)
    assert fields(req) == (1, 3, True, False, OFFERS)
    done = sm.receive(response(req, TGTD_OPERATIONAL, statsn=3, tsih=1024))
    assert isinstance(done, LoginComplete)
    assert done.auth_method == "CHAP"
    assert done.chap_algorithm is ChapAlgorithm.MD5
    assert done.params == TGTD_PARAMS


TGTD_MUTUAL_CHALLENGE = (
    b"CHAP_A=5\x00CHAP_I=6\x00CHAP_C=0x4bf00ea0bd82c9f4f6ee6d225dfa5dd759441424001dd524d03baf4b"
    b"dda0d68b62c5390229b42ec569473305fade406dc454\x00"
)
OUR_MUTUAL_ANSWER = (
    b"CHAP_N=user1\x00CHAP_R=0xd33f5fdc3b7928e854fcce4db70e965d\x00CHAP_I=209\x00"
    b"CHAP_C=0xc7d6f9c52b6106a56ccba9a176024fffb0534f75edc195c6a8c3f6072cb8c4f3\x00"
)
TGTD_PROOF = b"CHAP_N=tgtuser\x00CHAP_R=0x5df5567116f8ef58f166b6437b5d4a3a\x00"


def _mutual_until_answer() -> tuple[LoginStateMachine, LoginRequest]:
    sm = LoginStateMachine(config(chap=USER1, mutual_chap=TGTUSER),
                           random=scripted(bytes([209]), OUR_CHALLENGE))
    req = sm.start()
    assert fields(req) == (0, 1, False, False, IDENTITY + b"AuthMethod=CHAP\x00")
    req = sm.receive(response(req, b"TargetPortalGroupTag=1\x00AuthMethod=CHAP\x00"))
    assert isinstance(req, LoginRequest)
    req = sm.receive(response(req, TGTD_MUTUAL_CHALLENGE, statsn=1))
    assert isinstance(req, LoginRequest)
    assert fields(req) == (0, 1, True, False, OUR_MUTUAL_ANSWER)
    return sm, req


def test_mutual_chap_tgtd() -> None:
    sm, req = _mutual_until_answer()
    req2 = sm.receive(response(req, TGTD_PROOF, statsn=2))
    assert isinstance(req2, LoginRequest)
    assert fields(req2) == (1, 3, True, False, OFFERS)
    done = sm.receive(response(req2, TGTD_OPERATIONAL, statsn=3))
    assert isinstance(done, LoginComplete)
    assert done.auth_method == "CHAP"


def test_mutual_chap_wrong_proof() -> None:
    sm, req = _mutual_until_answer()
    bad = b"CHAP_N=tgtuser\x00CHAP_R=0x7e702657f7cf434e63cff79f0b9ced4a\x00"
    with pytest.raises(MutualAuthenticationFailed) as info:
        sm.receive(response(req, bad, statsn=2))
    assert str(info.value) == f"login to {TARGET}: target's CHAP response is wrong"
    _assert_stuck(sm)


def test_mutual_chap_target_skips_its_proof() -> None:
    sm, req = _mutual_until_answer()
    with pytest.raises(MutualAuthenticationFailed, match="skipped"):
        sm.receive(response(req, b"", statsn=2))


def test_mutual_never_offers_none() -> None:
    sm, _req = _mutual_until_answer()
    # (the first request offered "AuthMethod=CHAP" only: checked in _mutual_until_answer)
    assert sm.state is LoginState.SECURITY


def test_target_requires_chap_when_we_have_none_tgtd() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = sm.start()
    # tgtd's exact answer: a 0x0201 reject, ISID zeroed, AuthMethod=Reject in the text.
    resp = response(req, b"TargetPortalGroupTag=1\x00AuthMethod=Reject\x00", transit=False,
                    nsg=0, status=0x0201, isid=bytes(6))
    with pytest.raises(AuthenticationFailed) as info:
        sm.receive(resp)
    assert str(info.value) == (
        f"login to {TARGET}: authentication failed "
        "(target requires authentication; no CHAP credentials are configured)"
    )
    assert (info.value.status_class, info.value.status_detail) == (2, 1)
    _assert_stuck(sm)


def test_target_answers_chap_to_our_none() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = sm.start()
    with pytest.raises(AuthenticationFailed, match="target requires CHAP"):
        sm.receive(response(req, b"AuthMethod=CHAP\x00", transit=False))


def test_target_rejects_every_auth_method() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    with pytest.raises(AuthenticationFailed, match="accepts none of the offered methods CHAP,None"):
        sm.receive(response(req, b"AuthMethod=Reject\x00"))


def test_wrong_secret_tgtd() -> None:
    sm = LoginStateMachine(config(chap=ChapCredentials(user="user1",
                                                        secret=Secret("wrongwrongwrong"))),
                           random=no_random)
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=CHAP\x00"))
    req = sm.receive(response(req, TGTD_CHALLENGE))
    assert isinstance(req, LoginRequest)
    with pytest.raises(AuthenticationFailed) as info:
        sm.receive(response(req, transit=False, nsg=0, status=0x0201, isid=bytes(6)))
    assert str(info.value) == (
        f"login to {TARGET}: authentication failed (CHAP user name or secret rejected by target)"
    )
    assert "wrongwrong" not in str(info.value)


def test_target_picks_none_from_chap_none() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    assert not req.transit  # CHAP may follow
    req = sm.receive(response(req, b"AuthMethod=None\x00"))
    assert isinstance(req, LoginRequest)
    assert fields(req) == (0, 1, True, False, b"")  # nothing more to say: ask to transit
    req = sm.receive(response(req))
    assert isinstance(req, LoginRequest)
    assert fields(req) == (1, 3, True, False, OFFERS)
    done = sm.receive(response(req, TGTD_OPERATIONAL))
    assert isinstance(done, LoginComplete)
    assert done.auth_method == "None"
    assert done.chap_algorithm is None


def test_target_lingers_after_chap() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=CHAP\x00"))
    req = sm.receive(response(req, TGTD_CHALLENGE))
    req = sm.receive(response(req, transit=False))  # accepted, but not moving on yet
    assert isinstance(req, LoginRequest)
    assert fields(req) == (0, 1, True, False, b"")
    req = sm.receive(response(req))
    assert isinstance(req, LoginRequest)
    assert req.csg == 1


def test_target_that_transits_at_once_on_our_none() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = sm.start()
    req = sm.receive(response(req, b"TargetAlias=disk\x00"))  # no AuthMethod echo
    assert isinstance(req, LoginRequest)
    done = sm.receive(response(req, TGTD_OPERATIONAL))
    assert isinstance(done, LoginComplete)
    assert done.target_alias == "disk"


# --------------------------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (0x0102, b"TargetAddress=127.0.0.2:3261\x00",  # tgtd's exact permanent redirect
         LoginRedirect(address="127.0.0.2", port=3261, permanent=True)),
        (0x0101, b"TargetAddress=127.0.0.2:3261\x00",
         LoginRedirect(address="127.0.0.2", port=3261, permanent=False)),
        (0x0101, b"TargetAddress=[::1]:3262\x00",
         LoginRedirect(address="::1", port=3262, permanent=False)),
        (0x0101, b"TargetAddress=[fe80::1]\x00",
         LoginRedirect(address="fe80::1", port=3260, permanent=False)),
        (0x0102, b"TargetAddress=target.example.com,7\x00",
         LoginRedirect(address="target.example.com", port=3260, permanent=True, tpgt=7)),
    ],
)
def test_redirects(status: int, text: bytes, expected: LoginRedirect) -> None:
    for skip in (False, True):
        sm = LoginStateMachine(config(skip_security=skip), random=no_random)
        req = sm.start()
        got = sm.receive(response(req, text, transit=False, nsg=0, status=status,
                                  isid=bytes(6)))
        assert got == expected
        assert sm.state is LoginState.REDIRECTED
        with pytest.raises(LocalProtocolError, match="already ended"):
            sm.receive(response(req))


@pytest.mark.parametrize(
    ("status", "text", "error", "match"),
    [
        (0x0101, b"", RemoteProtocolError, "0 TargetAddress"),
        (0x0101, b"TargetAddress=a\x00TargetAddress=b\x00", RemoteProtocolError,
         "2 TargetAddress"),
        (0x0101, b"TargetAddress=[::1:3260\x00", RemoteProtocolError, "bracket"),
        (0x0103, b"TargetAddress=a\x00", UnknownLoginStatus, "0x0103"),
    ],
)
def test_bad_redirects(status: int, text: bytes, error: type[Exception], match: str) -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = sm.start()
    with pytest.raises(error, match=match):
        sm.receive(response(req, text, status=status))
    _assert_stuck(sm)


def test_redirect_with_c_bit() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = sm.start()
    with pytest.raises(RemoteProtocolError, match="C bit"):
        sm.receive(response(req, b"TargetAddress=a\x00", status=0x0101, cont=True,
                            transit=False))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 3260, None)),
        ("10.0.0.1:5003,1", ("10.0.0.1", 5003, 1)),
        ("[1080:0:0:0:8:800:200C:417A],65", ("1080:0:0:0:8:800:200C:417A", 3260, 65)),
        ("[1080::8:800:200C:417A]:5003,1", ("1080::8:800:200C:417A", 5003, 1)),
        ("computingcenter.example.com,23", ("computingcenter.example.com", 3260, 23)),
    ],
)
def test_parse_target_address(value: str, expected: tuple[str, int, int | None]) -> None:
    assert parse_target_address(value) == expected


@pytest.mark.parametrize(
    "value", ["", ":3260", "host:", "host:0", "host:65536", "host:x", "host,", "host,70000",
              "[::1", "[::1]x", "[::1]:", "a b:1", "[]:3260"],
)
def test_parse_target_address_rejects(value: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_target_address(value)


# --------------------------------------------------------------------------------------------
# Status codes
# --------------------------------------------------------------------------------------------

STATUS_ERRORS = [
    (0x0200, InitiatorError), (0x0201, AuthenticationFailed), (0x0202, AuthorizationFailed),
    (0x0203, TargetNotFound), (0x0204, TargetRemoved), (0x0205, UnsupportedVersion),
    (0x0206, TooManyConnections), (0x0207, MissingParameter), (0x0208, CantIncludeInSession),
    (0x0209, SessionTypeNotSupported), (0x020A, SessionDoesNotExist),
    (0x020B, InvalidDuringLogin), (0x0300, TargetError), (0x0301, ServiceUnavailable),
    (0x0302, OutOfResources), (0x020C, UnknownLoginStatus), (0x0303, UnknownLoginStatus),
    (0x0400, UnknownLoginStatus), (0x00FF, UnknownLoginStatus),
]


@pytest.mark.parametrize(("status", "cls"), STATUS_ERRORS)
def test_every_status(status: int, cls: type[LoginError]) -> None:
    for stage_steps in (0, 1):
        sm = LoginStateMachine(config(), random=no_random)
        req = sm.start()
        if stage_steps:
            req = sm.receive(response(req, b"AuthMethod=None\x00"))
            assert isinstance(req, LoginRequest)
        with pytest.raises(cls) as info:
            sm.receive(response(req, status=status, transit=False, nsg=0, isid=bytes(6)))
        err = info.value
        assert isinstance(err, LoginError)
        assert (err.status_class, err.status_detail) == (status >> 8, status & 0xFF)
        assert err.target == TARGET
        assert str(err).startswith(f"login to {TARGET}: ")
        assert "\n" not in str(err)
        assert err.retryable == (status >> 8 == 3 and cls is not UnknownLoginStatus)
        _assert_stuck(sm)


def test_status_enum_and_factory() -> None:
    assert [int(s) for s in LoginStatus] == [
        0x0000, 0x0101, 0x0102, 0x0200, 0x0201, 0x0202, 0x0203, 0x0204, 0x0205, 0x0206, 0x0207,
        0x0208, 0x0209, 0x020A, 0x020B, 0x0300, 0x0301, 0x0302,
    ]
    err = login_error_for("iqn.x", 2, 3)
    assert isinstance(err, TargetNotFound)
    assert str(err) == "login to iqn.x: target not found (status 0x0203)"
    assert str(login_error_for("iqn.x", 3, 1, "busy")) == "login to iqn.x: service unavailable (busy)"
    assert TargetNotFound.status is LoginStatus.NOT_FOUND
    assert issubclass(LoginError, IscsiError)


def test_discovery_errors_name_the_session() -> None:
    cfg = config(target_name=None, session_type="Discovery")
    sm = LoginStateMachine(cfg, random=no_random)
    req = sm.start()
    with pytest.raises(AuthorizationFailed, match=r"^login to discovery session: not authorized"):
        sm.receive(response(req, status=0x0202))


# --------------------------------------------------------------------------------------------
# Continuation (C bit), offers from the target, targets that do not transit
# --------------------------------------------------------------------------------------------


def _to_operational(sm: LoginStateMachine) -> LoginRequest:
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=None\x00"))
    assert isinstance(req, LoginRequest)
    assert req.csg == 1
    return req


@pytest.mark.parametrize("piece", [1, 7, 100])
def test_c_bit_continuation(piece: int) -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    text = b"TargetAlias=" + b"A" * 200 + b"\x00" + TGTD_OPERATIONAL
    chunks = [text[i : i + piece] for i in range(0, len(text), piece)]
    for n, chunk in enumerate(chunks[:-1]):
        nxt = sm.receive(response(req, chunk, cont=True, transit=False, statsn=n))
        assert isinstance(nxt, LoginRequest)
        # an empty request with C=0, T=0 fetches the rest
        assert fields(nxt) == (1, 3, False, False, b"")
        assert nxt.exp_statsn == n + 1
        req = nxt
    # the last piece answers a T=0 request, so it cannot transit yet
    req2 = sm.receive(response(req, chunks[-1], transit=False, statsn=len(chunks)))
    assert isinstance(req2, LoginRequest)
    assert fields(req2) == (1, 3, True, False, b"")
    done = sm.receive(response(req2, statsn=len(chunks) + 1))
    assert isinstance(done, LoginComplete)
    assert done.target_alias == "A" * 200
    assert done.params == replace(TGTD_PARAMS, target_alias="A" * 200,
                                  target_portal_group_tag=None)


def test_c_bit_in_the_security_stage_splits_a_chap_challenge() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=CHAP\x00"))
    assert isinstance(req, LoginRequest)
    first, second = TGTD_CHALLENGE[:30], TGTD_CHALLENGE[30:]
    req = sm.receive(response(req, first, cont=True))
    assert isinstance(req, LoginRequest)
    assert fields(req) == (0, 1, False, False, b"")
    req = sm.receive(response(req, second))
    assert isinstance(req, LoginRequest)
    assert req.data == b"CHAP_N=user1\x00CHAP_R=0xf447f6e1d9ae5dcb6b856cd7deef800c\x00"


def test_c_bit_text_beyond_the_cap() -> None:
    sm = LoginStateMachine(config(max_text_bytes=8192), random=no_random)
    req = _to_operational(sm)
    for _ in range(8):
        nxt = sm.receive(response(req, b"X" * 1024, cont=True, transit=False))
        assert isinstance(nxt, LoginRequest)
        req = nxt
    with pytest.raises(RemoteProtocolError, match="exceeds 8192"):
        sm.receive(response(req, b"X", cont=True, transit=False))


def test_empty_c_bit_response_is_refused() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    with pytest.raises(RemoteProtocolError, match="empty login response with the C bit"):
        sm.receive(response(req, b"", cont=True, transit=False))


def test_target_offers_keys_before_transit() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    nxt = sm.receive(response(req, TGTD_OPERATIONAL + b"MaxRecvDataSegmentLength=65536\x00"
                                  b"TaskReporting=FastAbort,RFC3720\x00X-vendor.k=1\x00",
                              transit=False))
    assert isinstance(nxt, LoginRequest)
    assert fields(nxt) == (1, 3, True, False,
                           b"TaskReporting=RFC3720\x00X-vendor.k=NotUnderstood\x00")
    done = sm.receive(response(nxt))
    assert isinstance(done, LoginComplete)
    assert done.params.max_xmit_data_segment_length == 65536


def test_target_that_never_transits() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    req = sm.receive(response(req, TGTD_OPERATIONAL, transit=False))
    with pytest.raises(RemoteProtocolError, match=f"for {MAX_LOGIN_EXCHANGES} requests"):
        for _ in range(MAX_LOGIN_EXCHANGES):
            assert isinstance(req, LoginRequest)
            assert fields(req) == (1, 3, True, False, b"")
            req = sm.receive(response(req, transit=False))
    _assert_stuck(sm)


def test_statsn_wraps_in_serial_arithmetic() -> None:
    sm = LoginStateMachine(config(exp_statsn=7), random=no_random)
    req = sm.start()
    assert req.exp_statsn == 7
    req = sm.receive(response(req, b"AuthMethod=None\x00", statsn=0xFFFFFFFF))
    assert isinstance(req, LoginRequest)
    assert req.exp_statsn == 0
    done = sm.receive(response(req, TGTD_OPERATIONAL, statsn=0))
    assert isinstance(done, LoginComplete)
    assert (done.statsn, done.exp_statsn) == (0, 1)


def test_non_leading_login() -> None:
    sm = LoginStateMachine(config(tsih=0x1234, cid=2, skip_security=True), random=no_random)
    req = sm.start()
    assert (req.tsih, req.cid) == (0x1234, 2)
    assert decode_text(req.data)[3:] == [
        ("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "262144")
    ]
    with pytest.raises(RemoteProtocolError, match="changed the TSIH"):
        sm.receive(response(req, b"HeaderDigest=None\x00DataDigest=None\x00", tsih=0x100))
    sm = LoginStateMachine(config(tsih=0x1234, skip_security=True), random=no_random)
    req = sm.start()
    done = sm.receive(response(req, b"HeaderDigest=None\x00DataDigest=None\x00", tsih=0x1234))
    assert isinstance(done, LoginComplete)
    assert done.tsih == 0x1234


# --------------------------------------------------------------------------------------------
# Protocol violations
# --------------------------------------------------------------------------------------------

Mutate = Callable[[LoginRequest], LoginResponse]

VIOLATIONS: list[tuple[str, Mutate, str]] = [
    ("itt", lambda r: response(r, b"AuthMethod=None\x00", itt=99), "Initiator Task Tag"),
    ("itt on reject", lambda r: response(r, status=0x0201, itt=99), "Initiator Task Tag"),
    ("isid", lambda r: response(r, b"AuthMethod=None\x00", isid=bytes(6)), "ISID"),
    ("version", lambda r: response(r, b"AuthMethod=None\x00", version_active=1), "version"),
    ("stage", lambda r: response(r, b"AuthMethod=None\x00", csg=1, nsg=3), "stage 1"),
    ("c and t", lambda r: response(r, b"AuthMethod=None\x00", cont=True), "both C and T"),
    ("tsih early", lambda r: response(r, b"AuthMethod=None\x00", tsih=5), "changed the TSIH"),
    ("nsg beyond", lambda r: response(r, b"AuthMethod=None\x00", nsg=3), "we asked for 1"),
    ("nsg 2", lambda r: response(r, b"AuthMethod=None\x00", nsg=2), "to 2"),
    ("nsg back", lambda r: response(r, b"AuthMethod=None\x00", nsg=0), "to 0"),
    ("auth list", lambda r: response(r, b"AuthMethod=None,CHAP\x00"), "with a list"),
    ("auth twice", lambda r: response(r, b"AuthMethod=None\x00AuthMethod=None\x00"), "twice"),
    ("chap early", lambda r: response(r, b"AuthMethod=None\x00CHAP_C=0x00\x00"), "out of turn"),
    ("op key", lambda r: response(r, b"AuthMethod=None\x00MaxBurstLength=512\x00"),
     "during the security stage"),
    ("bad text", lambda r: response(r, b"AuthMethod=None"), "does not end with a NUL"),
    ("bad decl", lambda r: response(r, b"AuthMethod=None\x00TargetPortalGroupTag=x\x00"),
     "TargetPortalGroupTag"),
]


@pytest.mark.parametrize(("name", "mutate", "match"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_security_stage_violations(name: str, mutate: Mutate, match: str) -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = sm.start()
    with pytest.raises(RemoteProtocolError, match=match) as info:
        sm.receive(mutate(req))
    assert str(info.value).startswith(f"login to {TARGET}: ")
    _assert_stuck(sm)


def test_transit_without_our_agreement() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()  # T=0: CHAP is to come
    with pytest.raises(RemoteProtocolError, match="did not ask to transit"):
        sm.receive(response(req, b"AuthMethod=CHAP\x00", transit=True))


def test_auth_method_not_offered() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    with pytest.raises(RemoteProtocolError, match="did not offer"):
        sm.receive(response(req, b"AuthMethod=SRP\x00"))
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    with pytest.raises(RemoteProtocolError, match="did not answer AuthMethod"):
        sm.receive(response(req, b""))


def test_chap_violations_are_named_with_the_target() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=CHAP\x00"))
    with pytest.raises(RemoteProtocolError, match=f"^login to {TARGET}: .*did not offer"):
        sm.receive(response(req, TGTD_CHALLENGE.replace(b"CHAP_A=5", b"CHAP_A=129")))


def test_chap_response_keys_out_of_turn() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=CHAP\x00"))
    with pytest.raises(RemoteProtocolError, match="CHAP_R out of turn"):
        sm.receive(response(req, TGTD_CHALLENGE + b"CHAP_R=0x00\x00"))


def test_one_way_target_sending_a_proof() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=CHAP\x00"))
    req = sm.receive(response(req, TGTD_CHALLENGE))
    with pytest.raises(RemoteProtocolError, match="did not challenge"):
        sm.receive(response(req, TGTD_PROOF))


def test_security_keys_after_the_security_stage() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    with pytest.raises(RemoteProtocolError, match="after the security stage"):
        sm.receive(response(req, TGTD_OPERATIONAL + b"CHAP_A=5\x00"))


def test_chap_keys_after_authentication_finished() -> None:
    sm = LoginStateMachine(config(chap=USER1), random=no_random)
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=CHAP\x00"))
    req = sm.receive(response(req, TGTD_CHALLENGE))
    req = sm.receive(response(req, transit=False))
    with pytest.raises(RemoteProtocolError, match="out of turn"):
        sm.receive(response(req, b"CHAP_I=3\x00"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (TGTD_OPERATIONAL.replace(b"MaxBurstLength=262144", b"MaxBurstLength=2097152"),
         "above our offer"),
        (TGTD_OPERATIONAL + b"MaxBurstLength=262144\x00", "twice"),
        (TGTD_OPERATIONAL.replace(b"HeaderDigest=None\x00", b""), "without answering"),
        (TGTD_OPERATIONAL + b"MaxConnections=1\x00", "twice"),
        (TGTD_OPERATIONAL + b"TaskReporting=FastAbort\x00", "unanswered"),
        (TGTD_OPERATIONAL.replace(b"InitialR2T=Yes", b"InitialR2T=Maybe"), "InitialR2T"),
    ],
)
def test_operational_violations(text: bytes, match: str) -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    with pytest.raises(RemoteProtocolError, match=match):
        sm.receive(response(req, text))
    _assert_stuck(sm)


def test_final_response_without_tsih() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    with pytest.raises(RemoteProtocolError, match="without a TSIH"):
        sm.receive(response(req, TGTD_OPERATIONAL, tsih=0))


def test_answer_to_a_settled_key_in_a_later_response() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    req = sm.receive(response(req, TGTD_OPERATIONAL, transit=False))
    with pytest.raises(RemoteProtocolError, match="MaxBurstLength twice"):
        sm.receive(response(req, b"MaxBurstLength=8192\x00"))


# --------------------------------------------------------------------------------------------
# Misuse, stickiness, the transition table
# --------------------------------------------------------------------------------------------


def _assert_stuck(sm: LoginStateMachine) -> None:
    assert sm.state is LoginState.FAILED
    dummy = LoginRequest(transit=False, csg=0, nsg=1, isid=ISID, tsih=0, itt=1, cid=0,
                         cmdsn=1, exp_statsn=0)
    with pytest.raises(LocalProtocolError, match="already failed"):
        sm.receive(response(dummy))
    with pytest.raises(LocalProtocolError, match="already failed"):
        sm.start()


def test_misuse() -> None:
    sm = LoginStateMachine(config(), random=no_random)
    dummy = LoginRequest(transit=False, csg=0, nsg=1, isid=ISID, tsih=0, itt=1, cid=0,
                         cmdsn=1, exp_statsn=0)
    with pytest.raises(LocalProtocolError, match="before start"):
        sm.receive(response(dummy))
    _assert_stuck(sm)
    sm = LoginStateMachine(config(), random=no_random)
    sm.start()
    with pytest.raises(LocalProtocolError, match="already started"):
        sm.start()
    assert sm.state is LoginState.FAILED


def test_after_completion_everything_is_misuse() -> None:
    sm = LoginStateMachine(config(skip_security=True), random=no_random)
    req = sm.start()
    assert isinstance(sm.receive(response(req, TGTD_OPERATIONAL)), LoginComplete)
    with pytest.raises(LocalProtocolError, match="already ended"):
        sm.receive(response(req, TGTD_OPERATIONAL))
    with pytest.raises(LocalProtocolError, match="already ended"):
        sm.start()
    assert sm.config.target_name == TARGET


@pytest.mark.parametrize("state", list(LoginState))
@pytest.mark.parametrize("event", list(LoginInput))
def test_every_transition_pair(state: LoginState, event: LoginInput) -> None:
    sm = LoginStateMachine(config(), random=no_random)
    sm._state = state  # the table itself is under test here
    nxt = LOGIN_TRANSITIONS.get((state, event))
    if nxt is not None:
        sm._transition(event)
        assert sm.state is nxt
    elif state in (LoginState.IDLE, LoginState.COMPLETE, LoginState.REDIRECTED,
                   LoginState.FAILED):
        with pytest.raises(LocalProtocolError):
            sm._transition(event)
    else:
        with pytest.raises(RemoteProtocolError):
            sm._transition(event)


def test_transition_table_contents() -> None:
    s, i = LoginState, LoginInput
    assert dict(LOGIN_TRANSITIONS) == {
        (s.IDLE, i.START_SECURITY): s.SECURITY,
        (s.IDLE, i.START_OPERATIONAL): s.OPERATIONAL,
        (s.SECURITY, i.PARTIAL): s.SECURITY,
        (s.SECURITY, i.STAY): s.SECURITY,
        (s.SECURITY, i.TO_OPERATIONAL): s.OPERATIONAL,
        (s.SECURITY, i.REDIRECT): s.REDIRECTED,
        (s.SECURITY, i.REJECT): s.FAILED,
        (s.OPERATIONAL, i.PARTIAL): s.OPERATIONAL,
        (s.OPERATIONAL, i.STAY): s.OPERATIONAL,
        (s.OPERATIONAL, i.TO_FULL_FEATURE): s.COMPLETE,
        (s.OPERATIONAL, i.REDIRECT): s.REDIRECTED,
        (s.OPERATIONAL, i.REJECT): s.FAILED,
    }


def test_operational_response_to_operational_transit_is_refused() -> None:
    # (OPERATIONAL, TO_OPERATIONAL) is not in the table; the header check catches it first.
    sm = LoginStateMachine(config(), random=no_random)
    req = _to_operational(sm)
    with pytest.raises(RemoteProtocolError, match="from stage 1 to 1"):
        sm.receive(response(req, TGTD_OPERATIONAL, nsg=1))


# --------------------------------------------------------------------------------------------
# Configuration and secrets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"session_type": "Other"}, "session type"),
        ({"initiator_name": ""}, "initiator name"),
        ({"target_name": None}, "needs a target name"),
        ({"session_type": "Discovery"}, "takes no target name"),
        ({"isid": b"\x00" * 5}, "ISID"),
        ({"tsih": 0x10000}, "16-bit"),
        ({"cid": -1}, "16-bit"),
        ({"itt": 0xFFFFFFFF}, "ITT"),
        ({"mutual_chap": TGTUSER}, "mutual CHAP needs"),
        ({"chap": USER1, "skip_security": True}, "cannot skip"),
        ({"operational_offers": {"AuthMethod": "CHAP"}}, "not an operational key"),
    ],
)
def test_config_refusals(change: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        config(**change)


def test_config_offers_are_frozen_copies() -> None:
    offers = {"MaxBurstLength": "262144"}
    cfg = config(operational_offers=offers)
    offers["MaxBurstLength"] = "512"
    assert cfg.operational_offers["MaxBurstLength"] == "262144"
    with pytest.raises(TypeError):
        cfg.operational_offers["X"] = "1"  # type: ignore[index]
    assert config().operational_offers == DEFAULT_OFFERS
    assert config().target_label == TARGET
    with pytest.raises(LocalProtocolError, match="unknown key"):
        LoginStateMachine(config(operational_offers={"Bogus": "1"}), random=no_random)


def test_default_offers() -> None:
    assert default_offers() == dict(DEFAULT_OFFERS)
    assert default_offers(HeaderDigest="CRC32C,None")["HeaderDigest"] == "CRC32C,None"
    assert sorted(default_offers("Discovery")) == sorted([
        "HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength", "ErrorRecoveryLevel",
        "DefaultTime2Wait", "DefaultTime2Retain",
    ])
    assert DEFAULT_OFFERS["MaxConnections"] == "1"
    assert DEFAULT_OFFERS["DataPDUInOrder"] == "Yes"
    assert DEFAULT_OFFERS["DataSequenceInOrder"] == "Yes"


def test_login_text_too_long_for_the_first_pdu() -> None:
    sm = LoginStateMachine(config(initiator_alias="a" * 255,
                                  operational_offers={**DEFAULT_OFFERS}), random=no_random)
    assert sm.start().data.startswith(b"InitiatorName=")
    long_name = "iqn.2024-01.test:" + "n" * 200
    cfg = config(target_name=long_name)
    req = LoginStateMachine(cfg, random=no_random).start()
    assert (b"TargetName=" + long_name.encode()) in req.data
    assert len(encode_text([("TargetName", long_name)])) < 8192


def test_secrets_never_show_anywhere() -> None:
    secrets = ("secretsecret1", "tgtsecret12345")
    cfg = config(chap=USER1, mutual_chap=TGTUSER)
    sm = LoginStateMachine(cfg, random=scripted(bytes([209]), OUR_CHALLENGE))
    texts = [repr(cfg), str(cfg), repr(vars(sm)) if hasattr(sm, "__dict__") else ""]
    req = sm.start()
    req = sm.receive(response(req, b"AuthMethod=CHAP\x00"))
    req = sm.receive(response(req, TGTD_MUTUAL_CHALLENGE))
    assert isinstance(req, LoginRequest)
    texts.append(repr(req))
    with pytest.raises(MutualAuthenticationFailed) as info:
        sm.receive(response(req, b"CHAP_N=tgtuser\x00CHAP_R=0x00\x00"))
    texts += [str(info.value), repr(info.value)]
    for text in texts:
        for secret in secrets:
            assert secret not in text


@given(st.binary(max_size=300), st.booleans(), st.booleans(), st.integers(0, 3))
def test_garbage_responses_only_raise_protocol_errors(
    data: bytes, transit: bool, cont: bool, nsg: int
) -> None:
    for chap in (None, USER1):
        sm = LoginStateMachine(config(chap=chap), random=no_random)
        req = sm.start()
        try:
            sm.receive(response(req, data, transit=transit, cont=cont, nsg=nsg))
        except RemoteProtocolError:
            assert sm.state is LoginState.FAILED
        except LoginError:  # AuthenticationFailed for AuthMethod=Reject and the like
            assert sm.state is LoginState.FAILED
