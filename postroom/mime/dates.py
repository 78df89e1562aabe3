"""The Date: header field (RFC 5322 §3.3, obsolete forms §4.3) as IMAP needs it: the day as written and the instant.

Theory of operation
-------------------
IMAP uses the Date field twice, differently:

* SEARCH SENTBEFORE / SENTON / SENTSINCE compare the field's date "disregarding time and timezone" (RFC 9051
  §6.4.4; RFC 3501 §6.4.4): the calendar date as written, in the sender's own zone. `Mon, 1 Jan 2024 23:30:00
  -0800` is on 1 January although it is 2 January in UTC.
* SORT DATE orders by the "sent date": the date and time normalised to UTC (RFC 5256 §2.2).

`parse_date` returns both (`SentDate.day`, `SentDate.instant`). It reads the RFC 5322 form liberally: the
day of the week is optional (with or without its comma), `-` may separate day, month and year, month names
are matched on their first three letters in any case, seconds are optional, comments are ignored. Whatever
does not match that shape goes to the stdlib's looser `email.utils.parsedate_tz` before it is given up on.

Invariants:
1. `parse_date` never raises; a value with no valid calendar date is None (the caller's "cannot be
   determined": RFC 5256 §2.2 then uses the internal date for SORT; SENT* match nothing, since RFC 9051
   §6.4.4 defines them only on the field's date).
2. Years: two digits 00-49 are 2000-2049, 50-99 and any three digits add 1900 (RFC 5322 §4.3).
3. The instant: an unknown, military or invalid zone counts as UTC (RFC 5256 §2.2; RFC 5322 §4.3 makes military
   zones "-0000"); an invalid time counts as 00:00:00 (RFC 5256 §2.2). Neither changes `day`.
4. Work is bounded: at most `MAX_CHARS` characters of the field are looked at.
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import re
from dataclasses import dataclass

MAX_CHARS = 256
_EPOCH = datetime.date(1970, 1, 1).toordinal()
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"), 1)}
# RFC 5322 §4.3 obs-zone: the named North American zones; "UT"/"GMT" are +0000. Other letters (military zones,
# unknown names) are -0000, i.e. UTC for the instant.
_ZONES = {"ut": 0, "utc": 0, "gmt": 0, "z": 0, "est": -5, "edt": -4, "cst": -6, "cdt": -5, "mst": -7, "mdt": -6,
          "pst": -8, "pdt": -7}
_COMMENT = re.compile(r"\([^()]*\)")
# [day-of-week [","]] day ["-"] month ["-"] year [hour ":" minute [":" second]] [zone], on collapsed blanks.
_DATE_TIME = re.compile(
    r"(?:[a-z]+ ?,? ?)?(\d{1,2}) ?-? ?([a-z]{3})[a-z]*\.? ?-? ?(\d{2,4})\b"
    r"(?: ?,? ?(\d{1,2}) ?: ?(\d{1,2})(?: ?: ?(\d{1,2}))?(?:\.\d*)?)?"
    r"(?: ?([+-]\d{4}\b|[a-z]+\b))?",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class SentDate:
    """A parsed Date: field. `day`: the calendar date as written (the sender's zone), as days since 1970-01-01;
    `instant`: the date and time in POSIX seconds (UTC)."""

    day: int
    instant: float


def _year(text: str) -> int:
    year = int(text)
    if len(text) == 2:  # RFC 5322 §4.3 obs-year
        return year + (2000 if year < 50 else 1900)
    if len(text) == 3:
        return year + 1900
    return year


def _offset(zone: str | None) -> int:
    """The zone's offset east of UTC in seconds; 0 for an absent, unknown or invalid zone (invariant 3)."""
    if not zone:
        return 0
    if zone[0] in "+-":
        hh, mm = int(zone[1:3]), int(zone[3:5])
        if mm > 59:
            return 0
        return (hh * 3600 + mm * 60) * (-1 if zone[0] == "-" else 1)
    return _ZONES.get(zone.lower(), 0) * 3600


def _make(year: int, month: int, day: int, hh: int, mm: int, ss: int, offset: int) -> SentDate | None:
    try:
        date = datetime.date(year, month, day)
    except ValueError:
        return None
    if not (hh < 24 and mm < 60 and ss <= 60):
        hh = mm = ss = 0  # RFC 5256 §2.2: an invalid time is 00:00:00
    ss = min(ss, 59)  # a leap second counts as the second before it
    instant = calendar.timegm((year, month, day, hh, mm, ss)) - offset
    return SentDate(date.toordinal() - _EPOCH, float(instant))


def parse_date(value: str) -> SentDate | None:
    """A Date: field's value (unfolded text) -> its day as written and its instant, or None without a valid
    date (invariants 1-4). RFC 5322 §3.3, §4.3; RFC 5256 §2.2."""
    text = value[:MAX_CHARS]
    if "(" in text:
        for _ in range(4):  # comments, nested up to four deep
            text, n = _COMMENT.subn(" ", text)
            if not n:
                break
    text = " ".join(text.split())
    m = _DATE_TIME.match(text)
    month = _MONTHS.get(m.group(2).lower()) if m else None
    if m is not None and month is not None:
        hh, mm, ss = (int(g) if g else 0 for g in m.group(4, 5, 6))
        return _make(_year(m.group(3)), month, int(m.group(1)), hh, mm, ss, _offset(m.group(7)))
    try:
        t = email.utils.parsedate_tz(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if t is None:
        return None
    return _make(t[0], t[1], t[2], t[3], t[4], t[5], t[9] or 0)


__all__ = ["SentDate", "parse_date"]
