"""CANDLE Supervisor search-space files → Ray Tune samplers."""

import json

import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from candle_ray.errors import UsageError
from candle_ray.experiment import load_experiment
from candle_ray.space import read_space_file
from tests.conftest import ROOT

DEFAULTS = load_experiment(ROOT / "experiments" / "nt3.py").defaults


def write(tmp_path, data):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(data))
    return path


def test_ga_file(tmp_path):
    found = read_space_file(write(tmp_path, [
        {"name": "batch_size", "type": "ordered", "element_type": "int", "values": [32, 64], "sigma": 1},
        {"name": "epochs", "type": "int", "lower": 2, "upper": 5, "sigma": 1},
        {"name": "dense", "type": "categorical", "element_type": "string", "values": ["500 100 50", "1000 500"]},
        {"name": "drop", "type": "float", "lower": 0.0, "upper": 0.9, "sigma": 0.045},
        {"name": "early_stop", "type": "logical"},
        {"name": "optimizer", "type": "constant", "value": "adam"},
    ]), DEFAULTS)
    s = found.space
    assert isinstance(s["batch_size"], Categorical) and s["batch_size"].categories == [32, 64]
    assert isinstance(s["epochs"], Integer) and (s["epochs"].lower, s["epochs"].upper) == (2, 6)  # inclusive 5
    assert s["dense"].categories == [[500, 100, 50], [1000, 500]]  # CANDLE strings become lists
    assert isinstance(s["dropout"], Float)  # drop is CANDLE's old name of dropout
    assert s["early_stop"].categories == [True, False] and s["optimizer"] == "adam"
    assert found.searcher is None and found.num_samples is None


def test_random_settings(tmp_path):
    found = read_space_file(write(tmp_path, {"parameters": {"epochs": [4, 8], "learning_rate": [1e-5, 0.1],
                                                            "batch_size": [30, 30]}, "samples": {"num": [120]}}), DEFAULTS)
    assert isinstance(found.space["epochs"], Integer) and isinstance(found.space["learning_rate"], Float)
    assert found.space["batch_size"] == 30 and found.num_samples == 120


def test_grid_settings(tmp_path):
    found = read_space_file(write(tmp_path, {"parameters": {"epochs": [4, 6, 8], "learning_rate": [1e-4, 0.1]}}), DEFAULTS)
    assert found.searcher == "grid" and found.space["epochs"] == {"grid_search": [4, 6, 8]}


@pytest.mark.parametrize("data, message", [
    ([{"name": "learning_rat", "type": "float", "lower": 1e-4, "upper": 0.1}], "'learning_rat' is not in the experiment's config; did you mean learning_rate"),
    ([{"name": "clipnorm", "type": "float", "lower": 1e-4, "upper": 10}], "defines no parameters the experiment reads .it does not read clipnorm."),
    ([{"name": "optimizer", "type": "categorical", "values": ["adam", "lion"]}], "not one of"),
    ([{"name": "epochs", "type": "int", "lower": 9, "upper": 2}], "lower <= upper"),
    ([{"name": "epochs", "type": "poisson"}], "unknown type"),
    ([{"type": "int"}], "needs 'name' and 'type'"),
    ([{"name": "epochs", "type": "int", "lower": 2, "upper": 9, "lg": True}], "epochs has field 'lg'; did you mean 'log'. A GA entry takes name, type, values"),
    ([{"name": "dropout", "type": "float", "lower": 0.0, "upper": 0.9, "log": True}], "needs numbers 0 < lower"),
    ({"parameters": {"epochs": [1, 2, 3]}, "samples": {"num": [4]}}, "need [low, high]"),
    ({"something": 1}, "neither a GA list"),
    ([], "defines no parameters"),
])
def test_bad_space_files(tmp_path, data, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_space_file(write(tmp_path, data), DEFAULTS)


def test_not_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{oops")
    with pytest.raises(UsageError, match="is not JSON"):
        read_space_file(path, DEFAULTS)


def test_log_ranges_and_the_note_on_wide_uniform_ones(tmp_path):
    """Supervisor's GA files draw learning_rate uniformly over [1e-5, 0.1]; "log": true draws it log-uniformly,
    and a sweep says when a range over three decades or more is drawn uniformly."""
    from ray.tune.search.sample import LogUniform

    from candle_ray.space import wide_uniform_note

    entries = [{"name": "learning_rate", "type": "float", "lower": 1e-5, "upper": 0.1},
               {"name": "epochs", "type": "int", "lower": 2, "upper": 64, "log": True},
               {"name": "dropout", "type": "float", "lower": 0.0, "upper": 0.9}]
    space = read_space_file(write(tmp_path, entries), DEFAULTS).space
    epochs = space["epochs"]
    assert isinstance(epochs.get_sampler(), LogUniform) and (epochs.lower, epochs.upper) == (2, 65)  # inclusive 64
    assert wide_uniform_note(space) == ("note: learning_rate [1e-05, 0.1] drawn uniformly: 9 in 10 draws land in the "
                                        "top decade; sample them log-uniformly (tune.loguniform in the experiment, "
                                        "\"log\": true in a GA space file)")
    entries[0]["log"] = True
    space = read_space_file(write(tmp_path, entries), DEFAULTS).space
    assert isinstance(space["learning_rate"].get_sampler(), LogUniform) and wide_uniform_note(space) is None


def test_supervisors_own_files(tmp_path):
    """Supervisor's GA files (workflows/GA/data/*_param_space_ga.json) name keys a model never reads (NT3's
    clipnorm, decay, rho, beta_1...: CANDLE's Keras NT3 built its optimizer from Keras defaults), data options
    (Combo's cell_features), comments and PBT's def_values: every one of them was refused at its first
    unknown key. Now the keys are left out and named in one warning; extra fields are ignored, as there."""
    from candle_ray.experiment import check_space_rules

    combo = load_experiment(ROOT / "experiments" / "combo.py")
    entries = [
        {"name": "cell_features", "type": "categorical", "element_type": "string", "values": ["mirna", "expression"]},
        {"name": "conv", "type": "constant", "value": "0 0 0", "comment": "def_value 128 20 1 128 10 1"},
        {"name": "lr", "type": "float", "lower": 0.0001, "upper": 0.01, "sigma": "0.000495"},
        {"name": "batch_size", "type": "categorical", "element_type": "int", "values": [32, 64], "def_values": [32]},
        {"name": "clipnorm", "type": "float", "lower": 0.0001, "upper": 10.0, "sigma": 0.499995},
        {"name": "nesterov", "type": "logical"},
        {"name": "epochs", "type": "constant", "value": 5},
    ]
    found = read_space_file(write(tmp_path, entries), combo.known_keys)
    assert set(found.space) == {"learning_rate", "batch_size", "epochs"} and found.space["epochs"] == 5
    assert found.left_out == ("cell_features", "conv", "clipnorm", "nesterov")  # combo has no conv
    line = found.left_out_line("ga.json", "combo", combo.reader_options())
    assert line == ("warning: ga.json: not searched: conv, clipnorm, nesterov: experiment 'combo' does not read "
                    "them; cell_features: options of the dataset's reader, and a sweep trains on one dataset (set "
                    "them in the experiment's ReaderDataset options)")
    assert read_space_file(write(tmp_path, entries[2:4]), combo.known_keys).left_out_line("x", "combo", {}) is None
    # their momentum [0, 10] diverges here (CANDLE's NT3 never used it): refused before any trial
    momentum = read_space_file(write(tmp_path, [{"name": "momentum", "type": "float", "lower": 0, "upper": 10.0}]),
                               DEFAULTS).space
    with pytest.raises(UsageError, match=r"range momentum \[0, 10\]: momentum=10.0 must be < 1.0; narrow"):
        check_space_rules(momentum)


def test_settings_files_leave_out_what_the_experiment_does_not_read(tmp_path):
    """Supervisor's grid and random settings.json for P1B1 search N1 and NE, the old P1B1's layer widths."""
    p1b1 = load_experiment(ROOT / "experiments" / "p1b1.py").known_keys
    grid = read_space_file(write(tmp_path, {"parameters": {"epochs": [4, 6], "N1": [1500], "NE": [600]}}), p1b1)
    assert grid.space == {"epochs": {"grid_search": [4, 6]}} and grid.left_out == ("N1", "NE")
    random = read_space_file(write(tmp_path, {"parameters": {"epochs": [4, 8], "N1": [1500, 1500]},
                                              "samples": {"num": [120]}}), p1b1)
    assert set(random.space) == {"epochs"} and random.left_out == ("N1",) and random.num_samples == 120


def test_a_constant_epochs_is_the_schedulers_horizon():
    """A GA file's epochs "constant" 5 over an experiment whose config says 3: ASHA's max_t was 3, and it
    stopped every trial at epoch 3 as "stopped early"."""
    from ray import tune

    from candle_ray.search import max_epochs

    assert max_epochs({"epochs": 5}, 3) == 5 and max_epochs({}, 3) == 3
    assert max_epochs({"epochs": tune.randint(2, 9)}, 3) == 8 and max_epochs({"epochs": tune.choice([4, 12])}, 3) == 12
