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
