"""Checkpoints: atomic pointers, sha256 verification, weights_only loading, rebuild without the experiment."""

import json

import pytest
import torch

from candle_ray import checkpoint, models
from candle_ray.errors import CheckpointError

CONFIG = {"input_dim": 30, "dense": [16], "dropout": 0.0, "activation": "relu", "classes": 2}


def _state(epoch, model, value):
    return {"model": "mlp", "config": CONFIG, "model_shape": {"input_dim": 30, "classes": 2},
            "weights": model.state_dict(), "epoch": epoch, "best": {"metric": "val_loss", "value": value, "epoch": epoch}}


def test_last_and_best_pointers_and_pruning(tmp_path):
    model = models.build("mlp", CONFIG)
    checkpoint.save(tmp_path, _state(1, model, 0.9), kinds=("last", "best"))
    checkpoint.save(tmp_path, _state(2, model, 0.9), kinds=("last",))
    checkpoint.save(tmp_path, _state(3, model, 0.5), kinds=("last", "best"))
    checkpoint.save(tmp_path, _state(4, model, 0.5), kinds=("last",))
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["epoch-0003.pt", "epoch-0004.pt"]
    assert checkpoint.load(tmp_path, "last")["epoch"] == 4
    assert checkpoint.load(tmp_path, "best")["epoch"] == 3
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_rebuild_gives_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = models.build("mlp", CONFIG).eval()
    with torch.no_grad():  # every weight and bias non-zero (biases start at zero), so a lost tensor shows
        for p in model.parameters():
            p.normal_()
    checkpoint.save(tmp_path / "checkpoints", _state(1, model, 0.1), kinds=("last", "best"))
    rebuilt, state = checkpoint.rebuild(tmp_path)  # from the run directory alone
    x = torch.rand(4, 30)
    assert torch.equal(rebuilt(x), model(x)) and state["model"] == "mlp"


def test_corrupt_file_fails_checksum(tmp_path):
    checkpoint.save(tmp_path, _state(1, models.build("mlp", CONFIG), 0.1))
    path = tmp_path / "epoch-0001.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its sha256 check"):
        checkpoint.load(tmp_path)


def test_missing(tmp_path):
    assert checkpoint.load(tmp_path, missing_ok=True) is None
    with pytest.raises(CheckpointError, match="no last checkpoint"):
        checkpoint.load(tmp_path)
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        checkpoint.resolve(tmp_path)


def test_weights_only_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": "mlp", "format": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoint.load(path)


def test_not_a_candle_ray_checkpoint(tmp_path):
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a candle-ray checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_unreadable_pointer(tmp_path):
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path)


def test_pointer_records_checksum(tmp_path):
    checkpoint.save(tmp_path, _state(2, models.build("mlp", CONFIG), 0.3), kinds=("last", "best"))
    p = json.loads((tmp_path / "best.json").read_text())
    assert p["epoch"] == 2 and len(p["sha256"]) == 64 and p["value"] == 0.3


def test_newest_best_prefers_the_later_epoch(tmp_path):
    """A trial's own folder can hold a newer best than the copy it last handed to Tune."""
    from candle_ray.callbacks import newest_best

    handed, own = tmp_path / "handed", tmp_path / "own"
    state = {"model": "mlp", "config": {}, "model_shape": {}, "weights": {}, "best": {"metric": "val_loss"}}
    checkpoint.save(handed, {**state, "epoch": 1}, kinds=("last", "best"))
    checkpoint.save(own, {**state, "epoch": 1}, kinds=("last", "best"))
    checkpoint.save(own, {**state, "epoch": 3}, kinds=("last", "best"))
    assert newest_best([handed, own]) == own and newest_best([own, handed]) == own
    assert newest_best([handed, None, tmp_path / "missing"]) == handed
    assert newest_best([None]) is None


def test_a_finished_runs_checkpoints_slim_to_its_best_weights(tmp_path):
    """checkpoint.slim: the best epoch alone, without Adam's moments, under its own name; the weights and what
    reads them (rebuild, either pointer) unchanged; a second call frees nothing."""
    torch.manual_seed(0)
    model = models.build("mlp", CONFIG)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(8, 30)).sum().backward()
    optimizer.step()  # moments as large as the weights, twice
    checkpoint.save(tmp_path, {**_state(3, model, 0.5), "optimizer": optimizer.state_dict()}, kinds=("last", "best"))
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    checkpoint.save(tmp_path, {**_state(4, model, 0.5), "optimizer": optimizer.state_dict()}, kinds=("last",))
    before = sum(p.stat().st_size for p in tmp_path.glob("*.pt"))
    freed = checkpoint.slim(tmp_path)
    assert [p.name for p in tmp_path.glob("*.pt")] == ["epoch-0003.pt"] and freed > 0.75 * before
    for kind in ("best", "last"):
        state = checkpoint.load(tmp_path, kind)
        assert state["epoch"] == 3 and "optimizer" not in state
        assert all(torch.equal(state["weights"][k], v) for k, v in best.items())
    assert checkpoint.slim(tmp_path) == 0 and checkpoint.slim(tmp_path / "none") == 0


def test_a_best_written_without_the_optimizer_slims_by_pointing_last_at_it(tmp_path):
    """The loop writes a `best` that is no `last` without the optimizer's state: slimming then rewrites nothing,
    points `last` at the best (its value kept, as `save(value=)` set it) and drops the newer `last`."""
    model = models.build("mlp", CONFIG)
    optimizer = torch.optim.Adam(model.parameters())
    checkpoint.save(tmp_path, _state(3, model, 0.5), kinds=("best",), value=0.4)
    best_file = tmp_path / "epoch-0003.pt"
    written = best_file.stat().st_mtime_ns
    checkpoint.save(tmp_path, {**_state(4, model, 0.5), "optimizer": optimizer.state_dict()}, kinds=("last",))
    assert checkpoint.pointer(tmp_path, "best")["value"] == 0.4 and checkpoint.pointer(tmp_path, "last")["value"] == 0.5
    assert checkpoint.slim(tmp_path) > 0
    assert [p.name for p in tmp_path.glob("*.pt")] == [best_file.name] and best_file.stat().st_mtime_ns == written
    assert checkpoint.pointer(tmp_path, "last") == checkpoint.pointer(tmp_path, "best")
    assert checkpoint.load(tmp_path, "last")["epoch"] == 3 and checkpoint.slim(tmp_path) == 0
