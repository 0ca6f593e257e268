"""Load and validate the one TOML file that configures both the agent and the reporter.

The agent reads [agent], [store] and [[sources]]; the reporter reads [store], [report] and
[email]. Every key is checked here, so that a typo or a bad value stops the program at start-up
instead of failing in the middle of a run. The message names the file, the key, the value and
what is expected, and the exit status is 78 (EX_CONFIG).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
import pyarrow.compute as pc

from . import routes as routes_module
from .optout import OptOutFileError, OptOutList, read_optout_file
from .schema import SAFE_NAME

EX_CONFIG = 78
SOURCE_KINDS = ("access_log", "postfix", "exim", "powermta", "kumomta")
KIB = 1024
MIB = 1024 * KIB
CLIENT_IP_MODES = ("truncate", "keep", "drop")
GIB = 1024 * MIB
# A range file larger than this is almost certainly the wrong file, so loading stops with an
# error instead of filling memory.
MAX_RANGE_FILE_BYTES = 64 * MIB
# Defaults of the per-source limits on reading a rotated .gz or .zst file. A day of a busy
# tracking server's log is a few GiB (an estimate), and real Apache and Postfix logs compress
# 12 to 20 times (measured with gzip -6 to zstd -19 on logs of 0.3 to 0.5 MB). A file beyond
# either limit is a decompression bomb or not a log.
DEFAULT_MAX_DECOMPRESSED_BYTES = 16 * GIB
DEFAULT_MAX_COMPRESSION_RATIO = 100
# Words that make a key look like it contains a secret, wherever it is in the file. A key ending
# in one of SECRET_REFERENCE_SUFFIXES names where the secret is (password_env, password_file).
SECRET_WORDS = ("password", "passwd", "secret", "credential", "credentials", "apikey",
                "privatekey")
SECRET_WORD_PAIRS = (("access", "key"), ("api", "key"), ("private", "key"), ("auth", "key"))
SECRET_REFERENCE_SUFFIXES = ("env", "file", "path")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Pairs of (range name, networks) in config order. The first range that contains an address wins.
IpRanges = tuple[tuple[str, tuple[IpNetwork, ...]], ...]


class ConfigError(Exception):
    """An invalid configuration: permanent, retrying cannot help."""

    def __init__(self, path: str, key: str, message: str):
        self.path = path
        self.key = key
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


@dataclass(frozen=True)
class AgentConfig:
    host_id: str
    state_dir: str
    max_batch_bytes: int = 8 * MIB
    flush_interval_s: float = 5.0
    max_line_bytes: int = 64 * KIB
    max_spool_bytes: int = 1024 * MIB
    read_chunk_bytes: int = 4 * MIB
    fingerprint_bytes: int = 1024
    rescan_interval_s: float = 10.0
    metrics_port: int = 0
    # Privacy of access-log client addresses: truncate (IPv4 /24, IPv6 /48), keep or drop.
    client_ip: str = "truncate"
    ip_ranges: IpRanges = ()
    # Recipients whose events are dropped before the spool; None when no optout_file is set.
    optout: OptOutList | None = None


@dataclass(frozen=True)
class StoreConfig:
    url: str
    endpoint_override: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    log_format: str = "combined"
    routes: tuple[routes_module.Route, ...] = ()
    timezone: str = "UTC"
    message_id_pattern: str | None = None
    envelope_sender_pattern: str | None = None
    # powermta: a regex on the jobId column, with the named group delivery_id.
    job_id_pattern: str | None = None
    # kumomta: (id name, meta key) pairs, such as (("delivery_id", "campaign"),).
    meta_ids: tuple[tuple[str, str], ...] = ()
    # MTA kinds: operator rules (regex on the diagnostic, bounce_type, bounce_reason), checked
    # before the built-in classification.
    bounce_rules: tuple[tuple[str, str, str], ...] = ()
    # Copies of [agent] client_ip (every kind: it also masks addresses in rejected lines),
    # ip_ranges (access_log) and the opt-out list, because a parser and a batch get only their
    # source.
    client_ip: str = "truncate"
    ip_ranges: IpRanges = ()
    optout: OptOutList | None = None
    # Limits on reading one rotated .gz or .zst file: decompressed bytes, and the ratio of
    # decompressed to compressed bytes once min_ratio_check_bytes were decompressed.
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO


@dataclass(frozen=True)
class UserAgentRule:
    """A [[report.classification.user_agent]] rule: hits whose user agent matches are `kind`."""

    name: str
    # An RE2 regular expression, searched (not anchored) in the user agent.
    pattern: str
    # proxy (image-proxy opens), prefetch (machine opens) or scanner (machine opens and clicks)
    kind: str


# User agents that identify machines by themselves. Sources: REFERENCE.md section 3 (Gmail and
# Yahoo image proxies, Apple Mail Privacy Protection's bare user agent, security gateways,
# headless browsers and HTTP libraries).
DEFAULT_USER_AGENT_RULES = (
    UserAgentRule("gmail_image_proxy", r"GoogleImageProxy", "proxy"),
    UserAgentRule("yahoo_mail_proxy", r"YahooMailProxy", "proxy"),
    UserAgentRule("bare_mozilla", r"^Mozilla/5\.0$", "prefetch"),
    UserAgentRule("headless_browser", r"(?i)headless|phantomjs", "scanner"),
    UserAgentRule("http_library", r"(?i)^(python-requests|python-urllib|go-http-client|java/|"
                  r"okhttp|libwww-perl|apache-httpclient|axios|node-fetch|aiohttp|wget)", "scanner"),
    UserAgentRule("security_gateway", r"(?i)barracuda|mimecast|proofpoint|safelinks|"
                  r"safe links|ironport|forcepoint|trendmicro|trend micro|zscaler", "scanner"),
    UserAgentRule("crawler", r"(?i)bot/|crawler|spider", "scanner"),
)
USER_AGENT_RULE_KINDS = ("proxy", "prefetch", "scanner")


@dataclass(frozen=True)
class ClassificationConfig:
    """[report.classification]: the rules that class opens and clicks (docs/glossary.md)."""

    # Names of [agent] ip_ranges entries, as the agent stores them in client_network.
    proxy_networks: tuple[str, ...] = ("gmail_image_proxy", "yahoo_mail_proxy")
    prefetch_networks: tuple[str, ...] = ("apple_mpp",)
    scanner_networks: tuple[str, ...] = ("scanners",)
    user_agent_rules: tuple[UserAgentRule, ...] = DEFAULT_USER_AGENT_RULES
    head_clicks: bool = True
    # Timing rules, measured from the delivery to the recipient; 0 turns a rule off.
    click_window_s: float = 10.0
    burst_window_s: float = 2.0
    burst_links: int = 3
    prefetch_window_s: float = 0.0


@dataclass(frozen=True)
class ReportConfig:
    timezone: str = "UTC"
    output_dir: str = "reports"
    lookback_days: int = 30
    max_memory_bytes: int = 4 * 1024 * MIB
    classification: ClassificationConfig = ClassificationConfig()


@dataclass(frozen=True)
class EmailConfig:
    smtp_host: str
    smtp_port: int = 587
    security: str = "starttls"
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    sender: str = ""
    to: tuple[str, ...] = ()
    timeout_s: float = 30.0
    ca_file: str | None = None


@dataclass(frozen=True)
class Config:
    path: str
    agent: AgentConfig
    store: StoreConfig
    sources: tuple[SourceConfig, ...]
    report: ReportConfig
    email: EmailConfig | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError naming the key on any problem."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found; pass --config with the path of a TOML file "
                          "(config.example.toml documents every option)") from None
    except PermissionError:
        raise ConfigError(path, "", "permission denied; the service user needs read access") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte {exc.start}); save the file as "
                          "UTF-8") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a folder; pass the path of a TOML file") from None

    reader = _Reader(path)
    # Before any other check, so that a secret in a file every user can read is reported even
    # when its key is also unknown.
    _reject_readable_secrets(reader, data)
    reader.only_keys(data, "", ("agent", "store", "sources", "report", "email"))
    agent = _agent(reader, data.get("agent", {}))
    sources = tuple(
        replace(source, client_ip=agent.client_ip, optout=agent.optout,
                ip_ranges=agent.ip_ranges if source.kind == "access_log" else ())
        for source in _sources(reader, data.get("sources")))
    config = Config(
        path=path,
        agent=agent,
        store=_store(reader, data.get("store")),
        sources=sources,
        report=_report(reader, data.get("report", {})),
        email=_email(reader, data.get("email")),
        raw=data,
    )
    _check_classification_networks(reader, data, agent.ip_ranges)
    return config


def _reject_readable_secrets(reader: _Reader, data: dict[str, Any]) -> None:
    """Raise ConfigError when the file is readable by every user and a key looks like a secret.

    The value is not echoed. The check reads the mode of the file, so it runs only on what a
    local user could read. A secret in a protected file is still rejected by the key checks.
    """
    try:
        mode = os.stat(reader.path).st_mode
    except OSError:
        return
    if not mode & stat.S_IROTH:
        return
    key = _first_secret_key(data, "")
    if key is None:
        return
    raise reader.fail(key, f"this key looks like a secret, and the file is readable by every "
                      f"user (mode {stat.S_IMODE(mode):04o}). Run `chmod 640 {reader.path}` "
                      "(owner root, group of the service user) and move the secret out of the "
                      "config: [email] takes password_env or password_file, and S3 credentials "
                      "come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or "
                      "AWS_SHARED_CREDENTIALS_FILE")


def _first_secret_key(table: dict[str, Any], prefix: str) -> str | None:
    """Return the full name of the first key in table, at any depth, that looks like a secret."""
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, dict):
            found = _first_secret_key(value, key)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            found = next((k for i, v in enumerate(value)
                          if (k := _first_secret_key(v, f"{key}[{i}]")) is not None), None)
        else:
            found = key if _looks_like_secret(str(name)) else None
        if found is not None:
            return found
    return None


def _looks_like_secret(name: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if not words or words[-1] in SECRET_REFERENCE_SUFFIXES:
        return False
    if any(word in SECRET_WORDS for word in words) or words[-1] == "token":
        return True
    return any(pair in SECRET_WORD_PAIRS for pair in zip(words, words[1:], strict=False))


class _Reader:
    """Typed access to one TOML table, with errors that name the file and the full key."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, key, message)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {value!r}")
        return value

    def only_keys(self, table: dict[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
        for name in table:
            if name not in allowed:
                key = f"{prefix}.{name}" if prefix else name
                raise self.fail(key, f"unknown key; expected one of: {', '.join(allowed)}")

    def string(self, table: dict[str, Any], prefix: str, name: str, default: str | None = None,
               *, required: bool = False, choices: tuple[str, ...] = ()) -> str | None:
        key = f"{prefix}.{name}"
        if name not in table:
            if required:
                raise self.fail(key, "missing; this key is required")
            return default
        value = table[name]
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        if "\x00" in value:
            raise self.fail(key, f"invalid value {value!r}: contains a NUL character")
        if choices and value not in choices:
            raise self.fail(key, f"invalid value {value!r}; expected one of: {', '.join(choices)}")
        return value

    def number(self, table: dict[str, Any], prefix: str, name: str, default: float, *,
               minimum: float, maximum: float, integer: bool = True) -> Any:
        key = f"{prefix}.{name}"
        if name not in table:
            return default
        value = table[name]
        valid_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not valid_type:
            kind = "an integer" if integer else "a number"
            raise self.fail(key, f"expected {kind}, got {value!r}")
        if not minimum <= value <= maximum:
            raise self.fail(key, f"value {value!r} out of range; expected {minimum} to {maximum}")
        return value

    def string_list(self, table: dict[str, Any], prefix: str, name: str,
                    default: tuple[str, ...] = (), *, required: bool = False) -> tuple[str, ...]:
        key = f"{prefix}.{name}"
        if name not in table:
            if required:
                raise self.fail(key, "missing; this key is required")
            return default
        value = table[name]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"expected a list of non-empty strings, got {value!r}")
        if required and not value:
            raise self.fail(key, "expected at least one entry, got an empty list")
        return tuple(value)

    def timezone(self, table: dict[str, Any], prefix: str, name: str, default: str) -> str:
        value = self.string(table, prefix, name, default)
        assert value is not None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(f"{prefix}.{name}", f"unknown time zone {value!r}; expected an IANA "
                            "name such as 'UTC' or 'Europe/Paris'") from None
        return value

    def regex(self, table: dict[str, Any], prefix: str, name: str,
              groups: tuple[str, ...] = ()) -> str | None:
        value = self.string(table, prefix, name)
        if value is None:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise self.fail(f"{prefix}.{name}", f"invalid regular expression {value!r}: {exc}") from None
        unknown = set(compiled.groupindex) - set(groups) if groups else set()
        if unknown:
            raise self.fail(f"{prefix}.{name}", f"unknown named group(s) {sorted(unknown)} in "
                            f"{value!r}; expected names from: {', '.join(groups)}")
        return value


def _default_host_id() -> str:
    # The hostname becomes part of store file names, so keep only safe characters.
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]) or "host"
    return name[:64]


def _agent(reader: _Reader, table: Any) -> AgentConfig:
    table = reader.table(table, "agent")
    reader.only_keys(table, "agent", ("host_id", "state_dir", "max_batch_bytes",
                                      "flush_interval_s", "max_line_bytes", "max_spool_bytes",
                                      "read_chunk_bytes", "fingerprint_bytes", "rescan_interval_s",
                                      "metrics_port", "client_ip", "ip_ranges", "optout_file"))
    host_id = reader.string(table, "agent", "host_id") or _default_host_id()
    if not SAFE_NAME.match(host_id):
        raise reader.fail("agent.host_id", f"invalid value {host_id!r}; expected 1-64 characters "
                          "of letters, digits, '_', '.' or '-', starting with a letter or digit")
    state_dir = reader.string(table, "agent", "state_dir", "/var/lib/clicktrail")
    assert state_dir is not None
    if Path(_relative_to_config(reader.path, state_dir)).is_file():
        raise reader.fail("agent.state_dir", f"invalid value {state_dir!r}: it is a file; "
                          "expected a folder (created if missing)")
    return AgentConfig(
        host_id=host_id,
        state_dir=_relative_to_config(reader.path, state_dir),
        max_batch_bytes=reader.number(table, "agent", "max_batch_bytes", 8 * MIB,
                                      minimum=64 * KIB, maximum=1024 * MIB),
        flush_interval_s=reader.number(table, "agent", "flush_interval_s", 5.0, minimum=0.1,
                                       maximum=3600, integer=False),
        max_line_bytes=reader.number(table, "agent", "max_line_bytes", 64 * KIB,
                                     minimum=1 * KIB, maximum=16 * MIB),
        max_spool_bytes=reader.number(table, "agent", "max_spool_bytes", 1024 * MIB,
                                      minimum=64 * KIB, maximum=1024 * 1024 * MIB),
        read_chunk_bytes=reader.number(table, "agent", "read_chunk_bytes", 4 * MIB,
                                       minimum=64 * KIB, maximum=256 * MIB),
        fingerprint_bytes=reader.number(table, "agent", "fingerprint_bytes", 1024,
                                        minimum=64, maximum=64 * KIB),
        rescan_interval_s=reader.number(table, "agent", "rescan_interval_s", 10.0, minimum=0.1,
                                        maximum=3600, integer=False),
        metrics_port=_metrics_port(reader, table),
        client_ip=reader.string(table, "agent", "client_ip", "truncate",
                                choices=CLIENT_IP_MODES) or "truncate",
        ip_ranges=_ip_ranges(reader, table),
        optout=_optout(reader, table),
    )


def _optout(reader: _Reader, table: dict[str, Any]) -> OptOutList | None:
    """Load [agent] optout_file, read again at every start and reload."""
    file_name = reader.string(table, "agent", "optout_file")
    if file_name is None:
        return None
    try:
        return read_optout_file(_relative_to_config(reader.path, file_name))
    except OptOutFileError as exc:
        raise reader.fail("agent.optout_file", str(exc)) from None


def _ip_ranges(reader: _Reader, table: dict[str, Any]) -> IpRanges:
    """Read [agent] ip_ranges, a table from range names to files of CIDRs, and load the files."""
    if "ip_ranges" not in table:
        return ()
    value = reader.table(table["ip_ranges"], "agent.ip_ranges")
    ranges = []
    for name, file_name in value.items():
        key = f"agent.ip_ranges.{name}"
        if not SAFE_NAME.match(name):
            raise reader.fail(key, "invalid range name; expected 1-64 characters of letters, "
                              "digits, '_', '.' or '-', starting with a letter or digit")
        if not isinstance(file_name, str) or not file_name:
            raise reader.fail(key, f"expected the path of a file of CIDRs, got {file_name!r}")
        ranges.append((name, _read_range_file(reader, key,
                                              _relative_to_config(reader.path, file_name))))
    return tuple(ranges)


def _read_range_file(reader: _Reader, key: str, path: str) -> tuple[IpNetwork, ...]:
    """Parse a range file with one CIDR per line. Blank lines and text after '#' are ignored.

    Text after a comma is ignored too, so that a CSV file whose first column is the CIDR can be
    used as it is.
    """
    try:
        if Path(path).stat().st_size > MAX_RANGE_FILE_BYTES:
            raise reader.fail(key, f"file {path} is larger than {MAX_RANGE_FILE_BYTES} bytes; "
                              "expected a list of CIDRs")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise reader.fail(key, f"file not found: {path}; expected a file with one CIDR per "
                          "line") from None
    except UnicodeDecodeError as exc:
        raise reader.fail(key, f"file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise reader.fail(key, f"cannot read file {path}: {exc.strerror}") from None

    networks = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].split(",", 1)[0].strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise reader.fail(key, f"{path} line {number}: invalid CIDR {text!r} ({exc}); "
                              "expected a network such as 192.0.2.0/24 or 2001:db8::/32") from None
    return tuple(networks)


def _metrics_port(reader: _Reader, table: dict[str, Any]) -> int:
    port = reader.number(table, "agent", "metrics_port", 0, minimum=0, maximum=65535)
    if 0 < port < 1024:
        # The service runs without capabilities, so it cannot bind a privileged port.
        raise reader.fail("agent.metrics_port", f"value {port} out of range; expected 0 (off) "
                          "or 1024 to 65535")
    return port


def _relative_to_config(config_path: str, value: str) -> str:
    """Resolve a relative path against the config file's folder, not the working directory."""
    path = Path(value)
    if path.is_absolute():
        return str(path)
    return str((Path(config_path).resolve().parent / path).resolve())


def _store(reader: _Reader, table: Any) -> StoreConfig:
    if table is None:
        raise reader.fail("store", "missing; add a [store] table with url = "
                          "\"file:///path/to/store\" or \"s3://bucket/prefix\"")
    table = reader.table(table, "store")
    reader.only_keys(table, "store", ("url", "endpoint_override", "region"))
    url = reader.string(table, "store", "url", required=True)
    assert url is not None
    scheme = url.split("://", 1)[0] if "://" in url else ""
    authority = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    if "@" in authority:
        # The value is not echoed, because it contains a secret.
        raise reader.fail("store.url", "credentials in the URL are not accepted; give them in "
                          "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or in "
                          "AWS_SHARED_CREDENTIALS_FILE, and write the URL as s3://bucket/prefix")
    if scheme not in ("", "file", "s3"):
        raise reader.fail("store.url", f"unsupported scheme in {url!r}; expected file:///path, "
                          "a plain path, or s3://bucket/prefix")
    if scheme == "":
        url = _relative_to_config(reader.path, url)
    elif scheme == "file" and not url.startswith("file:///"):
        raise reader.fail("store.url", f"invalid value {url!r}; a file URL needs an absolute path, "
                          "as in file:///srv/clicktrail/store")
    endpoint = reader.string(table, "store", "endpoint_override")
    if endpoint is not None and not re.match(r"^https?://[^\s/]+(:\d+)?/?$", endpoint):
        raise reader.fail("store.endpoint_override", f"invalid value {endpoint!r}; expected "
                          "http(s)://host:port")
    return StoreConfig(url=url, endpoint_override=endpoint,
                       region=reader.string(table, "store", "region"))


def _sources(reader: _Reader, value: Any) -> tuple[SourceConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise reader.fail("sources", "expected an array of tables ([[sources]]), got "
                          f"{type(value).__name__}")
    sources = []
    names: set[str] = set()
    for index, table in enumerate(value):
        source = _source(reader, reader.table(table, f"sources[{index}]"), index)
        if source.name in names:
            raise reader.fail(f"sources[{index}].name", f"duplicate source name {source.name!r}; "
                              "each source needs its own name")
        names.add(source.name)
        sources.append(source)
    return tuple(sources)


def _source(reader: _Reader, table: dict[str, Any], index: int) -> SourceConfig:
    prefix = f"sources[{index}]"
    reader.only_keys(table, prefix, ("name", "kind", "paths", "exclude", "log_format", "routes",
                                     "route", "timezone", "message_id_pattern",
                                     "envelope_sender_pattern", "job_id_pattern", "meta_ids",
                                     "bounce_rule", "max_decompressed_bytes",
                                     "max_compression_ratio"))
    name = reader.string(table, prefix, "name", required=True)
    assert name is not None
    if not SAFE_NAME.match(name):
        raise reader.fail(f"{prefix}.name", f"invalid value {name!r}; expected 1-64 characters of "
                          "letters, digits, '_', '.' or '-', starting with a letter or digit")
    kind = reader.string(table, prefix, "kind", required=True, choices=SOURCE_KINDS)
    paths = reader.string_list(table, prefix, "paths", required=True)
    for path in paths:
        if not Path(path).is_absolute() and path.startswith("~"):
            raise reader.fail(f"{prefix}.paths", f"'~' is not expanded in {path!r}; use an "
                              "absolute path")
    paths = tuple(_relative_to_config(reader.path, p) for p in paths)
    exclude = reader.string_list(table, prefix, "exclude")
    ids = ("delivery_id", "recipient_id", "link_id")

    if kind == "access_log":
        return _access_log_source(reader, table, prefix, name, paths, exclude)

    for key in ("log_format", "routes", "route"):
        if key in table:
            raise reader.fail(f"{prefix}.{key}", f"not used by kind {kind!r}; remove it")
    for key, key_kind in (("job_id_pattern", "powermta"), ("meta_ids", "kumomta")):
        if key in table and kind != key_kind:
            raise reader.fail(f"{prefix}.{key}", f"not used by kind {kind!r}, only by "
                              f"{key_kind!r}; remove it")
    job_id_pattern = reader.regex(table, prefix, "job_id_pattern", ids)
    if job_id_pattern is not None and "delivery_id" not in re.compile(job_id_pattern).groupindex:
        raise reader.fail(f"{prefix}.job_id_pattern", f"missing the named group delivery_id in "
                          f"{job_id_pattern!r}")
    return SourceConfig(
        name=name, kind=kind, paths=paths, exclude=exclude,
        timezone=reader.timezone(table, prefix, "timezone", "UTC"),
        message_id_pattern=reader.regex(table, prefix, "message_id_pattern", ids),
        envelope_sender_pattern=reader.regex(table, prefix, "envelope_sender_pattern", ids),
        job_id_pattern=job_id_pattern,
        meta_ids=_meta_ids(reader, table, prefix, ids),
        bounce_rules=_bounce_rules(reader, table, prefix),
        max_decompressed_bytes=_max_decompressed_bytes(reader, table, prefix),
        max_compression_ratio=_max_compression_ratio(reader, table, prefix),
    )


def _max_decompressed_bytes(reader: _Reader, table: dict[str, Any], prefix: str) -> int:
    return reader.number(table, prefix, "max_decompressed_bytes", DEFAULT_MAX_DECOMPRESSED_BYTES,
                         minimum=1 * MIB, maximum=1024 * GIB)


def _max_compression_ratio(reader: _Reader, table: dict[str, Any], prefix: str) -> int:
    return reader.number(table, prefix, "max_compression_ratio", DEFAULT_MAX_COMPRESSION_RATIO,
                         minimum=2, maximum=100_000)


def _bounce_rules(reader: _Reader, table: dict[str, Any],
                  prefix: str) -> tuple[tuple[str, str, str], ...]:
    """Read [[sources.bounce_rule]] tables: pattern, bounce_type, bounce_reason."""
    from .bounce import compile_extra_rules

    rules = table.get("bounce_rule", [])
    if not isinstance(rules, list):
        raise reader.fail(f"{prefix}.bounce_rule", "expected an array of tables "
                          "([[sources.bounce_rule]])")
    result = []
    for position, rule in enumerate(rules):
        key = f"{prefix}.bounce_rule[{position}]"
        rule = reader.table(rule, key)
        reader.only_keys(rule, key, ("pattern", "bounce_type", "bounce_reason"))
        values = tuple(reader.string(rule, key, name, required=True)
                       for name in ("pattern", "bounce_type", "bounce_reason"))
        try:
            compile_extra_rules([values])
        except ValueError as exc:
            raise reader.fail(key, str(exc).replace("bounce rule 0: ", "")) from None
        result.append(values)
    return tuple(result)


def _meta_ids(reader: _Reader, table: dict[str, Any], prefix: str,
              ids: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Read meta_ids, a table from id names to the KumoMTA meta keys that hold them."""
    if "meta_ids" not in table:
        return ()
    key = f"{prefix}.meta_ids"
    value = reader.table(table["meta_ids"], key)
    for name, meta_key in value.items():
        if name not in ids:
            raise reader.fail(f"{key}.{name}", f"unknown id name; expected one of: {', '.join(ids)}")
        if not isinstance(meta_key, str) or not meta_key:
            raise reader.fail(f"{key}.{name}", f"expected a non-empty string, got {meta_key!r}")
    if "delivery_id" not in value:
        raise reader.fail(f"{key}.delivery_id", "missing; meta_ids needs at least delivery_id")
    return tuple((name, value[name]) for name in ids if name in value)


def _access_log_source(reader: _Reader, table: dict[str, Any], prefix: str, name: str,
                       paths: tuple[str, ...], exclude: tuple[str, ...]) -> SourceConfig:
    from .logformat import LogFormatError, compile_log_format

    for key in ("message_id_pattern", "envelope_sender_pattern"):
        if key in table:
            raise reader.fail(f"{prefix}.{key}", "not used by kind 'access_log'; remove it")
    log_format = reader.string(table, prefix, "log_format", "combined")
    assert log_format is not None
    try:
        compile_log_format(log_format)
    except LogFormatError as exc:
        raise reader.fail(f"{prefix}.log_format", str(exc)) from None

    preset = reader.string(table, prefix, "routes", "none" if "route" in table else "generic")
    assert preset is not None
    if preset not in routes_module.PRESETS:
        raise reader.fail(f"{prefix}.routes", f"unknown preset {preset!r}; expected one of: "
                          f"{', '.join(sorted(routes_module.PRESETS))}")
    custom = table.get("route", [])
    if not isinstance(custom, list):
        raise reader.fail(f"{prefix}.route", "expected an array of tables ([[sources.route]])")
    routes = []
    for position, route_table in enumerate(custom):
        key = f"{prefix}.route[{position}]"
        try:
            routes.append(routes_module.route_from_table(reader.table(route_table, key)))
        except routes_module.RouteError as exc:
            raise reader.fail(f"{key}.{exc.key}", exc.message) from None
    # Custom routes come first: an operator adds them to override a preset's shape.
    routes.extend(routes_module.PRESETS[preset])
    if not routes:
        raise reader.fail(f"{prefix}.routes", "no routes: set routes to a preset name or add "
                          "[[sources.route]] tables")
    return SourceConfig(name=name, kind="access_log", paths=paths, exclude=exclude,
                        log_format=log_format, routes=tuple(routes),
                        timezone=reader.timezone(table, prefix, "timezone", "UTC"),
                        max_decompressed_bytes=_max_decompressed_bytes(reader, table, prefix),
                        max_compression_ratio=_max_compression_ratio(reader, table, prefix))


def _report(reader: _Reader, table: Any) -> ReportConfig:
    table = reader.table(table, "report")
    reader.only_keys(table, "report", ("timezone", "output_dir", "lookback_days",
                                       "max_memory_bytes", "classification"))
    output_dir = reader.string(table, "report", "output_dir", "reports")
    assert output_dir is not None
    return ReportConfig(
        timezone=reader.timezone(table, "report", "timezone", "UTC"),
        output_dir=_relative_to_config(reader.path, output_dir),
        lookback_days=reader.number(table, "report", "lookback_days", 30, minimum=1, maximum=3660),
        max_memory_bytes=reader.number(table, "report", "max_memory_bytes", 4 * 1024 * MIB,
                                       minimum=128 * MIB, maximum=1024 * 1024 * MIB),
        classification=_classification(reader, table.get("classification", {})),
    )


def _classification(reader: _Reader, table: Any) -> ClassificationConfig:
    prefix = "report.classification"
    table = reader.table(table, prefix)
    reader.only_keys(table, prefix, ("proxy_networks", "prefetch_networks", "scanner_networks",
                                     "user_agent", "disable_user_agent_rules", "head_clicks",
                                     "click_window_s", "burst_window_s", "burst_links",
                                     "prefetch_window_s"))
    defaults = ClassificationConfig()
    disabled = reader.string_list(table, prefix, "disable_user_agent_rules")
    known = {rule.name for rule in DEFAULT_USER_AGENT_RULES}
    for name in disabled:
        if name not in known:
            raise reader.fail(f"{prefix}.disable_user_agent_rules", f"unknown rule {name!r}; "
                              f"expected one of: {', '.join(sorted(known))}")
    rules = [rule for rule in DEFAULT_USER_AGENT_RULES if rule.name not in disabled]
    extra = table.get("user_agent", [])
    if not isinstance(extra, list):
        raise reader.fail(f"{prefix}.user_agent", "expected [[report.classification.user_agent]] "
                          "tables with name, pattern and kind")
    for index, entry in enumerate(extra):
        rules.append(_user_agent_rule(reader, entry, f"{prefix}.user_agent[{index}]"))
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise reader.fail(f"{prefix}.user_agent", "rule names must be unique; rename the rule "
                          "or list the built-in one in disable_user_agent_rules")

    head_clicks = table.get("head_clicks", defaults.head_clicks)
    if not isinstance(head_clicks, bool):
        raise reader.fail(f"{prefix}.head_clicks", f"expected true or false, got {head_clicks!r}")

    def seconds(name: str, default: float) -> float:
        return float(reader.number(table, prefix, name, default, minimum=0, maximum=86400,
                                   integer=False))

    return ClassificationConfig(
        proxy_networks=reader.string_list(table, prefix, "proxy_networks", defaults.proxy_networks),
        prefetch_networks=reader.string_list(table, prefix, "prefetch_networks",
                                             defaults.prefetch_networks),
        scanner_networks=reader.string_list(table, prefix, "scanner_networks",
                                            defaults.scanner_networks),
        user_agent_rules=tuple(rules),
        head_clicks=head_clicks,
        click_window_s=seconds("click_window_s", defaults.click_window_s),
        burst_window_s=seconds("burst_window_s", defaults.burst_window_s),
        burst_links=_burst_links(reader, table, prefix, defaults.burst_links),
        prefetch_window_s=seconds("prefetch_window_s", defaults.prefetch_window_s),
    )


def _check_classification_networks(reader: _Reader, data: dict[str, Any],
                                   ip_ranges: IpRanges) -> None:
    """Reject classification network names that the same file's [agent] ip_ranges lacks.

    A typo would otherwise leave a network's hits classed human without a word. Only names the
    file lists are checked (the defaults name ranges an operator may not have), and only when
    the file has [agent] ip_ranges: a reporter's config may leave them to the agents' files.
    """
    if "ip_ranges" not in data.get("agent", {}):
        return
    table = data.get("report", {}).get("classification", {})
    names = {name for name, _ in ip_ranges}
    for key in ("proxy_networks", "prefetch_networks", "scanner_networks"):
        listed = table.get(key, [])
        for name in [listed] if isinstance(listed, str) else listed:
            if name not in names:
                raise reader.fail(f"report.classification.{key}", f"{name!r} is not a name of "
                                  f"[agent] ip_ranges ({', '.join(sorted(names))}); fix the name "
                                  "or add the range file")


def _burst_links(reader: _Reader, table: dict[str, Any], prefix: str, default: int) -> int:
    value = reader.number(table, prefix, "burst_links", default, minimum=0, maximum=1000)
    # One link is no burst: every click would be a scanner's.
    if value == 1:
        raise reader.fail(f"{prefix}.burst_links", "1 would class every click as a scanner's; "
                          "expected 0 (off) or 2 or more distinct links")
    return value


def _user_agent_rule(reader: _Reader, entry: Any, key: str) -> UserAgentRule:
    entry = reader.table(entry, key)
    reader.only_keys(entry, key, ("name", "pattern", "kind"))
    name = reader.string(entry, key, "name", required=True)
    assert name is not None
    if not SAFE_NAME.match(name):
        raise reader.fail(f"{key}.name", "invalid rule name; expected 1-64 characters of "
                          "letters, digits, '_', '.' or '-'")
    kind = reader.string(entry, key, "kind", required=True, choices=USER_AGENT_RULE_KINDS)
    pattern = reader.string(entry, key, "pattern", required=True)
    assert kind is not None and pattern is not None
    # The reporter runs the pattern in DuckDB, whose engine is RE2 (as pyarrow's): check it there.
    try:
        pc.match_substring_regex(pa.array([""]), pattern)
    except pa.ArrowInvalid as exc:
        hint = ("; RE2 has no look-around or back-references"
                if re.search(r"\(\?<?[=!]|\\[1-9]", pattern) else "")
        raise reader.fail(f"{key}.pattern",
                          f"invalid RE2 regular expression {pattern!r}: {exc}{hint}") from None
    return UserAgentRule(name, pattern, kind)


def _email(reader: _Reader, table: Any) -> EmailConfig | None:
    if table is None:
        return None
    table = reader.table(table, "email")
    if "password" in table:
        raise reader.fail("email.password", "passwords are not read from the config file; set "
                          "password_env or password_file")
    reader.only_keys(table, "email", ("smtp_host", "smtp_port", "security", "username",
                                      "password_env", "password_file", "from", "to", "timeout_s",
                                      "ca_file"))
    if "password_env" in table and "password_file" in table:
        raise reader.fail("email.password_file", "set either password_env or password_file, "
                          "not both")
    ca_file = reader.string(table, "email", "ca_file")
    if ca_file is not None:
        ca_file = _relative_to_config(reader.path, ca_file)
        if not Path(ca_file).is_file():
            raise reader.fail("email.ca_file", f"file not found: {ca_file}; expected a PEM file "
                              "with the CA that signed the mail server's certificate")
    host = reader.string(table, "email", "smtp_host", required=True)
    assert host is not None
    sender = reader.string(table, "email", "from", required=True)
    assert sender is not None
    return EmailConfig(
        smtp_host=host,
        smtp_port=reader.number(table, "email", "smtp_port", 587, minimum=1, maximum=65535),
        security=reader.string(table, "email", "security", "starttls",
                               choices=("starttls", "tls", "none")) or "starttls",
        username=reader.string(table, "email", "username"),
        password_env=reader.string(table, "email", "password_env"),
        password_file=reader.string(table, "email", "password_file"),
        sender=sender,
        to=reader.string_list(table, "email", "to"),
        timeout_s=reader.number(table, "email", "timeout_s", 30.0, minimum=1, maximum=600,
                                integer=False),
        ca_file=ca_file,
    )
