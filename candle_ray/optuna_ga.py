"""Optuna's NSGA-II (`tune --search ga`) in a form Tune can snapshot. Its own module so that optuna is
imported only by a sweep that uses an Optuna searcher (candle_ray.samplers imports this lazily)."""

from __future__ import annotations

import threading

import optuna


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II without its thread lock in the pickle: Tune pickles its searcher at every
    experiment snapshot, and a lock cannot be pickled."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _thread_lock=threading.Lock())
