"""A linear baseline on a prepared cache entry: the number a tuned network has to beat.

Standardised features + logistic regression (classification), ridge regression or an L2-penalised Cox
model (survival: candle_ray.cox's partial likelihood, fitted by L-BFGS in torch), the regularisation
chosen by cross-validation on the training rows only, scored on the validation split, or on each fold of a
cross-validation assignment and then averaged, with the training loop's metric names and definitions
(candle_ray.objectives: val_loss, val_accuracy, val_auroc, val_aupr; val_loss, val_r2, val_mae, val_corr;
val_loss, val_cindex).
A sweep fits it before its first trial and logs `baseline_<metric>` on its parent run. Fitted on the train split
(not under CV), it is also one affine map of the cache's features (`Baseline.linear`), which `checkpoint_state`
turns into an `mlp` checkpoint without hidden layers: an ensemble pools it with its networks (candle_ray.predict).

Data over a budget (`max_cells` float32 cells, `max_rows` rows of training matrix) are sampled: a seeded
random sample of the training rows (and at most MAX_VAL_ROWS validation rows) is gathered chunk by chunk,
never the whole dataset: a joined entry (P1B3, Uno) may hold millions of rows over shared feature tables.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from candle_ray import cox
from candle_ray.data.cache import open_split
from candle_ray.data.cache_format import read_manifest
from candle_ray.data.folds import pooled_groups
from candle_ray.errors import DataError, UsageError

MAX_CELLS = 20_000_000
MAX_ROWS = 20_000
MAX_VAL_ROWS = 50_000
C_GRID = np.logspace(-4, 3, 8)  # one per decade: standardised wide data usually lands at 1e-3..1e-1
ALPHA_GRID = np.logspace(-3, 5, 17)
# Cox: the L2 penalty (on standardised features) beside a loss per event; strongest first (a path of warm starts)
COX_PENALTIES = np.logspace(3, -3, 13)
MAX_ITER = 1000
TOL = 1e-5  # lbfgs gradient tolerance: 1e-3 stopped weak-penalty fits early (192 x 1000: val_loss 0.42, not 0.34)
ABSENT_LOGIT = -1e4  # a class absent from the training rows: softmax gives it 0, as predict_proba does
PROB_FLOOR = 1e-15  # the probability a class absent from the training rows gets before the log
INNER_FOLDS = 5
POOLED = ("train", "val")  # the pooled row order of candle_ray.data.folds: train rows, then val rows
OWN_LOSS = {"classification": "categorical_crossentropy", "regression": "mse", "survival": "cox"}  # what its val_loss measures
_CHUNK_CELLS = 1 << 22  # rows gathered or predicted at a time: 16 MB of float32


@dataclass(frozen=True)
class Baseline:
    """A fitted baseline's validation metrics (plain floats; the mean over folds under CV) and what it was.

    rows_used / rows_total: the training rows one fit used / had (the largest fold under CV).
    linear: (weights [outputs, features], bias [outputs]) of the fit on the train split, in the cache's feature
    units (its standardisation folded in): a classifier's logits or a regressor's prediction; None under CV.
    """

    metrics: dict[str, float]
    model: str
    rows_used: int
    rows_total: int
    sampled: bool = False
    note: str | None = None
    linear: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)
    objective_state: dict = field(default_factory=dict, compare=False, repr=False)  # a Cox fit's cox.risk_state


def why_not(entry) -> str | None:
    """Why no linear baseline applies to `entry` (one line), or None when one does."""
    manifest = read_manifest(entry)
    task, classes, name = manifest["task"], manifest.get("num_classes"), manifest.get("name", "the dataset")
    if task == "autoencoder":
        return f"no linear baseline for an autoencoder ({name} reconstructs its input)"
    if isinstance(classes, (list, tuple)):
        return f"no linear baseline for multi-task labels ({name} has {len(classes)} label columns)"
    if len(manifest.get("label_columns") or ()) > 1:
        return f"no linear baseline for several regression targets ({name} has {len(manifest['label_columns'])})"
    missing = [split for split in POOLED if split not in manifest.get("splits", {})]
    if missing:
        return f"no linear baseline: {name} has no {missing[0]} split to score it on"
    return None


def fit(entry, cv_assignment=None, folds: int | None = None, seed: int = 0, *, max_cells: float = MAX_CELLS,
        max_rows: int = MAX_ROWS) -> Baseline | None:
    """Fit the baseline on `entry` (a cache Entry or its folder) and score it; None when `why_not(entry)`.

    Without `cv_assignment`: trained on the train split, scored on the val split. With it (the fold of each
    pooled train+val row, candle_ray.data.folds.assign) and `folds` K: K fits, fold k scored on its rows,
    each metric the mean over the folds, as a `--cv` trial reports it.
    """
    if why_not(entry) is not None:
        return None
    manifest = read_manifest(entry)
    data = _Pooled(entry, manifest)
    plans = _plans(data.n_train, data.n_val, cv_assignment, folds)
    cap = _cap(data, max_rows, max_cells)
    rng = np.random.default_rng(seed)
    fits, sizes = [], []
    with _quiet_single_thread():
        for train_rows, val_rows in plans:
            fit_rows, score_rows = _sample(rng, train_rows, cap), _sample(rng, val_rows, MAX_VAL_ROWS)
            sizes.append((len(fit_rows), len(train_rows), len(score_rows), len(val_rows)))
            fits.append(_fit_one(data, manifest, fit_rows, score_rows, seed))
    metrics = {key: float(np.mean([fitted[0][key] for fitted in fits])) for key in fits[0][0]}
    used, total = max(s[0] for s in sizes), max(s[1] for s in sizes)
    sampled = any(s[0] < s[1] or s[2] < s[3] for s in sizes)
    return Baseline(metrics=metrics, model=_describe([fitted[1] for fitted in fits]), rows_used=used,
                    rows_total=total, sampled=sampled, note=_note(sizes) if sampled else None,
                    linear=fits[0][2] if cv_assignment is None else None,
                    objective_state=fits[0][3] if cv_assignment is None else {})


def fit_shares(entry, runs: list[tuple[float, int]], *, max_cells: float = MAX_CELLS,
               max_rows: int = MAX_ROWS) -> list[tuple[float, dict[str, float]]]:
    """A learning curve's baseline: fitted on the very training rows of each run (train_fraction, rng_seed),
    as candle_ray.data.subsample draws them for the network, scored on the val split; [(share, metrics)].
    Empty where `why_not(entry)`."""
    from candle_ray.data import subsample
    from candle_ray.data.spec import strata

    if why_not(entry) is not None:
        return []
    manifest = read_manifest(entry)
    data = _Pooled(entry, manifest)
    cap = _cap(data, max_rows, max_cells)
    score_rows = _sample(np.random.default_rng(0), np.arange(data.n_train, data.n_train + data.n_val), MAX_VAL_ROWS)
    train_labels, out = data.labels[: data.n_train], []
    by = strata(manifest["task"], train_labels)
    train_groups = data.groups[: data.n_train] if data.groups is not None else None
    with _quiet_single_thread():
        for share, seed in runs:
            keep = subsample.chosen(train_labels if by is None else by, share, seed, by is not None, train_groups)
            rows = _sample(np.random.default_rng(seed), np.arange(data.n_train) if keep is None else keep, cap)
            # the inner CV's folds as the sweep's own baseline draws them: all the rows give its metrics
            out.append((share, _fit_one(data, manifest, rows, score_rows, 0)[0]))
    return out


def _cap(data: "_Pooled", max_rows: int, max_cells: float) -> int:
    """The most training rows one fit gathers: `max_rows`, fewer where the rows are wide (`max_cells`)."""
    return max(2, min(int(max_rows), int(max_cells) // max(1, data.num_features)))


def shares_val_loss(config: dict, task: str, searched=()) -> bool:
    """Whether the trials' val_loss measures what the baseline's does (cross-entropy, squared error). Not
    with het, qtl or mae heads or abstention, whose val_loss is another quantity (a Gaussian NLL of 1.43 is
    not better than a squared error of 1.55), nor when the search varies the loss."""
    from candle_ray.objectives import LOSS_ALIASES

    if {"loss", "abstention"} & set(searched) or config.get("abstention"):
        return False
    name = config.get("loss") or OWN_LOSS.get(task)
    return LOSS_ALIASES.get(name, name) == OWN_LOSS.get(task)


# --------------------------------------------------------------------------- data
class _Pooled:
    """The rows of the train split then of the val split, gathered by pooled index, a chunk at a time."""

    def __init__(self, entry, manifest: dict):
        self.n_train, self.n_val = (int(manifest["splits"][split]["rows"]) for split in POOLED)
        self.num_features = int(manifest["num_features"])
        if manifest.get("kind") == "joined":  # torch only here: the joined feed gathers with index_select
            from candle_ray.data.feed import JoinedFeed, split_labels

            self._feeds = [JoinedFeed.open(entry, split, 1, shuffle=False, pad=False) for split in POOLED]
            labels = [np.asarray(split_labels(entry, split)) for split in POOLED]
        else:
            parts = [open_split(entry, split) for split in POOLED]  # memory-mapped: nothing is read yet
            self._matrices = [x for x, _ in parts]
            self._feeds, labels = None, [y for _, y in parts]
        labels = np.concatenate(labels)
        # A dataset's groups (a patient's samples): the inner CV that picks the regularisation keeps them whole
        self.groups = pooled_groups(entry, manifest["group"]) if manifest.get("group") else None
        self.labels = labels.reshape(len(labels)) if labels.ndim == 2 and labels.shape[1] == 1 else labels

    def chunks(self, rows: np.ndarray):
        """(rows, x float32 [len(rows), d]) for consecutive chunks of the sorted pooled indices `rows`."""
        step = max(1, _CHUNK_CELLS // max(1, self.num_features))
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            first, second = part[part < self.n_train], part[part >= self.n_train] - self.n_train
            xs = [self._take(split, local) for split, local in enumerate((first, second)) if len(local)]
            yield part, xs[0] if len(xs) == 1 else np.concatenate(xs)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.num_features), dtype=np.float32)
        done = 0
        for part, x in self.chunks(rows):
            out[done : done + len(part)] = x
            done += len(part)
        return out

    def _take(self, split: int, local: np.ndarray) -> np.ndarray:
        if self._feeds is None:
            return np.asarray(self._matrices[split][local], dtype=np.float32)
        import torch

        x, _ = self._feeds[split].batch(torch.from_numpy(local.astype(np.int64)))
        return x.numpy()


def _plans(n_train: int, n_val: int, assignment, folds: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, scored rows) as pooled indices: the train/val split, or one pair per fold."""
    if assignment is None:
        if folds:
            raise UsageError(f"folds={folds} needs the fold assignment (cv_assignment) of the pooled train+val rows")
        return [(np.arange(n_train), np.arange(n_train, n_train + n_val))]
    assignment = np.asarray(assignment)
    if assignment.shape != (n_train + n_val,):
        raise DataError(f"the fold assignment has {len(assignment)} rows but the dataset has {n_train + n_val} "
                        f"train+val rows; the cache entry changed under the run, start it again")
    folds = int(folds) if folds is not None else int(assignment.max()) + 1
    plans = []
    for fold in range(folds):
        train, val = np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)
        if not len(train) or not len(val):
            raise DataError(f"fold {fold} leaves no {'training' if not len(train) else 'validation'} rows; use fewer folds")
        plans.append((train, val))
    return plans


def _sample(rng: np.random.Generator, rows: np.ndarray, cap: int) -> np.ndarray:
    """`rows`, or a seeded random `cap` of them, sorted (gathers then read the files in order)."""
    if len(rows) <= cap:
        return rows
    return rows[np.sort(rng.choice(len(rows), size=cap, replace=False))]


# --------------------------------------------------------------------------- fitting and scoring
@contextlib.contextmanager
def _quiet_single_thread():
    """ConvergenceWarnings hidden (a baseline stopped at max_iter is still a fair baseline) and BLAS/OpenMP
    at one thread: these small solves are slower with threads (192 x 1000, 5 classes: 2.5 s with 2 threads,
    0.3 s with 1 on a 2-core machine), and the machine's other threads stay free."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        # Ridge's dual solve on fewer rows than features at a tiny alpha (a learning curve's smallest share of
        # GDSC cell lines) falls back to least squares, a solution as valid; sklearn warns each time.
        warnings.filterwarnings("ignore", "Singular matrix in solving dual problem", UserWarning)
        yield


def _fit_one(data: _Pooled, manifest: dict, fit_rows: np.ndarray, score_rows: np.ndarray, seed: int):
    """Fit on `fit_rows`, score on `score_rows`: (metrics, (model name, parameter, value, how chosen),
    the fitted model as (weights, bias) of the raw features, what a checkpoint of it keeps of the scored rows)."""
    x, y = data.gather(fit_rows), data.labels[fit_rows]
    groups = data.groups[fit_rows] if data.groups is not None else None
    if manifest["task"] == "survival":
        linear, choice = _cox(x, y.astype(np.float64), groups, seed)
        del x
        risk = np.concatenate([chunk @ linear[0][0] + linear[1][0] for _, chunk in data.chunks(score_rows)])
        return (cox.val_metrics(risk, data.labels[score_rows]), choice, linear,
                cox.risk_state(risk, data.labels[score_rows]))
    if manifest["task"] == "regression":
        model, choice = _ridge(x, y.astype(np.float64), groups)
        del x
        predicted = np.concatenate([model.predict(chunk) for _, chunk in data.chunks(score_rows)])
        return _regression_metrics(predicted, data.labels[score_rows]), choice, _affine(model, [0], 1), {}
    num_classes = int(manifest["num_classes"])
    model, choice = _classifier(y, seed, groups)
    model.fit(x, y)
    del x
    proba = np.zeros((len(score_rows), num_classes))
    done = 0
    for part, chunk in data.chunks(score_rows):
        # Classes absent from the training rows have no column: they keep probability 0 (floored in the loss).
        proba[done : done + len(part), model.classes_] = model.predict_proba(chunk)
        done += len(part)
    return (_class_metrics(proba, data.labels[score_rows], num_classes), choice(model),
            _affine(model, model.classes_, num_classes), {})


def _ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None):
    """Standardised ridge regression with its alpha chosen by efficient leave-one-out CV, or with `groups` by
    grouped K-fold CV (`_grouped_alpha`); (fitted pipeline, how it was chosen)."""
    inner = _group_splits(y, groups, GroupKFold, min(INNER_FOLDS, len(np.unique(groups)))) \
        if groups is not None else None
    if inner is None:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHA_GRID)).fit(x, y)
        return model, ("ridge regression", "alpha", float(model[-1].alpha_), "leave-one-out CV")
    alpha = _grouped_alpha(x, y, inner)
    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x, y)
    return model, ("ridge regression", "alpha", alpha, f"{len(inner)}-fold CV by group")


def _grouped_alpha(x: np.ndarray, y: np.ndarray, splits: list) -> float:
    """The ALPHA_GRID value with the least squared error on the held-out rows of `splits`. Each fold's whole
    ridge path comes from one SVD of its standardised training rows. RidgeCV with a cv splitter refits per
    alpha: its fits took 81.9 s of a 5-fold cv's baseline on 4,491 GDSC rows x 711 features, this 10.6 s in all.
    Its criterion (R² averaged over folds) chose the same alpha in 4 of those 5 folds."""
    errors = np.zeros(len(ALPHA_GRID))
    for train, test in splits:
        scaler = StandardScaler().fit(x[train])
        fit, held = scaler.transform(x[train]), scaler.transform(x[test])
        mean = y[train].mean()
        u, s, vt = np.linalg.svd(fit, full_matrices=False)
        projected, uty = held @ vt.T, u.T @ (y[train] - mean)
        for i, alpha in enumerate(ALPHA_GRID):
            errors[i] += float(((y[test] - mean - projected @ (s / (s ** 2 + alpha) * uty)) ** 2).sum())
    return float(ALPHA_GRID[int(np.argmin(errors))])


def _cox(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int):
    """An L2-penalised Cox model on standardised features (in their training rows' span when wider than
    long: `_RowSpace`, exact here too), its penalty chosen by inner K-fold CV (stratified by event, or by
    group) on Verweij and van Houwelingen's cross-validated partial likelihood (glmnet's choice for Cox).
    ((weights [1, d], bias [1]) of the raw features, how it was chosen)."""
    scaler = StandardScaler().fit(x)
    space = _RowSpace().fit(scaler.transform(x))
    z = space.transform(scaler.transform(x))
    events = (y > 0).astype(np.int64)
    folds = min(INNER_FOLDS, int(events.sum()), int(len(y) - events.sum()) or INNER_FOLDS,
                len(np.unique(groups)) if groups is not None else INNER_FOLDS)
    if folds < 2:
        penalty, how = 1.0, "fixed: under 2 events, censored rows or groups"
    else:
        inner = _group_splits(events, groups, StratifiedGroupKFold, folds, shuffle=True, random_state=seed) \
            if groups is not None else list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, events))
        scores = np.zeros(len(COX_PENALTIES))
        for train, _ in inner:
            w = None
            for i, penalty in enumerate(COX_PENALTIES):
                w = _cox_fit(z[train], y[train], penalty, w)
                scores[i] += _partial_ll(z, y, w) - _partial_ll(z[train], y[train], w)
        penalty = float(COX_PENALTIES[int(np.argmax(scores))])
        how = f"{folds}-fold CV" + (" by group" if groups is not None else "")
    w = _cox_fit(z, y, penalty)
    coef = (space.basis_ @ w if space.basis_ is not None else w) / scaler.scale_
    linear = (coef[None, :].astype(np.float32), np.array([-coef @ scaler.mean_], dtype=np.float32))
    return linear, ("Cox regression", "penalty", penalty, how)


def _partial_ll(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    return cox.partial_log_likelihood(z @ w, y)[0]


def _cox_fit(z: np.ndarray, y: np.ndarray, penalty: float, start: np.ndarray | None = None) -> np.ndarray:
    """The weights minimising Cox's negative log partial likelihood per event + penalty / 2 * |w|², by L-BFGS
    in float64 from `start` (the last penalty's weights on a path)."""
    import torch

    zt, yt = torch.from_numpy(np.asarray(z, dtype=np.float64)), torch.from_numpy(np.asarray(y, dtype=np.float64))
    w = torch.zeros(zt.shape[1], dtype=torch.float64) if start is None else torch.from_numpy(start.copy())
    w.requires_grad_(True)
    opt = torch.optim.LBFGS([w], max_iter=MAX_ITER, tolerance_grad=TOL, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = cox.cox_loss(zt @ w, yt) + 0.5 * penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(objective)
    return w.detach().numpy()


def _group_splits(y: np.ndarray, groups: np.ndarray, splitter, folds: int, **options) -> list | None:
    """The inner CV's (train, test) rows, `folds` of them, each group in one; None under 2 folds."""
    if folds < 2:
        return None
    return list(splitter(folds, **options).split(np.zeros(len(y)), y, groups))


def _classifier(y: np.ndarray, seed: int, groups: np.ndarray | None = None):
    """The pipeline for these training labels (and their rows' groups, kept whole by the inner CV), and a
    function describing it once fitted."""
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2:
        return make_pipeline(DummyClassifier(strategy="prior")), lambda m: (
            "constant class prior", "C", math.nan, "the training rows hold one class")
    folds = min(INNER_FOLDS, int(counts.min()), len(np.unique(groups)) if groups is not None else INNER_FOLDS)
    if folds < 2:
        head = LogisticRegression(C=1.0, max_iter=MAX_ITER, tol=TOL)
        how = "fixed: a class has fewer than 2 training rows" if groups is None else "fixed: under 2 groups or rows"
    else:
        inner = StratifiedKFold(folds, shuffle=True, random_state=seed) if groups is None else \
            _group_splits(y, groups, StratifiedGroupKFold, folds, shuffle=True, random_state=seed)
        head = LogisticRegressionCV(Cs=C_GRID, cv=inner, scoring="neg_log_loss", l1_ratios=(0.0,), max_iter=MAX_ITER,
                                    tol=TOL, n_jobs=1, use_legacy_attributes=False)
        how = f"{folds}-fold CV" + (" by group" if groups is not None else "")
    model = make_pipeline(StandardScaler(), _RowSpace(), head)
    return model, lambda m: ("logistic regression", "C", float(np.ravel(getattr(m[-1], "C_", None) or m[-1].C)[0]), how)


class _RowSpace(TransformerMixin, BaseEstimator):
    """Standardised rows expressed in an orthonormal basis of the training rows' span, when there are more
    features than rows (expression data: 537 x 6000 becomes 537 x 537, a ~3x faster fit).

    Exact, not an approximation: an L2-penalised linear model's weights lie in the span of the centred
    training rows (w = sum_i g_i (x_i - mean), the intercept absorbing the mean), and so do those of every
    inner CV fold (its rows and its mean lie in the same span). With w = V z, x.w = (x V).z and |w| = |z|,
    so the same C gives the same model and the same predictions on any row.
    """

    def fit(self, x, y=None):
        self.basis_ = None
        if x.shape[1] > x.shape[0]:
            _, s, vt = np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False)
            keep = s > s[0] * 1e-10
            keep[0] = True  # all-constant features: one (zero) column rather than none
            self.basis_ = vt[keep].T
        return self

    def transform(self, x):
        return x if self.basis_ is None else np.asarray(x, dtype=np.float64) @ self.basis_


def _affine(model, present, outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted pipeline (scaler, row basis, linear head; or a constant prior) as (weights [outputs, d], bias
    [outputs]) of the unscaled features: with z = ((x - mu) / sd) V, z.c + b = x.(V c / sd) + (b - mu.(V c / sd)).
    Classes absent from the training rows (not in `present`) get a logit that softmax turns into 0."""
    head = model[-1]
    if not hasattr(head, "coef_"):  # DummyClassifier: the training rows' class prior, whatever the features
        d = int(head.n_features_in_)
        coef, intercept = np.zeros((len(present), d)), np.log(head.class_prior_)
    else:
        coef, intercept = np.atleast_2d(head.coef_).astype(float), np.atleast_1d(head.intercept_).astype(float)
        basis = getattr(model[-2], "basis_", None) if len(model) > 2 else None
        if basis is not None:
            coef = coef @ basis.T
        scaler = model[0]
        coef = coef / scaler.scale_
        intercept = intercept - coef @ scaler.mean_
    if len(present) == 2 and coef.shape[0] == 1:  # a binary logistic head: one logit, of the second class
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weights, bias = np.zeros((outputs, coef.shape[1])), np.full(outputs, ABSENT_LOGIT)
    weights[np.asarray(present)], bias[np.asarray(present)] = coef, intercept
    return weights.astype(np.float32), bias.astype(np.float32)


def checkpoint_state(fitted: Baseline, entry, share: float, metric: str = "val_loss") -> dict:
    """`fitted.linear` as a candle-ray checkpoint state (candle_ray.checkpoint.save): model `mlp` with no
    hidden layer, the dataset's description, and `pool_share`, the share of an ensemble's pooled output it
    takes (candle_ray.predict.pool_weights)."""
    import torch

    from candle_ray.data.features import describe
    from candle_ray.experiment import model_shape

    weights, bias = fitted.linear
    return {"model": "mlp", "config": {"dense": [], "dropout": 0.0}, "model_shape": model_shape(entry),
            "weights": {"net.0.weight": torch.from_numpy(weights), "net.0.bias": torch.from_numpy(bias)},
            "epoch": 0, "best": {"metric": metric, "value": fitted.metrics.get(metric), "epoch": 0},
            "origin": f"linear baseline: {fitted.model}", "pool_share": float(share), "data": describe(entry),
            **({"objective": fitted.objective_state} if fitted.objective_state else {})}  # as a survival network's


def _class_metrics(proba: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """CrossEntropy.eval_metrics' names and definitions: mean cross-entropy, accuracy, binary AUCs."""
    y = np.asarray(y, dtype=np.int64)
    picked = np.maximum(proba[np.arange(len(y)), y], PROB_FLOOR)
    metrics = {"val_loss": float(-np.log(picked).mean()), "val_accuracy": float(np.mean(proba.argmax(1) == y))}
    if num_classes == 2:
        both = len(np.unique(y)) == 2  # either AUC is undefined when val holds one class
        metrics["val_auroc"] = float(roc_auc_score(y, proba[:, 1])) if both else math.nan
        metrics["val_aupr"] = float(average_precision_score(y, proba[:, 1])) if both else math.nan
    return metrics


def _regression_metrics(predicted: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Regression.eval_metrics' names and objectives.fit_metrics' definitions (r2 = 1 - SS_res / SS_tot)."""
    a, b = np.asarray(y, dtype=np.float64).ravel(), np.asarray(predicted, dtype=np.float64).ravel()
    mse = float(np.mean((a - b) ** 2))
    va, vb = a.var(), b.var()
    corr = float(np.mean((a - a.mean()) * (b - b.mean())) / math.sqrt(va * vb)) if va > 0 and vb > 0 else 0.0
    return {"val_loss": mse, "val_r2": float(1 - mse / va) if va > 0 else 0.0,
            "val_mae": float(np.mean(np.abs(a - b))), "val_corr": corr}


# --------------------------------------------------------------------------- words
def _describe(choices: list[tuple]) -> str:
    """"logistic regression (C=0.1, 5-fold CV)", or with every fold's value and "mean of K folds"."""
    name, param = choices[0][0], choices[0][1]
    hows = "; ".join(dict.fromkeys(how for *_, how in choices))
    inner = [how.removesuffix("-fold CV") for *_, how in choices]
    if len(set(inner)) > 1 and all(k.isdigit() for k in inner):  # a fold whose rarest class had fewer rows
        hows = f"inner {'/'.join(inner)}-fold CV"
    values = [value for _, _, value, _ in choices if not math.isnan(value)]
    shown = list(dict.fromkeys(f"{v:.3g}" for v in values))
    if len(choices) == 1 or len(shown) < 2:
        chosen = f"{param}={shown[0]}{' in every fold' if len(choices) > 1 else ''}, " if shown else ""
    else:
        chosen = f"{param}={'/'.join(f'{v:.3g}' for v in values)} by fold, "
    folds = f"; mean of {len(choices)} folds" if len(choices) > 1 else ""
    return f"{name} ({chosen}{hows}{folds})"


def _note(sizes: list[tuple[int, int, int, int]]) -> str:
    """The one-line sentence saying how much of the data a sampled baseline saw."""
    used, total, scored, val_total = (max(s[i] for s in sizes) for i in range(4))
    per_fold = " per fold" if len(sizes) > 1 else ""
    parts = []
    if used < total:
        parts.append(f"trained on a seeded random sample of {used:,} of {total:,} training rows{per_fold}")
    if scored < val_total:
        parts.append(f"scored on a sample of {scored:,} of {val_total:,} validation rows{per_fold}")
    return f"the baseline {' and '.join(parts)}"
