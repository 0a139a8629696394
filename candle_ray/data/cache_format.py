"""The on-disk format of a cache entry, shared by the local cache (candle_ray.data.cache: matrix entries),
joined entries (candle_ray.data.joined_cache) and the S3 cache (candle_ray.data.remote_cache).

An entry is a folder `datasets/<name>-<fingerprint>/` of Arrow IPC files plus `manifest.json`, which
records every file's rows, bytes and sha256 and is written last: an entry exists only once its manifest
does. Every file of an entry is written under a temporary name or folder, fsynced and renamed into
place, so a reader sees a complete file or none. Preparation of one entry is serialised by a flock.

This module owns those rules (manifest name, reading and writing, FORMAT_VERSION, checksums, atomic
write, the lock, the `Entry` record, the fingerprint that names an entry, the "corrupt entry" error
with its rebuild command) so that the three cache modules share them without importing each other.
Reading a manifest only reads: an S3 entry's node-local copy is fetched by an explicit
`remote_cache.ensure_local`, never as a side effect of a read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from candle_ray.data import registry
from candle_ray.data.sources import file_digests, local_path, redact
from candle_ray.data.spec import Dataset, ReaderDataset
from candle_ray.errors import CacheError, UsageError

FORMAT_VERSION = 1
DEFAULT_REBUILD = "candle-ray data prepare <experiment> --force"
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- the entry record
@dataclass(frozen=True)
class Entry:
    """A prepared dataset: its folder and its manifest."""

    path: Path
    manifest: dict

    def __fspath__(self) -> str:  # open_split(entry, ...) and make_feed(entry, ...) accept an Entry too
        return str(self.path)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def num_features(self) -> int:
        return self.manifest["num_features"]

    @property
    def num_classes(self) -> int | None:
        return self.manifest["num_classes"]

    @property
    def rows(self) -> dict[str, int]:
        return {split: info["rows"] for split, info in self.manifest["splits"].items()}

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))

    @property
    def kind(self) -> str:
        """"matrix" (one x matrix per split) or "joined" (feature tables + row tables, see joined_cache)."""
        return self.manifest.get("kind", "matrix")


def entry_files(manifest: dict) -> list[tuple[str, str, int | None]]:
    """(file, sha256, bytes or None) of every file of an entry, the manifest aside."""
    files = [(i["file"], i["sha256"], i["bytes"]) for i in manifest.get("tables", {}).values()]
    files += [(i["file"], i["sha256"], i["bytes"]) for i in manifest["splits"].values()]
    pre = manifest.get("preprocessing") or {}
    if pre.get("scaler_file"):
        files.append((pre["scaler_file"], pre["scaler_sha256"], None))
    return files


def entry_bytes(manifest: dict) -> int:
    """The bytes of an entry's data files: what `data ls` shows and `data rm` frees."""
    return sum(size or 0 for _, _, size in entry_files(manifest))


def named(entries: list[Entry], name: str) -> Entry:
    """The one of `entries` named `name` or `name-FINGERPRINT` (a prefix of it will do), as `data ls` lists
    them; UsageError where none or several match."""
    found = [e for e in entries
             if name == e.name or (name.startswith(f"{e.name}-") and f"{e.name}-{e.fingerprint}".startswith(name))]
    if not found:
        raise UsageError(f"no cache entry is named {name!r}; pass a name that `candle-ray data ls` lists")
    if len(found) > 1:
        raise UsageError(f"{len(found)} cache entries match {name!r} ({', '.join(f'{e.name}-{e.fingerprint}' for e in found)}); "
                         f"pass one of them")
    return found[0]


# --------------------------------------------------------------------------- the fingerprint
def _source_key(source) -> dict:
    """What identifies a source's content without the network: its declared checksum, else the local
    file's sha256, else the URL (credentials removed)."""
    if source.sha256:
        return {"sha256": source.sha256.lower()}
    if source.md5:
        return {"md5": source.md5.lower()}
    path = local_path(source.url)
    if path is not None and path.is_file():
        return {"sha256": file_digests(path)[0]}
    return {"url": redact(source.url)}


def _digest(doc: dict, **dumps) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, **dumps)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def fingerprint(ds: Dataset | ReaderDataset) -> str:
    """16 hex digits identifying the prepared content of `ds` (the format version, preprocessing, sources)."""
    if isinstance(ds, ReaderDataset):
        return _digest({
            "format_version": FORMAT_VERSION,
            "kind": "joined",
            "reader": ds.reader,
            "reader_version": registry.version(ds.reader),
            # Defaults filled in: writing an option at its default value names the same entry.
            "options": registry.identifying_options(ds.reader, ds.options),
            "seed": ds.seed,
            "sources": {role: _source_key(src)
                        for role, src in registry.needed_sources(ds.reader, ds.sources, ds.options).items()},
        }, default=str)
    from_fraction = ds.val is None
    return _digest({
        "format_version": FORMAT_VERSION,
        "format": ds.format,
        "label": ds.label,
        "drop": list(ds.drop),
        **({"categorical": list(ds.categorical)} if ds.categorical else {}),  # entries from before keep theirs
        **({"impute": ds.impute} if ds.impute else {}),
        **({"group": ds.group} if ds.group else {}),  # the hold-out keeps groups whole
        **({"event": ds.event} if ds.event else {}),
        "task": ds.task,
        "classes": ds.classes,
        "scaling": ds.scaling,
        "scaling_fit": ds.scaling_fit,
        "feature_subsample": ds.feature_subsample,
        # The split fraction and seed only shape the data when val is carved out of train.
        "val_fraction": ds.val_fraction if from_fraction else None,
        "seed": ds.seed if from_fraction else None,
        # A classifier's hold-out is stratified (cache.stratified_holdout); entries of the plain shuffle before
        # it keep their own fingerprint.
        **({"holdout": "stratified"} if from_fraction and ds.task == "classification" else {}),
        "sources": {split: _source_key(src) for split, src in ds.sources().items()},
    })


# --------------------------------------------------------------------------- checksums and atomic writes
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk, so that a rename after it never exposes lost bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name: readers see the old file or the whole new one."""
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_bytes(data)
    fsync(tmp)
    os.replace(tmp, path)


def write_batch_file(path: Path, batch: pa.RecordBatch) -> dict:
    """Write one record batch as an Arrow IPC file and fsync it; its manifest record (file, rows, bytes, sha256).

    One batch: every column is then one contiguous buffer that readers memory-map as a numpy view
    (several batches would interleave the columns' buffers and force a copy).
    """
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    fsync(path)
    return file_record(path, batch.num_rows)


def file_record(path: Path, rows: int) -> dict:
    return {"file": path.name, "rows": int(rows), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def sources_record(fetched: dict, root: Path) -> dict:
    """The manifest's "sources": per role, what was fetched (URL without credentials, checksums, size) and
    where the download lies relative to the cache `root` (None for a local file used in place)."""
    return {
        role: {"url": redact(got.url), "sha256": got.sha256, "md5": got.md5, "bytes": got.bytes,
               "download": _cache_relative(got.path, root)}
        for role, got in fetched.items()
    }


def _cache_relative(path: Path, root: Path) -> str | None:
    try:
        return str(Path(path).absolute().relative_to(root))
    except ValueError:
        return None


# --------------------------------------------------------------------------- the manifest
def write_manifest(folder: Path, manifest: dict) -> None:
    """The manifest into `folder`, atomically; written last, it is what makes the folder an entry."""
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())


def read_manifest(entry_path) -> dict:
    """The manifest of an entry folder; CacheError when it is missing or unreadable. Only reads: an S3
    entry's node-local copy must have been fetched first (candle_ray.data.remote_cache.ensure_local)."""
    entry_path = Path(entry_path)
    try:
        manifest = json.loads((entry_path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CacheError(f"cache entry {entry_path} does not exist or is incomplete (no {MANIFEST}); prepare it with: {DEFAULT_REBUILD}") from None
    except (OSError, ValueError) as e:
        raise corrupt_entry(entry_path, f"{MANIFEST} is unreadable ({' '.join(str(e).split())})", None) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"cache entry {entry_path} has format version {manifest.get('format_version')!r}, this candle-ray reads {FORMAT_VERSION}; rebuild it with: {manifest.get('rebuild') or DEFAULT_REBUILD}")
    return manifest


# --------------------------------------------------------------------------- checks
def corrupt_entry(entry_path, what: str, hint: str | None) -> CacheError:
    """The error for an entry whose files disagree with its manifest, with the command that rebuilds it."""
    return CacheError(f"cache entry {entry_path} is corrupt: {what}; rebuild it with: {hint or DEFAULT_REBUILD}")


def open_arrow(entry_path: Path, info: dict, hint: str | None):
    """Quick checks of one file of an entry (no hashing): it exists with the manifest's size and opens as
    Arrow. Returns its memory-mapped reader."""
    path = entry_path / info["file"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise corrupt_entry(entry_path, f"{info['file']} is missing", hint) from None
    if size != info["bytes"]:
        raise corrupt_entry(entry_path, f"{info['file']} has {size:,} bytes, the manifest says {info['bytes']:,} (truncated or overwritten)", hint)
    try:
        return pa.ipc.open_file(pa.memory_map(str(path)))
    except (pa.ArrowException, OSError) as e:
        raise corrupt_entry(entry_path, f"{info['file']} is not a readable Arrow file ({' '.join(str(e).split())})", hint) from None


def check_sha256(entry_path: Path, info: dict, hint: str | None) -> None:
    """The full check of one file of an entry: its sha256 against the manifest's record `info`."""
    actual = file_sha256(entry_path / info["file"])
    if actual != info["sha256"]:
        raise corrupt_entry(entry_path, f"{info['file']} has sha256 {actual}, the manifest says {info['sha256']}", hint)


def verify_downloads(entry_path: Path, manifest: dict, hint: str | None) -> None:
    """The downloads an entry was built from, where the cache still holds them, against their sha256."""
    root = entry_path.parent.parent
    for role, source in manifest["sources"].items():
        download = source.get("download")
        if download and (root / download).is_file():
            actual = file_sha256(root / download)
            if actual != source["sha256"]:
                raise corrupt_entry(entry_path, f"the {role} download {root / download} has sha256 {actual}, recorded {source['sha256']}", hint)


def numpy_view(array: pa.Array, dtype, first: int = 0, count: int | None = None) -> np.ndarray:
    """A read-only numpy view of `count` values of a null-free primitive Arrow array, from element `first`.

    (`Array.to_numpy` would do the same but imports pandas, and `flatten` pyarrow.compute: ~0.4 s
    and ~60 MB in every worker.)
    """
    count = len(array) - first if count is None else count
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=count, offset=(array.offset + first) * np.dtype(dtype).itemsize)


# --------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def exclusive_lock(lock_path: Path, log: Callable[[str], None] | None = None):
    """An exclusive flock on `lock_path` for the duration of the block; other holders wait here (saying so
    through `log`, when given)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"waiting for another process preparing the same entry (lock {lock_path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the lock file stays (deleting it would race with waiters)
