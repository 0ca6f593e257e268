"""The S3 store against moto's standalone server: uploads, errors, credentials, no IMDS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from clicktrail.agent.cli import main as agent_main
from clicktrail.agent.store import StoreError, classify_error, open_store, upload_file
from clicktrail.reporter.cli import main as report_main

from . import s3_server
from .conftest import EXAMPLES, copy_logs, demo_config_text, write_config
from .s3_server import REGION, free_port
from .test_end_to_end import EXPECTED, figure, pdf_text

# Fixtures from s3_server, bound here so that pytest finds them in this module.
auth_server = s3_server.auth_server
moto_factory = s3_server.moto_factory
moto_server = s3_server.moto_server
s3_bucket = s3_server.s3_bucket
s3_env = s3_server.s3_env

# Error texts that pyarrow 26 raised against real servers on 127.0.0.1. moto 5.2 produced the
# bucket and credential cases, a closed port the refused connection, and a listener that never
# replied the timeout (after about 8 s). StubS3 below produced the 5xx and 429
# cases, sending S3-style XML error bodies (SlowDown, InternalError) and two codes that the
# AWS SDK does not know, to show the "(HTTP status N)" form.
OBSERVED_ERRORS = [
    pytest.param(
        "When uploading object with key 'p/a.parquet' in bucket 'nobkt': AWS Error "
        "NO_SUCH_BUCKET during PutObject operation: The specified bucket does not exist "
        "(Request ID: sZzTpucym6aBL8kf1DreLmq2l6XAVdJMiQyhUOiMYtK8AlOR03YY)",
        False, "NO_SUCH_BUCKET", id="no-such-bucket"),
    pytest.param(
        "When uploading object with key 'r/a.parquet' in bucket 'bkt': AWS Error "
        "INVALID_ACCESS_KEY_ID during PutObject operation: The AWS Access Key Id you provided "
        "does not exist in our records. (Request ID: Rkw7Kp)",
        False, "INVALID_ACCESS_KEY_ID", id="unknown-access-key"),
    pytest.param(
        "When uploading object with key 'r/a.parquet' in bucket 'bkt': AWS Error "
        "SIGNATURE_DOES_NOT_MATCH during PutObject operation: The request signature we "
        "calculated does not match the signature you provided. Check your key and signing "
        "method. (Request ID: EPiIkK)",
        False, "SIGNATURE_DOES_NOT_MATCH", id="wrong-secret-key"),
    pytest.param(
        "When uploading object with key 'r/a.parquet' in bucket 'bkt': AWS Error "
        "ACCESS_DENIED during PutObject operation: Access Denied (Request ID: RNOy8Z)",
        False, "ACCESS_DENIED", id="access-denied"),
    pytest.param(
        "When getting information for key 'r/a.parquet' in bucket 'bkt': AWS Error "
        "ACCESS_DENIED during HeadObject operation: No response body.",
        False, "ACCESS_DENIED", id="access-denied-head"),
    pytest.param(
        "When uploading object with key 'p/a' in bucket 'bkt': AWS Error NETWORK_CONNECTION "
        "during PutObject operation: curlCode: 7, Could not connect to server; Details: Failed "
        "to connect to 127.0.0.1:45199 after 0 ms: Could not connect to server",
        True, "NETWORK_CONNECTION", id="connection-refused"),
    pytest.param(
        "When uploading object with key 'r/a.parquet' in bucket 'bkt': AWS Error "
        "NETWORK_CONNECTION during PutObject operation: curlCode: 28, Timeout was reached; "
        "Details: Operation too slow. Less than 1 bytes/sec transferred the last 2 seconds",
        True, "NETWORK_CONNECTION", id="timeout"),
    pytest.param(
        "When uploading object with key 'r/a.parquet' in bucket 'bkt': AWS Error SLOW_DOWN "
        "during PutObject operation: Please reduce your request rate. (Request ID: 1)",
        True, "SLOW_DOWN", id="503-slow-down"),
    pytest.param(
        "When uploading object with key 'r/a.parquet' in bucket 'bkt': AWS Error "
        "INTERNAL_FAILURE during PutObject operation: We encountered an internal error. "
        "Please try again. (Request ID: 1)",
        True, "INTERNAL_FAILURE", id="500-internal-error"),
    pytest.param(
        "When uploading object with key 'r/a.parquet' in bucket 'bkt': AWS Error UNKNOWN "
        "(HTTP status 429) during PutObject operation: Unable to parse ExceptionName: "
        "TooManyRequests Message: Too many (Request ID: 1)",
        True, "HTTP 429", id="429-unnamed"),
    pytest.param(
        "When uploading object with key 'r/a.parquet' in bucket 'bkt': AWS Error UNKNOWN "
        "(HTTP status 502) during PutObject operation: Unable to parse ExceptionName: "
        "BadGateway Message: x (Request ID: 1)",
        True, "HTTP 502", id="502-unnamed"),
    # Not observed with pyarrow 26: an unnamed 403, and the "HTTP response code" form.
    pytest.param(
        "AWS Error UNKNOWN (HTTP status 403) during PutObject operation: Unable to parse",
        False, "HTTP 403", id="403-unnamed"),
    pytest.param(
        "When completing multiple part upload: AWS Error UNKNOWN. HTTP response code: 503",
        True, "HTTP 503", id="response-code-wording"),
]


@pytest.mark.parametrize(("text", "transient", "code"), OBSERVED_ERRORS)
def test_classify_observed_errors(text, transient, code):
    assert classify_error(OSError(text)) == (transient, code)


@pytest.mark.parametrize(("exc", "transient"), [
    pytest.param(PermissionError(13, "Permission denied"), False, id="permission"),
    pytest.param(OSError(30, "Read-only file system"), False, id="read-only"),
    pytest.param(OSError(28, "No space left on device"), True, id="disk-full"),
])
def test_classify_local_errors(exc, transient):
    assert classify_error(exc)[0] is transient


def test_open_store_disables_imds_lookup(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "placeholder")
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")

    open_store("s3://bucket/prefix", "http://127.0.0.1:9", "us-east-1")

    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"


def test_open_store_keeps_operator_imds_choice(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")

    open_store("s3://bucket/prefix", "http://127.0.0.1:9", "us-east-1")

    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "false"


def test_open_store_rejects_s3_url_without_bucket():
    with pytest.raises(StoreError, match="bucket name is missing") as raised:
        open_store("s3:///prefix")
    assert raised.value.transient is False


def test_open_store_s3_root_and_endpoint():
    store = open_store("s3://bucket/some/prefix/", "http://127.0.0.1:9000", "eu-west-3")

    assert store.root == "bucket/some/prefix"
    assert store.path("events/x.parquet") == "bucket/some/prefix/events/x.parquet"
    assert isinstance(store.filesystem, pafs.S3FileSystem)
    assert store.filesystem.region == "eu-west-3"


def write_parquet(path, rows: int) -> None:
    pq.write_table(pa.table({"n": list(range(rows))}), path)


def test_upload_is_one_put(moto_server, s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/prefix", moto_server.endpoint, REGION)
    local = tmp_path / "a.parquet"
    write_parquet(local, 10)

    size = upload_file(store, str(local), "events/event_date=2026-12-04/a.parquet")

    assert size == local.stat().st_size
    requests = [line for line in moto_server.request_log() if f"/{s3_bucket}/" in line]
    assert len(requests) == 1
    assert f'"PUT /{s3_bucket}/prefix/events/event_date=2026-12-04/a.parquet HTTP/1.1" 200' \
        in requests[0]


def test_reupload_replaces_object(moto_server, s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/prefix", moto_server.endpoint, REGION)
    first = tmp_path / "first.parquet"
    second = tmp_path / "second.parquet"
    write_parquet(first, 3)
    write_parquet(second, 5)
    relative = "events/event_date=2026-12-04/mx1-tracking-g1-0.parquet"

    upload_file(store, str(first), relative)
    upload_file(store, str(second), relative)

    listing = store.filesystem.get_file_info(pafs.FileSelector(store.root, recursive=True))
    files = [info.path for info in listing if info.type == pafs.FileType.File]
    assert files == [store.path(relative)]
    table = ds.dataset(store.path("events"), filesystem=store.filesystem, format="parquet",
                       partitioning="hive").to_table()
    assert table.num_rows == 5


def test_upload_to_missing_bucket_is_permanent(moto_server, s3_env, tmp_path):
    store = open_store("s3://no-such-bucket-here/prefix", moto_server.endpoint, REGION)
    local = tmp_path / "a.parquet"
    write_parquet(local, 1)

    with pytest.raises(StoreError) as raised:
        upload_file(store, str(local), "events/a.parquet")

    assert raised.value.transient is False
    assert raised.value.code == "NO_SUCH_BUCKET"
    assert raised.value.object_name == "events/a.parquet"
    assert "s3://no-such-bucket-here/prefix" in str(raised.value)


def test_upload_to_closed_port_is_transient(s3_env, tmp_path):
    store = open_store("s3://bucket/prefix", f"http://127.0.0.1:{free_port()}", REGION,
                       max_attempts=1)
    local = tmp_path / "a.parquet"
    write_parquet(local, 1)

    with pytest.raises(StoreError) as raised:
        upload_file(store, str(local), "events/a.parquet")

    assert raised.value.transient is True
    assert raised.value.code == "NETWORK_CONNECTION"


class StubS3(BaseHTTPRequestHandler):
    """Reply to every PUT with the S3 error set on the server (status, code, message)."""

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, code, message = self.server.error  # type: ignore[attr-defined]
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{message}</Message><RequestId>stub</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


@pytest.mark.parametrize(("error", "code"), [
    pytest.param((503, "SlowDown", "Please reduce your request rate."), "SLOW_DOWN",
                 id="503-slow-down"),
    pytest.param((500, "InternalError", "We encountered an internal error."),
                 "INTERNAL_FAILURE", id="500-internal-error"),
    pytest.param((429, "TooManyRequests", "Too many requests"), "HTTP 429", id="429"),
])
def test_server_errors_are_transient(s3_env, tmp_path, error, code):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubS3)
    server.error = error  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    store = open_store("s3://bucket/prefix", f"http://127.0.0.1:{server.server_address[1]}",
                       REGION, max_attempts=1)
    local = tmp_path / "a.parquet"
    write_parquet(local, 1)

    try:
        with pytest.raises(StoreError) as raised:
            upload_file(store, str(local), "events/a.parquet")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    assert raised.value.transient is True
    assert raised.value.code == code


def upload_with(server, bucket, tmp_path, name="events/a.parquet"):
    store = open_store(f"s3://{bucket}/prefix", server.endpoint, REGION, max_attempts=1)
    local = tmp_path / "a.parquet"
    write_parquet(local, 1)
    return upload_file(store, str(local), name)


def test_credentials_from_environment(auth_server, monkeypatch, tmp_path):
    server, bucket, users = auth_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", users["writer"][0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", users["writer"][1])

    assert upload_with(server, bucket, tmp_path) > 0


def test_credentials_from_shared_file_profile(auth_server, monkeypatch, tmp_path):
    server, bucket, users = auth_server
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {users['nobody'][0]}\n"
                           f"aws_secret_access_key = {users['nobody'][1]}\n\n"
                           f"[clicktrail]\naws_access_key_id = {users['writer'][0]}\n"
                           f"aws_secret_access_key = {users['writer'][1]}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "clicktrail")

    assert upload_with(server, bucket, tmp_path) > 0


@pytest.mark.parametrize(("user", "secret", "code"), [
    pytest.param("unknown", None, "INVALID_ACCESS_KEY_ID", id="unknown-key"),
    pytest.param("writer", "wrong-secret-key-0123456789", "SIGNATURE_DOES_NOT_MATCH",
                 id="wrong-secret"),
    pytest.param("nobody", None, "ACCESS_DENIED", id="no-permission"),
])
def test_bad_credentials_are_permanent(auth_server, monkeypatch, tmp_path, user, secret, code):
    server, bucket, users = auth_server
    access_key, real_secret = users.get(user, ("AKIAUNKNOWNUNKNOWN00", "unknown-secret-000"))
    secret = secret or real_secret
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    with pytest.raises(StoreError) as raised:
        upload_with(server, bucket, tmp_path)

    assert raised.value.transient is False
    assert raised.value.code == code
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value.__cause__)


IMDS_PROBE = """
import sys
from clicktrail.agent.store import open_store, upload_file
store = open_store(sys.argv[1], sys.argv[2], None, max_attempts=1)
try:
    upload_file(store, sys.argv[3], "probe.bin")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def run_imds_probe(tmp_path, endpoint, bucket, imds_setting):
    """Upload once in a fresh process with no credentials nor region; return IMDS hits."""
    hits = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        # Reply 404 at once to each metadata request, so that the probe run stays short.
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                hits.append(connection.recv(4096).split(b"\r\n", 1)[0].decode())
                connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    local = tmp_path / "probe.bin"
    local.write_bytes(b"probe")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "NO_PROXY": "127.0.0.1",
           "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{listener.getsockname()[1]}"}
    if imds_setting is not None:
        env["AWS_EC2_METADATA_DISABLED"] = imds_setting
    try:
        subprocess.run([sys.executable, "-c", IMDS_PROBE, f"s3://{bucket}", endpoint,
                        str(local)], env=env, check=True, timeout=120, capture_output=True)
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()
    return hits


def test_no_instance_metadata_lookup(moto_server, s3_bucket, tmp_path):
    hits = run_imds_probe(tmp_path, moto_server.endpoint, s3_bucket, imds_setting=None)

    assert hits == []


def test_imds_probe_sees_lookups_when_enabled(moto_server, s3_bucket, tmp_path):
    # The control for the test above: the SDK does send metadata requests to the probe.
    hits = run_imds_probe(tmp_path, moto_server.endpoint, s3_bucket, imds_setting="false")

    assert any("/latest/" in line for line in hits)


def s3_demo_config(workdir, endpoint, bucket):
    """The demo config with its store moved to s3://bucket/demo on the given endpoint."""
    text = write_config(workdir, demo_config_text(
        tracking_paths=str(workdir / "logs" / "tracking_rich.log*"),
        mta_paths=str(workdir / "logs" / "postfix.log*"))).read_text()
    text = text.replace(f'url = "{workdir / "store"}"',
                        f'url = "s3://{bucket}/demo"\nendpoint_override = "{endpoint}"\n'
                        f'region = "{REGION}"')
    assert f"s3://{bucket}/demo" in text
    config = workdir / "clicktrail.toml"
    config.write_text(text)
    return config


def test_agent_and_reporter_on_s3(moto_server, s3_bucket, workdir):
    copy_logs("apache/tracking_rich.log*", workdir / "logs")
    copy_logs("postfix/postfix.log*", workdir / "logs")
    config = s3_demo_config(workdir, moto_server.endpoint, s3_bucket)
    catalog = sorted(str(p) for p in (EXAMPLES / "catalog" / "deliveries").glob("*.json"))
    runner = CliRunner()

    once = runner.invoke(agent_main, ["once", "--config", str(config)])
    assert once.exit_code == 0, once.output

    store = open_store(f"s3://{s3_bucket}/demo", moto_server.endpoint, REGION)
    listing = store.filesystem.get_file_info(pafs.FileSelector(store.path("events"),
                                                               recursive=True))
    objects = [info.path for info in listing if info.type == pafs.FileType.File]
    assert objects
    for name in objects:
        assert name.startswith(f"{s3_bucket}/demo/events/event_date=")
        assert name.endswith(".parquet")
    events = ds.dataset(store.path("events"), filesystem=store.filesystem, format="parquet",
                        partitioning="hive").to_table()
    assert events.num_rows > 0
    assert list((workdir / "state" / "spool").rglob("*.parquet")) == []

    for args in (["import-catalog", "--config", str(config), *catalog],
                 ["nightly", "--config", str(config), "--date", "2026-12-04"]):
        result = runner.invoke(report_main, args)
        assert result.exit_code == 0, result.output

    reports = workdir / "reports" / "2026-12-04"
    index = (reports / "index.html").read_text()
    for delivery in ("bb08d0", "7d81d5", "5a4865", "1534f7", "3440b0", "c51a19"):
        assert f'href="delivery-{delivery}.html"' in index
        assert (reports / f"delivery-{delivery}.pdf").exists()
    text = pdf_text(reports / "delivery-bb08d0.pdf")
    assert figure(text, "Delivered") == EXPECTED["postfix_runA"]["bb08d0"]["sent"]
    assert figure(text, "Opens") == EXPECTED["apache_rich"]["bb08d0"]["open"]
