"""WeasyPrint fetches nothing from the network: a page that links remote images and stylesheets
renders without a single connection, and file URLs outside the template assets are rejected."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
from clicktrail.reporter.render import make_url_fetcher
from weasyprint import HTML


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def test_remote_image_and_stylesheet_not_fetched(tmp_path, listener, caplog):
    assets = tmp_path / "assets"
    assets.mkdir()
    secret = tmp_path / "secret.css"
    secret.write_text("body { color: red }")
    base = f"http://127.0.0.1:{listener.port}"
    page = (f'<html><head><link rel="stylesheet" href="{base}/style.css">'
            f'<link rel="stylesheet" href="file://{secret}"></head>'
            f'<body><img src="{base}/pixel.gif"><p>hello</p>'
            '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
            "</body></html>")

    with caplog.at_level(logging.WARNING, logger="weasyprint"):
        pdf = HTML(string=page, url_fetcher=make_url_fetcher(assets)).write_pdf()

    assert pdf.startswith(b"%PDF")
    assert listener.connections == 0
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "rejected non-local URL" in messages
    assert "rejected file URL outside the template assets" in messages
