"""Write the MIME test corpus (`msgs/*.eml`) from the texts below, with CRLF line ends (as messages are stored).

The corpus is committed; this script documents how each message was made and can rebuild it:
`.venv/bin/python tests/data/mime/build_corpus.py`. Messages whose name starts with `raw_` are written exactly
as given (bare LF, NUL, ...). Expected IMAP outputs come from Dovecot via `generate_expected.py`.
"""

from __future__ import annotations

import base64
from pathlib import Path

HERE = Path(__file__).resolve().parent
B64_PNG = base64.encodebytes(bytes(range(256)) * 3).decode()
B64_PDF = base64.encodebytes(b"%PDF-1.4\n" + bytes(200) + b"%%EOF\n").decode()

H = "From: Alice Example <alice@example.org>\nTo: Bob <bob@example.net>\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n"
H += "Message-ID: <m1@example.org>\n"

M: dict[str, str | bytes] = {}

M["01_plain_no_mime"] = H + "Subject: plain\n\nHello Bob,\nthis has no MIME headers at all.\n"
M["02_text_utf8_8bit"] = H + (
    "Subject: utf8\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n\nGrüße aus Köln – ✓\n"
)
M["03_text_qp"] = H + (
    "Subject: qp\nMIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\n"
    "Content-Transfer-Encoding: quoted-printable\n\nGr=FC=DFe, das ist eine sehr lange Zeile die umbrochen =\nwird.\n"
)
M["04_text_base64"] = H + (
    'Subject: b64\nMIME-Version: 1.0\nContent-Type: text/plain; charset="utf-8"\n'
    "Content-Transfer-Encoding: base64\n\n" + base64.encodebytes("Hej då, världen!\n".encode()).decode()
)
M["05_text_binary"] = H + (
    "Subject: binary\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: binary\n\nbinary text\n"
)
M["06_html_only"] = H + (
    "Subject: html\nMIME-Version: 1.0\nContent-Type: text/html; charset=us-ascii\n\n"
    "<html><head><title>T</title><style>p{}</style></head><body><p>Hello &amp; <b>bye</b></p></body></html>\n"
)
M["07_alternative"] = H + (
    'Subject: alt\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="alt-1"\n\n'
    "--alt-1\nContent-Type: text/plain; charset=us-ascii\n\nplain version\n"
    "--alt-1\nContent-Type: text/html; charset=us-ascii\n\n<p>html version</p>\n--alt-1--\n"
)
M["08_mixed_attachment"] = H + (
    "Subject: attach\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=mix\n\n"
    "--mix\nContent-Type: text/plain\n\nsee attached\n"
    '--mix\nContent-Type: application/pdf; name="doc.pdf"\nContent-Transfer-Encoding: base64\n'
    'Content-Disposition: attachment; filename="doc.pdf"; size=215\n\n' + B64_PDF + "--mix--\n"
)
M["09_related_inline_image"] = H + (
    'Subject: related\nMIME-Version: 1.0\nContent-Type: multipart/related; boundary="rel"; type="text/html"\n\n'
    '--rel\nContent-Type: text/html; charset=utf-8\n\n<p>Logo: <img src="cid:logo@x"></p>\n'
    "--rel\nContent-Type: image/png\nContent-Transfer-Encoding: base64\nContent-ID: <logo@x>\n"
    "Content-Disposition: inline\n\n" + B64_PNG + "--rel--\n"
)
M["10_mixed_alt_related"] = H + (
    'Subject: full\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="outer"\n\n'
    "This is a multi-part message in MIME format.\n"
    '--outer\nContent-Type: multipart/alternative; boundary="inner-alt"\n\n'
    "--inner-alt\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
    "caf=C3=A9\n"
    '--inner-alt\nContent-Type: multipart/related; boundary="inner-rel"\n\n'
    "--inner-rel\nContent-Type: text/html; charset=utf-8\n\n<p>caf\xe9 <img src=cid:a></p>\n"
    "--inner-rel\nContent-Type: image/gif\nContent-ID: <a>\nContent-Transfer-Encoding: base64\n\n"
    "R0lGODlhAQABAAAAACw=\n--inner-rel--\n\n--inner-alt--\n"
    "--outer\nContent-Type: application/zip; name=a.zip\nContent-Transfer-Encoding: base64\n\nUEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\n"
    "--outer--\nepilogue text\n"
)
for i, (ctype, name) in enumerate(
    [
        ("image/jpeg", "photo.jpg"),
        ("audio/mpeg", "song.mp3"),
        ("video/mp4", "clip.mp4"),
        ("model/gltf-binary", "thing.glb"),
        ("application/octet-stream", "blob.bin"),
        ("font/woff2", "f.woff2"),
    ]
):
    M[f"11_{i}_single_{ctype.replace('/', '_')}"] = H + (
        f"Subject: {ctype}\nMIME-Version: 1.0\nContent-Type: {ctype}; name={name}\n"
        f"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename={name}\n\n"
        + base64.encodebytes(name.encode() * 40).decode()
    )
INNER = (
    "From: Carol <carol@example.com>\nTo: Dave <dave@example.com>\nSubject: inner\n"
    "Date: Tue, 1 Mar 2022 10:00:00 +0000\nMessage-ID: <inner@example.com>\n\ninner body\nline 2\n"
)
M["12_forward_rfc822"] = H + (
    "Subject: Fwd: inner\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=fw\n\n"
    "--fw\nContent-Type: text/plain\n\nForwarded:\n"
    "--fw\nContent-Type: message/rfc822\nContent-Disposition: inline\n\n" + INNER + "--fw--\n"
)
L3 = (
    "From: L3 <l3@x.example>\nSubject: level 3\nMIME-Version: 1.0\n"
    "Content-Type: multipart/alternative; boundary=b3\n\n--b3\nContent-Type: text/plain\n\nthree\n"
    "--b3\nContent-Type: text/html\n\n<b>three</b>\n--b3--\n"
)
L2 = (
    "From: L2 <l2@x.example>\nSubject: level 2\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b2\n\n"
    "--b2\nContent-Type: text/plain\n\ntwo\n--b2\nContent-Type: message/rfc822\n\n" + L3 + "--b2--\n"
)
L1 = "From: L1 <l1@x.example>\nSubject: level 1\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n" + L2
M["13_rfc822_three_deep"] = H + (
    "Subject: deep\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b0\n\n"
    "--b0\nContent-Type: text/plain\n\nzero\n--b0\nContent-Type: message/rfc822\n\n" + L1 + "\n--b0--\n"
)
M["14_top_level_rfc822"] = (
    H + "Subject: top rfc822\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n" + INNER
)
M["15_digest"] = H + (
    'Subject: digest\nMIME-Version: 1.0\nContent-Type: multipart/digest; boundary="dg"\n\n'
    "--dg\n\nFrom: a@x.example\nSubject: one\n\nfirst\n"
    "--dg\n\nFrom: b@x.example\nSubject: two\n\nsecond\n"
    "--dg\nContent-Type: text/plain\n\nnot a message\n--dg--\n"
)
M["16_digest_in_mixed"] = H + (
    'Subject: digest2\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="m"\n\n'
    "--m\nContent-Type: text/plain\n\nToday's digest\n"
    '--m\nContent-Type: multipart/digest; boundary="d"\n\n'
    "--d\n\nFrom: c@x.example\nSubject: three\n\nthird\n--d--\n--m--\n"
)
M["17_signed_pgp"] = H + (
    "Subject: signed\nMIME-Version: 1.0\nContent-Type: multipart/signed; micalg=pgp-sha256;\n"
    ' protocol="application/pgp-signature"; boundary="sig"\n\n'
    "--sig\nContent-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\nsigned text\n"
    '--sig\nContent-Type: application/pgp-signature; name="signature.asc"\n'
    'Content-Description: OpenPGP digital signature\nContent-Disposition: attachment; filename="signature.asc"\n\n'
    "-----BEGIN PGP SIGNATURE-----\n\niQEzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n\n--sig--\n"
)
M["18_encrypted_pgp"] = H + (
    "Subject: encrypted\nMIME-Version: 1.0\nContent-Type: multipart/encrypted;\n"
    ' protocol="application/pgp-encrypted"; boundary=enc\n\n'
    "--enc\nContent-Type: application/pgp-encrypted\nContent-Description: PGP/MIME version identification\n\n"
    'Version: 1\n\n--enc\nContent-Type: application/octet-stream; name="encrypted.asc"\n'
    'Content-Disposition: inline; filename="encrypted.asc"\n\n'
    "-----BEGIN PGP MESSAGE-----\n\nhQEMA\n-----END PGP MESSAGE-----\n\n--enc--\n"
)
M["19_smime"] = H + (
    "Subject: smime\nMIME-Version: 1.0\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data;\n"
    " name=smime.p7m\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=smime.p7m\n\n"
    "MIAGCSqGSIb3DQEHA6CAMIACAQAxggE=\n"
)
M["20_preamble_epilogue"] = H + (
    "Subject: pre/epi\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=pe\n\n"
    "preamble line 1\npreamble line 2\n\n--pe\n\nimplicit text/plain\n--pe--\n\nepilogue 1\nepilogue 2\n"
)
M["21_missing_close"] = H + (
    "Subject: no close\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=nc\n\n"
    "--nc\nContent-Type: text/plain\n\none\n--nc\nContent-Type: text/plain\n\ntwo, and never closed\n"
)
M["22_nested_missing_close"] = H + (
    "Subject: inner not closed\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=out\n\n"
    "--out\nContent-Type: multipart/alternative; boundary=in\n\n--in\nContent-Type: text/plain\n\nalt one\n"
    "--in\nContent-Type: text/html\n\n<p>alt two</p>\n--out\nContent-Type: text/plain\n\nafter\n--out--\n"
)
M["23_boundary_in_base64"] = H + (
    "Subject: accidental\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=AAAA\n\n"
    "--AAAA\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    "QUFBQUFBQUFBQUFB--AAAAQUFB\nAAAA--AAAA\n ---AAAA\n--AAAA\nContent-Type: text/plain\n\nend\n--AAAA--\n"
)
M["24_transport_padding"] = H + (
    'Subject: padding\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="pad"\n\n'
    "--pad  \t\nContent-Type: text/plain\n\nfirst\n--pad \nContent-Type: text/plain\n\nsecond\n--pad--  \n"
)
M["25_boundary_prefix"] = H + (
    'Subject: prefix\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="abc"\n\n'
    '--abc\nContent-Type: multipart/alternative; boundary="abcdef"\n\n--abcdef\nContent-Type: text/plain\n\nx\n'
    "--abcdef\nContent-Type: text/html\n\ny\n--abcdef--\n--abc\nContent-Type: text/plain\n\nz\n--abc--\n"
)
M["26_multipart_no_boundary_param"] = H + (
    "Subject: no boundary\nMIME-Version: 1.0\nContent-Type: multipart/mixed\n\n--x\nContent-Type: text/plain\n\nq\n--x--\n"
)
M["27_boundary_never_appears"] = H + (
    "Subject: absent\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=zzz\n\njust text\nno parts\n"
)
M["28_empty_body"] = H + "Subject: empty\n\n"
M["29_header_only"] = H + "Subject: only header"
M["30_subject_latin1_q"] = H.replace("Alice Example", "=?ISO-8859-1?Q?Andr=E9?= Pirard") + (
    "Subject: =?iso-8859-1?q?caf=E9_cr=E8me?=\n\nx\n"
)
M["31_subject_utf8_b"] = H + "Subject: =?UTF-8?B?0J/RgNC40LLQtdGCLCDQvNC40YA=?=\n\nx\n"
M["32_subject_koi8r"] = H + "Subject: =?koi8-r?B?8NLJ18XUIA==?= =?koi8-r?q?=CD=C9=D2?=\n\nx\n"
M["33_subject_iso2022jp"] = H + "Subject: =?ISO-2022-JP?B?GyRCJDMkcyRLJEEkTxsoQg==?=\n\nx\n"
M["34_subject_gb2312_big5"] = H + (
    "Subject: =?gb2312?B?xOO6ww==?= and =?big5?B?pEGmbg==?= and =?shift_jis?B?grGC8YLJgr+CzQ==?=\n\nx\n"
)
M["35_raw_8bit_header"] = H + "Subject: Grüße ohne Kodierung\nX-Note: 8bit\n\nbody\n"
M["36_unknown_charset"] = H + "Subject: =?x-unknown-42?Q?hello_world?= / =?utf-8?q?ok?=\n\nx\n"
M["37_groups"] = (
    "From: Alice <alice@example.org>\nTo: undisclosed-recipients:;\n"
    'Cc: Friends: joe@example.com, "Jane Q" <jane@example.com>;, solo@example.net\n'
    "Subject: groups\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n\nx\n"
)
M["38_address_forms"] = (
    'From: "Doe, John \\"JD\\"" <john.doe@example.com>\n'
    "To: user@example.com (Comment Name), <@relay1.example,@relay2.example:route@example.org>,\n"
    '  Mary Smith <mary@x.test>, "quoted.local"@example.com, =?utf-8?q?J=C3=B6rg?= <jorg@example.de>\n'
    "Subject: address forms\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n\nx\n"
)
M["39_missing_from_date"] = "To: bob@example.net\nSubject: no from or date\n\nx\n"
M["40_sender_replyto"] = (
    "From: Alice <alice@example.org>\nSender: Secretary <sec@example.org>\n"
    "Reply-To: List <list@example.org>, other@example.org\nTo: bob@example.net\n"
    "Cc: carol@example.com\nBcc: hidden@example.com\nSubject: sender\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n"
    "Message-ID: <abc@example.org>\nIn-Reply-To: <prev@example.org>\n\nx\n"
)
M["41_rfc2231_filename"] = H + (
    "Subject: 2231\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=r\n\n--r\nContent-Type: text/plain\n\nt\n"
    "--r\nContent-Type: application/octet-stream;\n name*0*=utf-8''%E2%82%AC%20rates;\n name*1=\" 2024.txt\"\n"
    'Content-Disposition: attachment;\n filename*0="a very long ";\n filename*1="file name.txt"\n\ndata\n'
    "--r\nContent-Type: text/plain; charset*=us-ascii'en'plain\nContent-Disposition: inline;\n"
    " filename*=iso-8859-1'de'%FCber.txt\n\nt2\n--r--\n"
)
M["42_content_fields"] = H + (
    "Subject: fields\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii; format=flowed\n"
    'Content-ID: <part1@example.org>\nContent-Description: A description with "quotes"\n'
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\nContent-Language: en, de-CH\n"
    'Content-Location: http://example.org/x.txt\nContent-Disposition: inline; creation-date="Wed, 12 Feb 1997 16:29:51 -0500"\n'
    "\ntext\n"
)
# RFC 3501 §7.4.2 BODYSTRUCTURE example: two text/plain parts (one 1152 octets / 23 lines, one 4554 / 73).
M["43_rfc3501_example"] = (
    "From: Fred Foobar <foobar@Blurdybloop.example>\nTo: mooch@owatagu.siam.edu.example\n"
    "Subject: afternoon meeting\nDate: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\n"
    "Message-Id: <B27397-0100000@Blurdybloop.example>\nMIME-Version: 1.0\n"
    'Content-Type: MULTIPART/MIXED; BOUNDARY="----- =_aaaaaaaaaa0"\n\n'
    "------- =_aaaaaaaaaa0\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\nContent-Transfer-Encoding: 7BIT\n\n"
    # 23 lines of 48 + CRLF, and 2 octets before the delimiter's CRLF: 1152 octets, 23 lines
    + ("x" * 48 + "\n") * 23
    + "xx\n"
    + "------- =_aaaaaaaaaa0\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\n"
    "Content-ID: <960723163407.20117h@cac.washington.edu>\nContent-Description: Compiler diff\n"
    # 73 lines of 60 + CRLF, and 28 more octets: 4554 octets, 73 lines
    "Content-Transfer-Encoding: BASE64\n\n"
    + ("A" * 60 + "\n") * 73
    + "A" * 28
    + "\n------- =_aaaaaaaaaa0--\n"
)
# RFC 9051 §6.3.12 / §7.5.2 example message (the APPEND example) and ENVELOPE example headers.
M["44_rfc9051_example"] = (
    "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\nFrom: Fred Foobar <foobar@Blurdybloop.example>\n"
    "Subject: afternoon meeting\nTo: mooch@owatagu.siam.edu.example\n"
    "Message-Id: <B27397-0100000@Blurdybloop.example>\nMIME-Version: 1.0\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\nHello Joe, do you think we can meet at 3:30 tomorrow?\n"
)
M["45_message_global"] = H + (
    "Subject: global\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=g\n\n--g\nContent-Type: text/plain\n\nx\n"
    "--g\nContent-Type: message/global\n\nFrom: Jörg <jörg@bücher.example>\nSubject: Grüße\n\nUTF-8 inner\n--g--\n"
)
M["46_rfc822_base64_illegal"] = H + (
    "Subject: encoded rfc822\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=e\n\n--e\nContent-Type: text/plain\n\nx\n"
    "--e\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
    + base64.encodebytes(b"Subject: hidden\r\n\r\nbody\r\n").decode()
    + "--e--\n"
)
deep = "Content-Type: text/plain\n\nbottom\n"
for lvl in range(60, 0, -1):
    deep = f'Content-Type: multipart/mixed; boundary="d{lvl}"\n\n--d{lvl}\n' + deep + f"--d{lvl}--\n"
M["47_deep_nesting_60"] = H + "Subject: deep\nMIME-Version: 1.0\n" + deep
M["raw_48_nul_bytes"] = (H + "Subject: nul\n\nbefore\x00after\nline2\n").replace("\n", "\r\n").encode()
M["49_broken_base64"] = H + (
    "Subject: broken b64\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: base64\n\nSGVsbG8g!!d29y*bGQ\n=garbage==\n"
)
M["raw_50_lf_only"] = (
    H + "Subject: lf only\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=lf\n\n"
    "--lf\nContent-Type: text/plain\n\nunix line ends\n--lf--\n"
).encode()
M["51_empty_part_header"] = H + (
    "Subject: empty parts\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=ep\n\n"
    "--ep\n\n\n--ep\nContent-Type: text/plain\n\n--ep\n\nno header\n--ep--\n"
)
M["52_uppercase_types"] = H + (
    "Subject: case\nMIME-Version: 1.0\nContent-Type: TEXT/HTML; CHARSET=UTF-8\nContent-Transfer-Encoding: BASE64\n\n"
    + base64.encodebytes(b"<P>UPPER</P>").decode()
)
M["53_params_comments_escapes"] = H + (
    'Subject: params\nMIME-Version: 1.0\nContent-Type: text/plain (a comment); charset = "us-ascii" (c2) ;\n'
    ' name="we\\"ird\\\\name.txt"; x-empty=""\n\nx\n'
)
M["54_folded_subject"] = H + (
    "Subject: This is a very long subject line that has been folded\n\tover several lines\n  with tabs and spaces\n\nx\n"
)
M["55_odd_date"] = "From: a@example.org\nDate: 7 Feb 94 21:52 EST\nSubject: odd date\n\nx\n"
M["56_dsn_report"] = (
    "From: MAILER-DAEMON@example.org\nTo: alice@example.org\nSubject: Undelivered Mail\n"
    "Date: Mon, 7 Feb 1994 21:52:25 -0800\nMIME-Version: 1.0\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn"\n\n'
    "--dsn\nContent-Type: text/plain\n\nCould not deliver.\n"
    "--dsn\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; example.org\n\n"
    "Final-Recipient: rfc822; bob@example.net\nAction: failed\nStatus: 5.1.1\n"
    "--dsn\nContent-Type: message/rfc822-headers\n\nFrom: alice@example.org\nSubject: hi\n\n--dsn--\n"
)
M["57_calendar"] = H + (
    "Subject: invite\nMIME-Version: 1.0\nContent-Type: text/calendar; method=REQUEST; charset=utf-8\n\n"
    "BEGIN:VCALENDAR\nVERSION:2.0\nEND:VCALENDAR\n"
)
M["58_empty_subject"] = "From: a@example.org\nSubject:\nDate: \nTo: \n\nx\n"
M["59_three_alternatives"] = H + (
    'Subject: three alts\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="3a"\n\n'
    "--3a\nContent-Type: text/plain\n\none\n--3a\nContent-Type: text/enriched\n\n<bold>two</bold>\n"
    "--3a\nContent-Type: text/html\n\n<b>three</b>\n--3a--\n"
)
M["60_quoted_boundary_spaces"] = H + (
    'Subject: spaced boundary\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="a b c"\n\n'
    "--a b c\nContent-Type: text/plain\n\nspaced\n--a b c--\n"
)
M["61_8bit_filename"] = H + (
    'Subject: 8bit filename\nMIME-Version: 1.0\nContent-Type: application/octet-stream; name="résumé.pdf"\n'
    'Content-Disposition: attachment; filename="résumé.pdf"\nContent-Transfer-Encoding: base64\n\nAAAA\n'
)
M["62_part_no_trailing_newline"] = H + (
    "Subject: tight\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=t\n\n--t\nContent-Type: text/plain\n\n"
    "no newline at end--t\nstill part one\n--t\nContent-Type: text/plain\n\n\n--t--"
)
M["63_message_partial"] = H + (
    'Subject: partial\nMIME-Version: 1.0\nContent-Type: message/partial; id="abc@x"; number=1; total=2\n\n'
    "Subject: inner\n\npart one of two\n"
)
M["64_multiple_headers"] = (
    "From: first@example.org\nFrom: second@example.org\nTo: a@example.org\nTo: b@example.org\n"
    "Subject: one\nSubject: two\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n\nx\n"
)
M["65_encoded_word_address"] = (
    "From: =?utf-8?b?5byg5LiJ?= <zhang@example.cn>\nTo: =?iso-8859-2?q?Pawe=B3?= <pawel@example.pl>,\n"
    ' "=?utf-8?q?quoted_encoded?=" <q@example.com>\nSubject: =?utf-8?q?=E2=9C=93_done?=\n\nx\n'
)
M["66_html_qp_entities"] = H + (
    "Subject: html qp\nMIME-Version: 1.0\nContent-Type: text/html; charset=windows-1252\n"
    "Content-Transfer-Encoding: quoted-printable\n\n<html><body><p>Price: 5=80 &euro; &lt;ok&gt;</p><script>x=1</script>=\n"
    "<div>Line&nbsp;two</div></body></html>\n"
)
M["67_quoted_string_subject"] = (
    'From: "Name With \\\\ Backslash" <b@example.org>\nSubject: "quoted" subject with \\ backslash\n'
    'Date: Mon, 7 Feb 1994 21:52:25 -0800\nMessage-ID: <with"quote@example.org>\n\nx\n'
)
M["68_in_reply_to_multi"] = (
    "From: a@example.org\nSubject: refs\nIn-Reply-To: <a@x> <b@x>\nReferences: <a@x> <b@x>\n"
    "Message-ID:\n <folded@example.org>\n\nx\n"
)
M["69_alternative_with_attachment_rfc822_digest"] = H + (
    'Subject: mixed bag\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="bag"\n\n'
    '--bag\nContent-Type: multipart/digest; boundary="dig"\n\n--dig\n\n'
    + INNER
    + "--dig\n\n"
    + INNER
    + "--dig--\n--bag\nContent-Type: message/rfc822; name=fwd.eml\nContent-Disposition: attachment; filename=fwd.eml\n\n"
    + L3
    + "--bag--\n"
)
M["70_crlf_in_param_literal"] = H + (
    'Subject: newline param\nMIME-Version: 1.0\nContent-Type: text/plain; name="two\n lines.txt"\n\nx\n'
)
M["71_odd_addresses"] = (
    'From: bob\nTo: Name Only <>, @example.com, "" <empty@x.example>, <x@y.example> (trailing comment)\n'
    'Cc: "J. Smith" <j@x.example>, J. Smith <js@x.example>, team: ;\nBcc: foo@[192.0.2.1], a@b.example,,\n'
    "Reply-To: =?utf-8?q?R=C3=A9ply?= <reply@x.example>\nSubject: odd\n\nx\n"
)
M["72_rfc822_headers_only_inner"] = H + (
    "Subject: inner without body\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=h\n\n"
    "--h\nContent-Type: message/rfc822\n\nSubject: just a header\nFrom: x@y.example\n--h--\n"
)
M["73_nested_epilogue"] = H + (
    "Subject: inner epilogue\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=o\n\n"
    "--o\nContent-Type: multipart/alternative; boundary=i\n\n--i\nContent-Type: text/plain\n\nin\n--i--\n"
    "inner epilogue\n\n--o\nContent-Type: text/plain\n\nout\n--o--\n"
)
M["74_content_type_invalid"] = H + (
    "Subject: bad types\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=v\n\n"
    "--v\nContent-Type: text\n\nno subtype\n--v\nContent-Type: ;charset=utf-8\n\nno type\n"
    "--v\nContent-Type: image/\n\nempty subtype\n--v--\n"
)
M["75_boundary_trailing_garbage"] = H + (
    "Subject: garbage after boundary\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=g\n\n"
    "--g\nContent-Type: text/plain\n\none\n--g not a boundary\n--gg\n--g\nContent-Type: text/plain\n\ntwo\n"
    "--g--garbage\nepilogue\n"
)
M["76_boundary_case"] = H + (
    "Subject: boundary case\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=AbC\n\n"
    "--AbC\nContent-Type: text/plain\n\none\n--abc\nstill one\n--AbC--\n"
)

# RFC 3501 §7.4.2 ENVELOPE example (the FETCH response example), from headers that give it.
M["77_rfc3501_envelope"] = (
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\nFrom: Terry Gray <gray@cac.washington.edu>\n"
    "Subject: IMAP4rev1 WG mtg summary and minutes\nTo: imap@cac.washington.edu\n"
    "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
    "Message-Id: <B27397-0100000@cac.washington.edu>\nMIME-Version: 1.0\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\nminutes\n"
)


def main() -> None:
    out = HERE / "msgs"
    out.mkdir(exist_ok=True)
    for name, text in M.items():
        if isinstance(text, bytes):
            data = text
        else:
            data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        (out / f"{name}.eml").write_bytes(data)
    print(f"{len(M)} messages in {out}")


if __name__ == "__main__":
    main()
