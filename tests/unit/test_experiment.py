"""Experiment files, --set overrides and CANDLE config-file import."""

import textwrap
from pathlib import Path

import pytest

from candle_ray.data.spec import ReaderDataset
from candle_ray.errors import UsageError
from candle_ray.experiment import coerce, load_experiment, parse_sets, read_candle_config

ROOT = Path(__file__).resolve().parents[2]
NT3 = ROOT / "experiments" / "nt3.py"


@pytest.fixture(scope="module")
def nt3():
    return load_experiment(NT3)


def test_nt3_declares_candle_defaults(nt3):
    d = nt3.defaults
    assert (d["epochs"], d["batch_size"], d["learning_rate"], d["optimizer"]) == (400, 20, 0.001, "sgd")
    assert d["conv"] == [128, 20, 1, 128, 10, 1] and d["pool"] == [1, 10] and d["dense"] == [200, 20]
    assert nt3.dataset.classes == 2 and nt3.dataset.scaling == "maxabs"
    assert nt3.metric == "val_loss" and nt3.mode == "min"
    assert set(nt3.search_space) <= set(d)


def test_every_shipped_experiment_loads():
    for path in sorted((ROOT / "experiments").glob("*.py")):
        exp = load_experiment(path)
        assert exp.path == path.resolve()
        ds = exp.dataset  # a ReaderDataset (P1B3, Uno, ...) maps source roles to files
        sources = ds.sources.values() if isinstance(ds, ReaderDataset) else ds.sources().values()
        assert all(s.url.startswith(("http", "ftp", "file://")) for s in sources)


def test_own_matrix_example_is_at_most_15_lines():
    assert len((ROOT / "experiments" / "expression_table.py").read_text().splitlines()) <= 15


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.py")


def test_file_without_experiment(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(UsageError, match="defines no `experiment`"):
        load_experiment(path)


def test_experiment_of_wrong_type(tmp_path):
    path = tmp_path / "wrong.py"
    path.write_text("experiment = {'name': 'x'}\n")
    with pytest.raises(UsageError, match="not a candle_ray.Experiment"):
        load_experiment(path)


def test_import_error_reports_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import os\n\nraise RuntimeError('boom')\n")
    with pytest.raises(UsageError, match=r"at line 3: RuntimeError: boom"):
        load_experiment(path)


def test_syntax_error(tmp_path):
    path = tmp_path / "syntax.py"
    path.write_text("experiment = (\n")
    with pytest.raises(UsageError, match="syntax error"):
        load_experiment(path)


def test_relative_data_path_resolves_against_experiment_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""
        from candle_ray import Experiment, TableDataset
        experiment = Experiment(name="mine", dataset=TableDataset("data/m.csv", label="y"), model="mlp",
                                defaults={"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"})
    """))
    exp = load_experiment(path)
    assert exp.dataset.train.url == (tmp_path / "data" / "m.csv").as_uri()
    assert exp.dataset.name == "m"


def test_sets_are_typed(nt3):
    got = parse_sets(nt3.defaults, ["epochs=3", "learning_rate=1e-2", "dense=500 100 50", "conv=[64, 32, 16]",
                                    "early_stop=yes", "optimizer=adam", "dropout=0"])
    assert got == {"epochs": 3, "learning_rate": 0.01, "dense": [500, 100, 50], "conv": [64, 32, 16],
                   "early_stop": True, "optimizer": "adam", "dropout": 0.0}
    assert isinstance(got["learning_rate"], float) and isinstance(got["dropout"], float)


@pytest.mark.parametrize("item, message", [
    ("epochz=3", "did you mean epochs"),
    ("lr=0.1", "did you mean learning_rate"),
    ("drop=0.5", "did you mean dropout"),
    ("zzz=1", "known keys"),
    ("epochs", "not key=value"),
    ("epochs=three", "not an integer"),
    ("epochs=2.5", "not an integer"),
    ("epochs=0", "must be >= 1"),
    ("learning_rate=fast", "not a number"),
    ("learning_rate=-1", "must be > 0"),
    ("dropout=1.5", "must be < 1.0"),
    ("early_stop=maybe", "not a boolean"),
    ("optimizer=adamw", "not one of"),
    ("dense=a b", "list of numbers"),
])
def test_bad_sets(nt3, item, message):
    with pytest.raises(UsageError, match=message):
        parse_sets(nt3.defaults, [item])


def test_coerce_int_accepts_integral_float():
    assert coerce("epochs", 10, 5.0) == 5


def test_resolve_precedence(nt3, tmp_path):
    cfg = tmp_path / "nt3_default_model.txt"
    cfg.write_text(textwrap.dedent("""
        [Global_Params]
        data_url = 'ftp://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/normal-tumor/'
        model_name = 'nt3'
        conv = [128, 20, 1, 128, 10, 1]
        dense = [200, 20]
        epochs = 50
        batch_size = 5
        drop = 0.2
        learning_rate = 0.001
        optimizer = 'sgd'
        timeout = 7200

        [Monitor_Params]
        timeout = 1
    """))
    warnings = []
    config = nt3.resolve_config(config_file=cfg, sets=["epochs=7"], smoke=True, warn=warnings.append)
    assert config["epochs"] == 7  # --set beats the config file
    assert config["batch_size"] == 5 and config["dropout"] == 0.2  # drop is CANDLE's alias of dropout
    assert config["timeout"] == 7200  # first occurrence wins, as in CANDLE
    assert config["conv"] == [128, 20, 1, 128, 10, 1]  # the config file beats the smoke overrides
    assert warnings and "data_url" in warnings[0] and "model_name" in warnings[0]


def test_config_file_bad_value(nt3, tmp_path):
    cfg = tmp_path / "bad.txt"
    cfg.write_text("[Global_Params]\nepochs = 'many'\n")
    with pytest.raises(UsageError, match="bad.txt: epochs='many' is not an integer"):
        read_candle_config(cfg, nt3.defaults)


def test_config_file_missing(nt3, tmp_path):
    with pytest.raises(UsageError, match="config file not found"):
        read_candle_config(tmp_path / "none.txt", nt3.defaults)


def test_config_file_not_ini(nt3, tmp_path):
    cfg = tmp_path / "notini.txt"
    cfg.write_text("epochs = 3\n")
    with pytest.raises(UsageError, match="not a CANDLE INI file"):
        read_candle_config(cfg, nt3.defaults)


def test_the_objectives_keys_can_be_set_on_any_experiment(tmp_path):
    """README's `--set loss=het` on a "Your own matrix" experiment, whose defaults list no loss: it stopped
    at "unknown key 'loss'". The objective's keys are known to every experiment and stay out of the config
    until set; a space may search them."""
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""
        from ray import tune
        from candle_ray import Experiment, TableDataset
        experiment = Experiment(name="mine", dataset=TableDataset("m.csv", label="y", task="regression"),
                                model="mlp", defaults={"epochs": 2, "learning_rate": 0.01},
                                search_space={"loss": tune.choice(["mse", "het"])})
    """))
    exp = load_experiment(path)
    assert "loss" not in exp.resolve_config() and "target_scaling" not in exp.resolve_config()
    config = exp.resolve_config(sets=["loss=het", "target_scaling=none", "class_weight=none", "abstention=false"])
    assert {k: config[k] for k in ("loss", "target_scaling", "class_weight", "abstention")} == \
        {"loss": "het", "target_scaling": "none", "class_weight": "none", "abstention": False}
    with pytest.raises(UsageError, match="did you mean loss"):
        exp.resolve_config(sets=["los=het"])
    with pytest.raises(UsageError, match="target_scaling='log' is not one of std, none"):
        exp.resolve_config(sets=["target_scaling=log"])


@pytest.mark.parametrize("metric, mode", [("val_loss", "max"), ("val_accuracy", "min"), ("val_r2", "min")])
def test_an_experiment_ranked_the_wrong_way_is_refused(metric, mode):
    from candle_ray import Experiment, TableDataset

    with pytest.raises(UsageError, match=rf"mode='{mode}' ranks {metric} the wrong way"):
        Experiment(name="mine", dataset=TableDataset("m.csv", label="y"), model="mlp", defaults={"epochs": 1},
                   metric=metric, mode=mode)
    Experiment(name="mine", dataset=TableDataset("m.csv", label="y"), model="mlp", defaults={"epochs": 1},
               metric=metric, mode="min" if mode == "max" else "max")


def test_a_table_named_after_its_split_file_takes_the_experiments_name():
    """Every own matrix in a shared cache (and in MLflow's dataset input) was "train": the file's name says
    which split it is, not what it holds."""
    from candle_ray import Experiment, TableDataset

    def named(path, experiment="GSE1992 ER", **options):
        return Experiment(name=experiment, dataset=TableDataset(path, label="y", **options), model="mlp",
                          defaults={"epochs": 1}).dataset.name

    assert named("data/train.csv") == named("Train.tsv") == "GSE1992_ER"
    assert named("expression.csv") == "expression" and named("train.csv", name="khan") == "khan"

