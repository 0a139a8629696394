"""Conditional search-space keys: a key searched only when another key has given values.

In an experiment file:

    from candle_ray import when
    search_space = {
        "optimizer": tune.choice(["adam", "sgd", "rmsprop"]),
        "momentum": when(optimizer="sgd", then=tune.uniform(0.5, 0.99)),        # only sgd has momentum
        "rho": when(optimizer=("rmsprop", "adadelta"), then=tune.uniform(0.8, 0.99)),   # a tuple: any of them
    }

A trial whose optimizer is not sgd has no momentum: its config holds None there (results.csv and MLflow show
it empty / None), and training keeps the experiment's default. Random search draws the key's value only when
its condition holds; Optuna's TPE (optuna, bohb) models it on the trials where it was searched. Searchers
that model a fixed set of keys (grid, gp, cmaes, ga) and PBT refuse a conditional space in one line.
"""

from __future__ import annotations

from ray.tune.search.sample import Categorical, Domain

from candle_ray.errors import UsageError

# Searchers that can express a key that is searched in some trials only.
SEARCHERS = ("random", "optuna", "bohb")


class Conditional(Domain):
    """`then` (a Tune domain), searched when the config's `key` is one of `values`; else None."""

    def __init__(self, key: str, values: tuple, then: Domain):
        self.key, self.values, self.then = key, tuple(values), then

    def holds(self, config: dict) -> bool:
        return config.get(self.key) in self.values

    def sample(self, config=None, size: int = 1, random_state=None):
        # Tune's variant generator hands over the spec being resolved, guarded: reading (as an attribute) a key
        # it has not drawn yet raises, and it comes back to this key once that key is drawn.
        value = getattr(getattr(config, "config"), self.key)
        return self.then.sample(config, size, random_state) if value in self.values else None

    def is_valid(self, value) -> bool:
        return value is None or self.then.is_valid(value)

    @property
    def domain_str(self) -> str:
        return f"when({self.key} in {list(self.values)}, then={self.then.domain_str})"


def when(then: Domain | None = None, **condition) -> Conditional:
    """`when(optimizer="sgd", then=tune.uniform(0.5, 0.99))`: searched only in trials whose optimizer is sgd
    (a tuple of values: any of them)."""
    if len(condition) != 1 or not isinstance(then, Domain):
        raise UsageError(f"when() takes one KEY=VALUE condition and then=<a tune domain>, e.g. "
                         f"when(optimizer=\"sgd\", then=tune.uniform(0.5, 0.99)); got {condition}, then={then!r}")
    (key, values), = condition.items()
    return Conditional(key, values if isinstance(values, (tuple, set, frozenset)) else (values,), then)


def conditions(space: dict) -> dict[str, Conditional]:
    return {k: v for k, v in space.items() if isinstance(v, Conditional)}


def check(space: dict, searcher: str, scheduler: str) -> None:
    """Refuse, in one line, a condition on a key that is not searched or on a value it never takes, and the
    searchers and schedulers that cannot search a key in some trials only."""
    conditional = conditions(space)
    if not conditional:
        return
    for key, domain in conditional.items():
        parent = space.get(domain.key)
        if parent is None:
            raise UsageError(f"search-space key {key!r} is searched when {domain.key} is {list(domain.values)}, but "
                             f"{domain.key} is not searched; add {domain.key} to the search space or drop the condition")
        if isinstance(parent, Categorical) and not {_hashable(v) for v in domain.values} & \
                {_hashable(c) for c in parent.categories}:
            raise UsageError(f"search-space key {key!r} is searched when {domain.key} is {list(domain.values)}, a "
                             f"value {domain.key} never takes ({list(parent.categories)}); fix the condition")
    names = ", ".join(conditional)
    if searcher not in SEARCHERS:
        raise UsageError(f"--search {searcher} searches every key in every trial, and {names} are searched under "
                         f"a condition; use --search {', '.join(SEARCHERS)}")
    if scheduler == "pbt":
        raise UsageError(f"PBT perturbs every trial's keys, and {names} are searched under a condition; use "
                         f"--scheduler asha, hyperband, median or fifo")


def without_orphans(space: dict) -> dict:
    """The space without the conditional keys whose deciding key is not searched (a smoke search fixes some
    keys: what they decide is fixed with them)."""
    kept = dict(space)
    while orphans := [k for k, v in kept.items() if isinstance(v, Conditional) and v.key not in kept]:
        for key in orphans:
            del kept[key]
    return kept


def order(space: dict) -> list[str]:
    """The space's keys with every condition's key before the keys it decides."""
    done: list[str] = []

    def visit(key: str, seen: tuple = ()) -> None:
        if key in done:
            return
        if key in seen:
            raise UsageError(f"search-space conditions form a cycle through {key!r}; a key cannot decide itself")
        domain = space[key]
        if isinstance(domain, Conditional) and domain.key in space:
            visit(domain.key, (*seen, key))
        done.append(key)

    for key in space:
        visit(key)
    return done


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value
