"""Base subject extraction (RFC 5256 §2.1), the i;unicode-casemap key (RFC 5051) and the SORT / THREAD keys of a
header (mime/sortkeys.py). Expected values come from the RFC's steps and ABNF."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.mime import headers as H
from postroom.mime.meta import FORMAT_VERSION, MessageMeta, MetaFormatError, compute_meta
from postroom.mime.sortkeys import MAX_REFERENCES, base_subject, casemap, message_ids, sort_keys


@pytest.mark.parametrize("subject, base, reply", [
    ("Lunch", "Lunch", False),
    ("Re: Lunch", "Lunch", True),  # step 3: subj-refwd
    ("RE: re: Re:Lunch", "Lunch", True),  # repeated (step 5), case-insensitive
    ("Fwd: Lunch", "Lunch", True),
    ("Fw: Lunch", "Lunch", True),
    ("Re[2]: Lunch", "Lunch", True),  # subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
    ("Re [list]: Lunch", "Lunch", True),
    ("[list] Re: Lunch", "Lunch", True),  # subj-leader = *subj-blob subj-refwd
    ("[list] Lunch", "Lunch", False),  # step 4: a blob prefix goes if a subj-base remains
    ("[a] [b] Lunch", "Lunch", False),
    ("[a] [b]", "[b]", False),  # subj-middle: the last blob is the subj-base if it would otherwise be empty
    ("[only]", "[only]", False),
    ("Lunch (fwd)", "Lunch", True),  # step 2: subj-trailer
    ("Lunch (FWD) (fwd)  ", "Lunch", True),
    ("[Fwd: Lunch]", "Lunch", True),  # step 6: subj-fwd-hdr ... subj-fwd-trl
    ("[fwd: Re: [list] Lunch (fwd)]", "Lunch", True),  # and again from step 2
    ("[Fwd: Lunch", "[Fwd: Lunch", False),  # no subj-fwd-trl, and no "]" so no subj-blob: kept
    ("Re:", "", True),
    ("   ", "", False),
    ("Lunch\t \t plans", "Lunch plans", False),  # step 1: tabs to spaces, runs to one
    ("Re lunch", "Re lunch", False),  # no colon: no subj-refwd
    ("Ref: lunch", "Ref: lunch", False),
    ("Fwd:Fw:Re:[x]Re: lunch", "lunch", True),
])
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert base_subject(subject) == (base, reply)


def test_base_subject_of_pathological_subjects() -> None:
    # Linear by construction (module invariant 1); these once cost a quadratic rescan in naive versions.
    assert base_subject("[a]" * 20_000 + " x") == ("x", False)
    assert base_subject("[a] " * 20_000) == ("[a]", False)
    assert base_subject(" " * 60_000) == ("", False)
    assert base_subject("[fwd:" * 5_000 + "x" + "]" * 5_000) == ("x", True)


def test_casemap_is_titlecase_then_nfd() -> None:
    assert casemap("abc xyz") == "ABC XYZ"  # on ASCII: i;ascii-casemap
    assert casemap("école") == "E\u0301COLE"  # RFC 5051 §2: titlecase, then canonical decomposition
    assert casemap("École") == casemap("e\u0301cole")
    assert casemap("straße") == "STRAßE"  # ß has no one-character titlecase: itself
    assert casemap("ǆ") == "ǅ"  # the titlecase form, not the upper-case one (Ǆ)
    assert casemap("apfel") < casemap("Äpfel")  # A U+0308 after AP...


def test_message_ids() -> None:
    assert message_ids("junk <a@b> (c) <c@d>") == ["a@b", "c@d"]
    assert message_ids("<no-at-sign> <x y@z>") == []


def fields(text: str) -> list[H.Field]:
    raw = text.replace("\n", "\r\n").encode() + b"\r\n"
    return H.split_fields(raw, 0, len(raw))[0]


def test_sort_keys_of_a_header() -> None:
    k = sort_keys(fields("From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.org>, b@example.org\n"
                         "To: undisclosed-recipients:;\n"
                         "Cc: \"\" <cc@example.org>\n"
                         "Subject: Re: =?UTF-8?B?w4ljb2xl?=\n"
                         "Message-ID: <id1@example.org> <id2@example.org>\n"
                         "In-Reply-To: <irt@example.org>\n"
                         "References: <r1@example.org>\n <r2@example.org>\n"))
    assert k.subject == casemap("École") and k.reply
    assert k.from_ == "ANDRE" and k.display_from == casemap("André")  # RFC 5256 §3 addr-mailbox; RFC 5957
    assert k.to == casemap("undisclosed-recipients") and k.display_to == k.to  # the group start's mailbox
    assert k.cc == "CC" and k.display_from != "" and k.message_id == "id1@example.org"
    assert k.references == ("r1@example.org", "r2@example.org")  # References wins over In-Reply-To


def test_in_reply_to_only_its_first_id_and_display_without_a_name() -> None:
    k = sort_keys(fields("From: bare@example.org\nIn-Reply-To: <p1@x> <p2@x>\n"))
    assert k.references == ("p1@x",)  # RFC 5256 §3 step 1.A
    assert k.display_from == "BARE@EXAMPLE.ORG" and k.subject == "" and k.message_id is None


def test_references_are_capped_keeping_the_last() -> None:
    refs = " ".join(f"<r{i}@x>" for i in range(MAX_REFERENCES + 10))
    k = sort_keys(fields(f"References: {refs}\n"))
    assert len(k.references) == MAX_REFERENCES and k.references[-1] == f"r{MAX_REFERENCES + 9}@x"


def test_meta_carries_the_keys_and_round_trips() -> None:
    raw = b"Subject: [list] Re: Hello\r\nDate: Tue, 2 Jan 2024 01:00:00 +0500\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n"
    meta = compute_meta(raw)
    assert FORMAT_VERSION == 4 and meta.keys.subject == "HELLO" and meta.keys.reply
    assert MessageMeta.from_bytes(meta.to_bytes()) == meta
    with pytest.raises(MetaFormatError):  # an older format: the reader recomputes it
        MessageMeta.from_bytes(b'{"v": 2}')


def test_eight_bit_fields_give_storable_text() -> None:
    raw = b"From: J\xc3\xb6rg \xff <j\xf6rg@example.org>\r\nMessage-ID: <\xff@x>\r\nSubject: \xe9t\xe9\r\n\r\n"
    k = sort_keys(H.split_fields(raw, 0, len(raw))[0])
    for text in (k.subject, k.from_, k.display_from, k.message_id or ""):
        text.encode("utf-8")  # no lone surrogates (module invariant 5): SQLite must be able to store it
    assert k.from_ == casemap("jörg") and k.message_id == "ÿ@x"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_sort_keys_never_raise(data: bytes) -> None:
    raw = b"Subject: " + data + b"\r\nFrom: " + data + b"\r\nReferences: " + data + b"\r\n\r\n"
    k = sort_keys(H.split_fields(raw, 0, len(raw))[0])
    "".join((k.subject, k.from_, k.display_from, k.message_id or "", *k.references)).encode("utf-8")
    base_subject(data.decode("utf-8", "replace"))
