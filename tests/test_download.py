"""Download behaviour against a local HTTP server started by the test (never the internet)."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from brainmri.dataset.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """Serves PAYLOAD with Range support; ``mode`` makes it misbehave on purpose."""

    def __init__(self):
        self.mode = "ok"
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.headers.get("Range"))
                body, status = PAYLOAD, 200
                if outer.mode == "wrong":
                    body = b"x" * len(PAYLOAD)
                start = 0
                if self.headers.get("Range") and outer.mode != "no-range":
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if outer.mode == "drop":
                    self.wfile.write(body[start : start + len(body) // 3])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/archive.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_download_verifies_and_renames(server, tmp_path):
    target = download(server.url, tmp_path / "a.zip", sha256=SHA256, md5=MD5)
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.zip.part").exists()


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.mode = "drop"
    with pytest.raises(DownloadError, match="rerun to resume"):
        download(server.url, tmp_path / "a.zip", sha256=SHA256)
    part = tmp_path / "a.zip.part"
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert not (tmp_path / "a.zip").exists()  # never a half file under the final name
    server.mode = "ok"
    download(server.url, tmp_path / "a.zip", sha256=SHA256)
    assert server.requests[-1] == f"bytes={len(PAYLOAD) // 3}-"
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD[:1000])
    server.mode = "no-range"
    download(server.url, tmp_path / "a.zip", sha256=SHA256)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_wrong_bytes_fail_with_both_hashes_and_leave_nothing(server, tmp_path):
    server.mode = "wrong"
    with pytest.raises(DownloadError) as error:
        download(server.url, tmp_path / "a.zip", sha256=SHA256)
    assert SHA256 in str(error.value) and hashlib.sha256(b"x" * len(PAYLOAD)).hexdigest() in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="unreachable"):
        download("http://127.0.0.1:9/nothing.zip", tmp_path / "a.zip", timeout=2)
