# The initiator's login state machine (RFC 7143 sections 6.3, 11.12, 11.13, 12.1): security
# negotiation (AuthMethod, CHAP one-way or mutual), operational negotiation (through
# text.Negotiator), transit to the full feature phase, redirects, and the login status codes as
# typed errors. Sans I/O: start()/receive() trade LoginRequest and LoginResponse dataclasses.
# It must not do I/O, keep time, or let a CHAP secret reach a message, repr or log line.
# Any error leaves the machine failed; every later call raises LocalProtocolError.

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from iscsifs.proto import serial
from iscsifs.proto.chap import (
    DEFAULT_ALGORITHMS,
    ChapAlgorithm,
    ChapCredentials,
    ChapInitiator,
    MutualAuthenticationFailed,
)
from iscsifs.proto.errors import IscsiError, LocalProtocolError, RemoteProtocolError
from iscsifs.proto.pdu import LoginRequest, LoginResponse, Stage
from iscsifs.proto.text import (
    KEYS,
    REJECT,
    KeyKind,
    NegotiatedParams,
    Negotiator,
    TextAssembler,
    Use,
    decode_text,
    encode_text,
    is_irrelevant,
)

__all__ = [
    "DEFAULT_OFFERS",
    "AuthenticationFailed",
    "AuthorizationFailed",
    "CantIncludeInSession",
    "InitiatorError",
    "InvalidDuringLogin",
    "LoginComplete",
    "LoginConfig",
    "LoginError",
    "LoginInput",
    "LoginRedirect",
    "LoginState",
    "LoginStateMachine",
    "LoginStatus",
    "MissingParameter",
    "MutualAuthenticationFailed",
    "OutOfResources",
    "ServiceUnavailable",
    "SessionDoesNotExist",
    "SessionTypeNotSupported",
    "TargetError",
    "TargetNotFound",
    "TargetRemoved",
    "TooManyConnections",
    "UnknownLoginStatus",
    "UnsupportedVersion",
    "default_offers",
    "login_error_for",
    "parse_target_address",
]

#: The well-known iSCSI port (RFC 7143 section 13.8: a TargetAddress without a port means it).
ISCSI_PORT = 3260
#: Login PDUs we exchange before calling a target that keeps talking without progress broken.
MAX_LOGIN_EXCHANGES = 32
#: Our login text must fit the 8192 bytes every target accepts before MaxRecvDataSegmentLength
#: has been declared (RFC 7143 section 13.12).
MAX_LOGIN_TEXT = 8192

#: The engine's default operational offers (values as text; see conf/iscsifs.example.toml).
DEFAULT_OFFERS: Mapping[str, str] = MappingProxyType({
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
})


def default_offers(session_type: str = "Normal", **overrides: str) -> dict[str, str]:
    """DEFAULT_OFFERS with overrides, minus the keys irrelevant to a discovery session."""
    offers = {**DEFAULT_OFFERS, **overrides}
    settled = {"SessionType": session_type}
    return {k: v for k, v in offers.items() if k not in KEYS or not is_irrelevant(KEYS[k], settled)}


# --------------------------------------------------------------------------------------------
# Status codes and errors (RFC 7143 section 11.13.5)
# --------------------------------------------------------------------------------------------


class LoginStatus(enum.IntEnum):
    """Status-Class << 8 | Status-Detail of a Login Response (RFC 7143 section 11.13.5)."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302


class LoginError(IscsiError):
    """The target refused the login. Carries the raw status; subclasses name it.

    `retryable` says whether trying again later may work (the target's own trouble, class 3).
    """

    status: ClassVar[LoginStatus | None] = None
    what: ClassVar[str] = "login failed"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        target: str,
        *,
        status_class: int,
        status_detail: int,
        reason: str | None = None,
    ) -> None:
        self.target = target
        self.status_class = status_class
        self.status_detail = status_detail
        self.reason = reason
        text = f"login to {target}: {self.what}"
        if reason:
            text += f" ({reason})"
        else:
            text += f" (status 0x{status_class:02x}{status_detail:02x})"
        super().__init__(text)


class InitiatorError(LoginError):
    status = LoginStatus.INITIATOR_ERROR
    what = "target reports an initiator error"


class AuthenticationFailed(LoginError):
    status = LoginStatus.AUTHENTICATION_FAILURE
    what = "authentication failed"


class AuthorizationFailed(LoginError):
    status = LoginStatus.AUTHORIZATION_FAILURE
    what = "not authorized to access this target"


class TargetNotFound(LoginError):
    status = LoginStatus.NOT_FOUND
    what = "target not found"


class TargetRemoved(LoginError):
    status = LoginStatus.TARGET_REMOVED
    what = "target removed"


class UnsupportedVersion(LoginError):
    status = LoginStatus.UNSUPPORTED_VERSION
    what = "iSCSI version not supported by target"


class TooManyConnections(LoginError):
    status = LoginStatus.TOO_MANY_CONNECTIONS
    what = "too many connections"


class MissingParameter(LoginError):
    status = LoginStatus.MISSING_PARAMETER
    what = "target reports a missing parameter"


class CantIncludeInSession(LoginError):
    status = LoginStatus.CANT_INCLUDE_IN_SESSION
    what = "connection cannot be included in the session"


class SessionTypeNotSupported(LoginError):
    status = LoginStatus.SESSION_TYPE_NOT_SUPPORTED
    what = "session type not supported"


class SessionDoesNotExist(LoginError):
    status = LoginStatus.SESSION_DOES_NOT_EXIST
    what = "session does not exist"


class InvalidDuringLogin(LoginError):
    status = LoginStatus.INVALID_DURING_LOGIN
    what = "request invalid during login"


class TargetError(LoginError):
    status = LoginStatus.TARGET_ERROR
    what = "target error"
    retryable = True


class ServiceUnavailable(LoginError):
    status = LoginStatus.SERVICE_UNAVAILABLE
    what = "service unavailable"
    retryable = True


class OutOfResources(LoginError):
    status = LoginStatus.OUT_OF_RESOURCES
    what = "target out of resources"
    retryable = True


class UnknownLoginStatus(LoginError):
    what = "login rejected with an unknown status"


_ERRORS: Mapping[int, type[LoginError]] = {
    cls.status: cls
    for cls in (
        InitiatorError, AuthenticationFailed, AuthorizationFailed, TargetNotFound,
        TargetRemoved, UnsupportedVersion, TooManyConnections, MissingParameter,
        CantIncludeInSession, SessionTypeNotSupported, SessionDoesNotExist,
        InvalidDuringLogin, TargetError, ServiceUnavailable, OutOfResources,
    )
    if cls.status is not None
}


def login_error_for(
    target: str, status_class: int, status_detail: int, reason: str | None = None
) -> LoginError:
    """The LoginError subclass for a status (UnknownLoginStatus for codes RFC 7143 lacks)."""
    cls = _ERRORS.get((status_class << 8) | status_detail, UnknownLoginStatus)
    return cls(target, status_class=status_class, status_detail=status_detail, reason=reason)


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginConfig:
    """Everything one connection's login needs.

    chap: the manual's TargetUserName/TargetSecret, with which we answer the target's challenge.
    mutual_chap: the manual's InitiatorUserName/InitiatorSecret, which the target must prove
    (mutual CHAP); it requires chap. With neither, AuthMethod=None is offered, or the security
    stage is skipped altogether when skip_security is set.
    """

    initiator_name: str
    target_name: str | None
    session_type: str = "Normal"
    isid: bytes
    tsih: int = 0
    cid: int = 0
    cmdsn: int
    itt: int
    exp_statsn: int = 0
    initiator_alias: str | None = None
    chap: ChapCredentials | None = None
    mutual_chap: ChapCredentials | None = None
    chap_algorithms: tuple[ChapAlgorithm, ...] = DEFAULT_ALGORITHMS
    operational_offers: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_OFFERS))
    skip_security: bool = False
    max_text_bytes: int = 65536

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "operational_offers", MappingProxyType(dict(self.operational_offers))
        )
        if self.session_type not in ("Normal", "Discovery"):
            raise LocalProtocolError(f"unknown session type {self.session_type!r}")
        if not self.initiator_name:
            raise LocalProtocolError("login needs an initiator name")
        if self.session_type == "Normal" and not self.target_name:
            raise LocalProtocolError("a normal session login needs a target name")
        if self.session_type == "Discovery" and self.target_name is not None:
            raise LocalProtocolError("a discovery session login takes no target name")
        if len(self.isid) != 6:
            raise LocalProtocolError("ISID must be 6 bytes")
        if not 0 <= self.tsih <= 0xFFFF or not 0 <= self.cid <= 0xFFFF:
            raise LocalProtocolError("TSIH and CID are 16-bit values")
        if self.itt == serial.RESERVED_TAG or not 0 <= self.itt <= serial.MASK:
            raise LocalProtocolError("login ITT must be a 32-bit value other than 0xffffffff")
        if self.mutual_chap is not None and self.chap is None:
            raise LocalProtocolError("mutual CHAP needs the target CHAP credentials as well")
        if self.skip_security and self.chap is not None:
            raise LocalProtocolError("cannot skip the security stage when CHAP is configured")
        for key in self.operational_offers:
            spec = KEYS.get(key)
            if spec is not None and spec.use is Use.SECURITY:
                raise LocalProtocolError(f"{key} is not an operational key")

    @property
    def target_label(self) -> str:
        """How messages name the target."""
        return self.target_name or "discovery session"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginComplete:
    """The login succeeded; the connection is in the full feature phase."""

    params: NegotiatedParams
    tsih: int
    statsn: int
    exp_statsn: int
    #: The CmdSN of the first command (login requests are immediate and do not consume one).
    cmdsn: int
    exp_cmdsn: int
    max_cmdsn: int
    target_alias: str | None
    portal_group_tag: int | None
    auth_method: str
    chap_algorithm: ChapAlgorithm | None
    #: Our offers the target answered NotUnderstood (e.g. newer keys on an older target).
    not_understood: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginRedirect:
    """The target sent us elsewhere (status 0x0101 temporary, 0x0102 permanent)."""

    address: str
    port: int
    permanent: bool
    tpgt: int | None = None


def _is_decimal(text: str) -> bool:
    # str.isdigit() alone admits "²" and other Unicode digits, which int() then refuses with a
    # plain ValueError; the length cap keeps int() far from its 4300-digit limit.
    return text.isascii() and text.isdigit() and len(text) <= 5


def parse_target_address(value: str) -> tuple[str, int, int | None]:
    """domainname[:port][,portal-group-tag] (RFC 7143 section 13.8) -> (host, port, tpgt).

    IPv6 addresses come in brackets: [2001:db8::1]:3261,2. Errors are RemoteProtocolError.
    """
    text, comma, tag = value.rpartition(",") if "," in value else (value, "", "")
    tpgt: int | None = None
    if comma:
        if not _is_decimal(tag) or int(tag) > 0xFFFF:
            raise RemoteProtocolError(f"bad portal group tag in TargetAddress {value!r}")
        tpgt = int(tag)
    port = ISCSI_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RemoteProtocolError(f"unclosed IPv6 bracket in TargetAddress {value!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest:
            if not rest.startswith(":") or len(rest) == 1:
                raise RemoteProtocolError(f"bad port in TargetAddress {value!r}")
            port_text = rest[1:]
        else:
            port_text = ""
    else:
        host, colon, port_text = text.partition(":")
        if colon and not port_text:
            raise RemoteProtocolError(f"bad port in TargetAddress {value!r}")
    if port_text:
        if not _is_decimal(port_text) or not 0 < int(port_text) <= 0xFFFF:
            raise RemoteProtocolError(f"bad port in TargetAddress {value!r}")
        port = int(port_text)
    if not host or any(c.isspace() for c in host):
        raise RemoteProtocolError(f"bad host in TargetAddress {value!r}")
    return host, port, tpgt


# --------------------------------------------------------------------------------------------
# The state machine
# --------------------------------------------------------------------------------------------


class LoginState(enum.Enum):
    IDLE = "idle"
    SECURITY = "security negotiation"
    OPERATIONAL = "operational negotiation"
    COMPLETE = "full feature phase"
    REDIRECTED = "redirected"
    FAILED = "failed"


class LoginInput(enum.Enum):
    START_SECURITY = "start in the security stage"
    START_OPERATIONAL = "start in the operational stage"
    PARTIAL = "response with C=1 (more text follows)"
    STAY = "response with T=0 (stay in the stage)"
    TO_OPERATIONAL = "response with T=1, NSG=1"
    TO_FULL_FEATURE = "response with T=1, NSG=3"
    REDIRECT = "redirect status (class 1)"
    REJECT = "error status (class 2 or 3)"


#: {(state, input): next state} (docs/design.md rule 4). A response input missing here while a login is
#: under way is the target's protocol error; any input in IDLE other than a start, or any input
#: after the end, is our misuse.
LOGIN_TRANSITIONS: Mapping[tuple[LoginState, LoginInput], LoginState] = MappingProxyType({
    (LoginState.IDLE, LoginInput.START_SECURITY): LoginState.SECURITY,
    (LoginState.IDLE, LoginInput.START_OPERATIONAL): LoginState.OPERATIONAL,
    (LoginState.SECURITY, LoginInput.PARTIAL): LoginState.SECURITY,
    (LoginState.SECURITY, LoginInput.STAY): LoginState.SECURITY,
    (LoginState.SECURITY, LoginInput.TO_OPERATIONAL): LoginState.OPERATIONAL,
    (LoginState.SECURITY, LoginInput.REDIRECT): LoginState.REDIRECTED,
    (LoginState.SECURITY, LoginInput.REJECT): LoginState.FAILED,
    (LoginState.OPERATIONAL, LoginInput.PARTIAL): LoginState.OPERATIONAL,
    (LoginState.OPERATIONAL, LoginInput.STAY): LoginState.OPERATIONAL,
    (LoginState.OPERATIONAL, LoginInput.TO_FULL_FEATURE): LoginState.COMPLETE,
    (LoginState.OPERATIONAL, LoginInput.REDIRECT): LoginState.REDIRECTED,
    (LoginState.OPERATIONAL, LoginInput.REJECT): LoginState.FAILED,
})

_TERMINAL = frozenset({LoginState.COMPLETE, LoginState.REDIRECTED, LoginState.FAILED})


class _Sec(enum.Enum):
    """Where the security stage stands (inside LoginState.SECURITY)."""

    AUTH_OFFERED = "AuthMethod offered"
    ALGORITHMS_OFFERED = "CHAP_A sent"
    RESPONSE_SENT = "CHAP_R sent"
    DONE = "authenticated, waiting to transit"


_SECURITY_KEYS = frozenset(k for k, spec in KEYS.items() if spec.use is Use.SECURITY)


class LoginStateMachine:
    """One connection's login, initiator side.

        sm = LoginStateMachine(config, random=os.urandom)
        request = sm.start()
        while True:
            result = sm.receive(response_to(request))
            if not isinstance(result, LoginRequest): break
            request = result

    receive() returns the next LoginRequest, a LoginComplete or a LoginRedirect, and raises
    LoginError subclasses for refusals, RemoteProtocolError (MutualAuthenticationFailed among
    them) for a target breaking the rules, LocalProtocolError for misuse.
    """

    def __init__(self, config: LoginConfig, *, random: Callable[[int], bytes]) -> None:
        self._config = config
        self._state = LoginState.IDLE
        self._failure: str | None = None
        offers = dict(config.operational_offers)
        self._negotiator = Negotiator(
            offers, session_type=config.session_type, leading=config.tsih == 0
        )
        self._chap: ChapInitiator | None = None
        if config.chap is not None:
            self._chap = ChapInitiator(
                config.chap,
                mutual=config.mutual_chap,
                random=random,
                algorithms=config.chap_algorithms,
            )
        if config.mutual_chap is not None:
            self._auth_offer = ["CHAP"]  # never let a target talk us down to None
        elif config.chap is not None:
            self._auth_offer = ["CHAP", "None"]
        else:
            self._auth_offer = ["None"]
        self._auth_method: str | None = None
        self._sec = _Sec.AUTH_OFFERED
        self._assembler = TextAssembler(config.max_text_bytes)
        self._exp_statsn = config.exp_statsn
        self._last: LoginRequest | None = None
        self._exchanges = 0
        self._pending_answers: list[tuple[str, str]] = []

    # -- public ---------------------------------------------------------------------------

    @property
    def state(self) -> LoginState:
        return self._state

    @property
    def config(self) -> LoginConfig:
        return self._config

    def start(self) -> LoginRequest:
        """The first Login Request of the connection."""
        self._guard()
        try:
            if self._state is not LoginState.IDLE:
                raise LocalProtocolError("login already started")
            return self._start()
        except IscsiError as exc:
            self._fail(exc)
            raise

    def receive(self, response: LoginResponse) -> LoginRequest | LoginComplete | LoginRedirect:
        """Feed the target's Login Response; get what to do next."""
        self._guard()
        try:
            if self._state is LoginState.IDLE:
                raise LocalProtocolError("login response fed before start()")
            return self._receive(response)
        except IscsiError as exc:
            self._fail(exc)
            raise

    # -- plumbing -------------------------------------------------------------------------

    def _guard(self) -> None:
        if self._state is LoginState.FAILED:
            raise LocalProtocolError(f"login already failed: {self._failure}")
        if self._state in _TERMINAL:
            raise LocalProtocolError(f"login already ended ({self._state.value})")

    def _fail(self, exc: Exception) -> None:
        self._state = LoginState.FAILED
        self._failure = str(exc)

    def _transition(self, event: LoginInput) -> None:
        nxt = LOGIN_TRANSITIONS.get((self._state, event))
        if nxt is None:
            if self._state is LoginState.IDLE or self._state in _TERMINAL:
                raise LocalProtocolError(
                    f"login input '{event.value}' not allowed in state {self._state.value}"
                )
            raise RemoteProtocolError(
                f"login to {self._config.target_label}: target sent a {event.value} "
                f"during {self._state.value}"
            )
        self._state = nxt

    def _remote(self, why: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"login to {self._config.target_label}: {why}")

    def _request(
        self,
        *,
        transit: bool,
        csg: Stage,
        nsg: Stage,
        pairs: list[tuple[str, str]],
        continuation: bool = False,
    ) -> LoginRequest:
        data = encode_text(pairs)
        if len(data) > MAX_LOGIN_TEXT:
            raise LocalProtocolError(f"login text of {len(data)} bytes exceeds {MAX_LOGIN_TEXT}")
        # Requests that only fetch the rest of a C=1 text are bounded by the text size cap
        # instead (each such response must bring at least one byte).
        if not continuation:
            self._exchanges += 1
            if self._exchanges > MAX_LOGIN_EXCHANGES:
                raise self._remote(
                    f"target kept the login going for {MAX_LOGIN_EXCHANGES} requests"
                )
        c = self._config
        req = LoginRequest(
            transit=transit, cont=False, csg=int(csg), nsg=int(nsg), version_max=0,
            version_min=0, isid=c.isid, tsih=c.tsih, itt=c.itt, cid=c.cid, cmdsn=c.cmdsn,
            exp_statsn=self._exp_statsn, data=data,
        )
        self._last = req
        return req

    def _identity_pairs(self) -> list[tuple[str, str]]:
        c = self._config
        pairs = [("InitiatorName", c.initiator_name)]
        if c.initiator_alias:
            pairs.append(("InitiatorAlias", c.initiator_alias))
        pairs.append(("SessionType", c.session_type))
        if c.target_name is not None:
            pairs.append(("TargetName", c.target_name))
        return pairs

    def _start(self) -> LoginRequest:
        c = self._config
        if c.skip_security:
            self._transition(LoginInput.START_OPERATIONAL)
            self._auth_method = "None"
            pairs = self._identity_pairs() + self._negotiator.initial_pairs()
            return self._request(
                transit=True, csg=Stage.OPERATIONAL, nsg=Stage.FULL_FEATURE, pairs=pairs
            )
        self._transition(LoginInput.START_SECURITY)
        pairs = [*self._identity_pairs(), ("AuthMethod", ",".join(self._auth_offer))]
        # With only None on offer nothing else happens in this stage: ask to move on at once.
        transit = self._auth_offer == ["None"]
        return self._request(
            transit=transit, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL, pairs=pairs
        )

    # -- responses ------------------------------------------------------------------------

    def _classify(self, resp: LoginResponse) -> LoginInput:
        req = self._last
        assert req is not None
        c = self._config
        if resp.itt != req.itt:
            raise self._remote("target answered with another Initiator Task Tag")
        # A refusal is taken at face value: tgtd zeroes the ISID in its rejects.
        if resp.status_class == 1:
            return LoginInput.REDIRECT
        if resp.status_class != 0 or resp.status_detail != 0:
            return LoginInput.REJECT
        if resp.isid != c.isid:
            raise self._remote("target echoed another ISID")
        if resp.version_active != 0:
            raise self._remote(f"target chose iSCSI version {resp.version_active}, we offered 0")
        if resp.csg != req.csg:
            raise self._remote(f"target answered in stage {resp.csg} to our stage {req.csg}")
        if resp.cont and resp.transit:
            raise self._remote("target set both C and T in a login response")
        if resp.transit and not req.transit:
            raise self._remote("target set T although we did not ask to transit")
        final = resp.transit and resp.nsg == Stage.FULL_FEATURE
        if final and c.tsih == 0:
            if resp.tsih == 0:
                raise self._remote("target ended a leading login without a TSIH")
        elif resp.tsih != c.tsih:
            raise self._remote(f"target changed the TSIH to {resp.tsih} (ours {c.tsih})")
        if resp.cont:
            return LoginInput.PARTIAL
        if not resp.transit:
            return LoginInput.STAY
        if resp.nsg not in (Stage.OPERATIONAL, Stage.FULL_FEATURE) or resp.nsg <= resp.csg:
            raise self._remote(f"target asked to transit from stage {resp.csg} to {resp.nsg}")
        if resp.nsg > req.nsg:
            raise self._remote(f"target went to stage {resp.nsg}, we asked for {req.nsg}")
        if resp.nsg == Stage.OPERATIONAL:
            return LoginInput.TO_OPERATIONAL
        return LoginInput.TO_FULL_FEATURE

    def _receive(self, resp: LoginResponse) -> LoginRequest | LoginComplete | LoginRedirect:
        event = self._classify(resp)
        if event is LoginInput.REJECT:
            self._transition(event)
            raise self._login_error(resp)
        if event is LoginInput.REDIRECT:
            result = self._redirect(resp)
            self._transition(event)
            return result
        self._exp_statsn = serial.add(resp.statsn, 1)
        if resp.cont and not resp.data:
            raise self._remote("target sent an empty login response with the C bit set")
        try:
            pairs = self._assembler.feed(resp.data, cont=resp.cont)
        except RemoteProtocolError as exc:
            raise self._remote(str(exc)) from None
        stage = self._state
        if pairs is None:  # C=1: fetch the rest with an empty request (RFC 7143 section 6.1)
            assert self._last is not None
            self._transition(event)
            return self._request(
                transit=False, csg=Stage(resp.csg), nsg=Stage(self._last.nsg), pairs=[],
                continuation=True,
            )
        if stage is LoginState.SECURITY:
            return self._security(event, resp, pairs)
        return self._operational(event, resp, pairs)

    def _login_error(self, resp: LoginResponse) -> LoginError:
        c = self._config
        reason = None
        if (resp.status_class, resp.status_detail) == (2, 1):
            answered = None
            try:
                answered = dict(decode_text(resp.data)).get("AuthMethod")
            except RemoteProtocolError:
                pass
            if self._auth_offer == ["None"]:
                reason = "target requires authentication; no CHAP credentials are configured"
            elif answered in ("Reject", "None", "NotUnderstood"):
                # Refused before any name or secret was sent: the method, not the secret.
                offered = ",".join(self._auth_offer or [])
                reason = (f"target refused the authentication method {offered} "
                          f"(AuthMethod={answered}); is CHAP set up at the target?")
            else:
                reason = "CHAP user name or secret rejected by target"
        return login_error_for(c.target_label, resp.status_class, resp.status_detail, reason)

    def _redirect(self, resp: LoginResponse) -> LoginRedirect:
        if resp.status_detail not in (1, 2):
            raise login_error_for(self._config.target_label, 1, resp.status_detail)
        if resp.cont:
            raise self._remote("redirect response has the C bit set")
        try:
            pairs = TextAssembler(self._config.max_text_bytes).feed(resp.data, cont=False) or []
        except RemoteProtocolError as exc:
            raise self._remote(str(exc)) from None
        addresses = [v for k, v in pairs if k == "TargetAddress"]
        if len(addresses) != 1:
            raise self._remote(f"redirect carries {len(addresses)} TargetAddress keys, not 1")
        try:
            host, port, tpgt = parse_target_address(addresses[0])
        except RemoteProtocolError as exc:
            raise self._remote(str(exc)) from None
        return LoginRedirect(address=host, port=port, permanent=resp.status_detail == 2, tpgt=tpgt)

    # -- security stage -------------------------------------------------------------------

    def _split(
        self, pairs: list[tuple[str, str]]
    ) -> tuple[dict[str, str], list[tuple[str, str]]]:
        security: dict[str, str] = {}
        other: list[tuple[str, str]] = []
        for key, value in pairs:
            if key in _SECURITY_KEYS:
                if key in security:
                    raise self._remote(f"target sent {key} twice")
                security[key] = value
            else:
                other.append((key, value))
        return security, other

    def _security(
        self, event: LoginInput, resp: LoginResponse, pairs: list[tuple[str, str]]
    ) -> LoginRequest:
        security, other = self._split(pairs)
        for key, _value in other:
            spec = KEYS.get(key)
            if spec is not None and spec.kind not in (KeyKind.DECLARATIVE, KeyKind.OBSOLETE):
                raise self._remote(f"target negotiated {key} during the security stage")
        answers = self._feed_negotiator(other)
        step = self._sec
        transit_pairs: list[tuple[str, str]] = []
        if step is _Sec.AUTH_OFFERED:
            self._take_auth_method(security, resp)
            if self._auth_method == "CHAP":
                assert self._chap is not None
                if event is LoginInput.TO_OPERATIONAL:
                    raise self._remote("target left the security stage before CHAP")
                self._sec = _Sec.ALGORITHMS_OFFERED
                self._transition(event)
                return self._request(
                    transit=False, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL,
                    pairs=answers + self._chap.offer(),
                )
            self._sec = _Sec.DONE
        elif step is _Sec.ALGORITHMS_OFFERED:
            assert self._chap is not None
            if event is LoginInput.TO_OPERATIONAL:
                raise self._remote("target left the security stage before CHAP")
            self._reject_unexpected(security, {"CHAP_A", "CHAP_I", "CHAP_C"})
            try:
                transit_pairs = self._chap.answer(security)
            except RemoteProtocolError as exc:
                raise type(exc)(f"login to {self._config.target_label}: {exc}") from None
            self._sec = _Sec.RESPONSE_SENT
            self._transition(event)
            return self._request(
                transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL,
                pairs=answers + transit_pairs,
            )
        elif step is _Sec.RESPONSE_SENT:
            assert self._chap is not None
            self._reject_unexpected(security, {"CHAP_N", "CHAP_R"})
            try:
                self._chap.confirm(security)
            except RemoteProtocolError as exc:
                raise type(exc)(f"login to {self._config.target_label}: {exc}") from None
            self._sec = _Sec.DONE
        else:
            self._reject_unexpected(security, set())
        self._transition(event)
        if event is LoginInput.TO_OPERATIONAL:
            if answers:
                raise self._remote("target left the security stage with keys left to answer")
            pairs_out = self._negotiator.initial_pairs()
            return self._request(
                transit=True, csg=Stage.OPERATIONAL, nsg=Stage.FULL_FEATURE, pairs=pairs_out
            )
        # Authenticated (or no authentication) but the target has not moved on yet.
        return self._request(
            transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL, pairs=answers
        )

    def _reject_unexpected(self, security: Mapping[str, str], allowed: set[str]) -> None:
        extra = sorted(set(security) - allowed)
        if extra:
            raise self._remote(f"target sent {', '.join(extra)} out of turn")

    def _take_auth_method(self, security: dict[str, str], resp: LoginResponse) -> None:
        self._reject_unexpected(security, {"AuthMethod"})
        chosen = security.get("AuthMethod")
        label = self._config.target_label
        if chosen is None:
            # A target that transits at once on our lone None is taken to agree with it.
            if self._auth_offer == ["None"] and resp.transit:
                self._auth_method = "None"
                return
            raise self._remote("target did not answer AuthMethod")
        if chosen == REJECT:
            raise AuthenticationFailed(
                label, status_class=0, status_detail=0,
                reason="target accepts none of the offered methods "
                + ",".join(self._auth_offer),
            )
        if "," in chosen:
            raise self._remote("target answered AuthMethod with a list")
        if chosen not in self._auth_offer:
            if self._auth_offer == ["None"]:
                raise AuthenticationFailed(
                    label, status_class=0, status_detail=0,
                    reason=f"target requires {chosen}; no CHAP credentials are configured",
                )
            raise self._remote(f"target chose AuthMethod={chosen!r}, which we did not offer")
        self._auth_method = chosen

    # -- operational stage ----------------------------------------------------------------

    def _feed_negotiator(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        try:
            return self._negotiator.receive(pairs)
        except RemoteProtocolError as exc:
            raise self._remote(str(exc)) from None

    def _operational(
        self, event: LoginInput, resp: LoginResponse, pairs: list[tuple[str, str]]
    ) -> LoginRequest | LoginComplete:
        for key, _value in pairs:
            if key in _SECURITY_KEYS:
                raise self._remote(f"target sent {key} after the security stage")
        answers = self._feed_negotiator(pairs)
        if event is LoginInput.TO_FULL_FEATURE:
            if answers:
                raise self._remote(
                    "target went to the full feature phase leaving its offers of "
                    + ", ".join(k for k, _ in answers)
                    + " unanswered"
                )
            if not self._negotiator.done:
                raise self._remote(
                    "target went to the full feature phase without answering "
                    + ", ".join(self._negotiator.unanswered)
                )
            self._transition(event)
            return self._complete(resp)
        self._transition(event)
        return self._request(
            transit=True, csg=Stage.OPERATIONAL, nsg=Stage.FULL_FEATURE, pairs=answers
        )

    def _complete(self, resp: LoginResponse) -> LoginComplete:
        params = self._negotiator.result()
        return LoginComplete(
            params=params,
            tsih=resp.tsih,
            statsn=resp.statsn,
            exp_statsn=serial.add(resp.statsn, 1),
            cmdsn=self._config.cmdsn,
            exp_cmdsn=resp.exp_cmdsn,
            max_cmdsn=resp.max_cmdsn,
            target_alias=params.target_alias,
            portal_group_tag=params.target_portal_group_tag,
            auth_method=self._auth_method or "None",
            chap_algorithm=self._chap.algorithm if self._chap is not None else None,
            not_understood=self._negotiator.not_understood,
        )
