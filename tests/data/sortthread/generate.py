"""The SORT / THREAD mailbox and Dovecot's answers on it (tests/unit/test_imap_sort_dovecot.py compares).

    .venv/bin/python tests/data/sortthread/generate.py

Writes `mailbox/NNN.eml` (CRLF line ends) and `mailbox/internaldates.json` from `MESSAGES` below, then starts a
private Dovecot (bench/dovecot.py: Debian's dovecot-imapd on a free loopback port, stopped by its PID), APPENDs
every message in order with its internal date, runs every command in `COMMANDS` and writes the untagged
response lines each one got to `expected.json`. The tests never need Dovecot: they compare with these files.
Needs root or a user Dovecot runs as (bench/dovecot.py says how).

The mailbox is made for the cases RFC 5256 spells out: messages without Date (SORT DATE falls back to the
internal date, §2.2), with an unparsable Date, with equal dates (the sequence number breaks ties), duplicate
Message-IDs, reply cycles, References naming messages that are not there (dummies), In-Reply-To without
References, a References field that names the message itself, RFC 2047 subjects and names (UTF-8, ISO-8859-1,
Q and B), Re: / Fwd: / Fw: / [list] / Re[2]: prefixes, (fwd) trailers and [fwd: ...] wrappers, subjects that
differ only in case or blanks, missing From / To / Cc, groups and display names for DISPLAYFROM / DISPLAYTO.
"""

from __future__ import annotations

import imaplib
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "bench"))

BASE_DATE = 1_700_000_000  # internal dates: BASE_DATE + 3600 * n (see `arrival`)


def mk(n: int, subject: str | None, frm: str | None = "a@example.org", to: str | None = "me@example.org",
       cc: str | None = None, date: str | None = None, msgid: str | None = None, refs: str | None = None,
       irt: str | None = None, body: int = 1) -> bytes:
    """Message number n (the body's length grows with `body`, for SORT SIZE)."""
    lines = []
    if date is not None:
        lines.append(f"Date: {date}")
    if frm is not None:
        lines.append(f"From: {frm}")
    if to is not None:
        lines.append(f"To: {to}")
    if cc is not None:
        lines.append(f"Cc: {cc}")
    if subject is not None:
        lines.append(f"Subject: {subject}")
    if msgid is not None:
        lines.append(f"Message-ID: {msgid}")
    if irt is not None:
        lines.append(f"In-Reply-To: {irt}")
    if refs is not None:
        lines.append(f"References: {refs}")
    text = "\r\n".join(lines) + "\r\n\r\n" + f"message {n}\r\n" + "x" * (7 * body) + "\r\n"
    return text.encode("utf-8")


def d(day: int, hour: int = 12, zone: str = "+0000") -> str:
    return f"Mon, {day} Jan 2024 {hour:02d}:00:00 {zone}"


# (message, internal-date offset in hours): the offsets are not in UID order, so ARRIVAL differs from UIDs.
MESSAGES: list[tuple[bytes, int]] = [
    # A plain thread: root, reply, reply to the reply, a second reply to the root.
    (mk(1, "Lunch plans", "Alice <alice@example.org>", "Bob <bob@example.org>", date=d(1, 9),
        msgid="<t1@example.org>", body=3), 5),
    (mk(2, "Re: Lunch plans", "Bob <bob@example.org>", "Alice <alice@example.org>", date=d(1, 10),
        msgid="<t1r1@example.org>", refs="<t1@example.org>", irt="<t1@example.org>", body=9), 1),
    (mk(3, "RE: Re: Lunch plans", "Alice <alice@example.org>", "bob@example.org", date=d(1, 11),
        msgid="<t1r2@example.org>", refs="<t1@example.org> <t1r1@example.org>", body=1), 7),
    (mk(4, "Re: lunch PLANS", "carol@example.org", "alice@example.org", cc="dave@example.org", date=d(1, 12),
        msgid="<t1r3@example.org>", irt="<t1@example.org>", body=4), 2),
    # No Date: SORT DATE uses the internal date (RFC 5256 §2.2).
    (mk(5, "No date here", "Zed <zed@example.org>", "me@example.org", msgid="<nodate1@example.org>", body=2), 0),
    (mk(6, "Another without date", "yves@example.org", "me@example.org", msgid="<nodate2@example.org>", body=6), 30),
    # An unparsable Date: the same.
    (mk(7, "Bad date", "xavier@example.org", date="not a date at all", msgid="<baddate@example.org>", body=5), 12),
    # Equal dates: the sequence number breaks the tie.
    (mk(8, "Same time A", "same@example.org", date=d(3, 8), msgid="<same1@example.org>", body=2), 3),
    (mk(9, "Same time B", "same@example.org", date=d(3, 8), msgid="<same2@example.org>", body=2), 4),
    # Time zones: the UTC instant orders (RFC 5256 §2.2).
    (mk(10, "Zone east", "east@example.org", date="Tue, 2 Jan 2024 01:00:00 +0500", msgid="<z1@example.org>"), 6),
    (mk(11, "Zone west", "west@example.org", date="Mon, 1 Jan 2024 22:00:00 -0300", msgid="<z2@example.org>"), 8),
    # Duplicate Message-IDs: only the first keeps it (RFC 5256 §3 step 1.A).
    (mk(12, "Dup original", "dup@example.org", date=d(4, 9), msgid="<dup@example.org>", body=1), 9),
    (mk(13, "Dup copy", "dup@example.org", date=d(4, 10), msgid="<dup@example.org>", body=2), 10),
    (mk(14, "Re: Dup original", "dupreply@example.org", date=d(4, 11), msgid="<dupr@example.org>",
        refs="<dup@example.org>", body=3), 11),
    # A reply cycle: each names the other as its parent.
    (mk(15, "Cycle one", "cyc@example.org", date=d(5, 9), msgid="<c1@example.org>", refs="<c2@example.org>"), 13),
    (mk(16, "Cycle two", "cyc@example.org", date=d(5, 10), msgid="<c2@example.org>", refs="<c1@example.org>"), 14),
    # A message that references itself, and a longer cycle through References.
    (mk(17, "Self reference", "self@example.org", date=d(5, 11), msgid="<self@example.org>",
        refs="<self@example.org>"), 15),
    (mk(18, "Loop A", "loop@example.org", date=d(5, 12), msgid="<la@example.org>",
        refs="<lc@example.org> <lb@example.org>"), 16),
    (mk(19, "Loop B", "loop@example.org", date=d(5, 13), msgid="<lb@example.org>",
        refs="<la@example.org> <lc@example.org>"), 17),
    (mk(20, "Loop C", "loop@example.org", date=d(5, 14), msgid="<lc@example.org>",
        refs="<lb@example.org> <la@example.org>"), 18),
    # References to messages that are not in the mailbox: dummies; siblings under one dummy.
    (mk(21, "Re: Missing parent", "kid1@example.org", date=d(6, 9), msgid="<k1@example.org>",
        refs="<gone@example.org>"), 19),
    (mk(22, "Re: Missing parent", "kid2@example.org", date=d(6, 8), msgid="<k2@example.org>",
        refs="<gone@example.org>"), 20),
    (mk(23, "Re: Only child", "kid3@example.org", date=d(6, 10), msgid="<k3@example.org>",
        refs="<gone2@example.org> <gone3@example.org>"), 21),
    # In-Reply-To only (several ids: the first counts), and References with junk between ids.
    (mk(24, "Re: Lunch plans", "erin@example.org", date=d(1, 13), msgid="<t1r4@example.org>",
        irt="<t1r1@example.org> <other@example.org>"), 22),
    (mk(25, "Re: Lunch plans", "frank@example.org", date=d(1, 14), msgid="<t1r5@example.org>",
        refs="junk <t1@example.org> (comment) <t1r3@example.org>"), 23),
    # No Message-ID at all.
    (mk(26, "No id", "noid@example.org", date=d(7, 9)), 24),
    # RFC 2047 subjects and names.
    (mk(27, "=?UTF-8?B?w4ljb2xlIGQnw6l0w6k=?=", "=?ISO-8859-1?Q?Andr=E9?= <andre@example.org>",
        "=?UTF-8?Q?=C3=89lodie?= <elodie@example.org>", date=d(8, 9), msgid="<enc1@example.org>", body=7), 25),
    (mk(28, "Re: =?utf-8?q?=C3=A9cole_d'=C3=A9t=C3=A9?=", "\"Zoe Z\" <zoe@example.org>",
        "andre@example.org", date=d(8, 10), msgid="<enc2@example.org>", irt="<enc1@example.org>", body=8), 26),
    (mk(29, "=?ISO-8859-1?Q?=C4pfel?= und Birnen", "=?UTF-8?B?0JjQstCw0L0=?= <ivan@example.org>",
        "bob@example.org", date=d(8, 11), msgid="<enc3@example.org>"), 27),
    (mk(30, "apfel", "ANNA <anna@example.org>", "Bob <bob@example.org>", date=d(8, 12), msgid="<enc4@example.org>"),
     28),
    # Prefixes and trailers: [list], Fwd:, Fw:, Re[2]:, (fwd), [fwd: ...], blanks and case.
    (mk(31, "[list] Weekly report", "list@example.org", "me@example.org", date=d(9, 9), msgid="<l1@example.org>"),
     29),
    (mk(32, "Re: [list] Weekly report", "bob@example.org", date=d(9, 10), msgid="<l2@example.org>"), 31),
    (mk(33, "Fwd: Weekly report (fwd)", "carol@example.org", date=d(9, 11), msgid="<l3@example.org>"), 32),
    (mk(34, "[Fwd: [list] Weekly   report]", "dave@example.org", date=d(9, 12), msgid="<l4@example.org>"), 33),
    (mk(35, "Re[2]: weekly report", "erin@example.org", date=d(9, 13), msgid="<l5@example.org>"), 34),
    (mk(36, "Fw: [other] [x] Quarterly", "frank@example.org", date=d(9, 14), msgid="<q1@example.org>"), 35),
    (mk(37, "[only-a-blob]", "gina@example.org", date=d(9, 15), msgid="<b1@example.org>"), 36),
    (mk(38, "re:   RE :  Fwd:fwd: deep", "hank@example.org", date=d(9, 16), msgid="<deep@example.org>"), 37),
    (mk(39, "Quarterly", "ivy@example.org", date=d(9, 8), msgid="<q2@example.org>"), 38),
    # Missing fields: no Subject, no From, no To; groups and empty display names.
    (mk(40, None, None, None, date=d(10, 9), msgid="<nosubj@example.org>"), 39),
    (mk(41, "", "undisclosed-recipients:;", "Team: tom@example.org, tim@example.org;", date=d(10, 10),
        msgid="<grp@example.org>"), 40),
    (mk(42, "Display", "\"\" <empty@example.org>", "<bare@example.org>", cc="Cc Person <ccp@example.org>",
        date=d(10, 11), msgid="<disp@example.org>"), 41),
    (mk(43, "Display two", "walter@example.org (Walter W)", "\"Adam, A\" <adam@example.org>",
        cc="bcc@example.org", date=d(10, 12), msgid="<disp2@example.org>"), 42),
    # A child that arrives before its parent (UID order against thread order), with an older date.
    (mk(44, "Re: Late parent", "child@example.org", date=d(11, 9), msgid="<lpc@example.org>",
        refs="<lp@example.org>"), 43),
    (mk(45, "Late parent", "parent@example.org", date=d(11, 10), msgid="<lp@example.org>"), 44),
]

# Every sort key (RFC 5256 §3, RFC 5957), REVERSE, several keys, search criteria, UID SORT, ESORT's RETURN
# (RFC 5267) with PARTIAL for SORT and SEARCH (§4.4), both thread algorithms (RFC 5256 §3), with UID THREAD and
# criteria.
COMMANDS = [
    "SORT (ARRIVAL) UTF-8 ALL",
    "SORT (DATE) UTF-8 ALL",
    "SORT (REVERSE DATE) UTF-8 ALL",
    "SORT (SUBJECT) UTF-8 ALL",
    "SORT (REVERSE SUBJECT) UTF-8 ALL",
    "SORT (FROM) UTF-8 ALL",
    "SORT (TO) UTF-8 ALL",
    "SORT (CC) UTF-8 ALL",
    "SORT (SIZE) UTF-8 ALL",
    "SORT (REVERSE SIZE) UTF-8 ALL",
    "SORT (DISPLAYFROM) UTF-8 ALL",
    "SORT (DISPLAYTO) UTF-8 ALL",
    "SORT (REVERSE DISPLAYFROM) UTF-8 ALL",
    "SORT (SUBJECT DATE) UTF-8 ALL",
    "SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
    "SORT (REVERSE SUBJECT REVERSE ARRIVAL) UTF-8 ALL",
    "SORT (FROM SIZE) UTF-8 ALL",
    "SORT (DATE) UTF-8 SUBJECT lunch",
    "SORT (SUBJECT) US-ASCII 10:30",
    "UID SORT (DATE) UTF-8 ALL",
    "UID SORT (REVERSE ARRIVAL) UTF-8 UID 5:40",
    "SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
    "SORT RETURN (ALL) (SUBJECT) UTF-8 ALL",
    "SORT RETURN () (REVERSE DATE) UTF-8 ALL",
    "UID SORT RETURN (MIN MAX ALL COUNT) (SIZE) UTF-8 ALL",
    "SORT RETURN (COUNT) (DATE) UTF-8 SUBJECT nothing-matches-this",
    "SORT RETURN (PARTIAL 2:4) (DATE) UTF-8 ALL",
    "SORT RETURN (MIN PARTIAL 40:50) (REVERSE SUBJECT) UTF-8 ALL",
    "UID SORT RETURN (PARTIAL 1:3 COUNT) (SIZE) UTF-8 SUBJECT nothing-matches-this",
    "SEARCH RETURN (PARTIAL 1:5) ALL",
    "UID SEARCH RETURN (COUNT PARTIAL 40:50) ALL",
    "SEARCH RETURN (PARTIAL 100:200) ALL",
    "THREAD REFERENCES UTF-8 ALL",
    "THREAD ORDEREDSUBJECT UTF-8 ALL",
    "UID THREAD REFERENCES UTF-8 ALL",
    "UID THREAD ORDEREDSUBJECT UTF-8 ALL",
    "THREAD REFERENCES UTF-8 1:20",
    "THREAD REFERENCES UTF-8 SUBJECT report",
    "THREAD ORDEREDSUBJECT UTF-8 NOT SUBJECT lunch",
]

USER = "sort@example.org"
PASSWORD = "sort-secret"


def arrival(offset: int) -> str:
    """The IMAP date-time of internal date BASE_DATE + offset hours (APPEND's date-time)."""
    return imaplib.Time2Internaldate(BASE_DATE + 3600 * offset)


def write_mailbox() -> None:
    box = HERE / "mailbox"
    box.mkdir(exist_ok=True)
    for old in box.glob("*.eml"):
        old.unlink()
    for i, (raw, _) in enumerate(MESSAGES, 1):
        (box / f"{i:03d}.eml").write_bytes(raw)
    dates = {f"{i:03d}.eml": BASE_DATE + 3600 * off for i, (_, off) in enumerate(MESSAGES, 1)}
    (box / "internaldates.json").write_text(json.dumps(dates, indent=1) + "\n")


def ask_dovecot() -> dict[str, list[str]]:
    from dovecot import PrivateDovecot  # bench/dovecot.py

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "dovecot"
        dv = PrivateDovecot(base, ["imap"], USER, "{PLAIN}" + PASSWORD)
        dv.start()
        try:
            imap = imaplib.IMAP4("127.0.0.1", dv.ports["imap"])
            imap.login(USER, PASSWORD)
            for raw, off in MESSAGES:
                typ, _ = imap.append("INBOX", "", arrival(off), raw)
                assert typ == "OK"
            imap.select("INBOX")
            out: dict[str, list[str]] = {"CAPABILITY": [imap.capability()[1][0].decode()]}
            for command in COMMANDS:
                tag = imap._new_tag()  # type: ignore[attr-defined]
                imap.send(tag + b" " + command.encode() + b"\r\n")
                lines = []
                while True:
                    line = imap.readline().decode("utf-8", "surrogateescape").rstrip("\r\n")
                    if line.startswith(tag.decode() + " "):
                        assert " OK " in line, (command, line)
                        break
                    lines.append(line)
                out[command] = lines
            imap.logout()
        finally:
            dv.stop()
            time.sleep(0.2)
    return out


def main() -> None:
    write_mailbox()
    answers = ask_dovecot()
    (HERE / "expected.json").write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(MESSAGES)} messages, {len(COMMANDS)} commands -> {HERE / 'expected.json'}")


if __name__ == "__main__":
    main()
