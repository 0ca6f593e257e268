"""A real S3-compatible server for tests: moto's standalone server on 127.0.0.1.

Each MotoServer is a `python -m moto.server` subprocess with its request log in a file, so a
test can count the requests pyarrow sent. Tests use made-up credentials set by monkeypatch and
point the shared AWS files at paths that do not exist, so a developer's ~/.aws never leaks in.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

ACCESS_KEY = "AKIACLICKTRAILTEST01"
SECRET_KEY = "clicktrail-test-secret-5f2b9c0e7a1d"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0

# urllib must not send loopback requests through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MotoServer:
    """One moto server process on 127.0.0.1:port; stop() ends it by its PID."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"moto server on port {self.port} exited with status "
                                   f"{self.process.returncode}; see {self.log_path}")
            try:
                with _OPENER.open(f"{self.endpoint}/moto-api/data.json", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server on port {self.port} did not answer within "
                           f"{START_TIMEOUT_S} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()

    def request_log(self) -> list[str]:
        """Return the request lines ("PUT /bucket/key HTTP/1.1" with status) logged so far."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if '" ' in line and "HTTP/1.1" in line]

    def post_moto_api(self, path: str, body: bytes) -> dict:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/{path}", data=body,
                                         method="POST",
                                         headers={"Content-Type": "text/plain"})
        with _OPENER.open(request, timeout=10) as response:
            return json.loads(response.read())

    def enforce_auth(self) -> None:
        """Make moto check credentials and IAM policies from the next request on."""
        self.post_moto_api("reset-auth", b"0")

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket through pyarrow (so no boto3 is needed) and return its name."""
        import pyarrow.fs as pafs

        name = name or f"ct-{uuid.uuid4().hex[:12]}"
        filesystem = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}",
                                       scheme="http", allow_bucket_creation=True,
                                       access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                       region=REGION)
        filesystem.create_dir(name)
        return name


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Made-up AWS credentials in the environment and no shared AWS files."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for variable in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL",
                     "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                     "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def moto_factory(tmp_path: Path) -> Iterator:
    """Start moto servers on demand (start(port=None)); stop every one at teardown."""
    servers: list[MotoServer] = []

    def start(port: int | None = None) -> MotoServer:
        port = port or free_port()
        server = MotoServer(port, tmp_path / f"moto-{port}-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server shared by a test module; tests use a fresh bucket each."""
    log_dir = tmp_path_factory.mktemp("moto")
    server = MotoServer(free_port(), log_dir / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer, s3_env: None) -> str:
    return moto_server.create_bucket()


@pytest.fixture
def auth_server(moto_factory, s3_env):
    """A moto server that checks credentials: one IAM user with S3 rights, one without."""
    server = moto_factory()
    bucket = server.create_bucket()
    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name=REGION)
    users = {}
    for name, allowed in (("writer", True), ("nobody", False)):
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        users[name] = (key["AccessKeyId"], key["SecretAccessKey"])
        if allowed:
            policy = {"Version": "2012-10-17",
                      "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
            iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
    server.enforce_auth()
    return server, bucket, users
