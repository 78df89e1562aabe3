"""Client autoconfiguration: Thunderbird's autoconfig file and Outlook's Autodiscover (POX), on the web listener.

Theory of operation
-------------------
A mail client that is given only an address and a password asks well-known URLs of the address's domain how to
reach its servers, and sets itself up from the answer:

* **Thunderbird autoconfig** (and clients that follow it: K-9/Thunderbird for Android, Evolution, Nextcloud
  Mail): `GET https://autoconfig.DOMAIN/mail/config-v1.1.xml?emailaddress=ADDR` and
  `GET https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=ADDR`, answered with a
  `clientConfig version="1.1"` document (the format of Mozilla's "Autoconfiguration: ConfigFileFormat" page:
  `incomingServer type="imap"|"pop3"` and `outgoingServer type="smtp"`, each with hostname, port, socketType
  `SSL` (implicit TLS) or `STARTTLS`, username and authentication). `%EMAILADDRESS%` is the client's
  placeholder for the address typed in: Postroom's logins are whole addresses.
* **Outlook Autodiscover, "POX"** (plain old XML; also used by many Android and iOS mail apps):
  `POST /autodiscover/autodiscover.xml` with a `<Request><EMailAddress>` in the
  `.../outlook/requestschema/2006` namespace, answered with an `Account` of `Protocol` elements (`Type` IMAP,
  POP3, SMTP; `Server`, `Port`, `LoginName`, `SSL`, `Encryption` `SSL` for implicit TLS or `TLS` for STARTTLS,
  `SPA` off, `AuthRequired` on) in the `.../outlook/responseschema/2006a` namespace.

* **DNS SRV records** (RFC 6186, RFC 8314 §5.1) for clients that look there (`srv_records`, printed by
  `postroom dns`), and the `autoconfig.DOMAIN` / `autodiscover.DOMAIN` names the two URLs above need.

What is offered comes from the listeners actually bound (`Endpoint`), host name `server.hostname`: implicit TLS
first (RFC 8314 §3 asks clients to prefer it), then STARTTLS. A listener without TLS is never offered to a
client (Postroom's listeners all have TLS: STARTTLS or implicit), and the MX listener (`smtp`) is not a
submission service. Answers are given only for domains this server hosts (`settings_for` returns None
otherwise: 404), so the endpoints do not confirm anything about other domains; they never say whether an
address exists (the same answer for every local part, as the address is only echoed back).

Invariants
1. Every document is built with `xml.etree.ElementTree` (values are escaped; nothing is pasted into markup).
2. A request body is read up to `MAX_REQUEST` bytes and parsed only if it declares no DTD or entity (no
   entity expansion, no external fetch); anything else is answered 400 with a one-line reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

MAX_REQUEST = 16 * 1024  # bytes of an Autodiscover request body; a real one is under 1 KiB
REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

# listener name -> (protocol, security), in the order clients should prefer them (RFC 8314 §3: implicit TLS)
CLIENT_LISTENERS: dict[str, tuple[str, str]] = {
    "imaps": ("imap", "SSL"),
    "imap": ("imap", "STARTTLS"),
    "pop3s": ("pop3", "SSL"),
    "pop3": ("pop3", "STARTTLS"),
    "submissions": ("smtp", "SSL"),
    "submission": ("smtp", "STARTTLS"),
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One way for a client to reach a service: `protocol` "imap", "pop3" or "smtp" (submission), `port`, and
    `security` "SSL" (implicit TLS, RFC 8314) or "STARTTLS"."""

    protocol: str
    port: int
    security: str


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What a client of `domain` is told: the server's host name and its endpoints, preferred first."""

    domain: str
    hostname: str
    endpoints: tuple[Endpoint, ...]


SettingsFor = Callable[[str], Awaitable["ClientSettings | None"]]


def endpoints(bound: Mapping[str, tuple[str, int]]) -> tuple[Endpoint, ...]:
    """The client endpoints among the bound listeners (`{name: (host, port)}`), preferred first."""
    return tuple(Endpoint(proto, bound[name][1], security)
                 for name, (proto, security) in CLIENT_LISTENERS.items() if name in bound)


SRV_SERVICES = (  # (service label, listener), RFC 6186 §3.1-3.3 and RFC 8314 §5.1; implicit TLS first
    ("_submissions", "submissions"), ("_submission", "submission"),
    ("_imaps", "imaps"), ("_imap", "imap"), ("_pop3s", "pop3s"), ("_pop3", "pop3"),
)


def srv_records(domain: str, hostname: str,
                listeners: Mapping[str, tuple[str, int]]) -> list[tuple[str, str, str]]:
    """(name, type, value) of the SRV records that locate `domain`'s submission and access services on
    `hostname` at the ports of `listeners` (`{name: (host, port)}`, the enabled ones); plus CNAMEs of the
    autoconfig and autodiscover names (Thunderbird's and Outlook's first guesses) to `hostname`.

    RFC 8314 §5.1: implicit TLS is preferred, so its records have the lower priority (0, STARTTLS 10);
    RFC 6186 §3.4: a service that is not offered is published with the target "." so clients do not guess."""
    target = hostname.rstrip(".") + "."
    out: list[tuple[str, str, str]] = []
    for label, listener in SRV_SERVICES:
        name = f"{label}._tcp.{domain}."
        if listener in listeners:
            priority = 0 if listener in ("submissions", "imaps", "pop3s") else 10
            out.append((name, "SRV", f"{priority} 1 {listeners[listener][1]} {target}"))
        else:
            out.append((name, "SRV", "0 0 0 ."))
    out.append((f"autoconfig.{domain}.", "CNAME", target))
    out.append((f"autodiscover.{domain}.", "CNAME", target))
    return out


def address_domain(address: str) -> str | None:
    """The domain of `address` ("local@domain"), lower-case; None if it is not shaped like an address."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain or any(c.isspace() or c in "<>/\\" for c in address.strip()):
        return None
    return domain.rstrip(".").lower() or None


def host_domain(host: str) -> str:
    """The mail domain a request's Host names: "autoconfig.example.org:443" -> "example.org" (Thunderbird's
    first URL), "example.org" -> "example.org" (its `.well-known` URL)."""
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 literal names no domain
        return ""
    name = name.rsplit(":", 1)[0].rstrip(".")
    for prefix in ("autoconfig.", "autodiscover."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _bytes(root: ET.Element) -> bytes:
    out: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return out


def _sub(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text


def thunderbird_xml(settings: ClientSettings) -> bytes:
    """Mozilla's clientConfig 1.1 document for `settings` (UTF-8 XML with its declaration)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=settings.domain)
    _sub(provider, "domain", settings.domain)
    _sub(provider, "displayName", f"{settings.domain} mail")
    _sub(provider, "displayShortName", settings.domain)
    for ep in settings.endpoints:
        kind = "outgoingServer" if ep.protocol == "smtp" else "incomingServer"
        server = ET.SubElement(provider, kind, type=ep.protocol)
        _sub(server, "hostname", settings.hostname)
        _sub(server, "port", str(ep.port))
        _sub(server, "socketType", ep.security)
        _sub(server, "authentication", "password-cleartext")  # over TLS only: every endpoint has it
        _sub(server, "username", "%EMAILADDRESS%")
    return _bytes(root)


class BadRequest(ValueError):
    """An Autodiscover request that is not one (the message says why, in one line)."""


def autodiscover_address(body: bytes) -> str:
    """The `EMailAddress` of a POX Autodiscover request body. Raises BadRequest (invariant 2)."""
    if len(body) > MAX_REQUEST:
        raise BadRequest(f"request larger than {MAX_REQUEST} bytes")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise BadRequest("a DTD or entity declaration is not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadRequest(f"not well-formed XML ({exc})") from None
    node = root.find(f"{{{REQUEST_NS}}}Request/{{{REQUEST_NS}}}EMailAddress")
    if node is None:  # some clients leave the namespace out
        node = root.find("Request/EMailAddress")
    if node is None or not (node.text or "").strip():
        raise BadRequest("no Request/EMailAddress element")
    return (node.text or "").strip()


def autodiscover_xml(settings: ClientSettings, address: str) -> bytes:
    """The POX Autodiscover answer (outlook responseschema 2006a) for `address` of `settings.domain`."""
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_NS)
    user = ET.SubElement(response, "User")
    _sub(user, "DisplayName", address)
    _sub(user, "EMailAddress", address)
    account = ET.SubElement(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    for ep in settings.endpoints:
        proto = ET.SubElement(account, "Protocol")
        _sub(proto, "Type", ep.protocol.upper())
        _sub(proto, "Server", settings.hostname)
        _sub(proto, "Port", str(ep.port))
        _sub(proto, "LoginName", address)
        _sub(proto, "DomainRequired", "off")
        _sub(proto, "SPA", "off")
        _sub(proto, "SSL", "on")
        _sub(proto, "Encryption", "SSL" if ep.security == "SSL" else "TLS")  # TLS: STARTTLS
        _sub(proto, "AuthRequired", "on")
        if ep.protocol == "smtp":
            _sub(proto, "UsePOPAuth", "off")
            _sub(proto, "SMTPLast", "off")
    return _bytes(root)


__all__ = ["BadRequest", "ClientSettings", "Endpoint", "SettingsFor", "address_domain", "autodiscover_address",
           "autodiscover_xml", "endpoints", "host_domain", "srv_records", "thunderbird_xml"]
