"""References of `structsel search`: path analysis and parameter counts by hand, the linear
model against scikit-learn, the constant predictor in closed form, the fallback decision."""
import sys

import jax
import numpy as np
import pytest

from structsel import basis
from structsel.data import make_dataset
from structsel.family import Edge, Family
from structsel.search import enumeration, references, spaces


# --- structure ----------------------------------------------------------------------------

def _diamond(second_op):
    """0 -dense-> 1 -(second_op)-> 3 and 0 -dense-> 2 -identity-> 3 (sum)."""
    return Family(4, (Edge(0, 1, (basis.dense(4, "relu"),)),
                      Edge(1, 3, (second_op,)),
                      Edge(0, 2, (basis.dense(4, "tanh"),)),
                      Edge(2, 3, (basis.identity(),))), "sum")


def test_path_edges_cut_by_a_zero_op():
    zeros = np.zeros(4, int)
    # 1->3 is a zero op: the dense op into vertex 1 no longer reaches the output.
    np.testing.assert_array_equal(references.path_edges(_diamond(basis.zero()), zeros),
                                  [False, False, True, True])
    np.testing.assert_array_equal(references.path_edges(_diamond(basis.identity()), zeros),
                                  [True, True, True, True])
    assert references.depends_on_input(_diamond(basis.zero()), zeros)
    # Both branches cut: the output ignores x.
    cut = Family(3, (Edge(0, 1, (basis.dense(4),)), Edge(1, 2, (basis.zero(),)),
                     Edge(0, 2, (basis.constant(4),))), "sum")
    assert not references.depends_on_input(cut, np.zeros(3, int))
    with pytest.raises(ValueError, match="one op index per family edge"):
        references.path_edges(cut, [0, 0])


def test_mlp3_params_by_hand():
    """mlp3, 3 features, width 4, 2 classes: stem linear 3->4 (16), a linear / dense op
    4->4 (20), readout on concat(v1, v2) 8->2 (18). Edges 0->1, 0->2, 1->2 (cell labels)."""
    space = spaces.build_space("mlp3", num_outputs=2, width=4)
    x = np.zeros((2, 3), np.float32)
    zero, ident, lin, relu, tanh = range(5)
    cases = {
        (lin, relu, tanh): 16 + 3 * 20 + 18,   # every op on a path
        (zero, lin, relu): 16 + 20 + 18,       # v1 = 0: dense_relu on 1->2 reads a dead vertex
        (relu, zero, zero): 16 + 20 + 18,      # v2 = 0, but v1 reaches the readout
        (ident, zero, tanh): 16 + 20 + 18,     # identity has no weights
        (zero, zero, zero): 2,                 # constant predictor: its 2 outputs (was 34)
    }
    for choice, expect in cases.items():
        assert space.num_params(choice, x) == expect, choice
    np.testing.assert_array_equal(space.all_num_params(np.array(list(cases)), x),
                                  list(cases.values()))
    assert not references.depends_on_input(space.family, space.vertex([zero, zero, zero]))
    assert references.depends_on_input(space.family, space.vertex([zero, lin, relu]))


# --- reference models ---------------------------------------------------------------------

def _classification(num_classes, n=300, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    logits = x @ rng.normal(size=(d, num_classes)) + 0.5 * rng.normal(size=(n, num_classes))
    return make_dataset(x, logits.argmax(1), name="toy", seed=seed, task="classification")


@pytest.mark.parametrize("num_classes", [2, 4])
def test_logistic_regression_matches_scikit_learn(num_classes):
    linear_model = pytest.importorskip("sklearn.linear_model")
    ds = _classification(num_classes)
    params = references.fit_logistic(ds.x_train, ds.y_train, num_classes)
    sk = linear_model.LogisticRegression(C=1.0, tol=1e-8, max_iter=10_000).fit(
        ds.x_train.astype(np.float64), ds.y_train)
    proba = np.asarray(jax.nn.softmax(references.linear_outputs(params, ds.x_val, num_classes)))
    np.testing.assert_allclose(proba, sk.predict_proba(ds.x_val), atol=2e-3)
    assert params.w.shape == (5, 1 if num_classes == 2 else num_classes)


def test_ridge_matches_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    y = x @ rng.normal(size=6) + 0.3 * rng.normal(size=200) + 2.0
    params = references.fit_ridge(x, y, alpha=3.0)
    sk = linear_model.Ridge(alpha=3.0).fit(x, y)
    np.testing.assert_allclose(np.asarray(params.w)[:, 0], sk.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(params.b[0]), sk.intercept_, rtol=1e-4)


def test_constant_and_linear_scores_in_closed_form():
    ds = _classification(3)
    task = enumeration.task_of(ds)
    scores = references.reference_scores(task, enumeration.splits_of(ds))
    majority = np.bincount(ds.y_train, minlength=3).argmax()
    assert scores["constant"]["val_metric"] == pytest.approx(np.mean(ds.y_val == majority))
    assert scores["constant"]["params"] == 3 and scores["linear"]["params"] == 6 * 3
    assert scores["linear"]["val_metric"] > 0.8  # the labels are a noisy linear argmax
    # val_loss: the cross-entropy of the class prior, -1/m sum log p_train(y_i) (float32)
    prior = np.bincount(ds.y_train, minlength=3) / len(ds.y_train)
    assert scores["constant"]["val_loss"] == pytest.approx(-np.log(prior[ds.y_val]).mean(),
                                                           rel=1e-5)
    assert scores["linear"]["val_loss"] < scores["constant"]["val_loss"]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    reg = make_dataset(x, 50 + 10 * x[:, 0] + rng.normal(size=100), name="r", task="regression")
    task = enumeration.task_of(reg)
    scores = references.reference_scores(task, enumeration.splits_of(reg))
    mean, std = reg.target_scale
    raw_val = reg.y_val * std + mean
    raw_train_mean = (reg.y_train * std + mean).mean()
    assert scores["constant"]["val_metric"] == pytest.approx(
        np.sqrt(np.mean((raw_val - raw_train_mean) ** 2)), rel=1e-4)
    assert scores["linear"]["params"] == 3
    # val_loss: mean squared error in standardised units = (RMSE / std)^2
    assert scores["constant"]["val_loss"] == pytest.approx(
        (scores["constant"]["val_metric"] / std) ** 2, rel=1e-4)
    assert scores["linear"]["val_metric"] < 0.2 * scores["constant"]["val_metric"]


def test_hist_gradient_boosting_is_scikit_learn_on_the_same_split(monkeypatch):
    ensemble = pytest.importorskip("sklearn.ensemble")
    ds = _classification(3)
    task = enumeration.task_of(ds)
    out = references.hist_gradient_boosting(task, enumeration.splits_of(ds), seed=5)
    sk = ensemble.HistGradientBoostingClassifier(random_state=5).fit(ds.x_train, ds.y_train)
    assert out["test_metric"] == pytest.approx(sk.score(ds.x_test, ds.y_test))
    assert out["val_metric"] == pytest.approx(sk.score(ds.x_val, ds.y_val))
    # scikit-learn is an optional extra: without it there is no such baseline.
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    assert references.hist_gradient_boosting(task, enumeration.splits_of(ds), seed=5) is None


# --- decision -----------------------------------------------------------------------------

def _decide(selected, linear, constant=0.1, higher=True, independent=False, fallback=True):
    return references.decide(selected_val=selected, linear_val=linear, constant_val=constant,
                             higher_is_better=higher, metric="m",
                             input_independent=independent, fallback=fallback)


def test_decide():
    assert _decide(0.9, 0.8) == ("selected", None, ())
    d = _decide(0.8, 0.8)  # a tie goes to the linear model
    assert d.model == "linear" and "does not beat the linear model" in d.reason
    assert d.warnings[-1].endswith("returning the linear model instead")
    d = _decide(0.7, 0.8, fallback=False)
    assert d.model == "selected" and d.reason is None and "anyway" in d.warnings[0]
    # RMSE: lower is better
    assert _decide(50.0, 57.0, constant=70.0, higher=False).model == "selected"
    assert _decide(70.0, 57.0, constant=70.0, higher=False).model == "linear"
    # An input-independent selection is never returned silently, even when it wins.
    d = _decide(0.5, 0.4, constant=0.5, independent=True)
    assert d.model == "selected" and "does not depend on the input" in d.warnings[0]
    assert "constant predictor" in d.warnings[-1]
    # ... and loses to the linear model on any real signal.
    d = _decide(0.1, 0.9, independent=True)
    assert d.model == "linear" and len(d.warnings) == 2


def test_paired_gain_against_numpy():
    # Oracle: the per-row cross-entropy / squared error written out in float64 numpy;
    # the task computes them in float32, hence rel 1e-5 on the mean and its SE.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=40)
    sel, lin = rng.normal(size=(40, 3)) * 2, rng.normal(size=(40, 3))
    task = enumeration.Classification(3)

    def ce(logits):
        z = logits - logits.max(1, keepdims=True)
        return -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(y)), y]

    d = ce(lin) - ce(sel)
    got = references.paired_gain(task, sel, lin, y)
    assert got.rows == 40
    assert got.gain == pytest.approx(d.mean(), rel=1e-5)
    assert got.se == pytest.approx(d.std(ddof=1) / np.sqrt(40), rel=1e-5)
    yr = rng.normal(size=40)
    reg = enumeration.Regression(target_std=7.0)  # the loss is in standardised units
    pr, pl = yr + 0.1 * rng.normal(size=40), yr + rng.normal(size=40)
    d = (pl - yr) ** 2 - (pr - yr) ** 2
    got = references.paired_gain(reg, pr[:, None], pl[:, None], yr)
    assert got.gain == pytest.approx(d.mean(), rel=1e-5)
    assert got.se == pytest.approx(d.std(ddof=1) / np.sqrt(40), rel=1e-5)


def test_decide_needs_a_loss_gain_beyond_one_standard_error():
    paired = references.PairedGain
    kw = dict(linear_val=0.8, constant_val=0.1, higher_is_better=True, metric="m",
              input_independent=False)
    d = references.decide(selected_val=0.9, paired=paired(0.05, 0.01, 100), **kw)
    assert d == ("selected", None, ())
    # Better in the metric, but a loss gain within one SE of the per-row differences: the
    # validation rows cannot tell it from noise, so the linear model is returned.
    d = references.decide(selected_val=0.9, paired=paired(0.01, 0.02, 100), **kw)
    assert d.model == "linear" and "1 standard error" in d.reason and "100 rows" in d.reason
    assert d.warnings[-1].endswith("returning the linear model instead")
    # exactly one SE is not more than one SE
    assert references.decide(selected_val=0.9, paired=paired(0.02, 0.02, 100),
                             **kw).model == "linear"
    assert references.decide(selected_val=0.9, paired=paired(0.021, 0.02, 100),
                             **kw).model == "selected"
    assert references.decide(selected_val=0.9, paired=paired(0.021, 0.01, 100), margin_se=2.5,
                             **kw).model == "linear"
    # the metric still comes first: a tie in accuracy goes to the linear model
    d = references.decide(selected_val=0.8, paired=paired(1.0, 0.01, 100), **kw)
    assert d.model == "linear" and "does not beat the linear model on validation" in d.reason
    d = references.decide(selected_val=0.9, paired=paired(0.0, 0.02, 100), fallback=False, **kw)
    assert d.model == "selected" and "anyway" in d.warnings[0]


def test_review_compares_per_row_losses_and_writes_no_outputs():
    import json

    ds = _classification(3)
    task = enumeration.task_of(ds)
    splits = enumeration.splits_of(ds)
    baselines = references.baselines_of(task, splits, gradient_boosting=False, outputs=True)
    lin = baselines["linear"]
    assert lin["val_out"].shape == (len(ds.y_val), 3)
    assert float(task.loss(lin["val_out"], ds.y_val)) == pytest.approx(lin["val_loss"])
    summary = {"val_metric": 0.99, "test_metric": 0.9, "params": 40}
    # the selection's outputs: the linear model's, sharpened (better on every row it gets
    # right, worse on the others)
    out, decision = references.review(summary, task, splits, baselines=baselines,
                                      selected_out=3 * lin["val_out"])
    vs = out["versus_linear"]
    expect = references.paired_gain(task, 3 * lin["val_out"], lin["val_out"], ds.y_val)
    assert vs["val_loss_gain"] == expect.gain and vs["se"] == expect.se
    assert vs["rows"] == len(ds.y_val) and vs["decides"] is False and vs["margin_se"] is None
    json.dumps(out)  # no arrays in what is written
    assert "val_out" not in out["baselines"]["linear"]
    # by default the record does not decide: the same outputs are no loss gain, yet the
    # higher metric keeps the selection ...
    out, decision = references.review(summary, task, splits, baselines=baselines,
                                      selected_out=lin["val_out"])
    assert out["versus_linear"]["val_loss_gain"] == 0.0 and decision.model == "selected"
    # ... and with margin_se the loss gain must exceed it (0 is not more than 1 SE)
    out, decision = references.review(summary, task, splits, baselines=baselines,
                                      selected_out=lin["val_out"], margin_se=1.0)
    assert decision.model == "linear" and out["fallback"]["selected_val"] == 0.99
    assert out["versus_linear"]["decides"] is True and "standard error" in decision.reason
    # without outputs, nothing is recorded (budgets that keep no outputs)
    out, decision = references.review(summary, task, splits, baselines=baselines)
    assert decision.model == "selected" and "versus_linear" not in out


def test_review_falls_back_with_the_selection_recorded():
    ds = _classification(3)
    task = enumeration.task_of(ds)
    space = spaces.build_space("mlp3", num_outputs=3, width=4)
    summary = {"val_metric": 0.3, "test_metric": 0.31, "params": 3, "choice": [0, 0, 0]}
    out, decision = references.review(summary, task, enumeration.splits_of(ds),
                                      family=space.family, choice=space.vertex([0, 0, 0]),
                                      gradient_boosting=False)
    assert decision.model == "linear" and out["model"] == "linear"
    assert out["input_independent"] is True and len(out["warnings"]) == 2
    assert out["val_metric"] == out["baselines"]["linear"]["val_metric"]
    assert out["params"] == 18 and out["test_metric_std"] == 0.0
    assert out["fallback"]["selected_val"] == 0.3 and out["fallback"]["selected_params"] == 3
    assert set(out["baselines"]) == {"constant", "linear"}
    kept, _ = references.review({**summary, "val_metric": 0.99}, task,
                                enumeration.splits_of(ds), family=space.family,
                                choice=space.vertex([2, 0, 0]), gradient_boosting=False)
    assert kept["model"] == "selected structure" and "fallback" not in kept
    assert kept["val_metric"] == 0.99 and kept["warnings"] == []


def test_a_search_writes_predictions_that_reproduce_its_decision(tmp_path, interaction_csv):
    # End to end (a tiny ensembling budget on a CSV): predictions.npz holds the outputs of
    # the selection, the candidates and the references; the paired comparison recomputed
    # from them is the one in summary.json, and returned_* is the model the run returned.
    from structsel.search import runner

    path = interaction_csv
    config = runner.search_config(data=str(path), target="y", space="mlp1", method="random",
                                  budget="tiny,retrain_seeds=2,ensemble=1,train_steps=60",
                                  gradient_boosting=False, workdir=str(tmp_path / "run"))
    summary = runner.run_search(config, progress=False)
    with np.load(tmp_path / "run" / "predictions.npz") as npz:  # closed: no ResourceWarning
        pred = dict(npz)
    task = enumeration.Classification(2)
    assert pred["y_val"].shape == (len(pred["selected_val"]),)
    assert pred["candidates_val"].shape[0] == len(pred["candidates"])
    i = [list(c) for c in pred["candidates"]].index(summary["choice"])
    np.testing.assert_array_equal(pred["selected_val"], pred["candidates_val"][i])
    assert float(task.metric(pred["selected_val"], pred["y_val"])) == pytest.approx(
        summary.get("fallback", {}).get("selected_val", summary["val_metric"]))
    expect = references.paired_gain(task, pred["selected_val"], pred["linear_val"],
                                    pred["y_val"])
    vs = summary["versus_linear"]
    assert vs["val_loss_gain"] == pytest.approx(expect.gain, rel=1e-6)
    assert vs["se"] == pytest.approx(expect.se, rel=1e-6)
    returned = "linear" if summary["model"] == "linear" else "selected"
    np.testing.assert_array_equal(pred["returned_test"], pred[f"{returned}_test"])
    assert float(task.metric(pred["returned_test"], pred["y_test"])) == pytest.approx(
        summary["test_metric"], abs=1e-6)
    beats = summary.get("fallback", {}).get("selected_val", summary["val_metric"]) > \
        summary["baselines"]["linear"]["val_metric"]  # the metric decides (the default)
    assert (summary["model"] == "linear") == (not beats) and vs["decides"] is False
    assert "versus linear" in runner.format_summary(summary)
