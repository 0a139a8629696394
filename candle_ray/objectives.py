"""Training objectives: the loss, the output head it needs and the metrics it reports. Pure PyTorch.

`make(config, task, shape, ...)` picks one from CANDLE keywords:
  classification     categorical cross-entropy (default); `class_weight: "balanced"`; binary tasks also
                     report val_auroc / val_aupr (CANDLE's streaming tf_auc); `abstention: True` adds one
                     output unit and trains with CANDLE's abstention loss, its α adapted each epoch
  multi-task         (P3B1: `classes` is a list) one cross-entropy per task head, labels -1 = no label
  regression         `loss: "mse"` (default), "mae", "het" (heteroscedastic: mean, log σ² per target)
                     or "qtl" (q50, q10, q90 per target)
  autoencoder        mse on the reconstruction
  survival           `loss: "cox"`: Cox's partial likelihood of a risk score (candle_ray.cox); reports
                     val_cindex (Harrell's C) from every validation row at once

Every objective accumulates per-batch sums (float64 tensors) that the loop adds up and all-reduces across
DDP ranks; the metrics are computed from the reduced sums, so they are exact over the whole split whatever
the number of workers. Survival's measures are no sums (each event's risk set and pairs span the split):
its eval_sums are per-row values that the loop gathers from every rank (`gathers_rows`). `head_shape`
gives the model the output width the objective needs.

Keras-vs-PyTorch / CANDLE-fidelity choices (each also noted where it is implemented):
* Models return logits; the softmax lives in the losses (Keras models end in softmax layers).
* Class weights follow Keras' `class_weight`: each training row's loss is multiplied by its class weight
  and the batch mean is taken over rows (not PyTorch's weighted mean, which divides by the weights' sum);
  validation losses are unweighted, as Keras evaluates validation data without class weights.
* AUROC/AUPR come from histograms of P(class 1) over AUC_BINS equal-width bins, as tf.metrics.auc
  thresholds probabilities; pairs of a positive and a negative in the same bin count one half.
* The abstention model uses a softmax over classes + abstention unit (CANDLE's NT3 abstention variant;
  ATTN's uses sigmoid outputs); the class cross-entropy renormalises over the class units, as Keras'
  categorical_crossentropy renormalises the masked prediction.
* Multi-task training uses mixed, masked batches instead of CANDLE's task-after-task epochs: see
  MultiTaskCrossEntropy.
"""

from __future__ import annotations

import abc
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from candle_ray import cox
from candle_ray.errors import DataError, UsageError
from candle_ray.experiment import ABSTENTION_DEFAULTS

AUC_BINS = 2000  # thresholds for AUROC/AUPR: pairs within 1/2000 of each other in P(class 1) tie
EPSILON = 1e-7  # Keras' K.epsilon(), used by CANDLE's abstention loss
LOSSES = ("categorical_crossentropy", "mse", "mae", "het", "qtl", "cox")
# Keras spellings of the same losses (integer labels make the sparse variant the same loss here).
LOSS_ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae", "crossentropy": "categorical_crossentropy",
                "sparse_categorical_crossentropy": "categorical_crossentropy"}
CLASS_WEIGHTS = ("none", "balanced")
TARGET_SCALINGS = ("std", "none")  # regression targets: standardised on the training rows, or as they are
QUANTILES = (0.5, 0.1, 0.9)  # CANDLE's qtl head order: q50, qlow, qhigh


# ---------------------------------------------------------------- the losses and helpers, as plain functions

def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
    """sklearn's compute_class_weight("balanced"): n_samples / (n_classes_present * count[c]).

    As CANDLE calls it (classes=np.unique(y_train)), only the classes present in the labels count in
    n_classes; a class absent from the training labels gets weight 1 (it never weighs a training row).
    Labels < 0 (no label, multi-task) are ignored.
    """
    y = np.asarray(labels).reshape(-1)
    y = y[y >= 0].astype(np.int64)
    if y.size == 0:
        raise DataError("class_weight='balanced' needs training labels, but the train split has none; "
                        "set class_weight to 'none' or check the label column")
    if y.max() >= num_classes:
        raise DataError(f"training label {int(y.max())} is out of range for {num_classes} classes; "
                        f"check the dataset's classes")
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes, dtype=np.float64)
    weights[present] = y.size / (present.sum() * counts[present])
    return weights


def weighted_cross_entropy(logits, target, weight=None):
    """Mean cross-entropy over rows; with `weight`, each row's term times its class weight (Keras)."""
    if weight is None:
        return F.cross_entropy(logits, target)
    return (F.cross_entropy(logits, target, reduction="none") * weight[target]).mean()


def cross_entropy_rows(logits, target):
    """Each row's cross-entropy in float64, exact for confident rows: float32 rounds a row whose true class
    leads by a logit margin above ~17 to exactly 0 (and float64's log-softmax above ~37), which would tie
    every confident trial at val_loss 0 and leave "the best" to the order trials finished in.
    With d = logits - the true class's logit, the loss is log Σ exp(d); where the true class leads
    (max d = 0) that is log1p of the other classes' Σ exp(d), exact down to float64's smallest numbers."""
    z = logits.double()
    d = z - z.gather(1, target[:, None])
    others = torch.exp(d.clamp(max=0.0)).scatter(1, target[:, None], 0.0).sum(1)
    return torch.where(d.max(1).values > 0, torch.logsumexp(d, 1), torch.log1p(others))


def heteroscedastic_loss(out, target):
    """CANDLE's heteroscedastic_loss: mean(exp(-S)·(y - ŷ)² + S), heads interleaved (ŷ_0, S_0, ŷ_1, S_1, ...)
    with S = log σ²; the negative Gaussian log-likelihood up to constants."""
    mean, log_var = _split_head(out, target, 2)
    return (torch.exp(-log_var) * (target.reshape(mean.shape) - mean).square() + log_var).mean()


def pinball(pred, target, q: float):
    """CANDLE's quantile_loss: mean(max(q·e, (q - 1)·e)) with e = y - pred."""
    error = target - pred
    return torch.maximum(q * error, (q - 1) * error).mean()


def triple_quantile_loss(out, target, low: float = 0.1, high: float = 0.9):
    """CANDLE's triple_quantile_loss: pinball(low) + pinball(high) + 2·pinball(0.5), heads interleaved
    (q50_0, qlow_0, qhigh_0, q50_1, ...)."""
    q50, qlow, qhigh = _split_head(out, target, 3)
    y = target.reshape(q50.shape)
    return pinball(qlow, y, low) + pinball(qhigh, y, high) + 2.0 * pinball(q50, y, 0.5)


def abstention_terms(logits, target):
    """(class cross-entropy, p_abs, log(1 - p_abs)) per row, from logits whose last unit abstains.

    The cross-entropy is over the class units alone (Keras' categorical_crossentropy renormalises the
    masked softmax, which is the softmax of the class logits); p_abs and log(1 - p_abs) are clipped to
    [ε, 1 - ε] as CANDLE's K.clip does, log(1 - p_abs) computed as logsumexp(classes) - logsumexp(all).
    CANDLE also adds ε to each masked probability before its cross-entropy; working on logits needs no
    such guard, so it is left out (it matters only for probabilities near ε, which Keras clips anyway).
    """
    classes = logits[:, :-1]
    base = F.cross_entropy(classes, target, reduction="none")
    log_keep = torch.logsumexp(classes, dim=1) - torch.logsumexp(logits, dim=1)
    log_keep = log_keep.clamp(min=math.log(EPSILON), max=math.log1p(-EPSILON))
    p_abs = (1.0 - torch.exp(log_keep)).clamp(EPSILON, 1.0 - EPSILON)
    return base, p_abs, log_keep


def abstention_loss(logits, target, alpha: float, weight=None):
    """CANDLE's abstention_loss, mean over rows: (1 - p_abs)·CE - α·log(1 - p_abs)."""
    base, p_abs, log_keep = abstention_terms(logits, target)
    per_row = (1.0 - p_abs) * base - alpha * log_keep
    if weight is not None:
        per_row = per_row * weight[target]
    return per_row.mean()


def adapt_alpha(alpha: float, epoch: int, accuracy: float, fraction: float, settings: dict) -> float:
    """CANDLE's AbstentionAdapt_Callback.on_epoch_end for our 1-based `epoch`.

    Keras numbers epochs from 0 and adapts when epoch > init_abs_epoch, i.e. from our epoch
    init_abs_epoch + 2 on. scale = 1 + acc_gain·min(acc - min_abs_acc, 0) + abs_gain·max(frac - max_abs_frac, 0),
    clipped to [alpha_scale_factor, 1 / alpha_scale_factor]; α ← α·scale.
    """
    s = {**ABSTENTION_DEFAULTS, **settings}
    if epoch - 1 <= s["init_abs_epoch"]:
        return alpha
    scale = 1.0 + s["acc_gain"] * min(accuracy - s["min_abs_acc"], 0.0) + s["abs_gain"] * max(fraction - s["max_abs_frac"], 0.0)
    scale = min(max(scale, s["alpha_scale_factor"]), 1.0 / s["alpha_scale_factor"])
    return alpha * scale


def auc_histogram(p1, target, bins: int = AUC_BINS):
    """[negatives per bin, positives per bin] of P(class 1), float64, length 2·bins (scatter-add: no sync)."""
    index = (p1.double() * bins).long().clamp_(0, bins - 1) + bins * (target == 1).long()
    counts = torch.zeros(2 * bins, dtype=torch.float64, device=p1.device)
    return counts.scatter_add_(0, index, torch.ones_like(index, dtype=torch.float64))


def auroc_from_histogram(neg, pos) -> float:
    """Trapezoidal area under the ROC curve whose thresholds are the bin edges.

    Equals the rank (Mann-Whitney) AUROC with a positive and a negative in the same bin counted one half.
    NaN when a class is missing (no curve), as sklearn refuses it.
    """
    neg, pos = np.asarray(neg, dtype=np.float64), np.asarray(pos, dtype=np.float64)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    pos_above = np.cumsum(pos[::-1])[::-1] - pos  # positives in higher bins
    return float((neg * (pos_above + pos / 2)).sum() / (n_neg * n_pos))


def aupr_from_histogram(neg, pos) -> float:
    """Average precision (sklearn's step-wise area under precision-recall) with the bins as thresholds."""
    neg, pos = np.asarray(neg, dtype=np.float64), np.asarray(pos, dtype=np.float64)
    n_pos = pos.sum()
    if n_pos == 0:
        return float("nan")
    tp, fp = np.cumsum(pos[::-1])[::-1], np.cumsum(neg[::-1])[::-1]  # predicted positive at threshold bin k
    has = pos > 0
    return float((pos[has] / n_pos * tp[has] / (tp[has] + fp[has])).sum())


def _split_head(out, target, k: int):
    """The k interleaved heads of CANDLE's het/qtl outputs, each [B, n_targets]."""
    rows = out.shape[0]
    if out.shape[-1] % k:
        raise DataError(f"the model has {out.shape[-1]} outputs, not a multiple of {k}; "
                        f"build it with objectives.head_shape so each target has {k} heads")
    heads = out.reshape(rows, -1, k)
    if heads.shape[1] != target.reshape(rows, -1).shape[1]:
        raise DataError(f"{heads.shape[1]} targets from the model's {out.shape[-1]} outputs but the labels "
                        f"have {target.reshape(rows, -1).shape[1]} per row; check the dataset's label columns")
    return tuple(heads[:, :, i] for i in range(k))


def _aligned(out, target):
    """A regressor's [B, 1] output against its [B] targets (MSELoss would broadcast them to [B, B])."""
    return out.squeeze(-1) if out.dim() == target.dim() + 1 and out.shape[-1] == 1 else out


def _count(t) -> torch.Tensor:
    return t.sum().double().reshape(1)


# ---------------------------------------------------------------- objectives

class Objective(abc.ABC):
    """A loss plus the sums its metrics need.

    train_sums(out, target, loss) → [loss·rows, rows, ...]; eval_sums(out, target) → the validation
    sums; train_metrics / eval_metrics turn (all-reduced) sums into metrics. `end_epoch` lets an objective
    adapt itself from the epoch's metrics (abstention's α); its state goes into checkpoints.
    """

    train_width = 2
    eval_width = 2
    gathers_rows = False  # eval_sums gives [rows, eval_width] per-row values, gathered whole, not summed

    @abc.abstractmethod
    def loss(self, out, target):
        """The training loss (a scalar tensor) of outputs `out` against `target`."""

    def train_sums(self, out, target, loss):
        rows = float(target.shape[0])  # torch.full, not torch.tensor: no host-to-device copy per step
        return torch.cat([loss.double().reshape(1) * rows, torch.full((1,), rows, dtype=torch.float64, device=loss.device)])

    def train_metrics(self, sums) -> dict:
        return {"loss": (sums[0] / sums[1]).item()}

    @abc.abstractmethod
    def eval_sums(self, out, target):
        """A float64 vector of length eval_width for one validation batch."""

    @abc.abstractmethod
    def eval_metrics(self, sums) -> dict:
        """The val_* metrics from the summed (all-reduced) eval_sums."""

    @abc.abstractmethod
    def metric_names(self) -> tuple[str, ...]:
        """Every metric name train_metrics and eval_metrics report."""

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        """Called after each epoch's metrics (identical on every rank: they come from reduced sums)."""

    def init_head(self, model: nn.Module) -> None:
        """Adjust a freshly built model's output layer (before any checkpoint is loaded)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CrossEntropy(Objective):
    """Categorical cross-entropy on logits (CANDLE: softmax output + categorical_crossentropy).

    Reports accuracy; binary tasks also val_auroc and val_aupr from P(class 1) histograms. `weight`
    (class weights) applies to the training loss only.
    """

    train_width = 3

    def __init__(self, classes: int, weight: torch.Tensor | None = None, bins: int = AUC_BINS):
        self.classes, self.weight, self.bins = int(classes), weight, bins
        self.binary = self.classes == 2
        self.eval_width = 3 + (2 * bins if self.binary else 0)

    def loss(self, out, target):
        return weighted_cross_entropy(out.float(), target, self.weight)

    def train_sums(self, out, target, loss):
        return torch.cat([super().train_sums(out, target, loss), _count(out.argmax(1) == target)])

    def train_metrics(self, sums) -> dict:
        return {**super().train_metrics(sums), "accuracy": (sums[2] / sums[1]).item()}

    def eval_sums(self, out, target):
        logits = out.float()
        parts = [cross_entropy_rows(logits, target).sum().reshape(1),
                 torch.full((1,), float(target.shape[0]), dtype=torch.float64, device=logits.device),
                 _count(logits.argmax(1) == target)]
        if self.binary:
            p = torch.softmax(logits, dim=1)
            parts.append(auc_histogram(p[:, 1] / p[:, :2].sum(1).clamp_min(1e-30), target, self.bins))
        return torch.cat(parts)

    def eval_metrics(self, sums) -> dict:
        metrics = {"val_loss": (sums[0] / sums[1]).item(), "val_accuracy": (sums[2] / sums[1]).item()}
        if self.binary:
            hist = sums[-2 * self.bins:].cpu().numpy()
            neg, pos = hist[:self.bins], hist[self.bins:]
            metrics["val_auroc"] = auroc_from_histogram(neg, pos)
            metrics["val_aupr"] = aupr_from_histogram(neg, pos)
        return metrics

    def metric_names(self):
        return ("loss", "accuracy", "val_loss", "val_accuracy") + (("val_auroc", "val_aupr") if self.binary else ())


class Abstention(CrossEntropy):
    """CANDLE's abstention classifier: one extra output unit (the last) that abstains.

    Loss (1 - p_abs)·CE - α·log(1 - p_abs); α starts at `alpha0` and is adapted after each epoch from
    val_abstention_accuracy (accuracy on the rows not abstained, CANDLE's abstention_acc; 1 when every
    row abstains, as CANDLE's guard) and val_abstention_fraction (rows whose argmax is the abstention unit,
    CANDLE's abstention metric). val_accuracy counts abstained rows as wrong (Keras' acc on k+1 units).
    α is reported as `abstention_alpha` (the value used in the epoch) and saved in checkpoints.
    """

    def __init__(self, classes: int, settings: dict, weight=None, bins: int = AUC_BINS):
        super().__init__(classes, weight, bins)
        self.settings = {k: settings.get(k, v) for k, v in ABSTENTION_DEFAULTS.items()}
        self.alpha = float(self.settings["alpha0"])
        self.eval_width += 2

    def loss(self, out, target):
        return abstention_loss(out.float(), target, self.alpha, self.weight)

    def eval_sums(self, out, target):
        logits = out.float()
        base, p_abs, log_keep = abstention_terms(logits, target)
        loss_sum = ((1.0 - p_abs) * base - self.alpha * log_keep).sum().double().reshape(1)
        abstained = logits.argmax(1) == self.classes
        sums = super().eval_sums(logits, target)  # accuracy: abstained rows never equal a label
        return torch.cat([loss_sum, sums[1:], _count(abstained), _count(~abstained)])

    def eval_metrics(self, sums) -> dict:
        abstained, kept = sums[-2].item(), sums[-1].item()
        metrics = super().eval_metrics(sums[:-2])
        metrics["val_abstention_fraction"] = abstained / (abstained + kept)
        metrics["val_abstention_accuracy"] = sums[2].item() / kept if kept > 0 else 1.0
        metrics["abstention_alpha"] = self.alpha
        return metrics

    def metric_names(self):
        return super().metric_names() + ("val_abstention_fraction", "val_abstention_accuracy", "abstention_alpha")

    def end_epoch(self, epoch, metrics):
        self.alpha = adapt_alpha(self.alpha, epoch, metrics["val_abstention_accuracy"],
                                 metrics["val_abstention_fraction"], self.settings)

    def state_dict(self):
        return {"alpha": self.alpha}

    def load_state_dict(self, state):
        self.alpha = float(state.get("alpha", self.alpha))


class MultiTaskCrossEntropy(Objective):
    """P3B1: one cross-entropy per task head; labels [B, T] int64 with -1 where a row has no label.

    Loss per batch = Σ_t mean CE of head t over the batch's rows labelled for task t (tasks without a
    labelled row add nothing). val_loss = the mean over tasks of each task's mean CE on its labelled
    validation rows (CANDLE's mean test loss), with val_loss_<t> per task. Metrics: accuracy_<t> and
    val_accuracy_<t> per task, and val_accuracy = their mean.

    CANDLE trains the tasks one after another within an epoch, each on its own data. Here each batch
    mixes the tasks' rows and masks missing labels: one feed, one forward pass per step, every rank the
    same number of steps (which DDP requires) and every head in every backward pass (no DDP unused-
    parameter search). The gradient of an epoch is the same in expectation, without CANDLE's drift
    towards whichever task comes last in the epoch.
    """

    def __init__(self, classes, weights=None):
        self.classes = [int(c) for c in classes]
        self.tasks = len(self.classes)
        self.weights = weights or [None] * self.tasks
        self.train_width = 2 + 2 * self.tasks
        self.eval_width = 3 * self.tasks

    def _check(self, out, target):
        if not isinstance(out, (tuple, list)) or len(out) != self.tasks:
            raise DataError(f"a multi-task objective with {self.tasks} tasks needs a model that returns "
                            f"{self.tasks} heads; build it with classes={self.classes}")
        if target.dim() != 2 or target.shape[1] != self.tasks:
            raise DataError(f"multi-task labels must be [rows, {self.tasks}] (-1 = no label), got shape "
                            f"{tuple(target.shape)}; prepare the dataset with one label column per task")

    def _per_task(self, out, target):
        for t, logits in enumerate(out):
            y = target[:, t]
            yield t, logits, y, y >= 0

    def loss(self, out, target):
        self._check(out, target)
        total = 0.0
        for t, logits, y, mask in self._per_task(out, target):
            ce = F.cross_entropy(logits.float(), y.clamp(min=0), reduction="none") * mask
            if self.weights[t] is not None:
                ce = ce * self.weights[t][y.clamp(min=0)]
            total = total + ce.sum() / mask.sum().clamp(min=1)
        return total

    def train_sums(self, out, target, loss):
        parts = [super().train_sums(out, target, loss)]
        for _, logits, y, mask in self._per_task(out, target):
            parts += [_count((logits.argmax(1) == y) & mask), _count(mask)]
        return torch.cat(parts)

    def train_metrics(self, sums) -> dict:
        metrics = super().train_metrics(sums)
        for t in range(self.tasks):
            correct, labelled = sums[2 + 2 * t].item(), sums[3 + 2 * t].item()
            metrics[f"accuracy_{t}"] = correct / labelled if labelled else float("nan")
        return metrics

    def eval_sums(self, out, target):
        self._check(out, target)
        parts = []
        for _, logits, y, mask in self._per_task(out, target):
            ce = cross_entropy_rows(logits, y.clamp(min=0)) * mask  # exact, as CrossEntropy's val_loss
            parts += [ce.sum().reshape(1), _count((logits.argmax(1) == y) & mask), _count(mask)]
        return torch.cat(parts)

    def eval_metrics(self, sums) -> dict:
        metrics, losses, accuracies = {}, [], []
        for t in range(self.tasks):
            ce, correct, labelled = (sums[3 * t + i].item() for i in range(3))
            if labelled:
                losses.append(ce / labelled)
                accuracies.append(correct / labelled)
            metrics[f"val_loss_{t}"] = ce / labelled if labelled else float("nan")
            metrics[f"val_accuracy_{t}"] = correct / labelled if labelled else float("nan")
        metrics["val_loss"] = sum(losses) / len(losses) if losses else float("nan")
        metrics["val_accuracy"] = sum(accuracies) / len(accuracies) if accuracies else float("nan")
        return metrics

    def metric_names(self):
        per_task = [f"{p}accuracy_{t}" for t in range(self.tasks) for p in ("", "val_")]
        per_task += [f"val_loss_{t}" for t in range(self.tasks)]
        return ("loss", "val_loss", "val_accuracy", *per_task)


class Regression(Objective):
    """Regression (mse, mae, het, qtl) and reconstruction (mse): r2, mae and corr on the point prediction.

    The point prediction is the output (mse/mae), the mean head (het) or the q50 head (qtl). het also
    reports val_mean_sigma (mean predicted σ = exp(S/2)); qtl val_coverage_80 (fraction of targets in
    [q10, q90]). A reconstruction reports val_corr only (CANDLE's P1B1 corr).

    Targets are standardised on the training rows (`target_scaler` {"mean", "scale"} per target column,
    `target_scaling: std`, the default): the network fits z = (y - mean) / scale, so its loss and learning
    rate mean the same whatever the targets' units (drug AUCs of variance 0.007, log IC50s of variance 7).
    Every reported metric, the training loss included, is in the targets' own units (`to_original`), and
    checkpoints carry the scaler so prediction inverts it. Every row's prediction starts at the target
    mean (z = 0; with `target_scaling: none` the bias is the mean itself), σ at the targets' spread and the
    q10/q90 heads at the normal quantiles around it: the output biases hold those values and the output
    kernel starts at zero. CANDLE starts het/qtl biases at ones, keeps Keras' glorot output kernel and
    does not standardise targets; all three are kept out here on purpose. A head that starts one σ off
    wastes the first epochs. A glorot kernel adds a random function of the inputs: on GDSC's 705
    standardised features it starts validation rows with variance 2.5 in z units, and 40 sweep trials of
    the `dense: []` linear model ended at a median val R² of -1.25 (ridge on the same 16 splits: 0.08..0.26,
    median 0.15); 18 trials started from a zero kernel ended at 0.14. (Classifiers keep glorot: from a zero
    kernel, Khan and NCI-60 sweeps gained no held-out accuracy, and Khan's conformal sets over-covered:
    0.961, nominal 0.9, glorot 0.948.) Unscaled targets make the loss scale, hence the useful learning rate,
    data-dependent.
    """

    def __init__(self, loss: str = "mse", reconstruct: bool = False, target_stats: dict | None = None,
                 standardize: bool = True):
        self.kind, self.reconstruct = loss, reconstruct
        self.heads = {"het": 2, "qtl": 3}.get(loss, 1)
        self.eval_width = 9 + (1 if self.heads > 1 else 0)
        self.stats = None if reconstruct else target_stats  # mean/scale of the training targets
        self.target_scaler = self.stats if standardize else None

    def _fit_loss(self, out, target):
        """The loss between outputs and targets in the same units."""
        if self.kind == "het":
            return heteroscedastic_loss(out, target)
        if self.kind == "qtl":
            return triple_quantile_loss(out, target, QUANTILES[1], QUANTILES[2])
        fn = F.l1_loss if self.kind == "mae" else F.mse_loss
        return fn(_aligned(out, target), target)

    def loss(self, out, target):
        """The training loss, on standardised targets when there is a target scaler."""
        return self._fit_loss(out.float(), standardize_targets(target, self.target_scaler))

    def to_original(self, out):
        return to_original(out, self.target_scaler, self.heads)

    def train_sums(self, out, target, loss):
        """The reported training loss in the targets' units: the fit term recomputed there, plus whatever
        the loop added to the loss (regularisation, a VAE's KL term)."""
        if self.target_scaler is not None:
            out = out.detach().float()
            extra = loss - self.loss(out, target)
            loss = self._fit_loss(self.to_original(out), target) + extra
        return super().train_sums(out, target, loss)

    def point(self, out, target):
        """The point prediction, shaped like the target."""
        if self.heads == 1:
            return _aligned(out, target)
        return _split_head(out, target, self.heads)[0].reshape(target.shape)

    def eval_sums(self, out, target):
        out = self.to_original(out.float())
        rows = target.shape[0]
        a, b = target.double().flatten(), self.point(out, target).double().flatten()
        parts = [self._fit_loss(out, target).double().reshape(1) * rows,
                 torch.full((1,), float(rows), dtype=torch.float64, device=out.device),
                 torch.stack([a.sum(), b.sum(), (a * b).sum(), (a * a).sum(), (b * b).sum(),
                              torch.full((), float(a.numel()), dtype=torch.float64, device=out.device),
                              (a - b).abs().sum()])]
        if self.kind == "het":
            parts.append(torch.exp(0.5 * _split_head(out, target, 2)[1].double()).sum().reshape(1))
        elif self.kind == "qtl":
            _, low, high = _split_head(out, target, 3)
            y = target.reshape(low.shape)
            parts.append(_count((y >= low) & (y <= high)))
        return torch.cat(parts)

    def eval_metrics(self, sums) -> dict:
        metrics = {"val_loss": (sums[0] / sums[1]).item()}
        fit = fit_metrics(sums[2:9])
        if self.reconstruct:
            return {**metrics, "val_corr": fit["val_corr"]}
        metrics.update(fit)
        values = sums[7].item()
        if self.kind == "het":
            metrics["val_mean_sigma"] = sums[9].item() / values
        elif self.kind == "qtl":
            metrics["val_coverage_80"] = sums[9].item() / values
        return metrics

    def metric_names(self):
        if self.reconstruct:
            return ("loss", "val_loss", "val_corr")
        extra = {"het": ("val_mean_sigma",), "qtl": ("val_coverage_80",)}.get(self.kind, ())
        return ("loss", "val_loss", "val_corr", "val_r2", "val_mae", *extra)

    def init_head(self, model):
        """Output biases at the target mean (and σ, q10, q90 around it), in the units the net fits, and a zero
        output kernel, so that every row starts there."""
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if self.stats is None or not last or last[-1].bias is None:
            return
        mean = torch.tensor(self.stats["mean"], dtype=torch.float64)
        scale = torch.tensor(self.stats["scale"], dtype=torch.float64)
        if self.target_scaler is not None:  # the net fits z: mean 0, scale 1
            mean, scale = torch.zeros_like(mean), torch.ones_like(scale)
        heads = {1: [mean], 2: [mean, 2 * torch.log(scale)],
                 3: [mean, mean + NORMAL_Q10 * scale, mean - NORMAL_Q10 * scale]}[self.heads]
        bias = torch.stack(heads, dim=1).reshape(-1)  # interleaved per target: (μ, S), (q50, q10, q90)
        if last[-1].bias.shape == bias.shape:
            with torch.no_grad():
                last[-1].bias.copy_(bias)
                last[-1].weight.zero_()


class Survival(Objective):
    """Cox proportional hazards: the model's one output is a risk score (log hazard ratio), trained on each
    batch's partial likelihood (DeepSurv's minibatch form: risk sets within the batch) and judged on the whole
    validation split: val_loss is the split's negative log partial likelihood per event (Breslow's ties),
    val_cindex Harrell's concordance index. Both need every row at once, hence `gathers_rows`."""

    eval_width = 2
    gathers_rows = True

    def __init__(self):
        self.state = {}  # of the last validation (cox.risk_state): kept in checkpoints for ensembles and predict

    def loss(self, out, target):
        return cox.cox_loss(out, target)

    def eval_sums(self, out, target):
        return torch.stack([out.reshape(-1).double(), target.reshape(-1).double()], 1)

    def eval_metrics(self, rows) -> dict:
        risk, target = rows[:, 0].cpu().numpy(), rows[:, 1].cpu().numpy()
        self.state = cox.risk_state(risk, target)
        return cox.val_metrics(risk, target)

    def metric_names(self):
        return ("loss", "val_loss", "val_cindex", "val_risk_std")

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)


NORMAL_Q10 = -1.2815515655446004  # the 10 % quantile of a standard normal: q10/q90 start at mean ∓ 1.28 σ


def target_stats(labels) -> dict:
    """Mean and standard deviation (population, 1 for a constant target) of each training target column."""
    y = np.asarray(labels, dtype=np.float64)
    y = y.reshape(len(y), -1)
    if len(y) == 0 or not np.isfinite(y).all():
        raise DataError("the training targets are empty or hold NaN/inf; fix or drop those rows before training")
    scale = y.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return {"mean": y.mean(axis=0).tolist(), "scale": scale.tolist()}


def _like(values, ref):
    """Per-target values as an array or tensor that broadcasts with `ref` (numpy or torch)."""
    if isinstance(ref, torch.Tensor):
        return torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
    return np.asarray(values, dtype=ref.dtype)


def standardize_targets(target, scaler: dict | None):
    """y -> (y - mean) / scale per target column ([B] or [B, T]); unchanged without a scaler."""
    if scaler is None:
        return target
    flat = target.reshape(target.shape[0], -1)
    z = (flat.to(torch.float32) - _like(scaler["mean"], flat.float())) / _like(scaler["scale"], flat.float())
    return z.reshape(target.shape)


def to_original(out, scaler: dict | None, heads: int = 1):
    """A regressor's raw outputs [..., T·heads] (interleaved per target) in the targets' own units: means
    and quantiles scaled and shifted, het's log σ² shifted by 2·log(scale). numpy or torch."""
    if scaler is None:
        return out
    mean, scale = _like(scaler["mean"], out), _like(scaler["scale"], out)
    per_target = out.reshape(*out.shape[:-1], mean.shape[0], heads)
    log_scale = (torch.log(scale) if isinstance(out, torch.Tensor) else np.log(scale))
    parts = [per_target[..., 0] * scale + mean]
    if heads == 2:
        parts.append(per_target[..., 1] + 2 * log_scale)
    elif heads == 3:
        parts += [per_target[..., 1] * scale + mean, per_target[..., 2] * scale + mean]
    stack = torch.stack if isinstance(out, torch.Tensor) else np.stack
    return stack(parts, -1).reshape(out.shape)


def fit_metrics(t) -> dict:
    """corr (Pearson's r), r2 (1 - SS_res / SS_tot, as CANDLE's r2) and mae from the sums
    [Σa, Σb, Σab, Σa², Σb², n, Σ|a - b|] of targets a and predictions b."""
    sa, sb, sab, saa, sbb, n, abs_err = (float(v) for v in t)
    cov, va, vb = sab / n - sa * sb / n**2, saa / n - (sa / n) ** 2, sbb / n - (sb / n) ** 2
    ss_res = saa - 2 * sab + sbb  # sum (a - b)^2
    return {"val_corr": cov / math.sqrt(va * vb) if va > 0 and vb > 0 else 0.0,
            "val_r2": 1 - ss_res / (va * n) if va > 0 else 0.0, "val_mae": abs_err / n}


# ---------------------------------------------------------------- choosing one from the config

def loss_name(config: dict, task: str) -> str:
    """The configured loss, checked against the task; CANDLE's defaults when unset."""
    default = {"classification": "categorical_crossentropy", "survival": "cox"}.get(task, "mse")
    name = config.get("loss") or default
    name = LOSS_ALIASES.get(name, name)
    if name not in LOSSES:
        raise UsageError(f"loss={name!r} is not one of {', '.join(LOSSES)}; pick one of them")
    fits = {"classification": ("categorical_crossentropy",), "regression": ("mse", "mae", "het", "qtl"),
            "autoencoder": ("mse", "mae"), "survival": ("cox",)}[task]
    if name not in fits:
        raise UsageError(f"loss={name!r} does not fit a {task} dataset; use {' or '.join(fits)}")
    return name


def _abstaining(config: dict, task: str, classes) -> bool:
    if not config.get("abstention"):
        return False
    if task != "classification" or isinstance(classes, (list, tuple)):
        raise UsageError(f"abstention=True needs a single-task classification dataset, this one is "
                         f"{'multi-task' if task == 'classification' else task}; set abstention to false")
    return True


def head_shape(config: dict, task: str, shape: dict) -> dict:
    """The model shape the objective needs: `classes` (the output width) doubled for het, tripled for
    qtl, plus one abstention unit (CANDLE's add_model_output modes het, qtl, abstain)."""
    name = loss_name(config, task)
    classes = shape["classes"]
    if _abstaining(config, task, classes):
        return {**shape, "classes": int(classes) + 1}
    factor = {"het": 2, "qtl": 3}.get(name, 1)
    return {**shape, "classes": int(classes) * factor} if factor > 1 else dict(shape)


def _class_weight_mode(config: dict) -> str:
    mode = config.get("class_weight") or "none"
    if mode not in CLASS_WEIGHTS:
        raise UsageError(f"class_weight={mode!r} is not one of {', '.join(CLASS_WEIGHTS)}; use 'balanced' or 'none'")
    return mode


def make(config: dict, task: str, shape: dict, *, train_labels=None, device=None) -> Objective:
    """The objective for `config` on a `task` dataset whose model_shape (before head_shape) is `shape`.

    `train_labels` (the train split's labels) is a callable or an array, read when class_weight is
    'balanced' and, for regression, for the targets' mean and scale (target_scaling, init_head).
    """
    name = loss_name(config, task)
    classes = shape["classes"]
    if task != "classification":
        if _class_weight_mode(config) != "none":
            raise UsageError(f"class_weight applies to classification; this dataset is {task}: set it to 'none'")
        if task == "autoencoder":
            return Regression(name, reconstruct=True)
        if task == "survival":
            return Survival()
        scaling = config.get("target_scaling") or "std"
        if scaling not in TARGET_SCALINGS:
            raise UsageError(f"target_scaling={scaling!r} is not one of {', '.join(TARGET_SCALINGS)}; use 'std' or 'none'")
        stats = target_stats(train_labels() if callable(train_labels) else train_labels) \
            if train_labels is not None else None
        return Regression(name, target_stats=stats, standardize=scaling == "std")

    multi = isinstance(classes, (list, tuple))
    weights = None
    if _class_weight_mode(config) == "balanced":
        labels = np.asarray(train_labels() if callable(train_labels) else train_labels)
        if multi:
            labels = labels.reshape(len(labels), -1)
            weights = [torch.tensor(balanced_class_weights(labels[:, t], c), dtype=torch.float32, device=device)
                       for t, c in enumerate(classes)]
        else:
            weights = torch.tensor(balanced_class_weights(labels, int(classes)), dtype=torch.float32, device=device)
    if multi:
        return MultiTaskCrossEntropy(classes, weights)
    if _abstaining(config, task, classes):
        return Abstention(int(classes), config, weights)
    return CrossEntropy(int(classes), weights)


def metric_names(config: dict, task: str, shape: dict) -> tuple[str, ...]:
    """The metrics training reports for this config and dataset (for checking an experiment's metric)."""
    if task == "classification" and config.get("class_weight") == "balanced":
        config = {**config, "class_weight": "none"}  # the names do not depend on the weights
    return make(config, task, shape).metric_names()
