"""The tabular space (residual chain), its training budget and early stopping."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from structsel import basis
from structsel.family import discrete_model
from structsel.search import enumeration, methods, runner, spaces, tabular
from structsel.search.enumeration import Classification, Regression, Splits, TrainConfig


def _splits(seed=0, n=(48, 48, 48), d=5, noise=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(n), d)).astype(np.float32)
    y = (np.tanh(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
         + noise * rng.normal(size=sum(n))).astype(np.float32)
    a, b = n[0], n[0] + n[1]
    return Splits(*(jnp.asarray(v) for v in (x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])))


# --- the space ------------------------------------------------------------------------------

def test_space_ops_and_size():
    space = spaces.build_space("tabular", num_outputs=3, width=16)
    assert space.op_names == ("identity", "res16", "res64", "res256", "ln_res64")
    assert space.discrete.size == 5 ** 3 == 125
    assert space.edge_labels == ("0->1", "1->2", "2->3")
    assert space.zero_op == -1  # no zero op: DARTS' exclusion and zero_fraction match nothing
    assert spaces.space_for_dataset("breast_cancer") == "tabular"
    assert spaces.space_for_dataset("mnist1d") == "conv1d3"


@pytest.mark.parametrize("choice", [(0, 0, 0), (1, 0, 0), (0, 4, 0), (3, 2, 1), (4, 4, 4)])
def test_parameter_counts_by_hand(choice):
    d, width, out = 5, 4, 3
    space = spaces.build_space("tabular", num_outputs=out, width=width)
    hidden = {"res4": 4, "res16": 16, "res64": 64, "ln_res16": 16}
    linear = (d * width + width) + (width * out + out) + d * out  # stem, readout, skip
    blocks = 0
    for c in choice:
        name = space.op_names[c]
        if name != "identity":
            h = hidden[name]
            norm = 2 * width if name.startswith("ln") else 0  # LayerNorm scale and shift
            blocks += width * h + h + h * width + width + norm
    assert space.num_params(np.array(choice), np.zeros((2, d), np.float32)) == linear + blocks


def test_residual_op_against_numpy():
    z = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    for norm in (False, True):
        spec = basis.residual(5, "relu", layer_norm=norm)
        params = spec.init(jax.random.key(1), z)
        assert list(params) == ["packed"]  # one leaf per op (see basis._Residual)
        p = np.asarray(params["packed"]).copy()
        p += np.random.default_rng(2).normal(size=p.shape).astype(np.float32) * 0.1
        w1, b1, w2, b2 = (p[:30].reshape(6, 5), p[30:35], p[35:65].reshape(5, 6), p[65:71])
        h = z
        if norm:
            scale, shift = p[71:77], p[77:83]
            h = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6)
            h = h * scale + shift
        expected = z + np.maximum(h @ w1 + b1, 0) @ w2 + b2
        got = spec.apply({"packed": jnp.asarray(p)}, jnp.asarray(z))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert basis.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="hidden"):
        basis.residual(0)


def test_residual_dropout_against_numpy_and_its_expectation():
    # Inverted dropout of rate r on the hidden units: with a key, h -> h * m / (1 - r) for
    # a Bernoulli(1 - r) mask m; without a key the op is the deterministic block. With
    # W_2 = I and b_2 = 0 the output minus z is the dropped-out hidden layer itself, so the
    # numpy oracle checks it entry by entry (mask recovered from its zeros). Over many
    # keys the mean output is the deterministic one (E[m / (1 - r)] = 1): 4000 keys,
    # within 5 standard errors of the Monte Carlo mean.
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 8)).astype(np.float32)
    rate = 0.3
    spec, plain = basis.residual(8, dropout=rate), basis.residual(8)
    w1, b1 = rng.normal(size=(8, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    packed = np.concatenate([w1.ravel(), b1, np.eye(8, dtype=np.float32).ravel(),
                             np.zeros(8, np.float32)])
    params = {"packed": jnp.asarray(packed)}
    assert plain.init(jax.random.key(1), z)["packed"].shape == packed.shape
    h = np.maximum(z @ w1 + b1, 0)
    np.testing.assert_allclose(spec.apply(params, jnp.asarray(z)), z + h, rtol=1e-5,
                               atol=1e-5)  # no key: deterministic, = the rate-0 block
    np.testing.assert_allclose(plain.apply(params, jnp.asarray(z), key=jax.random.key(3)),
                               z + h, rtol=1e-5, atol=1e-5)  # rate 0 ignores the key
    dropped = np.asarray(spec.apply(params, jnp.asarray(z), key=jax.random.key(3))) - z
    kept = np.abs(dropped) > 1e-6
    assert 0.5 < kept[h > 0].mean() < 0.9  # about 1 - r of the active units survive
    np.testing.assert_allclose(dropped, np.where(kept, h / (1 - rate), 0), rtol=1e-4,
                               atol=1e-5)
    outs = np.asarray(jax.vmap(lambda k: spec.apply(params, jnp.asarray(z), key=k))(
        jax.random.split(jax.random.key(4), 4000)), np.float64)
    se = outs.std(0) / np.sqrt(4000)  # + float32 rounding of each output (atol 1e-5)
    assert np.all(np.abs(outs.mean(0) - (z + h)) <= 5 * se + 1e-5)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        basis.residual(8, dropout=1.0)


@pytest.mark.parametrize("choice", [(0, 0, 0), (1, 3, 0), (4, 2, 3), (3, 3, 3)])
def test_supernet_at_a_vertex_is_the_discrete_model(choice):
    space = spaces.build_space("tabular", num_outputs=2, width=4)
    x = _splits(d=6).x_val
    w = space.family.init(jax.random.key(0), x[:1])
    # perturb the weights so that identity-initialised pieces cannot hide a mistake
    w = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), w)
    gamma = space.gamma(np.array(choice))
    structure = json.loads(json.dumps(space.export(np.array(choice))))
    sub, select = discrete_model(space.family, structure)
    expected = sub.apply(select(w), sub.ones_gamma(), x)
    np.testing.assert_allclose(space.family.apply(w, gamma, x), expected, rtol=1e-5, atol=1e-5)
    vertex = jnp.asarray(space.vertex(np.array(choice)))
    np.testing.assert_allclose(space.family.apply_vertex(w, vertex, x), expected,
                               rtol=1e-5, atol=1e-5)
    # all-identity is the linear model (stem and readout composed, plus the skip)
    if choice == (0, 0, 0):
        (stem,), _, _, _, (skip,), (head,) = w
        lin = (x @ stem["dense"]["kernel"] + stem["dense"]["bias"]) @ head["dense"]["kernel"] \
            + head["dense"]["bias"] + x @ skip["dense"]["kernel"]
        np.testing.assert_allclose(expected, lin, rtol=1e-5, atol=1e-5)


# --- training config ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,field", [
    ({"schedule": "linear"}, "schedule"),
    ({"schedule": "cosine", "warmup_steps": -1}, "warmup_steps"),
    ({"schedule": "cosine", "warmup_steps": 10, "steps": 10}, "warmup_steps"),
    ({"warmup_steps": 3}, "warmup_steps"),  # warm-up needs the cosine schedule
    ({"eval_every": -1}, "eval_every"),
    ({"eval_every": 11, "steps": 10}, "eval_every"),
    ({"eval_every": True}, "eval_every"),
    ({"eval_every": 2.5}, "eval_every"),
])
def test_train_config_rejects_bad_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("text,field", [("tabular,schedule=step", "schedule"),
                                        ("tabular,weight_decay=-1", "weight_decay"),
                                        ("tabular,eval_every=-5", "eval_every"),
                                        ("tabular,eval_every=5000", "eval_every"),
                                        ("default,warmup_steps=10", "warmup_steps")])
def test_budget_rejects_bad_training_fields(text, field):
    with pytest.raises(ValueError, match=field):
        runner.parse_budget(text)


def _old_fit(family, task, config, structure, weights, data, *, key):
    """The trainer before schedules and early stopping (commit a09825a), verbatim."""
    opt = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    n = data.x_train.shape[0]
    batch = config.batch_size if config.batch_size is not None and config.batch_size < n else None
    apply = enumeration.forward(family, structure)

    def body(carry, step):
        w, opt_state = carry
        if batch is None:
            x, y = data.x_train, data.y_train
        else:
            idx = jax.random.randint(jax.random.fold_in(key, step), (batch,), 0, n)
            x, y = data.x_train[idx], data.y_train[idx]
        loss, grads = jax.value_and_grad(lambda w: task.loss(apply(w, x), y))(w)
        updates, opt_state = opt.update(grads, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), loss

    (weights, _), losses = jax.lax.scan(body, (weights, opt.init(weights)),
                                        jnp.arange(config.steps))
    return weights, losses


@pytest.mark.parametrize("batch_size", [None, 16])
def test_default_config_trains_bit_identically_to_the_old_trainer(batch_size):
    space = spaces.build_space("mlp3", num_outputs=1, width=4)
    data, task = _splits(1), Regression()
    config = TrainConfig(steps=12, learning_rate=2e-2, batch_size=batch_size)
    choice = jnp.asarray(space.vertex(np.array([3, 1, 4])))
    w0 = space.family.init(jax.random.key(0), data.x_train[:1])
    new = jax.jit(lambda w: enumeration.fit(space.family, task, config, choice, w, data,
                                            key=jax.random.key(1)))(w0)
    old = jax.jit(lambda w: _old_fit(space.family, task, config, choice, w, data,
                                     key=jax.random.key(1)))(w0)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
        np.testing.assert_array_equal(a, b)
    out = enumeration.train_structure(space.family, task, config, choice, data,
                                      key=jax.random.key(2))
    # no stop_step / outputs by default; diverged_at is the divergence guard (-1: finite)
    assert set(out) == {"train_loss", "val_metric", "test_metric", "diverged_at"}
    assert int(out["diverged_at"]) == -1


def test_old_tables_match_the_default_budget_only():
    table = enumeration.load_enumeration_table("mlp3", "digits")
    if table is None:
        pytest.skip("no committed mlp3 x digits table")
    assert "schedule" not in table["settings"]["budget"]  # written before the new fields
    assert runner.table_matches(table, runner.BUDGETS["default"])
    assert not runner.table_matches(table, runner.parse_budget("default,eval_every=10"))
    assert not runner.table_matches(table, runner.BUDGETS["tabular"])


def test_cosine_schedule_warms_up_and_decays():
    lr = TrainConfig(steps=100, learning_rate=1e-2, schedule="cosine", warmup_steps=10)
    sched = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 100, 0.0)
    assert sched(0) == 0.0 and sched(10) == pytest.approx(1e-2) and sched(100) == 0.0
    # the optimiser uses it: the first AdamW update is zero (lr 0 at step 0)
    w = {"a": jnp.ones(3)}
    opt = lr.optimizer()
    updates, _ = opt.update({"a": jnp.ones(3)}, opt.init(w), w)
    np.testing.assert_array_equal(updates["a"], 0.0)


# --- early stopping -------------------------------------------------------------------------

def _stopping_case():
    """A regression whose best validation step is neither the first nor the last (the
    validation rows are the training rows with half the targets)."""
    space = spaces.build_space("tabular", num_outputs=1, width=4)
    tr = _splits(3, n=(16, 8, 8))
    data, task = tr._replace(x_val=tr.x_train, y_val=0.5 * tr.y_train), Regression()
    choice = jnp.asarray(space.vertex(np.array([1, 0, 0])))
    w0 = space.family.init(jax.random.key(0), data.x_train[:1])
    return space, data, task, choice, w0, dict(learning_rate=2e-2, weight_decay=0.0), \
        jax.random.key(5)


def test_early_stopping_returns_the_best_validation_weights(steps=40, every=15):
    """Oracle: with a constant learning rate the run of `steps` passes through the runs of
    fewer steps (same Adam state; minibatches would use the same keys fold_in(key, t)), so
    the weights at
    each evaluation are those of a plain run of t steps; early stopping must return the one
    with the best validation RMSE. The validation rows are the training rows with half the
    targets: predictions move from ~0 to ~y and pass 0.5 y on the way, so the best step is
    neither the first nor the last."""
    space, data, task, choice, w0, base, key = _stopping_case()
    stopped, _, stop = jax.jit(lambda w: enumeration.fit_with_stopping(
        space.family, task, TrainConfig(steps=steps, eval_every=every, **base), choice, w,
        data, key=key))(w0)
    checkpoints = list(range(every, steps + 1, every)) + ([steps] if steps % every else [])
    apply = enumeration.forward(space.family, choice)
    runs = {t: jax.jit(lambda w, t=t: enumeration.fit(
        space.family, task, TrainConfig(steps=t, **base), choice, w, data, key=key)[0])(w0)
        for t in checkpoints}
    rmse = {t: float(task.metric(apply(w, data.x_val), data.y_val)) for t, w in runs.items()}
    best = min(checkpoints, key=lambda t: (rmse[t], -t))
    assert every < best < steps, rmse  # the oracle is not trivial
    assert int(stop) == best
    for a, b in zip(jax.tree.leaves(stopped), jax.tree.leaves(runs[best])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_checkpoint_path_holds_every_stop_candidate(steps=40, every=15):
    """Oracle: the plain runs of t steps (as above). `val_path` must hold the validation
    outputs of the weights at every checkpoint t (15, 30 and the rest block's 40), the
    returned weights' outputs must be the path's entry at the stop, and the stop the last
    best checkpoint of the path's metric."""
    space, data, task, choice, w0, base, key = _stopping_case()
    stopped, _, stop, path = jax.jit(lambda w: enumeration.fit_with_stopping(
        space.family, task, TrainConfig(steps=steps, eval_every=every, **base), choice, w,
        data, key=key, val_path=True))(w0)
    checkpoints = [15, 30, 40]
    apply = enumeration.forward(space.family, choice)
    assert path.shape == (3, data.x_val.shape[0], 1)
    for i, t in enumerate(checkpoints):
        w = jax.jit(lambda w, t=t: enumeration.fit(
            space.family, task, TrainConfig(steps=t, **base), choice, w, data, key=key)[0])(w0)
        # float32 reassociation between the two programs: 1e-5 relative
        np.testing.assert_allclose(path[i], apply(w, data.x_val), rtol=1e-5, atol=1e-6)
    rmse = [float(task.metric(o, data.y_val)) for o in path]
    i = max(range(3), key=lambda i: (-rmse[i], i))
    assert int(stop) == checkpoints[i]
    np.testing.assert_allclose(path[i], apply(stopped, data.x_val), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="val_path needs early stopping"):
        enumeration.fit_with_stopping(space.family, task, TrainConfig(steps=4, **base), choice,
                                      w0, data, key=key, val_path=True)


def test_early_stopping_ties_go_to_the_later_step():
    # Accuracy on 2 validation rows the model gets right from the start: every evaluation
    # ties, so the last weights are kept.
    space = spaces.build_space("tabular", num_outputs=2, width=4)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
    y = (x[:, 0] > 0).astype(jnp.int32)
    data = Splits(x, y, x[:2], y[:2] * 0 + 2, x, y)  # label 2 never predicted: acc 0 always
    config = TrainConfig(steps=20, eval_every=5, learning_rate=1e-2)
    choice = jnp.asarray(space.vertex(np.array([1, 0, 0])))
    w0 = space.family.init(jax.random.key(0), x[:1])
    _, _, stop = enumeration.fit_with_stopping(space.family, Classification(2), config,
                                               choice, w0, data, key=jax.random.key(1))
    assert int(stop) == 20


# --- defaults -------------------------------------------------------------------------------

def test_tables_default_to_the_tabular_space_and_budget(tmp_path):
    cfg = runner.search_config(dataset="breast_cancer", workdir=str(tmp_path))
    assert cfg.space == "tabular" and cfg.budget.name == "tabular"
    assert cfg.method == "bayes_inner"  # the space's default method (one structure level)
    assert runner.search_config(dataset="mnist1d", workdir=str(tmp_path)).method == "bayes"
    assert runner.search_config(dataset="wine", method="bayes").method == "bayes"
    assert runner.search_config(dataset="wine").workdir == "results/search/wine_bayes_inner_0"
    assert cfg.budget.train.eval_every > 0 and cfg.budget.train.schedule == "cosine"
    assert runner.search_config(space="mlp3", workdir=str(tmp_path)).budget.name == "default"
    assert runner.search_config(dataset="mnist1d", workdir=str(tmp_path)).budget.name == "mnist1d"
    assert runner.default_budget("digits") == "default"  # callers that name no space
    assert runner.default_budget("mnist1d", "tabular") == "tabular"  # mnist1d as a table
    b = runner.BUDGETS["tabular"]
    assert b.width == 16 and tabular.hidden_widths(b.width) == (16, 64, 256)


def test_the_default_on_tables_runs_the_extended_kl_path(tmp_path):
    # the space's default method gets the space's path (c down to 1e-3); a method or a
    # path the user names is kept as named, and other spaces keep their method's own path
    path = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    assert spaces.DEFAULT_KL_WEIGHTS["tabular"] == path
    assert runner.search_config(dataset="wine", workdir=str(tmp_path)).kl_weights == path
    assert runner.search_config(dataset="wine", method="bayes_inner",
                                workdir=str(tmp_path)).kl_weights is None
    assert runner.search_config(dataset="wine", kl_weights="1,0.1",
                                workdir=str(tmp_path)).kl_weights == (1.0, 0.1)
    assert runner.search_config(space="mlp3", workdir=str(tmp_path)).kl_weights is None
    assert methods.METHODS["bayes_inner"].path == (1.0, 0.3, 0.1, 0.03, 0.01)


# --- the deep ensemble of the retrained seeds -------------------------------------------------

def test_ensemble_combines_probabilities_and_means():
    # oracle: numpy log of the averaged softmax probabilities, and the plain mean (float64)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 4))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    with jax.enable_x64(True):
        got = np.asarray(Classification(4).ensemble(jnp.asarray(logits)))
        np.testing.assert_allclose(got, np.log(p.mean(0)), rtol=1e-12)
        same = np.asarray(Classification(4).ensemble(jnp.asarray(np.stack([logits[0]] * 5))))
        # S copies of one model: its own log-probabilities
        np.testing.assert_allclose(same, np.log(p[0]), rtol=1e-12)
        preds = rng.normal(size=(3, 7, 1))
        np.testing.assert_allclose(np.asarray(Regression().ensemble(jnp.asarray(preds))),
                                   preds.mean(0), rtol=1e-12)


class _FixedOutputs:
    """An evaluator whose retrained candidates have the given outputs `outs` (N, S, m, C) on
    both the validation and the test rows, labels `y`."""

    def __init__(self, outs, y):
        self.outs, self.y = outs, y

    def __call__(self, choices, keys, outputs=False):
        acc = (self.outs.argmax(-1) == self.y).mean(-1)
        return {"val_metric": acc, "test_metric": acc, "val_out": self.outs,
                "test_out": self.outs}


def test_selection_by_the_ensemble_and_its_record():
    from structsel.search import selection

    y = np.array([0, 1, 1, 0, 1, 0])
    data = Splits(None, None, None, y, None, y)

    def member(weak_wrong_rows):  # confidently right (logit 5) except weakly wrong rows (1)
        right, wrong = np.array([5.0, -5.0]), np.array([-1.0, 1.0])
        return [(wrong if i in weak_wrong_rows else right)[::1 - 2 * c] for i, c in enumerate(y)]

    # candidate 0: members right on 4/6 and 5/6 whose errors differ: the ensemble is 6/6;
    # candidate 1: two copies of the 5/6 member: better alone, worse together
    outs = np.asarray([[member({1, 2}), member({3})], [member({3}), member({3})]], np.float32)

    class Space:
        def num_params(self, choice, x):
            return int(10 + choice[0])

    choices = np.array([[0], [1]])
    plain = selection.select(_FixedOutputs(outs, y), Space(), choices, keys=None, x_train=None,
                             higher_is_better=True)
    ens = selection.select(_FixedOutputs(outs, y), Space(), choices, keys=None, x_train=None,
                           higher_is_better=True, ensemble=(Classification(2), data))
    np.testing.assert_allclose(plain.val.mean(1), [0.75, 5 / 6])
    assert plain.best == 1 and plain.ensemble_val is None
    np.testing.assert_allclose(ens.ensemble_val, [1.0, 5 / 6])
    assert ens.best == 0
    # the ensemble's validation loss: -1/m sum log(mean_s softmax(f_s(x_i)))_{y_i} (numpy)
    probs = np.exp(outs) / np.exp(outs).sum(-1, keepdims=True)
    oracle = [-np.log(probs[i].mean(0)[np.arange(6), y]).mean() for i in range(2)]
    np.testing.assert_allclose(ens.ensemble_val_loss, oracle, rtol=1e-5)  # float32 logits
    record = runner._ensemble_record(ens, ens.best)
    assert record["val_metric"] == record["test_metric"] == 1.0
    assert record["ensemble"]["members"] == 2 and record["ensemble"]["val_metric_single"] == 0.75
    assert record["ensemble"]["params_total"] == 20


def test_ensemble_ties_go_to_the_lower_validation_loss():
    # two candidates whose ensembles are right on every validation row (a tie in accuracy):
    # the confident one (lower cross-entropy) wins although it has more parameters; with
    # no ensemble the tie goes to the fewer parameters, as before
    from structsel.search import selection

    y = np.array([0, 1, 1, 0])
    data = Splits(None, None, None, y, None, y)
    sure = np.array([[4.0, -4.0] if c == 0 else [-4.0, 4.0] for c in y])
    outs = np.asarray([[sure, sure], [0.1 * sure, 0.1 * sure]], np.float32)

    class Space:
        def num_params(self, choice, x):
            return [100, 10][int(choice[0])]

    choices = np.array([[0], [1]])
    ens = selection.select(_FixedOutputs(outs, y), Space(), choices, keys=None, x_train=None,
                           higher_is_better=True, ensemble=(Classification(2), data))
    np.testing.assert_allclose(ens.ensemble_val, [1.0, 1.0])
    assert ens.ensemble_val_loss[0] < ens.ensemble_val_loss[1] and ens.best == 0
    plain = selection.select(_FixedOutputs(outs, y), Space(), choices, keys=None, x_train=None,
                             higher_is_better=True)
    assert plain.best == 1
    front = selection.front_record(ens, type("S", (), {"selected": lambda self, c: {}})(),
                                   choices, ["a", "b"])
    assert [r["ensemble_val_loss"] for r in front["candidates"]] == pytest.approx(
        ens.ensemble_val_loss.tolist())
    assert "ensemble_val_loss" in front["rule"]


def test_tabular_budget_ensembles_and_the_flag_parses():
    assert runner.BUDGETS["tabular"].ensemble and not runner.BUDGETS["default"].ensemble
    # dropout 0.1 on tables (docs/tables.md, session 19), never on the cell spaces
    assert runner.BUDGETS["tabular"].dropout == 0.1 and runner.BUDGETS["default"].dropout == 0
    assert not runner.parse_budget("tabular,ensemble=0").ensemble
    assert runner.parse_budget("small,ensemble=true").ensemble
    with pytest.raises(ValueError, match="ensemble"):
        runner.parse_budget("tabular,ensemble=maybe")


def test_a_diverging_training_is_an_error_not_a_metric():
    # targets of 1e30: the squared error overflows float32 at once; the metrics of the NaN
    # weights (argmax over NaN = class 0) must not be reported as a result. The same
    # compiled program on the plain data does not diverge.
    data = _splits()
    space = spaces.build_space("tabular", num_outputs=1, width=4)
    task = Regression()
    keys = jax.random.split(jax.random.key(0), 2)
    choices = jnp.asarray(space.vertex(np.array([[1, 0, 0]])))
    train = jax.jit(lambda c, k, d: enumeration.train_structures(
        space.family, task, TrainConfig(steps=20), c, d, keys=k))
    out = train(choices, keys, data._replace(y_train=data.y_train * 1e30))
    diverged = np.asarray(out["diverged_at"])
    assert diverged.shape == (1, 2) and (diverged >= 0).all()
    assert not np.isfinite(np.asarray(out["train_loss"])).all()
    with pytest.raises(FloatingPointError, match=r"step \d+ \(structure res4.*learning_rate"):
        enumeration.check_diverged(out, ["res4,identity,identity"], 1e-2)
    good = train(choices, keys, data)
    assert (np.asarray(good["diverged_at"]) == -1).all()
    enumeration.check_diverged(good, ["res4,identity,identity"], 1e-2)  # no error
