"""Experiment files: `load_experiment(path)`, `--set key=value` overrides, CANDLE config-file import.

An experiment file is plain Python that defines one `experiment = Experiment(...)`. Workers never see
the module: they receive the plain config dict that `Experiment.resolve_config` returns.
"""

from __future__ import annotations

import ast
import configparser
import difflib
import importlib.util
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from candle_ray.data.noise import NOISE_DEFAULTS, check_noise_keys
from candle_ray.data.spec import Dataset, ReaderDataset
from candle_ray.data.subsample import DEFAULTS as TRAIN_FRACTION
from candle_ray.errors import UsageError
from candle_ray.lr_schedule import (CLR_DEFAULTS, CLR_MODES, KERAS_LEARNING_RATES, SWITCHED_BY as SCHEDULE_SWITCHES,
                                    WARMUP_EPOCHS, check_schedule_keys)
from candle_ray.summary import natural_mode

# CANDLE spells some keys two ways across benchmarks and Supervisor HPO files.
CANDLE_ALIASES = {"drop": "dropout", "lr": "learning_rate", "batch": "batch_size", "epoch": "epochs",
                  # NT3's abstention script's names (nt3_noise_model.txt) for the ones ATTN's uses
                  "alpha": "alpha0", "max_abs": "max_abs_frac", "min_acc": "min_abs_acc"}

OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam")
# A CANDLE file's `learning_rate=None` means the optimizer's tf.keras default (KERAS_LEARNING_RATES): CANDLE's
# Uno, Combo and P1B1 build their optimizer by name with Keras' defaults and set the rate only when one is given.
ACTIVATIONS = ("relu", "elu", "selu", "tanh", "sigmoid", "hard_sigmoid", "softplus", "softsign", "linear",
               "gelu", "leaky_relu", "softmax")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What a CANDLE config file may ask for that CANDLE does and candle-ray does not (TensorBoard; Uno's row subsets
# asked of another experiment): named on their own line, not lost among the ignored keys. (batch_normalization is
# not here: CANDLE's Uno and Combo models never read it, Attn's always normalises, and P1B1 and P1B3, which read
# it, take it as a key.)
NOT_DONE = {"use_tensorboard": "TensorBoard logs", "by_drug": "one drug's rows only",
            "by_cell": "one cell line's rows only", "cell_types": "some cell types only"}

# Rules for the CANDLE keywords every experiment shares; values outside them are usage errors.
KEY_RULES: dict[str, dict[str, Any]] = {
    "epochs": {"min": 1},
    "batch_size": {"min": 1},
    "learning_rate": {"min_exclusive": 0.0},
    "momentum": {"min": 0.0, "max_exclusive": 1.0},  # 1 or more diverges (Supervisor's GA files say [0, 10])
    "dropout": {"min": 0.0, "max_exclusive": 1.0},
    "optimizer": {"choices": OPTIMIZERS},
    "activation": {"choices": ACTIVATIONS},
    "timeout": {"min": -1},
    "reduce_lr_factor": {"min_exclusive": 0.0, "max_exclusive": 1.0},
    "reduce_lr_patience": {"min": 0},
    "early_stop_patience": {"min": 0},
    "ckpt_save_interval": {"min": 0},
    "precision": {"choices": PRECISIONS},
    # Objectives (candle_ray.objectives): loss, class weights, ReduceLROnPlateau's monitor, abstention.
    "loss": {"choices": ("categorical_crossentropy", "sparse_categorical_crossentropy", "crossentropy", "mse",
                         "mean_squared_error", "mae", "mean_absolute_error", "het", "qtl", "cox")},
    "class_weight": {"choices": ("none", "balanced")},
    "reduce_lr_cooldown": {"min": 0},
    "reduce_lr_min_lr": {"min": 0.0},
    "reduce_lr_min_delta": {"min": 0.0},
    "alpha0": {"min_exclusive": 0.0},
    "init_abs_epoch": {"min": 0},
    "alpha_scale_factor": {"min_exclusive": 0.0, "max": 1.0},
    "min_abs_acc": {"min": 0.0, "max": 1.0},
    "max_abs_frac": {"min": 0.0, "max": 1.0},
    "acc_gain": {"min": 0.0},
    "abs_gain": {"min": 0.0},
    "weight_decay": {"min": 0.0},
    "target_scaling": {"choices": ("std", "none")},
    # Learning-rate schedules (candle_ray.lr_schedule): warm-up's start, the cyclic rate's range and shape.
    "base_lr": {"min_exclusive": 0.0},
    "clr_mode": {"choices": CLR_MODES},
    "clr_base_lr": {"min_exclusive": 0.0},
    "clr_max_lr": {"min_exclusive": 0.0},
    "clr_gamma": {"min_exclusive": 0.0, "max": 1.0},
    "clr_step_size": {"min": 1},
    # Noise studies (candle_ray.data.noise)
    "label_noise": {"min": 0.0, "max": 1.0},
    "std_dev": {"min": 0.0},
    # Learning curves (candle_ray.data.subsample): the share of the training rows a run trains on.
    "train_fraction": {"min_exclusive": 0.0, "max": 1.0},
}
# Keys every experiment has, whatever its defaults say: L2 weight decay for every model (0 = off; see
# candle_ray.loop.make_optimizer for what it means with each optimizer), and each epoch's CPU, memory and
# GPU use on the run (candle_ray.usage).
COMMON_DEFAULTS: dict[str, Any] = {"weight_decay": 0.0, "system_metrics": True}
# Keys the objective reads on any experiment (candle_ray.objectives: the head, abstention, class weights,
# target standardising), at the task's default unless the defaults, a config file or --set give one. So
# `--set loss=het` works on every regression experiment, not only those whose defaults list `loss`. They
# stay out of the config until set; each value here is the type a command-line value is read as.
OBJECTIVE_KEYS: dict[str, Any] = {"loss": "mse", "abstention": False, "class_weight": "none", "target_scaling": "std"}
# CANDLE's learning-rate warm-up and cyclic rate (candle_ray.lr_schedule), known the same way on every experiment
# (Uno's and Combo's files set them; CANDLE's P1B1 reads them too); base_lr's 0.001 only gives its type: unset,
# warm-up starts at the optimizer's Keras default.
SCHEDULE_KEYS: dict[str, Any] = {"warmup_lr": False, "base_lr": 0.001, "clr_flag": False, **CLR_DEFAULTS}
# Abstention's adaptation of α (CANDLE's AbstentionAdapt_Callback defaults; alpha0 0.5 is the initial α of CANDLE's
# ATTN abstention), read by candle_ray.objectives; known the same way, as the abstention files set them.
ABSTENTION_DEFAULTS: dict[str, Any] = {"alpha0": 0.5, "init_abs_epoch": 4, "alpha_scale_factor": 0.8,
                                       "min_abs_acc": 0.9, "max_abs_frac": 0.4, "acc_gain": 5.0, "abs_gain": 1.0}
# NOISE_DEFAULTS: CANDLE's noise studies (nt3_noise_model.txt), candle_ray.data.noise; TRAIN_FRACTION: learning
# curves (candle_ray.data.subsample).
OPTIONAL_KEYS: dict[str, Any] = {**OBJECTIVE_KEYS, **ABSTENTION_DEFAULTS, **SCHEDULE_KEYS, **NOISE_DEFAULTS,
                                  **TRAIN_FRACTION}
# Keys that act only with a flag on: the schedules', abstention's and the noise studies'.
SWITCHED_BY: dict[str, str] = {**SCHEDULE_SWITCHES, **dict.fromkeys(ABSTENTION_DEFAULTS, "abstention"),
                               **{k: "add_noise" for k in NOISE_DEFAULTS if k != "add_noise"}}


@dataclass(frozen=True)
class Smoke:
    """What `--smoke` changes: synthetic data of the dataset's exact format, narrower, plus overrides."""

    rows: tuple[int, int] = (192, 48)
    features: int = 1000
    overrides: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    # Search-space keys a smoke sweep leaves out (e.g. NT3's conv layouts, sized for 60,483 features).
    fixed: tuple[str, ...] = ()
    # The width of a `tune --smoke --full-space` dataset, where the full-size keys need more features.
    full_space_features: int | None = None


def _named_after_experiment(dataset, experiment: str):
    """A table dataset named after a split's file ("train.csv" -> "train") takes the experiment's name."""
    from candle_ray.data.spec import SPLIT_NAMES, file_name, safe_name

    if isinstance(dataset, Dataset) and dataset.format == "table" and dataset.name.lower() in SPLIT_NAMES \
            and dataset.name == file_name(dataset.train) and safe_name(experiment):
        return replace(dataset, name=safe_name(experiment))
    return dataset


@dataclass
class Experiment:
    name: str
    dataset: Dataset | ReaderDataset
    model: str
    defaults: dict[str, Any]
    search_space: dict[str, Any] = field(default_factory=dict)
    metric: str = "val_loss"
    mode: str = "min"
    smoke: Smoke = field(default_factory=Smoke)
    description: str = ""
    path: Path | None = None

    def __post_init__(self):
        if not isinstance(self.dataset, (Dataset, ReaderDataset)):
            raise UsageError(f"experiment {self.name!r}: dataset must be a candle_ray Dataset or ReaderDataset, got {type(self.dataset).__name__}")
        self.dataset = _named_after_experiment(self.dataset, self.name)
        if self.mode not in ("min", "max"):
            raise UsageError(f"experiment {self.name!r}: mode must be 'min' or 'max', got {self.mode!r}")
        if natural_mode(self.metric) not in (None, self.mode):
            raise UsageError(f"experiment {self.name!r}: mode={self.mode!r} ranks {self.metric} the wrong way (the "
                             f"worst trial would be the best); set mode={natural_mode(self.metric)!r}")
        if not isinstance(self.defaults, dict) or not self.defaults:
            raise UsageError(f"experiment {self.name!r}: defaults must be a non-empty dict of CANDLE keywords")
        self.defaults = {**COMMON_DEFAULTS, **self.defaults}
        unknown_space = sorted(set(self.search_space) - set(self.known_keys))
        if unknown_space:
            raise UsageError(f"experiment {self.name!r}: search_space keys {unknown_space} are not in defaults; add them to defaults")
        for key, value in self.defaults.items():
            _check_rules(key, value)

    @property
    def known_keys(self) -> dict[str, Any]:
        """The keys a config of this experiment may hold, each with a value of its type: the defaults, and
        the objective's and schedules' keys the defaults leave out."""
        return {**OPTIONAL_KEYS, **self.defaults}

    def full_space_smoke(self) -> "Experiment":
        """This experiment with the smoke width its full-size search keys need (`tune --smoke --full-space`)."""
        smoke = replace(self.smoke, features=self.smoke.full_space_features or self.smoke.features)
        return replace(self, smoke=smoke)

    def resolve_config(self, *, config_file: str | Path | None = None, sets: list[str] = (), smoke: bool = False,
                       warn=print) -> dict[str, Any]:
        """The run's config alone (`resolve` also applies a CANDLE file's data options to the dataset)."""
        return self.resolve(config_file=config_file, sets=sets, smoke=smoke, warn=warn)[1]

    def resolve(self, *, config_file: str | Path | None = None, sets: list[str] = (), smoke: bool = False,
                warn=print, config_text: str | None = None) -> tuple["Experiment", dict[str, Any]]:
        """This experiment with the data options a CANDLE config file sets for its reader (CANDLE's files mix
        data and model settings: uno_auc_model.txt sets agg_dose='AUC'), and the run's config: defaults <
        smoke overrides < config file < --set, type-checked against the defaults. `config_text` is the file's
        text as a sweep recorded it, read instead of the file."""
        config, known = dict(self.defaults), self.known_keys
        if smoke:
            config.update(coerce_overrides(known, dict(self.smoke.overrides), source="smoke overrides"))
        file = CandleFile({}, (), {}, [])
        if config_file is not None:
            file = read_candle_config(config_file, known, model=self.model, reader_options=self.reader_options(),
                                      reader_negated=self._reader_attribute("CANDLE_NEGATED"), text=config_text)
            if file.ignored:
                warn(f"warning: {config_file}: keys not used by experiment {self.name!r} ignored: "
                     f"{', '.join(file.ignored)}")
            if file.not_done:
                warn(f"warning: {config_file} asks for " +
                     ", ".join(f"{k}={v!r} ({NOT_DONE[k]})" for k, v in file.not_done.items()) +
                     f", not implemented for experiment {self.name!r}: the run goes without "
                     f"{'it' if len(file.not_done) == 1 else 'them'}")
            config.update(file.values)
        overrides = parse_sets(known, sets)
        config.update(overrides)
        if others := [k for k in file.unset if k not in ("learning_rate", "base_lr")]:  # None is their default
            warn(f"note: {config_file}: {', '.join(others)} = None: the experiment's default kept")
        if "learning_rate" in file.unset and "learning_rate" not in overrides:
            config["learning_rate"] = _unset_learning_rate(config, config_file, warn)
        check_schedule_keys(config)
        check_noise_keys(config)
        if idle := [k for k in config if k in SWITCHED_BY and not config.get(SWITCHED_BY[k])]:
            flags = list(dict.fromkeys(SWITCHED_BY[k] for k in idle))
            warn(f"note: {', '.join(idle)} set with {', '.join(flags)} off: they act only with "
                 + " / ".join(f"--set {flag}=true" for flag in flags))
        return self._with_data_options(file.data_options, config_file, warn), config

    def reader_options(self) -> dict[str, Any]:
        """The options this experiment's reader takes, at its CANDLE defaults ({} for a file dataset)."""
        return self._reader_attribute("OPTIONS")

    def _reader_attribute(self, name: str) -> dict[str, Any]:
        if not isinstance(self.dataset, ReaderDataset):
            return {}
        from candle_ray.data import registry

        return dict(getattr(registry.module(self.dataset.reader), name, None) or {})

    def _with_data_options(self, options: dict[str, Any], config_file, warn) -> "Experiment":
        if not options:
            return self
        current = {**self.reader_options(), **self.dataset.options}
        changed = {k: v for k, v in options.items() if current.get(k) != v}
        if not changed:
            return self
        warn(f"{config_file}: dataset {self.dataset.name} read with " +
             ", ".join(f"{k}={v!r}" for k, v in changed.items()) + f" (options of reader {self.dataset.reader})")
        return replace(self, dataset=replace(self.dataset, options={**self.dataset.options, **changed}))


def _unset_learning_rate(config: dict, config_file, warn) -> float:
    """What a CANDLE file's learning_rate=None trains at: the optimizer's Keras default; with warm-up, CANDLE's
    warmup_scheduler warms up to base_lr x batch_size / 100 instead (Goyal et al.'s rule, batch 100 at base_lr)."""
    optimizer, start = config["optimizer"], KERAS_LEARNING_RATES[config["optimizer"]]
    if not config.get("warmup_lr"):
        warn(f"note: {config_file}: learning_rate = None: {optimizer}'s Keras default, {start:g}")
        return start
    start = float(config.get("base_lr") or start)
    rate = start * int(config["batch_size"]) / 100
    warn(f"note: {config_file}: learning_rate = None with warmup_lr: base_lr {start:g} x batch_size "
         f"{config['batch_size']} / 100 = {rate:g}, reached after {WARMUP_EPOCHS} epochs (CANDLE's warm-up)")
    return rate


def _check_rules(key: str, value):
    rule = KEY_RULES.get(key)
    if not rule or value is None:
        return
    if "choices" in rule and value not in rule["choices"]:
        raise UsageError(f"{key}={value!r} is not one of {', '.join(rule['choices'])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in rule and value < rule["min"]:
            raise UsageError(f"{key}={value!r} must be >= {rule['min']}")
        if "min_exclusive" in rule and value <= rule["min_exclusive"]:
            raise UsageError(f"{key}={value!r} must be > {rule['min_exclusive']}")
        if "max" in rule and value > rule["max"]:
            raise UsageError(f"{key}={value!r} must be <= {rule['max']}")
        if "max_exclusive" in rule and value >= rule["max_exclusive"]:
            raise UsageError(f"{key}={value!r} must be < {rule['max_exclusive']}")


def check_switched_keys(space, config: dict) -> None:
    """Refuse a search over a key whose flag stays off in every trial (neither on nor searched): each of its
    values would train the same model (the cyclic rate's clr_max_lr with clr_flag off)."""
    for key in space:
        flag = SWITCHED_BY.get(key)
        if flag and not config.get(flag) and flag not in space:
            raise UsageError(f"the search space varies {key}, which acts only with {flag} on, and {flag} is off "
                             f"in every trial; --set {flag}=true, search {flag} too, or drop {key} from the space")


def check_space_rules(space: dict) -> None:
    """Refuse, before any trial, a search space that can draw a value the key's rule forbids (dropout over
    [0, 1.2] was accepted; the trials that drew 1 or more would fail). A float range may touch an exclusive
    bound (a learning rate from 0): it is drawn with probability 0."""
    from ray.tune.search.sample import Categorical, Float, Integer

    from candle_ray.conditional import Conditional

    for key, domain in space.items():
        domain = domain.then if isinstance(domain, Conditional) else domain
        if isinstance(domain, Categorical):
            values, shown = list(domain.categories), None
        elif isinstance(domain, dict) and "grid_search" in domain:
            values, shown = list(domain["grid_search"]), None
        elif isinstance(domain, (Float, Integer)):
            high = domain.upper - 1 if isinstance(domain, Integer) else domain.upper
            rule = KEY_RULES.get(key, {})
            low = domain.lower
            if isinstance(domain, Float) and low == rule.get("min_exclusive"):
                low = None  # never drawn
            if isinstance(domain, Float) and high == rule.get("max_exclusive"):
                high = None
            values, shown = [low, high], f"[{domain.lower:g}, {domain.upper:g}]"
        else:
            values, shown = [domain], None
        try:
            for value in values:
                _check_rules(key, value)
        except UsageError as exc:
            where = f"search-space range {key} {shown}" if shown else "search space"
            raise UsageError(f"{where}: {exc}; narrow the search space") from None


_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def coerce(key: str, default, value):
    """Convert `value` (a string from the command line, or a Python value) to the type of `default`."""
    text = value if isinstance(value, str) else None
    if isinstance(default, bool):
        if isinstance(value, bool):
            result = value
        elif text is not None and text.strip().lower() in _TRUE | _FALSE:
            result = text.strip().lower() in _TRUE
        else:
            raise UsageError(f"{key}={value!r} is not a boolean; use true or false")
    elif isinstance(default, int):
        parsed = _literal(text) if text is not None else value
        if isinstance(parsed, bool) or not (isinstance(parsed, int) or (isinstance(parsed, float) and parsed.is_integer())):
            raise UsageError(f"{key}={value!r} is not an integer; {key} expects an integer like {default}")
        result = int(parsed)
    elif isinstance(default, float):
        parsed = _literal(text) if text is not None else value
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
            raise UsageError(f"{key}={value!r} is not a number; {key} expects a number like {default}")
        result = float(parsed)
    elif isinstance(default, (list, tuple)):
        result = _as_list(key, default, value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise UsageError(f"{key}={value!r} is not a string; {key} expects a string like {default!r}")
        result = value
    else:  # None or another type: take the Python literal as written
        result = _literal(text) if text is not None else value
    _check_rules(key, result)
    return result


def _literal(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text


def _as_list(key: str, default, value) -> list:
    """Lists as Python literals ("[128, 20, 1]") or CANDLE/Supervisor strings ("128 20 1", "128,20,1"); a list
    of numbers may also be CANDLE's list of lists, one per ':'-separated part (P3B1's per-task towers
    "2400, 1200:2400, 1200") or nested literals."""
    element = next((d for d in default), None)
    numeric = isinstance(element, (int, float)) and not isinstance(element, bool)
    if numeric and isinstance(value, str) and ":" in value:
        return [_as_list(key, default, part) for part in value.split(":")]
    if numeric and isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return [_as_list(key, default, list(part)) for part in value]
    if isinstance(value, str):
        parsed = _literal(value)
        if isinstance(parsed, (list, tuple)):
            items = list(parsed)
        elif isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            items = [parsed]
        else:
            items = [_literal(tok) for tok in value.replace(",", " ").split()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]  # a CANDLE file's one number for a list (nt3_default_model.txt: feature_col = 50)
    else:
        raise UsageError(f"{key}={value!r} is not a list; write it like {' '.join(map(str, default))!r}")
    if numeric:
        bad = [i for i in items if isinstance(i, bool) or not isinstance(i, (int, float))]
        if bad or not items:
            raise UsageError(f"{key}={value!r} must be a list of numbers like {' '.join(map(str, default))!r}")
        if isinstance(element, int) and all(float(i).is_integer() for i in items):
            items = [int(i) for i in items]
    return items


def suggest(key: str, known) -> str:
    if key in CANDLE_ALIASES and CANDLE_ALIASES[key] in known:
        return f"; did you mean {CANDLE_ALIASES[key]}?"
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(sorted(known))}"


def coerce_overrides(defaults: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    result = {}
    for key, value in overrides.items():
        key = CANDLE_ALIASES.get(key, key) if key not in defaults else key
        if key not in defaults:
            raise UsageError(f"unknown key {key!r} in {source}{suggest(key, defaults)}")
        result[key] = coerce(key, defaults[key], value)
    return result


def parse_sets(defaults: Mapping[str, Any], sets) -> dict[str, Any]:
    """`--set key=value` items → typed overrides, with close-match suggestions for unknown keys."""
    result = {}
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r} is not key=value; write e.g. --set epochs=3")
        if key not in defaults:
            raise UsageError(f"unknown key {key!r} in --set {item}{suggest(key, defaults)}")
        result[key] = coerce(key, defaults[key], value)
    return result


@dataclass(frozen=True)
class CandleFile:
    """What a CANDLE `*_default_model.txt` says to an experiment."""
    values: dict[str, Any]  # typed values of the config keys the experiment knows
    unset: tuple[str, ...]  # known keys the file sets to None: CANDLE's "not given", the code's own default
    data_options: dict[str, Any]  # typed values of its reader's options
    ignored: list[str]  # every other key, sorted
    not_done: dict[str, Any] = field(default_factory=dict)  # ignored keys asking for what candle-ray lacks (NOT_DONE)


def config_file_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}; pass the path of a CANDLE *_default_model.txt")
    return path.read_text()


def read_candle_config(path: str | Path, defaults: Mapping[str, Any], *, model: str | None = None,
                       reader_options: Mapping[str, Any] = {}, reader_negated: Mapping[str, str] = {},
                       text: str | None = None) -> CandleFile:
    """Read a CANDLE `*_default_model.txt` (INI, Python-literal values, sections flattened, first wins).

    Keys the experiment knows (aliases such as drop → dropout applied) become typed config values, after
    `model`'s own reading of CANDLE's spelling (candle_ray.models.from_candle_file); keys of the reader's
    `reader_options` become data options, and CANDLE's negative flags (`reader_negated`: no_feature_source=True)
    their opposite option. `text` is the file's text when it was read before (a sweep's record). Values are
    parsed with ast.literal_eval, never eval.
    """
    text = config_file_text(path) if text is None else text
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    parser.optionxform = str  # keep the keys' case
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"config file {path} is not a CANDLE INI file: {first}") from None
    raw: dict[str, str] = {}
    for section in parser.sections():
        for key, value in parser.items(section):
            raw.setdefault(key, value)
    literal, data, ignored = {}, {}, []
    for key, text in raw.items():
        name = key if key in defaults else CANDLE_ALIASES.get(key, key)
        if name in defaults:
            literal[name] = _literal(text)
        elif key in reader_options:
            data[key] = _literal(text)
        elif key in reader_negated:
            data[reader_negated[key]] = _Negated(key, _literal(text))
        else:
            ignored.append(key)
    try:
        literal = _from_candle_file(model, literal)
        values = {k: coerce(k, defaults[k], v) for k, v in literal.items() if v is not None}
        data = {k: not coerce(v.flag, False, v.value) if isinstance(v, _Negated) else coerce(k, reader_options[k], v)
                for k, v in data.items()}
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    asked = {k: _literal(raw[k]) for k in ignored if k in NOT_DONE}
    not_done = {k: v for k, v in asked.items() if v}  # None, False, 0: the feature is off
    return CandleFile(values, tuple(k for k, v in literal.items() if v is None), data, sorted(ignored), not_done)


@dataclass(frozen=True)
class _Negated:
    """A CANDLE flag whose value is the opposite of a reader option's."""
    flag: str
    value: Any


def _from_candle_file(model: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """`values` in the model's own terms, where its CANDLE file spells a key otherwise (attn's output layer)."""
    from candle_ray import models

    if model not in models.NAMES:
        return values
    try:
        return models.from_candle_file(model, values)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def load_experiment(path: str | Path) -> Experiment:
    """Import an experiment file and return its `experiment` object, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"experiment file not found: {path}; pass the path of a .py file such as experiments/nt3.py")
    if path.is_dir() or path.suffix != ".py":
        raise UsageError(f"experiment file must be a .py file, got {path}")
    module_name = f"candle_ray_experiment_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    except SyntaxError as exc:
        raise UsageError(f"experiment file {path} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # the user's code: report it on one line
        line = _user_line(exc, path)
        raise UsageError(f"experiment file {path} failed to import{line}: {type(exc).__name__}: {exc}") from None
    finally:
        sys.modules.pop(module_name, None)
    experiment = getattr(module, "experiment", None)
    if experiment is None:
        raise UsageError(f"{path} defines no `experiment`; add `experiment = Experiment(...)` (see experiments/nt3.py)")
    if not isinstance(experiment, Experiment):
        raise UsageError(f"{path}: `experiment` is a {type(experiment).__name__}, not a candle_ray.Experiment")
    experiment.path = path.resolve()
    experiment.dataset = experiment.dataset.resolved(experiment.path.parent)
    return experiment


def _user_line(exc: BaseException, path: Path) -> str:
    tb, line = exc.__traceback__, None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" at line {line}" if line else ""


def model_shape(entry) -> dict:
    """What a model is built for, from a cache entry: its input width and its number of outputs
    (the classes of a classifier, 1 for a regressor, the input width for an autoencoder)."""
    task = entry.manifest["task"]
    outputs = {"autoencoder": entry.num_features, "regression": 1, "survival": 1}.get(task, entry.num_classes)
    shape = {"input_dim": entry.num_features, "classes": outputs}
    if entry.manifest.get("kind") == "joined":
        shape.update(_feature_groups(entry.manifest["slots"]))
        # Model keys a reader derives from the data and declares in info["model_shape"] (Uno: the
        # response-source width, single, agg_dose), which the slot names alone cannot tell.
        shape.update(entry.manifest.get("reader", {}).get("info", {}).get("model_shape", {}))
    return shape


def _feature_groups(slots: list[dict]) -> dict:
    """For joined data, the per-feature-type widths that models with shared encoders (Uno, Combo) split
    their flat input by: slots named "cell.<f>" give cell_features / cell_feature_dims, slots "drug.<f>"
    or "drug1.<f>" give drug_features / drug_feature_dims (drug2.<f> repeats drug1's types). Models
    ignore keys they do not have."""
    groups: dict = {}
    for prefix, kind in (("cell.", "cell"), ("drug.", "drug"), ("drug1.", "drug")):
        for slot in slots:
            if slot["table"] is not None and slot["name"].startswith(prefix):
                groups.setdefault(f"{kind}_features", []).append(slot["name"][len(prefix):])
                groups.setdefault(f"{kind}_feature_dims", []).append(int(slot["width"]))
    return groups
