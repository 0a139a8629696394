"""The model-based searchers of `tune --search`, on the driver: Optuna samplers behind Ray Tune's
OptunaSearch, each seeded by `--seed`, and the schedulers each is sound with.

- optuna: TPE (Optuna's default, constant liar under concurrency);
- gp: Gaussian-process Bayesian optimisation (Optuna's GPSampler, qLogEI over the running trials: batch
  proposals under concurrency, as CANDLE Supervisor's mlrMBO proposes batches);
- cmaes: CMA-ES over the continuous and integer keys (Optuna's CmaEsSampler); it has no model of
  categorical keys, which are drawn at random;
- ga: a genetic search, NSGA-II (Optuna's NSGAIISampler: tournament selection, uniform crossover, per-key
  mutation), taking Supervisor's GA settings (population size, crossover and mutation probabilities);
- bohb: TPE (multivariate, as BOHB's KDE) with asynchronous Hyperband brackets as its early stopping.
  Ray's own BOHB needs hpbandster, unmaintained since 2019 (its netifaces dependency builds from source);
  Ray's synchronous Hyperband creates every trial up front, so a model could not learn from any.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from candle_ray.errors import UsageError

MODEL_BASED = ("optuna", "gp", "cmaes", "ga", "bohb")
BOHB_BRACKETS = 3


@dataclass(frozen=True)
class GASettings:
    """Supervisor's GA settings (workflows/GA cfg-prm: POPULATION_SIZE; deap_ga: cxpb 0.5, MUT_PROB)."""

    population: int
    crossover_prob: float = 0.5
    mutation_prob: float | None = None  # per key; None: 1 / number of keys (NSGA-II's default)

    @classmethod
    def for_budget(cls, num_samples: int, population: int | None = None, crossover_prob: float | None = None,
                   mutation_prob: float | None = None) -> GASettings:
        """Default population: a fifth of the trials (five generations), between 4 and 50."""
        return cls(population or min(50, max(4, math.ceil(num_samples / 5))),
                   0.5 if crossover_prob is None else crossover_prob, mutation_prob)


def quiet_replayed_steps() -> None:
    """A restored trial replays its epochs first (candle_ray.trial), and Optuna warns about each step it already
    has ("... because this `step=2` is already reported."; the pattern matches the message's start). Called
    where a searcher is made, and where a resumed sweep's searcher is restored instead."""
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=",
                            category=UserWarning)


def sampler(name: str, seed: int, options: dict | None = None):
    """The Optuna sampler of a model-based searcher (`options`: a ga's GASettings fields). Optuna is imported
    here: every sweep validates its searcher through this module, and most use none of Optuna."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial beside the sweep's own lines
    quiet_replayed_steps()
    # Each sampler says once per trial that a key falls back to random sampling; the sweep says it once.
    quiet = {"warn_independent_sampling": False}
    if name == "optuna":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "bohb":  # grouped: keys searched in some trials only (candle_ray.conditional) get their own model
        warnings.filterwarnings("ignore", message="Argument ``group`` is an experimental feature",
                                category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **quiet)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **quiet)
    if name == "ga":
        from candle_ray.optuna_search import NSGAIISampler

        ga = GASettings(**(options or {}))
        return NSGAIISampler(seed=seed, population_size=ga.population, crossover_prob=ga.crossover_prob,
                             mutation_prob=ga.mutation_prob, swapping_prob=0.5)
    raise ValueError(f"not a model-based searcher: {name}")


def categorical_keys(space: dict) -> list[str]:
    from ray.tune.search.sample import Categorical

    return [k for k, v in space.items() if isinstance(v, Categorical)]


def check(searcher: str, scheduler: str, space: dict) -> None:
    """Refuse a searcher with a scheduler or space it is not sound with, in one line."""
    if searcher not in MODEL_BASED:
        return
    if searcher == "bohb" and scheduler != "asha":
        raise UsageError(f"--search bohb brings its own early stopping (asynchronous Hyperband, {BOHB_BRACKETS} "
                         f"brackets); drop --scheduler {scheduler}")
    if scheduler == "pbt":
        raise UsageError(f"--search {searcher} learns from each trial's configuration, but PBT changes a trial's "
                         f"hyperparameters as it trains; use --search random with --scheduler pbt")
    if scheduler == "hyperband":
        raise UsageError(f"--scheduler hyperband creates every trial before any finishes, so --search {searcher} "
                         f"could not learn from one; use --scheduler asha (asynchronous Hyperband), or --search bohb")
    if searcher == "cmaes" and len(categorical_keys(space)) == len(space):
        raise UsageError(f"--search cmaes models continuous and integer keys, and every key here is categorical "
                         f"({', '.join(space)}); use --search optuna or ga")


def note(searcher: str, space: dict, num_samples: int, options: dict | None) -> str | None:
    """What a user should know before the first trial: keys a sampler draws at random, a GA that never
    gets past its random first generation."""
    if searcher == "cmaes" and categorical_keys(space):
        return (f"note: cmaes models {', '.join(k for k in space if k not in categorical_keys(space))}; "
                f"{', '.join(categorical_keys(space))} (categorical) are drawn at random")
    if searcher == "ga" and options and options["population"] >= num_samples:
        return (f"note: a GA population of {options['population']} with {num_samples} trials is one random "
                f"generation; give --num-samples several times --population")
    return None
