"""A data cache whose root is an `s3://bucket/prefix` (pyarrow's S3 filesystem; AWS_ENDPOINT_URL for
S3-compatible servers), and the node-local copies that training memory-maps.

In the bucket the layout is a local root's: `datasets/<name>-<fingerprint>/` holds the entry's Arrow
files, scaler.json (matrix entries) and manifest.json. S3 has no rename, so **the manifest is the commit
point**: `prepare` uploads the data files first and the manifest last, and `--force` deletes the old
manifest before it overwrites anything. An entry exists only while its manifest does, and every reader
checks the files it fetches against the manifest's sha256s, so a half-uploaded or overwritten entry
is either invisible or rejected, never used.

On each node, under CANDLE_RAY_NODE_CACHE (default ~/.cache/candle-ray):
  s3-staging/<bucket>/<prefix>/   a local `Cache` where `prepare` builds entries (downloads, synthetic
                                  smoke files, locks) before uploading them
  s3-mirror/<bucket>/<prefix>/datasets/<name>-<fingerprint>@<m>/
                                  a verified copy of one version of an entry (<m>: the first 12 hex of
                                  the sha256 of its manifest), opened exactly like a local entry

An S3 entry's `Entry.path` is its mirror folder, and that path is what runs hand to their workers. The
copy is fetched by an explicit call, never by a read: `prepare` makes it on the driver's node, and a
worker calls `ensure_local(path)` before it opens the entry (candle_ray.loop.train_epochs does, at the
start of every trial), which works out the bucket and key from the path, takes a flock so that the
trials of one node download once, fetches every file into a temporary folder while hashing it, writes
the manifest last and renames the folder into place. The version in the name pins the bytes: an entry
rebuilt with --force in the meantime is refused, not mixed. Reading a manifest
(`cache_format.read_manifest`) never reaches the bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from candle_ray.data.cache import Cache, drop_unused_downloads, verify
from candle_ray.data.cache_format import (DEFAULT_REBUILD, MANIFEST, Entry, entry_bytes, entry_files, exclusive_lock,
                                          file_sha256, fingerprint)
from candle_ray.errors import CacheError, UsageError

_MIRROR = "s3-mirror"
_STAGING = "s3-staging"
_VERSIONED = re.compile(r"^(?P<key>.+)@(?P<version>[0-9a-f]{12})$")
_BLOCK = 8 << 20


def node_root() -> Path:
    """The node-local folder for staging and mirrors (CANDLE_RAY_NODE_CACHE, default ~/.cache/candle-ray)."""
    return Path(os.environ.get("CANDLE_RAY_NODE_CACHE") or "~/.cache/candle-ray").expanduser().absolute()


def version(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()[:12]


def mirror_path(uri: str, key: str, manifest_bytes: bytes) -> Path:
    """The node-local folder of one version of the entry `key` of the S3 cache root `uri`."""
    return node_root() / _MIRROR / uri[len("s3://"):].strip("/") / "datasets" / f"{key}@{version(manifest_bytes)}"


def parse_mirror_path(path) -> tuple[str, str, str] | None:
    """(cache root uri, entry key, version) of a mirror folder, or None for any other path."""
    parts = Path(path).parts
    match = _VERSIONED.match(parts[-1]) if parts else None
    if match is None or len(parts) < 4 or parts[-2] != "datasets" or _MIRROR not in parts[:-3]:
        return None
    at = len(parts) - 1 - parts[::-1].index(_MIRROR)
    bucket_and_prefix = parts[at + 1 : -2]
    if not bucket_and_prefix:
        return None
    return "s3://" + "/".join(bucket_and_prefix), match["key"], match["version"]


def _remote_error(uri: str, exc: Exception) -> CacheError:
    return CacheError(f"cannot read {uri} ({' '.join(str(exc).split())}); check this node's AWS credentials and "
                      f"AWS_ENDPOINT_URL")


def _copy_verified(read, dest: Path, name: str, sha256: str, size: int | None, where: str, hint: str | None) -> None:
    """Stream `read()` (a file-like) into dest while hashing; CacheError when the bytes differ."""
    digest, count = hashlib.sha256(), 0
    with read() as src, open(dest, "wb") as out:
        while block := src.read(_BLOCK):
            digest.update(block)
            out.write(block)
            count += len(block)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256 or (size is not None and count != size):
        raise CacheError(f"cache entry {where} is corrupt: {name} has sha256 {digest.hexdigest()} ({count:,} bytes), "
                         f"the manifest says {sha256}{f' ({size:,} bytes)' if size is not None else ''}; rebuild it "
                         f"with: {hint or DEFAULT_REBUILD}")


def ensure_local(path, *, fs=None, source: Path | None = None) -> bool:
    """Make the mirror folder `path` of an S3 entry exist on this node (no-op when it does); False, and
    nothing done, when `path` is no mirror path (a local entry is local already).

    The files come from `source` (a local entry folder with the same manifest: hard links, else copies)
    or from the bucket (hashed against the manifest on the way). Concurrent callers on one node serialise
    on a flock; the folder appears complete or not at all (temporary folder, manifest last, rename).
    """
    parsed = parse_mirror_path(path)
    if parsed is None:
        return False
    path = Path(path)
    uri, key, want = parsed
    if (path / MANIFEST).is_file():
        return True
    remote = f"{uri}/datasets/{key}"
    if fs is None:
        from candle_ray.storage import Storage

        fs = Storage.parse(uri, option="cache", check=False).fs
    base = f"{uri[len('s3://'):]}/datasets/{key}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the node-local copy of {remote} in {path.parent} ({exc.strerror}); set "
                         f"CANDLE_RAY_NODE_CACHE to a writable folder on every node") from None
    with exclusive_lock(path.parent / f".{path.name}.lock"):
        if (path / MANIFEST).is_file():
            return True  # another trial on this node fetched it while we waited
        prefix = f".tmp-{path.name}-"
        for stale in path.parent.glob(f"{prefix}*"):
            if stale.name[len(prefix):].isdigit():
                shutil.rmtree(stale, ignore_errors=True)
        if source is not None and (source / MANIFEST).is_file() and version((source / MANIFEST).read_bytes()) == want:
            manifest_bytes = (source / MANIFEST).read_bytes()
        else:
            source = None
            try:
                with fs.open_input_stream(f"{base}/{MANIFEST}") as f:
                    manifest_bytes = f.read()
            except FileNotFoundError:
                raise CacheError(f"cache entry {remote} is gone from the bucket (or was never completed); prepare it "
                                 f"again with: {DEFAULT_REBUILD}") from None
            except OSError as exc:
                raise _remote_error(f"{remote}/{MANIFEST}", exc) from None
            if version(manifest_bytes) != want:
                raise CacheError(f"cache entry {remote} changed in the bucket since this run started (rebuilt with "
                                 f"--force?); start the run again to use the new version")
        manifest = json.loads(manifest_bytes)
        tmp = path.parent / f"{prefix}{os.getpid()}"
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise CacheError(f"cannot create the node-local copy of {remote} in {path.parent} ({exc.strerror}); set "
                             f"CANDLE_RAY_NODE_CACHE to a writable folder on every node") from None
        try:
            for name, sha256, size in entry_files(manifest):
                if source is not None:
                    try:
                        os.link(source / name, tmp / name)  # built files are never modified in place
                    except OSError:
                        shutil.copyfile(source / name, tmp / name)
                    continue
                try:
                    _copy_verified(lambda name=name: fs.open_input_stream(f"{base}/{name}"), tmp / name, name, sha256,
                                   size, remote, manifest.get("rebuild"))
                except FileNotFoundError:
                    raise CacheError(f"cache entry {remote} is corrupt: {name} is missing from the bucket; rebuild it "
                                     f"with: {manifest.get('rebuild') or DEFAULT_REBUILD}") from None
                except OSError as exc:
                    raise _remote_error(f"{remote}/{name}", exc) from None
            (tmp / MANIFEST).write_bytes(manifest_bytes)  # last: the folder is complete from here
            with open(tmp / MANIFEST, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


class S3Cache:
    """The `Cache` interface (prepare, lookup, entries, verify) over an `s3://bucket/prefix` root."""

    remote = True

    def __init__(self, uri: str, *, option: str = "--cache-dir"):
        from candle_ray.storage import Storage

        self.store = Storage.parse(uri, option=option)  # credentials and bucket checked here, before Ray
        self.uri = self.store.uri
        self.staging = Cache(node_root() / _STAGING / self.store.root)
        self.root = self.staging.root  # local: synthetic smoke files and downloads live here
        self.downloads = self.staging.downloads

    def __repr__(self) -> str:
        return f"S3Cache({self.uri!r})"

    def _key(self, ds) -> str:
        return f"{ds.name}-{fingerprint(ds)}"

    def _manifest_bytes(self, key: str) -> bytes | None:
        path = self.store.path("datasets", key, MANIFEST)
        try:
            with self.store.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _remote_error(self.store.display("datasets", key, MANIFEST), exc) from None

    def _entry(self, key: str, manifest_bytes: bytes) -> Entry:
        return Entry(path=mirror_path(self.uri, key, manifest_bytes), manifest=json.loads(manifest_bytes))

    def display(self, entry) -> str:
        return self.store.display("datasets", f"{entry.name}-{entry.fingerprint}")

    def lookup(self, ds):
        """The entry of `ds` in the bucket, or None. Its path is its node-local mirror, which this does not
        fetch: `ensure_local(entry.path)` does, where the entry is opened."""
        return self.find(ds.name, fingerprint(ds))

    def find(self, name: str, fp: str):
        """The entry of dataset `name` with fingerprint `fp` in the bucket, or None; not fetched (as `lookup`)."""
        key = f"{name}-{fp}"
        found = self._manifest_bytes(key)
        return None if found is None else self._entry(key, found)

    def entries(self, broken: list | None = None) -> list:
        """Every complete entry in the bucket (an entry folder without its manifest is not one). An entry
        whose manifest cannot be read raises CacheError, or, given a `broken` list, goes there as (folder
        name, error) instead."""
        found = []
        for key in self.store.subdirs(self.store.path("datasets")):
            if key.startswith("."):
                continue
            try:
                manifest = self._manifest_bytes(key)
                if manifest is not None:
                    found.append(self._entry(key, manifest))
            except (CacheError, ValueError) as exc:
                error = exc if isinstance(exc, CacheError) else CacheError(
                    f"cache entry {self.store.display('datasets', key)} has an unreadable {MANIFEST} ({exc}); "
                    f"rebuild it with: {DEFAULT_REBUILD}")
                if broken is None:
                    raise error from None
                broken.append((key, error))
        return found

    def prepare(self, ds, *, force: bool = False, rebuild_hint: str = "", log: Callable[[str], None] = print):
        """Build `ds` in the node-local staging cache (as a local root does), upload it (files, then the
        manifest) and return its node-local mirror. Idempotent: an entry already in the bucket is only
        mirrored, unless `force`."""
        log = log or (lambda message: None)
        key = self._key(ds)
        display = self.store.display("datasets", key)
        with exclusive_lock(self.staging.locks / f"{key}.upload.lock", log):
            existing = None if force else self._manifest_bytes(key)
            if existing is not None:
                log(f"dataset {ds.name} already prepared: {display}")
                entry = self._entry(key, existing)
                ensure_local(entry.path, fs=self.store.fs, source=self.staging.datasets / key)  # local if same version
                return entry
            local = self.staging.prepare(ds, force=force, rebuild_hint=rebuild_hint, log=log)
            manifest_bytes = (Path(local.path) / MANIFEST).read_bytes()
            fs, base = self.store.fs, self.store.path("datasets", key)
            try:
                if self._manifest_bytes(key) is not None:
                    fs.delete_file(f"{base}/{MANIFEST}")  # the old version disappears before anything is overwritten
                files = entry_files(local.manifest)
                for name, sha256, _ in files:
                    if file_sha256(Path(local.path) / name) != sha256:
                        raise CacheError(f"the staged copy {local.path} is corrupt ({name}); rebuild it with --force")
                    with open(Path(local.path) / name, "rb") as src, fs.open_output_stream(f"{base}/{name}") as out:
                        while block := src.read(_BLOCK):
                            out.write(block)
                with fs.open_output_stream(f"{base}/{MANIFEST}") as out:  # the commit point
                    out.write(manifest_bytes)
            except OSError as exc:
                raise CacheError(f"uploading {display} failed ({' '.join(str(exc).split())}); run the same command "
                                 f"again (the entry stays invisible until its manifest is uploaded)") from None
            log(f"uploaded {ds.name} ({len(files) + 1} files) -> {display}")
            entry = self._entry(key, manifest_bytes)
            ensure_local(entry.path, fs=fs, source=Path(local.path))
            return entry

    def verify(self, entry, *, deep: bool = False) -> None:
        """The node-local copy fully (as a local entry), when there is one; the bucket's objects by size, or
        with `deep` by streaming and hashing every object (what `candle-ray data verify` does)."""
        import pyarrow.fs as pafs

        key = f"{entry.name}-{entry.fingerprint}"
        display, base = self.store.display("datasets", key), self.store.path("datasets", key)
        hint = entry.manifest.get("rebuild") or DEFAULT_REBUILD
        for name, sha256, size in entry_files(entry.manifest):
            try:
                if deep:
                    digest, count = hashlib.sha256(), 0
                    with self.store.fs.open_input_stream(f"{base}/{name}") as f:
                        while block := f.read(_BLOCK):
                            digest.update(block)
                            count += len(block)
                    if digest.hexdigest() != sha256:
                        raise CacheError(f"cache entry {display} is corrupt: {name} has sha256 {digest.hexdigest()}, "
                                         f"the manifest says {sha256}; rebuild it with: {hint}")
                else:
                    info = self.store.fs.get_file_info(f"{base}/{name}")
                    count = info.size if info.type == pafs.FileType.File else None
                    if count is None:
                        raise FileNotFoundError(name)
            except FileNotFoundError:
                raise CacheError(f"cache entry {display} is corrupt: {name} is missing from the bucket; rebuild it "
                                 f"with: {hint}") from None
            except OSError as exc:
                raise _remote_error(f"{display}/{name}", exc) from None
            if size is not None and count != size:
                raise CacheError(f"cache entry {display} is corrupt: {name} has {count:,} bytes, the manifest says "
                                 f"{size:,}; rebuild it with: {hint}")
        if (Path(entry.path) / MANIFEST).is_file():
            verify(entry)

    def remove(self, entry, log: Callable[[str], None] | None = None) -> int:
        """Delete the entry from the bucket, its manifest first (the commit point: the entry is gone at once,
        and a delete cut off midway leaves only invisible files that its next `prepare` overwrites), then
        this node's staged and mirrored copies; the bytes it held in the bucket. Other nodes' copies stay
        under their CANDLE_RAY_NODE_CACHE, unused."""
        key = f"{entry.name}-{entry.fingerprint}"
        base, display = self.store.path("datasets", key), self.store.display("datasets", key)
        with exclusive_lock(self.staging.locks / f"{key}.upload.lock", log):  # not beside an upload of it
            try:
                self.store.fs.delete_file(f"{base}/{MANIFEST}")
            except FileNotFoundError:
                return 0  # removed meanwhile
            except OSError as exc:
                raise CacheError(f"deleting {display} failed ({' '.join(str(exc).split())}); check this node's S3 "
                                 f"credentials and permissions, then run the same command again") from None
            try:
                self.store.fs.delete_dir(base)
            except OSError as exc:
                if log:
                    log(f"warning: {display} is removed (its manifest is gone) but some of its files are left "
                        f"({' '.join(str(exc).split())}); they are invisible, and the next prepare of it overwrites them")
        staged = self.staging.find(entry.name, entry.fingerprint)
        if staged is not None:
            self.staging.remove(staged, log)
        for copy in Path(entry.path).parent.glob(f"{key}@*"):  # every version; renamed aside, as a local entry
            aside = copy.with_name(f".old-{copy.name}-{os.getpid()}")
            os.rename(copy, aside)
            shutil.rmtree(aside, ignore_errors=True)
        return entry_bytes(entry.manifest)

    def drop_downloads(self, removed: list[dict], log: Callable[[str], None] = print) -> int:
        """This node's downloads (in staging) that the `removed` entries record and no entry left in the bucket does."""
        broken: list = []
        return drop_unused_downloads(self.root, removed, self.entries(broken), broken, log)


def open_cache(root=None):
    """A `Cache` for a local or shared folder, an `S3Cache` for s3://bucket/prefix; None: $CANDLE_RAY_CACHE's,
    else the default root."""
    from candle_ray.data import CACHE_ENV, DEFAULT_CACHE

    root = root or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    if str(root).startswith("s3://"):
        return S3Cache(str(root))
    if str(root).startswith("s3:/"):  # Path("s3://b") collapses the slashes
        raise UsageError(f"cache root {root!r}: write s3://bucket/prefix")
    return Cache(root)
