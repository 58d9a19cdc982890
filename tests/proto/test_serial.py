# Tests of iscsifs/proto/serial.py: RFC 1982 serial number arithmetic on 32 bits (the comparisons
# RFC 7143 section 4.2.2.1 prescribes for CmdSN, StatSN, DataSN), the command window size, and
# the Initiator Task Tag allocator (RFC 7143 section 11.1: 0xffffffff is reserved).

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from iscsifs.proto.serial import (
    HALF,
    MASK,
    RESERVED_TAG,
    TagAllocator,
    add,
    diff,
    ge,
    gt,
    in_window,
    le,
    lt,
    window_size,
)

u32 = st.integers(0, MASK)

# --- comparisons at the wrap ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (0xFFFFFFFF, 0),  # the wrap: 0xffffffff + 1 == 0
        (0xFFFFFFF0, 0x10),
        (0, 1),
        (5, 6),
        (0x7FFFFFFF, 0x80000000),
        (0x80000000, 0x80000001),
        (0, 0x7FFFFFFF),  # as far ahead as serial arithmetic allows
        (0x80000001, 0),  # 2**31 - 1 behind across the wrap
    ],
)
def test_lt_across_the_wrap(a: int, b: int) -> None:
    assert lt(a, b) and le(a, b)
    assert not gt(a, b) and not ge(a, b)
    assert gt(b, a) and ge(b, a)
    assert not lt(b, a) and not le(b, a)
    assert diff(b, a) == (b - a) & MASK
    assert diff(a, b) == -((b - a) & MASK)


@pytest.mark.parametrize("a", [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x12345678])
def test_exactly_2_to_31_apart_is_undefined(a: int) -> None:
    # RFC 1982 section 3.2: neither is greater; the module answers False to both.
    b = add(a, HALF)
    assert not lt(a, b) and not lt(b, a)
    assert not gt(a, b) and not gt(b, a)
    assert not le(a, b) and not ge(a, b)
    assert diff(b, a) == HALF and diff(a, b) == HALF  # the documented (-2**31, 2**31] range


@pytest.mark.parametrize("a", [0, 0x7FFFFFFF, 0xFFFFFFFF])
def test_equal_numbers(a: int) -> None:
    assert le(a, a) and ge(a, a)
    assert not lt(a, a) and not gt(a, a)
    assert diff(a, a) == 0


def test_add_wraps_both_ways() -> None:
    assert add(0xFFFFFFFF, 1) == 0
    assert add(0, -1) == 0xFFFFFFFF
    assert add(0xFFFFFFFE, 5) == 3
    assert add(3, -5) == 0xFFFFFFFE


@settings(max_examples=300, deadline=None)
@given(a=u32, n=st.integers(1, HALF - 1))
def test_adding_less_than_half_is_greater(a: int, n: int) -> None:
    b = add(a, n)
    assert lt(a, b) and gt(b, a) and le(a, b) and ge(b, a)
    assert not lt(b, a) and not ge(a, b)
    assert diff(b, a) == n and diff(a, b) == -n


@settings(max_examples=300, deadline=None)
@given(a=u32, b=u32)
def test_comparisons_are_consistent(a: int, b: int) -> None:
    assert lt(a, b) == gt(b, a)
    assert le(a, b) == (a == b or lt(a, b))
    assert ge(a, b) == (a == b or gt(a, b))
    # At most one of <, ==, > holds; exactly one unless 2**31 apart.
    holds = [lt(a, b), a == b, gt(a, b)]
    assert sum(holds) == (0 if (a - b) & MASK == HALF else 1)
    d = diff(a, b)
    assert -HALF < d <= HALF
    assert add(b, d) == a
    assert (d < 0) == lt(a, b)


# --- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exp", [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_window_size(exp: int) -> None:
    assert window_size(exp, exp) == 1
    assert window_size(exp, add(exp, 31)) == 32
    assert window_size(exp, add(exp, -1)) == 0  # MaxCmdSN = ExpCmdSN - 1: window closed
    assert window_size(exp, add(exp, -2)) == 0  # invalid: counted as 0
    assert window_size(exp, add(exp, -1000)) == 0
    assert window_size(exp, add(exp, HALF - 2)) == HALF - 1


def test_window_size_of_max_cmdsn_2_to_31_ahead_is_zero() -> None:
    exp = 0x10
    assert lt(add(exp, HALF), add(exp, -1))  # MaxCmdSN < ExpCmdSN - 1: invalid
    assert not in_window(exp, exp, add(exp, HALF))
    assert window_size(exp, add(exp, HALF)) == 0


@settings(max_examples=300, deadline=None)
@given(exp=u32, d=st.integers(-1, HALF - 2))
def test_window_size_matches_in_window(exp: int, d: int) -> None:
    top = add(exp, d)
    assert window_size(exp, top) == d + 1
    # Every number the size counts is in the window; the next one is not.
    if d >= 0:
        assert in_window(exp, exp, top)
        assert in_window(top, exp, top)
        assert in_window(add(exp, d // 2), exp, top)
    assert not in_window(add(top, 1), exp, top)
    assert not in_window(add(exp, -1), exp, top)


@settings(max_examples=300, deadline=None)
@given(exp=u32, behind=st.integers(2, HALF - 1))
def test_window_size_of_max_cmdsn_behind_is_zero(exp: int, behind: int) -> None:
    top = add(exp, -behind)
    assert lt(top, add(exp, -1))
    assert window_size(exp, top) == 0


def test_in_window_at_the_wrap() -> None:
    low, high = 0xFFFFFFFE, 0x00000002
    for sn in (0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2):
        assert in_window(sn, low, high)
    for sn in (0xFFFFFFFD, 3, 0x80000000):
        assert not in_window(sn, low, high)
    # Empty window (high = low - 1) holds nothing.
    for sn in (0, 1, 0xFFFFFFFF, 0x80000000):
        assert not in_window(sn, 1, 0)
    assert in_window(7, 7, 7) and not in_window(8, 7, 7)


# --- tags ------------------------------------------------------------------------------------


def test_tag_allocator_skips_the_reserved_tag_and_wraps() -> None:
    tags = TagAllocator(start=0xFFFFFFFD)
    got = [tags.allocate() for _ in range(4)]
    assert got == [0xFFFFFFFD, 0xFFFFFFFE, 0, 1]
    assert RESERVED_TAG not in got
    assert len(tags) == 4 and all(t in tags for t in got)


def test_tag_allocator_starting_on_the_reserved_tag() -> None:
    tags = TagAllocator(start=RESERVED_TAG)
    assert tags.allocate() == 0


def test_tag_allocator_never_returns_a_tag_in_use() -> None:
    tags = TagAllocator(start=10)
    a, b, c = tags.allocate(), tags.allocate(), tags.allocate()
    assert (a, b, c) == (10, 11, 12)
    tags.release(b)
    assert b not in tags and len(tags) == 2
    # Tags cycle on instead of reusing the freed one at once.
    assert tags.allocate() == 13
    # After a full wrap, the ones still in use are skipped.
    wrapped = TagAllocator(start=0xFFFFFFFE)
    first = wrapped.allocate()  # 0xfffffffe, kept in use
    # Put the cursor back on the held tag: the state after 2**32 - 1 more allocations.
    wrapped._next = first
    nxt = wrapped.allocate()
    assert nxt not in (first, RESERVED_TAG)
    assert nxt == 0


def test_release_of_unknown_tag_is_harmless() -> None:
    tags = TagAllocator()
    tags.release(12345)
    assert len(tags) == 0
    assert tags.allocate() == 1


class TagMachine(RuleBasedStateMachine):
    """Random allocate/release sequences, with the allocator started near the wrap."""

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.tags = TagAllocator(start=0xFFFFFFF0)
        self.model: set[int] = set()

    @rule(target=held)
    def allocate(self) -> int:
        tag = self.tags.allocate()
        assert tag != RESERVED_TAG
        assert tag not in self.model
        assert 0 <= tag <= MASK
        self.model.add(tag)
        return tag

    @rule(tag=held)
    def release(self, tag: int) -> None:
        self.tags.release(tag)
        self.model.discard(tag)

    @invariant()
    def same_set(self) -> None:
        assert len(self.tags) == len(self.model)
        for t in self.model:
            assert t in self.tags


TestTagMachine = TagMachine.TestCase
TestTagMachine.settings = settings(max_examples=50, stateful_step_count=60, deadline=None)

