# Fuzzing of the manual's option syntax (iscsifs/syntax.py): -security / -discoverySecurity,
# -connection / -session and -address values as argv delivers them. SyntaxProblem or a value;
# a -security error never repeats a secret.

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from . import targets
from .strategies import fuzz_settings, syntax_bytes


@fuzz_settings(800)
@given(st.one_of(syntax_bytes(), st.binary(max_size=60)))
def test_option_syntax(data: bytes) -> None:
    targets.run("syntax", data)
