"""Client autoconfiguration end to end (issue 13 item 5): Thunderbird's autoconfig file and Outlook's POX
Autodiscover, fetched from the running server's web listener, checked field by field against the documented
formats (Mozilla's "Autoconfiguration: ConfigFileFormat"; Microsoft's "POX Autodiscover" request and response
schemas), and then *used*: a real client connects to every endpoint advertised, with the login as advertised."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest

ADDR, PW = "carol@example.org", "autoconf-pass-1"
OUTLOOK = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
REQUEST = (b'<?xml version="1.0" encoding="utf-8"?>\n'
           b'<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">'
           b"<Request><EMailAddress>%s</EMailAddress><AcceptableResponseSchema>"
           b"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
           b"</AcceptableResponseSchema></Request></Autodiscover>")


def _url(server: Any, path: str) -> str:
    return f"http://127.0.0.1:{server.port('http')}{path}"


def _login(server: Any, proto: str, port: int, security: str, username: str) -> None:
    """Log in as a client configured from the answer would: host 127.0.0.1 (the tests' stand-in for the
    advertised host name), the port, implicit TLS or STARTTLS, the user name."""
    ctx = server.tls_client_context()
    if proto == "imap":
        imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx) if security == "SSL" else \
            imaplib.IMAP4("127.0.0.1", port)
        if security == "STARTTLS":
            imap.starttls(ctx)
        assert imap.login(username, PW)[0] == "OK"
        imap.logout()
    elif proto == "pop3":
        pop = poplib.POP3_SSL("127.0.0.1", port, context=ctx) if security == "SSL" else poplib.POP3("127.0.0.1", port)
        if security == "STARTTLS":
            pop.stls(ctx)
        pop.user(username)
        assert pop.pass_(PW).startswith(b"+OK")
        pop.quit()
    else:
        smtp = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx) if security == "SSL" else \
            smtplib.SMTP("127.0.0.1", port)
        if security == "STARTTLS":
            smtp.starttls(context=ctx)
        assert smtp.login(username, PW)[0] == 235
        smtp.quit()


@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"])
def test_thunderbird_autoconfig_is_the_documented_format_and_works(server: Any, path: str) -> None:
    server.add_user(ADDR, PW)
    r = httpx.get(_url(server, path), params={"emailaddress": ADDR})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.content)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.org"
    assert provider.findtext("domain") == "example.org"
    assert provider.findtext("displayName") and provider.findtext("displayShortName")
    servers = [(s.tag, s.get("type"), s.findtext("hostname"), int(s.findtext("port") or 0), s.findtext("socketType"),
                s.findtext("authentication"), s.findtext("username")) for s in provider]
    servers = [s for s in servers if s[0] in ("incomingServer", "outgoingServer")]
    # Implicit TLS first (RFC 8314 §3), every TLS listener offered, the MX listener never (it is not submission)
    assert [(tag, kind, port, sock) for tag, kind, _, port, sock, _, _ in servers] == [
        ("incomingServer", "imap", server.port("imaps"), "SSL"),
        ("incomingServer", "imap", server.port("imap"), "STARTTLS"),
        ("incomingServer", "pop3", server.port("pop3s"), "SSL"),
        ("incomingServer", "pop3", server.port("pop3"), "STARTTLS"),
        ("outgoingServer", "smtp", server.port("submissions"), "SSL"),
        ("outgoingServer", "smtp", server.port("submission"), "STARTTLS"),
    ]
    for _, kind, host, port, sock, auth, user in servers:
        assert host == server.postroom.config.server.hostname
        assert auth == "password-cleartext" and user == "%EMAILADDRESS%"
        _login(server, kind or "", port, sock or "", (user or "").replace("%EMAILADDRESS%", ADDR))


def test_thunderbird_autoconfig_by_host_name_and_unknown_domains(server: Any) -> None:
    server.add_user(ADDR, PW)
    # Thunderbird's first URL is on autoconfig.DOMAIN and may come without the address
    r = httpx.get(_url(server, "/mail/config-v1.1.xml"), headers={"Host": "autoconfig.example.org"})
    assert r.status_code == 200 and ET.fromstring(r.content).find("emailProvider").get("id") == "example.org"
    r = httpx.get(_url(server, "/.well-known/autoconfig/mail/config-v1.1.xml"), headers={"Host": "example.org:8080"})
    assert r.status_code == 200
    # a domain this server does not host: nothing is said about it
    for params in ({"emailaddress": "x@elsewhere.test"}, {"emailaddress": "not an address"}, {"emailaddress": "@"}):
        assert httpx.get(_url(server, "/mail/config-v1.1.xml"), params=params).status_code == 404
    assert httpx.get(_url(server, "/mail/config-v1.1.xml"), headers={"Host": "[::1]:8080"}).status_code == 404


def _protocols(body: bytes) -> list[dict[str, str]]:
    root = ET.fromstring(body)
    assert root.tag == "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}Autodiscover"
    account = root.find(f"{OUTLOOK}Response/{OUTLOOK}Account")
    assert account is not None
    assert account.findtext(f"{OUTLOOK}AccountType") == "email"
    assert account.findtext(f"{OUTLOOK}Action") == "settings"
    return [{child.tag.removeprefix(OUTLOOK): child.text or "" for child in p}
            for p in account.findall(f"{OUTLOOK}Protocol")]


@pytest.mark.parametrize("path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"])
def test_outlook_autodiscover_pox_is_the_documented_format_and_works(server: Any, path: str) -> None:
    server.add_user(ADDR, PW)
    r = httpx.post(_url(server, path), content=REQUEST % ADDR.encode(), headers={"Content-Type": "text/xml"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    protocols = _protocols(r.content)
    assert [(p["Type"], int(p["Port"]), p["Encryption"]) for p in protocols] == [
        ("IMAP", server.port("imaps"), "SSL"), ("IMAP", server.port("imap"), "TLS"),
        ("POP3", server.port("pop3s"), "SSL"), ("POP3", server.port("pop3"), "TLS"),
        ("SMTP", server.port("submissions"), "SSL"), ("SMTP", server.port("submission"), "TLS"),
    ]
    for p in protocols:
        assert p["Server"] == server.postroom.config.server.hostname
        assert (p["LoginName"], p["SSL"], p["SPA"], p["AuthRequired"], p["DomainRequired"]) == (
            ADDR, "on", "off", "on", "off")
        _login(server, p["Type"].lower(), int(p["Port"]), "SSL" if p["Encryption"] == "SSL" else "STARTTLS",
               p["LoginName"])
    # GET with ?email= (some mobile clients) gives the same answer
    assert _protocols(httpx.get(_url(server, path), params={"email": ADDR}).content) == protocols


def test_outlook_autodiscover_refuses_what_is_not_a_request(server: Any) -> None:
    server.add_user(ADDR, PW)
    url = _url(server, "/autodiscover/autodiscover.xml")
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;">]>'
            b"<Autodiscover><Request><EMailAddress>&y;</EMailAddress></Request></Autodiscover>")
    for body, reason in ((b"<Autodiscover><Request>", b"not well-formed"), (bomb, b"DTD or entity"),
                         (b"<Autodiscover/>", b"no Request/EMailAddress"),
                         (REQUEST % (b"x" * 20_000), b"larger than")):
        r = httpx.post(url, content=body)
        assert r.status_code == 400 and reason in r.content, r.content
    assert httpx.post(url, content=REQUEST % b"dave@elsewhere.test").status_code == 404
