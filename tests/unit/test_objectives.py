"""Objectives: each loss against a hand-computed value, class weights, AUROC/AUPR, abstention's α,
UQ head widths and the masked multi-task loss. Pure torch, no Ray."""

import math

import numpy as np
import pytest
import torch

from candle_ray import models, objectives
from candle_ray.errors import DataError, UsageError
from candle_ray.experiment import KEY_RULES
from candle_ray.summary import direction
from candle_ray.objectives import (
    Abstention, CrossEntropy, MultiTaskCrossEntropy, Regression, abstention_loss, adapt_alpha, auc_histogram,
    aupr_from_histogram, auroc_from_histogram, balanced_class_weights, head_shape, heteroscedastic_loss, make,
    pinball, triple_quantile_loss, weighted_cross_entropy,
)


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# ---------------------------------------------------------------- losses by hand

def test_cross_entropy_by_hand():
    logits, y = t([[2.0, 0.0], [0.0, 1.0]]), t([0, 1], torch.int64)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert CrossEntropy(2).loss(logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_validation_loss_of_confident_rows_is_not_rounded_to_zero():
    """Two trials right on every row with logit margins 20 and 40: float32 (and float64's log-softmax at 40)
    would give both val_loss 0 and tie them; the exact loss ranks the surer one lower, as cross-entropy does."""
    y = t([0, 2], torch.int64)
    losses = []
    for margin in (20.0, 40.0):
        logits = t([[margin, 0.0, -1.0], [0.0, -3.0, margin]])
        assert torch.nn.functional.cross_entropy(logits, y).item() == 0.0  # what the old sum reported
        val_loss = CrossEntropy(3).eval_metrics(CrossEntropy(3).eval_sums(logits, y))["val_loss"]
        expected = (math.log1p(math.exp(-margin) + math.exp(-margin - 1))
                    + math.log1p(math.exp(-margin) + math.exp(-margin - 3))) / 2
        assert val_loss == pytest.approx(expected, rel=1e-12)
        losses.append(val_loss)
    assert losses[0] > losses[1] > 0
    # Ordinary rows, and a wrong one, agree with torch's float64 cross-entropy.
    gen = torch.Generator().manual_seed(0)
    logits, y = 3 * torch.randn(200, 4, generator=gen), torch.randint(0, 4, (200,), generator=gen)
    assert (objectives.cross_entropy_rows(logits, y)
            == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), y, reduction="none"), abs=1e-12))


def test_class_weighted_cross_entropy_is_keras_row_weighting():
    """Keras multiplies each row's loss by its class weight and averages over rows (not over weights)."""
    logits, y, w = t([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), t([0, 1, 1], torch.int64), t([0.5, 3.0])
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)]
    expected = (0.5 * ce[0] + 3.0 * ce[1] + 3.0 * ce[2]) / 3
    assert weighted_cross_entropy(logits, y, w).item() == pytest.approx(expected, rel=1e-6)
    # validation stays unweighted, as Keras evaluates validation data without class weights
    sums = CrossEntropy(2, weight=w).eval_sums(logits, y)
    assert sums[0].item() == pytest.approx(sum(ce), rel=1e-6)


def test_balanced_class_weights_follow_sklearns_formula():
    # n_samples / (n_classes * count): 8 rows, 2 classes present, counts 6 and 2
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    assert balanced_class_weights(labels, 2) == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])
    # a class absent from train does not count in n_classes (CANDLE passes np.unique(y)) and gets 1;
    # -1 (no label) is ignored
    assert balanced_class_weights(np.array([0, 2, 2, 2, -1]), 3) == pytest.approx([4 / (2 * 1), 1.0, 4 / (2 * 3)])
    with pytest.raises(DataError, match="out of range for 2 classes"):
        balanced_class_weights(np.array([0, 2]), 2)
    with pytest.raises(DataError, match="no.*|none"):
        balanced_class_weights(np.array([-1, -1]), 2)


def test_heteroscedastic_loss_by_hand():
    # rows: (mean 1, S 0) vs y 2 → 1·1 + 0; (mean 2, S log 4) vs y 2 → 0 + log 4
    out, y = t([[1.0, 0.0], [2.0, math.log(4)]]), t([2.0, 2.0])
    assert heteroscedastic_loss(out, y).item() == pytest.approx((1 + math.log(4)) / 2, rel=1e-6)
    # two targets, interleaved (mean_0, S_0, mean_1, S_1)
    out2, y2 = t([[1.0, 0.0, 3.0, math.log(2)]]), t([[2.0, 1.0]])
    assert heteroscedastic_loss(out2, y2).item() == pytest.approx((1.0 + (4 / 2 + math.log(2))) / 2, rel=1e-6)


def test_pinball_and_triple_quantile_loss_by_hand():
    assert pinball(t([0.0]), t([2.0]), 0.1).item() == pytest.approx(0.2)  # under-prediction: q·e
    assert pinball(t([3.0]), t([2.0]), 0.9).item() == pytest.approx(0.1)  # over-prediction: (1 - q)·|e|
    # (q50, q10, q90) = (1, 0, 3) vs y = 2: pinball(0.1)=0.2 + pinball(0.9)=0.1 + 2·pinball(0.5)=2·0.5
    assert triple_quantile_loss(t([[1.0, 0.0, 3.0]]), t([2.0])).item() == pytest.approx(1.3, rel=1e-6)


def test_abstention_loss_by_hand():
    # equal logits over 2 classes + abstention: p_abs = 1/3, class CE (renormalised) = log 2
    logits, y = t([[0.0, 0.0, 0.0]]), t([0], torch.int64)
    expected = (2 / 3) * math.log(2) - 0.5 * math.log(2 / 3)
    assert abstention_loss(logits, y, 0.5).item() == pytest.approx(expected, rel=1e-6)
    # a sure abstention is clipped at 1 - ε, not log(0)
    sure = abstention_loss(t([[0.0, 0.0, 200.0]]), y, 0.5).item()
    assert math.isfinite(sure) and sure == pytest.approx(-0.5 * math.log(1e-7), rel=1e-3)


# ---------------------------------------------------------------- AUROC / AUPR

def exact_auroc(scores, labels):
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores)] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def exact_average_precision(scores, labels):
    order = np.argsort(-scores)
    hits = labels[order] == 1
    precision = np.cumsum(hits) / np.arange(1, len(scores) + 1)
    return precision[hits].sum() / hits.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_exact_rank_auroc(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(4000) < 0.3).astype(np.int64)
    logits = rng.normal(size=4000) + 1.2 * labels  # informative but overlapping classes
    p1 = 1 / (1 + np.exp(-logits))
    hist = auc_histogram(torch.from_numpy(p1), torch.from_numpy(labels)).numpy()
    neg, pos = hist[:objectives.AUC_BINS], hist[objectives.AUC_BINS:]
    assert neg.sum() == (labels == 0).sum() and pos.sum() == labels.sum()
    assert auroc_from_histogram(neg, pos) == pytest.approx(exact_auroc(p1, labels), abs=1e-3)
    assert aupr_from_histogram(neg, pos) == pytest.approx(exact_average_precision(p1, labels), abs=2e-3)


def test_auroc_edge_cases():
    assert auroc_from_histogram([0, 5], [5, 0]) == 0.0  # every negative above every positive
    assert auroc_from_histogram([5, 0], [0, 5]) == 1.0
    assert auroc_from_histogram([3, 0], [3, 0]) == 0.5  # all tied: one half
    assert math.isnan(auroc_from_histogram([0, 0], [2, 1]))  # no negatives: no ROC curve


def test_binary_metrics_add_up_across_ranks():
    """The histograms are plain sums: two 'ranks' summed give the single-process AUROC exactly."""
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(300, 2, generator=gen), torch.randint(0, 2, (300,), generator=gen)
    ce = CrossEntropy(2)
    whole = ce.eval_metrics(ce.eval_sums(logits, y))
    split = ce.eval_metrics(ce.eval_sums(logits[:111], y[:111]) + ce.eval_sums(logits[111:], y[111:]))
    assert whole == pytest.approx(split)
    p1 = torch.softmax(logits, 1)[:, 1].numpy()
    assert whole["val_auroc"] == pytest.approx(exact_auroc(p1, y.numpy()), abs=1e-3)
    assert set(whole) == {"val_loss", "val_accuracy", "val_auroc", "val_aupr"}
    assert "val_auroc" not in CrossEntropy(3).eval_metrics(CrossEntropy(3).eval_sums(torch.randn(4, 3), y[:4]))


# ---------------------------------------------------------------- abstention α

def test_alpha_adaptation_follows_candle_formula():
    """§8.6: from Keras epoch > init_abs_epoch (our epoch >= init_abs_epoch + 2), α ← α·clip(1 +
    acc_gain·min(acc - min_abs_acc, 0) + abs_gain·max(frac - max_abs_frac, 0), 0.8, 1.25) with defaults."""
    steps = [(1, 0.1, 0.9), (5, 0.1, 0.9),  # before adaptation starts: unchanged whatever the metrics
             (6, 0.80, 0.50),   # 1 - 5·0.1 + 0.1 = 0.6 → clipped to 0.8
             (7, 0.88, 0.45),   # 1 - 5·0.02 + 0.05 = 0.95
             (8, 0.95, 0.70),   # 1 + 0 + 0.3 = 1.3 → clipped to 1.25
             (9, 0.95, 0.20)]   # 1: on target
    expected = [0.5, 0.5, 0.4, 0.38, 0.475, 0.475]
    alpha, seen = 0.5, []
    for epoch, acc, frac in steps:
        alpha = adapt_alpha(alpha, epoch, acc, frac, {})
        seen.append(alpha)
    assert seen == pytest.approx(expected)
    # the objective applies it from its own validation metrics and keeps α in its state
    objective = Abstention(2, {"init_abs_epoch": 0, "alpha0": 1.0})
    objective.end_epoch(1, {"val_abstention_accuracy": 0.5, "val_abstention_fraction": 0.0})
    assert objective.alpha == 1.0
    objective.end_epoch(2, {"val_abstention_accuracy": 0.86, "val_abstention_fraction": 0.0})
    assert objective.alpha == pytest.approx(0.8)
    restored = Abstention(2, {})
    restored.load_state_dict(objective.state_dict())
    assert restored.alpha == pytest.approx(0.8)


def test_abstention_metrics_by_hand():
    # rows: abstains (label 0); predicts 1 (label 1, right); predicts 0 (label 1, wrong); predicts 0 (label 0)
    logits = t([[0.0, 0.0, 5.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    y = t([0, 1, 1, 0], torch.int64)
    objective = Abstention(2, {"alpha0": 0.5})
    m = objective.eval_metrics(objective.eval_sums(logits, y))
    assert m["val_abstention_fraction"] == pytest.approx(0.25)
    assert m["val_abstention_accuracy"] == pytest.approx(2 / 3)  # 2 right of the 3 rows not abstained
    assert m["val_accuracy"] == pytest.approx(0.5)  # an abstained row counts as wrong
    assert m["val_loss"] == pytest.approx(abstention_loss(logits, y, 0.5).item(), rel=1e-6)
    assert m["abstention_alpha"] == 0.5 and 0 <= m["val_auroc"] <= 1


# ---------------------------------------------------------------- heads

def test_uq_heads_widen_the_output_layer():
    shape = {"input_dim": 12, "classes": 1}
    assert head_shape({}, "regression", shape) == shape
    assert head_shape({"loss": "het"}, "regression", shape)["classes"] == 2
    assert head_shape({"loss": "qtl"}, "regression", shape)["classes"] == 3
    assert head_shape({"abstention": True}, "classification", {"input_dim": 12, "classes": 2})["classes"] == 3
    y = np.array([48.0, 50.0, 52.0, 50.0])  # mean 50, population sd sqrt(2)
    starts = {("mse", "std"): [0.0], ("mse", "none"): [50.0],
              ("het", "std"): [0.0, 0.0], ("het", "none"): [50.0, math.log(2.0)],
              ("qtl", "std"): [0.0, -1.2815515655446004, 1.2815515655446004],
              ("qtl", "none"): [50.0, 50.0 - 1.2815515655446004 * math.sqrt(2), 50.0 + 1.2815515655446004 * math.sqrt(2)]}
    for (loss, scaling), bias in starts.items():
        config = {"dense": [8], "dropout": 0.0, "loss": loss, "target_scaling": scaling}
        model = models.build("mlp", {**config, **head_shape(config, "regression", shape)})
        make(config, "regression", shape, train_labels=y).init_head(model)
        out = model(torch.randn(4, 12) * 5)
        assert out.shape == (4, len(bias))
        # Every row starts at the target mean (σ at the targets' spread, q10/q90 at the normal quantiles),
        # in the units the net fits (standardised targets by default), whatever its features: the output
        # kernel starts at zero, so no random function of the inputs is added to the start.
        for row in out.detach().double().numpy():
            assert row == pytest.approx(bias, rel=1e-6, abs=1e-6)


def test_objective_choice_errors_are_actionable():
    with pytest.raises(UsageError, match="loss='het' does not fit a classification dataset"):
        head_shape({"loss": "het"}, "classification", {"input_dim": 3, "classes": 2})
    with pytest.raises(UsageError, match="loss='categorical_crossentropy' does not fit a regression"):
        make({"loss": "categorical_crossentropy"}, "regression", {"input_dim": 3, "classes": 1})
    with pytest.raises(UsageError, match="loss='hinge' is not one of"):
        make({"loss": "hinge"}, "classification", {"input_dim": 3, "classes": 2})
    with pytest.raises(UsageError, match="abstention=True needs a single-task classification"):
        head_shape({"abstention": True}, "regression", {"input_dim": 3, "classes": 1})
    with pytest.raises(UsageError, match="class_weight='inverse' is not one of"):
        make({"class_weight": "inverse"}, "classification", {"input_dim": 3, "classes": 2})
    with pytest.raises(UsageError, match="class_weight applies to classification"):
        make({"class_weight": "balanced"}, "regression", {"input_dim": 3, "classes": 1})


def test_key_rules_cover_the_objective_keywords():
    assert set(KEY_RULES["loss"]["choices"]) == set(objectives.LOSSES) | set(objectives.LOSS_ALIASES)
    assert set(KEY_RULES["class_weight"]["choices"]) == set(objectives.CLASS_WEIGHTS)
    assert set(objectives.ABSTENTION_DEFAULTS) <= set(KEY_RULES)


def test_make_reads_train_labels_only_for_balanced_weights():
    shape = {"input_dim": 3, "classes": 2}
    calls = []
    make({}, "classification", shape, train_labels=lambda: calls.append(1))
    assert calls == []
    objective = make({"class_weight": "balanced"}, "classification", shape, train_labels=lambda: np.array([0, 0, 0, 1]))
    assert objective.weight.tolist() == pytest.approx([4 / 6, 2.0])


def test_metric_directions():
    assert [direction(m) for m in ("val_loss", "val_mae", "val_abstention_fraction", "val_auroc",
                                   "val_r2", "val_accuracy_1")] == ["min", "min", "min", "max", "max", "max"]


# ---------------------------------------------------------------- regression metrics on the UQ heads

def test_het_and_qtl_metrics_use_the_point_head():
    y = t([1.0, 2.0, 3.0, 4.0])
    het = Regression("het")
    out = t([[1.0, 0.0], [2.0, math.log(4)], [3.5, 0.0], [4.0, math.log(0.25)]])  # σ = 1, 2, 1, 0.5
    m = het.eval_metrics(het.eval_sums(out, y))
    assert m["val_mae"] == pytest.approx(0.5 / 4) and m["val_mean_sigma"] == pytest.approx(4.5 / 4)
    assert m["val_loss"] == pytest.approx(heteroscedastic_loss(out, y).item(), rel=1e-6)
    qtl = Regression("qtl")
    out = t([[1.0, 0.0, 2.0], [2.0, 2.5, 3.0], [3.0, 1.0, 2.5], [4.0, 4.0, 4.0]])  # inside: rows 0 and 3
    m = qtl.eval_metrics(qtl.eval_sums(out, y))
    assert m["val_coverage_80"] == pytest.approx(0.5) and m["val_r2"] == pytest.approx(1.0)
    assert set(m) == {"val_loss", "val_corr", "val_r2", "val_mae", "val_coverage_80"}


# ---------------------------------------------------------------- multi-task (P3B1)

def test_multitask_loss_ignores_unlabelled_rows():
    gen = torch.Generator().manual_seed(1)
    heads = (torch.randn(4, 3, generator=gen, requires_grad=True), torch.randn(4, 2, generator=gen, requires_grad=True))
    y = t([[0, -1], [2, 1], [-1, 0], [1, -1]], torch.int64)
    objective = MultiTaskCrossEntropy([3, 2])
    loss = objective.loss(heads, y)
    f = torch.nn.functional.cross_entropy
    expected = f(heads[0][[0, 1, 3]], y[[0, 1, 3], 0]) + f(heads[1][[1, 2]], y[[1, 2], 1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.all(heads[0].grad[2] == 0) and torch.all(heads[1].grad[[0, 3]] == 0)
    # a batch with no label for a task adds nothing for it, and still reaches every head
    for h in heads:
        h.grad = None
    only_first = objective.loss(heads, t([[0, -1], [1, -1], [2, -1], [0, -1]], torch.int64))
    assert only_first.item() == pytest.approx(f(heads[0], t([0, 1, 2, 0], torch.int64)).item(), rel=1e-6)
    only_first.backward()
    assert heads[1].grad is not None and torch.all(heads[1].grad == 0)
    with pytest.raises(DataError, match=r"multi-task labels must be \[rows, 2\]"):
        objective.loss(heads, y[:, 0])


def test_multitask_metrics_per_task():
    heads = (t([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]]), t([[5.0, 0], [5.0, 0], [0, 5.0]]))
    y = t([[0, -1], [2, 0], [2, 0]], torch.int64)  # task 0: 2 of 3 right; task 1: 1 of 2 right
    objective = MultiTaskCrossEntropy([3, 2])
    m = objective.eval_metrics(objective.eval_sums(heads, y))
    assert m["val_accuracy_0"] == pytest.approx(2 / 3) and m["val_accuracy_1"] == pytest.approx(0.5)
    assert m["val_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2)
    f = torch.nn.functional.cross_entropy
    per_task = [f(heads[0], y[:, 0]).item(), f(heads[1][1:], y[1:, 1]).item()]
    assert [m["val_loss_0"], m["val_loss_1"]] == pytest.approx(per_task, rel=1e-6)
    assert m["val_loss"] == pytest.approx(sum(per_task) / 2, rel=1e-6)  # CANDLE's mean over tasks
    shape = {"input_dim": 4, "classes": [3, 2]}
    assert isinstance(make({}, "classification", shape), MultiTaskCrossEntropy)
    weighted = make({"class_weight": "balanced"}, "classification", shape, train_labels=y.numpy())
    assert weighted.weights[1].tolist() == pytest.approx([2 / 2, 1.0])  # task 1 has only class 0 labelled


def test_multitask_p3b1_learns_in_two_epochs():
    """A tiny P3B1 trained on masked, mixed batches for 2 epochs: finite metrics, loss goes down."""
    from candle_ray.data.feed import BatchFeed

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 10)).astype(np.float32)
    y = np.stack([(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0), (x[:, 2] > 0).astype(np.int64)], axis=1)
    y[rng.random(120) < 0.4, 0] = -1  # each task labelled on a different subset of rows
    y[rng.random(120) < 0.4, 1] = -1
    torch.manual_seed(0)
    model = models.build("p3b1", {"input_dim": 10, "classes": [3, 2], "shared_nnet_spec": [16],
                                  "ind_nnet_spec": [8], "dropout": 0.0})
    objective = make({}, "classification", {"input_dim": 10, "classes": [3, 2]})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    feed = BatchFeed(x, y, 16, seed=0)
    history = []
    for epoch in (1, 2):
        totals = torch.zeros(objective.train_width, dtype=torch.float64)
        for xb, yb in feed.epoch(epoch):
            out = model(xb)
            loss = objective.loss(out, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals += objective.train_sums(out, yb, loss.detach())
        with torch.no_grad():
            val = objective.eval_sums(model(torch.from_numpy(x)), torch.from_numpy(y))
        history.append({**objective.train_metrics(totals), **objective.eval_metrics(val)})
    for m in history:
        assert all(math.isfinite(m[k]) for k in ("loss", "val_loss", "accuracy_0", "accuracy_1",
                                                 "val_accuracy_0", "val_accuracy_1"))
    assert history[1]["val_loss"] < history[0]["val_loss"]


@pytest.mark.parametrize("key, default, bad, message", [
    ("loss", "mse", "hinge", "loss='hinge' is not one of"),
    ("class_weight", "none", "inverse", "class_weight='inverse' is not one of"),
    ("alpha0", 0.5, "0", "alpha0=0.0 must be > 0.0"),
    ("alpha_scale_factor", 0.8, "1.2", "alpha_scale_factor=1.2 must be <= 1.0"),
    ("min_abs_acc", 0.9, "1.5", "min_abs_acc=1.5 must be <= 1.0"),
    ("max_abs_frac", 0.4, "-0.1", "max_abs_frac=-0.1 must be >= 0.0"),
    ("init_abs_epoch", 4, "-1", "init_abs_epoch=-1 must be >= 0"),
    ("acc_gain", 5.0, "-1", "acc_gain=-1.0 must be >= 0.0"),
    ("reduce_lr_cooldown", 0, "-2", "reduce_lr_cooldown=-2 must be >= 0"),
    ("reduce_lr_min_lr", 0.0, "-1e-9", "reduce_lr_min_lr=-1e-09 must be >= 0.0"),
])
def test_objective_keywords_are_validated(key, default, bad, message):
    from candle_ray.experiment import coerce

    with pytest.raises(UsageError, match=message):
        coerce(key, default, bad)


def test_objective_keyword_edges_that_are_allowed():
    from candle_ray.experiment import coerce

    assert coerce("alpha_scale_factor", 0.8, "1") == 1.0  # 1 = no adaptation
    assert coerce("min_abs_acc", 0.9, "1.0") == 1.0 and coerce("max_abs_frac", 0.4, "0") == 0.0
    assert coerce("loss", "mse", "het") == "het" and coerce("class_weight", "none", "balanced") == "balanced"
