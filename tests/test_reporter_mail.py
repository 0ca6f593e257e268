"""Report emails: messages built from real reports, sent to a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import email
import logging
import socket
from dataclasses import replace
from datetime import date
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from clicktrail.agent.config import EmailConfig
from clicktrail.reporter.cli import EXIT_CONFIG, main
from clicktrail.reporter.mail import (
    FIRST_RETRY_DELAY_S,
    MAX_ATTEMPTS,
    MailError,
    build_message,
    check_address,
    clean_header_text,
    email_reports,
    read_password,
)
from clicktrail.reporter.nightly import NightlyResult, run_nightly

from tests import smtp_server
from tests.reporter_fixtures import (
    NEWSLETTER_CATALOG,
    SAMPLE_TIMEZONE,
    build_sample_store,
    write_catalog,
)

from .s3_server import free_port
from .smtp_server import PASSWORD, USERNAME, SmtpServer

# Fixture from smtp_server, bound here so that pytest finds it in this module.
smtp_factory = smtp_server.smtp_factory

pytestmark = pytest.mark.filterwarnings(
    "ignore:HarfBuzz-Subset will be required:DeprecationWarning")

REPORT_DATE = date(2026, 12, 3)
SENDER = "clicktrail@example.com"
TEAM = "reports-team@example.org"
PASSWORD_ENV = "CLICKTRAIL_TEST_SMTP_PASSWORD"
MAIL_LOGGER = "clicktrail.reporter.mail"
# Catalog owners of delivery d1: two valid ones (one repeated in other case) and hostile values.
D1_OWNERS = [
    "crm-team@example.com",
    "CRM-Team@example.com",
    "evil@example.com\r\nBcc: attacker@example.net",
    "no-at-sign.example.com",
    "two@@example.com",
    "a,b@example.com",
    "analyst@example.com",
]
BAD_OWNERS = D1_OWNERS[2:6]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> NightlyResult:
    root = tmp_path_factory.mktemp("mail")
    build_sample_store(root / "store")
    write_catalog(root / "store", {**NEWSLETTER_CATALOG, "owners": D1_OWNERS})
    return run_nightly((root / "store").as_uri(), root / "out", SAMPLE_TIMEZONE, REPORT_DATE)


@pytest.fixture
def sleeps() -> list[float]:
    return []


def email_config(server: SmtpServer, **changes: object) -> EmailConfig:
    config = EmailConfig(smtp_host="127.0.0.1", smtp_port=server.port, security=server.security,
                         username=USERNAME, password_env=PASSWORD_ENV, sender=SENDER, to=(TEAM,),
                         timeout_s=10.0)
    return replace(config, **changes)


def send(config: EmailConfig, published: NightlyResult, server: SmtpServer | None,
         sleeps: list[float], **options: object) -> list[Path]:
    context = server.certificates.client_context() if server else None
    return email_reports(config, published, ssl_context=context, sleep=sleeps.append,
                         **options)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def received_for(server: SmtpServer, delivery_id: str) -> list[smtp_server.Received]:
    return [m for m in server.handler.messages
            if f"delivery {delivery_id})" in parse(m.data).get_body().get_content()]


def pdf_attachment(message: EmailMessage) -> EmailMessage:
    attachments = list(message.iter_attachments())
    assert len(attachments) == 1
    return attachments[0]


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
def test_send_over_each_security(published, smtp_factory, sleeps, monkeypatch, security):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory(security)

    send(email_config(server), published, server, sleeps)

    # d1 goes to its owners and the team; d2 and the unsafe id have no catalog, so to the team.
    assert len(server.handler.messages) == 3
    [d1] = received_for(server, "d1")
    assert d1.mail_from == SENDER
    assert d1.rcpt_tos == ["crm-team@example.com", "analyst@example.com", TEAM]
    message = parse(d1.data)
    assert message["From"] == SENDER
    assert message["To"] == f"crm-team@example.com, analyst@example.com, {TEAM}"
    assert message["Subject"] == "December newsletter: delivery report for 2026-12-03"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@example.com>")
    assert PASSWORD.encode() not in d1.data
    assert sleeps == []


def test_attached_pdf_equals_rendered_file(published, smtp_factory, sleeps, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("starttls")

    send(email_config(server), published, server, sleeps)

    [d1] = received_for(server, "d1")
    attachment = pdf_attachment(parse(d1.data))
    rendered = (published.report_dir / "delivery-d1.pdf").read_bytes()
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == "delivery-d1-2026-12-03.pdf"
    assert attachment.get_content() == rendered
    assert rendered.startswith(b"%PDF")


def test_body_shows_headline_figures(published, smtp_factory, sleeps, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("starttls")

    send(email_config(server), published, server, sleeps)

    [d1] = received_for(server, "d1")
    # The SMTP policy ends lines with CRLF.
    body = parse(d1.data).get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    [figures] = [r.metrics for r in published.reports if r.delivery_id == "d1"]
    assert f"Processed               {figures.processed}\n" in body
    assert f"Delivered               {figures.delivered} (" in body
    assert f"Clicks                  {figures.human.clicks} human; {figures.clicks} all hits\n" in body
    assert (f"Opens including clicks  {figures.human.opens_including_clicks} human "
            f"({figures.human.open_rate.percent()}); {figures.opens_including_clicks} all hits"
            ) in body
    assert "attached as delivery-d1-2026-12-03.pdf" in body


def test_unsafe_delivery_id_gets_safe_filename(published, smtp_factory, sleeps, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("starttls")

    send(email_config(server), published, server, sleeps)

    names = sorted(pdf_attachment(parse(m.data)).get_filename() for m in server.handler.messages)
    assert names[0] == "delivery-d1-2026-12-03.pdf"
    assert names[1] == "delivery-d2-2026-12-03.pdf"
    assert names[2].startswith("delivery.id-")
    assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-") for name in names)


def test_invalid_owners_skipped_with_warning(published, smtp_factory, sleeps, monkeypatch,
                                             caplog):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("starttls")

    with caplog.at_level(logging.WARNING, logger=MAIL_LOGGER):
        send(email_config(server), published, server, sleeps)

    # aiosmtpd's own deprecation warnings are left out.
    warnings = [r.getMessage() for r in caplog.records if r.name == MAIL_LOGGER]
    assert len(warnings) == len(BAD_OWNERS)
    for bad, warning in zip(BAD_OWNERS, warnings, strict=True):
        assert warning.startswith(f"skipping a recipient: invalid address {bad!r} in the "
                                  "catalog owners of delivery d1: ")
    assert "contains CR or LF" in warnings[0]
    assert "expected exactly one @" in warnings[1]
    [d1] = received_for(server, "d1")
    assert "attacker" not in d1.data.decode()
    assert "Bcc" not in parse(d1.data)


def test_retry_after_451(published, smtp_factory, sleeps, monkeypatch, caplog):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("starttls", data_replies=["451 4.3.0 Try again later"])

    with caplog.at_level(logging.WARNING, logger=MAIL_LOGGER):
        send(email_config(server), published, server, sleeps)

    assert sleeps == [FIRST_RETRY_DELAY_S]
    assert server.handler.data_commands == 4
    assert len(server.handler.messages) == 3
    assert len(received_for(server, "d1")) == 1
    assert "retrying in 10 s" in caplog.text


def test_550_recipient_named_others_sent(published, smtp_factory, sleeps, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    refused = "analyst@example.com"
    server = smtp_factory("starttls", refused={refused: "550 5.1.1 No such user"})

    with pytest.raises(MailError) as raised:
        send(email_config(server), published, server, sleeps)

    error = str(raised.value)
    assert error.startswith("failed to email the reports of 1 of 3 deliveries; the reports are "
                            f"published in {published.report_dir}:")
    assert f"delivery d1: not sent to {refused}: 550 5.1.1 No such user" in error
    assert [(f.delivery_id, f.recipient) for f in raised.value.failures] == [("d1", refused)]
    assert raised.value.transient is False
    [d1] = received_for(server, "d1")
    assert d1.rcpt_tos == ["crm-team@example.com", TEAM]
    assert len(server.handler.messages) == 3
    assert sleeps == []


def test_450_recipient_retried_alone(published, smtp_factory, sleeps, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("starttls", refused={TEAM: "450 4.2.1 Mailbox busy"})

    with pytest.raises(MailError) as raised:
        send(email_config(server), published, server, sleeps)

    # Only d1 has other recipients, and they get it once: the retries go to TEAM alone.
    assert len(server.handler.messages) == 1
    assert server.handler.messages[0].rcpt_tos == ["crm-team@example.com",
                                                   "analyst@example.com"]
    assert sleeps == [10.0, 30.0, 90.0]
    error = str(raised.value)
    assert f"delivery d1: not sent to {TEAM}: 450 4.2.1 Mailbox busy (after 4 attempts)" in error
    assert f"delivery d2: not sent to {TEAM}: 450 4.2.1 Mailbox busy (after 4 attempts)" in error
    assert len(raised.value.failures) == 3
    assert raised.value.transient is True


def test_wrong_password_not_retried(published, smtp_factory, sleeps, monkeypatch, caplog):
    wrong = "Wr0ng-pa55word-c4e1"
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    server = smtp_factory("starttls")

    with caplog.at_level(logging.DEBUG, logger=MAIL_LOGGER), pytest.raises(MailError) as raised:
        send(email_config(server), published, server, sleeps)

    error = str(raised.value)
    assert "authentication failed: 535 5.7.8 Authentication credentials invalid" in error
    assert "check [email] username and the password" in error
    assert "delivery d1: not sent to" in error
    assert TEAM in error
    assert len(raised.value.failures) == 5
    assert sleeps == []
    assert server.handler.messages == []
    assert wrong not in error
    assert wrong not in caplog.text
    assert wrong not in repr(raised.value.failures)


def test_password_echoed_by_server_redacted(published, smtp_factory, sleeps, monkeypatch,
                                            caplog):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("starttls", data_replies=[f"554 5.6.0 rejected {PASSWORD}"] * 3)

    with caplog.at_level(logging.DEBUG, logger=MAIL_LOGGER), pytest.raises(MailError) as raised:
        send(email_config(server), published, server, sleeps)

    assert "554 5.6.0 rejected ***" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    assert PASSWORD not in caplog.text


def test_connection_refused_retried_then_reported(published, sleeps, monkeypatch, caplog):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = EmailConfig(smtp_host="127.0.0.1", smtp_port=free_port(), security="none",
                         sender=SENDER, to=(TEAM,), timeout_s=5.0)

    with caplog.at_level(logging.WARNING, logger=MAIL_LOGGER), pytest.raises(MailError) as raised:
        send(config, published, None, sleeps)

    assert sleeps == [10.0, 30.0, 90.0]
    assert len(sleeps) == MAX_ATTEMPTS - 1
    error = str(raised.value)
    assert "failed to email the reports of 3 of 3 deliveries" in error
    assert f"delivery d1: not sent to crm-team@example.com, analyst@example.com, {TEAM}: " in error
    assert "Connection refused (after 4 attempts)" in error
    assert raised.value.transient is True
    assert "(attempt 1 of 4); retrying in 10 s" in caplog.text


def test_silent_server_times_out(published, sleeps):
    # A listening socket that is never accepted: the connection opens, the greeting never comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        config = EmailConfig(smtp_host="127.0.0.1", smtp_port=silent.getsockname()[1],
                             security="none", sender=SENDER, to=(TEAM,), timeout_s=0.3)

        with pytest.raises(MailError, match=r"timed out \(after 2 attempts\)"):
            send(config, published, None, sleeps, max_attempts=2)

    assert sleeps == [FIRST_RETRY_DELAY_S]


def test_untrusted_certificate_not_retried(published, smtp_factory, sleeps, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("tls")

    # The default context trusts only the system CAs, which did not sign the test certificate.
    with pytest.raises(MailError, match="TLS failed: .*CERTIFICATE_VERIFY_FAILED"):
        email_reports(email_config(server), published, sleep=sleeps.append)

    assert sleeps == []
    assert server.handler.messages == []


def test_starttls_not_offered_not_retried(published, smtp_factory, sleeps, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = smtp_factory("none")

    with pytest.raises(MailError, match="STARTTLS extension not supported by server"):
        send(email_config(server, security="starttls"), published, server, sleeps)

    assert sleeps == []
    assert server.handler.messages == []


def test_dry_run_writes_parsable_eml(published, sleeps, monkeypatch):
    # The dry run reads no password and opens no connection: the port is closed.
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    config = EmailConfig(smtp_host="127.0.0.1", smtp_port=free_port(), username=USERNAME,
                         password_env=PASSWORD_ENV, sender=SENDER, to=(TEAM,))

    paths = send(config, published, None, sleeps, dry_run=True)

    folder = published.report_dir / "email"
    assert sorted(p.name for p in paths) == sorted(p.name for p in folder.iterdir())
    assert len(paths) == 3
    message = parse((folder / "delivery-d1.eml").read_bytes())
    assert message["To"] == f"crm-team@example.com, analyst@example.com, {TEAM}"
    assert message["Subject"] == "December newsletter: delivery report for 2026-12-03"
    attachment = pdf_attachment(message)
    assert attachment.get_filename() == "delivery-d1-2026-12-03.pdf"
    assert attachment.get_content() == (published.report_dir / "delivery-d1.pdf").read_bytes()
    assert sleeps == []


def test_hostile_title_cleaned_in_subject(published):
    [d1] = [r for r in published.reports if r.delivery_id == "d1"]
    report = replace(d1,
                     title="Promo\r\nBcc: attacker@example.net\x00\u2028\u202e" + "x" * 300)

    message = build_message(SENDER, (TEAM,), report, REPORT_DATE, b"%PDF-1.7\n")

    subject = message["Subject"]
    assert subject.startswith("Promo Bcc: attacker@example.net xxx")
    assert subject.endswith("…: delivery report for 2026-12-03")
    assert len(subject) == 100 + len(": delivery report for 2026-12-03")
    assert "Bcc" not in message
    assert b"\r\nBcc:" not in message.as_bytes()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("crm@example.com", "crm@example.com"),
        ("  first.last+tag@mail.example.co.uk ", "first.last+tag@mail.example.co.uk"),
        ("ops@localhost", "ops@localhost"),
    ],
    ids=["plain", "spaces-stripped", "single-label-domain"],
)
def test_check_address_accepts(value, expected):
    assert check_address(value, "test") == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a@example.com\nBcc: b@example.com", "contains CR or LF"),
        ("a@example.com\r", "contains CR or LF"),
        ("example.com", "expected exactly one @"),
        ("a@b@example.com", "expected exactly one @"),
        ("a,b@example.com", "expected local@domain"),
        ("Name <a@example.com>", "expected local@domain"),
        ("a b@example.com", "expected local@domain"),
        ("@example.com", "expected local@domain"),
        ("a@", "expected local@domain"),
        ("a@-example.com", "expected local@domain"),
        ("a..b@example.com", "expected local@domain"),
        ("jos\u00e9@example.com", "expected local@domain"),
        ("a\x00@example.com", "expected local@domain"),
        ("a" * 250 + "@example.com", "expected local@domain"),
        (42, "expected a string"),
    ],
    ids=["lf-header", "cr", "no-at", "two-at", "comma", "display-name", "space", "empty-local",
         "empty-domain", "leading-hyphen", "double-dot", "non-ascii", "nul", "too-long",
         "not-string"],
)
def test_check_address_rejects(value, reason):
    with pytest.raises(ValueError, match=rf"^invalid address .* in test: {reason}"):
        check_address(value, "test")


@pytest.mark.parametrize(
    ("content", "expected"),
    [("pw-1\n", "pw-1"), ("pw-1", "pw-1"), ("pw-1\r\n", "pw-1"), ("pw-1\n\n", "pw-1\n"),
     (" pw 1 \n", " pw 1 ")],
    ids=["newline", "none", "crlf", "two-newlines", "spaces-kept"],
)
def test_password_file_strips_one_newline(tmp_path, content, expected):
    path = tmp_path / "smtp-password"
    path.write_text(content, encoding="utf-8", newline="")
    config = EmailConfig(smtp_host="127.0.0.1", username=USERNAME, password_file=str(path),
                         sender=SENDER)

    assert read_password(config) == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"password_env": "CLICKTRAIL_TEST_UNSET"},
         "the environment variable CLICKTRAIL_TEST_UNSET named by [email] password_env is not "
         "set or empty"),
        ({"password_file": "/nonexistent/smtp-password"},
         "cannot read the SMTP password from [email] password_file /nonexistent/smtp-password: "),
        ({}, "[email] username is set but neither password_env nor password_file"),
        ({"username": None, "password_env": "X"},
         "[email] password_env or password_file is set but username is missing"),
        ({"password_env": "X", "password_file": "/x"},
         "[email] password_env and password_file are both set"),
    ],
    ids=["env-unset", "file-missing", "no-source", "no-username", "both-sources"],
)
def test_password_setting_errors(monkeypatch, changes, message):
    monkeypatch.delenv("CLICKTRAIL_TEST_UNSET", raising=False)
    config = replace(EmailConfig(smtp_host="127.0.0.1", username=USERNAME, sender=SENDER),
                     **changes)

    with pytest.raises(MailError) as raised:
        read_password(config)

    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a\r\nb", "a b"), ("a\tb\x07c", "a b c"), ("  a   b ", "a b"), ("\u2028x\u200by", "x y"),
     ("abcdef", "abcd…")],
    ids=["crlf", "controls", "spaces", "separators", "cut"],
)
def test_clean_header_text(value, expected):
    assert clean_header_text(value, 5) == expected


def write_email_config(tmp_path: Path, email_table: str) -> Path:
    build_sample_store(tmp_path / "store")
    path = tmp_path / "clicktrail.toml"
    path.write_text(
        f'[agent]\nhost_id = "reporter1"\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[store]\nurl = "{(tmp_path / "store").as_uri()}"\n\n'
        f'[report]\ntimezone = "Europe/Paris"\noutput_dir = "{tmp_path / "reports"}"\n\n'
        f"{email_table}",
        encoding="utf-8",
    )
    return path


def test_cli_email_sends_and_exits_0(tmp_path, smtp_factory):
    server = smtp_factory("none")
    config = write_email_config(tmp_path, (
        f'[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {server.port}\nsecurity = "none"\n'
        f'from = "{SENDER}"\nto = ["{TEAM}"]\n'))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date",
                                       "2026-12-03", "--email"])

    assert result.exit_code == 0, result.output
    assert len(server.handler.messages) == 3
    assert (tmp_path / "reports" / "2026-12-03" / "delivery-d1.pdf").is_file()


def test_cli_email_failure_exits_1(tmp_path, smtp_factory):
    server = smtp_factory("none", refused={TEAM: "550 5.7.1 Relaying denied"})
    config = write_email_config(tmp_path, (
        f'[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {server.port}\nsecurity = "none"\n'
        f'from = "{SENDER}"\nto = ["{TEAM}"]\n'))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date",
                                       "2026-12-03", "--email"])

    assert result.exit_code == 1
    assert "Error: failed to email the reports of 3 of 3 deliveries" in result.stderr
    assert f"delivery d2: not sent to {TEAM}: 550 5.7.1 Relaying denied" in result.stderr
    assert (tmp_path / "reports" / "2026-12-03" / "delivery-d1.pdf").is_file()


def test_cli_dry_run_writes_eml(tmp_path):
    config = write_email_config(tmp_path, (
        f'[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {free_port()}\n'
        f'from = "{SENDER}"\nto = ["{TEAM}"]\n'))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date",
                                       "2026-12-03", "--email", "--dry-run"])

    assert result.exit_code == 0, result.output
    eml = tmp_path / "reports" / "2026-12-03" / "email" / "delivery-d1.eml"
    assert pdf_attachment(parse(eml.read_bytes())).get_content().startswith(b"%PDF")


def test_cli_dry_run_without_email_exit_2(tmp_path):
    config = write_email_config(tmp_path, "")

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--dry-run"])

    assert result.exit_code == 2
    assert "Error: --dry-run applies to --email; pass both to write .eml files" in result.stderr


def test_cli_email_without_table_exit_78(tmp_path):
    config = write_email_config(tmp_path, "")

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date",
                                       "2026-12-03", "--email"])

    assert result.exit_code == EXIT_CONFIG
    assert f"Error: {config}: --email needs an [email] table" in result.stderr
    assert not (tmp_path / "reports" / "2026-12-03").exists()

