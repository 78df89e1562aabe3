"""The Date: field (mime/dates.py): the day as written for SENT* (RFC 9051 §6.4.4) and the instant for SORT DATE
(RFC 5256 §2.2), over the RFC 5322 §3.3 form and the obsolete forms of §4.3."""

from __future__ import annotations

import calendar
import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.mime.dates import parse_date
from postroom.mime.meta import MessageMeta, compute_meta

EPOCH = datetime.date(1970, 1, 1)


def day(y: int, m: int, d: int) -> int:
    return (datetime.date(y, m, d) - EPOCH).days


def utc(*t: int) -> float:
    return float(calendar.timegm((*t, 0, 0, 0)[:6]))


@pytest.mark.parametrize(("value", "want_day", "want_instant"), [
    # the inputs: the date as written, whatever day it is in UTC
    ("Mon, 1 Jan 2024 23:30:00 -0800", day(2024, 1, 1), utc(2024, 1, 2, 7, 30, 0)),
    ("Tue, 2 Jan 2024 00:30:00 +0900", day(2024, 1, 2), utc(2024, 1, 1, 15, 30, 0)),
    ("1 Jan 2024 10:00 +0000", day(2024, 1, 1), utc(2024, 1, 1, 10, 0, 0)),  # no weekday, no seconds
    ("Mon,1 Jan 2024 10:00:00 GMT (comment (nested))", day(2024, 1, 1), utc(2024, 1, 1, 10, 0, 0)),
    ("Mon, 01-JAN-2024 10:00:00 EST", day(2024, 1, 1), utc(2024, 1, 1, 15, 0, 0)),  # obs-zone EST = -0500
    ("Mon, 1 Jan 2024 10:00:00 -0000", day(2024, 1, 1), utc(2024, 1, 1, 10, 0, 0)),  # zone unknown: UTC
    ("Mon, 1 Jan 2024 10:00:00 Q", day(2024, 1, 1), utc(2024, 1, 1, 10, 0, 0)),  # military zone = -0000
    ("Mon, 1 Jan 2024 10:00:00 XYZ", day(2024, 1, 1), utc(2024, 1, 1, 10, 0, 0)),  # unknown zone: UTC
    ("Mon, 1 Jan 2024 99:00:00 +0200", day(2024, 1, 1), utc(2024, 1, 1, 0, 0, 0) - 7200),  # bad time: 00:00
    ("1 Jan 2024", day(2024, 1, 1), utc(2024, 1, 1, 0, 0, 0)),
    ("Thu, 1 Jan 49 00:00:00 +0000", day(2049, 1, 1), utc(2049, 1, 1, 0, 0, 0)),  # RFC 5322 §4.3 obs-year
    ("Sat, 1 Jan 50 00:00:00 +0000", day(1950, 1, 1), utc(1950, 1, 1, 0, 0, 0)),
    ("Mon, 1 Jan 101 00:00:00 +0000", day(2001, 1, 1), utc(2001, 1, 1, 0, 0, 0)),
    ("Mon, 1 January 2024 10:00:00 +0100", day(2024, 1, 1), utc(2024, 1, 1, 9, 0, 0)),
])
def test_parse_date(value: str, want_day: int, want_instant: float) -> None:
    got = parse_date(value)
    assert got is not None
    assert (got.day, got.instant) == (want_day, want_instant)


@pytest.mark.parametrize("value", ["", "yesterday", "Mon, 31 Feb 2024 10:00:00 +0000", "0 Jan 2024",
                                   "Mon, 1 Foo 2024 10:00:00 +0000"])
def test_no_valid_date(value: str) -> None:
    assert parse_date(value) is None


@given(st.text(max_size=300))
def test_never_raises(value: str) -> None:
    parse_date(value)


def test_meta_keeps_the_day_as_written() -> None:
    west = compute_meta(b"Date: Mon, 1 Jan 2024 23:30:00 -0800\r\nSubject: a\r\n\r\nx\r\n")
    east = compute_meta(b"Date: Tue, 2 Jan 2024 00:30:00 +0900\r\nSubject: b\r\n\r\nx\r\n")
    assert (west.sent_day, west.sent_date) == (day(2024, 1, 1), utc(2024, 1, 2, 7, 30, 0))
    assert (east.sent_day, east.sent_date) == (day(2024, 1, 2), utc(2024, 1, 1, 15, 30, 0))
    assert MessageMeta.from_bytes(west.to_bytes()) == west
    none = compute_meta(b"Subject: no date\r\n\r\nx\r\n")
    assert (none.sent_day, none.sent_date) == (None, None)
