"""The IMAP command table (imap/commands.py): every verb the parser accepts has a handler and states (RFC 9051 §3),
every entry a parser, and docs/ARCHITECTURE.md "IMAP commands" lists each one with its parser, handler and tests."""

from __future__ import annotations

import re
from pathlib import Path

from postroom.imap import parser
from postroom.imap.commands import COMMANDS
from postroom.imap.state import ANY, AUTHED, NOT_AUTH, ONLY_SELECTED


def test_the_table_and_the_parser_know_the_same_verbs() -> None:
    parsed = set(parser.COMMANDS) | {"UID " + v for v in parser.UID_COMMANDS}
    assert set(COMMANDS) == parsed


def test_every_entry_has_states_and_a_coroutine_handler() -> None:
    import inspect

    for verb, (states, handler) in COMMANDS.items():
        assert states and states <= ANY, verb
        assert inspect.iscoroutinefunction(handler), verb


def test_states_follow_rfc_9051_section_3() -> None:
    # RFC 9051 §6.1 any state; §6.2 not authenticated; §6.3 authenticated (and selected); §6.4 selected
    assert {v for v, (st, _) in COMMANDS.items() if st == ANY} == {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
    assert {v for v, (st, _) in COMMANDS.items() if st == {NOT_AUTH}} == {"STARTTLS", "LOGIN", "AUTHENTICATE"}
    for verb in ("SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "LIST", "STATUS", "APPEND", "IDLE"):
        assert COMMANDS[verb][0] == AUTHED, verb
    for verb in ("FETCH", "UID FETCH", "STORE", "SEARCH", "EXPUNGE", "CLOSE", "UNSELECT", "MOVE", "COPY"):
        assert COMMANDS[verb][0] == ONLY_SELECTED, verb



def test_architecture_lists_every_wire_name() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text()
    section = text[text.index("### IMAP commands"):]
    section = section[:section.index("\n## ")]
    listed = re.findall(r"^\| `([A-Z ]+)` \|", section, re.M)
    assert sorted(listed) == sorted(COMMANDS)  # each once
