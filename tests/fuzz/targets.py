# Fuzz targets: one function per parser, each taking raw bytes and checking the property of issue 7
# ("hostile input"): any input ends in the module's typed error or a valid result, never another
# exception, never a hang, never more memory than was negotiated. The same functions serve three
# drivers: the hypothesis tests of tests/fuzz (which feed them structured bytes), the coverage-
# guided atheris runner (scripts/fuzz, raw bytes) and the corpus replay (tests/fuzz/corpus).
# So every choice a target makes (digests on or off, which login configuration, how to chunk the
# stream) is read from the input bytes themselves, and a saved input replays exactly.
#
# Owns no product code. A target raises AssertionError (or lets an unexpected exception escape)
# for a bug; it returns normally for every allowed outcome. KNOWN_BUGS lists bugs found here and
# reported to the owners of modules this suite must not edit: the hypothesis and atheris drivers
# tolerate them, the corpus replay of each marks it xfail(strict=True) until it is fixed.

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from iscsifs import scsi
from iscsifs import syntax as syntax_mod
from iscsifs.proto import discovery, isns, pdu, text
from iscsifs.proto.chap import (
    ChapAlgorithm,
    ChapCredentials,
    Secret,
    chap_response,
)
from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError
from iscsifs.proto.login import (
    LoginComplete,
    LoginConfig,
    LoginError,
    LoginRedirect,
    LoginState,
    LoginStateMachine,
    default_offers,
)

# --------------------------------------------------------------------------------------------
# Guards
# --------------------------------------------------------------------------------------------

#: Wall-clock seconds one example may take before it counts as a hang.
HANG_SECONDS = float(os.environ.get("ISCSIFS_FUZZ_HANG_SECONDS", "10"))


class Hang(AssertionError):
    """An example ran longer than HANG_SECONDS: a loop that input can keep going."""


@contextlib.contextmanager
def hang_guard(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Turn a hang into a failure. Hypothesis's deadline only judges an example after it ends;
    a real endless loop never ends, so a timer signal interrupts it (main thread only)."""
    if seconds <= 0 or signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None):
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise Hang(f"example still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass(frozen=True)
class KnownBug:
    """A bug in a module this suite may not edit, found by fuzzing and reported to its owner."""

    target: str
    exc_type: type[BaseException]
    message_part: str
    reason: str

    def matches(self, target: str, exc: BaseException) -> bool:
        return (target == self.target and type(exc) is self.exc_type
                and self.message_part in str(exc))


KNOWN_BUGS: tuple[KnownBug, ...] = ()  # none open: the last ones were fixed


def known_bug(target: str, exc: BaseException) -> KnownBug | None:
    return next((b for b in KNOWN_BUGS if b.matches(target, exc)), None)


def _drain(framer: pdu.Framer) -> tuple[list[pdu.Frame], type[Exception] | None]:
    """Every frame the framer completed, then the error that stopped it (if any)."""
    frames: list[pdu.Frame] = []
    while True:
        try:
            frame = framer.next_frame()
        except RemoteProtocolError as exc:
            return frames, type(exc)
        if frame is None:
            return frames, None
        frames.append(frame)


def _frame_key(frame: pdu.Frame) -> tuple[bytes, bytes, bytes, bool]:
    return frame.header, frame.ahs, bytes(frame.data), frame.data_digest_ok


def _chunks(data: bytes, mode: int, seed: int) -> Iterator[bytes]:
    """The stream cut the way a TCP receiver might see it."""
    if mode == 0 or not data:
        yield data
    elif mode == 1:
        for i in range(len(data)):
            yield data[i : i + 1]
    else:
        sizes = [1 + ((seed * (k + 3) * 2654435761) >> 7) % (97 if mode == 2 else 5000)
                 for k in range(16)]
        pos = k = 0
        while pos < len(data):
            n = sizes[k % len(sizes)]
            yield data[pos : pos + n]
            pos += n
            k += 1


# --------------------------------------------------------------------------------------------
# PDU framer and decoder (iscsifs/proto/pdu.py)
# --------------------------------------------------------------------------------------------


def framer_options(b0: int, b1: int) -> dict[str, object]:
    return {
        "header_digest": bool(b0 & 1),
        "data_digest": bool(b0 & 2),
        "placer": bool(b0 & 4),
        "chunking": (b0 >> 3) & 3,
        "small_direct": bool(b0 & 0x20),
        "max_data_segment": 512 << (b1 % 8),
    }


def check_pdu(p: pdu.Pdu) -> None:
    """What a decoded PDU must satisfy: it re-encodes, and after one trip (which clears
    reserved fields, e.g. the status byte of a Data-In without S) encode/decode is stable."""
    once = pdu.decode(pdu.encode(p))
    assert type(once) is type(p)
    twice = pdu.decode(pdu.encode(once))
    assert twice == once, f"decode(encode(p)) is not stable for {type(p).__name__}"
    if isinstance(p, pdu.ScsiResponse | pdu.AsyncMessage):
        try:
            sense = p.sense
        except RemoteProtocolError:
            return
        status = p.status if isinstance(p, pdu.ScsiResponse) else scsi.ScsiStatus.CHECK_CONDITION
        err = scsi.error_for_status(status, sense)
        if err is not None:
            assert str(err)


def pdu_framer(data: bytes) -> None:
    """Framer fed a stream in some chunking, with or without a placer, compared with the same
    stream fed whole; then every frame decoded. Options come from the first two bytes."""
    if len(data) < 2:
        return
    opt = framer_options(data[0], data[1])
    stream = data[2:]
    limit = int(opt["max_data_segment"])  # type: ignore[call-overload]
    hd, dd = bool(opt["header_digest"]), bool(opt["data_digest"])

    ref = pdu.Framer(header_digest=hd, data_digest=dd, max_data_segment=limit)
    with contextlib.suppress(RemoteProtocolError):
        ref.receive_data(stream)
    ref_frames, ref_error = _drain(ref)

    placed: list[bytearray] = []

    def placer(header: bytes) -> memoryview | None:
        if header[0] & 0x3F != pdu.Opcode.DATA_IN:
            return None
        dsl = int.from_bytes(header[5:8], "big")
        assert 0 < dsl <= limit, "placer asked for a segment above the limit"
        buf = bytearray(dsl)
        placed.append(buf)
        return memoryview(buf)

    fr = pdu.Framer(
        header_digest=hd, data_digest=dd, max_data_segment=limit,
        placer=placer if opt["placer"] else None,
        direct_threshold=64 if opt["small_direct"] else 16 * 1024,
    )
    error: type[Exception] | None = None
    frames: list[pdu.Frame] = []
    for chunk in _chunks(stream, int(opt["chunking"]), data[1]):  # type: ignore[call-overload]
        try:
            fr.receive_data(chunk)
        except RemoteProtocolError:
            break
        more, error = _drain(fr)
        frames += more
    more, error = _drain(fr)
    frames += more
    assert [_frame_key(f) for f in frames] == [_frame_key(f) for f in ref_frames], (
        "frames depend on how the stream was chunked or placed"
    )
    assert error is ref_error, f"error {error} chunked vs {ref_error} whole"
    if error is None:
        assert fr.pending_bytes() == ref.pending_bytes()
    for frame in frames:
        assert len(frame.data) <= limit, "a data segment above max_data_segment got through"
        try:
            p = pdu.decode_frame(frame)
        except RemoteProtocolError:
            continue
        check_pdu(p)


def pdu_decode(data: bytes) -> None:
    """pdu.decode of exactly one PDU, digests chosen by the first byte."""
    if not data:
        return
    try:
        p = pdu.decode(data[1:], header_digest=bool(data[0] & 1), data_digest=bool(data[0] & 2))
    except RemoteProtocolError:
        return
    check_pdu(p)


# --------------------------------------------------------------------------------------------
# Text key=value (iscsifs/proto/text.py)
# --------------------------------------------------------------------------------------------


def _check_pairs(pairs: list[tuple[str, str]]) -> None:
    for key, value in pairs:
        spec = text.KEYS.get(key)
        if spec is not None:
            why = text.check_value(spec, value)
            assert why is None or isinstance(why, str)
            if spec.sensitive and why is not None:
                assert value not in why or len(value) < 4, "a CHAP value shown in a reason"
        for parse in (text.parse_number, text.parse_bool, text.parse_list, text.parse_binary):
            with contextlib.suppress(ValueError):
                parse(value)
        with contextlib.suppress(ValueError):
            text.parse_number(value, large=True)


def text_decode(data: bytes) -> None:
    """decode_text: RemoteProtocolError or pairs that encode_text turns back into the input."""
    try:
        pairs = text.decode_text(data)
    except RemoteProtocolError:
        return
    assert text.encode_text(pairs) == data, "decode_text/encode_text do not round trip"
    _check_pairs(pairs)


def text_assembler(data: bytes) -> None:
    """TextAssembler fed the input in C=1 segments: never holds more than its cap, and gives
    what decode_text gives for the whole (or refuses an oversized text)."""
    if len(data) < 2:
        return
    cap = text.MIN_TEXT_CAPACITY * (1 + data[0] % 4)
    size = 1 + data[1] * 37 if data[0] & 0x80 else 1 + data[1]
    body = data[2:]
    asm = text.TextAssembler(cap)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    outcome: object = None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        try:
            outcome = asm.feed(part, cont=not last)
        except RemoteProtocolError:
            outcome = RemoteProtocolError
            break
        finally:
            assert len(asm._buffer) <= cap, "TextAssembler holds more than its cap"
        assert (outcome is None) is (not last)
    if len(body) > cap:
        assert outcome is RemoteProtocolError, "an oversized text was accepted"
        return
    try:
        expected: object = text.decode_text(body)
    except RemoteProtocolError:
        expected = RemoteProtocolError
    assert outcome == expected


#: Offer sets for the negotiator target (the first input byte picks one).
def _negotiator_setups() -> list[tuple[dict[str, str], str, bool]]:
    return [
        (default_offers("Normal"), "Normal", True),
        (default_offers("Discovery"), "Discovery", True),
        (default_offers("Normal"), "Normal", False),
        (default_offers("Normal", HeaderDigest="CRC32C,None", DataDigest="CRC32C,None",
                        InitialR2T="Yes", ImmediateData="No", ErrorRecoveryLevel="2",
                        **{"X-org.iscsifs.Test": "1"}), "Normal", True),
    ]


def negotiator(data: bytes) -> None:
    """Negotiator.receive of target text (rounds split at 0xff, never valid in UTF-8 text):
    RemoteProtocolError, or answers we can send and a NegotiatedParams inside the RFC ranges."""
    if not data:
        return
    setups = _negotiator_setups()
    offers, session_type, leading = setups[data[0] % len(setups)]
    neg = text.Negotiator(offers, session_type=session_type, leading=leading)
    neg.initial_pairs()
    for round_ in data[1:].split(b"\xff")[:8]:
        try:
            pairs = text.decode_text(round_)
            answers = neg.receive(pairs)
        except RemoteProtocolError:
            return
        text.encode_text(answers)  # LocalProtocolError here: we would send what we refuse
        if neg.done:
            check_params(neg.result())
            return


def check_params(p: text.NegotiatedParams) -> None:
    assert 512 <= p.max_recv_data_segment_length < 1 << 24
    assert 512 <= p.max_xmit_data_segment_length < 1 << 24
    assert 512 <= p.max_burst_length < 1 << 24
    assert 512 <= p.first_burst_length <= p.max_burst_length
    assert 1 <= p.max_outstanding_r2t <= 65535
    assert 1 <= p.max_connections <= 65535
    assert 0 <= p.error_recovery_level <= 2
    assert 0 <= p.default_time2wait <= 3600 and 0 <= p.default_time2retain <= 3600
    assert p.target_portal_group_tag is None or 0 <= p.target_portal_group_tag <= 65535
    assert p.task_reporting in ("RFC3720", "ResponseFence", "FastAbort")


# --------------------------------------------------------------------------------------------
# Login (iscsifs/proto/login.py)
# --------------------------------------------------------------------------------------------

ISID = bytes.fromhex("400001370000")
INITIATOR = "iqn.2024-01.org.iscsifs.fuzz:init"
TARGET = "iqn.2024-01.org.iscsifs.fuzz:target"
TARGET_SECRET = "fuzz-target-secret-2718"
MUTUAL_SECRET = "fuzz-mutual-secret-3141"
TARGET_USER = "fuzzuser"
MUTUAL_USER = "fuzztarget"
#: The target's challenge in the scripted good exchanges.
GOOD_CHALLENGE = bytes(range(0x40, 0x50))


def secret_forms(secret: str) -> list[bytes]:
    """The secret as it could leak: raw, hex (both cases), base64 (with and without padding)."""
    raw = secret.encode()
    b64 = base64.b64encode(raw)
    return [raw, raw.hex().encode(), raw.hex().upper().encode(), b64, b64.rstrip(b"=")]


SECRETS = (TARGET_SECRET, MUTUAL_SECRET)
SECRET_FORMS = [form for s in SECRETS for form in secret_forms(s)]


def assert_no_secret(blob: str | bytes, where: str) -> None:
    raw = blob.encode("utf-8", "surrogateescape") if isinstance(blob, str) else blob
    for form in SECRET_FORMS:
        assert form not in raw, f"a CHAP secret appears in {where}"


def make_random() -> Callable[[int], bytes]:
    """A deterministic random source (so every case replays), different at each call like the
    real one (a constant one would make our challenge repeat the target's, which only a broken
    os.urandom could do)."""
    calls = [0]

    def random(n: int) -> bytes:
        calls[0] += 1
        out = b""
        while len(out) < n:
            out += hashlib.sha256(b"%d:%d" % (calls[0], len(out))).digest()
        return out[:n]

    return random


def _login_config(mode: int) -> LoginConfig:
    chap = ChapCredentials(user=TARGET_USER, secret=Secret(TARGET_SECRET))
    mutual = ChapCredentials(user=MUTUAL_USER, secret=Secret(MUTUAL_SECRET))
    base: dict[str, object] = {"initiator_name": INITIATOR, "target_name": TARGET, "isid": ISID,
                               "cmdsn": 1, "itt": 1}
    extra: list[dict[str, object]] = [
        {},
        {"chap": chap},
        {"chap": chap, "mutual_chap": mutual},
        {"session_type": "Discovery", "target_name": None,
         "operational_offers": default_offers("Discovery")},
        {"skip_security": True},
        {"tsih": 0x1234, "cid": 1, "chap": chap},
        {"chap": chap, "mutual_chap": mutual, "initiator_alias": "fuzz",
         "operational_offers": default_offers("Normal", HeaderDigest="CRC32C,None",
                                              DataDigest="CRC32C,None")},
    ]
    return LoginConfig(**{**base, **extra[mode % len(extra)]})  # type: ignore[arg-type]


LOGIN_MODES = 7


def good_response(mode: int, req: pdu.LoginRequest, statsn: int) -> pdu.LoginResponse:
    """What a well-behaved target answers to our request (used to reach each login stage)."""
    pairs = dict(text.decode_text(req.data))
    cfg = _login_config(mode)
    out: list[tuple[str, str]] = []
    transit, nsg = req.transit, req.nsg
    if req.csg == pdu.Stage.SECURITY:
        if "AuthMethod" in pairs:
            chosen = pairs["AuthMethod"].split(",")[0]
            out.append(("AuthMethod", chosen))
            if chosen == "CHAP":
                transit = False
        elif "CHAP_A" in pairs:
            out += [("CHAP_A", "5"), ("CHAP_I", "7"), ("CHAP_C", "0x" + GOOD_CHALLENGE.hex())]
            transit = False
        elif "CHAP_C" in pairs:
            assert cfg.mutual_chap is not None
            proof = chap_response(ChapAlgorithm.MD5, int(pairs["CHAP_I"]),
                                  cfg.mutual_chap.secret, text.parse_binary(pairs["CHAP_C"]))
            out += [("CHAP_N", MUTUAL_USER), ("CHAP_R", "0x" + proof.hex())]
    else:
        for key, value in text.decode_text(req.data):
            spec = text.KEYS.get(key)
            if spec is None or spec.kind in (text.KeyKind.DECLARATIVE, text.KeyKind.OBSOLETE):
                if key.startswith("X-"):
                    out.append((key, "NotUnderstood"))
                continue
            out.append((key, value.split(",")[0]))
        if cfg.session_type == "Normal":
            out.append(("TargetPortalGroupTag", "1"))
    final = transit and nsg == pdu.Stage.FULL_FEATURE
    tsih = cfg.tsih if cfg.tsih else (0x0100 if final else 0)
    return pdu.LoginResponse(
        transit=transit, cont=False, csg=req.csg, nsg=nsg if transit else 0, isid=ISID,
        tsih=tsih, itt=req.itt, statsn=statsn, exp_cmdsn=1, max_cmdsn=2, status_class=0,
        status_detail=0, data=text.encode_text(out),
    )


def good_exchange(mode: int) -> list[pdu.LoginResponse]:
    """The responses of a well-behaved target for a whole login in this mode."""
    sm = LoginStateMachine(_login_config(mode), random=make_random())
    req: object = sm.start()
    out: list[pdu.LoginResponse] = []
    while isinstance(req, pdu.LoginRequest):
        resp = good_response(mode, req, statsn=0x1000 + len(out))
        out.append(resp)
        req = sm.receive(resp)
    assert isinstance(req, LoginComplete), req
    return out


def login(data: bytes) -> None:
    """LoginStateMachine fed the Login Responses framed from the input (the first byte picks
    the configuration). Outcomes allowed: the next request, LoginComplete, LoginRedirect,
    LoginError or RemoteProtocolError; after an error the machine stays failed; no secret in
    any message or request."""
    if not data:
        return
    mode = data[0] % LOGIN_MODES
    cfg = _login_config(mode)
    sm = LoginStateMachine(cfg, random=make_random())
    req = sm.start()
    framer = pdu.Framer(max_data_segment=cfg.max_text_bytes)
    with contextlib.suppress(RemoteProtocolError):
        framer.receive_data(data[1:])
    frames, _ = _drain(framer)
    for frame in frames:
        try:
            resp = pdu.decode_frame(frame)
        except RemoteProtocolError:
            return
        if not isinstance(resp, pdu.LoginResponse):
            return  # the engine refuses other PDUs during login
        try:
            result = sm.receive(resp)
        except (LoginError, RemoteProtocolError) as exc:
            assert not isinstance(exc, LocalProtocolError)
            assert_no_secret(str(exc) + repr(exc), "a login error")
            assert sm.state is LoginState.FAILED
            try:
                sm.receive(resp)
            except LocalProtocolError:
                pass
            else:
                raise AssertionError("a failed login accepted another response") from None
            return
        if isinstance(result, pdu.LoginRequest):
            wire = pdu.encode(result)
            assert_no_secret(wire, "a login request")
            assert len(result.data) <= 8192
            assert result.itt == cfg.itt and result.isid == cfg.isid
            req = result
            continue
        if isinstance(result, LoginComplete):
            assert sm.state is LoginState.COMPLETE
            check_params(result.params)
            assert result.tsih != 0
            if cfg.tsih:
                assert result.tsih == cfg.tsih
            if cfg.mutual_chap is not None:
                assert result.auth_method == "CHAP", "mutual CHAP configured, login without it"
        else:
            assert isinstance(result, LoginRedirect)
            assert sm.state is LoginState.REDIRECTED
            assert 0 < result.port <= 65535 and result.address
            assert not any(c.isspace() for c in result.address)
        return
    del req


def chap(data: bytes) -> None:
    """ChapInitiator.answer of the target's challenge text, then confirm of its proof (the two
    texts split at 0xff). ChapError / MutualAuthenticationFailed or success; a mutual confirm
    succeeds only on the right proof; no secret in any message; a failed exchange stays so."""
    if not data:
        return
    from iscsifs.proto.chap import ChapInitiator

    mode = data[0]
    algorithms = [ChapAlgorithm.MD5, ChapAlgorithm.SHA1, ChapAlgorithm.SHA256,
                  ChapAlgorithm.SHA3_256][: 1 + (mode >> 2) % 4]
    mutual = ChapCredentials(user=MUTUAL_USER, secret=Secret(MUTUAL_SECRET)) if mode & 1 else None
    ini = ChapInitiator(ChapCredentials(user=TARGET_USER, secret=Secret(TARGET_SECRET)),
                        random=make_random(), mutual=mutual, algorithms=algorithms,
                        use_base64=bool(mode & 2))
    assert_no_secret(text.encode_text(ini.offer()), "a CHAP offer")
    first, _, second = data[1:].partition(b"\xff")
    try:
        challenge = dict(text.decode_text(first))
        second_pairs = dict(text.decode_text(second))
    except RemoteProtocolError:
        return
    try:
        answer = ini.answer(challenge)
    except RemoteProtocolError as exc:
        assert_no_secret(str(exc), "a CHAP error")
        try:
            ini.confirm(second_pairs)
        except LocalProtocolError:
            return
        raise AssertionError("a failed CHAP exchange went on") from None
    wire = text.encode_text(answer)
    assert_no_secret(wire, "a CHAP answer")
    got = dict(answer)
    assert ini.algorithm is not None and ini.algorithm in algorithms
    assert got["CHAP_N"] == TARGET_USER
    if mutual is not None:
        ours = text.parse_binary(got["CHAP_C"])
        assert ours != text.parse_binary(challenge["CHAP_C"]), "challenge reflected"
    try:
        ini.confirm(second_pairs)
    except RemoteProtocolError as exc:
        assert_no_secret(str(exc), "a CHAP error")
        return
    if mutual is not None:
        proof = chap_response(ini.algorithm, int(got["CHAP_I"]), mutual.secret,
                              text.parse_binary(got["CHAP_C"]))
        assert text.parse_binary(second_pairs["CHAP_R"]) == proof, "a wrong proof accepted"
        assert second_pairs["CHAP_N"] == MUTUAL_USER
    assert ini.done


# --------------------------------------------------------------------------------------------
# SendTargets (iscsifs/proto/discovery.py)
# --------------------------------------------------------------------------------------------


def sendtargets(data: bytes) -> None:
    """parse_sendtargets(decode_text(...)): RemoteProtocolError or well-formed targets whose
    portals survive their own text form."""
    try:
        targets = discovery.parse_sendtargets(text.decode_text(data))
    except RemoteProtocolError:
        return
    names = [t.name for t in targets]
    assert len(set(names)) == len(names), "a target listed twice"
    for t in targets:
        assert t.name
        assert len(set(t.portals)) == len(t.portals)
        for portal in t.portals:
            assert discovery.parse_target_address(portal.target_address()) == portal
            host, port = discovery.parse_portal_argument(str(portal))
            assert (host, port) == (portal.address, portal.port)


def target_address(data: bytes) -> None:
    """Both TargetAddress parsers (discovery's and login's redirect one) on any text."""
    value = data.decode("utf-8", "replace")
    with contextlib.suppress(RemoteProtocolError):
        portal = discovery.parse_target_address(value)
        assert discovery.parse_target_address(portal.target_address()) == portal
    from iscsifs.proto.login import parse_target_address as login_parse
    with contextlib.suppress(RemoteProtocolError):
        host, port, tpgt = login_parse(value)
        assert host and 0 < port <= 65535 and (tpgt is None or 0 <= tpgt <= 65535)


# --------------------------------------------------------------------------------------------
# iSNS (iscsifs/proto/isns.py)
# --------------------------------------------------------------------------------------------


def check_isns_message(m: isns.IsnsMessage) -> None:
    again = isns.decode_message(isns.encode_message(m))
    assert again == m, "iSNS decode(encode(m)) != m"
    with contextlib.suppress(RemoteProtocolError):
        for t in isns.targets_from_query_response(m):
            assert t.name and all(isinstance(p, discovery.Portal) for p in t.portals)
    with contextlib.suppress(RemoteProtocolError):
        node = isns.node_from_get_next_response(m)
        assert node is None or node.name
    with contextlib.suppress(RemoteProtocolError):
        got = isns.portal_group_from_get_next_response(m)
        if got is not None:
            key, group = got
            assert len(key) == 3
            if group is not None:
                assert 0 < group.port <= 65535
    for attr in m.attributes:
        for read in (attr.as_string, attr.as_uint32, attr.as_ip, attr.as_port):
            with contextlib.suppress(RemoteProtocolError):
                read()


def isns_framer(data: bytes) -> None:
    """IsnsFramer fed the stream in chunks; every message checked by every response parser.
    Its buffered bytes stay bounded by one PDU plus the unfinished messages it allows."""
    if not data:
        return
    small = bool(data[0] & 0x80)
    max_message = 4096 if small else isns.DEFAULT_MAX_MESSAGE
    max_pending = 1 + (data[0] & 3)
    framer = isns.IsnsFramer(max_message_size=max_message, max_pending=max_pending)
    bound = isns.HEADER_LENGTH + 0xFFFF + max_pending * (max_message + 0xFFFF)
    for chunk in _chunks(data[1:], (data[0] >> 2) & 3, data[0]):
        try:
            framer.receive_data(chunk)
            messages = list(framer)
        except RemoteProtocolError:
            return
        assert framer.buffered <= bound, "IsnsFramer holds more than it allows"
        for m in messages:
            check_isns_message(m)


def isns_attributes(data: bytes) -> None:
    """decode_attributes of a TLV run, then the record builders over it as a response body."""
    try:
        attrs = isns.decode_attributes(data)
    except RemoteProtocolError:
        return
    assert b"".join(a.encode() for a in attrs) == data
    m = isns.IsnsMessage(function=isns.IsnsFunction.DEV_ATTR_QRY_RSP, transaction_id=1,
                         attributes=attrs, status=0)
    check_isns_message(m)
    m = dataclasses.replace(m, function=isns.IsnsFunction.DEV_GET_NEXT_RSP)
    check_isns_message(m)


# --------------------------------------------------------------------------------------------
# SCSI (iscsifs/scsi.py)
# --------------------------------------------------------------------------------------------

_SCSI_PARSERS: tuple[Callable[[bytes], object], ...] = (
    scsi.decode_sense,
    scsi.parse_inquiry,
    scsi.parse_vpd_supported_pages,
    scsi.parse_vpd_unit_serial,
    scsi.parse_vpd_device_identification,
    scsi.parse_vpd_block_limits,
    scsi.parse_vpd_lb_provisioning,
    scsi.parse_read_capacity10,
    scsi.parse_read_capacity16,
    scsi.report_luns_length,
    scsi.parse_report_luns,
)


def scsi_parsers(data: bytes) -> None:
    """Every SCSI parser on the input: ScsiParseError or a result; error_for_status never
    raises; decoded sense describes itself in one line."""
    for parse in _SCSI_PARSERS:
        try:
            result = parse(data)
        except scsi.ScsiParseError as exc:
            assert str(exc)
            continue
        if isinstance(result, scsi.Sense):
            line = scsi.describe_sense(result)
            assert line and "\n" not in line
        elif isinstance(result, tuple):
            for d in result:
                if isinstance(d, scsi.Designator):
                    assert isinstance(d.text, str)
        elif isinstance(result, scsi.Capacity):
            assert result.block_size > 0 and result.size_bytes >= 0
    if data:
        err = scsi.error_for_status(data[0], data[1:])
        if err is not None:
            assert str(err)
            if isinstance(err, scsi.CheckCondition):
                assert err.sense_key is None or isinstance(err.sense_key, int)
                for attempt in (1, 2, 50):
                    scsi.retry_decision(err, attempt)
    if len(data) >= 8:
        with contextlib.suppress(scsi.ScsiParseError):
            n = scsi.decode_lun(int.from_bytes(data[:8], "big"))
            assert scsi.decode_lun(scsi.encode_lun(n)) == n


# --------------------------------------------------------------------------------------------
# The manual's option syntax (iscsifs/syntax.py)
# --------------------------------------------------------------------------------------------

#: Characters of fragments of a secret that may never be echoed (see syntax_security).
_SECRET_ALPHABET = frozenset("qxzjQXZJ0123456789#%!~^")


def _secret_fragments(value: str) -> list[str]:
    """Runs of at least 6 characters of the secret alphabet: long enough that a message
    containing one cannot be a coincidence of the message's own words."""
    out, cur = [], []
    for ch in value + "\0":
        if ch in _SECRET_ALPHABET:
            cur.append(ch)
        else:
            if len(cur) >= 6:
                out.append("".join(cur))
            cur = []
    return out


def option_syntax(data: bytes) -> None:
    """parse_security / parse_options / parse_address on text as argv gives it (undecodable
    bytes as surrogates): SyntaxProblem or a value. parse_security never echoes a secret."""
    if not data:
        return
    which = data[0] % 6
    arg = data[1:].decode("utf-8", "surrogateescape")
    try:
        if which == 0:
            sec = syntax_mod.parse_security(arg)
            assert sec.is_chap
        elif which == 1:
            syntax_mod.parse_security(arg, option="-discoverySecurity", allow_none=True)
        elif which == 2:
            syntax_mod.parse_options(arg, option="-connection")
        elif which == 3:
            syntax_mod.parse_options(arg, option="-session")
        else:
            host, port = syntax_mod.parse_address(arg, isns=which == 5)
            assert host and 0 < port <= 65535
    except syntax_mod.SyntaxProblem as exc:
        msg = str(exc)
        assert msg and "\n" not in msg
        if which <= 1:
            # Text that also stands outside any secret (in a user name, which messages may
            # show) is not evidence of a leak.
            public = [item for item in arg.split(",")
                      if not item.startswith(("TargetSecret=", "InitiatorSecret="))]
            for value in syntax_mod.secret_values(arg):
                for frag in _secret_fragments(value):
                    if any(frag in item for item in public):
                        continue
                    assert frag not in msg, "a -security error message repeats the secret"



# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: Every fuzz target by name (the corpus directory names and scripts/fuzz arguments).
TARGETS: dict[str, Callable[[bytes], None]] = {
    "pdu_framer": pdu_framer,
    "pdu_decode": pdu_decode,
    "text_decode": text_decode,
    "text_assembler": text_assembler,
    "negotiator": negotiator,
    "login": login,
    "chap": chap,
    "sendtargets": sendtargets,
    "target_address": target_address,
    "isns_framer": isns_framer,
    "isns_attributes": isns_attributes,
    "scsi": scsi_parsers,
    "syntax": option_syntax,
}


def run(name: str, data: bytes, *, tolerate_known: bool = True) -> None:
    """Run one target under the hang guard. With tolerate_known, an exception matching a
    KNOWN_BUGS entry of this target is swallowed (the corpus replay runs without it)."""
    try:
        with hang_guard():
            TARGETS[name](data)
    except Exception as exc:
        if tolerate_known and known_bug(name, exc) is not None:
            return
        raise


# --------------------------------------------------------------------------------------------
# The corpus: tests/fuzz/corpus/<target>/<name>.hex, hex digits with '#' comment lines. A line
# "# xfail: <reason>" marks a case of a reported bug in a module this suite may not edit.
# --------------------------------------------------------------------------------------------

CORPUS = Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class Case:
    target: str
    path: Path
    data: bytes
    notes: tuple[str, ...]
    xfail: str | None


def load_case(path: Path) -> Case:
    notes, digits = [], []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            notes.append(stripped[1:].strip())
        elif stripped:
            digits.append(stripped)
    xfail = next((n.split(":", 1)[1].strip() for n in notes if n.startswith("xfail:")), None)
    return Case(target=path.parent.name, path=path, data=bytes.fromhex("".join(digits)),
                notes=tuple(notes), xfail=xfail)


def corpus_cases(root: Path = CORPUS) -> list[Case]:
    return [load_case(p) for p in sorted(root.glob("*/*.hex"))]


def save_case(target: str, data: bytes, notes: list[str], root: Path = CORPUS,
              name: str | None = None) -> Path:
    """Write one case (named by its content unless named) and return its path."""
    if target not in TARGETS:
        raise KeyError(f"no fuzz target {target!r}")
    folder = root / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or hashlib.sha1(data).hexdigest()[:16]}.hex"
    hexed = data.hex()
    lines = [f"# {n}" for n in notes] + [hexed[i : i + 64] for i in range(0, len(hexed), 64)]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Seeds for coverage-guided runs (scripts/fuzz): one well-formed input per shape, so libFuzzer
# starts past the first length and digest checks. Hypothesis builds its own (strategies.py).
# --------------------------------------------------------------------------------------------


def _seed_pdus() -> list[pdu.Pdu]:
    sense = bytes([0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0])
    return [
        pdu.NopIn(itt=1, ttt=2, statsn=3, exp_cmdsn=4, max_cmdsn=5, data=b"ping"),
        pdu.ScsiResponse(status=2, itt=1, statsn=3, exp_cmdsn=4, max_cmdsn=5,
                         data=len(sense).to_bytes(2, "big") + sense),
        pdu.DataIn(final=True, status_present=True, itt=1, exp_cmdsn=4, max_cmdsn=5, datasn=0,
                   buffer_offset=0, data=bytes(range(256)) * 4),
        pdu.R2T(itt=1, ttt=9, statsn=3, exp_cmdsn=4, max_cmdsn=5, r2tsn=0, buffer_offset=0,
                desired_length=8192),
        pdu.TextResponse(final=True, itt=1, ttt=0xFFFFFFFF, statsn=3, exp_cmdsn=4, max_cmdsn=5,
                         data=b"TargetName=iqn.2024-01.org.example:t1\0"
                              b"TargetAddress=127.0.0.1:3260,1\0"),
        pdu.AsyncMessage(statsn=3, exp_cmdsn=4, max_cmdsn=5, async_event=1, parameter3=5),
        pdu.Reject(reason=9, statsn=3, exp_cmdsn=4, max_cmdsn=5, data=bytes(48)),
        pdu.ScsiCommand(itt=7, expected_length=512, cmdsn=1, exp_statsn=1, cdb=bytes(16),
                        ahs=(pdu.Ahs(ahs_type=1, data=bytes(17)),), data=b"x" * 5),
    ]


def seeds(name: str) -> list[bytes]:
    out: list[bytes] = []
    if name in ("pdu_framer", "pdu_decode"):
        for flags in range(4):
            hd, dd = bool(flags & 1), bool(flags & 2)
            wires = [pdu.encode(p, header_digest=hd, data_digest=dd) for p in _seed_pdus()]
            if name == "pdu_framer":
                out.append(bytes([flags, 5]) + b"".join(wires))
                out.append(bytes([flags | 4 | 0x20 | 0x10, 1]) + b"".join(wires))
            else:
                out += [bytes([flags]) + w for w in wires]
    elif name == "login":
        for mode in range(LOGIN_MODES):
            out.append(bytes([mode]) + b"".join(pdu.encode(r) for r in good_exchange(mode)))
    elif name in ("text_decode", "text_assembler", "negotiator", "sendtargets"):
        body = (b"TargetName=iqn.2024-01.org.example:t1\0TargetAddress=127.0.0.1:3260,1\0"
                b"TargetAddress=[::1]:3261,2\0TargetAlias=disk\0HeaderDigest=None\0"
                b"MaxRecvDataSegmentLength=8192\0MaxBurstLength=262144\0InitialR2T=Yes\0")
        prefix = {"text_assembler": bytes([1, 7]), "negotiator": bytes([0])}.get(name, b"")
        out.append(prefix + body)
    elif name == "target_address":
        out += [b"127.0.0.1:3260,1", b"[::1]:3261,2", b"host.example"]
    elif name in ("isns_framer", "isns_attributes"):
        attrs = (
            isns.IsnsAttribute.string(isns.IsnsTag.ISCSI_NAME, "iqn.2024-01.org.example:t1"),
            isns.IsnsAttribute.uint32(isns.IsnsTag.ISCSI_NODE_TYPE, 1),
            isns.IsnsAttribute.ip(isns.IsnsTag.PORTAL_IP_ADDRESS, "127.0.0.1"),
            isns.IsnsAttribute.port(isns.IsnsTag.PORTAL_TCP_UDP_PORT, 3260),
            isns.IsnsAttribute.string(isns.IsnsTag.PG_ISCSI_NAME, "iqn.2024-01.org.example:t1"),
            isns.IsnsAttribute.ip(isns.IsnsTag.PG_PORTAL_IP_ADDR, "127.0.0.1"),
            isns.IsnsAttribute.port(isns.IsnsTag.PG_PORTAL_TCP_UDP_PORT, 3260),
            isns.IsnsAttribute.uint32(isns.IsnsTag.PG_TAG, 1),
        )
        if name == "isns_attributes":
            out.append(b"".join(a.encode() for a in attrs))
        else:
            m = isns.IsnsMessage(function=isns.IsnsFunction.DEV_ATTR_QRY_RSP, transaction_id=3,
                                 attributes=(isns.DELIMITER, *attrs), status=0, flags=0x4000)
            out.append(b"\0" + isns.encode_message(m))
            out.append(b"\x05" + isns.encode_message(m, max_pdu_payload=16))
    elif name == "scsi":
        out += [bytes([0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0]),
                bytes([0x72, 5, 0x24, 0, 0, 0, 0, 12, 2, 6, 0, 0, 0x80, 0, 1, 0,
                       0, 10, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 5]),
                bytes([0, 0x83, 0, 12, 1, 3, 0, 8]) + bytes(8),
                bytes(4) + bytes(4) + (1 << 48).to_bytes(8, "big")]
    elif name == "syntax":
        out += [b"\0CHAP,TargetUserName=u,TargetSecret=0123456789abc",
                b"\1NONE", b"\2HeaderDigest=CRC32C,MaxRecvDataSegmentLength=8192",
                b"\x03MaxBurstLength=1024,InitialR2T=No", b"\x04[::1]:3260", b"\x05127.0.0.1"]
    return out
