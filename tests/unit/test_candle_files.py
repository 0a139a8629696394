"""CANDLE's own `*_default_model.txt` files through `--config-file`, as the Benchmarks repository ships them:
learning_rate=None, data options beside the model's, P3B1's per-task towers, attn's per-layer lists."""

import textwrap
from pathlib import Path

import pytest
import torch

from candle_ray import models
from candle_ray.errors import UsageError
from candle_ray.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[2]


def experiment(name):
    return load_experiment(ROOT / "experiments" / f"{name}.py")


def candle_file(tmp_path, name, text) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# Pilot1/Uno/uno_default_model.txt (the keys that matter here) and uno_defaultUQ_model.txt's data keys.
UNO = """
    [Global_Params]
    {sources}
    test_sources=['train']
    cell_types=None
    dense=[1000, 1000, 1000]
    optimizer='{optimizer}'
    scaling='std'
    learning_rate=None
    base_lr=None
    rng_seed=2018
    {more}
"""


def uno_file(optimizer: str, sources: str = "train_sources=['GDSC', 'CTRP', 'ALMANAC']", more: str = "") -> str:
    return UNO.format(optimizer=optimizer, sources=sources, more=more)


def test_learning_rate_none_is_the_optimizers_keras_default(tmp_path):
    """Uno, Combo and P1B1's own files say learning_rate=None: the optimizer's default (CANDLE builds it by name
    with tf.keras defaults and sets a rate only when given). It stopped at "learning_rate=None is not a number"."""
    uno, notes = experiment("uno"), []
    config = uno.resolve_config(config_file=candle_file(tmp_path, "a.txt", uno_file(optimizer="adam")),
                                warn=notes.append)
    assert config["learning_rate"] == 0.001 and config["rng_seed"] == 2018
    assert any("learning_rate = None: adam's Keras default, 0.001" in n for n in notes), notes
    sgd = candle_file(tmp_path, "b.txt", uno_file(optimizer="sgd"))
    assert uno.resolve_config(config_file=sgd, warn=notes.append)["learning_rate"] == 0.01
    # --set wins; an optimizer set on the command line takes its own default
    assert uno.resolve_config(config_file=sgd, sets=["learning_rate=0.05"], warn=notes.append)["learning_rate"] == 0.05
    assert uno.resolve_config(config_file=sgd, sets=["optimizer=rmsprop"], warn=notes.append)["learning_rate"] == 0.001


def test_a_files_data_options_reach_the_reader(tmp_path):
    """uno_defaultUQ_model.txt trains on gCSI's AUC (agg_dose='AUC', train_sources=['gCSI']): those are reader
    options, once listed among the ignored keys while the run trained on growth from three other studies."""
    uno, notes = experiment("uno"), []
    path = candle_file(tmp_path, "uq.txt", uno_file(optimizer="sgd", sources="train_sources=['gCSI']",
                                                    more="agg_dose='AUC'\n    partition_by='cell'\n"
                                                         "    no_feature_source=True"))
    with_file, config = uno.resolve(config_file=path, warn=notes.append)
    options = with_file.dataset.options
    assert (options["train_sources"], options["agg_dose"], options["partition_by"]) == (["gCSI"], "AUC", "cell")
    assert options["embed_feature_source"] is False  # CANDLE's no_feature_source=True
    assert options["encode_response_source"] is True  # not in the file: the experiment's
    assert options["drug_features"] == uno.dataset.options["drug_features"]  # the rest as the experiment had them
    assert "train_sources" not in config and uno.dataset.options["agg_dose"] is None  # the experiment is unchanged
    said = [n for n in notes if "options of reader uno" in n]
    assert len(said) == 1 and "agg_dose='AUC'" in said[0] and "test_sources" not in said[0], notes  # only changes
    assert not [n for n in notes if "ignored" in n], notes  # cell_types=None too: a reader option at its default
    assert not [n for n in notes if "base_lr" in n]  # warm-up's start: None is its default, nothing to say
    same, _ = uno.resolve(config_file=candle_file(tmp_path, "d.txt", uno_file(optimizer="adam")), warn=print)
    assert same is uno  # nothing to change: the same dataset, the same cache entry


def test_a_bad_data_option_names_the_file(tmp_path):
    uno = experiment("uno")
    path = candle_file(tmp_path, "bad.txt", uno_file(optimizer="adam", more="single='often'"))
    with pytest.raises(UsageError, match=r"bad.txt: single='often' is not a boolean"):
        uno.resolve(config_file=path)


def test_p3b1s_per_task_towers(tmp_path):
    """Pilot3/P3B1/p3b1_default_model.txt writes ind_nnet_spec as CANDLE's list of lists, ':' between tasks."""
    p3b1 = experiment("p3b1")
    path = candle_file(tmp_path, "p3b1.txt", """
        [Global_Params]
        shared_nnet_spec = [1200, 2400, 3600, 3600, 3600, 3600, 3600, 3600, 3600, 2400]
        ind_nnet_spec = '2400, 2400, 1200, 1200:2400, 1200:600'
        feature_names = 'Primary site:Tumor laterality:Histological grade'
    """)
    towers = p3b1.resolve_config(config_file=path, warn=print)["ind_nnet_spec"]
    assert towers == [[2400, 2400, 1200, 1200], [2400, 1200], [600]]
    model = models.build("p3b1", {"input_dim": 400, "classes": [13, 2, 4], "ind_nnet_spec": towers,
                                  "shared_nnet_spec": [32]})
    widths = [[m.out_features for m in tower.modules() if isinstance(m, torch.nn.Linear)][:-1] for tower in model.towers]
    assert widths == towers
    with pytest.raises(UsageError, match=r"p3b1.txt: ind_nnet_spec='1200 x' must be a list of numbers"):
        p3b1.resolve_config(config_file=candle_file(tmp_path, "p3b1.txt", """
            [Global_Params]
            ind_nnet_spec = '2400:1200 x'
        """))


ATTN = """
    [Global_Params]
    model_name='attn'
    dense=[1000, 1000, 1000, 500, 250, 125, 60, 30, 2]
    activation={activation}
    dropout=0.2
"""


def test_attns_file_lists_its_output_layer(tmp_path):
    """Pilot1/Attn/attn_default_model.txt gives dense with the output width and one activation per layer; it
    stopped at "activation=[...] is not a string", and its dense would have added a hidden layer of 2 units."""
    attn = experiment("attn")
    acts = "['relu', 'relu', 'softmax', 'relu', 'relu', 'relu', 'relu', 'relu', 'softmax']"
    config = attn.resolve_config(config_file=candle_file(tmp_path, "attn.txt", ATTN.format(activation=acts)))
    assert config["dense"] == [1000, 1000, 1000, 500, 250, 125, 60, 30] and config["activation"] == "relu"
    # the reference's parameter count (Keras: 8,893,437 for 6,212 inputs and 2 classes)
    assert models.count_parameters("attn", {**config, "input_dim": 6212, "classes": 2}) == 8_893_437


@pytest.mark.parametrize("activation, says", [
    ("['tanh', 'relu', 'softmax', 'relu', 'relu', 'relu', 'relu', 'relu', 'softmax']", "one activation for every"),
    ("['relu', 'relu', 'softmax', 'relu', 'softmax']", "activation lists 5 layers but dense"),
])
def test_attn_refuses_what_it_cannot_build(tmp_path, activation, says):
    with pytest.raises(UsageError, match=rf"attn.txt: .*{says}"):
        experiment("attn").resolve_config(config_file=candle_file(tmp_path, "attn.txt", ATTN.format(activation=activation)))


def test_a_recorded_text_is_read_instead_of_the_file(tmp_path):
    """A sweep records its config file's text (sweep.json "config_text"): a resume or `ensemble --from-sweep`
    reads that, so an edited or deleted file changes nothing; the resume says when the file changed."""
    from candle_ray.sweep import _note_a_changed_config_file

    path = candle_file(tmp_path, "uno.txt", uno_file(optimizer="sgd"))
    recorded = path.read_text()
    path.write_text(uno_file(optimizer="adam"))
    assert experiment("uno").resolve_config(config_file=path, warn=print)["optimizer"] == "adam"
    _, config = experiment("uno").resolve(config_file=path, warn=print, config_text=recorded)
    assert (config["optimizer"], config["learning_rate"]) == ("sgd", 0.01)
    said = []
    record = {"config_file": str(path), "config_text": recorded, "sweep": {"name": "s1"}}
    _note_a_changed_config_file(record, said.append)
    assert said == [f"note: {path} has changed since sweep s1 started; it keeps the values it started with (sweep.json)"]
    path.unlink()
    _note_a_changed_config_file(record, said.append)
    assert len(said) == 1
    assert experiment("uno").resolve(config_file=path, warn=print, config_text=recorded)[1]["optimizer"] == "sgd"


def test_a_candle_feature_switched_on_but_not_done_is_named(tmp_path):
    """What a file asks for that CANDLE would do and candle-ray does not (TensorBoard logs; by_drug outside Uno) is
    named once, not only among two dozen ignored keys. Uno's batch_normalization=True is only ignored: CANDLE's
    Uno model never reads it either."""
    notes = []
    path = candle_file(tmp_path, "uno.txt", uno_file(optimizer="adam", more="use_tensorboard=True\n"
                                                                           "    batch_normalization=True"))
    experiment("uno").resolve(config_file=path, warn=notes.append)
    assert f"warning: {path} asks for use_tensorboard=True (TensorBoard logs), not implemented for " \
           f"experiment 'uno': the run goes without it" in notes, notes
    assert [n for n in notes if "ignored: batch_normalization" in n], notes
    notes.clear()
    experiment("uno").resolve(config_file=candle_file(tmp_path, "b.txt", uno_file(optimizer="adam")), warn=notes.append)
    assert not [n for n in notes if "asks for" in n]
    notes.clear()
    path = candle_file(tmp_path, "c.txt", "[Global_Params]\nby_drug='paclitaxel'\nuse_tensorboard=True\n")
    experiment("combo").resolve(config_file=path, warn=notes.append)
    assert [n for n in notes if "asks for by_drug='paclitaxel' (one drug's rows only), use_tensorboard=True" in n
            and n.endswith("not implemented for experiment 'combo': the run goes without them")], notes


def test_uno_by_drug_example_selects_its_rows(tmp_path):
    """uno_by_drug_example.txt: by_drug='paclitaxel' and partition_by='cell' are options of the Uno reader (once
    warned as not implemented while the run trained on every drug)."""
    notes = []
    path = candle_file(tmp_path, "d.txt", uno_file(optimizer="adam", more="by_drug='paclitaxel'\n    partition_by='cell'"))
    with_file, _ = experiment("uno").resolve(config_file=path, warn=notes.append)
    assert (with_file.dataset.options["by_drug"], with_file.dataset.options["partition_by"]) == ("paclitaxel", "cell")
    assert not [n for n in notes if "asks for" in n], notes


def test_candle_files_learning_rate_schedules_are_read(tmp_path):
    """uno_auc_model.txt and uno_clr_model.txt set warmup_lr=True, uno_auc_clr_model.txt clr_flag=True with its
    clr_* keys: once warned as not implemented, now the run's config. uno_clr_model.txt's learning_rate=None
    with warm-up is CANDLE's base_lr x batch_size / 100 (adam: 0.001 x 32 / 100), not adam's default."""
    uno, notes = experiment("uno"), []
    path = candle_file(tmp_path, "wu.txt", uno_file(optimizer="adam", more="warmup_lr=True\n    batch_size=32"))
    config = uno.resolve_config(config_file=path, warn=notes.append)
    assert config["warmup_lr"] is True and config["learning_rate"] == pytest.approx(0.00032)
    assert any("learning_rate = None with warmup_lr: base_lr 0.001 x batch_size 32 / 100 = 0.00032" in n
               for n in notes), notes
    assert not [n for n in notes if "asks for" in n or ("ignored" in n and "warmup_lr" in n)], notes
    clr = candle_file(tmp_path, "clr.txt", uno_file(optimizer="adamax", more="clr_flag = True\n    clr_mode = 'trng1'\n"
                      "    clr_base_lr = 0.001\n    clr_max_lr = 0.01\n    clr_gamma = 0.999\n    warmup_lr=False"))
    config = uno.resolve_config(config_file=clr, warn=notes.append)
    assert (config["clr_flag"], config["clr_mode"], config["clr_max_lr"], config["learning_rate"]) == (True, "trng1", 0.01, 0.001)
    with pytest.raises(UsageError, match="clr_mode='tri' is not one of trng1, trng2, exp"):
        uno.resolve_config(config_file=clr, sets=["clr_mode=tri"], warn=notes.append)
    with pytest.raises(UsageError, match="clr_flag and warmup_lr cannot both be on"):
        uno.resolve_config(config_file=clr, sets=["warmup_lr=true"], warn=notes.append)


def test_abstention_settings_are_keys_of_every_experiment_in_either_candle_spelling(tmp_path):
    """attn_abs_default_model.txt sets min_abs_acc and max_abs_frac, nt3_noise_model.txt alpha, min_acc and max_abs
    (NT3's abstention script's names): once ignored, and not settable with --set on any experiment."""
    notes = []
    attn = experiment("attn").resolve_config(config_file=candle_file(tmp_path, "a.txt", "[Global_Params]\n"
                                             "min_abs_acc=0.85\nmax_abs_frac=0.3\n"), sets=["abstention=true"],
                                             warn=notes.append)
    assert (attn["min_abs_acc"], attn["max_abs_frac"]) == (0.85, 0.3) and not [n for n in notes if "ignored" in n]
    nt3 = experiment("nt3").resolve_config(config_file=candle_file(tmp_path, "n.txt", "[Global_Params]\nalpha = 0.3\n"
                                           "min_acc = 0.99\nmax_abs = 0.30\nfeature_col = 50\nlabel_noise = 0.3\n"),
                                           warn=notes.append)
    assert (nt3["alpha0"], nt3["min_abs_acc"], nt3["max_abs_frac"]) == (0.3, 0.99, 0.3)
    assert any("alpha0, min_abs_acc, max_abs_frac, feature_col, label_noise set with abstention, add_noise off: they "
               "act only with --set abstention=true / --set add_noise=true" in n for n in notes), notes
    assert nt3["feature_col"] == [50]  # nt3_default_model.txt writes one column as a number
    assert experiment("p1b2").resolve_config(sets=["abstention=true", "acc_gain=2"], warn=print)["acc_gain"] == 2.0
    with pytest.raises(UsageError, match="min_abs_acc=1.5 must be <= 1.0"):
        experiment("p1b2").resolve_config(sets=["min_abs_acc=1.5"], warn=print)


def test_only_the_models_that_spell_keys_otherwise_are_imported_to_read_a_file():
    """models.CANDLE_FILE_SPELLINGS names every model module with a from_candle_file hook, and no other."""
    import importlib

    hooks = {name for name in models.NAMES
             if hasattr(importlib.import_module(f"candle_ray.models.{name}"), "from_candle_file")}
    assert hooks == set(models.CANDLE_FILE_SPELLINGS)
