"""Email each delivery's PDF report to its owners and the configured list, or write .eml files.

One message goes out per delivery. Its recipients are the owners from the delivery catalog plus
`[email] to`. The catalog is written by the sending platform and is untrusted, so every address is
checked and an invalid one is skipped with a warning. Messages are sent over SMTP with STARTTLS or
implicit TLS and authentication. A transient failure (connection refused, timeout, a 4xx reply)
is retried with backoff. A permanent one (a 5xx reply, rejected credentials, a TLS failure) is not.
The password is read from an environment variable or a file and never appears in a log line, an
error message or a written message.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

from clicktrail.agent.config import EmailConfig

from .errors import OutputError, ReporterError

if TYPE_CHECKING:
    from .nightly import DeliveryReport, NightlyResult

log = logging.getLogger(__name__)

EMAIL_DIR = "email"
MAX_ATTEMPTS = 4
# Waits before the second, third and fourth attempt: 10, 30 and 90 s, long enough to ride out
# a mail server restart.
FIRST_RETRY_DELAY_S = 10.0
RETRY_BACKOFF_FACTOR = 3.0
MAX_SUBJECT_TITLE_CHARS = 100
# RFC 5321 section 4.5.3.1.3 limits a forward path to 256 octets, which leaves 254 for the address.
MAX_ADDRESS_CHARS = 254
MAX_SHOWN_CHARS = 200
MAX_SHOWN_ID_CHARS = 64

# An ASCII addr-spec in dot-atom form (RFC 5322 section 3.4.1) with a host name as domain. The
# characters of an address list header (",", "<", quotes, spaces) are all outside it, so a
# checked value cannot add a recipient to the To header.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ADDRESS = re.compile(_ATOM + r"(?:\." + _ATOM + ")*@" + _LABEL + r"(?:\." + _LABEL + ")*")

# Line breaks and control, format and surrogate characters: none belongs in a header line.
_UNPRINTABLE_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


class MailError(ReporterError):
    """Report emails that could not be sent, or a mail setting that stops any sending."""

    def __init__(self, message: str, *, failures: list[Failure] | None = None,
                 transient: bool = False) -> None:
        super().__init__(message)
        self.failures = failures or []
        self.transient = transient


@dataclass(frozen=True)
class Failure:
    """A recipient that a delivery's report did not reach, and the last error for it."""

    delivery_id: str
    recipient: str
    reason: str
    # True when every attempt failed with a transient error, so a later rerun may succeed.
    transient: bool = False


@dataclass(frozen=True)
class OutgoingMessage:
    delivery_id: str
    recipients: tuple[str, ...]
    message: EmailMessage
    eml_name: str


@dataclass
class _Job:
    outgoing: OutgoingMessage
    pending: list[str]
    last_error: dict[str, str] = field(default_factory=dict)


def email_reports(config: EmailConfig, result: NightlyResult, *, dry_run: bool = False,
                  local_hostname: str = "localhost", ssl_context: ssl.SSLContext | None = None,
                  sleep: Callable[[float], None] = time.sleep,
                  max_attempts: int = MAX_ATTEMPTS) -> list[Path]:
    """Send each delivery's PDF report, or with dry_run write the messages as .eml files.

    local_hostname is the name given in EHLO. The default ssl_context verifies the server with the
    system's CA certificates. Returns the .eml files written (none unless dry_run). Raises
    MailError naming every delivery and recipient not reached, after the other messages went out.
    """
    try:
        sender = check_address(config.sender, "[email] from")
    except ValueError as exc:
        raise MailError(str(exc)) from None
    configured = valid_addresses(config.to, "[email] to")
    outgoing = build_messages(sender, configured, result)
    if dry_run:
        return write_eml_files(outgoing, result.report_dir / EMAIL_DIR)
    if not outgoing:
        log.info("no report emails to send")
        return []

    password = read_password(config)
    context = ssl_context or ssl.create_default_context()
    connect = _connector(config, password, local_hostname, context)
    failures = send_messages(outgoing, sender, connect, sleep=sleep, max_attempts=max_attempts,
                             password=password)
    if failures:
        raise MailError(_failure_message(failures, len(outgoing), result.report_dir),
                        failures=failures,
                        transient=all(failure.transient for failure in failures))
    log.info("sent %d report emails", len(outgoing))
    return []


def check_address(value: object, where: str) -> str:
    """Check one email address from the config or the catalog, and return it stripped.

    Raises ValueError naming the value, where it comes from and why it is invalid.
    """
    if not isinstance(value, str):
        raise ValueError(f"invalid address {value!r} in {where}: expected a string")
    if "\r" in value or "\n" in value:
        raise ValueError(f"invalid address {_shown(value)} in {where}: contains CR or LF")

    address = value.strip(" \t")
    if address.count("@") != 1:
        raise ValueError(f"invalid address {_shown(value)} in {where}: expected exactly one @")
    if len(address) > MAX_ADDRESS_CHARS or not ADDRESS.fullmatch(address):
        raise ValueError(f"invalid address {_shown(value)} in {where}: expected local@domain in "
                         "ASCII letters, digits and punctuation, without spaces, quotes, "
                         "brackets or commas")
    return address


def build_messages(sender: str, configured: list[str],
                   result: NightlyResult) -> list[OutgoingMessage]:
    """Build one message per delivery, to its valid owners plus the configured addresses."""
    outgoing = []
    for report in result.reports:
        shown_id = _shown_id(report.delivery_id)
        owners = valid_addresses(report.owners, f"the catalog owners of delivery {shown_id}")
        recipients = _deduplicate(owners + configured)
        if not recipients:
            log.warning("delivery %s has no valid recipients (catalog owners and [email] to); "
                        "its report is not emailed", shown_id)
            continue

        pdf_path = result.report_dir / report.pdf_name
        try:
            pdf = pdf_path.read_bytes()
        except OSError as exc:
            raise OutputError(f"cannot read the report {pdf_path} to email it: {exc}",
                              path=str(pdf_path)) from exc

        message = build_message(sender, recipients, report, result.report_date, pdf)
        outgoing.append(OutgoingMessage(report.delivery_id, recipients, message,
                                        f"{Path(report.pdf_name).stem}.eml"))
    return outgoing


def valid_addresses(values: tuple[str, ...], where: str) -> list[str]:
    """Return the valid addresses among values, and log a warning naming each invalid one."""
    addresses = []
    for value in values:
        try:
            addresses.append(check_address(value, where))
        except ValueError as exc:
            log.warning("skipping a recipient: %s", exc)
    return addresses


def _deduplicate(addresses: list[str]) -> tuple[str, ...]:
    # Mail servers treat local parts without regard to case in practice, and a second copy
    # of the same report to one mailbox is only noise.
    unique: dict[str, str] = {}
    for address in addresses:
        unique.setdefault(address.casefold(), address)
    return tuple(unique.values())


def build_message(sender: str, recipients: tuple[str, ...], report: DeliveryReport,
                  report_date: date, pdf: bytes) -> EmailMessage:
    """Build the message: headers, a plain-text summary and the PDF report attached."""
    title = clean_header_text(report.title, MAX_SUBJECT_TITLE_CHARS) or _shown_id(report.delivery_id)
    attachment_name = f"{Path(report.pdf_name).stem}-{report_date.isoformat()}.pdf"

    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = f"{title}: delivery report for {report_date.isoformat()}"
    message["Date"] = formatdate(localtime=True)
    # An explicit domain, because make_msgid() would otherwise look up this host's name.
    message["Message-ID"] = make_msgid(idstring="clicktrail", domain=sender.rsplit("@", 1)[1])
    # RFC 3834 section 5: vacation responders do not reply to an automatic message.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_summary_text(title, report, report_date, attachment_name))
    message.add_attachment(pdf, maintype="application", subtype="pdf",
                           filename=attachment_name)
    return message


def clean_header_text(value: str, max_chars: int) -> str:
    """Remove line breaks and control characters, collapse spaces and cut to max_chars."""
    spaced = "".join(" " if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES else char
                     for char in value)
    text = " ".join(spaced.split())
    if len(text) > max_chars:
        text = text[:max_chars - 1].rstrip() + "…"
    return text


def _summary_text(title: str, report: DeliveryReport, report_date: date,
                  attachment_name: str) -> str:
    figures = report.metrics
    rows = [
        ("Processed", f"{figures.processed}"),
        ("Delivered", f"{figures.delivered} ({figures.delivery_rate.percent()})"),
        ("Hard bounces", f"{figures.hard_bounces} ({figures.hard_bounce_rate.percent()})"),
        ("Soft bounces", f"{figures.soft_bounces} ({figures.soft_bounce_rate.percent()})"),
        ("Opens including clicks",
         f"{figures.human.opens_including_clicks} human ({figures.human.open_rate.percent()}); "
         f"{figures.opens_including_clicks} all hits ({figures.raw.open_rate.percent()})"),
        ("Clicks", f"{figures.human.clicks} human; {figures.clicks} all hits"),
        ("Unique clickers",
         f"{figures.human.unique_clickers} human ({figures.human.click_through_rate.percent()} "
         f"click-through rate); {figures.unique_clickers} all hits "
         f"({figures.raw.click_through_rate.percent()})"),
        ("Unsubscriptions",
         f"{figures.unsubscriptions} ({figures.unsubscription_rate.percent()})"),
    ]
    lines = [f"{title} (delivery {_shown_id(report.delivery_id)})",
             f"Figures up to the end of {report_date.isoformat()}, counted as in the report:",
             ""]
    lines += [f"  {label:<24}{value}" for label, value in rows]
    lines += ["", f"The full report is attached as {attachment_name}.",
              "This message was sent by clicktrail; replies are not read."]
    return "\n".join(lines) + "\n"


def write_eml_files(outgoing: list[OutgoingMessage], folder: Path) -> list[Path]:
    """Write each message to folder/<report name>.eml, as it would be sent."""
    try:
        folder.mkdir(exist_ok=True)
        paths = []
        for item in outgoing:
            path = folder / item.eml_name
            path.write_bytes(item.message.as_bytes())
            paths.append(path)
    except OSError as exc:
        raise OutputError(f"failed to write the email files in {folder}: {exc}",
                          path=str(folder)) from exc
    log.info("dry run: wrote %d report emails to %s, sent nothing", len(paths), folder)
    return paths


def read_password(config: EmailConfig) -> str | None:
    """Read the SMTP password from the variable named by password_env or from password_file."""
    if config.username is None:
        if config.password_env or config.password_file:
            raise MailError("[email] password_env or password_file is set but username is "
                            "missing; set username or remove the password setting")
        return None
    if config.password_env and config.password_file:
        raise MailError("[email] password_env and password_file are both set; keep one")

    if config.password_env:
        password = os.environ.get(config.password_env)
        if not password:
            raise MailError(f"the environment variable {config.password_env} named by [email] "
                            "password_env is not set or empty")
        return password

    if config.password_file:
        try:
            text = Path(config.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # The exception text names the file and the reason, never the content.
            raise MailError(f"cannot read the SMTP password from [email] password_file "
                            f"{config.password_file}: {exc}") from None
        # Editors and `echo` add one trailing newline, so only that one is removed.
        password = text.removesuffix("\n").removesuffix("\r")
        if not password:
            raise MailError(f"the SMTP password file {config.password_file} is empty")
        return password

    raise MailError("[email] username is set but neither password_env nor password_file; set "
                    "one of them")


Connect = Callable[[], smtplib.SMTP]


def _connector(config: EmailConfig, password: str | None, local_hostname: str,
               context: ssl.SSLContext) -> Connect:
    if password is not None and config.security == "none":
        log.warning("[email] security is none: the SMTP password is sent to %s unencrypted",
                    config.smtp_host)

    def connect() -> smtplib.SMTP:
        # An explicit local_hostname, because smtplib would otherwise look up this host's name.
        smtp: smtplib.SMTP
        if config.security == "tls":
            smtp = smtplib.SMTP_SSL(config.smtp_host, config.smtp_port,
                                    local_hostname=local_hostname, timeout=config.timeout_s,
                                    context=context)
        else:
            smtp = smtplib.SMTP(config.smtp_host, config.smtp_port,
                                local_hostname=local_hostname, timeout=config.timeout_s)
        try:
            smtp.ehlo()
            # smtplib raises SMTPNotSupportedError when STARTTLS is not offered, so the
            # session never falls back to plain text.
            if config.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if config.username is not None and password is not None:
                smtp.login(config.username, password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    return connect


def send_messages(outgoing: list[OutgoingMessage], sender: str, connect: Connect, *,
                  sleep: Callable[[float], None] = time.sleep, max_attempts: int = MAX_ATTEMPTS,
                  password: str | None = None) -> list[Failure]:
    """Send the messages over one connection per attempt, retrying transient failures.

    A recipient refused with a 4xx reply is retried alone, and one refused with a 5xx reply is
    not. A failure that no message can pass (rejected credentials, TLS) ends the run at once.
    Returns the recipients not reached; password is removed from every reason.
    """
    jobs = [_Job(item, list(item.recipients)) for item in outgoing]
    failures: list[Failure] = []
    delay = FIRST_RETRY_DELAY_S

    for attempt in range(1, max_attempts + 1):
        _send_attempt(jobs, sender, connect, failures, password)
        jobs = [job for job in jobs if job.pending]
        if not jobs or attempt == max_attempts:
            break
        waiting = sum(len(job.pending) for job in jobs)
        log.warning("%d recipients of %d report emails not reached (attempt %d of %d); "
                    "retrying in %.0f s", waiting, len(jobs), attempt, max_attempts, delay)
        sleep(delay)
        delay *= RETRY_BACKOFF_FACTOR

    for job in jobs:
        for recipient in job.pending:
            reason = f"{job.last_error.get(recipient, 'not sent')} (after {max_attempts} attempts)"
            failures.append(Failure(job.outgoing.delivery_id, recipient, reason, transient=True))
    return failures


def _send_attempt(jobs: list[_Job], sender: str, connect: Connect, failures: list[Failure],
                  password: str | None) -> None:
    try:
        smtp = connect()
    except (smtplib.SMTPException, OSError) as exc:
        transient, reason = _classify(exc, password)
        for job in jobs:
            _record(job, list(job.pending), transient, reason, failures)
        return

    try:
        for index, job in enumerate(jobs):
            try:
                _send_one(smtp, job, sender, failures, password)
            except OSError as exc:
                transient, reason = _classify(exc, password)
                if not _ends_session(exc):
                    _record(job, list(job.pending), transient, reason, failures)
                    continue
                for waiting in jobs[index:]:
                    _record(waiting, list(waiting.pending), True, reason, failures)
                return
    finally:
        _close(smtp)


def _send_one(smtp: smtplib.SMTP, job: _Job, sender: str, failures: list[Failure],
              password: str | None) -> None:
    delivery_id = job.outgoing.delivery_id
    try:
        refused = smtp.send_message(job.outgoing.message, from_addr=sender, to_addrs=job.pending)
    except smtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        transient, reason = _classify(exc, password)
        _record(job, list(job.pending), transient, reason, failures)
        return

    for recipient, (code, text) in refused.items():
        reason = f"{code} {_reply_text(text, password)}"
        _record(job, [recipient], 400 <= code < 500, reason, failures)

    accepted = [r for r in job.pending if r not in refused]
    if accepted:
        log.info("sent the report of delivery %s to %d recipients", _shown_id(delivery_id),
                 len(accepted))
    # _record has already dropped the recipients refused for good; the others are retried.
    job.pending = [r for r in job.pending if r in refused]


def _record(job: _Job, recipients: list[str], transient: bool, reason: str,
            failures: list[Failure]) -> None:
    delivery_id = job.outgoing.delivery_id
    for recipient in recipients:
        if transient:
            job.last_error[recipient] = reason
            continue
        log.warning("report of delivery %s not sent to %s: %s", _shown_id(delivery_id), recipient,
                    reason)
        failures.append(Failure(delivery_id, recipient, reason))
        job.pending.remove(recipient)


def _ends_session(exc: OSError) -> bool:
    # A socket error, a dropped connection and reply 421 (RFC 5321 section 3.8) end the session,
    # so the later messages wait for the next attempt. Other SMTP errors concern one message.
    if isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(exc, smtplib.SMTPException):
        return True
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code == 421


def _classify(exc: BaseException, password: str | None) -> tuple[bool, str]:
    """Return whether a retry may help, and the reason to show, for an SMTP or socket error."""
    # Order matters: SMTP errors and SSL errors are OSError subclasses.
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return False, (f"authentication failed: {exc.smtp_code} "
                       f"{_reply_text(exc.smtp_error, password)}; check [email] username and "
                       "the password")
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500, f"{exc.smtp_code} {_reply_text(exc.smtp_error, password)}"
    if isinstance(exc, ssl.SSLError):
        return False, f"TLS failed: {_reply_text(str(exc), password)}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True, f"the server closed the connection: {_reply_text(str(exc), password)}"
    if isinstance(exc, smtplib.SMTPException):
        # SMTPNotSupportedError (no STARTTLS or AUTH offered) and no common AUTH mechanism.
        return False, _reply_text(str(exc), password)
    if isinstance(exc, TimeoutError):
        return True, "timed out"
    return True, _reply_text(str(exc) or type(exc).__name__, password)


def _reply_text(text: bytes | str, password: str | None) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    # A server may echo what it received; the password must not reach a log or an error.
    if password:
        text = text.replace(password, "***")
    return clean_header_text(text, MAX_SHOWN_CHARS)


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _failure_message(failures: list[Failure], total: int, report_dir: Path) -> str:
    by_delivery: dict[tuple[str, str], list[str]] = {}
    for failure in failures:
        by_delivery.setdefault((failure.delivery_id, failure.reason), []).append(failure.recipient)
    deliveries = {failure.delivery_id for failure in failures}

    lines = [f"failed to email the reports of {len(deliveries)} of {total} deliveries; the "
             f"reports are published in {report_dir}:"]
    for (delivery_id, reason), recipients in by_delivery.items():
        shown_id = _shown_id(delivery_id)
        lines.append(f"  delivery {shown_id}: not sent to {', '.join(recipients)}: {reason}")
    return "\n".join(lines)


def _shown_id(delivery_id: str) -> str:
    # Ids come from log lines, so they may contain anything. Plain ids are shown unchanged.
    return clean_header_text(delivery_id, MAX_SHOWN_ID_CHARS)


def _shown(value: str) -> str:
    # Catalog values may be long or contain control characters, which repr escapes.
    if len(value) > MAX_SHOWN_CHARS:
        return repr(value[:MAX_SHOWN_CHARS]) + "…"
    return repr(value)
