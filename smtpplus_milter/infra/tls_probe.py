"""One SMTP STARTTLS probe of a listening port, as a client would see it (``doctor``'s port checks).

Connect, EHLO, note what is offered in clear text (STARTTLS, AUTH), STARTTLS, EHLO again and note
what is offered inside TLS, keep the server's certificate. Any certificate is accepted: the probe
does not decide whether it is good, it hands the DER bytes to the caller, who inspects names and
expiry (a verifying handshake would stop at the first problem and tell nothing about the others).
Failures come back as a value with the stage they happened at, never as an exception.
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from dataclasses import dataclass, replace
from enum import StrEnum

TIMEOUT_SECONDS = 5.0


class Failure(StrEnum):
    REFUSED = "refused"  # nothing listens (connection refused)
    TIMEOUT = "timeout"  # no answer in time (a firewall that drops, a stuck server)
    UNREACHABLE = "unreachable"  # no route, unknown host name...
    PROTOCOL = "protocol"  # something answered, but not as an SMTP server should
    TLS = "tls"  # STARTTLS was offered but the handshake failed


@dataclass(frozen=True)
class Probe:
    """What one probe of *host*:*port* saw, up to where it stopped (*failure*, *error*)."""

    host: str
    port: int
    banner: str = ""
    starttls: bool = False  # STARTTLS offered before TLS
    auth_before_tls: tuple[str, ...] | None = None  # AUTH mechanisms offered in clear text (None: none)
    tls_version: str = ""
    auth_after_tls: tuple[str, ...] | None = None  # AUTH mechanisms offered inside TLS (None: none)
    certificate: bytes | None = None  # the server's certificate, DER
    failure: Failure | None = None
    error: str = ""

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _auth(client: smtplib.SMTP) -> tuple[str, ...] | None:
    if not client.has_extn("auth"):
        return None
    return tuple(client.esmtp_features.get("auth", "").split())


def _any_certificate() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # We inspect the certificate ourselves (names, expiry), so the handshake must not refuse it.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def probe(host: str, port: int, *, timeout: float = TIMEOUT_SECONDS, helo: str = "", server_name: str = "") -> Probe:
    """Probe *host*:*port* (see the module's docstring); every socket operation waits at most *timeout*.

    *server_name*: the name sent in the TLS handshake (SNI), normally the one the certificate should
    carry; none when empty or an IP address.
    """
    found = Probe(host, port)
    try:
        client = smtplib.SMTP(timeout=timeout, local_hostname=helo or None)
    except OSError as exc:  # local_hostname=None looks up this host's FQDN
        return _failed(found, Failure.UNREACHABLE, str(exc))
    try:
        try:
            code, text = client.connect(host, port)
        except ConnectionRefusedError as exc:
            return _failed(found, Failure.REFUSED, str(exc))
        except TimeoutError as exc:
            return _failed(found, Failure.TIMEOUT, str(exc) or "timed out")
        except smtplib.SMTPServerDisconnected as exc:
            return _failed(found, Failure.PROTOCOL, f"the server closed the connection before its greeting ({exc})")
        except OSError as exc:
            return _failed(found, Failure.UNREACHABLE, str(exc))
        found = replace(found, banner=f"{code} {text.decode('utf-8', 'replace')}")
        if code != 220:
            return _failed(found, Failure.PROTOCOL, f"greeting {found.banner!r}, not 220")
        return _session(client, found, _sni(server_name))
    except TimeoutError as exc:
        return _failed(found, Failure.TIMEOUT, str(exc) or "timed out")
    except (smtplib.SMTPException, OSError, UnicodeError) as exc:
        return _failed(found, Failure.PROTOCOL, f"{type(exc).__name__}: {exc}")
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def _session(client: smtplib.SMTP, found: Probe, server_name: str) -> Probe:
    code, text = client.ehlo()
    if code != 250:
        return _failed(found, Failure.PROTOCOL, f"EHLO answered {code} {text.decode('utf-8', 'replace')}")
    found = replace(found, starttls=client.has_extn("starttls"), auth_before_tls=_auth(client))
    if not found.starttls:
        return found
    code, text = client.docmd("STARTTLS")
    if code != 220:
        return _failed(found, Failure.TLS, f"STARTTLS answered {code} {text.decode('utf-8', 'replace')}")
    plain = client.sock
    if plain is None:  # the server closed the connection after its 220
        return _failed(found, Failure.TLS, "the connection closed after STARTTLS")
    try:
        # By hand rather than smtplib's starttls(), which sends the connect() host as SNI ("" here):
        # we send the name we expect, so a server that picks its certificate by SNI shows that one.
        tls = _any_certificate().wrap_socket(plain, server_hostname=server_name or None)
    except (ssl.SSLError, OSError) as exc:
        return _failed(found, Failure.TLS, f"TLS handshake failed: {exc}")
    # What smtplib's starttls() forgets after the handshake: everything said in clear text.
    client.sock, client.file = tls, None
    client.helo_resp = client.ehlo_resp = None
    client.esmtp_features = {}
    client.does_esmtp = False
    found = replace(found, tls_version=tls.version() or "", certificate=tls.getpeercert(binary_form=True))
    code, text = client.ehlo()
    if code != 250:
        return _failed(
            found, Failure.PROTOCOL, f"EHLO after STARTTLS answered {code} {text.decode('utf-8', 'replace')}"
        )
    return replace(found, auth_after_tls=_auth(client))


def _sni(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.rstrip(".")
    return ""  # SNI carries host names only


def _failed(found: Probe, failure: Failure, error: str) -> Probe:
    return replace(found, failure=failure, error=error)
