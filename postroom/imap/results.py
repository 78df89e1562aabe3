"""ESEARCH result items shared by SEARCH and SORT (RFC 4731 §3.1, RFC 5267 §3.1 and §4.4).

`ordered_set` writes message numbers in the order given as a sequence-set, folding only ascending runs into
ranges (a range "a:b" is a set, so it cannot carry a descending order; RFC 5267 §3.1 keeps the SORT order in
ALL). `partial_item` is RFC 5267 §4.4's PARTIAL: the results at positions low..high (1-based) of the answer
in its order, `PARTIAL (low:high set)`, NIL when none.
"""

from __future__ import annotations

from collections.abc import Sequence


def ordered_set(numbers: Sequence[int]) -> bytes:
    """`numbers`, in that order, as a sequence-set: "3,1:2,7" for 3 1 2 7."""
    out: list[bytes] = []
    i = 0
    n = len(numbers)
    while i < n:
        j = i
        while j + 1 < n and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(out)


def partial_item(partial: tuple[int, int], numbers: Sequence[int]) -> bytes:
    """RFC 5267 §4.4: `PARTIAL (low:high set-or-NIL)` for the results at positions low..high of `numbers`."""
    low, high = partial
    chosen = numbers[low - 1:high]
    return b"PARTIAL (%d:%d %s)" % (low, high, ordered_set(chosen) if chosen else b"NIL")
