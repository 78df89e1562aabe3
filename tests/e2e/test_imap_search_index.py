"""SEARCH narrowed by the full-text index answers exactly as the full scan (issue 14 item 3), and WITHIN
(RFC 5032) end to end.

The mailbox holds the MIME corpus (tests/data/mime/msgs) and generated mail: random words in English (with
ß, ligatures and dotted İ, whose case folding changes their length), Chinese, Japanese, Vietnamese (precomposed
and decomposed diacritics) and Cyrillic; RFC 2047 B and Q words (also split across words, and in KOI8-R and
ISO-2022-JP), RFC 6532 raw UTF-8 headers, RFC 2231 file names (also continued), and quoted-printable, base64 and
8-bit bodies in several charsets. Hundreds of SEARCH commands, substrings of the decoded text in random case
and lengths (one- and two-character CJK included), strings in no message, strings across a header/body line
end and across repeated fields, and combinations with flags, dates, OR and NOT, are sent twice: with the index
(`search._narrowing` as built) and without it (the full scan), both checked on the scan forms
(`Store.scan_texts`), then a third time checked on the metadata (no scan forms, the path of bodies not indexed
yet). Every answer must be the same.
"""

from __future__ import annotations

import base64
import imaplib
import quopri
import random
import time
import unicodedata
from pathlib import Path
from typing import Any

import imapclient
import pytest
from imap_support import Raw, wire_imap

from postroom.imap import search
from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest, Flag, StoreMode, TextScan
from postroom.store.scanform import text_haystack

ADDR = "ann@example.org"
PW = "ann-secret"
CORPUS = Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs"
WORDS = {
    "en": ["invoice", "meeting", "quarterly", "report", "budget", "travel", "xylophone", "rendezvous", "Straße",
           "ﬁle", "İstanbul", "naïve", "café", "Zebra", "QUOTE\"d", "comma, separated"],
    "zh": ["你好", "世界", "会议", "报告", "预算", "旅行", "中华人民共和国", "数据库", "服务器"],
    "ja": ["こんにちは", "東京", "会議", "カタカナ", "ひらがな", "請求書", "日本語", "メール"],
    "vi": ["Tiếng Việt", "người", "Hà Nội", "thành phố", "cảm ơn", "Nguyễn", "phở", "Đà Nẵng"],
    "ru": ["привет", "Москва", "отчёт", "бюджет", "встреча", "Ёлка", "письмо", "ЗДРАВСТВУЙТЕ"],
}
CHARSETS = {"ru": "koi8-r", "ja": "iso-2022-jp", "zh": "gb2312"}
ALL_WORDS = [w for ws in WORDS.values() for w in ws]


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    return server


# ---- generated mail ----------------------------------------------------------------------------------------

def _phrase(rng: random.Random, lang: str, n: int) -> str:
    text = " ".join(rng.choice(WORDS[lang]) for _ in range(n))
    return unicodedata.normalize("NFD", text) if lang == "vi" and rng.random() < 0.3 else text


def _b_word(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def _q_word(text: str) -> str:
    enc = "".join(chr(b) if chr(b).isalnum() and b < 128 else "_" if b == 32 else f"={b:02X}"
                  for b in text.encode("utf-8"))
    return f"=?utf-8?Q?{enc}?="


def _header_value(rng: random.Random, lang: str, text: str) -> str:
    how = rng.randrange(5)
    if how == 0:
        return text  # RFC 6532: raw UTF-8
    if how == 1:
        return _b_word(text)
    if how == 2:
        return _q_word(text)
    if how == 3 and len(text) > 2:  # a character split across two words (RFC 2047 §6.2: joined)
        data = text.encode("utf-8")
        cut = len(data) // 2
        return (f"=?utf-8?B?{base64.b64encode(data[:cut]).decode()}?= "
                f"=?utf-8?B?{base64.b64encode(data[cut:]).decode()}?=")
    if lang in CHARSETS:
        try:
            return _b_word(text, CHARSETS[lang])
        except UnicodeEncodeError:
            pass
    return _b_word(text)


def _body_part(rng: random.Random, lang: str, text: str) -> bytes:
    charset = CHARSETS.get(lang, "utf-8") if rng.random() < 0.5 else "utf-8"
    try:
        data = text.encode(charset)
    except UnicodeEncodeError:
        charset, data = "utf-8", text.encode("utf-8")
    cte = rng.choice(["quoted-printable", "base64", "8bit"])
    if cte == "quoted-printable":
        data = quopri.encodestring(data.replace(b"\n", b"\r\n"))
    elif cte == "base64":
        data = base64.encodebytes(data.replace(b"\n", b"\r\n"))
    else:
        data = data.replace(b"\n", b"\r\n")
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    kind = "html" if rng.random() < 0.2 else "plain"
    if kind == "html":
        data = b"<html><body><p>" + data + b"</p></body></html>" if cte == "8bit" else data
    return (f"Content-Type: text/{kind}; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n").encode() + \
        data + b"\r\n"


def _filename_params(rng: random.Random, name: str) -> str:
    quoted = "".join(c if c.isascii() and c.isalnum() else "%" + "%".join(f"{b:02X}" for b in c.encode())
                     for c in name)
    if rng.random() < 0.5 or len(quoted) < 8:
        return f"filename*=utf-8''{quoted}"
    cut = quoted.rfind("%", 0, len(quoted) // 2) if "%" in quoted[: len(quoted) // 2] else len(quoted) // 2
    cut = max(cut, 1)
    return f"filename*0*=utf-8''{quoted[:cut]}; filename*1*={quoted[cut:]}"  # RFC 2231 §3 continuation


def generated(i: int, rng: random.Random) -> bytes:
    lang = rng.choice(list(WORDS))
    other = rng.choice(list(WORDS))
    subject = _phrase(rng, lang, rng.randint(1, 4))
    name = _phrase(rng, other, rng.randint(1, 2))
    head = [f"From: {_header_value(rng, other, name)} <sender{i % 13}@example.net>",
            "To: " + ", ".join(f"{_header_value(rng, lang, _phrase(rng, lang, 1))} <to{(i + k) % 7}@example.org>"
                               for k in range(rng.randint(1, 3))),
            f"Subject: {_header_value(rng, lang, subject)}",
            f"Date: Mon, {1 + i % 28} Jan 2024 10:00:00 +0000",
            f"Message-ID: <gen{i}@example.net>"]
    if rng.random() < 0.4:
        head.append(f"Cc: {_header_value(rng, other, _phrase(rng, other, 2))} <cc{i % 5}@example.org>")
    if rng.random() < 0.2:
        head.append(f"Bcc: hidden{i % 3}@example.org")
    for _ in range(rng.randint(0, 2)):
        head.append(f"X-Tag: {_header_value(rng, other, _phrase(rng, other, 2))}")
    body = "\n".join(_phrase(rng, rng.choice([lang, other]), rng.randint(2, 12)) for _ in range(rng.randint(1, 20)))
    head.append("MIME-Version: 1.0")
    top = "\r\n".join(head).encode()
    if rng.random() < 0.4:
        fname = _phrase(rng, rng.choice(list(WORDS)), 1).replace(" ", "_") + ".pdf"
        pdf = base64.encodebytes(b"%PDF-1.4 " + bytes(rng.randrange(256) for _ in range(60)))
        return (top + b'\r\nContent-Type: multipart/mixed; boundary="=b="\r\n\r\n--=b=\r\n'
                + _body_part(rng, lang, body)
                + b"--=b=\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
                + f"Content-Disposition: attachment; {_filename_params(rng, fname)}\r\n\r\n".encode()
                + pdf.replace(b"\n", b"\r\n") + b"--=b=--\r\n")
    return top + b"\r\n" + _body_part(rng, lang, body)


def fill(imap: Any, rng: random.Random) -> list[bytes]:
    user = imap.run(imap.store.get_user(ADDR))
    inbox = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    raws = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))]
    raws += [generated(i, rng) for i in range(220)]
    reqs = [AppendRequest(raw=r, internal_date=1_700_000_000 + 86400 * (i % 40),
                          meta=compute_meta(r).to_bytes()) for i, r in enumerate(raws)]
    imap.run(imap.store.append_many(inbox.id, reqs))
    for flag, step in ((Flag.SEEN, 2), (Flag.FLAGGED, 7)):
        imap.run(imap.store.store_flags(inbox.id, list(range(1, len(raws) + 1, step)), StoreMode.ADD, int(flag)))
    return raws


# ---- queries -------------------------------------------------------------------------------------------------

def _haystacks(raw: bytes) -> dict[str, str]:
    meta = compute_meta(raw)
    st = meta.search
    return {"SUBJECT": st.header("subject"), "FROM": st.header("from"), "TO": st.header("to"),
            "CC": st.header("cc"), "BCC": st.header("bcc"), "HEADER X-Tag": st.header("x-tag"),
            "HEADER Message-ID": st.header("message-id"), "BODY": st.body, "TEXT": text_haystack(meta)}


def _literal(s: str) -> bytes:
    data = s.encode("utf-8")
    return b"{%d+}\r\n" % len(data) + data


def _usable(s: str) -> bool:
    return bool(s) and "\x00" not in s and "\r" not in s


def queries(raws: list[bytes], rng: random.Random) -> list[bytes]:
    out: list[bytes] = []
    sample = rng.sample(raws, 60)
    for raw in sample:
        for op, text in _haystacks(raw).items():
            if not text:
                continue
            for _ in range(2 if op in ("TEXT", "BODY") else 1):
                a = rng.randrange(len(text))
                needle = text[a:a + rng.choice([1, 2, 3, 4, 6, 9, 14])]
                needle = needle.upper() if rng.random() < 0.3 else needle.lower() if rng.random() < 0.3 else needle
                if _usable(needle):
                    out.append(op.encode() + b" " + _literal(needle))
        text = _haystacks(raw)["TEXT"]
        cut = text.find("\n\n")
        if cut > 3:  # across the end of the header and the start of the body
            out.append(b"TEXT " + _literal(text[max(0, cut - 4):cut + 6]))
        tags = _haystacks(raw)["HEADER X-Tag"]
        if ", " in tags:  # across two X-Tag fields joined
            at = tags.index(", ")
            out.append(b"HEADER X-Tag " + _literal(tags[max(0, at - 3):at + 5]))
    for word in ALL_WORDS + ["no such thing", "zzqxj", "не найдено", "見つからない"]:
        out.append(rng.choice([b"TEXT ", b"BODY ", b"SUBJECT "]) + _literal(word))
    combos: list[bytes] = []
    for _ in range(70):
        a, b = (out[rng.randrange(len(out))] for _ in range(2))
        combos.append(rng.choice([
            b"UNSEEN " + a, b"FLAGGED " + a + b" " + b, b"OR " + a + b" " + b, b"NOT " + a, a + b" NOT " + b,
            b"SINCE 10-Dec-2023 " + a, b"OR SEEN " + a, b"(" + a + b" OR DELETED " + b + b")", b"LARGER 2000 " + a,
            b"OR (" + a + b" UNSEEN) (" + b + b" SEEN)", b"HEADER Subject \"\" " + a,
        ]))
    return out + combos


def run_all(port: int, qs: list[bytes]) -> list[bytes]:
    r = Raw(port, timeout=60)
    r.login(ADDR, PW)
    r.cmd("s SELECT INBOX")
    answers = []
    for n, q in enumerate(qs):
        lines = r.cmd(b"q%d SEARCH CHARSET UTF-8 " % n + q)
        assert lines[-1].startswith(b"q%d OK" % n), (q, lines)
        answers.append(b"".join(lines[:-1]))
    r.close()
    return answers


def test_indexed_answers_equal_the_full_scan(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(14)
    raws = fill(imap, rng)
    qs = queries(raws, rng)
    store = imap.store
    narrowed: list[int] = []
    original = store.search_text

    async def counting(*args: Any) -> Any:
        found = await original(*args)
        if found is not None:
            narrowed.append(len(found.messages))
        return found

    scanned: list[int] = []
    original_scan = store.scan_texts

    async def counting_scan(*args: Any) -> Any:
        found = await original_scan(*args)
        scanned.append(len(found.hits))
        return found

    monkeypatch.setattr(store, "search_text", counting)
    monkeypatch.setattr(store, "scan_texts", counting_scan)
    with_index = run_all(imap.port("imap"), qs)
    monkeypatch.setattr(search, "_narrowing", lambda key: None)  # the full scan, as before the index
    without = run_all(imap.port("imap"), qs)
    differing = [(q, a, b) for q, a, b in zip(qs, with_index, without) if a != b]
    assert not differing, differing[:5]

    async def no_forms(*args: Any) -> TextScan:
        return TextScan({}, 0)  # as for bodies without a scan form: the metadata path

    monkeypatch.setattr(store, "scan_texts", no_forms)
    from_metadata = run_all(imap.port("imap"), qs)
    differing = [(q, a, b) for q, a, b in zip(qs, with_index, from_metadata) if a != b]
    assert not differing, differing[:5]
    assert sum(scanned) > 10 * len(qs)  # the scan forms answered most of the checks of the first two runs
    # Not vacuous: most searches were narrowed, most of those to a small part of the mailbox, and many found mail.
    assert len(narrowed) > len(qs) // 2, (len(narrowed), len(qs))
    assert sum(1 for n in narrowed if n < len(raws) // 4) > len(narrowed) // 2
    assert sum(1 for a in with_index if a.strip() != b"* SEARCH") > len(qs) // 3


# ---- TEXT and the body parts' MIME header fields ---------------------------------------------------------------

DESCRIBED = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: plain\r\nMIME-Version: 1.0\r\n"
             b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\npreamble\r\n--zz\r\n'
             b"Content-Type: text/plain\r\n\r\nhello body\r\n--zz\r\nContent-Type: application/pdf; name=r.pdf\r\n"
             b"Content-Description: Quarterly walrusreport figures\r\nContent-Transfer-Encoding: base64\r\n"
             b"X-Part-Note: narwhalnote\r\n\r\nJVBERi0xLjQK\r\n--zz--\r\n")


def test_text_matches_mime_header_fields_of_body_parts(imap: Any) -> None:
    """RFC 9051 §6.4.4: TEXT matches "the header (including MIME header fields) or body"; BODY does not look at
    a part's MIME header. Dovecot 2.3.19 (Debian's dovecot-imapd, no FTS plugin) gives every answer below on this
    message too, X-Part-Note (a non-MIME field in a part header) included: no difference."""
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=10)
    c.login(ADDR, PW)
    assert c.append("INBOX", None, None, DESCRIBED)[0] == "OK"
    assert c.append("INBOX", None, None, b"Subject: other\r\n\r\nnothing here\r\n")[0] == "OK"
    c.select("INBOX")
    assert c.search(None, "TEXT", "WALRUSREPORT") == ("OK", [b"1"])
    assert c.search(None, "BODY", "walrusreport") == ("OK", [b""])
    assert c.search(None, "TEXT", "narwhalnote") == ("OK", [b"1"])
    assert c.search(None, "TEXT", '"content-description: quarterly"') == ("OK", [b"1"])
    assert c.search(None, "TEXT", "application/pdf") == ("OK", [b"1"])
    assert c.search(None, "BODY", "application/pdf") == ("OK", [b""])
    assert c.search(None, "NOT", "TEXT", "walrusreport") == ("OK", [b"2"])
    assert c.search(None, "UNDELETED", "TEXT", "wa") == ("OK", [b"1"])  # two characters: no narrowing
    assert c.search(None, "HEADER", "Content-Description", "walrus") == ("OK", [b""])  # the message's header only
    c.logout()


# ---- WITHIN (RFC 5032) -----------------------------------------------------------------------------------------

def test_within_older_and_younger(imap: Any) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=10)
    c.login(ADDR, PW)
    assert "WITHIN" in c.capabilities  # RFC 5032 §3: the capability
    now = time.time()
    for age in (3 * 86400, 2 * 3600, 60):  # three days, two hours and a minute old
        msg = f"Subject: {age} seconds old\r\n\r\nhello\r\n".encode()
        assert c.append("INBOX", None, imaplib.Time2Internaldate(now - age), msg)[0] == "OK"
    c.select("INBOX")
    # RFC 5032 §2: YOUNGER n, internal date within the last n seconds; OLDER n, before that.
    assert c.search(None, "YOUNGER", "86400") == ("OK", [b"2 3"])
    assert c.search(None, "OLDER", "86400") == ("OK", [b"1"])
    assert c.search(None, "OLDER", "600", "YOUNGER", "86400") == ("OK", [b"2"])
    assert c.uid("SEARCH", "YOUNGER", "3600") == ("OK", [b"3"])
    assert c.search(None, "NOT", "YOUNGER", "600") == ("OK", [b"1 2"])
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):  # nz-number: zero is bad syntax, not a traceback
        c.search(None, "OLDER", "0")
    c.logout()

    ic = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    ic.login(ADDR, PW)
    assert b"WITHIN" in ic.capabilities()
    ic.select_folder("INBOX")
    assert ic.search(["YOUNGER", 7200 + 600]) == [2, 3]
    assert ic.search(["OLDER", 3600, "SUBJECT", "old"]) == [1, 2]
    ic.logout()
