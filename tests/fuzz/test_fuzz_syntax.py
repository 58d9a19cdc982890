# Fuzzing of the manual's option syntax (iscsifs/syntax.py): -security / -discoverySecurity,
# -connection / -session and -address values as argv delivers them. SyntaxProblem or a value;
# a -security error never repeats a secret.

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto.chap import Secret
from iscsifs.proto.errors import LocalProtocolError

from . import targets
from .strategies import fuzz_settings, syntax_bytes


@fuzz_settings(800)
@given(st.one_of(syntax_bytes(), st.binary(max_size=60)))
def test_option_syntax(data: bytes) -> None:
    targets.run("syntax", data)


def test_a_secret_with_a_byte_that_is_not_utf8_is_not_quoted() -> None:
    """Regression (corpus/syntax/secret-undecodable-byte.hex): UTF-8 encoding errors quote the
    offending character and its position; a secret's error must not."""
    with pytest.raises(LocalProtocolError) as e:
        Secret("012\udcb3456789abc")
    assert "\udcb3" not in str(e.value) and "position" not in str(e.value)
