# Fuzzing of SendTargets results (iscsifs/proto/discovery.py parse_sendtargets over decode_text)
# and of both TargetAddress parsers (discovery's and the login redirect's).

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from . import targets
from .strategies import ADDRESSES, fuzz_settings, sendtargets_bytes


@fuzz_settings(500)
@given(st.one_of(sendtargets_bytes(), st.binary(max_size=200)))
def test_sendtargets(data: bytes) -> None:
    targets.run("sendtargets", data)


@fuzz_settings(500)
@given(st.one_of(st.sampled_from(ADDRESSES), st.text(max_size=40),
                 st.text(alphabet="0123456789.:[],abcdef²٣", max_size=30)))
def test_target_address(value: str) -> None:
    targets.run("target_address", value.encode())
