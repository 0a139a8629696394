"""The training loop without Ray: determinism, exact resume, CANDLE's callbacks (early stop, timeout)."""

import math

import pytest
import torch

from candle_ray.data.cache import Cache
from candle_ray.data.synthetic import synthesize
from candle_ray.experiment import load_experiment
from candle_ray.loop import World, train_epochs
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    nt3 = load_experiment(ROOT / "experiments" / "nt3.py")
    ds = synthesize(nt3.dataset, tmp / "files", rows=(64, 16), features=200, seed=5)
    return Cache(tmp / "cache").prepare(ds, log=lambda *_: None)


def job(entry, run_dir, **config):
    base = {"epochs": 4, "batch_size": 16, "learning_rate": 0.05, "optimizer": "sgd", "momentum": 0.9,
            "dropout": 0.2, "activation": "relu", "conv": [4, 10, 1], "pool": [2], "dense": [8], "rng_seed": 3,
            "timeout": -1}
    return {"config": {**base, **config}, "model": "nt3", "task": "classification",
            "model_shape": {"input_dim": entry.num_features, "classes": 2}, "entry": str(entry.path),
            "run_dir": str(run_dir), "metric": "val_loss", "mode": "min", "threads": 1, "precision": "auto"}


KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


def numbers(history):
    return [tuple(m[k] for k in KEYS) for m in history]


def test_same_seed_same_numbers(entry, tmp_path):
    a = list(train_epochs(job(entry, tmp_path / "a"), World()))
    b = list(train_epochs(job(entry, tmp_path / "b"), World()))
    assert numbers(a) == numbers(b) and len(a) == 4
    c = list(train_epochs(job(entry, tmp_path / "c", rng_seed=4), World()))
    assert numbers(c) != numbers(a)


def test_resume_continues_exactly(entry, tmp_path):
    """Stopping after 2 epochs and resuming from `last` gives the uninterrupted run's numbers."""
    whole = numbers(train_epochs(job(entry, tmp_path / "whole"), World()))
    first = numbers(train_epochs(job(entry, tmp_path / "split", epochs=2), World()))
    resumed = list(train_epochs(job(entry, tmp_path / "split"), World()))
    assert [m["replayed"] for m in resumed[:2]] == [True, True]  # the driver can fill in what it missed
    assert numbers(resumed[:2]) == first
    assert numbers(resumed) == whole


def test_early_stop(entry, tmp_path):
    out = list(train_epochs(job(entry, tmp_path, epochs=30, learning_rate=1e-9, early_stop=True,
                                early_stop_patience=2), World()))
    assert len(out) < 30 and out[-1]["stop_reason"].startswith("early stop")


def test_timeout(entry, tmp_path):
    out = list(train_epochs(job(entry, tmp_path, epochs=50, timeout=1e-6), World()))
    assert len(out) == 1 and out[0]["stop_reason"].startswith("timeout")


def test_reduce_lr_on_plateau_can_be_turned_off(entry, tmp_path):
    args = dict(epochs=4, learning_rate=1e-9, reduce_lr_patience=1)
    on = [m["lr"] for m in train_epochs(job(entry, tmp_path / "on", **args), World())]
    off = [m["lr"] for m in train_epochs(job(entry, tmp_path / "off", reduce_lr=False, **args), World())]
    assert on[-1] < on[0] and off == [1e-9] * 4


def test_checkpoints_best_and_last(entry, tmp_path):
    from candle_ray import checkpoint

    out = list(train_epochs(job(entry, tmp_path), World()))
    best = min(out, key=lambda m: m["val_loss"])
    assert checkpoint.pointer(tmp_path / "checkpoints", "best")["epoch"] == best["epoch"]
    assert checkpoint.pointer(tmp_path / "checkpoints", "last")["epoch"] == 4


def test_a_tune_trial_writes_last_at_its_hand_over_pace_and_best_without_the_optimizer(entry, tmp_path):
    """`tune_checkpoint_s` (a Tune trial's pace of hand-overs, whose checkpoints are all its restores read):
    `last`, with the optimizer's state, at the first and the final epoch alone here; `best` at every
    improvement, without the optimizer's state unless it is the `last` too. Killed after epoch 4, the
    trial resumes from epoch 1's `last` and ends with the uninterrupted run's numbers."""
    from candle_ray import checkpoint

    paced = dict(epochs=6, learning_rate=0.01)
    folder, seen, results = tmp_path / "paced" / "checkpoints", [], []
    for m in train_epochs({**job(entry, tmp_path / "paced", **paced), "tune_checkpoint_s": 3600.0}, World()):
        last, best = checkpoint.pointer(folder, "last"), checkpoint.pointer(folder, "best")
        seen.append((last["epoch"], best["epoch"]))
        results.append(m)
        assert best["epoch"] == m["best_epoch"]
        assert ("optimizer" in checkpoint.load(folder, "best")) == (best["epoch"] == last["epoch"])
    assert [last for last, _ in seen] == [1, 1, 1, 1, 1, 6]
    assert any(best not in (1, 6) for _, best in seen)  # a best between the `last`s: the rule was exercised
    whole = numbers(train_epochs(job(entry, tmp_path / "every", **paced), World()))  # `last` every epoch
    assert numbers(results) == whole
    assert checkpoint.pointer(tmp_path / "every" / "checkpoints", "last")["epoch"] == 6

    killed = train_epochs({**job(entry, tmp_path / "killed", **paced), "tune_checkpoint_s": 3600.0}, World())
    assert [next(killed)["epoch"] for _ in range(4)] == [1, 2, 3, 4]
    killed.close()
    resumed = list(train_epochs({**job(entry, tmp_path / "killed", **paced), "tune_checkpoint_s": 3600.0}, World()))
    assert [m.get("replayed", False) for m in resumed] == [True] + [False] * 5
    assert numbers(resumed) == whole


def test_autoencoder_reports_reconstruction_correlation(tmp_path):
    """P1B1-style: the target is the input; val_corr is Pearson's r of inputs and reconstructions."""
    exp = load_experiment(ROOT / "experiments" / "p1b1.py")
    ds = synthesize(exp.dataset, tmp_path / "files", rows=(60, 20), features=80, seed=2)
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    from candle_ray.experiment import model_shape

    assert model_shape(entry) == {"input_dim": 80, "classes": 80}
    job = {"config": {**exp.defaults, "epochs": 3, "dense": [32, 8], "learning_rate": 0.01, "batch_size": 20},
           "model": "p1b1", "task": "autoencoder", "model_shape": model_shape(entry), "entry": str(entry.path),
           "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min", "threads": 1}
    out = list(train_epochs(job, World()))
    assert len(out) == 3 and all(-1 <= m["val_corr"] <= 1 for m in out) and "accuracy" not in out[0]
    assert out[-1]["val_loss"] < out[0]["val_loss"]


def test_regression_reports_r2_mae_corr(tmp_path):
    from candle_ray import TableDataset
    from candle_ray.experiment import model_shape

    ds = TableDataset((tmp_path / "growth.csv").as_uri(), label="growth", drop=("sample_id",), task="regression")
    ds = synthesize(ds, tmp_path / "files", rows=(120, 2), features=40, seed=4)  # val: 10 % of train
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    assert model_shape(entry) == {"input_dim": 40, "classes": 1}
    job = {"config": {"epochs": 6, "batch_size": 16, "learning_rate": 0.01, "optimizer": "adam", "dense": [32],
                      "dropout": 0.0, "activation": "relu", "rng_seed": 1},
           "model": "mlp", "task": "regression", "model_shape": model_shape(entry), "entry": str(entry.path),
           "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min", "threads": 1}
    out = list(train_epochs(job, World()))
    last = out[-1]
    assert {"val_r2", "val_mae", "val_corr"} <= set(last) and "accuracy" not in last
    assert last["val_loss"] < out[0]["val_loss"] and last["val_r2"] > out[0]["val_r2"]
    assert last["val_mae"] > 0 and -1 <= last["val_corr"] <= 1


# ---------------------------------------------------------------- objectives in the loop (candle_ray.objectives)

def test_binary_classifier_reports_auroc_with_balanced_weights(entry, tmp_path):
    """ATTN-style: balanced class weights, val_auroc as the experiment's metric and plateau monitor."""
    from candle_ray import checkpoint

    j = job(entry, tmp_path, epochs=2, class_weight="balanced", reduce_lr_metric="val_auroc")
    j.update(metric="val_auroc", mode="max")
    out = list(train_epochs(j, World()))
    assert len(out) == 2
    for m in out:
        assert 0 <= m["val_auroc"] <= 1 and 0 <= m["val_aupr"] <= 1 and 0 <= m["val_accuracy"] <= 1
    best = max(out, key=lambda m: m["val_auroc"])
    assert checkpoint.pointer(tmp_path / "checkpoints", "best")["epoch"] == best["epoch"]


def test_plateau_follows_the_monitored_metric_and_its_direction(entry):
    from candle_ray.errors import UsageError
    from candle_ray.loop import _monitored
    from candle_ray.objectives import CrossEntropy, Regression

    binary = CrossEntropy(2)
    assert _monitored({}, "val_loss", "min", binary) == ("val_loss", "min")  # NT3: unchanged
    assert _monitored({"reduce_lr_metric": "val_auroc"}, "val_loss", "min", binary) == ("val_auroc", "max")
    assert _monitored({"reduce_lr_metric": "val_auroc"}, "val_auroc", "min", binary) == ("val_auroc", "min")
    with pytest.raises(UsageError, match="reduce_lr_metric='val_auroc' is not reported"):
        _monitored({"reduce_lr_metric": "val_auroc"}, "val_loss", "min", Regression())
    with pytest.raises(UsageError, match="metric='val_r2' is not reported"):
        list(train_epochs({**job(entry, "/nonexistent"), "metric": "val_r2"}, World()))


def test_abstention_trains_and_resume_keeps_alpha(entry, tmp_path):
    """α adapts after every epoch from epoch init_abs_epoch + 2; a resumed run continues with the saved α."""
    from candle_ray import checkpoint
    from candle_ray.objectives import adapt_alpha

    args = dict(abstention=True, init_abs_epoch=0, min_abs_acc=0.999, alpha0=0.5)
    whole = list(train_epochs(job(entry, tmp_path / "whole", **args), World()))
    alphas = [m["abstention_alpha"] for m in whole]
    settings = {"init_abs_epoch": 0, "min_abs_acc": 0.999}
    expected = [0.5]  # α of epoch e is the one adapted from epoch e - 1's validation metrics
    for m in whole[:-1]:
        expected.append(adapt_alpha(expected[-1], m["epoch"], m["val_abstention_accuracy"],
                                    m["val_abstention_fraction"], settings))
    assert alphas == pytest.approx(expected) and alphas[1] == 0.5  # Keras' epoch 0 is never adapted
    for m in whole:
        assert 0 <= m["val_abstention_fraction"] <= 1 and 0 <= m["val_abstention_accuracy"] <= 1
        assert math.isfinite(m["loss"]) and math.isfinite(m["val_loss"])
    list(train_epochs(job(entry, tmp_path / "split", epochs=2, **args), World()))
    resumed = list(train_epochs(job(entry, tmp_path / "split", **args), World()))
    assert [m["abstention_alpha"] for m in resumed] == alphas
    assert numbers(resumed) == numbers(whole)
    model, state = checkpoint.rebuild(tmp_path / "whole", "last")
    last = whole[-1]
    assert state["model_shape"]["classes"] == 3
    assert state["objective"]["alpha"] == pytest.approx(adapt_alpha(alphas[-1], last["epoch"], last["val_abstention_accuracy"],
                                                                      last["val_abstention_fraction"], settings))
    assert model.head[-1].out_features == 3  # two classes + the abstention unit


@pytest.mark.parametrize("loss, extra, width", [("het", "val_mean_sigma", 2), ("qtl", "val_coverage_80", 3)])
def test_uq_regression_heads(tmp_path, loss, extra, width):
    from candle_ray import TableDataset, checkpoint
    from candle_ray.experiment import model_shape

    ds = TableDataset((tmp_path / "growth.csv").as_uri(), label="growth", drop=("sample_id",), task="regression")
    ds = synthesize(ds, tmp_path / "files", rows=(120, 2), features=40, seed=4)
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    job = {"config": {"epochs": 2, "batch_size": 16, "learning_rate": 0.01, "optimizer": "adam", "dense": [32],
                      "dropout": 0.0, "activation": "relu", "rng_seed": 1, "loss": loss},
           "model": "mlp", "task": "regression", "model_shape": model_shape(entry), "entry": str(entry.path),
           "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min", "threads": 1}
    out = list(train_epochs(job, World()))
    assert len(out) == 2
    for m in out:
        assert all(math.isfinite(m[k]) for k in ("loss", "val_loss", "val_r2", "val_mae", "val_corr", extra))
    model, state = checkpoint.rebuild(tmp_path / "run", "last")
    assert state["model_shape"]["classes"] == width and model.net[-1].out_features == width


def test_multitask_p3b1_reports_per_task_accuracy(tmp_path):
    """P3B1 on a joined entry whose labels are [rows, 3] with -1 off-task: masked mixed batches."""
    from candle_ray.data.benchmarks import p3b1
    from candle_ray.data.spec import ReaderDataset
    from candle_ray.experiment import model_shape

    archive = tmp_path / "P3B1_data.tar.gz"
    p3b1.write_synthetic(archive, train_rows=(30, 20, 24), test_rows=(9, 6, 8), classes=(3, 2, 4), features=40)
    ds = ReaderDataset("p3b1-tiny", reader="p3b1", sources={"archive": archive.as_uri()})
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    assert model_shape(entry)["classes"] == [3, 2, 4]
    job = {"config": {"epochs": 2, "batch_size": 10, "learning_rate": 0.05, "optimizer": "sgd", "shared_nnet_spec": [32],
                      "ind_nnet_spec": [16], "dropout": 0.0, "activation": "relu", "rng_seed": 1,
                      "class_weight": "balanced"},
           "model": "p3b1", "task": "classification", "model_shape": model_shape(entry), "entry": str(entry.path),
           "run_dir": str(tmp_path / "run"), "metric": "val_accuracy", "mode": "max", "threads": 1}
    out = list(train_epochs(job, World()))
    assert len(out) == 2
    for m in out:
        per_task = [m[f"{p}accuracy_{t}"] for t in range(3) for p in ("", "val_")]
        assert all(0 <= a <= 1 for a in per_task) and math.isfinite(m["loss"]) and math.isfinite(m["val_loss"])
        assert m["val_accuracy"] == pytest.approx(sum(m[f"val_accuracy_{t}"] for t in range(3)) / 3)


def test_cvae_conditions_on_the_class(tmp_path):
    """P1B1's cvae appends the one-hot class to the input; the checkpoint rebuilds that wider model."""
    from candle_ray import checkpoint

    p1b1 = load_experiment(ROOT / "experiments" / "p1b1.py")
    ds = synthesize(p1b1.dataset, tmp_path / "files", rows=(60, 12), features=40, seed=2)
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    config = {**p1b1.defaults, "model": "cvae", "epochs": 2, "dense": [16, 8], "batch_size": 20}
    job = {"config": config, "model": "p1b1", "task": "autoencoder", "entry": str(entry.path),
           "model_shape": {"input_dim": entry.num_features, "classes": entry.num_features},
           "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min", "threads": 1}
    history = list(train_epochs(job, World()))
    assert len(history) == 2 and all(math.isfinite(m["val_loss"]) for m in history)
    model, state = checkpoint.rebuild(tmp_path / "run")
    assert state["model_shape"]["condition_dim"] == entry.num_classes
    assert state["model_shape"]["input_dim"] == entry.num_features + entry.num_classes


def test_test_split_is_scored_every_epoch(tmp_path):
    """P1B3's held-out drugs x cell lines: test_loss and test_r2 next to the validation metrics."""
    p1b3 = load_experiment(ROOT / "experiments" / "p1b3.py")
    ds = synthesize(p1b3.dataset, tmp_path / "files", rows=(300, 60), features=60, seed=1)
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    assert "test" in entry.manifest["splits"]
    config = {**p1b3.defaults, "epochs": 2, "dense": [16], "learning_rate": 0.01}
    job = {"config": config, "model": "p1b3", "task": "regression", "entry": str(entry.path),
           "model_shape": {"input_dim": entry.num_features, "classes": 1},
           "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min", "threads": 1}
    history = list(train_epochs(job, World()))
    assert all(math.isfinite(m["test_loss"]) and "test_r2" in m for m in history)
    assert history[0]["test_loss"] != history[0]["val_loss"]


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_pbt_clone_keeps_its_own_optimizer_keys(name):
    from candle_ray.loop import apply_optimizer_keys, make_optimizer

    donor_model, model = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    donor = make_optimizer(name, donor_model.parameters(), 0.1, momentum=0.9, weight_decay=0.5)
    donor_model(torch.ones(3, 4)).sum().backward()
    donor.step()
    clone = make_optimizer(name, model.parameters(), 0.1, momentum=0.9, weight_decay=0.5)
    clone.load_state_dict(donor.state_dict())
    apply_optimizer_keys(clone, {"learning_rate": 0.02, "momentum": 0.3, "weight_decay": 0.05})
    kernels, biases = clone.param_groups
    assert kernels["lr"] == biases["lr"] == 0.02
    assert (kernels["weight_decay"], biases["weight_decay"]) == (0.05, 0.0)
    if name == "sgd":
        assert kernels["momentum"] == biases["momentum"] == 0.3
    assert clone.state_dict()["state"]  # the donor's moments survive


def test_each_epoch_reports_its_cpu_and_memory_use_unless_turned_off(entry, tmp_path):
    """MLflow's system-metric names, measured by rank 0 over the epoch; `system_metrics: false` drops them."""
    out = list(train_epochs(job(entry, tmp_path / "on", epochs=2), World()))
    for m in out:
        assert 0 <= m["system/cpu_utilization_percentage"] <= 100
        assert 0 < m["system/system_memory_usage_percentage"] <= 100 and m["system/system_memory_usage_megabytes"] > 0
        assert m["system/process_memory_rss_megabytes"] > 50 and m["system/process_cpu_percentage"] >= 0
        assert "system/gpu_0_memory_usage_megabytes" not in m  # CPU here
    off = list(train_epochs(job(entry, tmp_path / "off", epochs=1, system_metrics=False), World()))
    assert not [k for k in off[0] if k.startswith("system/")]


def test_a_model_the_data_cannot_take_is_a_usage_error(entry, tmp_path):
    """P1B3's own p1b3_conv_model.txt on 179 smoke features failed as a ValueError in the worker, which launch
    retried; a UsageError is never retried and exits 2 (launch._user_error). Built in the worker, not checked
    in the driver: that would import torch before the first epoch (+1.6 s of start-up measured)."""
    from candle_ray.errors import UsageError

    with pytest.raises(UsageError, match=r"model nt3 cannot be built for nt3-smoke \(200 features\): conv layer .* "
                                         r"longer than its input .*; change the config"):
        next(train_epochs(job(entry, tmp_path / "a", conv=[4, 300, 1]), World()))
    assert next(train_epochs(job(entry, tmp_path / "b", conv=[4, 3, 1], epochs=1), World()))["epoch"] == 1


def test_warm_up_and_the_cyclic_rate_set_each_epochs_rate_and_resume_where_they_were(entry, tmp_path):
    """CANDLE's warmup_lr: sgd's Keras default 0.01 up to learning_rate 0.05 over 5 epochs. clr_flag: the rate
    moves after each of an epoch's 4 steps (64 rows, batch 16); a run stopped after 2 epochs and resumed gives
    the uninterrupted run's numbers, its step count included."""
    from candle_ray.lr_schedule import cyclic_rate

    warm = [m["lr"] for m in train_epochs(job(entry, tmp_path / "wu", epochs=7, warmup_lr=True, reduce_lr=False), World())]
    assert warm == pytest.approx([0.01, 0.018, 0.026, 0.034, 0.042, 0.05, 0.05])
    keys = dict(clr_flag=True, clr_mode="trng2", clr_base_lr=0.001, clr_max_lr=0.05, clr_step_size=3)
    whole = numbers(train_epochs(job(entry, tmp_path / "clr", **keys), World()))
    assert [m[-1] for m in whole] == pytest.approx([cyclic_rate(4 * e, "trng2", 0.001, 0.05, 1.0, 3) for e in (1, 2, 3, 4)])
    list(train_epochs(job(entry, tmp_path / "split", epochs=2, **keys), World()))
    assert numbers(train_epochs(job(entry, tmp_path / "split", **keys), World())) == whole


def test_candles_label_noise_reaches_the_training_rows_only(entry, tmp_path):
    """nt3_noise_model.txt's study: with every training label flipped the model learns the opposite class, which
    the clean validation rows show (clean 0.94 at epoch 6 here; flipped 0.0)."""
    clean = list(train_epochs(job(entry, tmp_path / "clean", epochs=6), World()))
    flipped = list(train_epochs(job(entry, tmp_path / "flip", epochs=6, add_noise=True, label_noise=1.0), World()))
    assert clean[-1]["val_accuracy"] >= 0.8 and flipped[-1]["val_accuracy"] <= 0.2
