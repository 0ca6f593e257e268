"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, in plain, STARTTLS or implicit TLS mode.

The server binds port 0, so the kernel picks a free port with no race. It offers AUTH LOGIN and
PLAIN for one test user, records every accepted message, and can reject chosen recipients or
reply to DATA with scripted replies (451 then 250) to exercise retries. The certificate is signed
by a throwaway CA written to tmp_path, which the client loads as its only trust anchor.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

USERNAME = "reports"
PASSWORD = "s3cret-Pa55word-7d1f"
SERVER_NAME = "localhost"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class RecordingHandler:
    """Accept messages, except the recipients in `refused` and the scripted DATA replies."""

    # recipient address -> reply to its RCPT TO, e.g. "550 5.1.1 no such user"
    refused: dict[str, str] = field(default_factory=dict)
    # Replies to the next DATA commands, in order. A reply starting with 250 accepts the
    # message and any other rejects it. When the list runs out, every message is accepted.
    data_replies: list[str] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    data_commands: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refused:
            return self.refused[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_commands += 1
        reply = self.data_replies.pop(0) if self.data_replies else "250"
        if not reply.startswith("250"):
            return reply
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content))
        return "250 Message accepted for delivery"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
    valid = (isinstance(auth_data, LoginPassword)
             and auth_data.login == USERNAME.encode()
             and auth_data.password == PASSWORD.encode())
    # handled=False makes aiosmtpd send its 535 reply for a failure.
    return AuthResult(success=valid, handled=False)


class LoopbackController(Controller):
    """A Controller on port 0, which learns its port once the socket is bound."""

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, host=self.hostname, port=0,
                                       ssl=self.ssl_context)

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        # Verification stays on: the test CA is the one trusted root.
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_certificates(folder: Path) -> Certificates:
    """Write a throwaway CA and a server certificate for 127.0.0.1 and localhost into folder."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clicktrail test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    certificates = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    certificates.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certificates.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certificates.key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return certificates


@dataclass
class SmtpServer:
    security: str
    port: int
    handler: RecordingHandler
    certificates: Certificates


def start_server(security: str, handler: RecordingHandler,
                 certificates: Certificates) -> LoopbackController:
    """Start an aiosmtpd server with AUTH in mode starttls, tls (implicit) or none."""
    options: dict[str, Any] = {
        # An explicit name, because aiosmtpd would otherwise look up this host's name.
        "server_hostname": SERVER_NAME,
        "authenticator": authenticate,
        # aiosmtpd counts only STARTTLS as encryption, so implicit TLS must allow AUTH itself.
        "auth_require_tls": security == "starttls",
        "ready_timeout": 10.0,
    }
    if security == "starttls":
        options.update(tls_context=certificates.server_context(), require_starttls=True)
    elif security == "tls":
        options.update(ssl_context=certificates.server_context())
    controller = LoopbackController(handler, hostname="127.0.0.1", **options)
    controller.start()
    return controller


@pytest.fixture
def smtp_factory(tmp_path: Path) -> Iterator[Callable[..., SmtpServer]]:
    """Return a function that starts SMTP servers (security, refused=…, data_replies=…).

    The servers are stopped when the test ends.
    """
    certificates = make_certificates(tmp_path)
    controllers: list[LoopbackController] = []

    def start(security: str = "starttls", **handler_options: Any) -> SmtpServer:
        handler = RecordingHandler(**handler_options)
        controller = start_server(security, handler, certificates)
        controllers.append(controller)
        return SmtpServer(security, controller.port, handler, certificates)

    yield start
    for controller in controllers:
        controller.stop()
