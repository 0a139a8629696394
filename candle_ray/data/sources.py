"""Fetch one `Source` to a local file, with checksums.

http(s) and ftp URLs are downloaded (urllib, streamed) into a destination folder; file:// URLs and
plain paths are used where they are, never copied (a multi-GB matrix on a shared filesystem should
not be duplicated into the cache). Both md5 (CANDLE's `get_file` publishes md5 hashes) and sha256
are computed in the same pass over the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from candle_ray.data.spec import URL_SCHEMES, Source
from candle_ray.errors import ChecksumError, DownloadError

CHUNK = 1 << 20
TIMEOUT_S = 60.0
# Query parameters that carry secrets in pre-signed or token URLs (S3, GCS, MoDaC, SAS ...).
_SECRET_QUERY = re.compile(r"(token|key|sig|signature|secret|password|credential|auth)", re.IGNORECASE)


@dataclass(frozen=True)
class Fetched:
    """A local file for a source: where it is, the URL it came from (credentials removed), its digests."""

    path: Path
    url: str
    sha256: str
    md5: str
    bytes: int


def redact(url: str) -> str:
    """The URL without user:password@ and with secret-looking query values masked: safe to log or record."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = urllib.parse.urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def local_path(url: str) -> Path | None:
    """The filesystem path of a file:// URL or a plain path; None for a remote URL."""
    if url.startswith("file://"):
        parts = urllib.parse.urlsplit(url)
        return Path(urllib.request.url2pathname(parts.path))
    if url.startswith(URL_SCHEMES) or "://" in url:
        return None
    return Path(url).expanduser()


# Hashing a multi-GB local file is the slowest part of fingerprinting; remember it per (path, stat).
_DIGESTS: dict[tuple, tuple[str, str, int]] = {}


def file_digests(path: Path) -> tuple[str, str, int]:
    """(sha256, md5, size) of a local file, memoised on its inode, size and mtime."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                sha.update(block)
                md5.update(block)
                size += len(block)
        _DIGESTS[key] = (sha.hexdigest(), md5.hexdigest(), size)
    return _DIGESTS[key]


def _mismatch(source: Source, sha256: str, md5: str) -> str | None:
    """A description of the first declared digest that does not match, or None."""
    for algo, actual in (("sha256", sha256), ("md5", md5)):
        expected = getattr(source, algo)
        if expected and expected.lower() != actual:
            return f"{algo} expected {expected.lower()}, got {actual}"
    return None


def sidecar(path: Path) -> Path:
    """Where a download's sha256 is kept beside it (trust on first use for sources declared without one)."""
    return path.with_name(path.name + ".sha256")


def _basename(url: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not name or name in (".", ".."):
        raise DownloadError(f"cannot name a local file after {redact(url)}: the URL has no file name; point the source at a file")
    return name


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _fetch_local(source: Source, path: Path, log) -> Fetched:
    if not path.is_file():
        why = "it is a directory" if path.is_dir() else "no such file"
        raise DownloadError(f"cannot read source {source.url}: {why}; check the path (relative paths are relative to the experiment file)")
    sha256, md5, size = file_digests(path)
    if (bad := _mismatch(source, sha256, md5)) is not None:
        raise ChecksumError(f"checksum mismatch for {source.url}: {bad}; the file changed or the declared checksum is wrong, fix one of them")
    if log:
        log(f"using local file {path} ({size:,} bytes)")
    return Fetched(path=path, url=source.url, sha256=sha256, md5=md5, bytes=size)


def _cached(source: Source, final: Path) -> Fetched | None:
    """The already-downloaded file, if it matches the declared checksum or, lacking one, its sidecar."""
    if not final.is_file():
        return None
    sha256, md5, size = file_digests(final)
    if source.sha256 or source.md5:
        ok = _mismatch(source, sha256, md5) is None
    else:
        try:
            ok = sidecar(final).read_text().split()[0] == sha256
        except (OSError, IndexError):
            ok = False
    return Fetched(path=final, url=redact(source.url), sha256=sha256, md5=md5, bytes=size) if ok else None


def _open(url: str):
    """urlopen with a timeout; credentials in an http(s) URL become a Basic Authorization header
    (urllib would otherwise try to connect to host 'user:pass@host')."""
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": "candle-ray"}
    if parts.scheme in ("http", "https") and parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _download(source: Source, final: Path, log) -> Fetched:
    safe = redact(source.url)
    part = final.with_name(f"{final.name}.part-{os.getpid()}")
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    start = time.monotonic()
    if log:
        log(f"downloading {safe} -> {final}")
    try:
        try:
            with _open(source.url) as response, open(part, "wb") as out:
                expected = response.headers.get("Content-Length") if hasattr(response, "headers") else None
                while block := response.read(CHUNK):
                    out.write(block)
                    sha.update(block)
                    md5.update(block)
                    size += len(block)
                out.flush()
                os.fsync(out.fileno())
            if expected is not None and expected.isdigit() and int(expected) != size:
                raise DownloadError(f"cannot download {safe}: connection closed after {size:,} of {int(expected):,} bytes; retry the command")
        except urllib.error.HTTPError as e:
            raise DownloadError(f"cannot download {safe}: HTTP {e.code} {_one_line(e.reason)}; check the URL (and credentials, if the server needs them)") from None
        except urllib.error.URLError as e:
            raise DownloadError(f"cannot download {safe}: {_one_line(e.reason)}; check the URL and the network, or download the file yourself and point the source at the local path") from None
        except (socket.timeout, TimeoutError):
            raise DownloadError(f"cannot download {safe}: no data for {TIMEOUT_S:.0f} s (timeout); retry, or download the file yourself and point the source at the local path") from None
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise DownloadError(f"cannot download {safe}: {_one_line(e)}; check the URL, the network and free space in {final.parent}") from None
        sha256, md5_hex = sha.hexdigest(), md5.hexdigest()
        if (bad := _mismatch(source, sha256, md5_hex)) is not None:
            raise ChecksumError(f"checksum mismatch for {safe}: {bad}; the download is corrupt or the declared checksum is out of date, retry or fix the checksum")
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    # The sidecar lets a later fetch without a declared checksum trust the file (trust on first use).
    tmp = sidecar(final).with_name(f"{sidecar(final).name}.part-{os.getpid()}")
    tmp.write_text(f"{sha256}  {final.name}\n")
    os.replace(tmp, sidecar(final))
    if log:
        seconds = max(time.monotonic() - start, 1e-9)
        log(f"downloaded {size:,} bytes in {seconds:.1f} s ({size / seconds / 1e6:.1f} MB/s)")
    return Fetched(path=final, url=safe, sha256=sha256, md5=md5_hex, bytes=size)


def fetch(source: Source, dest_dir: Path, *, log: Callable[[str], None] | None = None) -> Fetched:
    """Make `source` available as a local file and return it with its digests.

    Remote files go to `dest_dir/<basename>` (skipped when already there and verified); local files
    are returned in place. Raises DownloadError (unreachable, HTTP error, missing file) or
    ChecksumError (declared md5/sha256 does not match; no partial file is left behind).
    """
    path = local_path(source.url)
    if path is not None:
        return _fetch_local(source, path, log)
    if not source.url.startswith(URL_SCHEMES):
        scheme = source.url.split("://", 1)[0]
        raise DownloadError(f"cannot fetch {redact(source.url)}: unsupported URL scheme {scheme!r}; use http://, https://, ftp://, file:// or a local path")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / _basename(source.url)
    if (hit := _cached(source, final)) is not None:
        if log:
            log(f"using downloaded {final} ({hit.bytes:,} bytes, checksum ok)")
        return hit
    return _download(source, final, log)
