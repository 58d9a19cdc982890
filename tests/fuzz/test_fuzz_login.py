# Fuzzing of LoginStateMachine (iscsifs/proto/login.py) at every stage of every configuration
# (no auth, one-way CHAP, mutual CHAP, discovery, skipped security stage, non-leading
# connection, digests offered): a good target's exchange cut short and continued by hostile
# responses, C-bit splits and redirects with any address. Also checks that no CHAP secret (raw,
# hex or base64) reaches a message or a request.

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto import pdu

from . import targets
from .strategies import chap_input, fuzz_settings, good_exchange, login_input


@pytest.mark.parametrize("mode", range(targets.LOGIN_MODES))
def test_good_exchange_completes(mode: int) -> None:
    """The scripted good target reaches the full feature phase in every mode (so the fuzz
    inputs built on it really reach each stage)."""
    responses = good_exchange(mode)
    assert responses[-1].transit and responses[-1].nsg == pdu.Stage.FULL_FEATURE
    targets.run("login", bytes([mode]) + b"".join(pdu.encode(r) for r in responses))


@fuzz_settings(800)
@given(login_input())
def test_login_responses(data: bytes) -> None:
    targets.run("login", data)


@fuzz_settings(150)
@given(st.integers(0, targets.LOGIN_MODES - 1), st.binary(max_size=300))
def test_login_raw_bytes(mode: int, data: bytes) -> None:
    targets.run("login", bytes([mode]) + data)


@fuzz_settings(600)
@given(chap_input())
def test_chap_exchange(data: bytes) -> None:
    targets.run("chap", data)
