"""Where fetch finds each file: data/ first, then mirrors, then the URL (a local server, never the internet)."""

import hashlib
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from brainmri.config import FetchConfig, SourceConfig, SyntheticConfig
from brainmri.dataset.fetch import FetchError, fetch_sources, fetched_archives


def _source(name="a.zip", **file):
    return SourceConfig(format="image_folder", files=[{"name": name, **file}], labels={"no": "no_tumor"})


def _cfg(tmp_path, mirrors=()):
    return FetchConfig(data_dir=tmp_path / "data", mirrors=list(mirrors), out_dir=tmp_path / "raw")


def test_data_folder_wins_over_mirror_and_checksums_are_verified(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "data" / "a.zip").write_bytes(b"from data")
    (tmp_path / "mirror" / "a.zip").write_bytes(b"from mirror")
    digest = hashlib.sha256(b"from data").hexdigest()
    fetched = fetch_sources({"s": _source(sha256=digest)}, _cfg(tmp_path, [tmp_path / "mirror"]), SyntheticConfig())
    assert fetched[0].origin.startswith("data:")
    assert (tmp_path / "raw" / "s" / "a.zip").read_bytes() == b"from data"
    assert fetched_archives(tmp_path / "raw") == {"s": [tmp_path / "raw" / "s" / "a.zip"]}
    record = json.loads((tmp_path / "raw" / "fetch.json").read_text())[0]
    assert record["sha256"] == digest


def test_mirror_is_used_and_a_bad_checksum_fails_with_both_hashes(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "a.zip").write_bytes(b"from mirror")
    fetched = fetch_sources({"s": _source()}, _cfg(tmp_path, [tmp_path / "mirror"]), SyntheticConfig())
    assert fetched[0].origin.startswith("mirror:")
    with pytest.raises(FetchError, match="md5 mismatch: expected 0+, got"):
        fetch_sources({"s": _source(md5="0" * 32)}, _cfg(tmp_path, [tmp_path / "mirror"]), SyntheticConfig())


def test_url_is_the_last_resort(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.zip").write_bytes(b"downloaded")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.zip"
        source = _source(url=url, md5=hashlib.md5(b"downloaded").hexdigest())
        fetched = fetch_sources({"s": source}, _cfg(tmp_path), SyntheticConfig())
    finally:
        server.shutdown()
        server.server_close()
    assert fetched[0].origin == f"url:{url}"
    assert (tmp_path / "raw" / "s" / "a.zip").read_bytes() == b"downloaded"
