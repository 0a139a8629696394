"""Conditional search-space keys (`when(optimizer="sgd", then=...)`) without a cluster: how random search and
TPE draw them, the refusals, the smoke space, warm-start points, ensemble members and the report."""

import math

import pytest
from ray import tune
from ray.tune.search import BasicVariantGenerator

from candle_ray import when
from candle_ray.conditional import check, order, without_orphans
from candle_ray.errors import UsageError
from candle_ray.search import make_searcher, validate
from candle_ray.warm_start import fitted_point

SPACE = {"momentum": when(optimizer="sgd", then=tune.uniform(0.5, 0.99)),  # before the key it depends on
         "optimizer": tune.choice(["adam", "sgd", "rmsprop"]),
         "rho": when(optimizer=("rmsprop", "sgd"), then=tune.choice([[0.9], [0.95, 0.9]])),
         "learning_rate": tune.loguniform(1e-4, 1e-1)}


def _trainable(config):
    pass


def random_configs(seed: int, n: int = 40) -> list[dict]:
    generator = BasicVariantGenerator(random_state=seed)
    generator.add_configurations({"e": {"run": _trainable, "num_samples": n, "config": dict(SPACE)}})
    return [generator.next_trial().config for _ in range(n)]


def consistent(config: dict) -> bool:
    momentum, rho = config["momentum"], config["rho"]
    return ((momentum is not None) == (config["optimizer"] == "sgd") and 0.5 <= (momentum or 0.5) <= 0.99
            and (rho is not None) == (config["optimizer"] in ("rmsprop", "sgd")) and rho in (None, [0.9], [0.95, 0.9]))


def test_random_search_draws_a_key_only_where_its_condition_holds():
    configs = random_configs(3)
    assert all(consistent(c) for c in configs)
    assert {c["optimizer"] for c in configs} == {"adam", "sgd", "rmsprop"}
    assert configs == random_configs(3) and configs != random_configs(4)  # seeded


@pytest.mark.parametrize("name", ["optuna", "bohb"])
def test_tpe_asks_for_a_key_only_where_its_condition_holds(name):
    searcher = make_searcher(name, "val_loss", "min", 0, max_concurrent=1)
    searcher.set_search_properties(None, None, dict(SPACE))
    configs = []
    for i in range(30):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        # sgd with momentum 0.9 is best: TPE should find it
        loss = (0.0 if config["optimizer"] == "sgd" else 0.5) + abs((config["momentum"] or 0) - 0.9) \
            + abs(math.log10(config["learning_rate"]) + 2) / 4
        searcher.on_trial_complete(f"t{i}", {"best_val_loss": loss})
    assert all(consistent(c) for c in configs), [c for c in configs if not consistent(c)]
    study = searcher.searcher._ot_study
    assert all(("momentum" in t.params) == (t.params["optimizer"] == "sgd") for t in study.trials)
    late = configs[-10:]
    assert sum(c["optimizer"] == "sgd" for c in late) >= 6 and min(abs(c["momentum"] - 0.9) for c in late if c["momentum"]) < 0.1


@pytest.mark.parametrize("searcher, scheduler, says", [
    ("grid", "fifo", "--search grid searches every key in every trial, and momentum, rho are searched under"),
    ("gp", "fifo", "--search gp"), ("cmaes", "fifo", "--search cmaes"), ("ga", "fifo", "--search ga"),
    ("random", "pbt", "PBT perturbs every trial's keys"),
])
def test_searchers_and_schedulers_that_cannot_express_a_condition_refuse(searcher, scheduler, says):
    with pytest.raises(UsageError, match=says):
        validate(searcher, scheduler, dict(SPACE))


def test_conditions_on_keys_not_searched_or_values_never_taken_are_refused():
    with pytest.raises(UsageError, match="'momentum' is searched when optimizer is \\['sgd'\\], but optimizer is not searched"):
        check({"momentum": when(optimizer="sgd", then=tune.uniform(0, 1))}, "random", "fifo")
    with pytest.raises(UsageError, match="a value optimizer never takes"):
        check({"optimizer": tune.choice(["adam"]), "momentum": when(optimizer="sgd", then=tune.uniform(0, 1))},
              "random", "fifo")
    with pytest.raises(UsageError, match="one KEY=VALUE condition and then=<a tune domain>"):
        when(optimizer="sgd", rho=1, then=tune.uniform(0, 1))
    with pytest.raises(UsageError, match="cycle through"):
        order({"a": when(b=1, then=tune.choice([1])), "b": when(a=1, then=tune.choice([1]))})
    assert order(SPACE) == ["optimizer", "momentum", "rho", "learning_rate"]


def test_a_smoke_search_that_fixes_the_deciding_key_fixes_what_it_decides():
    assert list(without_orphans({k: v for k, v in SPACE.items() if k != "optimizer"})) == ["learning_rate"]


def test_earlier_trials_become_points_only_where_they_agree_with_the_conditions():
    row = {"config.optimizer": "sgd", "config.momentum": "0.9", "config.rho": "[0.9]", "config.learning_rate": "0.01"}
    assert fitted_point(row, SPACE) == {"optimizer": "sgd", "momentum": 0.9, "rho": [0.9], "learning_rate": 0.01}
    adam = {**row, "config.optimizer": "adam", "config.momentum": "", "config.rho": ""}
    assert fitted_point(adam, SPACE) == {"optimizer": "adam", "momentum": None, "rho": None, "learning_rate": 0.01}
    assert fitted_point({**row, "config.optimizer": "adam"}, SPACE) is None  # adam with a momentum: not this space
    assert fitted_point({**row, "config.momentum": ""}, SPACE) is None  # sgd without one


def test_a_warm_started_tpe_takes_points_without_their_inactive_keys():
    from candle_ray.warm_start import WarmStart

    points = [{"optimizer": "adam", "momentum": None, "rho": None, "learning_rate": 0.01},
              {"optimizer": "sgd", "momentum": 0.9, "rho": [0.95, 0.9], "learning_rate": 0.02}]
    searcher = make_searcher("optuna", "val_loss", "min", 0, 1, warm=WarmStart(("a",), points, [0.5, 0.1], 0))
    searcher.set_search_properties(None, None, dict(SPACE))
    trials = searcher.searcher._ot_study.trials
    assert [set(t.params) for t in trials] == [{"optimizer", "learning_rate"}, set(SPACE)]
    assert trials[1].params["rho"] == "[0.95, 0.9]"  # its label
    assert consistent(searcher.suggest("t0"))


def test_ensemble_members_from_a_conditional_sweep_keep_their_inactive_keys_empty():
    from candle_ray.ensemble import top_configs

    rows = [{"trial_id": "a", "status": "completed", "val_loss": "0.1", "config.optimizer": "adam",
             "config.momentum": ""},
            {"trial_id": "b", "status": "completed", "val_loss": "0.2", "config.optimizer": "sgd",
             "config.momentum": "0.9"}]
    assert top_configs(rows, "val_loss", "min", 2, "s") == [{"optimizer": "adam", "momentum": None},
                                                           {"optimizer": "sgd", "momentum": 0.9}]


def test_the_report_draws_keys_some_trials_did_not_search(tmp_path):
    from candle_ray.report import write_report
    from tests.unit.test_report import fake_trials

    trials = fake_trials()
    for i, t in enumerate(trials):
        t["params"]["momentum"] = str(0.5 + i / 100) if t["params"]["optimizer"] == "sgd" else "None"
    files = write_report(trials, sweep="s", metric="val_loss", mode="min", out=tmp_path,
                         space_keys=["learning_rate", "dropout", "optimizer", "momentum"])
    assert "parallel_coordinates.png" in {f.name for f in files}
