"""train_fraction (candle_ray.data.subsample) and the learning curve drawn from such runs (candle_ray.learning_curve):
pure numpy, no Ray."""

import math

import numpy as np
import pytest

from candle_ray import learning_curve
from candle_ray.data import subsample
from candle_ray.data.feed import BatchFeed, JoinedFeed


def test_a_share_keeps_each_class_part_and_the_exact_count():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    kept = subsample.chosen(labels, 0.25, seed=3, by_class=True)
    assert len(kept) == subsample.rows(100, 0.25) == 25 and np.all(np.diff(kept) > 0)
    assert np.bincount(labels[kept]).tolist() == [20, 4, 1]  # 20, 3.75, 1.25: the largest remainder gets the row
    assert np.array_equal(kept, subsample.chosen(labels, 0.25, seed=3, by_class=True))  # every DDP rank: the same
    assert not np.array_equal(kept, subsample.chosen(labels, 0.25, seed=4, by_class=True))  # another seed: others
    assert subsample.chosen(labels, 1.0, seed=3, by_class=True) is None
    assert len(subsample.chosen(np.linspace(0, 1, 100), 0.3, seed=0, by_class=False)) == 30  # a regressor's
    assert len(subsample.chosen(labels, 0.001, seed=0, by_class=False)) == 1  # never none


def test_a_feed_keeps_only_its_rows_and_its_sharding():
    x, y = np.arange(40, dtype=np.float32).reshape(20, 2), np.arange(20)
    feed = BatchFeed(x, y, 4, shuffle=True, seed=5, rank=1, world_size=2)
    kept = subsample.keep_rows(feed, np.array([1, 3, 5, 7, 9, 11]))
    assert (kept.x.shape[0], kept.rank, kept.world_size, kept.seed) == (6, 1, 2, 5)
    assert sorted(kept.y.tolist()) == [1, 3, 5, 7, 9, 11] and kept.x[0, 0].item() == 2.0
    assert subsample.keep_rows(feed, None) is feed
    joined = JoinedFeed({"t": np.eye(5, dtype=np.float32)}, {"k": np.array([0, 1, 2, 3, 4, 0]), "y": np.arange(6.0)},
                        [{"table": "t", "key": "k"}], ["y"], 2)
    kept = subsample.keep_rows(joined, np.array([4, 5]))
    assert kept.rows == 2 and kept.columns["k"].tolist() == [4, 0] and kept.columns["y"].tolist() == [4.0, 5.0]


def test_a_power_law_is_recovered_and_read_out():
    finals = [(share, 0.5 + 4 * round(share * 1000) ** -0.5 + noise) for share in (0.1, 0.2, 0.4, 1.0)
              for noise in (-0.002, 0.002)]
    curve = learning_curve.points(finals, 1000)
    assert [p.rows for p in curve] == [100, 200, 400, 1000] and all(p.runs == 2 for p in curve)
    law = learning_curve.fit(curve)
    assert law.b == pytest.approx(0.5, abs=0.05) and law.c == pytest.approx(0.5, abs=0.02)
    said = learning_curve.lines(curve, law, "val_loss", "min")
    assert "twice the rows (2,000) would give val_loss ≈ 0.589" in said[-1] and said[-1].endswith("predicted to help")
    assert learning_curve.fit(curve[:2]) is None
    assert "pass 3 or more to --sizes" in learning_curve.lines(curve[:2], None, "val_loss", "min")[-1]
    flat = learning_curve.points([(s, 0.8 + d) for s in (0.25, 0.5, 1.0) for d in (-0.05, 0.05)], 100)
    line = learning_curve.lines(flat, learning_curve.fit(flat), "val_accuracy", "max")[-1]
    assert "no clear gain" in line or "not predicted to help" in line or "no power law fitted" in line, line
    steepening = learning_curve.points([(0.25, 1.5), (0.5, 1.25), (0.75, 0.87), (1.0, 0.62)], 43)  # NCI-60's shape
    assert learning_curve.fit(steepening) is None  # its best "law" is b -> 0, a straight line in log n
    assert math.isclose(law.at(1000), 0.5 + 4 / 1000 ** 0.5, rel_tol=0.02)


def test_a_run_trains_on_its_share_of_the_rows(tmp_path):
    """The loop's training feed holds train_fraction's rows; the validation feed all of its rows."""
    from candle_ray import loop
    from candle_ray.cli import _prepare
    from candle_ray.data.cache import Cache
    from candle_ray.experiment import load_experiment
    from candle_ray.job import make_job
    from tests.conftest import ROOT

    exp = load_experiment(ROOT / "tests" / "support" / "tiny_nt3.py")
    entry = _prepare(exp, smoke=True, cache=Cache(tmp_path / "cache"), log=lambda *_: None)
    config = exp.resolve_config(smoke=True, sets=["epochs=1", "train_fraction=0.25", "class_weight=balanced"])
    job = make_job(exp, config, entry, run_dir=str(tmp_path / "run"))
    keep = loop._kept_rows(job, seed=int(config["rng_seed"]))
    feed, val_feed, _ = loop._make_feeds(job, loop.World(), 16, int(config["rng_seed"]), keep)
    n = entry.rows["train"]
    assert feed.x.shape[0] == len(keep) == subsample.rows(n, 0.25) and val_feed.x.shape[0] == entry.rows["val"]
    [metrics] = loop.train_epochs(job, loop.World())
    assert math.isfinite(metrics["val_loss"])
    with pytest.raises(Exception, match="train_fraction"):
        exp.resolve_config(smoke=True, sets=["train_fraction=1.5"])


def test_the_baseline_curve_fits_the_runs_own_rows(tmp_path):
    """baseline.fit_shares: each (train_fraction, rng_seed) on the rows the loop draws for that run; all the rows
    give the sweep's own baseline."""
    from candle_ray import baseline
    from candle_ray.cli import _prepare
    from candle_ray.data.cache import Cache
    from candle_ray.experiment import load_experiment
    from tests.conftest import ROOT

    exp = load_experiment(ROOT / "tests" / "support" / "tiny_nt3.py")
    entry = _prepare(exp, smoke=True, cache=Cache(tmp_path / "cache"), log=lambda *_: None)
    fitted = baseline.fit_shares(entry, [(0.5, 1), (0.5, 2), (1.0, 1)])
    assert [share for share, _ in fitted] == [0.5, 0.5, 1.0]
    assert fitted[2][1] == pytest.approx(baseline.fit(entry).metrics)
    assert fitted[0][1] != fitted[1][1]  # two seeds, two draws of half the rows


def test_lc_refuses_before_ray_starts(tmp_path, monkeypatch):
    """`candle-ray lc`: a metric training does not report, --pick without --from-sweep and a share out of (0, 1]
    are usage errors (exit 2) found before any Ray or MLflow work."""
    from click.testing import CliRunner

    from candle_ray.cli import main
    from tests.conftest import ROOT

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CANDLE_RAY_CACHE", str(tmp_path / "cache"))
    tiny = str(ROOT / "tests" / "support" / "tiny_nt3.py")
    for args, said in ((["--metric", "val_nope"], "metric 'val_nope' is not reported by training"),
                       (["--pick", "knee"], "--pick chooses one configuration of --from-sweep's Pareto front"),
                       (["--sizes", "0.5,2"], "each share of the training rows must be in (0, 1]")):
        r = CliRunner().invoke(main, ["lc", tiny, "--smoke", "--name", "x", *args])
        assert r.exit_code == 2 and said in r.output, r.output
    assert not (tmp_path / "candle-ray-sweeps").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_share_of_a_streamed_split_is_gathered_into_memory_where_it_fits(tmp_path, monkeypatch):
    """A split that streams (larger than half the free memory; here forced with feed=stream) still trains on a
    train_fraction: its kept rows are copied out of the memory-mapped split, the same rows as without streaming."""
    from dataclasses import replace

    from candle_ray import loop
    from candle_ray.cli import _prepare
    from candle_ray.data import feed as feeds
    from candle_ray.data.cache import Cache
    from candle_ray.errors import UsageError
    from candle_ray.experiment import load_experiment
    from candle_ray.job import make_job
    from tests.conftest import ROOT

    exp = load_experiment(ROOT / "tests" / "support" / "tiny_nt3.py")
    entry = _prepare(exp, smoke=True, cache=Cache(tmp_path / "cache"), log=lambda *_: None)
    config = exp.resolve_config(smoke=True, sets=["epochs=1", "train_fraction=0.25"])
    job = make_job(exp, config, entry, run_dir=str(tmp_path / "run"))
    keep = loop._kept_rows(job, seed=1)
    in_memory, _, _ = loop._make_feeds(job, loop.World(), 16, 1, keep)
    streamed = replace(job, feed="stream")
    gathered, _, _ = loop._make_feeds(streamed, loop.World(), 16, 1, keep)
    assert isinstance(gathered, BatchFeed) and np.array_equal(gathered.x.numpy(), in_memory.x.numpy())
    assert isinstance(loop._make_feeds(streamed, loop.World(), 16, 1, None)[0], feeds.StreamFeed)  # all the rows stream
    monkeypatch.setattr(feeds, "available_memory", lambda: 1000)  # 1 kB free: the kept rows do not fit
    with pytest.raises(UsageError, match=f"train_fraction keeps {len(keep):,} training rows, more than half the free "
                                         "memory holds; use a smaller train_fraction"):
        loop._make_feeds(streamed, loop.World(), 16, 1, keep)
