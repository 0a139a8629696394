"""`candle-ray tune` refuses bad input before starting anything: one line, exit 2."""

import json
import re
import textwrap

import pytest
from click.testing import CliRunner

from candle_ray.cli import main
from tests.conftest import ROOT

NT3 = ROOT / "experiments" / "nt3.py"
TINY = ROOT / "tests" / "support" / "tiny_nt3.py"


def tune(*args):
    return CliRunner().invoke(main, ["tune", *map(str, args)])


def error_line(result):
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("args", [("--search", "bayes"), ("--scheduler", "pb2"), ("--num-samples", "0"),
                                  ("--workers-per-trial", "0"), ("--time-budget", "soon"), ("--time-budget", "0"),
                                  ("--time-budget", "-5m"), ("--time-budget", "2x"), ("--time-budget", "1h 30m")])
def test_click_rejects(workdir, args):
    r = tune(NT3, *args)
    assert r.exit_code == 2 and ("Invalid value" in r.output or "is not" in r.output), r.output


@pytest.mark.parametrize("text, seconds, shown", [("3600", 3600, "1h"), ("45s", 45, "45s"), ("90m", 5400, "1h30m"),
                                                  ("1h30m", 5400, "1h30m"), ("1.5h", 5400, "1h30m"), ("2H", 7200, "2h"),
                                                  ("0.5", 0.5, "0.5s")])
def test_a_time_budget_is_read_as_people_write_durations(text, seconds, shown):
    from candle_ray import budget
    from candle_ray.cli import DurationType

    assert DurationType().convert(text, None, None) == seconds and budget.text(seconds) == shown


def test_a_sweeps_searchers_propose_nothing_past_its_deadline_and_its_trials_stop():
    """--time-budget works through Tune's ordinary paths (candle_ray.budget): past the deadline the searchers
    finish and each trial is stopped at its next result, as a scheduler stops one; another sweep goes on."""
    import time

    from ray import tune as ray_tune
    from ray.tune.search import Searcher

    from candle_ray import budget
    from candle_ray.search import make_searcher

    def searchers(sweep):
        model_based = make_searcher("optuna", "val_loss", "min", 0, max_concurrent=3, sweep=sweep)
        model_based.set_search_properties("val_loss", "min", {"x": ray_tune.uniform(0, 1)})
        variants = make_searcher("random", "val_loss", "min", 0, max_concurrent=3, sweep=sweep)
        variants.add_configurations({"e": {"run": _trainable, "num_samples": 5, "config": {"x": ray_tune.uniform(0, 1)}}})
        return model_based, variants

    (model_based, variants), (other, other_variants) = searchers("s"), searchers("other")
    stopper = budget.TrialStopper("s")
    assert budget.left("s") is None
    budget.start("s", time.monotonic() + 60)
    assert model_based.suggest("t1") is not None and variants.next_trial() is not None and not stopper("t1", {})
    assert budget.left("s") in ("1m of the time budget left", "59s of the time budget left")  # the live view
    budget.start("s", time.monotonic() - 1)  # its deadline has passed
    assert model_based.suggest("t2") == Searcher.FINISHED
    assert variants.next_trial() is None and variants.is_finished()
    assert stopper("t1", {}) and not stopper.stop_all()  # one trial at a time, never everything behind Tune's back
    assert budget.left("s") == "time budget reached"
    assert other.suggest("t3") is not None and other_variants.next_trial() is not None
    assert budget.end("s") and not budget.end("s")


def _trainable(config):
    pass


def test_empty_space(workdir, tmp_path):
    exp = tmp_path / "empty.py"
    exp.write_text(textwrap.dedent(f"""
        import importlib.util
        from dataclasses import replace
        spec = importlib.util.spec_from_file_location("nt3", {str(NT3)!r})
        nt3 = importlib.util.module_from_spec(spec); spec.loader.exec_module(nt3)
        experiment = replace(nt3.experiment, search_space={{}})
    """))
    r = tune(exp, "--smoke")
    assert r.exit_code == 2 and "empty search space" in error_line(r)


def test_space_key_not_in_config(workdir, tmp_path):
    """A key the experiment does not read is left out (a Supervisor file's clipnorm); a likely typo is refused."""
    space = tmp_path / "ga.json"
    space.write_text(json.dumps([{"name": "clipnorm", "type": "float", "lower": 1e-4, "upper": 10.0}]))
    r = tune(NT3, "--smoke", "--space", space)
    assert r.exit_code == 2 and "defines no parameters the experiment reads (it does not read clipnorm)" in error_line(r)
    space.write_text(json.dumps([{"name": "dropuot", "type": "float", "lower": 0.0, "upper": 0.5}]))
    r = tune(NT3, "--smoke", "--space", space)
    assert r.exit_code == 2 and "'dropuot' is not in the experiment's config; did you mean dropout?" in error_line(r)


def test_metric_not_reported(workdir):
    r = tune(TINY, "--smoke", "--metric", "val_auc")
    assert r.exit_code == 2 and "'val_auc' is not reported" in error_line(r)


def test_grid_over_continuous_key(workdir):
    r = tune(TINY, "--smoke", "--search", "grid")
    assert r.exit_code == 2 and "grid search needs discrete values" in error_line(r)


def test_pbt_without_mutable_key(workdir, tmp_path):
    space = tmp_path / "grid.json"
    space.write_text(json.dumps([{"name": "activation", "type": "categorical", "values": ["relu", "tanh"]}]))
    r = tune(TINY, "--smoke", "--space", space, "--scheduler", "pbt")
    assert r.exit_code == 2 and "PBT needs" in error_line(r)


def test_pbt_perturbations_stay_inside_the_searched_ranges():
    """PBT multiplies a value by 1.2 without looking at its range: a dropout of 0.85 must not become 1.02."""
    from ray import tune as ray_tune
    from ray.tune.schedulers.pbt import _explore  # the explore step PBT runs on a clone

    from candle_ray.search import make_scheduler

    space = {"dropout": ray_tune.uniform(0.0, 0.9), "learning_rate": ray_tune.loguniform(1e-4, 1e-2),
             "batch_size": ray_tune.randint(16, 129), "optimizer": ray_tune.choice(["adam", "sgd"])}
    pbt = make_scheduler("pbt", "val_loss", "min", max_epochs=8, space=space, seed=0)
    config = {"dropout": 0.85, "learning_rate": 0.0095, "batch_size": 120, "optimizer": "adam"}
    up, _ = _explore(config, pbt._hyperparam_mutations, 0.0, (1.2,), pbt._custom_explore_fn)
    assert up == {"dropout": 0.9, "learning_rate": 0.01, "batch_size": 128, "optimizer": "adam"}
    down, _ = _explore({**config, "learning_rate": 1.1e-4}, pbt._hyperparam_mutations, 0.0, (0.8,), pbt._custom_explore_fn)
    assert down["learning_rate"] == 1e-4 and down["dropout"] == pytest.approx(0.68) and down["batch_size"] == 96
    # a choice moves to a neighbouring value, never to one the space does not hold (64 * 1.2 = 77)
    choices = {**space, "batch_size": ray_tune.choice([16, 32, 64])}
    pbt = make_scheduler("pbt", "val_loss", "min", max_epochs=8, space=choices, seed=0)
    seen = {_explore({**config, "batch_size": 64}, pbt._hyperparam_mutations, 0.0, (factor,), pbt._custom_explore_fn)[0]
            ["batch_size"] for factor in (0.8, 1.2) for _ in range(8)}
    assert seen == {32, 64}, seen  # Ray's shift: left to 32, or right past the end, where it stays at 64


def test_ga_settings_need_a_genetic_search(workdir):
    r = tune(TINY, "--smoke", "--population", 6, "--mutation-prob", 0.2)
    assert r.exit_code == 2 and "--population, --mutation-prob: settings of a genetic search" in error_line(r)


def test_set_of_a_searched_key(workdir):
    r = tune(TINY, "--smoke", "--set", "learning_rate=0.1")
    assert r.exit_code == 2 and "fixes a key the search varies" in error_line(r)


def test_resume_of_missing_sweep(workdir):
    r = tune(TINY, "--resume", "--name", "nope")
    assert r.exit_code == 2 and "no sweep named 'nope'" in error_line(r)
    r = tune(TINY, "--resume")
    assert r.exit_code == 2 and "needs the run's --name" in error_line(r)


def test_resume_with_another_experiment(workdir):
    sweep = workdir / "candle-ray-sweeps" / "s1"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"experiment_file": str(NT3)}))
    r = tune(TINY, "--resume", "--name", "s1")
    assert r.exit_code == 2 and "was started with" in error_line(r)


def _proposals(seed, n=6):
    from ray import tune as rt

    from candle_ray.search import make_searcher

    space = {"learning_rate": rt.loguniform(1e-4, 1e-1), "dense": rt.choice([[64], [256, 64]]),
             "batch_size": rt.choice([16, 32])}
    searcher = make_searcher("optuna", "val_loss", "min", seed, max_concurrent=n)
    assert searcher.set_search_properties("best_val_loss", "min", space)
    proposals = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        proposals.append(config)
        searcher.on_trial_complete(f"t{i}", {"best_val_loss": config["learning_rate"], "training_iteration": 1})
    return proposals


def test_optuna_search_is_seeded_and_keeps_list_valued_choices():
    first, again, other = _proposals(3), _proposals(3), _proposals(4)
    assert first == again and first != other
    assert all(1e-4 <= c["learning_rate"] <= 1e-1 and c["dense"] in ([64], [256, 64]) for c in first)
    assert len({c["learning_rate"] for c in first}) == len(first)


def test_full_space_needs_smoke(workdir):
    r = tune(NT3, "--full-space")
    assert r.exit_code == 2 and "--full-space widens a --smoke search" in error_line(r)


def test_full_space_smoke_is_as_wide_as_its_layouts_need():
    from candle_ray.experiment import load_experiment

    nt3 = load_experiment(NT3)
    wide = nt3.full_space_smoke()
    assert wide.smoke.features == 11_000 and nt3.smoke.features == 1000  # the experiment itself is unchanged
    assert wide.search_space is nt3.search_space and wide.path == nt3.path


def test_every_conv_layout_builds_at_its_full_space_smoke_width():
    """Each searched conv layout of the conv nets builds on the data `--smoke --full-space` makes (a layout
    that does not fit fails at build time in one line, not as a zero-sized tensor mid-epoch)."""
    import models
    from candle_ray.experiment import load_experiment

    for name in ("nt3", "tc1"):
        experiment = load_experiment(ROOT / "experiments" / f"{name}.py")
        features = experiment.full_space_smoke().smoke.features
        for conv in experiment.search_space["conv"].categories if "conv" in experiment.search_space else []:
            models.build(name, {**experiment.defaults, "conv": conv, "input_dim": features, "classes": 2})
    with pytest.raises(ValueError, match="pooling 10 after conv layer 2 is longer than its output"):
        models.build("nt3", {"conv": [100, 100, 100, 100, 100, 1], "pool": [1, 10], "input_dim": 10_000, "classes": 2})


def test_a_search_over_abstention_is_not_ranked_by_val_loss(workdir, tmp_path):
    """An abstention model's val_loss is its abstention loss, not a cross-entropy: trials with and without it
    cannot be ranked by val_loss."""
    space = tmp_path / "abstain.json"
    space.write_text(json.dumps([{"name": "abstention", "type": "categorical", "values": [True, False]}]))
    r = tune(TINY, "--smoke", "--space", space)
    assert r.exit_code == 2 and "the search varies abstention (False, True)" in error_line(r)
    assert "--metric val_accuracy --mode max" in error_line(r)


def test_only_a_loss_that_changes_what_val_loss_is_refuses_a_val_loss_ranking():
    from ray import tune as ray_tune

    from candle_ray import when
    from candle_ray.errors import UsageError
    from candle_ray.search import check_ranked_losses

    config = {"loss": "mse", "abstention": False, "optimizer": "adam"}
    check_ranked_losses({"loss": ray_tune.choice(["mse", "mean_squared_error"])}, config, ["val_loss"])  # aliases
    check_ranked_losses({"loss": ray_tune.choice(["mse", "het"])}, config, ["val_r2"])  # not ranked by val_loss
    check_ranked_losses({"loss": "het"}, config, ["val_loss"])  # a constant: one loss
    sgd_qtl = {"loss": when(optimizer="sgd", then=ray_tune.choice(["qtl"]))}  # the config's loss elsewhere
    for space, base, shown in [({"loss": ray_tune.choice(["mse", "het", "qtl"])}, config, "het, mse, qtl"),
                               (sgd_qtl, config, "mse, qtl"), (sgd_qtl, {"optimizer": "adam"}, "default, qtl")]:
        with pytest.raises(UsageError, match=rf"varies loss \({shown}\), so the trials' val_loss values"):
            check_ranked_losses(space, base, ["val_r2", "val_loss"])  # any ranked metric counts


def test_a_range_past_a_keys_limit_is_refused_before_any_trial():
    """dropout over [0, 1.2] failed only the trials that drew 1 or more; a range may touch an exclusive bound."""
    from ray import tune as ray_tune

    from candle_ray import when
    from candle_ray.errors import UsageError
    from candle_ray.experiment import check_space_rules

    check_space_rules({"dropout": ray_tune.uniform(0.0, 1.0), "learning_rate": ray_tune.uniform(0.0, 0.1),
                       "batch_size": ray_tune.randint(1, 65), "epochs": {"grid_search": [1, 2]}})
    for space, message in [
            ({"dropout": ray_tune.uniform(0.0, 1.2)}, "search-space range dropout [0, 1.2]: dropout=1.2 must be < 1.0"),
            ({"batch_size": ray_tune.randint(0, 64)}, "range batch_size [0, 64]: batch_size=0 must be >= 1"),
            ({"optimizer": ray_tune.choice(["adam", "lion"])}, "search space: optimizer='lion' is not one of"),
            ({"momentum": when(optimizer="sgd", then=ray_tune.uniform(-0.5, 0.9))}, "momentum=-0.5 must be >= 0.0")]:
        with pytest.raises(UsageError, match=re.escape(message)):
            check_space_rules(space)


def test_a_metric_without_a_mode_is_ranked_in_its_own_direction():
    """--metric val_accuracy on an experiment ranked by val_loss (min) minimised accuracy: NCI-60's "best"
    trial had val_accuracy 0.15 where the others had 0.46 to 0.77."""
    from candle_ray.experiment import load_experiment
    from candle_ray.sweep import default_mode

    nt3 = load_experiment(NT3)  # val_loss, min
    assert [default_mode(m, nt3) for m in (None, "val_loss", "val_accuracy", "val_auroc", "val_r2", "n_params",
                                           "epoch_time_s", "val_ece", "conformal_val_interval_width")] == \
        ["min", "min", "max", "max", "max", "min", "min", "min", "min"]


@pytest.mark.parametrize("args, message", [
    (("--mode", "max"), "--mode max would rank val_loss the wrong way and call the worst trial the best"),
    (("--metric", "val_accuracy", "--mode", "min"), "val_accuracy improves upwards: pass --mode max"),
    (("--metric", "val_loss", "--mode", "min", "--metric", "val_auroc", "--mode", "min"), "rank val_auroc the wrong way")])
def test_a_mode_against_the_metrics_direction_is_refused(workdir, args, message):
    r = tune(TINY, "--smoke", *args)
    assert r.exit_code == 2 and message in error_line(r), r.output


def test_a_sweep_resumes_only_on_the_data_it_started_on():
    from types import SimpleNamespace

    from candle_ray.errors import UsageError
    from candle_ray.sweep import check_same_data

    entry = SimpleNamespace(name="khan", fingerprint="b" * 16)
    check_same_data(None, entry, "s")  # a new sweep
    check_same_data({"sweep": {}}, entry, "s")  # a record from before fingerprints were kept
    check_same_data({"dataset_fingerprint": "b" * 16}, entry, "s")
    with pytest.raises(UsageError, match=r"sweep 's' started on dataset khan aaaa.*now prepares bbbb.*another --name"):
        check_same_data({"dataset_fingerprint": "a" * 16}, entry, "s")


def test_ensemble_members_count_their_seeds_from_the_runs_rng_seed(tmp_path):
    """`ensemble --set rng_seed=7` was refused ("fixes a key the search varies"), and a config file's rng_seed was
    passed over for the experiment's default: the members are seeded rng_seed, rng_seed + 1, ... of the run."""
    from candle_ray.cli import _first_member_seed
    from candle_ray.experiment import load_experiment

    nt3 = load_experiment(ROOT / "experiments" / "nt3.py")
    run = {"config_file": None, "sets": ["rng_seed=7", "epochs=1"], "smoke": True}
    assert _first_member_seed(nt3, run) == (7, ["epochs=1"])
    config_file = tmp_path / "c.txt"
    config_file.write_text("[Global_Params]\nrng_seed=11\n")
    assert _first_member_seed(nt3, {**run, "config_file": str(config_file), "sets": []}) == (11, [])
    assert _first_member_seed(nt3, {**run, "sets": []})[0] == nt3.defaults["rng_seed"]
