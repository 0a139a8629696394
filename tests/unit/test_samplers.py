"""The model-based searchers (`tune --search optuna|gp|cmaes|ga|bohb`) on the driver, without a cluster:
seeded, learning from finished trials, refused with the schedulers and spaces they are not sound with."""

import math

import pytest
from ray import tune

from candle_ray import samplers
from candle_ray.errors import UsageError
from candle_ray.search import make_scheduler, make_searcher, validate

SPACE = {"learning_rate": tune.loguniform(1e-5, 1e-1), "dropout": tune.uniform(0.0, 0.6),
         "batch_size": tune.choice([16, 32, 64])}


def loss(config: dict) -> float:
    """A smooth bowl with its floor at learning rate 1e-3, dropout 0.3, batch 32."""
    return ((math.log10(config["learning_rate"]) + 3) ** 2 + 10 * (config["dropout"] - 0.3) ** 2
            + (0.0 if config["batch_size"] == 32 else 0.5))


def search(name: str, seed: int, trials: int, options: dict | None = None) -> list[tuple[dict, float]]:
    """`trials` suggestions, one at a time, each told its loss before the next (as with --max-concurrent 1)."""
    searcher = make_searcher(name, "val_loss", "min", seed, max_concurrent=1, options=options)
    searcher.set_search_properties("best_val_loss", "min", dict(SPACE))
    seen = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        value = loss(config)
        searcher.on_trial_complete(f"t{i}", {"best_val_loss": value})
        seen.append((config, value))
    return seen


GA = {"population": 6, "crossover_prob": 0.5, "mutation_prob": None}


@pytest.mark.parametrize("name", samplers.MODEL_BASED)
def test_each_searcher_is_seeded(name):
    options = GA if name == "ga" else None
    first, again, other = (search(name, seed, 8, options) for seed in (3, 3, 4))
    assert first == again and first != other


@pytest.mark.parametrize("name", samplers.MODEL_BASED)
def test_each_searcher_learns_from_finished_trials(name):
    """Over 30 trials, the later ones find lower losses than the earlier ones do, on average: the sampler
    uses what it was told."""
    values = [v for _, v in search(name, 0, 30, GA if name == "ga" else None)]
    assert sum(values[-10:]) / 10 < sum(values[:10]) / 10, values
    assert min(values) < 0.3, min(values)


@pytest.mark.parametrize("name", [n for n in samplers.MODEL_BASED if n != "cmaes"])  # cmaes refuses this space
def test_no_searcher_repeats_a_configuration(name):
    """NSGA-II's children copy parents whole (a GDSC ga sweep ran 12 configurations in 16 trials; here, before,
    ga 8 in 20, optuna, gp and bohb 16): a repeat is told its twin's value and the searcher asks again, then takes
    an untried configuration, so trials train new configurations while any are left."""
    space = {"dense": tune.choice([[], [64], [256, 64]]), "batch_size": tune.choice([16, 32, 64]),
             "learning_rate": tune.choice([1e-4, 1e-3, 1e-2])}  # 27 configurations
    searcher = make_searcher(name, "val_loss", "min", 0, max_concurrent=1, options=GA if name == "ga" else None)
    searcher.set_search_properties("best_val_loss", "min", dict(space))
    seen = []
    for i in range(20):
        config = searcher.suggest(f"t{i}")
        seen.append(str(sorted(config.items())))
        value = (config["learning_rate"] - 1e-3) ** 2 + len(config["dense"])
        searcher.on_trial_complete(f"t{i}", {"best_val_loss": value})
    assert len(set(seen)) == 20, len(set(seen))


def test_samplers_are_the_documented_ones():
    import optuna

    kinds = {"optuna": optuna.samplers.TPESampler, "bohb": optuna.samplers.TPESampler,
             "gp": optuna.samplers.GPSampler, "cmaes": optuna.samplers.CmaEsSampler, "ga": optuna.samplers.NSGAIISampler}
    for name, kind in kinds.items():
        assert isinstance(samplers.sampler(name, 0, GA if name == "ga" else None), kind)
    assert samplers.sampler("ga", 0, {**GA, "population": 12})._population_size == 12
    # the probabilities reach the GA: the generations after the first differ
    mild, wild = (search("ga", 0, 18, {**GA, **probs}) for probs in
                  ({"crossover_prob": 0.5, "mutation_prob": 0.1}, {"crossover_prob": 1.0, "mutation_prob": 0.9}))
    assert mild[:6] == wild[:6] and mild[6:] != wild[6:]


@pytest.mark.parametrize("name", samplers.MODEL_BASED)
def test_each_searcher_survives_tunes_snapshot(name, tmp_path):
    """Tune pickles the searcher at every experiment snapshot and restores it on --resume."""
    searcher = make_searcher(name, "val_loss", "min", 0, max_concurrent=1, options=GA if name == "ga" else None)
    searcher.set_search_properties("best_val_loss", "min", dict(SPACE))
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"best_val_loss": 1.0})
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = make_searcher(name, "val_loss", "min", 0, max_concurrent=1, options=GA if name == "ga" else None)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t1") == searcher.suggest("t1")


def test_ga_population_defaults_to_five_generations():
    assert [samplers.GASettings.for_budget(n).population for n in (8, 20, 100, 1000)] == [4, 4, 20, 50]
    assert samplers.GASettings.for_budget(100, population=10).population == 10


def test_bohb_stops_early_with_hyperband_brackets():
    scheduler = make_scheduler("asha", "val_loss", "min", max_epochs=27, space=SPACE, seed=0, grace=1,
                               brackets=samplers.BOHB_BRACKETS)
    assert len(scheduler._brackets) == samplers.BOHB_BRACKETS


@pytest.mark.parametrize("searcher, scheduler, space, says", [
    ("bohb", "fifo", SPACE, "--search bohb brings its own early stopping"),
    ("bohb", "hyperband", SPACE, "drop --scheduler hyperband"),
    ("gp", "pbt", SPACE, "PBT changes a trial's hyperparameters"),
    ("optuna", "hyperband", SPACE, "creates every trial before any finishes"),
    ("cmaes", "asha", {"batch_size": tune.choice([16, 32])}, "every key here is categorical"),
])
def test_unsound_combinations_are_refused_in_one_line(searcher, scheduler, space, says):
    with pytest.raises(UsageError, match=says) as refused:
        validate(searcher, scheduler, space)
    assert "\n" not in str(refused.value)


def test_notes_before_the_first_trial():
    assert "batch_size (categorical) are drawn at random" in samplers.note("cmaes", SPACE, 16, None)
    assert "one random generation" in samplers.note("ga", SPACE, 8, {"population": 8})
    assert samplers.note("ga", SPACE, 40, {"population": 8}) is None and samplers.note("gp", SPACE, 8, None) is None


@pytest.mark.parametrize("name", samplers.MODEL_BASED)
def test_list_valued_choices_come_back_as_the_lists(name):
    """CANDLE's `dense` and `conv` are lists: past the GA's first generation, NSGA-II's crossover turned them
    into numpy arrays (which then failed to compare); every searcher must hand back the choices themselves."""
    choices = [[8], [64], [512, 128]]
    searcher = make_searcher(name, "val_loss", "min", 0, max_concurrent=1, options={**GA, "population": 4})
    searcher.set_search_properties(None, None, {"learning_rate": SPACE["learning_rate"],
                                                "dense": tune.choice(choices)})
    for i in range(16):
        config = searcher.suggest(f"t{i}")
        assert type(config["dense"]) is list and config["dense"] in choices, config
        searcher.on_trial_complete(f"t{i}", {"best_val_loss": abs(math.log10(config["learning_rate"]) + 2)
                                             + len(config["dense"])})


def test_a_replayed_step_does_not_warn():
    """A resumed trial reports its earlier epochs again; Optuna's warning about each ("... this `step=2` is
    already reported.") is silenced, as the sweep's own output says what was resumed."""
    import warnings

    import optuna

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samplers.sampler("optuna", 0)
        trial = optuna.create_study().ask()
        trial.report(0.5, 2)
        trial.report(0.5, 2)
    assert not [w for w in caught if "already reported" in str(w.message)], [str(w.message) for w in caught]
