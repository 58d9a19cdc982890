# Tests of iscsifs/proto/chap.py: response vectors for every CHAP_A (each checkable by hand:
# hashlib.new(name, bytes([id]) + secret + challenge)), whole exchanges as golden key=value tables
# (including one recorded from tgtd 1.0.85, mutual CHAP MD5), every refusal, every pair of the
# exchange's transition table, and that secrets never show.

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable

import pytest

from iscsifs.proto.chap import (
    CHAP_TRANSITIONS,
    DEFAULT_ALGORITHMS,
    MAX_CHALLENGE_LENGTH,
    MIN_CHALLENGE_LENGTH,
    ChapAlgorithm,
    ChapCredentials,
    ChapError,
    ChapInitiator,
    ChapInput,
    ChapState,
    MutualAuthenticationFailed,
    Secret,
    chap_response,
    secret_warnings,
)
from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError

CHALLENGE = bytes(range(16))
SECRET = Secret("secretsecret1")

# H(0x01 || "secretsecret1" || 00 01 .. 0f) for each algorithm, computed once with hashlib and
# pinned here; test_vectors_match_hashlib recomputes them independently.
VECTORS = {
    ChapAlgorithm.MD5: "71133038ef3394e5d0284e40a4a27ea2",
    ChapAlgorithm.SHA1: "ea5b66af7eece92299344aad7f4da31056df780d",
    ChapAlgorithm.SHA256: "1983c36891cb7d20f775a0af7c558e45722a8dd973aa6e723a0509a63f21b13e",
    ChapAlgorithm.SHA3_256: "1f8442c9bad12ca28c69f03a08daf6ab104f71c56ba618dcf6cd226055a1853d",
}


@pytest.mark.parametrize("algorithm", list(ChapAlgorithm))
def test_vectors(algorithm: ChapAlgorithm) -> None:
    assert chap_response(algorithm, 1, SECRET, CHALLENGE).hex() == VECTORS[algorithm]
    assert len(bytes.fromhex(VECTORS[algorithm])) == algorithm.digest_size


@pytest.mark.parametrize(
    ("algorithm", "name"),
    [(ChapAlgorithm.MD5, "md5"), (ChapAlgorithm.SHA1, "sha1"),
     (ChapAlgorithm.SHA256, "sha256"), (ChapAlgorithm.SHA3_256, "sha3_256")],
)
def test_vectors_match_hashlib(algorithm: ChapAlgorithm, name: str) -> None:
    expected = hashlib.new(name, b"\x01" + b"secretsecret1" + CHALLENGE).hexdigest()
    assert VECTORS[algorithm] == expected


def test_algorithm_numbers_and_names() -> None:
    assert [int(a) for a in ChapAlgorithm] == [5, 6, 7, 8]
    assert ChapAlgorithm.from_name("md5") is ChapAlgorithm.MD5
    assert ChapAlgorithm.from_name("SHA-1") is ChapAlgorithm.SHA1
    assert ChapAlgorithm.from_name("sha256") is ChapAlgorithm.SHA256
    assert ChapAlgorithm.from_name("SHA3-256") is ChapAlgorithm.SHA3_256
    assert ChapAlgorithm.SHA3_256.label == "SHA3-256"
    with pytest.raises(LocalProtocolError):
        ChapAlgorithm.from_name("SHA512")
    # tgtd reads 7 as SHA-1: 7 must come after 5 in what we offer by default.
    order = [int(a) for a in DEFAULT_ALGORITHMS]
    assert order == [8, 6, 5, 7]
    assert order.index(5) < order.index(7)


def test_identifier_range() -> None:
    with pytest.raises(LocalProtocolError):
        chap_response(ChapAlgorithm.MD5, 256, SECRET, CHALLENGE)


# --------------------------------------------------------------------------------------------
# Whole exchanges
# --------------------------------------------------------------------------------------------


def scripted(*chunks: bytes) -> Callable[[int], bytes]:
    """A random source that hands out the given byte strings in order."""
    queue = list(chunks)

    def random(n: int) -> bytes:
        out = queue.pop(0)
        assert len(out) == n, (len(out), n)
        return out

    return random


def no_random(n: int) -> bytes:
    raise AssertionError("one-way CHAP must not draw random bytes")


USER1 = ChapCredentials(user="user1", secret=Secret("secretsecret1"))
TGTUSER = ChapCredentials(user="tgtuser", secret=Secret("tgtsecret12345"))

# Recorded from tgtd 1.0.85 (one-way, account user1/secretsecret1): its challenge, and the
# response it accepted.
TGTD_ONE_WAY = {
    "target": {
        "CHAP_A": "5",
        "CHAP_I": "1",
        "CHAP_C": "0x0df274f37bc3b67976c4dc8c0e74669f607e5bb64869b9032d2acc122d489d6dc49c60e4c"
                  "defe697ed322c71e1e43a5b6643",
    },
    "ours": [("CHAP_N", "user1"), ("CHAP_R", "0xf447f6e1d9ae5dcb6b856cd7deef800c")],
}

# Recorded from tgtd 1.0.85 (mutual: incoming user1/secretsecret1, outgoing
# tgtuser/tgtsecret12345): our identifier 209 and challenge, its accepted proof.
OUR_CHALLENGE = bytes.fromhex("c7d6f9c52b6106a56ccba9a176024fffb0534f75edc195c6a8c3f6072cb8c4f3")
TGTD_MUTUAL = {
    "target": {
        "CHAP_A": "5",
        "CHAP_I": "6",
        "CHAP_C": "0x4bf00ea0bd82c9f4f6ee6d225dfa5dd759441424001dd524d03baf4bdda0d68b62c539022"
                  "9b42ec569473305fade406dc454",
    },
    "ours": [
        ("CHAP_N", "user1"),
        ("CHAP_R", "0xd33f5fdc3b7928e854fcce4db70e965d"),
        ("CHAP_I", "209"),
        ("CHAP_C", "0xc7d6f9c52b6106a56ccba9a176024fffb0534f75edc195c6a8c3f6072cb8c4f3"),
    ],
    "proof": {"CHAP_N": "tgtuser", "CHAP_R": "0x5df5567116f8ef58f166b6437b5d4a3a"},
}


def test_one_way_exchange_recorded_from_tgtd() -> None:
    chap = ChapInitiator(USER1, random=no_random)
    assert chap.offer() == [("CHAP_A", "8,6,5,7")]
    assert chap.answer(TGTD_ONE_WAY["target"]) == TGTD_ONE_WAY["ours"]
    assert chap.algorithm is ChapAlgorithm.MD5
    chap.confirm({})
    assert chap.done
    assert not chap.mutual


def test_mutual_exchange_recorded_from_tgtd() -> None:
    chap = ChapInitiator(USER1, mutual=TGTUSER, random=scripted(bytes([209]), OUR_CHALLENGE))
    assert chap.mutual
    chap.offer()
    assert chap.answer(TGTD_MUTUAL["target"]) == TGTD_MUTUAL["ours"]
    chap.confirm(TGTD_MUTUAL["proof"])
    assert chap.done


@pytest.mark.parametrize("algorithm", list(ChapAlgorithm))
def test_mutual_exchange_every_algorithm(algorithm: ChapAlgorithm) -> None:
    ours = bytes(range(100, 132))
    chap = ChapInitiator(USER1, mutual=TGTUSER, random=scripted(b"\x2a", ours),
                         algorithms=(algorithm, ChapAlgorithm.MD5)
                         if algorithm is not ChapAlgorithm.MD5 else (algorithm,))
    chap.offer()
    out = dict(chap.answer({"CHAP_A": str(int(algorithm)), "CHAP_I": "1",
                            "CHAP_C": "0x" + CHALLENGE.hex()}))
    assert out == {
        "CHAP_N": "user1",
        "CHAP_R": "0x" + VECTORS[algorithm],
        "CHAP_I": "42",
        "CHAP_C": "0x" + ours.hex(),
    }
    proof = hashlib.new(algorithm.hash_name, b"\x2a" + b"tgtsecret12345" + ours).hexdigest()
    chap.confirm({"CHAP_N": "tgtuser", "CHAP_R": "0x" + proof})
    assert chap.done


def test_base64_encoding_and_base64_challenge() -> None:
    chap = ChapInitiator(USER1, random=no_random, use_base64=True)
    chap.offer()
    out = chap.answer({"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0bAAECAwQFBgcICQoLDA0ODw=="})
    assert out == [("CHAP_N", "user1"), ("CHAP_R", "0bcRMwOO8zlOXQKE5ApKJ+og==")]


def test_custom_order_is_sent_as_given() -> None:
    chap = ChapInitiator(USER1, random=no_random,
                         algorithms=(ChapAlgorithm.MD5, ChapAlgorithm.SHA3_256))
    assert chap.offer() == [("CHAP_A", "5,8")]


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------

GOOD = {"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0x" + CHALLENGE.hex()}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"CHAP_A": "7"}, "did not offer"),
        ({"CHAP_A": "129"}, "did not offer"),
        ({"CHAP_A": "5,6"}, "not one number"),
        ({"CHAP_A": None}, "lacks CHAP_A"),
        ({"CHAP_I": None}, "lacks CHAP_I"),
        ({"CHAP_C": None}, "lacks CHAP_C"),
        ({"CHAP_I": "256"}, "0..255"),
        ({"CHAP_I": "x"}, "not a number"),
        ({"CHAP_C": "0x" + "ab" * (MIN_CHALLENGE_LENGTH - 1)}, "at least 16"),
        ({"CHAP_C": "0x" + "ab" * (MAX_CHALLENGE_LENGTH + 1)}, "longer than 1024"),
        ({"CHAP_C": "abcdef"}, "hex or base64"),
    ],
)
def test_challenge_refusals(change: dict[str, str | None], match: str) -> None:
    pairs = {**GOOD, **change}
    pairs = {k: v for k, v in pairs.items() if v is not None}
    chap = ChapInitiator(USER1, random=no_random, algorithms=(ChapAlgorithm.SHA1,
                                                               ChapAlgorithm.MD5))
    chap.offer()
    with pytest.raises(ChapError, match=match):
        chap.answer(pairs)
    assert chap.state is ChapState.FAILED
    with pytest.raises(LocalProtocolError, match="already failed"):
        chap.confirm({})


def test_challenge_lengths_at_the_limits_are_taken() -> None:
    for length in (MIN_CHALLENGE_LENGTH, MAX_CHALLENGE_LENGTH):
        chap = ChapInitiator(USER1, random=no_random)
        chap.offer()
        chap.answer({**GOOD, "CHAP_C": "0x" + "ab" * length})
        assert chap.state is ChapState.ANSWERED


def test_reflected_challenge_is_never_sent() -> None:
    # The random source first returns the target's own challenge: we must draw again.
    target_challenge = bytes(range(32))
    fresh = bytes(range(1, 33))
    chap = ChapInitiator(USER1, mutual=TGTUSER,
                         random=scripted(b"\x07", target_challenge, fresh))
    chap.offer()
    out = dict(chap.answer({**GOOD, "CHAP_C": "0x" + target_challenge.hex()}))
    assert out["CHAP_C"] == "0x" + fresh.hex()


def test_random_source_that_always_reflects() -> None:
    target_challenge = bytes(range(32))
    chap = ChapInitiator(USER1, mutual=TGTUSER,
                         random=lambda n: b"\x07" if n == 1 else target_challenge)
    chap.offer()
    with pytest.raises(LocalProtocolError, match="repeating"):
        chap.answer({**GOOD, "CHAP_C": "0x" + target_challenge.hex()})


def test_random_source_of_the_wrong_length() -> None:
    chap = ChapInitiator(USER1, mutual=TGTUSER, random=lambda n: b"\x00" * (n + 1))
    chap.offer()
    with pytest.raises(LocalProtocolError, match="wrong number"):
        chap.answer(GOOD)


def _mutual_answered() -> ChapInitiator:
    chap = ChapInitiator(USER1, mutual=TGTUSER, random=scripted(bytes([209]), OUR_CHALLENGE))
    chap.offer()
    chap.answer(TGTD_MUTUAL["target"])
    return chap


@pytest.mark.parametrize(
    ("proof", "match"),
    [
        ({}, "did not answer"),
        ({"CHAP_N": "tgtuser"}, "did not answer"),
        ({"CHAP_R": "0x5df5567116f8ef58f166b6437b5d4a3a"}, "did not answer"),
        ({"CHAP_N": "someone", "CHAP_R": "0x5df5567116f8ef58f166b6437b5d4a3a"}, "another name"),
        ({"CHAP_N": "tgtuser", "CHAP_R": "0x5df5567116f8ef58f166b6437b5d4a3b"}, "is wrong"),
        ({"CHAP_N": "tgtuser", "CHAP_R": "0x5df5"}, "is wrong"),
        ({"CHAP_N": "tgtuser", "CHAP_R": "zz"}, "not a binary"),
    ],
)
def test_mutual_refusals(proof: dict[str, str], match: str) -> None:
    chap = _mutual_answered()
    with pytest.raises(MutualAuthenticationFailed, match=match):
        chap.confirm(proof)
    assert chap.state is ChapState.FAILED


def test_mutual_proof_made_with_our_own_secret_is_refused() -> None:
    chap = _mutual_answered()
    mirrored = chap_response(ChapAlgorithm.MD5, 209, USER1.secret, OUR_CHALLENGE)
    with pytest.raises(MutualAuthenticationFailed, match="our own secret"):
        chap.confirm({"CHAP_N": "tgtuser", "CHAP_R": "0x" + mirrored.hex()})


def test_one_way_target_must_not_prove_anything() -> None:
    chap = ChapInitiator(USER1, random=no_random)
    chap.offer()
    chap.answer(GOOD)
    with pytest.raises(ChapError, match="did not challenge"):
        chap.confirm({"CHAP_N": "x", "CHAP_R": "0x00"})


def test_errors_are_remote_protocol_errors_without_secrets() -> None:
    assert issubclass(ChapError, RemoteProtocolError)
    assert issubclass(MutualAuthenticationFailed, RemoteProtocolError)
    chap = _mutual_answered()
    with pytest.raises(MutualAuthenticationFailed) as info:
        chap.confirm({"CHAP_N": "tgtuser", "CHAP_R": "0x00"})
    text = str(info.value) + repr(info.value)
    assert "tgtsecret12345" not in text
    assert "secretsecret1" not in text


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_configuration_refusals() -> None:
    with pytest.raises(LocalProtocolError, match="MD5"):
        ChapInitiator(USER1, random=no_random, algorithms=(ChapAlgorithm.SHA256,))
    with pytest.raises(LocalProtocolError, match="non-empty"):
        ChapInitiator(USER1, random=no_random, algorithms=())
    with pytest.raises(LocalProtocolError, match="repeats"):
        ChapInitiator(USER1, random=no_random,
                      algorithms=(ChapAlgorithm.MD5, ChapAlgorithm.MD5))
    same = ChapCredentials(user="tgt", secret=Secret("secretsecret1"))
    with pytest.raises(LocalProtocolError, match="must differ"):
        ChapInitiator(USER1, mutual=same, random=no_random)
    with pytest.raises(LocalProtocolError):
        ChapCredentials(user="", secret=SECRET)
    with pytest.raises(LocalProtocolError):
        ChapCredentials(user="a\x00b", secret=SECRET)
    with pytest.raises(LocalProtocolError):
        ChapCredentials(user="u", secret="plain")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Secret("")


# --------------------------------------------------------------------------------------------
# The transition table: every (state, input) pair
# --------------------------------------------------------------------------------------------

ACTIONS: dict[ChapInput, Callable[[ChapInitiator], object]] = {
    ChapInput.OFFER: lambda c: c.offer(),
    ChapInput.CHALLENGE: lambda c: c.answer(GOOD),
    ChapInput.CONFIRM: lambda c: c.confirm({}),
}


def _in_state(state: ChapState) -> ChapInitiator:
    chap = ChapInitiator(USER1, random=no_random)
    if state is ChapState.FAILED:
        chap.offer()
        with pytest.raises(ChapError):
            chap.answer({})
        return chap
    path = {
        ChapState.START: [],
        ChapState.OFFERED: [ChapInput.OFFER],
        ChapState.ANSWERED: [ChapInput.OFFER, ChapInput.CHALLENGE],
        ChapState.DONE: [ChapInput.OFFER, ChapInput.CHALLENGE, ChapInput.CONFIRM],
    }[state]
    for step in path:
        ACTIONS[step](chap)
    assert chap.state is state
    return chap


@pytest.mark.parametrize("state", list(ChapState))
@pytest.mark.parametrize("event", list(ChapInput))
def test_every_transition_pair(state: ChapState, event: ChapInput) -> None:
    chap = _in_state(state)
    nxt = CHAP_TRANSITIONS.get((state, event))
    if nxt is None:
        with pytest.raises(LocalProtocolError):
            ACTIONS[event](chap)
    else:
        ACTIONS[event](chap)
        assert chap.state is nxt


def test_table_is_a_single_path() -> None:
    assert dict(CHAP_TRANSITIONS) == {
        (ChapState.START, ChapInput.OFFER): ChapState.OFFERED,
        (ChapState.OFFERED, ChapInput.CHALLENGE): ChapState.ANSWERED,
        (ChapState.ANSWERED, ChapInput.CONFIRM): ChapState.DONE,
    }


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------


def test_secret_never_shows() -> None:
    s = Secret("hunter2hunter2")
    creds = ChapCredentials(user="bob", secret=s)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", f"{s:>20}", repr(creds), str(creds)):
        assert "hunter2" not in text
    assert repr(s) == "Secret(***)"
    assert "bob" in repr(creds)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(AttributeError):
        s._value = b"x"  # type: ignore[misc]
    assert s.reveal() == b"hunter2hunter2"
    assert len(s) == 14
    assert s == Secret(b"hunter2hunter2")
    assert s != Secret("other")
    assert s != "hunter2hunter2"
    assert hash(s) == hash(Secret("hunter2hunter2"))
    assert "hunter2" not in repr(vars(ChapInitiator(creds, random=no_random)))


@pytest.mark.parametrize(
    ("secret", "count", "words"),
    [
        ("A-good-secret-42", 0, []),
        ("short", 1, ["longer than 12"]),
        ("twelve_chars", 1, ["longer than 12"]),  # exactly 12 is not "more than 12"
        ("with a space in it", 1, ["space or tab"]),
        ("tab\there-and-more", 1, ["space or tab"]),
        ("caf\u00e9-secret-long", 1, ["printable ASCII"]),
        ("bell\x07bell-bell-bell", 1, ["printable ASCII"]),
        ("a b\u00e9", 3, ["space or tab", "printable ASCII", "longer than 12"]),
    ],
)
def test_secret_warnings(secret: str, count: int, words: list[str]) -> None:
    warnings = secret_warnings(Secret(secret))
    assert len(warnings) == count
    for word, warning in zip(words, warnings, strict=True):
        assert word in warning
        assert secret not in warning
    assert secret_warnings(secret) == warnings
