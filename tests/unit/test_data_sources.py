"""fetch() on local sources (file:// and plain paths), redaction, errors. HTTP is in tests/integration."""

import hashlib

import pytest

from candle_ray.data.sources import Fetched, fetch, file_digests, local_path, redact
from candle_ray.data.spec import Source
from candle_ray.errors import ChecksumError, DownloadError

CONTENT = b"1,0.5,2.0\n0,1.5,0.0\n"


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def local_file(tmp_path):
    path = tmp_path / "data" / "nt_train2.csv"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path


def test_file_url_is_used_in_place_with_its_hashes(local_file, tmp_path):
    dest = tmp_path / "downloads"
    got = fetch(Source(local_file.as_uri()), dest)
    assert isinstance(got, Fetched)
    assert got.path == local_file
    assert got.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert got.md5 == hashlib.md5(CONTENT).hexdigest()
    assert got.bytes == len(CONTENT)
    assert not dest.exists() or not any(dest.iterdir()), "a file:// source must not be copied"


def test_plain_path_is_a_local_source(local_file, tmp_path):
    got = fetch(Source(str(local_file)), tmp_path / "downloads")
    assert got.path == local_file and got.bytes == len(CONTENT)


def test_declared_checksums_that_match_are_accepted(local_file, tmp_path):
    source = Source(local_file.as_uri(), md5=hashlib.md5(CONTENT).hexdigest(), sha256=hashlib.sha256(CONTENT).hexdigest().upper())
    assert fetch(source, tmp_path).sha256 == hashlib.sha256(CONTENT).hexdigest()


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_local_checksum_mismatch_raises_and_keeps_the_users_file(local_file, tmp_path, algo):
    wrong = "0" * (32 if algo == "md5" else 64)
    with pytest.raises(ChecksumError) as error:
        fetch(Source(local_file.as_uri(), **{algo: wrong}), tmp_path / "downloads")
    message = one_line(error)
    assert algo in message and wrong in message and local_file.as_uri() in message
    assert local_file.read_bytes() == CONTENT


def test_missing_local_file_is_a_download_error(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DownloadError) as error:
        fetch(Source(missing.as_uri()), tmp_path)
    assert str(missing) in one_line(error) and "no such file" in str(error.value)


def test_directory_is_not_a_source(tmp_path):
    with pytest.raises(DownloadError, match="directory"):
        fetch(Source(str(tmp_path)), tmp_path / "d")


def test_unsupported_scheme(tmp_path):
    with pytest.raises(DownloadError) as error:
        fetch(Source("s3://bucket/key.csv"), tmp_path)
    assert "s3" in one_line(error)


def test_redact_strips_credentials_and_secret_query_values():
    assert redact("https://alice:s3cret@example.org:8443/a/b.csv") == "https://example.org:8443/a/b.csv"
    safe = redact("https://example.org/f.csv?X-Amz-Signature=abc123&token=zzz&part=2")
    assert "abc123" not in safe and "zzz" not in safe and "part=2" in safe
    assert redact("file:///tmp/x.csv") == "file:///tmp/x.csv"


def test_local_path():
    assert str(local_path("file:///tmp/a%20b.csv")) == "/tmp/a b.csv"
    assert local_path("http://x/y.csv") is None
    assert str(local_path("rel/x.csv")) == "rel/x.csv"


def test_file_digests_follow_content_changes(local_file):
    first = file_digests(local_file)
    local_file.write_bytes(CONTENT + b"1,2,3\n")
    assert file_digests(local_file) != first
    assert file_digests(local_file)[0] == hashlib.sha256(CONTENT + b"1,2,3\n").hexdigest()
