"""APPEND ... CATENATE (RFC 4469): a message joined from TEXT literals and IMAP URLs (RFC 5092) of messages, or
sections of messages, the user may read; alone or as messages of a MULTIAPPEND (RFC 3502).

Theory of operation
-------------------
`mailboxes.append` hands a command here when any of its messages is a CATENATE. Each message is built in
order, part by part, by a `Joiner`: a TEXT literal is copied (a large one arrived as a staging file, session.py,
and is found by the offset of the empty literal it left in the command, `StagedLiteral.at`); a URL is resolved
(`parse_url`, then `acl.resolve` and the "r" right, RFC 4314 §4; UIDVALIDITY; the UID) and its octets are what
BODY.PEEK[section]<partial> gives, located through the message's part table (`MessageMeta.span`) and read from
the store in `CHUNK`-sized pieces (`Store.read_message_range`); no source body is read whole. The joined
message stays in memory while the command's joined messages together hold at most `STAGING_THRESHOLD` bytes,
else it goes on in a new staging file. Then the existing append path takes over: the metadata is computed once
(`metapool`, from the file by a worker for a staged one), and `Store.append` / `append_file` / `append_multi`
store the message(s), so the full-text index, thread keys and the change feed follow as for any APPEND.

URLs (RFC 5092 §6, §7.1): `imap://host/mailbox[;UIDVALIDITY=n]/;UID=m[/;SECTION=s][/;PARTIAL=o[.l]]` (host: this
server's `server.hostname`; a user in it must be the session's user; `;AUTH=` is ignored), the same without
scheme and host (`/mailbox...`, an absolute path), and `;UID=m[...]`, relative to the selected mailbox (its
UIDVALIDITY implied), which is what a client writes after SELECT. Mailbox names are UTF-8, %-escaped (RFC 5092
§3.2); the section is BODY[]'s section text, %-escaped. Everything else (another server, a relative path from a
mailbox name, a bare `;SECTION=`, URLAUTH, which is not offered) is not resolvable here.

Errors (RFC 4469 §5): a URL that cannot be parsed, names no mailbox the user may read ("r"), a UIDVALIDITY that
differs, a UID not in the mailbox, or a section the message does not have: `NO [BADURL url]`, the URL as sent
(bytes a url-resp-text cannot carry %-escaped, RFC 4469 erratum 2002). Past APPENDLIMIT (`limits.message_size`),
checked before each part is added: `NO [TOOBIG]`. A MULTIAPPEND is all or nothing (RFC 3502 §3, RFC 4469 §3):
every message is joined and checked before the one store call.

Invariants
1. Nothing is stored unless every part of every message of the command resolved; a refusal leaves no staging
   file behind (the joined ones are removed here, the literals' by `mailboxes.append`).
2. Memory: the joined messages of one command hold at most `STAGING_THRESHOLD` bytes in memory (besides the
   command's own literals, capped by the session); a source body is read `CHUNK` bytes at a time, except the
   header block a HEADER.FIELDS section is chosen from.
3. At most `session.MAX_STAGED_LITERALS` staging files per command (the literals' and the joined messages'),
   at most `MAX_PARTS` cat-parts: beyond them `NO [LIMIT]` (RFC 5530 §3).
4. A URL is read only after `acl.resolve` and the "r" right (acl.py invariant 1); a mailbox the user may not
   read is the same BADURL as one that does not exist (acl.py invariant 2). Reading does not set \\Seen (as
   BODY.PEEK).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from postroom import metapool as pool
from postroom.fsutil import write_all
from postroom.mime.imap import Section, header_fields
from postroom.store.api import (
    STAGING_THRESHOLD,
    AppendRequest,
    InsufficientStorage,
    Invalid,
    NotFound,
    StagedAppend,
    flags_allowed,
    is_out_of_space,
)

from . import acl, encoder
from . import parser as P
from .arguments import parse_flags
from .errors import Bad, No, Result
from .fetch import load_meta
from .session import MAX_STAGED_LITERALS, STREAM_CHUNK, Session, StagedLiteral

CHUNK = STREAM_CHUNK  # bytes of a source body read from the store at a time (invariant 2)
MAX_PARTS = 1000  # cat-parts in one command (invariant 3)
UID_MAX = 0xFFFFFFFF


class BadUrl(Exception):
    """A URL of a cat-part that does not name a message (or section) the user may read (RFC 4469 §5 BADURL)."""


@dataclass(frozen=True, slots=True)
class ImapUrl:
    """A message or section URL (RFC 5092 `imessagepart`), resolved against the session. `mailbox`: the stored
    form of the name (UTF-8), None for the selected mailbox; `partial`: (offset, length or None)."""

    mailbox: str | None
    uidvalidity: int | None
    uid: int
    section: Section | None
    partial: tuple[int, int | None] | None


# RFC 5092 §11: bchar = achar / ":" / "@" / "/", achar = uchar / "&" / "=", uchar = unreserved / pct-encoded /
# sub-delims-sh ("!" "$" "'" "(" ")" "*" "+" ",")
_BCHARS = r"A-Za-z0-9\-._~!$'()*+,&=:@/%"
_MAILBOX_REF = re.compile(rf"([{_BCHARS}]+?)(?:;UIDVALIDITY=([1-9][0-9]{{0,9}}))?\Z", re.IGNORECASE)
_MESSAGE_PART = re.compile(
    rf";UID=([1-9][0-9]{{0,9}})(?:/;SECTION=([{_BCHARS}]+?))?(?:/;PARTIAL=([0-9]{{1,10}})(?:\.([1-9][0-9]{{0,9}}))?)?\Z",
    re.IGNORECASE)
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_USERINFO = re.compile(r"([^;]*)(?:;AUTH=[^;]+)?\Z", re.IGNORECASE)


def _unescape(text: str) -> str:
    """%-decoding into UTF-8 text (RFC 5092 §3.2); BadUrl for a stray `%` or bytes that are not UTF-8."""
    if not text.isascii():
        raise BadUrl("not a URL")
    head, *rest = text.split("%")
    out = bytearray(head.encode("ascii"))
    for piece in rest:
        if not _HEX2.match(piece):
            raise BadUrl("stray %")
        out.append(int(piece[:2], 16))
        out += piece[2:].encode("ascii")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl("not UTF-8") from None


def parse_url(url: str, hostname: str, user: str) -> ImapUrl:
    """The message or section a cat-part's URL names (module doc: the forms accepted). Raises BadUrl."""
    if url[:7].lower() == "imap://" or url.startswith("//"):
        rest = url[7:] if url[:7].lower() == "imap://" else url[2:]
        server, slash, path = rest.partition("/")
        if not slash:
            raise BadUrl("no mailbox")
        userinfo, at, hostport = server.rpartition("@")
        host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport
        if hostport.count(":") == 1 and not hostport.rsplit(":", 1)[1].isdigit():
            raise BadUrl("bad port")
        if host.lower() != hostname.lower():
            raise BadUrl("another server")  # RFC 4469 §3: a server need not fetch from other servers
        if at:
            m = _USERINFO.match(userinfo)
            if m is None or (m.group(1) and _unescape(m.group(1)).lower() != user.lower()):
                raise BadUrl("another user")  # only URLAUTH (not offered) lets one user read as another
    elif url.startswith("/"):
        path = url[1:]
    else:  # RFC 5092 §7.1 irelative-path: ";UID=..." relative to the selected mailbox's URL
        return _message_part(url, None, None)
    i = path.upper().find("/;UID=")
    if i < 0:
        raise BadUrl("not a message URL")
    m = _MAILBOX_REF.match(path[:i])
    if m is None:
        raise BadUrl("bad mailbox")
    name = _unescape(m.group(1))
    if name.upper() == "INBOX" or name[:6].upper() == "INBOX/":
        name = "INBOX" + name[5:]  # RFC 9051 §5.1: INBOX is case-insensitive (as arguments.stored_name)
    return _message_part(path[i + 1:], name, int(m.group(2)) if m.group(2) else None)


def _message_part(text: str, mailbox: str | None, uidvalidity: int | None) -> ImapUrl:
    m = _MESSAGE_PART.match(text)
    if m is None:
        raise BadUrl("not a message URL")
    uid = int(m.group(1))
    if uid > UID_MAX or (uidvalidity is not None and uidvalidity > UID_MAX):
        raise BadUrl("number out of range")
    section = None
    if m.group(2) is not None:
        try:
            section = Section.parse(_unescape(m.group(2)))
        except ValueError:  # BadSection, or a part number too long for int()
            raise BadUrl("bad section") from None
    partial = None
    if m.group(3) is not None:
        partial = (int(m.group(3)), int(m.group(4)) if m.group(4) else None)
    return ImapUrl(mailbox, uidvalidity, uid, section, partial)


def url_resp_text(url: str) -> str:
    """The URL as a BADURL response code can carry it: url-resp-text is TEXT-CHAR but "]" (RFC 4469 §5 with
    erratum 2002); other bytes are %-escaped, which leaves the URL's meaning alone."""
    out = "".join(chr(c) if 0x21 <= c <= 0x7E and c != 0x5D else f"%{c:02X}"
                  for c in url.encode("utf-8", "surrogateescape"))
    return out or '""'


class Joiner:
    """One message being joined (module doc): bytes in memory up to what the command may still hold, then a
    staging file. `add` raises No [TOOBIG] past `limit` before anything is added."""

    def __init__(self, s: Session, limit: int, budget: list[int], files: list[Path]) -> None:
        self.s = s
        self.limit = limit
        self.budget = budget  # [bytes the command may still hold in memory], shared by its joiners
        self.files = files  # the command's staging files (this one's is added when made)
        self.buf = bytearray()
        self.fd = -1
        self.path: Path | None = None
        self.size = 0

    def reserve(self, n: int) -> None:
        """Account for `n` more bytes (RFC 4469 §5 TOOBIG; RFC 7889 APPENDLIMIT)."""
        if self.size + n > self.limit:
            raise No(f"Message larger than {self.limit} bytes", "TOOBIG")
        self.size += n

    def spill(self) -> None:
        """Go on in a staging file (invariant 2, 3)."""
        if self.fd >= 0:
            return
        if len(self.files) >= MAX_STAGED_LITERALS:
            raise No(f"At most {MAX_STAGED_LITERALS} large messages in one APPEND", "LIMIT")
        try:
            fd, name = tempfile.mkstemp(dir=self.s.store.staging_dir(), prefix="imap-catenate.")
        except OSError as exc:
            raise _storage(exc) from None
        self.fd, self.path = fd, Path(name)
        self.files.append(self.path)
        self._write(bytes(self.buf))
        self.budget[0] += len(self.buf)
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        """Append bytes already accounted for by `reserve`."""
        if self.fd < 0 and len(data) > self.budget[0]:
            self.spill()
        if self.fd < 0:
            self.buf += data
            self.budget[0] -= len(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            write_all(self.fd, data)
        except OSError as exc:
            raise _storage(exc) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _storage(exc: OSError) -> Exception:
    """A full disk is NO [OVERQUOTA] (session.py); any other OSError stays a server error."""
    return InsufficientStorage.from_os_error(exc) if is_out_of_space(exc) else exc


def _copy_file(src: Path, fd: int) -> bool:
    """Copy a staging file into `fd` in `CHUNK` pieces (a worker thread); whether it held a NUL."""
    nul = False
    with open(src, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            nul = nul or b"\x00" in chunk
            write_all(fd, chunk)
    return nul


async def _add_url(s: Session, j: Joiner, url: str) -> None:
    """Append what a URL names (module doc), or raise BadUrl."""
    assert s.user is not None
    u = parse_url(url, s.service.hostname, s.user.address)
    name, uidvalidity = u.mailbox, u.uidvalidity
    if name is None:  # RFC 5092 §7.1: relative to the selected mailbox, whose UIDVALIDITY it implies
        if s.sel is None:
            raise BadUrl("no mailbox selected")
        name = s.sel.mailbox.name
        uidvalidity = uidvalidity or s.sel.mailbox.uidvalidity
    try:
        target = await acl.resolve(s, name)
    except Invalid:  # a name the store cannot hold names no mailbox
        raise BadUrl("no such mailbox") from None
    if target is None or "r" not in target.rights:  # RFC 4314 §4; invariant 4
        raise BadUrl("no such mailbox")
    if uidvalidity is not None and uidvalidity != target.mailbox.uidvalidity:
        raise BadUrl("UIDVALIDITY differs")  # RFC 5092 §6: the URL names a mailbox that is gone
    info = await s.store.get_message(target.mailbox.id, u.uid)
    if info is None:
        raise BadUrl("no such message")
    data: bytes | None = None
    start, end = 0, info.size
    try:
        if u.section is not None and (u.section.part or u.section.specifier):
            meta = await load_meta(s, info)
            span = meta.span(u.section)
            if span is None:
                raise BadUrl("no such section")
            start, end = span
            if u.section.specifier.startswith("HEADER.FIELDS"):  # chosen from the header block (invariant 2)
                block = await s.store.read_message_range(info.blob_id, start, end - start)
                data = header_fields(block, 0, len(block), u.section)
        if u.partial is not None:  # RFC 5092 §6 ;PARTIAL= as BODY[]<offset.length> (RFC 9051 §6.4.5)
            offset, length = u.partial
            if data is not None:
                data = data[offset:] if length is None else data[offset:offset + length]
            else:
                start = min(start + offset, end)
                end = end if length is None else min(end, start + length)
        if data is not None:
            j.reserve(len(data))
            j.write(data)
            return
        j.reserve(end - start)
        while start < end:
            piece = await s.store.read_message_range(info.blob_id, start, min(CHUNK, end - start))
            if not piece:
                raise BadUrl("message shorter than its record")
            j.write(piece)
            start += len(piece)
    except NotFound:
        raise BadUrl("message expunged meanwhile") from None


async def append(s: Session, target: acl.Target, messages: tuple[P.AppendMessage, ...],
                 staged: list[StagedLiteral]) -> Result:
    """APPEND with CATENATE in one or more of `messages` (module doc); `staged`: the command's literals in
    staging files (the caller removes them afterwards). Raises No [BADURL ...], No [TOOBIG], No [LIMIT], Bad."""
    by_offset = {st.at: st for st in staged}
    literals = [p.at for m in messages for p in (m.catenate or ()) if p.url is None]
    literals += [m.at for m in messages if m.catenate is None]
    if not set(by_offset) <= set(literals):
        raise Bad("A large literal that is not a message")
    if sum(len(m.catenate or ()) for m in messages) > MAX_PARTS:
        raise No(f"At most {MAX_PARTS} CATENATE parts in one APPEND", "LIMIT")  # invariant 3
    rights = target.rights if target.shared else None
    budget = [STAGING_THRESHOLD]
    files: list[Path] = [st.path for st in staged if st.path is not None]
    mine = len(files)
    now = time.time()
    items: list[AppendRequest | StagedAppend] = []
    try:
        for m in messages:
            flags, keywords = parse_flags(m.flags)
            if rights is not None:  # RFC 4314 §4, as mailboxes.append
                flags &= flags_allowed(rights)
                keywords = keywords if "w" in rights else []
            date = m.date if m.date is not None else now
            parts = m.catenate if m.catenate is not None else (P.CatPart(None, m.message, m.binary, m.at),)
            one = by_offset.get(parts[0].at) if len(parts) == 1 and parts[0].url is None else None
            if one is not None:  # a single large literal: its staging file is the message (no copy)
                assert one.path is not None
                if one.size > s.limits.message_size:
                    raise No(f"Message larger than {s.limits.message_size} bytes", "TOOBIG")
                try:
                    meta = await pool.meta_of_file(one.path, one.size, s.limits, allow_nul=one.binary)
                except pool.NulInLiteral:
                    raise Bad("NUL in a literal (use literal8)") from None  # as syntax.Cursor.literal says
                items.append(StagedAppend(one.path, flags, frozenset(keywords), date, meta.to_bytes()))
                continue
            j = Joiner(s, s.limits.message_size, budget, files)
            try:
                for part in parts:
                    if part.url is not None:
                        try:
                            await _add_url(s, j, part.url)
                        except BadUrl:
                            raise No("CATENATE: the URL names nothing this user may read",
                                     "BADURL " + url_resp_text(part.url)) from None
                        continue
                    st = by_offset.get(part.at)
                    if st is None:
                        j.reserve(len(part.text))
                        j.write(part.text)
                        continue
                    assert st.path is not None  # staging errors were raised by the caller
                    j.reserve(st.size)
                    j.spill()
                    try:
                        nul = await asyncio.to_thread(_copy_file, st.path, j.fd)
                    except OSError as exc:
                        raise _storage(exc) from None
                    if nul and not st.binary:
                        raise Bad("NUL in a literal (use literal8)")  # RFC 9051 §4.3, as the parser says
            finally:
                j.close()
            if not j.size:
                raise No("Empty message", "CANNOT")
            # The metadata, computed once as for any APPEND (mailboxes invariant 3). Literals were checked for NUL
            # already; what URLs gave is as stored.
            if j.path is not None:
                meta = await pool.meta_of_file(j.path, j.size, s.limits, allow_nul=True)
                items.append(StagedAppend(j.path, flags, frozenset(keywords), date, meta.to_bytes()))
            else:
                raw, j.buf = bytes(j.buf), bytearray()
                items.append(AppendRequest(raw, flags, frozenset(keywords), date,
                                           await pool.meta_bytes(raw, s.limits)))
        mbox = target.mailbox
        if len(items) == 1:
            item = items[0]
            if isinstance(item, StagedAppend):
                res = await s.store.append_file(mbox.id, item.path, flags=item.flags, keywords=item.keywords,
                                                internal_date=item.internal_date, meta=item.meta)
            else:
                res = await s.store.append(mbox.id, item)
            return f"APPENDUID {res.uidvalidity} {res.uid}", "APPEND completed"
        results = await s.store.append_multi(mbox.id, items)
        uid_set = encoder.seqset([r.uid for r in results]).decode("ascii")
        return f"APPENDUID {results[0].uidvalidity} {uid_set}", "APPEND completed"
    finally:
        for path in files[mine:]:  # invariant 1: the joined messages' files (the store took those it stored)
            path.unlink(missing_ok=True)

