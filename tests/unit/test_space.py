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
    ([{"name": "clipnorm", "type": "float", "lower": 1e-4, "upper": 10}], "'clipnorm' is not in the experiment's config"),
    ([{"name": "learning_rat", "type": "float", "lower": 1e-4, "upper": 0.1}], "did you mean learning_rate"),
    ([{"name": "optimizer", "type": "categorical", "values": ["adam", "lion"]}], "not one of"),
    ([{"name": "epochs", "type": "int", "lower": 9, "upper": 2}], "lower <= upper"),
    ([{"name": "epochs", "type": "poisson"}], "unknown type"),
    ([{"type": "int"}], "needs 'name' and 'type'"),
    ([{"name": "epochs", "type": "int", "lower": 2, "upper": 9, "lg": True}], "epochs has unknown field.s. lg; a GA entry takes name, type, values"),
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
