"""DDP on Ray, on the worker side: one path for `candle-ray train --workers N` and `tune --workers-per-trial N`.

Rank 0 runs where its caller already runs (a sweep's trial actor, or `train`'s streaming Ray task)
and yields each epoch's metrics; ranks 1..N-1 are peer actors that land in the caller's placement
group. The ranks join one torch.distributed group at rank 0's address (gloo on CPUs, NCCL on GPUs),
then hand the checkpoint over (`sync_checkpoints`): the newest checkpoint any rank holds is what every
rank continues from. Peers start from an empty folder of their own, so that is rank 0's: a trial's
restored or PBT-cloned checkpoint, or a `train` run's after a worker died. No Ray Train here: its
worker-group start-up (~15 s more to the first epoch: bench/startup.py) would be paid by every DDP trial.

Elastic runs (`MIN-MAX`) stay on Ray Train V2, which alone grows and shrinks a worker group; its
workers (`ray_train_worker`) take the same hand-over, from whichever rank holds the newest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import ray

from candle_ray import checkpoint
from candle_ray.errors import CandleRayError


def device_for(use_gpu: bool):
    import torch

    # Ray sets CUDA_VISIBLE_DEVICES to the worker's one GPU, which torch then sees as device 0.
    return torch.device("cuda", 0) if use_gpu else torch.device("cpu")


def record_rank(run_dir, rank: int, **extra) -> None:
    """Where this rank runs (node, address, pid), in the run's folder on that node: ranks/rank-<r>.json."""
    ctx = ray.get_runtime_context()
    folder = Path(run_dir) / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
        "time": time.time(), **extra}))


def _held_epoch(ckpt_dir: Path) -> int:
    """The epoch of the `last` checkpoint in this folder whose weights are there too (0: none)."""
    try:
        pointer = checkpoint.pointer(ckpt_dir, "last") or {}
    except CandleRayError:
        return 0
    return int(pointer.get("epoch") or 0) if pointer and (ckpt_dir / pointer["file"]).exists() else 0


def _checkpoint_files(ckpt_dir: Path) -> dict[str, bytes]:
    files = {}
    for kind in checkpoint.KINDS:
        pointer = checkpoint.pointer(ckpt_dir, kind)
        if pointer and (ckpt_dir / pointer["file"]).exists():
            files[pointer["file"]] = (ckpt_dir / pointer["file"]).read_bytes()
            files[f"{kind}.json"] = (ckpt_dir / f"{kind}.json").read_bytes()
    return files


def sync_checkpoints(run_dir, world) -> int:
    """Before the ranks train, every one must hold the same newest checkpoint: ranks may sit on nodes
    whose run folder has an older one or none (no shared filesystem; a new peer; after a resize or a
    node loss). The ranks compare the epochs they hold (one small all-gather); if they differ, the
    lowest rank with the newest sends its files (broadcast) and the others write them. Returns that epoch."""
    import torch
    import torch.distributed as dist

    if world.world_size == 1:
        return 0
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    ckpt_dir = Path(run_dir) / "checkpoints"
    mine = _held_epoch(ckpt_dir)
    held = [None] * world.world_size
    dist.all_gather_object(held, mine)
    newest = max(held)
    if all(e == newest for e in held):
        return newest
    source = held.index(newest)
    payload = [_checkpoint_files(ckpt_dir) if world.rank == source else None]
    dist.broadcast_object_list(payload, src=source)
    if mine < newest:  # ranks sharing a node write the same bytes: each through its own temporary name
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(payload[0], key=lambda n: n.endswith(".json")):  # weights before their pointers
            tmp = ckpt_dir / f".{name}.sync-{os.getpid()}"
            tmp.write_bytes(payload[0][name])
            os.replace(tmp, ckpt_dir / name)
    dist.barrier()
    return newest


def _join(job, rank: int, world_size: int, master: str):
    """Join the process group at rank 0's `master` address; the World this rank trains in."""
    from datetime import timedelta

    import torch.distributed as dist

    from candle_ray.loop import World

    # A rank that dies makes the others fail within this timeout instead of hanging the run.
    dist.init_process_group("nccl" if job.use_gpu else "gloo", init_method=f"tcp://{master}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=job.ddp_timeout_s))
    return World(rank=rank, world_size=world_size, device=device_for(job.use_gpu))


def _ranked_epochs(job, rank: int, world_size: int, master: str) -> Iterator[dict]:
    """This rank's epochs inside the process group: join, hand the checkpoint over, train, leave."""
    import torch.distributed as dist

    from candle_ray.loop import train_epochs

    world = _join(job, rank, world_size, master)
    try:
        sync_checkpoints(job.run_dir, world)
        yield from train_epochs(job, world)
    finally:
        dist.destroy_process_group()


@ray.remote
class Peer:
    """Rank 1..N-1: runs the same loop, takes part in the all-reduces, reports nothing."""

    def run(self, job, rank: int, world_size: int, master: str) -> None:
        record_rank(Path(job.run_dir), rank)
        # A folder of this rank's own, emptied: the checkpoint it continues from is handed over by rank 0.
        job = replace(job, run_dir=str(Path(job.run_dir) / f"rank-{rank}"))
        shutil.rmtree(Path(job.run_dir) / "checkpoints", ignore_errors=True)
        for _ in _ranked_epochs(job, rank, world_size, master):
            pass


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def epochs(job) -> Iterator[dict]:
    """Rank 0 of `job.workers` ranks, here; yields each epoch's metrics. One rank trains alone; more
    start their peers as actors in this task's or actor's placement group (one bundle each) and stop
    them when this generator ends, whether by the last epoch, an error or the caller closing it."""
    from candle_ray.loop import World, train_epochs

    world_size = job.workers.min
    record_rank(Path(job.run_dir), 0, world_size=world_size)
    if world_size == 1:
        yield from train_epochs(job, World(device=device_for(job.use_gpu)))
        return
    master = f"{ray.util.get_node_ip_address()}:{_free_port()}"
    peers = [Peer.options(num_cpus=job.cpus_per_worker, num_gpus=int(job.use_gpu)).remote()
             for _ in range(world_size - 1)]
    runs = [peer.run.remote(job, rank, world_size, master) for rank, peer in enumerate(peers, start=1)]
    try:
        yield from _ranked_epochs(job, 0, world_size, master)
        ray.get(runs)
    finally:
        for peer in peers:
            ray.kill(peer)
        _settle(runs)


def _settle(runs, timeout_s: float = 10.0) -> None:
    """Read the stopped peers' outcomes. When rank 0 leaves early (a scheduler stopped the trial, an error),
    the peers' all-reduce fails ("Connection closed by peer"), and Ray prints each failed result no one read
    as an "Unhandled error" traceback, ~20 lines per peer of an ASHA-stopped trial, on the user's terminal."""
    try:
        ray.get(runs, timeout=timeout_s)
    except Exception:  # their failure follows from rank 0's end, which the caller already has
        pass


def ray_train_worker(loop_config: dict) -> None:
    """One worker of an elastic Ray Train run (its train_loop_per_worker)."""
    import logging

    import ray.train
    import ray.train.torch

    from candle_ray.loop import World, train_epochs

    # Ray Train 2.60 logs every report at INFO, on a logger named by its file's path that LoggingConfig
    # does not reach: this worker process logs warnings and worse only.
    logging.getLogger().setLevel(logging.WARNING)
    job = loop_config["job"]
    ctx = ray.train.get_context()
    world = World(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), local_rank=ctx.get_local_rank(),
                  device=ray.train.torch.get_device())
    record_rank(job.run_dir, world.rank, world_size=world.world_size)
    sync_checkpoints(job.run_dir, world)
    for metrics in train_epochs(job, world):
        # A barrier: every rank reports every epoch. `workers` shows an elastic run's size per epoch
        # (0 on epochs replayed from a checkpoint: an earlier group trained them).
        ray.train.report({**metrics, "workers": 0 if metrics.get("replayed") else world.world_size})
