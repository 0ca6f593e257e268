"""Config validation: every invalid value is named with its file and key, exit status 78."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from clicktrail.agent.cli import main
from clicktrail.agent.config import ConfigError, load_config

VALID = """
[agent]
host_id = "mx1"
state_dir = "state"

[store]
url = "file:///srv/clicktrail/store"

[[sources]]
name = "tracking"
kind = "access_log"
paths = ["/var/log/apache2/access.log*"]
routes = "generic"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clicktrail.toml"
    path.write_text(text)
    return path


def test_valid_config_loads(tmp_path):
    config = load_config(write(tmp_path, VALID))

    assert config.agent.host_id == "mx1"
    assert config.agent.state_dir == str(tmp_path / "state")
    assert config.agent.max_batch_bytes == 8 * 1024 * 1024
    assert config.sources[0].log_format == "combined"
    assert [r.name for r in config.sources[0].routes] == [
        "generic-open", "generic-click", "generic-unsubscribe", "generic-mirror"]


def test_example_config_is_valid():
    config = load_config(Path(__file__).parent.parent / "config.example.toml")
    assert config.sources


@pytest.mark.parametrize(
    ("replace", "by", "key", "message"),
    [
        ('host_id = "mx1"', 'host_id = "../etc"', "agent.host_id", "invalid value '../etc'"),
        ('host_id = "mx1"', "host_id = 3", "agent.host_id", "expected a non-empty string, got 3"),
        ('state_dir = "state"', 'state_dir = "state"\nmax_batch_bytes = "big"',
         "agent.max_batch_bytes", "expected an integer, got 'big'"),
        ('state_dir = "state"', 'state_dir = "state"\nflush_interval_s = 0',
         "agent.flush_interval_s", "value 0 out of range; expected 0.1 to 3600"),
        ('state_dir = "state"', 'state_dir = "state"\nmax_line_byte = 10',
         "agent.max_line_byte", "unknown key"),
        ('url = "file:///srv/clicktrail/store"', 'url = "ftp://x/y"', "store.url",
         "unsupported scheme in 'ftp://x/y'"),
        ('kind = "access_log"', 'kind = "sendmail"', "sources[0].kind",
         "invalid value 'sendmail'; expected one of: access_log, postfix"),
        ('name = "tracking"', 'name = "a/b"', "sources[0].name", "invalid value 'a/b'"),
        ('paths = ["/var/log/apache2/access.log*"]', "paths = []", "sources[0].paths",
         "expected at least one entry"),
        ('routes = "generic"', 'routes = "wordpress"', "sources[0].routes",
         "unknown preset 'wordpress'"),
        ('routes = "generic"', 'routes = "generic"\nlog_format = "%h %u"', "sources[0].log_format",
         "has no time directive"),
        ('routes = "generic"', 'routes = "generic"\nlog_format = "%h %t %Y %r %s"',
         "sources[0].log_format", "unsupported directive '%Y'"),
        ('routes = "generic"',
         "routes = \"generic\"\n[[sources.route]]\nevent = \"open\"\npattern = '^/o/(?P<x>\\\\w+)'",
         "sources[0].route[0].pattern", "unknown named group(s) ['x']"),
        ('routes = "generic"',
         "routes = \"generic\"\n[[sources.route]]\nevent = \"open\"\npattern = '^/o/(?=a)'",
         "sources[0].route[0].pattern", "not supported by the RE2 engine"),
        ('routes = "generic"',
         "routes = \"generic\"\n[[sources.route]]\nevent = \"open\"\npattern = '^/o/(\\w+)'",
         "sources[0].route[0].pattern", "every group must be named"),
        ('routes = "generic"',
         "routes = \"generic\"\n[[sources.route]]\nevent = \"view\"\npattern = '^/v'",
         "sources[0].route[0].event", "invalid value 'view'"),
        ('routes = "generic"',
         "routes = \"generic\"\n[[sources.route]]\nevent = \"open\"\n"
         "pattern = '^/o/(?P<token>\\\\w+)'\ntoken_decode = \"base64url\"",
         "sources[0].route[0].token_fields", "must list what the token holds"),
        ('routes = "generic"', 'routes = "generic"\ntimezone = "Mars/Olympus"',
         "sources[0].timezone", "unknown time zone 'Mars/Olympus'"),
    ],
    ids=["host-path", "host-type", "batch-type", "flush-range", "unknown-key", "store-scheme",
         "kind", "source-name", "paths-empty", "preset", "format-no-time", "format-directive",
         "route-group", "route-re2", "route-unnamed-group", "route-event", "route-token-fields", "timezone"],
)
def test_invalid_value_names_key(tmp_path, replace, by, key, message):
    assert replace in VALID
    path = write(tmp_path, VALID.replace(replace, by, 1))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.key == key
    assert str(caught.value).startswith(f"{path}: {key}: ")
    assert message in str(caught.value)


def test_password_in_config_rejected(tmp_path):
    path = write(tmp_path, VALID + '\n[email]\nsmtp_host = "127.0.0.1"\nfrom = "a@example.com"\n'
                 'password = "hunter2"\n')
    path.chmod(0o600)

    with pytest.raises(ConfigError, match="passwords are not read from the config file"):
        load_config(path)


def test_check_config_exit_78(tmp_path):
    path = write(tmp_path, VALID.replace('kind = "access_log"', 'kind = "sendmail"'))

    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])

    assert result.exit_code == 78
    assert result.output == (
        f"Error: invalid configuration: {path}: sources[0].kind: invalid value 'sendmail'; "
        "expected one of: access_log, postfix, exim, powermta, kumomta\n")


def test_check_config_missing_file(tmp_path):
    result = CliRunner().invoke(main, ["check-config", "--config", str(tmp_path / "nope.toml")])

    assert result.exit_code == 78
    assert "nope.toml: file not found" in result.output


def test_check_config_bad_toml(tmp_path):
    path = write(tmp_path, "[agent\n")

    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])

    assert result.exit_code == 78
    assert "invalid TOML" in result.output


def test_check_config_ok(tmp_path):
    path = write(tmp_path, VALID)

    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])

    assert result.exit_code == 0
    assert result.output == f"{path}: OK (1 source(s), store file:///srv/clicktrail/store)\n"


def test_secret_in_store_url_rejected_not_echoed(tmp_path):
    path = write(tmp_path, VALID.replace('url = "file:///srv/clicktrail/store"',
                                         'url = "s3://AKIAX:s3cr3tvalue@bucket/prefix"'))

    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])

    assert result.exit_code == 78
    assert "store.url: credentials in the URL are not accepted" in result.output
    assert "s3cr3tvalue" not in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[agent]\nhost_id = \"caf\xe9\"\n", "not UTF-8 text"),
        (VALID.replace('state_dir = "state"', 'state_dir = "a\\u0000b"').encode(),
         "agent.state_dir: invalid value 'a\\x00b': contains a NUL character"),
    ],
    ids=["latin1-file", "nul-in-path"],
)
def test_unreadable_values_exit_78(tmp_path, content, message):
    path = tmp_path / "clicktrail.toml"
    path.write_bytes(content)

    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])

    assert result.exit_code == 78
    assert message in result.output


def test_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "state").write_text("not a folder")
    path = write(tmp_path, VALID)

    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])

    assert result.exit_code == 78
    assert "agent.state_dir: invalid value 'state': it is a file" in result.output


MTA = """
[agent]
state_dir = "state"
[store]
url = "file:///srv/clicktrail/store"
[[sources]]
name = "mta"
kind = "postfix"
paths = ["/var/log/mail.log*"]
"""


def test_bounce_rules_are_read(tmp_path):
    path = write(tmp_path, MTA + '[[sources.bounce_rule]]\npattern = "over quota"\n'
                 'bounce_type = "soft"\nbounce_reason = "mailbox_full"\n')

    config = load_config(path)

    assert config.sources[0].bounce_rules == (("over quota", "soft", "mailbox_full"),)


def test_bounce_rule_with_unknown_reason(tmp_path):
    path = write(tmp_path, MTA + '[[sources.bounce_rule]]\npattern = "x"\n'
                 'bounce_type = "soft"\nbounce_reason = "spam"\n')

    with pytest.raises(ConfigError, match=r"sources\[0\]\.bounce_rule\[0\]: bounce_reason must be "
                                          r"one of"):
        load_config(path)


def test_report_memory_limit(tmp_path):
    default = load_config(write(tmp_path, VALID))
    small = write(tmp_path, VALID + "\n[report]\nmax_memory_bytes = 1000\n")

    assert default.report.max_memory_bytes == 4 * 1024**3
    with pytest.raises(ConfigError, match=r"report\.max_memory_bytes: value 1000 out of range"):
        load_config(small)


# --- secrets in a config file that every user can read ----------------------------------------

SECRET_VALUE = "hunter2-not-echoed"
ROUTE_WITH_TOKEN = """
[[sources.route]]
event = "open"
pattern = '^/o/(?P<token>[A-Za-z0-9_-]+)\\.gif'
token_decode = "base64url"
token_fields = ["delivery_id", "recipient_id"]
"""


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        pytest.param(f'\n[email]\nsmtp_host = "127.0.0.1"\nfrom = "a@example.com"\n'
                     f'password = "{SECRET_VALUE}"\n', "email.password", id="email-password"),
        pytest.param(f'\n[email]\nsmtp_host = "127.0.0.1"\nfrom = "a@example.com"\n'
                     f'smtp_password = "{SECRET_VALUE}"\n', "email.smtp_password",
                     id="unknown-key"),
        pytest.param(f'secret_access_key = "{SECRET_VALUE}"\n', "store.secret_access_key",
                     id="s3-secret"),
        pytest.param(f'aws_access_key_id = "{SECRET_VALUE}"\n', "store.aws_access_key_id",
                     id="access-key"),
        pytest.param(f'\n[extra]\nApi-Key = "{SECRET_VALUE}"\n', "extra.Api-Key", id="api-key"),
        pytest.param(ROUTE_WITH_TOKEN + f'auth_token = "{SECRET_VALUE}"\n',
                     "sources[0].route[0].auth_token", id="nested-token"),
    ],
)
def test_world_readable_secret_rejected(tmp_path, extra, key):
    # Keys of [store] go right after its url line.
    text = (VALID.replace('url = "file:///srv/clicktrail/store"\n',
                          'url = "file:///srv/clicktrail/store"\n' + extra)
            if not extra.startswith(("\n", ROUTE_WITH_TOKEN)) else VALID + extra)
    path = write(tmp_path, text)
    path.chmod(0o644)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{path}: {key}: this key looks like a secret")
    assert "mode 0644" in message
    assert f"chmod 640 {path}" in message
    assert "password_env or password_file" in message
    assert SECRET_VALUE not in message


def test_secret_in_protected_file_gets_key_error(tmp_path):
    path = write(tmp_path, VALID.replace('url = "file:///srv/clicktrail/store"\n',
                                         'url = "file:///srv/clicktrail/store"\n'
                                         f'secret_access_key = "{SECRET_VALUE}"\n'))
    path.chmod(0o640)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.key == "store.secret_access_key"
    assert "unknown key" in str(caught.value)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param('\n[email]\nsmtp_host = "127.0.0.1"\nfrom = "a@example.com"\n'
                     'password_env = "SMTP_PASSWORD"\n', id="password-env"),
        pytest.param('\n[email]\nsmtp_host = "127.0.0.1"\nfrom = "a@example.com"\n'
                     'password_file = "/run/credentials/smtp"\n', id="password-file"),
        pytest.param(ROUTE_WITH_TOKEN, id="route-token-keys"),
    ],
)
def test_world_readable_without_secret_loads(tmp_path, extra):
    path = write(tmp_path, VALID + extra)
    path.chmod(0o644)

    config = load_config(path)

    assert config.sources[0].name == "tracking"


def test_readable_secret_exits_78_in_both_commands(tmp_path):
    from clicktrail.reporter.cli import main as report_main

    path = write(tmp_path, VALID + f'\n[email]\nsmtp_host = "127.0.0.1"\nfrom = "a@example.com"\n'
                 f'password = "{SECRET_VALUE}"\n')
    path.chmod(0o604)

    agent = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    report = CliRunner().invoke(report_main, ["purge", "--config", str(path),
                                              "--before", "2026-01-01", "--dry-run"])

    for result in (agent, report):
        assert result.exit_code == 78, result.output
        assert f"{path}: email.password: this key looks like a secret" in result.output
        assert f"chmod 640 {path}" in result.output
        assert SECRET_VALUE not in result.output
