# Replays tests/fuzz/corpus: every input fuzzing ever found (by hypothesis or atheris), each
# kept as a regression test of the target that found it. A case marked "# xfail: <reason>" is a
# bug reported to the owner of a module this suite may not edit: strict, so the fix shows.

from __future__ import annotations

import pytest

from . import targets

CASES = targets.corpus_cases()


def _param(case: targets.Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=f"{case.target}/{case.path.stem}", marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_corpus_case(case: targets.Case) -> None:
    targets.run(case.target, case.data, tolerate_known=False)


def test_corpus_is_well_formed() -> None:
    """Every case names a target that exists and says where it came from."""
    assert CASES, "the corpus is empty"
    for case in CASES:
        assert case.target in targets.TARGETS, case.path
        assert case.notes, f"{case.path} has no note saying what it found"


def test_known_bugs_have_a_corpus_case() -> None:
    """Each tolerated bug is pinned by an xfail case, so it cannot be forgotten."""
    for bug in targets.KNOWN_BUGS:
        assert any(c.target == bug.target and c.xfail for c in CASES), bug.reason


def test_hang_guard_interrupts_an_endless_loop() -> None:
    """The per-example guard really stops a loop that never ends (hypothesis's deadline alone
    only judges examples that finish)."""
    with pytest.raises(targets.Hang), targets.hang_guard(0.2):
        while True:
            pass


def test_known_bug_filter_is_narrow() -> None:
    """Only the reported signature is tolerated; the same exception elsewhere is not."""
    bug = targets.KnownBug("syntax", ValueError, "Exceeds the limit", "a sample entry")
    assert bug.matches("syntax", ValueError("Exceeds the limit (4300 digits)"))
    assert not bug.matches("login", ValueError("Exceeds the limit"))
    assert not bug.matches("syntax", ValueError("something else"))
    assert not bug.matches("syntax", TypeError("Exceeds the limit"))
