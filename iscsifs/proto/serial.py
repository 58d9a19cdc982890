# RFC 1982 serial number arithmetic for the 32-bit iSCSI sequence numbers (CmdSN, StatSN, DataSN,
# R2TSN, ExpCmdSN, MaxCmdSN), and Initiator Task Tag allocation. Every comparison of sequence
# numbers in iscsifs goes through here (docs/design.md rule 6, after libiscsi's iscsi_serial32_compare):
# a plain `<` on them is a bug that only shows after 2**31 commands.
# Must not do I/O.

from __future__ import annotations

MASK = 0xFFFFFFFF
HALF = 0x80000000

#: The reserved tag RFC 7143 section 11.1 gives to "no task" (ITT and TTT).
RESERVED_TAG = 0xFFFFFFFF


def add(a: int, n: int) -> int:
    """a + n modulo 2**32 (RFC 1982 section 3.1, n may also be negative here)."""
    return (a + n) & MASK


def lt(a: int, b: int) -> bool:
    """a < b in serial arithmetic (RFC 1982 section 3.2). Undefined (False) when 2**31 apart."""
    return a != b and ((b - a) & MASK) < HALF


def le(a: int, b: int) -> bool:
    return a == b or lt(a, b)


def gt(a: int, b: int) -> bool:
    return lt(b, a)


def ge(a: int, b: int) -> bool:
    return a == b or lt(b, a)


def diff(a: int, b: int) -> int:
    """The signed distance a - b, in (-2**31, 2**31]: how far a is ahead of b."""
    d = (a - b) & MASK
    return d - (1 << 32) if d > HALF else d


def in_window(sn: int, low: int, high: int) -> bool:
    """low <= sn <= high in serial arithmetic, for windows narrower than 2**31."""
    return ((sn - low) & MASK) <= ((high - low) & MASK) < HALF


def window_size(exp_cmdsn: int, max_cmdsn: int) -> int:
    """Commands the target will accept: MaxCmdSN - ExpCmdSN + 1 (RFC 7143 section 4.2.2.1).

    A MaxCmdSN of ExpCmdSN - 1 closes the window (0); anything further behind is invalid and
    counted as 0 as well, which the session treats as "wait".
    """
    d = (max_cmdsn - exp_cmdsn) & MASK
    return d + 1 if d < HALF else 0


class TagAllocator:
    """Hands out Initiator Task Tags, never the reserved 0xffffffff, never one still in use.

    Tags cycle through the whole 32-bit space so that a late PDU for a finished task does not
    hit a newer task that reused the tag at once.
    """

    __slots__ = ("_in_use", "_next")

    def __init__(self, start: int = 1) -> None:
        self._next = start & MASK
        self._in_use: set[int] = set()

    def allocate(self) -> int:
        in_use = self._in_use
        tag = self._next
        while tag == RESERVED_TAG or tag in in_use:
            tag = (tag + 1) & MASK
        self._next = (tag + 1) & MASK
        in_use.add(tag)
        return tag

    def release(self, tag: int) -> None:
        self._in_use.discard(tag)

    def __contains__(self, tag: int) -> bool:
        return tag in self._in_use

    def __len__(self) -> int:
        return len(self._in_use)
