"""Survival data (`TableDataset(..., label="months", event="dead")`): the signed-time code, Cox's partial
likelihood and Harrell's C against brute force, the cache's checks, training to a concordance index well
above chance, the Cox baseline, and predict's risk column and concordance on labelled rows."""

import re

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from candle_ray import baseline, cox, ensemble, objectives
from candle_ray import predict as predicting
from candle_ray.cli import main
from candle_ray.data.cache import Cache, open_split
from candle_ray.data.features import read_for_prediction
from candle_ray.data.spec import TableDataset
from candle_ray.errors import DataError, UsageError
from candle_ray.loop import World, train_epochs


def brute_concordance(risk, target):
    time, event = np.abs(target), target > 0
    right = pairs = 0.0
    for i in np.flatnonzero(event):
        for j in np.flatnonzero(time > time[i]):
            pairs += 1
            right += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return right / pairs


def brute_log_likelihood(risk, target):
    time, event = np.abs(target), target > 0
    return sum(risk[i] - np.log(np.exp(risk[time >= time[i]]).sum()) for i in np.flatnonzero(event))


@pytest.mark.parametrize("seed", range(4))
def test_concordance_and_partial_likelihood_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    time, event = rng.integers(1, 12, 80).astype(float), rng.random(80) < 0.4  # many tied times
    risk, target = np.round(rng.normal(size=80), 1), cox.encode(time, event)  # and tied risks
    assert cox.concordance(risk, target) == pytest.approx(brute_concordance(risk, target))
    log_likelihood, events = cox.partial_log_likelihood(risk, target)
    assert events == event.sum() and log_likelihood == pytest.approx(brute_log_likelihood(risk, target))
    assert cox.event_losses(risk, target).sum() == pytest.approx(-log_likelihood)
    loss = cox.cox_loss(torch.tensor(risk, requires_grad=True), torch.tensor(target))
    assert float(loss.detach()) == pytest.approx(-log_likelihood / events, rel=1e-6)


def test_signed_times_and_perfect_or_reversed_orders():
    target = cox.encode(np.array([5.0, 3.0, 8.0]), np.array([1, 0, 1]))
    assert target.tolist() == [5.0, -3.0, 8.0]
    time, event = cox.decode(target)
    assert time.tolist() == [5.0, 3.0, 8.0] and event.tolist() == [True, False, True]
    times = np.arange(1.0, 21.0)
    assert cox.concordance(-times, times) == 1.0 and cox.concordance(times, times) == 0.0
    assert np.isnan(cox.concordance(np.zeros(3), -np.ones(3)))  # all censored: no pair is known


def test_a_batch_without_events_trains_nothing():
    risk = torch.randn(6, requires_grad=True)
    loss = cox.cox_loss(risk, -torch.arange(1.0, 7.0))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(risk.grad == 0)


def test_the_spec_names_its_event_column():
    assert TableDataset("c.csv", label="months", event="dead").task == "survival"
    with pytest.raises(UsageError, match="names its event column"):
        TableDataset("c.csv", label="months", task="survival")
    with pytest.raises(UsageError, match="also the label"):
        TableDataset("c.csv", label="months", event="months")
    with pytest.raises(UsageError, match="does not fit a survival"):
        objectives.loss_name({"loss": "mse"}, "survival")
    assert objectives.loss_name({}, "survival") == "cox"


def cohort(n: int, seed: int = 0, d: int = 10):
    """Rows whose hazard is exp(2 x0 - x1): months to the event, a third censored at random earlier times."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    months = rng.exponential(20 * np.exp(-(2 * X[:, 0] - X[:, 1]))) + 0.05
    dead = rng.random(n) > 1 / 3
    months[~dead] *= rng.uniform(0.2, 1.0, int((~dead).sum()))
    frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(d)])
    return frame.assign(months=np.round(months, 3) + 0.001, dead=dead.astype(int),
                        patient=[f"p{i}" for i in range(n)])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("survival")
    frame = cohort(700)
    frame.iloc[:600].to_csv(tmp / "train.csv", index=False)
    frame.iloc[600:].to_csv(tmp / "new.csv", index=False)
    ds = TableDataset(str(tmp / "train.csv"), label="months", event="dead", drop=("patient",), val_fraction=0.25)
    said = []
    entry = Cache(tmp / "cache").prepare(ds, log=said.append)
    return tmp, entry, said


def test_the_cache_keeps_signed_times_and_holds_out_events_evenly(prepared):
    tmp, entry, said = prepared
    _, y_train = open_split(entry.path, "train")
    X_val, y_val = open_split(entry.path, "val")
    assert X_val.shape == (150, 10) and entry.manifest["event"] == "dead"  # neither time nor event is a feature
    truth = pd.read_csv(tmp / "train.csv")
    assert sorted(np.abs(np.concatenate([y_train, y_val])).round(3)) == sorted(truth["months"].round(3))
    assert int((y_val > 0).sum()) == round(150 * truth["dead"].mean())  # stratified by event
    assert any(line.startswith("events: train ") for line in said)


@pytest.mark.parametrize("cell, match", [("0", "not positive"), ("-2", "not positive"), ("soon", "not a number")])
def test_bad_times_are_refused_in_one_line(tmp_path, cell, match):
    frame = cohort(30).astype({"months": object})
    frame.loc[4, "months"] = cell
    frame.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataError, match=match) as err:
        Cache(tmp_path / "cache").prepare(TableDataset(str(tmp_path / "c.csv"), label="months", event="dead",
                                                       drop=("patient",)), log=lambda *_: None)
    assert "\n" not in str(err.value)


def test_event_words_and_missing_events_are_refused(tmp_path):
    frame = cohort(30).astype({"dead": str})
    frame.loc[2, "dead"] = "deceased"
    frame.to_parquet(tmp_path / "c.parquet")
    ds = TableDataset(str(tmp_path / "c.parquet"), label="months", event="dead", drop=("patient",))
    with pytest.raises(DataError, match="holds 'deceased' at .* it must be 1 .* or 0"):
        Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    cohort(30).assign(dead=0).to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(DataError, match="0 on every train row"):
        Cache(tmp_path / "cache").prepare(TableDataset(str(tmp_path / "none.csv"), label="months", event="dead",
                                                       drop=("patient",)), log=lambda *_: None)
    frame = cohort(30).assign(dead=np.where(cohort(30)["dead"] > 0, "true", "False"))
    frame.to_csv(tmp_path / "words.csv", index=False)  # true/false read as 1/0
    entry = Cache(tmp_path / "cache").prepare(TableDataset(str(tmp_path / "words.csv"), label="months", event="dead",
                                                           drop=("patient",)), log=lambda *_: None)
    assert entry.manifest["task"] == "survival"


def job(entry, run_dir, **config):
    from candle_ray.data.features import describe
    from candle_ray.experiment import model_shape

    base = {"epochs": 15, "batch_size": 64, "learning_rate": 0.003, "optimizer": "adam", "dropout": 0.0,
            "activation": "relu", "dense": [16], "rng_seed": 1}
    return {"config": {**base, **config}, "model": "mlp", "task": "survival", "model_shape": model_shape(entry),
            "data": describe(entry), "entry": str(entry.path), "run_dir": str(run_dir), "metric": "val_loss",
            "mode": "min", "threads": 1}


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    _, entry, _ = prepared
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, list(train_epochs(job(entry, run_dir), World()))


def test_training_ranks_new_patients_and_predict_writes_risks(prepared, trained):
    tmp, entry, _ = prepared
    run_dir, history = trained
    assert set(history[0]) >= {"loss", "val_loss", "val_cindex", "val_risk_std"}
    assert history[-1]["val_cindex"] >= 0.75 and history[-1]["val_loss"] < history[0]["val_loss"]
    member = predicting.load_member(run_dir)
    X, y, ids = read_for_prediction(tmp / "new.csv", member.data)
    assert np.array_equal(y > 0, pd.read_csv(tmp / "new.csv")["dead"].to_numpy() > 0)
    pred = predicting.predict([member], predicting.array_batches(X))
    frame = predicting.table(pred, member.data, ids=ids)
    assert list(frame.columns) == ["id", "risk"] and cox.concordance(frame["risk"].to_numpy(), y) >= 0.75
    line = predicting.labelled_line(frame, y, member.data, 0.1)
    assert "concordance index" in line and f"({int((y > 0).sum())} events)" in line
    assert predicting.spread_only_note(pred, None, member.data) is None


def test_rows_without_an_event_value_are_predicted_not_scored(prepared, trained, tmp_path):
    tmp, _, _ = prepared
    member = predicting.load_member(trained[0])
    frame = pd.read_csv(tmp / "new.csv").astype({"dead": object})
    frame.loc[:9, "dead"] = ""
    frame.to_csv(tmp_path / "rows.csv", index=False)
    _, y, _ = read_for_prediction(tmp_path / "rows.csv", member.data)
    assert np.isnan(y[:10]).all() and np.isfinite(y[10:]).all()


def test_conformal_is_refused_for_a_survival_model(prepared, trained, tmp_path):
    tmp, _, _ = prepared
    r = CliRunner().invoke(main, ["predict", str(trained[0]), "--data", str(tmp / "new.csv"), "--out",
                                  str(tmp_path / "p.tsv"), "--conformal", str(tmp / "new.csv")])
    assert r.exit_code == 2 and "risk score" in r.output and not (tmp_path / "p.tsv").exists()


def test_cox_baseline_is_scored_as_the_network_is(prepared):
    _, entry, _ = prepared
    fitted = baseline.fit(entry)
    assert fitted.model.startswith("Cox regression (penalty=")
    assert set(fitted.metrics) == {"val_loss", "val_cindex", "val_risk_std"}
    assert fitted.metrics["val_cindex"] >= 0.75
    weights, bias = fitted.linear
    X, y = open_split(entry.path, "val")
    assert cox.val_metrics(X @ weights[0] + bias[0], y) == pytest.approx(fitted.metrics, rel=1e-4)
    state = baseline.checkpoint_state(fitted, entry, 0.5)["objective"]  # kept as a network's checkpoint keeps it
    assert state["risk_scale"] == pytest.approx(fitted.metrics["val_risk_std"])
    hazard = cox.baseline_hazard(X @ weights[0] + bias[0], y)
    assert state["baseline_hazard"]["log_cumhaz"] == pytest.approx(hazard["log_cumhaz"], rel=1e-6)
    assert baseline.shares_val_loss({}, "survival")


def test_ensemble_scores_and_the_baseline_test_on_ranks():
    rng = np.random.default_rng(3)
    time, dead = rng.exponential(size=300) + 0.01, rng.random(300) < 0.7
    target = cox.encode(time, dead)
    good, noise = -np.log(time), rng.normal(size=300)
    scores = ensemble._scores(good, target, "survival")
    assert set(scores) == {"ensemble_val_loss", "ensemble_val_cindex", "ensemble_val_risk_std"}
    assert scores["ensemble_val_cindex"] > 0.9
    beaten, t = ensemble.baseline_beaten(good, noise, target, "survival")
    assert beaten and t > 3
    assert ensemble.baseline_beaten(noise, good, target, "survival")[1] < 0


def _gather_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from candle_ray.loop import World

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = torch.arange(3 + 2 * rank, dtype=torch.float64).reshape(-1, 1).repeat(1, 2) + 100 * rank
        torch.save(World(rank=rank, world_size=2).gather_rows(rows), f"{out}-{rank}")
    finally:
        dist.destroy_process_group()


def test_ranks_gather_every_validation_row(tmp_path):
    """DDP validation of a survival model: each rank's rows (uneven counts) reach every rank whole, so its
    concordance index and partial likelihood are the whole split's (two real gloo processes)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_gather_rank, args=(r, port, str(tmp_path / "out"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    expected = [*range(3), *(100 + k for k in range(5))]
    for rank in range(2):
        gathered = torch.load(tmp_path / f"out-{rank}", weights_only=True)
        assert gathered.shape == (8, 2) and gathered[:, 0].tolist() == expected


def test_cv_folds_and_subsamples_keep_the_share_of_events(prepared):
    from candle_ray.data import folds, subsample
    from candle_ray.data.spec import strata
    from candle_ray.sweep import fold_assignment

    _, entry, _ = prepared
    labels = folds.pooled_labels(entry)
    events = labels > 0
    assignment = fold_assignment(entry, {"folds": 5, "seed": 0, "stratify": "auto"})
    counts = [int(events[assignment == k].sum()) for k in range(5)]
    assert max(counts) - min(counts) <= 1, counts  # stratified by event, not by each distinct time
    keep = subsample.chosen(strata("survival", labels), 0.25, 0, True)
    assert abs(int(events[keep].sum()) - round(0.25 * events.sum())) <= 1


def test_an_ensemble_pools_risks_on_one_scale():
    """A member whose risks spread 100x wider does not decide the pooled ranking alone: each is divided by
    its validation spread (its checkpoint's risk_scale) and the pool put back on their mean spread."""
    wide, narrow = np.array([3.0, 2.0, 1.0, 0.0]) * 100, np.array([0.0, 0.5, 2.0, 3.5]) * 0.01
    members = [predicting.Member(None, {"objective": {"risk_scale": s}, "data": {"task": "survival"}}, str(s))
               for s in (100.0, 0.01)]
    outputs = [wide.reshape(1, 4, 1), narrow.reshape(1, 4, 1)]
    pooled = np.mean([o[0, :, 0] for o in predicting._on_one_risk_scale(members, outputs, [1, 1], None)], axis=0)
    assert np.argmax(pooled) == 3 and pooled[0] > pooled[1]  # both rankings count: the narrow one's top row wins
    single = predicting._on_one_risk_scale(members[:1], outputs[:1], [1], None)
    assert single[0] is outputs[0]  # one model's risks stay its log hazard ratios
    members[1].state["objective"] = {}  # a model trained on every row has no validation spread: none is scaled
    assert predicting._on_one_risk_scale(members, outputs, [1, 1], None) is outputs


def test_baseline_hazard_and_kaplan_meier_by_hand():
    """Five rows, events at 1, 2 and 4, censored at 2 and 3: with risks 0, Breslow's H0 is Nelson-Aalen's
    (1/5, + 1/4, + 1/1) and Kaplan-Meier steps 4/5, x 3/4, x 0/1; a risk η scales the hazard by exp(η)."""
    target = cox.encode(np.array([1.0, 2, 2, 3, 4]), np.array([1, 1, 0, 0, 1]))
    hazard = cox.baseline_hazard(np.zeros(5), target)
    assert hazard["times"] == [1, 2, 4] and hazard["max_time"] == 4
    assert np.exp(hazard["log_cumhaz"]) == pytest.approx([0.2, 0.45, 1.45])
    assert cox.survival_at(np.array([0.0, np.log(2)]), hazard, [0.5, 2.5, 9]) == pytest.approx(
        np.exp(-np.array([[0, 0.45, 1.45], [0, 0.9, 2.9]])))
    km = cox.kaplan_meier(target, [0.5, 1, 3, 4, 5])
    assert km[:4] == pytest.approx([1, 0.8, 0.6, 0]) and np.isnan(km[4])  # past the last follow-up: unknown
    risk = np.array([0.3, -1.0, 2.0, 0.5, -0.2])  # at each event, the exp(η) of the rows at risk: brute force
    brute = np.cumsum([1 / np.exp(risk).sum(), 1 / np.exp(risk[1:]).sum(), 1 / np.exp(risk[4:]).sum()])
    assert np.exp(cox.baseline_hazard(risk, target)["log_cumhaz"]) == pytest.approx(brute)
    assert cox.baseline_hazard(risk, -np.abs(target)) is None  # no event: no hazard to estimate


def test_predict_gives_survival_probabilities_near_the_truth(prepared, trained, tmp_path):
    """`predict --times`: each row's probability of no event by each time, from the baseline hazard the model
    estimated on its validation rows; on new rows of the cohort (true hazard exp(2 x0 - x1) / 20 per month) the
    mean predicted survival is near the true mean, and the line beside it gives the rows' Kaplan-Meier."""
    tmp, _, _ = prepared
    member = predicting.load_member(trained[0])
    assert member.state["objective"]["baseline_hazard"]["times"]  # kept with the weights at the best epoch
    r = CliRunner().invoke(main, ["predict", str(trained[0]), "--data", str(tmp / "new.csv"), "--out",
                                  str(tmp_path / "p.csv"), "--times", "20,5,100000"])
    assert r.exit_code == 0, r.output
    said = r.output.split("survival by ")
    assert said[1].startswith("5: mean predicted ") and "Kaplan-Meier " in said[1], r.output
    for part in said[1:3]:  # a model that ranks the rows well beats the cohort's average survival for all
        model, average = (float(x) for x in re.findall(r"Brier score ([\d.]+) \(the Kaplan-Meier for every row: "
                                                       r"([\d.]+)\)", part)[0])
        assert model < average, part
    assert "--times 100000 past the longest follow-up" in r.output
    frame = pd.read_csv(tmp_path / "p.csv")
    assert list(frame.columns) == ["id", "risk", "survival_5", "survival_20", "survival_100000"]
    curves = frame[["survival_5", "survival_20", "survival_100000"]].to_numpy()
    assert ((curves >= 0) & (curves <= 1)).all() and (np.diff(curves, axis=1) <= 0).all()
    by_risk = frame.sort_values("risk")["survival_20"].to_numpy()
    assert (np.diff(by_risk) <= 1e-12).all()  # one model: a higher risk, a lower survival
    rows = pd.read_csv(tmp / "new.csv")
    for t in (5, 20):
        truth = np.exp(-(t - 0.05) * np.exp(2 * rows["g0"] - rows["g1"]) / 20)
        assert abs(frame[f"survival_{t}"].mean() - truth.mean()) < 0.08, t
    for bad in ("0", "soon", ""):
        r = CliRunner().invoke(main, ["predict", str(trained[0]), "--data", str(tmp / "new.csv"), "--out",
                                      str(tmp_path / "q.csv"), "--times", bad])
        assert r.exit_code == 2 and "positive times" in r.output and not (tmp_path / "q.csv").exists(), r.output


def test_ensembles_average_survival_probabilities_and_models_without_a_hazard_are_named():
    """Members' probabilities pool as they are (each from its own risks and hazard, not on one risk scale)."""
    hazards = [{"times": [1.0, 3.0], "log_cumhaz": [np.log(0.1), np.log(0.5)], "max_time": 4.0},
               {"times": [2.0], "log_cumhaz": [np.log(0.3)], "max_time": 5.0}]
    members = [predicting.Member(None, {"objective": {"risk_scale": s, "baseline_hazard": h},
                                        "data": {"task": "survival"}}, f"m{s}") for s, h in zip((1.0, 10.0), hazards)]
    outputs = [np.array([[[0.0], [1.0]]]), np.array([[[5.0], [-5.0]]])]
    curves = predicting._survival_curves(members, outputs, None, (2.5, 4.0))
    expected = np.mean([cox.survival_at(o[0, :, 0], h, (2.5, 4.0)) for o, h in zip(outputs, hazards)], axis=0)
    assert curves == pytest.approx(expected)
    assert "--times 6 past the longest follow-up (4)" in predicting.follow_up_note(members, (3, 6))
    members[1].state["objective"] = {"risk_scale": 10.0}  # trained on every row: no validation rows
    with pytest.raises(UsageError, match="m10.0 keeps no baseline hazard"):
        predicting._survival_curves(members, outputs, None, (2.5,))
    classifier = predicting.Member(None, {"data": {"task": "classification"}}, "c")
    with pytest.raises(UsageError, match="a classification model predicts no survival times"):
        predicting.predict([classifier], predicting.array_batches(np.zeros((2, 3))), times=(5,))


def test_brier_score_weights_rows_by_how_likely_they_were_still_followed():
    """Graf's IPCW Brier score: without censoring, the plain mean squared gap to 1{alive}; by hand on five rows
    (events at 1, 2 and 4; censored at 2 and 3; the censoring's Kaplan-Meier 3/4 after 2): the rows dead by
    2.5 weigh 1 / G(their time-) = 1, those still followed 1 / G(2.5) = 4/3, the one censored at 2 nothing."""
    rng = np.random.default_rng(0)
    times, survival = rng.exponential(10, 50), rng.random(50)
    plain = cox.brier_score(cox.encode(times, np.ones(50)), survival, 7.0)
    assert plain == pytest.approx(np.mean(((times > 7) - survival) ** 2))
    target = cox.encode(np.array([1.0, 2, 2, 3, 4]), np.array([1, 1, 0, 0, 1]))
    by_hand = (0.9 ** 2 + 0.8 ** 2 + 0 + 0.4 ** 2 / 0.75 + 0.5 ** 2 / 0.75) / 5
    assert cox.brier_score(target, np.array([0.9, 0.8, 0.7, 0.6, 0.5]), 2.5) == pytest.approx(by_hand)
