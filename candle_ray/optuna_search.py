"""Optuna behind Ray Tune in the form candle-ray's searches need (`tune --search optuna|gp|cmaes|ga|bohb`). Its
own module so that optuna is imported only by a sweep that uses an Optuna searcher (candle_ray.search and
candle_ray.samplers import this lazily)."""

from __future__ import annotations

import copy
import threading

import optuna
import ray.tune
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II without its thread lock in the pickle: Tune pickles its searcher at every
    experiment snapshot, and a lock cannot be pickled."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _thread_lock=threading.Lock())


class LabelledChoices(OptunaSearch):
    """OptunaSearch whose study sees every list-valued choice (CANDLE's `dense`, `conv`) as its label, the
    text results.csv shows ("[512, 128]"), and whose suggestions carry the lists themselves. Optuna wants
    choices to be plain values: NSGA-II's crossover turns list choices into numpy arrays (which then fail to
    compare), and every sampler warns about them."""

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._labels = {}
        labelled = dict(config)
        for key, domain in config.items():
            if isinstance(domain, Categorical) and any(isinstance(c, (list, tuple, dict)) for c in domain.categories):
                self._labels[key] = {str(c): c for c in domain.categories}
                labelled[key] = ray.tune.choice(list(self._labels[key]))
        return super().set_search_properties(metric, mode, labelled, **spec)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            for key, choices in getattr(self, "_labels", {}).items():
                if key in config:
                    config[key] = copy.deepcopy(choices[config[key]])
        return config

    def add_evaluated_point(self, parameters: dict, value, **kwargs):
        labelled = {k: str(v) if k in getattr(self, "_labels", {}) else v for k, v in parameters.items()}
        return super().add_evaluated_point(labelled, value, **kwargs)
