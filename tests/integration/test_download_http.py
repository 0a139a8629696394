"""Downloads over real HTTP (a local server on 127.0.0.1): checksums, errors, reuse, the cache end to end."""

import dataclasses
import hashlib
import socket
import threading

import numpy as np
import pytest

from candle_ray.data import sources
from candle_ray.data.cache import Cache, open_split, verify
from candle_ray.data.sources import fetch
from candle_ray.data.spec import Dataset, Source
from candle_ray.data.synthetic import synthesize
from candle_ray.errors import CacheError, ChecksumError, DownloadError
from tests.support.http_server import serve_directory

pytestmark = pytest.mark.integration

CONTENT = b"".join(b"%d,%d.5,%d\n" % (i % 2, i, i * 3) for i in range(5000))
SHA256 = hashlib.sha256(CONTENT).hexdigest()
MD5 = hashlib.md5(CONTENT).hexdigest()


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "nt_train2.csv").write_bytes(CONTENT)
    with serve_directory(root) as base:
        yield base


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_with_both_checksums_streams_to_the_final_name_and_records_a_sidecar(site, tmp_path):
    dest = tmp_path / "downloads"
    lines = []
    got = fetch(Source(f"{site}/nt_train2.csv", md5=MD5, sha256=SHA256), dest, log=lines.append)
    assert got.path == dest / "nt_train2.csv" and got.path.read_bytes() == CONTENT
    assert (got.sha256, got.md5, got.bytes, got.url) == (SHA256, MD5, len(CONTENT), f"{site}/nt_train2.csv")
    assert leftovers(dest) == ["nt_train2.csv", "nt_train2.csv.sha256"]
    assert (dest / "nt_train2.csv.sha256").read_text().split()[0] == SHA256
    assert any("downloading" in line for line in lines)


def test_a_verified_download_is_not_fetched_again(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "f.csv").write_bytes(CONTENT)
    with serve_directory(root) as base:
        with_sum = Source(f"{base}/f.csv", sha256=SHA256)
        without = Source(f"{base}/f.csv")
        fetch(with_sum, tmp_path / "a")
        fetch(without, tmp_path / "b")
    # The server is gone: both come from disk (declared checksum / sidecar recorded at download).
    lines = []
    assert fetch(with_sum, tmp_path / "a", log=lines.append).sha256 == SHA256
    assert fetch(without, tmp_path / "b", log=lines.append).sha256 == SHA256
    assert all("using downloaded" in line for line in lines)


def test_a_corrupt_earlier_download_is_fetched_again(site, tmp_path):
    dest = tmp_path / "d"
    for source in (Source(f"{site}/nt_train2.csv", sha256=SHA256), Source(f"{site}/nt_train2.csv")):
        fetch(source, dest)
        (dest / "nt_train2.csv").write_bytes(b"garbage")
        lines = []
        assert fetch(source, dest, log=lines.append).sha256 == SHA256
        assert any("downloading" in line for line in lines)
        assert (dest / "nt_train2.csv").read_bytes() == CONTENT


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_checksum_mismatch_raises_and_leaves_no_file(site, tmp_path, algo):
    wrong = "f" * (32 if algo == "md5" else 64)
    dest = tmp_path / "d"
    with pytest.raises(ChecksumError) as error:
        fetch(Source(f"{site}/nt_train2.csv", **{algo: wrong}), dest)
    message = one_line(error)
    actual = MD5 if algo == "md5" else SHA256
    assert f"{site}/nt_train2.csv" in message and wrong in message and actual in message and "retry" in message
    assert leftovers(dest) == []


def test_http_404(site, tmp_path):
    with pytest.raises(DownloadError) as error:
        fetch(Source(f"{site}/missing.csv"), tmp_path / "d")
    message = one_line(error)
    assert "HTTP 404" in message and f"{site}/missing.csv" in message
    assert leftovers(tmp_path / "d") == []


def test_unreachable_url_on_a_closed_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens on `port` any more
    with pytest.raises(DownloadError) as error:
        fetch(Source(f"http://127.0.0.1:{port}/nt_train2.csv"), tmp_path / "d")
    message = one_line(error)
    assert f"http://127.0.0.1:{port}/nt_train2.csv" in message and "refused" in message.lower()
    assert leftovers(tmp_path / "d") == []


def test_a_server_that_never_answers_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "TIMEOUT_S", 0.5)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # the kernel accepts the connection; nobody ever answers
        port = server.getsockname()[1]
        with pytest.raises(DownloadError) as error:
            fetch(Source(f"http://127.0.0.1:{port}/slow.csv"), tmp_path / "d")
    assert "timed out" in one_line(error) or "timeout" in str(error.value)
    assert leftovers(tmp_path / "d") == []


def test_a_connection_closed_early_is_an_error_and_leaves_no_file(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def answer_half():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + b"x" * 400)
        conn.close()

    thread = threading.Thread(target=answer_half, daemon=True)
    thread.start()
    try:
        with pytest.raises(DownloadError) as error:
            fetch(Source(f"http://127.0.0.1:{port}/half.csv"), tmp_path / "d")
        assert f"http://127.0.0.1:{port}/half.csv" in one_line(error)
    finally:
        thread.join(timeout=5)
        server.close()
    assert leftovers(tmp_path / "d") == []


def test_credentials_never_reach_logs_or_records(site, tmp_path):
    url = site.replace("http://", "http://alice:s3cret@") + "/nt_train2.csv?token=abc123"
    lines = []
    got = fetch(Source(url), tmp_path / "d", log=lines.append)
    assert got.path.name == "nt_train2.csv" and got.sha256 == SHA256
    text = " ".join(lines) + got.url
    assert "s3cret" not in text and "alice" not in text and "abc123" not in text
    with pytest.raises(DownloadError) as error:
        fetch(Source(url.replace("nt_train2", "nope")), tmp_path / "d")
    assert "s3cret" not in str(error.value) and "abc123" not in str(error.value)


def test_prepare_from_http_end_to_end(tmp_path):
    """Synthetic NT3 files served over HTTP, prepared into the cache, verified, then a download altered."""
    smoke = synthesize(Dataset(name="nt3", train="x/nt_train2.csv", val="x/nt_test2.csv", classes=2), tmp_path / "syn",
                       rows=(40, 12), features=30)
    cache = Cache(tmp_path / "cache")
    with serve_directory(sources.local_path(smoke.train.url).parent) as base:
        ds = dataclasses.replace(
            smoke,
            train=Source(f"{base}/nt_train2.csv", sha256=smoke.train.sha256),
            val=Source(f"{base}/nt_test2.csv", sha256=smoke.val.sha256),
        )
        entry = cache.prepare(ds, log=lambda m: None)
    assert entry.rows == {"train": 40, "val": 12} and entry.synthetic
    sources_ = entry.manifest["sources"]
    assert sources_["train"]["url"] == f"{base}/nt_train2.csv" and sources_["train"]["sha256"] == smoke.train.sha256
    assert sources_["train"]["download"] == "downloads/nt3-smoke/nt_train2.csv"
    X, y = open_split(entry.path, "train")
    assert X.shape == (40, 30) and np.abs(X).max() <= 1.0
    verify(entry)
    (tmp_path / "cache" / "downloads" / "nt3-smoke" / "nt_test2.csv").write_bytes(b"changed")
    with pytest.raises(CacheError, match="the val download"):
        verify(entry)
