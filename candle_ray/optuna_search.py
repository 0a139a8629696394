"""Optuna behind Ray Tune in the form candle-ray's searches need (`tune --search optuna|gp|cmaes|ga|bohb`). Its
own module so that optuna is imported only by a sweep that uses an Optuna searcher (candle_ray.search and
candle_ray.samplers import this lazily)."""

from __future__ import annotations

import copy
import threading

import numpy as np
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


ASKS = 3  # suggestions of the sampler's own per trial while they repeat an earlier one (_new_configuration)


class LabelledChoices(OptunaSearch):
    """OptunaSearch in candle-ray's terms:

    - every list-valued choice (CANDLE's `dense`, `conv`) reaches the study as its label, the text results.csv
      shows ("[512, 128]"), and suggestions carry the lists themselves: Optuna wants plain choices (NSGA-II's
      crossover turned list choices into numpy arrays, which then failed to compare);
    - a conditional key (candle_ray.conditional) is asked for only when its condition holds, so TPE models it
      on the trials that searched it; the others get None (training keeps the default);
    - a trial gets a configuration no earlier trial had, while one is left (_new_configuration)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._labels, self._conditions, self._order = {}, {}, []  # set from the space (set_search_properties)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        from candle_ray.conditional import Conditional, order

        self._labels, self._conditions = {}, {}
        plain = dict(config)
        for key, domain in config.items():
            if isinstance(domain, Conditional):
                self._conditions[key], domain = domain, domain.then
            if isinstance(domain, Categorical) and any(isinstance(c, (list, tuple, dict)) for c in domain.categories):
                self._labels[key] = {str(c): c for c in domain.categories}
                domain = ray.tune.choice(list(self._labels[key]))
            plain[key] = domain
        self._order = order(config) if self._conditions else list(config)
        return super().set_search_properties(metric, mode, plain, **spec)

    def suggest(self, trial_id: str):
        if trial_id not in self._ot_trials and not callable(self._space):
            self._ot_trials[trial_id] = self._new_configuration()
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config = self._decoded(config)
            config.update({key: None for key in self._conditions if key not in config})
        return config

    def _new_configuration(self):
        """A study trial whose configuration no other study trial has. Children of NSGA-II copy a parent whole
        (a GDSC `--search ga` sweep trained 12 configurations in 16 trials; 8 in 20 on a 27-point space), and
        TPE repeats itself on small categorical spaces: a repeat of a finished trial is told that trial's values,
        as a GA's fitness cache would, one of a running or failed trial is dropped, and the sampler asks again.
        After ASKS repeats (GP's acquisition maximum stays put) a random configuration not tried yet is taken;
        with conditional keys, or when none is left, the repeat itself."""
        for attempt in range(ASKS + 1):
            if attempt == ASKS and not self._conditions and (fresh := self._untried()) is not None:
                self._ot_study.enqueue_trial(fresh)  # the next ask takes these values
            trial = self._ask_conditionally() if self._conditions else self._ot_study.ask(self._space)
            twin = next((t for t in self._ot_study.get_trials(deepcopy=False)
                         if t.number != trial.number and t.params == trial.params), None)
            if twin is None or attempt == ASKS:
                return trial
            if twin.state == optuna.trial.TrialState.COMPLETE:
                self._ot_study.tell(trial, twin.values)
            else:
                self._ot_study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _untried(self, draws: int = 200) -> dict | None:
        """A configuration drawn at random (seeded by the study's length) that no study trial has."""
        tried = [t.params for t in self._ot_study.get_trials(deepcopy=False)]
        rng = np.random.default_rng(len(tried))
        for _ in range(draws):
            params = {key: _draw(distribution, rng) for key, distribution in self._space.items()}
            if params not in tried:
                return params
        return None

    def _decoded(self, params: dict) -> dict:
        return {k: copy.deepcopy(self._labels[k][v]) if k in self._labels else v for k, v in params.items()}

    def _ask_conditionally(self):
        """A new study trial asked key by key: a conditional key only when its condition holds."""
        trial = self._ot_study.ask()
        for key in self._order:
            condition = self._conditions.get(key)
            if condition is None or condition.holds(self._decoded(trial.params)):
                _suggest(trial, key, self._space[key])
        return trial

    def add_evaluated_point(self, parameters: dict, value, **kwargs):
        labelled = {k: str(v) if k in self._labels else v for k, v in parameters.items() if v is not None}
        if len(labelled) == len(parameters):
            return super().add_evaluated_point(labelled, value, **kwargs)
        # An earlier trial that did not search a conditional key: a study trial without it.
        self._ot_study.add_trial(optuna.trial.create_trial(
            value=value, params=labelled, distributions={k: self._space[k] for k in labelled}))


def _draw(distribution, rng):
    """One value of an Optuna distribution, uniform over its range (over its logarithm where `log`)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[int(rng.integers(len(distribution.choices)))]
    low, high, step = distribution.low, distribution.high, distribution.step
    if step:
        value = low + step * int(rng.integers(int(round((high - low) / step)) + 1))
    elif distribution.log:
        value = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    else:
        value = float(rng.uniform(low, high))
    return int(value) if isinstance(distribution, IntDistribution) else value


def _suggest(trial, name: str, distribution):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
