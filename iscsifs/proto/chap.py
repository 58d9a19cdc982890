# CHAP for iSCSI login (RFC 1994 as used by RFC 7143 sections 12.1.3 and 9.2.1), initiator side:
# choosing the digest among those we offered, answering the target's challenge, and for mutual
# CHAP challenging the target and checking its answer in constant time. Randomness is injected so
# tests are exact. It must not do I/O, build PDUs, or let a secret reach a message, repr or log:
# secrets live only inside Secret, whose repr is Secret(***).

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError
from iscsifs.proto.text import format_binary, format_list, parse_binary, parse_number

#: Source of random bytes: random(n) -> n bytes (os.urandom / secrets.token_bytes in production).
RandomSource = Callable[[int], bytes]


class ChapAlgorithm(enum.IntEnum):
    """CHAP_A values: the PPP authentication algorithm numbers (RFC 7143 section 12.1.3,
    RFC 1994; 6-8 as open-iscsi, SCST and the Linux target LIO number them).

    Only 5 is named by RFC 7143, which also says initiators MUST always offer it. tgtd 1.0.85
    treats 7 as SHA-1 (its chap.c), which is why SHA-256 is last in DEFAULT_ALGORITHMS.
    """

    MD5 = 5
    SHA1 = 6
    SHA256 = 7
    SHA3_256 = 8

    @property
    def hash_name(self) -> str:
        return _HASH_NAMES[self]

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size

    @classmethod
    def from_name(cls, name: str) -> ChapAlgorithm:
        """"MD5", "SHA-1"/"SHA1", "SHA-256"/"SHA256", "SHA3-256" (case-insensitive)."""
        key = name.strip().upper().replace("_", "-")
        try:
            return _BY_NAME[key]
        except KeyError:
            raise LocalProtocolError(f"unknown CHAP algorithm {name!r}") from None

    @property
    def label(self) -> str:
        return _LABELS[self]


_HASH_NAMES = {
    ChapAlgorithm.MD5: "md5",
    ChapAlgorithm.SHA1: "sha1",
    ChapAlgorithm.SHA256: "sha256",
    ChapAlgorithm.SHA3_256: "sha3_256",
}
_LABELS = {
    ChapAlgorithm.MD5: "MD5",
    ChapAlgorithm.SHA1: "SHA-1",
    ChapAlgorithm.SHA256: "SHA-256",
    ChapAlgorithm.SHA3_256: "SHA3-256",
}
_BY_NAME = {
    "MD5": ChapAlgorithm.MD5,
    "SHA-1": ChapAlgorithm.SHA1,
    "SHA1": ChapAlgorithm.SHA1,
    "SHA-256": ChapAlgorithm.SHA256,
    "SHA256": ChapAlgorithm.SHA256,
    "SHA3-256": ChapAlgorithm.SHA3_256,
    "SHA3": ChapAlgorithm.SHA3_256,
}

#: Our default preference. Strongest first, but SHA-256 (7) goes after MD5 (5): tgtd picks the
#: first of our values it knows, and it knows 5 and 7, taking 7 to mean SHA-1, so offering 7
#: before 5 makes every CHAP login to tgtd fail. Targets that number 7 as SHA-256 (LIO, SCST)
#: also know SHA3-256 and SHA-1, which come first.
DEFAULT_ALGORITHMS: tuple[ChapAlgorithm, ...] = (
    ChapAlgorithm.SHA3_256,
    ChapAlgorithm.SHA1,
    ChapAlgorithm.MD5,
    ChapAlgorithm.SHA256,
)

#: Shortest challenge we answer. RFC 7143 gives no lower bound (RFC 1994: any length); 16 bytes
#: is our policy so a target cannot make us answer trivially precomputable challenges; tgtd sends
#: 25..49 bytes and LIO at least 16.
MIN_CHALLENGE_LENGTH = 16
#: Longest challenge: RFC 7143 section 12.1.3 limits CHAP_C to 1024 bytes.
MAX_CHALLENGE_LENGTH = 1024
#: Length of the challenge we send for mutual CHAP (what libiscsi sends too).
OUR_CHALLENGE_LENGTH = 32


class Secret:
    """A CHAP secret. Its value leaves only through reveal(); repr and str show Secret(***)."""

    __slots__ = ("_value",)
    _value: bytes

    def __init__(self, value: str | bytes) -> None:
        try:
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        except UnicodeEncodeError:
            # Text from argv holds undecodable bytes as lone surrogates; the codec's message
            # would quote the offending character of the secret and its position.
            raise LocalProtocolError(
                "a CHAP secret must be valid text (it holds a byte that is not UTF-8)"
            ) from None
        if not raw:
            raise LocalProtocolError("a CHAP secret cannot be empty")
        object.__setattr__(self, "_value", raw)

    def reveal(self) -> bytes:
        """The secret bytes, for hashing only."""
        return self._value

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "Secret(***)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(b"iscsifs-secret" + self._value).digest())

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("Secret cannot be pickled")

    def __len__(self) -> int:
        return len(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChapCredentials:
    """A CHAP name and secret. The manual's TargetUserName/TargetSecret (we answer the target's
    challenge with them) or InitiatorUserName/InitiatorSecret (the target must prove them)."""

    user: str
    secret: Secret

    def __post_init__(self) -> None:
        if not self.user:
            raise LocalProtocolError("a CHAP user name cannot be empty")
        if len(self.user.encode("utf-8")) > 255 or "\0" in self.user:
            raise LocalProtocolError("a CHAP user name must be 1..255 bytes without NUL")
        if not isinstance(self.secret, Secret):
            raise LocalProtocolError("a CHAP secret must be a Secret")


def secret_warnings(secret: Secret | str) -> list[str]:
    """The manual's guidelines for secrets, as warnings (they are advice, not rules).

    Printable ASCII only, no tab or space, more than 12 characters.
    """
    raw = secret.reveal() if isinstance(secret, Secret) else secret.encode("utf-8")
    warnings: list[str] = []
    if any(b in (0x20, 0x09) for b in raw):
        warnings.append("the CHAP secret contains a space or tab; many targets refuse them")
    if any(not 0x21 <= b <= 0x7E for b in raw if b not in (0x20, 0x09)):
        warnings.append(
            "the CHAP secret contains characters other than printable ASCII; "
            "many targets refuse them"
        )
    if len(raw) <= 12:
        warnings.append("the CHAP secret should be longer than 12 characters")
    return warnings


def chap_response(
    algorithm: ChapAlgorithm, identifier: int, secret: Secret, challenge: bytes
) -> bytes:
    """H(identifier || secret || challenge) (RFC 1994 section 4.1)."""
    if not 0 <= identifier <= 255:
        raise LocalProtocolError("CHAP identifier must be 0..255")
    h = hashlib.new(algorithm.hash_name)
    h.update(bytes([identifier]))
    h.update(secret.reveal())
    h.update(challenge)
    return h.digest()


class ChapError(RemoteProtocolError):
    """The target's side of the CHAP exchange broke the rules."""


class MutualAuthenticationFailed(RemoteProtocolError):
    """The target could not prove it knows the mutual (InitiatorUserName) secret."""


class ChapState(enum.Enum):
    START = "start"
    OFFERED = "algorithms offered"
    ANSWERED = "challenge answered"
    DONE = "done"
    FAILED = "failed"


class ChapInput(enum.Enum):
    OFFER = "offer"
    CHALLENGE = "challenge"
    CONFIRM = "confirm"


#: {(state, input): next}; a missing pair is a misuse or a target out of order.
CHAP_TRANSITIONS: Mapping[tuple[ChapState, ChapInput], ChapState] = {
    (ChapState.START, ChapInput.OFFER): ChapState.OFFERED,
    (ChapState.OFFERED, ChapInput.CHALLENGE): ChapState.ANSWERED,
    (ChapState.ANSWERED, ChapInput.CONFIRM): ChapState.DONE,
}


class ChapInitiator:
    """The initiator's CHAP exchange in three steps (RFC 7143 section 12.1.3):

      offer()                 -> [CHAP_A=<our list>]
      answer(target's pairs)  -> [CHAP_N, CHAP_R (+ CHAP_I, CHAP_C for mutual)]
      confirm(target's pairs)    checks the target's CHAP_N/CHAP_R when mutual

    Any error leaves the exchange failed; further calls raise LocalProtocolError.
    """

    def __init__(
        self,
        credentials: ChapCredentials,
        *,
        random: RandomSource,
        mutual: ChapCredentials | None = None,
        algorithms: Sequence[ChapAlgorithm] = DEFAULT_ALGORITHMS,
        use_base64: bool = False,
    ) -> None:
        algorithms = tuple(ChapAlgorithm(a) for a in algorithms)
        if not algorithms or len(set(algorithms)) != len(algorithms):
            raise LocalProtocolError("CHAP algorithm list must be non-empty without repeats")
        if ChapAlgorithm.MD5 not in algorithms:
            raise LocalProtocolError("RFC 7143 12.1.3: initiators must always offer CHAP MD5")
        if mutual is not None and mutual.secret == credentials.secret:
            raise LocalProtocolError(
                "the mutual CHAP secret must differ from the one answering the target "
                "(RFC 7143 section 9.2.1)"
            )
        self._credentials = credentials
        self._mutual = mutual
        self._random = random
        self._algorithms = algorithms
        self._use_base64 = use_base64
        self._state = ChapState.START
        self._algorithm: ChapAlgorithm | None = None
        self._target_challenge = b""
        self._our_identifier = 0
        self._our_challenge = b""

    @property
    def state(self) -> ChapState:
        return self._state

    @property
    def algorithm(self) -> ChapAlgorithm | None:
        """The algorithm the target chose, once it has."""
        return self._algorithm

    @property
    def mutual(self) -> bool:
        return self._mutual is not None

    @property
    def done(self) -> bool:
        return self._state is ChapState.DONE

    def _step(self, event: ChapInput) -> None:
        if self._state is ChapState.FAILED:
            raise LocalProtocolError("CHAP exchange already failed")
        nxt = CHAP_TRANSITIONS.get((self._state, event))
        if nxt is None:
            raise LocalProtocolError(f"CHAP {event.value} not allowed in state {self._state.value}")
        self._state = nxt

    def _fail(self, exc: Exception) -> Exception:
        self._state = ChapState.FAILED
        return exc

    def offer(self) -> list[tuple[str, str]]:
        self._step(ChapInput.OFFER)
        return [("CHAP_A", format_list(str(int(a)) for a in self._algorithms))]

    def answer(self, pairs: Mapping[str, str]) -> list[tuple[str, str]]:
        """Take the target's CHAP_A, CHAP_I, CHAP_C; return our response (and challenge)."""
        self._step(ChapInput.CHALLENGE)
        try:
            return self._answer(pairs)
        except Exception as exc:
            raise self._fail(exc) from None

    def _answer(self, pairs: Mapping[str, str]) -> list[tuple[str, str]]:
        for key in ("CHAP_A", "CHAP_I", "CHAP_C"):
            if key not in pairs:
                raise ChapError(f"target's CHAP challenge lacks {key}")
        try:
            chosen = parse_number(pairs["CHAP_A"])
        except ValueError:
            raise ChapError("target chose a CHAP_A that is not one number") from None
        if chosen not in [int(a) for a in self._algorithms]:
            raise ChapError(f"target chose CHAP_A={chosen}, which we did not offer")
        algorithm = ChapAlgorithm(chosen)
        try:
            identifier = parse_number(pairs["CHAP_I"])
        except ValueError:
            raise ChapError("target's CHAP_I is not a number") from None
        if identifier > 255:
            raise ChapError("target's CHAP_I is not 0..255")
        try:
            challenge = parse_binary(pairs["CHAP_C"])
        except ValueError:
            raise ChapError("target's CHAP_C is not a hex or base64 binary value") from None
        if len(challenge) < MIN_CHALLENGE_LENGTH:
            raise ChapError(
                f"target's CHAP challenge is {len(challenge)} bytes, "
                f"we require at least {MIN_CHALLENGE_LENGTH}"
            )
        if len(challenge) > MAX_CHALLENGE_LENGTH:
            raise ChapError(f"target's CHAP challenge is longer than {MAX_CHALLENGE_LENGTH} bytes")
        self._algorithm = algorithm
        self._target_challenge = challenge
        response = chap_response(algorithm, identifier, self._credentials.secret, challenge)
        out = [
            ("CHAP_N", self._credentials.user),
            ("CHAP_R", format_binary(response, use_base64=self._use_base64)),
        ]
        if self._mutual is not None:
            self._our_identifier = self._random(1)[0]
            # Never send back the target's own challenge (RFC 7143 9.2.1): a reflected
            # challenge would let the target use us as its oracle.
            for _ in range(8):
                ours = bytes(self._random(OUR_CHALLENGE_LENGTH))
                if len(ours) != OUR_CHALLENGE_LENGTH:
                    raise LocalProtocolError("random source returned the wrong number of bytes")
                if ours != challenge:
                    break
            else:
                raise LocalProtocolError("random source keeps repeating the target's challenge")
            self._our_challenge = ours
            out += [
                ("CHAP_I", str(self._our_identifier)),
                ("CHAP_C", format_binary(ours, use_base64=self._use_base64)),
            ]
        return out

    def confirm(self, pairs: Mapping[str, str]) -> None:
        """After the target accepted our response: check its proof when mutual.

        For one-way CHAP the target must not send CHAP_N/CHAP_R (we did not challenge it).
        """
        self._step(ChapInput.CONFIRM)
        try:
            self._confirm(pairs)
        except Exception as exc:
            raise self._fail(exc) from None

    def _confirm(self, pairs: Mapping[str, str]) -> None:
        if self._mutual is None:
            if "CHAP_N" in pairs or "CHAP_R" in pairs:
                raise ChapError("target sent a CHAP response although we did not challenge it")
            return
        assert self._algorithm is not None
        if "CHAP_R" not in pairs or "CHAP_N" not in pairs:
            raise MutualAuthenticationFailed(
                "target did not answer our CHAP challenge (mutual authentication skipped)"
            )
        if pairs["CHAP_N"] != self._mutual.user:
            raise MutualAuthenticationFailed(
                "target answered our CHAP challenge under another name than the configured one"
            )
        try:
            got = parse_binary(pairs["CHAP_R"])
        except ValueError:
            raise MutualAuthenticationFailed("target's CHAP_R is not a binary value") from None
        expected = chap_response(
            self._algorithm, self._our_identifier, self._mutual.secret, self._our_challenge
        )
        # The same secret in both directions would make the target's answer equal what we
        # ourselves would compute with our own secret; RFC 7143 9.2.1 makes that a failure.
        mirrored = chap_response(
            self._algorithm, self._our_identifier, self._credentials.secret, self._our_challenge
        )
        if hmac.compare_digest(got, mirrored):
            raise MutualAuthenticationFailed(
                "target answered our CHAP challenge with our own secret"
            )
        if not hmac.compare_digest(got, expected):
            raise MutualAuthenticationFailed("target's CHAP response is wrong")
