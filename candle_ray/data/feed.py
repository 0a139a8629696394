"""Mini-batches for one training worker, sharded across DDP ranks.

`BatchFeed` serves data that fits in memory (usually a memory-mapped cache split, shared by every
process on the node through the page cache); `StreamFeed` reads a split file chunk by chunk with
`pread`, so a worker holds one chunk at a time whatever the size of the data. Both give every rank
the same number of batches, which DistributedDataParallel requires (a rank with one batch more
would wait forever in its all-reduce).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from candle_ray.errors import UsageError

_CHUNK_BYTES = 64 << 20


def _check_shard(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}")


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor over a numpy array, read-only (memory-mapped) ones included.

    torch warns that writing to such a tensor is undefined; the feeds only ever read from it
    (batches are gathered into fresh tensors), so the warning is noise here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(array)


def _shard_size(n: int, rank: int, world_size: int, pad: bool) -> int:
    return math.ceil(n / world_size) if pad else len(range(rank, n, world_size))


def shard_indices(n: int, epoch: int, *, shuffle: bool, seed: int, rank: int, world_size: int, pad: bool) -> torch.Tensor:
    """Rank `rank`'s row indices for `epoch`, as DistributedSampler gives them.

    A seeded permutation per epoch (or 0..n-1); with `pad` it is padded (repeating its start) to a
    multiple of world_size so that every rank gets ceil(n / world_size) rows (DDP training needs equal
    batch counts); rank r takes every world_size-th index from r. Without `pad` (validation) the rows
    are split exactly, each counted once.
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    else:
        order = torch.arange(n)
    if not pad:
        return order[rank::world_size]
    total = math.ceil(n / world_size) * world_size
    if total > n:  # pad by repeating from the start, as many times as needed
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank:total:world_size]


class BatchFeed:
    """In-memory batches: a seeded permutation per epoch, sharded like DistributedSampler.

    The permutation is padded (repeating its start) to a multiple of world_size and rank r takes
    every world_size-th index from r, so all ranks see `num_samples` samples in `len(self)` batches.
    `pad=False` (validation) gives each rank exactly its every-world_size-th rows instead.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, pad: bool = True):
        _check_shard(batch_size, rank, world_size)
        if len(x) != len(y):
            raise UsageError(f"x has {len(x)} rows but y has {len(y)}; they must have the same length")
        if len(x) == 0:
            raise UsageError("cannot feed an empty split (0 rows)")
        self.x = as_tensor(np.asarray(x, dtype=np.float32))
        self.y = as_tensor(np.asarray(y))
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.num_samples = _shard_size(len(x), rank, world_size, pad)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def nbytes(self) -> int:
        """Bytes that `.to(device)` would place on the device."""
        return self.x.numel() * self.x.element_size() + self.y.numel() * self.y.element_size()

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in the order they are served."""
        return shard_indices(len(self.x), epoch, shuffle=self.shuffle, seed=self.seed, rank=self.rank,
                             world_size=self.world_size, pad=self.pad)

    def to(self, device: torch.device) -> "BatchFeed":
        """Hold the split on `device` (a GPU): batches are then gathered there, with no copy per step."""
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Contiguous (x float32 [b, d], y [b]) batches; the last one may be smaller."""
        order = self.indices(epoch).to(self.x.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield torch.index_select(self.x, 0, index), torch.index_select(self.y, 0, index)


class StreamFeed:
    """Batches read from an Arrow split file one chunk of rows at a time (memory: one chunk).

    Per epoch the chunks are put in a seeded random order and the rows of each chunk in a seeded
    random order; that stream is padded to a multiple of world_size (repeating its start) and cut
    into world_size equal contiguous ranges, one per rank. Every rank thus reads only about its own
    share of the file, yet all get exactly `num_samples` rows and `len(self)` batches.
    """

    def __init__(self, path, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, chunk_rows: int | None = None):
        _check_shard(batch_size, rank, world_size)
        self.path = Path(path)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self._chunks, self.num_features, self.y_dtype = self._layout(chunk_rows)
        self.rows = sum(c[1] for c in self._chunks)
        if self.rows == 0:
            raise UsageError(f"cannot feed an empty split (0 rows in {self.path})")
        self.num_samples = math.ceil(self.rows / world_size)

    def _layout(self, chunk_rows: int | None):
        """Chunks as (x file offset, rows, y file offset): byte positions of the value buffers.

        The file is memory-mapped only to read its metadata; the buffers' addresses relative to the
        mapping are their offsets in the file, which `pread` then reads without mapping anything.
        """
        with pa.memory_map(str(self.path)) as source:
            whole = source.read_buffer(source.size())
            reader = pa.ipc.open_file(whole)
            d = reader.schema.field("x").type.list_size
            y_type = {pa.int64(): np.int64, pa.float32(): np.float32}[reader.schema.field("y").type]
            per_chunk = chunk_rows or max(1, _CHUNK_BYTES // (4 * d))
            chunks = []
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                xs, ys = batch.column(0), batch.column(1)
                if xs.null_count or ys.null_count or xs.offset or xs.values.offset or ys.offset:
                    raise UsageError(f"{self.path} is not a cache split file (nulls or offsets in its columns); rebuild the entry")
                x_at = xs.values.buffers()[1].address - whole.address
                y_at = ys.buffers()[1].address - whole.address
                for start in range(0, batch.num_rows, per_chunk):
                    rows = min(per_chunk, batch.num_rows - start)
                    chunks.append((x_at + start * d * 4, rows, y_at + start * np.dtype(y_type).itemsize))
            del whole, reader
        return chunks, d, np.dtype(y_type)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def _read(self, fd: int, chunk) -> tuple[np.ndarray, np.ndarray]:
        x_at, rows, y_at = chunk
        x = np.empty((rows, self.num_features), dtype=np.float32)
        y = np.empty(rows, dtype=self.y_dtype)
        for array, offset in ((x, x_at), (y, y_at)):
            view = memoryview(array).cast("B")
            done = 0
            while done < len(view):  # pread may return less than asked
                got = os.preadv(fd, [view[done:]], offset + done)
                if got == 0:
                    raise UsageError(f"{self.path} ended early; the cache entry is corrupt, rebuild it")
                done += got
        return x, y

    def _plan(self, epoch: int):
        """The chunk order and a function giving a chunk's row order, both seeded by (seed, epoch)."""
        if not self.shuffle:
            return list(range(len(self._chunks))), lambda cid, rows: np.arange(rows)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self._chunks)).tolist()
        return order, lambda cid, rows: np.random.default_rng([self.seed, epoch, cid + 1]).permutation(rows)

    def _segments(self, order: list[int]):
        """(chunk id, first, last) row ranges, in stream order, that make up this rank's share."""
        start = self.rank * self.num_samples
        stop = start + self.num_samples
        sizes = [self._chunks[c][1] for c in order]
        position = 0
        while position < stop:  # walks the stream, wrapping around for the padding
            for cid, rows in zip(order, sizes):
                lo, hi = max(start - position, 0), min(stop - position, rows)
                if lo < hi:
                    yield cid, lo, hi
                position += rows
                if position >= stop:
                    return

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, row_order = self._plan(epoch)
        pending_x, pending_y, pending = [], [], 0
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for cid, lo, hi in self._segments(order):
                x, y = self._read(fd, self._chunks[cid])
                rows = row_order(cid, len(y))[lo:hi]
                taken = 0
                while taken < len(rows):  # a batch may span the end of one chunk and the start of the next
                    take = rows[taken : taken + self.batch_size - pending]
                    pending_x.append(x[take])
                    pending_y.append(y[take])
                    pending += len(take)
                    taken += len(take)
                    if pending == self.batch_size:
                        yield _join(pending_x, pending_y)
                        pending_x, pending_y, pending = [], [], 0
                del x, y
            if pending:
                yield _join(pending_x, pending_y)
        finally:
            os.close(fd)


def _join(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    y = ys[0] if len(ys) == 1 else np.concatenate(ys)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def fits_in_memory(nbytes: float) -> bool:
    """Whether `nbytes` read into memory take at most half of the available memory (yes where that is
    unknown): the rule for mapping a split, or gathering a share of it, rather than streaming it."""
    free = available_memory()
    return not free or nbytes <= free / 2


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class JoinedFeed:
    """Batches of a joined cache entry: row tables of indices into shared feature tables.

    Every batch gathers its rows' slots in order, x = concat(table[index] or value column), so the
    feature values exist once (memory-mapped from the cache, shared by every process on the node) and
    only one batch is ever materialised: memory does not grow with the number of rows beyond the
    index columns. Sharding and epochs are BatchFeed's (`shard_indices`): every rank gets the same
    number of batches unless `pad=False`. y is [B] (one label column) or int64 [B, T] (several).
    """

    def __init__(self, tables: dict[str, np.ndarray], columns: dict[str, np.ndarray], slots: list[dict],
                 label_columns: list[str], batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad: bool = True):
        _check_shard(batch_size, rank, world_size)
        self.tables = {name: as_tensor(values) for name, values in tables.items()}
        self.columns = {name: as_tensor(values) for name, values in columns.items()}
        self.slots = [(s["table"], s["key"]) for s in slots]
        self.label_columns = list(label_columns)
        self.rows = len(self.columns[self.label_columns[0]])
        if self.rows == 0:
            raise UsageError("cannot feed an empty split (0 rows)")
        self.num_features = sum(1 if table is None else self.tables[table].shape[1] for table, _ in self.slots)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.num_samples = _shard_size(self.rows, rank, world_size, pad)

    @classmethod
    def open(cls, entry_path, split: str, batch_size: int, **shard) -> "JoinedFeed":
        from candle_ray.data import joined_cache

        manifest = joined_cache.manifest_of(entry_path)
        tables = joined_cache.open_tables(entry_path)
        columns = joined_cache.open_rows(entry_path, split)
        return cls(tables, columns, manifest["slots"], manifest["label_columns"], batch_size, **shard)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def nbytes(self) -> int:
        """Bytes that `.to(device)` would place on the device (feature tables and row columns)."""
        return sum(t.numel() * t.element_size() for t in [*self.tables.values(), *self.columns.values()])

    def indices(self, epoch: int) -> torch.Tensor:
        return shard_indices(self.rows, epoch, shuffle=self.shuffle, seed=self.seed, rank=self.rank,
                             world_size=self.world_size, pad=self.pad)

    def to(self, device: torch.device) -> "JoinedFeed":
        """Hold the feature tables and row columns on `device`: batches are then gathered there."""
        self.tables = {k: v.to(device) for k, v in self.tables.items()}
        self.columns = {k: v.to(device) for k, v in self.columns.items()}
        return self

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 [B, num_features], y) of the rows `index` (int64)."""
        parts = []
        for table, key in self.slots:
            column = self.columns[key].index_select(0, index)
            if table is None:
                parts.append(column.to(torch.float32).unsqueeze(1))
            else:
                parts.append(self.tables[table].index_select(0, column.long()))
        x = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        labels = [self.columns[c].index_select(0, index) for c in self.label_columns]
        return x, (labels[0] if len(labels) == 1 else torch.stack(labels, 1))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = next(iter(self.columns.values())).device
        order = self.indices(epoch).to(device)
        for start in range(0, len(order), self.batch_size):
            yield self.batch(order[start : start + self.batch_size])


def make_feed(entry_path, split: str, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
              world_size: int = 1, mode: str = "auto", pad: bool = True):
    """A feed over one split of a cache entry. `auto` streams when the split file is larger than half
    of the available memory, and maps it in memory otherwise. A joined entry always gets a
    `JoinedFeed` (memory-mapped tables, gathered per batch; `mode` does not apply). `pad=False` (not
    for streaming) serves each rank exactly every world_size-th row: validation."""
    from candle_ray.data.cache import open_split, split_file
    from candle_ray.data.cache_format import read_manifest

    if mode not in ("auto", "memory", "stream"):
        raise UsageError(f"feed mode {mode!r} is not one of auto, memory, stream")
    if read_manifest(entry_path).get("kind") == "joined":
        return JoinedFeed.open(entry_path, split, batch_size, shuffle=shuffle, seed=seed, rank=rank,
                               world_size=world_size, pad=pad)
    path = split_file(entry_path, split)  # quick integrity checks, CacheError with the rebuild command
    if mode == "auto":
        mode = "memory" if not pad or fits_in_memory(path.stat().st_size) else "stream"
    if mode == "stream":
        if not pad:
            raise UsageError("a streamed feed always pads its shards; use mode='memory' for an unpadded (validation) feed")
        return StreamFeed(path, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    x, y = open_split(entry_path, split)
    return BatchFeed(x, y, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, pad=pad)


def split_labels(entry_path, split: str) -> np.ndarray:
    """The labels of one split (memory-mapped): y [n] of a matrix entry, or of a joined entry's label
    column(s), [n] or [n, T] for several (e.g. class weights computed from the train split)."""
    from candle_ray.data.cache import open_split
    from candle_ray.data.cache_format import read_manifest

    manifest = read_manifest(entry_path)
    if manifest.get("kind") != "joined":
        return open_split(entry_path, split)[1]
    from candle_ray.data import joined_cache

    columns = joined_cache.open_rows(entry_path, split)
    labels = [columns[c] for c in manifest["label_columns"]]
    return labels[0] if len(labels) == 1 else np.stack(labels, axis=1)
