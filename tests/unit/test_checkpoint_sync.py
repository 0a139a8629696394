"""Ranks of a restarted DDP group agree on the newest checkpoint even without a shared filesystem:
two real gloo processes, each with its own run folder (as on two nodes)."""

import json
import os
import socket

import torch.multiprocessing as mp


def _rank(rank: int, world_size: int, port: int, dirs: list, out: str) -> None:
    import torch
    import torch.distributed as dist

    from candle_ray.loop import World
    from candle_ray.ddp import sync_checkpoints

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        epoch = sync_checkpoints(dirs[rank], World(rank=rank, world_size=world_size, device=torch.device("cpu")))
        with open(f"{out}-{rank}", "w") as f:
            json.dump({"epoch": epoch}, f)
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save(run_dir, epoch: int) -> None:
    import torch

    from candle_ray import checkpoint

    checkpoint.save(run_dir / "checkpoints", {"model": "nt3", "epoch": epoch, "weights": {"w": torch.ones(3) * epoch},
                                              "best": {"metric": "val_loss", "value": 0.5, "epoch": epoch}},
                    kinds=("last", "best"))


def test_newest_checkpoint_reaches_every_rank(tmp_path):
    from candle_ray import checkpoint

    dirs = [tmp_path / f"node-{r}" for r in range(3)]
    _save(dirs[1], 4)  # rank 1 holds the newest, rank 0 an older one, rank 2 none (a node that just joined)
    _save(dirs[0], 2)
    ctx, port = mp.get_context("spawn"), _port()
    procs = [ctx.Process(target=_rank, args=(r, 3, port, [str(d) for d in dirs], str(tmp_path / "out")))
             for r in range(3)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    for r, d in enumerate(dirs):
        assert json.loads((tmp_path / f"out-{r}").read_text())["epoch"] == 4
        state = checkpoint.load(d / "checkpoints", "last")  # verified against its sha256
        assert state["epoch"] == 4 and float(state["weights"]["w"][0]) == 4.0
        assert checkpoint.pointer(d / "checkpoints", "best")["epoch"] == 4
        assert not [n for n in os.listdir(d / "checkpoints") if n.startswith(".")]  # no temporary files left
