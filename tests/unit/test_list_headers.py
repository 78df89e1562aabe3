"""The header lines of list copies and the moderation notice, for every list name the store accepts (lists.py
invariant 4). Expected values follow the RFC grammars: RFC 2919 §2 (List-Id: list-label is dot-atom-text),
RFC 2369 §2 and RFC 6068 §2 (mailto URIs: a quoted local part is percent-encoded)."""

from __future__ import annotations

import email
import email.policy
import re
from urllib.parse import unquote

import pytest

from postroom.delivery.lists import list_headers, mailto_addr, moderation_notice
from postroom.store import names
from postroom.store.api import ListPolicy, MailingList

# RFC 5322 §3.2.3: dot-atom-text = 1*atext *("." 1*atext)
ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
DOT_ATOM_TEXT = rf"{ATEXT}+(?:\.{ATEXT}+)*"
# RFC 3986 §2: what a URI may hold (unreserved, reserved, pct-encoded); RFC 6068 §2 also forbids a raw "%",
# and in the local part gen-delims other than ":" and "@"... the separating "@" is the only one left.
URI_CHARS = r"(?:[A-Za-z0-9\-._~!$'()*+,;=:@/?]|%[0-9A-F]{2})"


def make(address: str, owner: str) -> MailingList:
    a = names.address(address)
    local, _, domain = a.rpartition("@")
    bounce = f"{names.quote_local(names.unquote_local(local) + '-bounces')}@{domain}"
    return MailingList(a, names.address_as_given(owner), ListPolicy.MODERATED, bounce)


def fields(ml: MailingList) -> dict[str, str]:
    raw = list_headers(ml)
    raw.decode("ascii")  # 7-bit: no receiver needs SMTPUTF8 for the list headers
    assert raw.endswith(b"\r\n") and b"\r\n\r\n" not in raw
    return dict(line.split(": ", 1) for line in raw.decode().split("\r\n") if line)


def test_quoted_list_name_gives_valid_list_id_and_percent_encoded_mailto() -> None:
    f = fields(make('"the list"@example.test', '"john doe"@example.test'))
    assert f["List-Id"] == "<the-list.example.test>"
    assert f["List-Post"] == "<mailto:%22the%20list%22@example.test>"
    assert f["List-Unsubscribe"] == ("<mailto:%22john%20doe%22@example.test"
                                     "?subject=unsubscribe%20%22the%20list%22@example.test>")


def test_rfc6068_examples() -> None:
    # RFC 6068 §6.1: '"not@me"@example.org' and '"oh\\no"@example.org' as mailto URIs.
    assert mailto_addr('"not@me"@example.org') == "%22not%40me%22@example.org"
    assert mailto_addr('"oh\\\\no"@example.org') == "%22oh%5C%5Cno%22@example.org"


@pytest.mark.parametrize("address", [
    "team@example.test", "Team.News@example.test", '"the list"@example.test', '"a@b"@example.test',
    '"q\\"uote"@example.test', '"50% off, now"@example.test', '"a/b?c#d&e=f;g"@example.test',
    "équipe@exämple.test", '"..x. y"@example.test', "a+b=c@example.test",
])
def test_every_list_name_gives_headers_by_the_grammar(address: str) -> None:
    ml = make(address, "Owner.Name@Remote.test")
    f = fields(ml)
    m = re.fullmatch(rf"<({DOT_ATOM_TEXT})>", f["List-Id"])  # RFC 2919 §2, with the domain as namespace
    assert m is not None, f["List-Id"]
    post = re.fullmatch(rf"<mailto:({URI_CHARS}+)>", f["List-Post"])
    assert post is not None, f["List-Post"]
    # the to part has one raw "@" (the separator), and decodes back to the list's address
    assert post[1].count("@") == 1 and unquote(post[1]) == ml.address
    unsub = re.fullmatch(rf"<mailto:({URI_CHARS}+)\?subject=({URI_CHARS}+)>", f["List-Unsubscribe"])
    assert unsub is not None, f["List-Unsubscribe"]
    assert unquote(unsub[1]) == "Owner.Name@remote.test"  # the owner's local part keeps its case
    assert unquote(unsub[2]) == f"unsubscribe {ml.address}"


def test_moderation_notice_addresses_parse_for_a_quoted_list_name() -> None:
    ml = make('"the list"@example.test', '"John Doe"@example.test')
    raw = b"From: poster@outside.test\r\nSubject: hello\r\n\r\nbody\r\n"
    notice = moderation_notice(ml, "0" * 32, "Poster@outside.test", raw, "mx.example.test")
    msg = email.message_from_bytes(notice, policy=email.policy.default)
    assert [a.addr_spec for a in msg["From"].addresses] == ['"the list-bounces"@example.test']
    assert [a.addr_spec for a in msg["To"].addresses] == ['"John Doe"@example.test']
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert '"the list+approve-' + "0" * 32 + '"@example.test' in text
    assert "from <Poster@outside.test>" in text
