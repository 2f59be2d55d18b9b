"""Ground-truth enumeration: vmapped training equals looped training, regret / rank, tables."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from structsel.family import discrete_model
from structsel.search import enumeration, spaces
from structsel.search.enumeration import Regression, Splits, TrainConfig


def _regression_splits(seed=0, n=48, d=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3 * n, d)).astype(np.float32)
    y = (np.tanh(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]).astype(np.float32)
    return Splits(*(jnp.asarray(a) for a in (x[:n], y[:n], x[n:2 * n], y[n:2 * n],
                                             x[2 * n:], y[2 * n:])))


def test_vmapped_enumeration_equals_looped_training():
    space = spaces.build_space("mlp1", num_outputs=1, width=4)
    data, task = _regression_splits(), Regression(target_std=2.0)
    config = TrainConfig(steps=6, learning_rate=3e-2, batch_size=16)
    choices = np.asarray(space.discrete.enumerate())
    keys = jax.random.split(jax.random.key(3), 2)
    batched = jax.jit(lambda g, k: enumeration.train_structures(
        space.family, task, config, g, data, keys=k))(space.gamma(choices), keys)
    one = jax.jit(lambda g, k: enumeration.train_structure(space.family, task, config, g, data,
                                                           key=k))
    for i, choice in enumerate(choices):
        for s in range(len(keys)):
            looped = one(space.gamma(choice), keys[s])
            for name in ("train_loss", "val_metric", "test_metric"):
                # float32, identical math; vmapped reductions may be reordered -> 1e-5 rel.
                np.testing.assert_allclose(batched[name][i, s], looped[name], rtol=1e-5,
                                           atol=1e-6)
    assert batched["val_metric"].shape == (len(choices), 2)
    # Different structures give different models (the test could fail if gamma were ignored).
    assert np.unique(np.round(np.asarray(batched["val_metric"][:, 0]), 5)).size > 2


@pytest.mark.parametrize("space_name", ["mlp1", pytest.param("conv1d3", marks=pytest.mark.slow)])
def test_mapped_vertex_training_equals_vmapped_supernet_training(space_name):
    """Oracle: the vmapped supernet at each one-hot Gamma (every op computed, all but one
    weighted by 0). The choices path (lax.map + lax.switch, only the chosen op run) does
    the same AdamW steps; float32, reassociated reductions -> 1e-4 relative after 6 steps."""
    space = spaces.build_space(space_name, num_outputs=1, width=3)
    data, task = _regression_splits(2, d=6), Regression(target_std=2.0)
    if space.layout == "sequence":
        data = Splits(*(space.prepare(a) if i % 2 == 0 else a for i, a in enumerate(data)))
    config = TrainConfig(steps=6, learning_rate=3e-2, batch_size=16)
    choices = np.asarray(space.discrete.enumerate())
    if len(choices) > 12:
        choices = choices[np.random.default_rng(0).choice(len(choices), 12, replace=False)]
    keys = jax.random.split(jax.random.key(4), 2)
    run = jax.jit(lambda s, k: enumeration.train_structures(space.family, task, config, s, data,
                                                            keys=k))
    vmapped = run(space.gamma(choices), keys)
    mapped = run(jnp.asarray(space.vertex(choices)), keys)
    for name in ("train_loss", "val_metric", "test_metric"):
        assert mapped[name].shape == (len(choices), 2)
        np.testing.assert_allclose(mapped[name], vmapped[name], rtol=1e-4, atol=1e-5)
    assert np.unique(np.round(np.asarray(mapped["val_metric"][:, 0]), 4)).size > 2


def test_padding_rows_marked_invalid_are_skipped_and_the_rest_unchanged():
    """Oracle: the same choices mapped without `valid`. A structure marked valid runs the
    same steps inside a lax.cond branch (same float32 math; 1e-6 relative allows XLA to
    fuse the branch differently); a row marked invalid is zeros, not a trained model."""
    space = spaces.build_space("mlp1", num_outputs=1, width=4)
    data, task = _regression_splits(5), Regression(target_std=2.0)
    config = TrainConfig(steps=6, learning_rate=3e-2, batch_size=16, eval_every=3)
    choices = jnp.asarray(space.vertex(np.asarray(space.discrete.enumerate())[:4]))
    keys = jax.random.split(jax.random.key(5), 2)
    full = jax.jit(lambda s, k: enumeration.train_structures(
        space.family, task, config, s, data, keys=k, outputs=True))(choices, keys)
    valid = np.array([True, False, True, False])
    part = jax.jit(lambda s, k, v: enumeration.train_structures(
        space.family, task, config, s, data, keys=k, outputs=True, valid=v))(choices, keys, valid)
    assert set(part) == set(full)
    for name in full:
        np.testing.assert_allclose(part[name][valid], full[name][valid], rtol=1e-6, atol=1e-7)
        assert not np.any(np.asarray(part[name][~valid]))
    assert np.all(np.asarray(full["train_loss"][~valid]) > 0)  # trained rows are not zeros
    with pytest.raises(ValueError, match="valid applies to choices"):
        enumeration.train_structures(space.family, task, config, space.gamma(
            np.asarray(space.discrete.enumerate())[:2]), data, keys=keys, valid=valid[:2])


def test_training_at_a_vertex_trains_the_discrete_model():
    """Oracle: the stand-alone discrete model (family.discrete_model) trained from the same
    initial weights with the same AdamW steps ends at the same outputs as the supernet at
    the simplex vertex (unused ops get zero gradients, so Adam leaves them unchanged)."""
    space = spaces.build_space("mlp3", num_outputs=1, width=4)
    data, task = _regression_splits(1), Regression()
    config = TrainConfig(steps=8, learning_rate=2e-2, weight_decay=0.0)
    choice = np.array([3, 1, 4])
    gamma = space.gamma(choice)
    structure = space.export(choice)
    sub, select = discrete_model(space.family, json.loads(json.dumps(structure)))
    w0 = space.family.init(jax.random.key(0), data.x_train[:1])
    w_super, _ = enumeration.fit(space.family, task, config, gamma, w0, data,
                                 key=jax.random.key(1))
    w_sub, _ = enumeration.fit(sub, task, config, sub.ones_gamma(), select(w0), data,
                               key=jax.random.key(1))
    out_super = space.family.apply(w_super, gamma, data.x_test)
    out_sub = sub.apply(w_sub, sub.ones_gamma(), data.x_test)
    # float32 and the same operations up to summation of exact zeros: 1e-5.
    np.testing.assert_allclose(out_super, out_sub, rtol=1e-5, atol=1e-5)


def _hand_table(higher_is_better=True):
    # 4 structures of a 2-edge x 2-op space; test means 0.9, 0.7, 0.95, 0.7.
    test = np.array([[0.9, 0.9], [0.6, 0.8], [0.94, 0.96], [0.7, 0.7]])
    return enumeration.make_table(
        space="toy", dataset="hand", op_names=[("a", "b"), ("a", "b")],
        choices=[[0, 0], [0, 1], [1, 0], [1, 1]], params=[1, 2, 3, 4], val=test, test=test,
        higher_is_better=higher_is_better, settings={}, command="by hand")


def test_regret_and_rank_against_a_hand_table():
    table = _hand_table()
    best = enumeration.regret_and_rank(table, [1, 0])
    assert best["regret"] == pytest.approx(0.0) and best["rank"] == 1
    first = enumeration.regret_and_rank(table, [0, 0])
    assert first["regret"] == pytest.approx(0.95 - 0.9) and first["rank"] == 2
    tied = [enumeration.regret_and_rank(table, c) for c in ([0, 1], [1, 1])]
    assert [t["rank"] for t in tied] == [3, 3]  # ties share the better rank
    assert tied[0]["regret"] == pytest.approx(0.25)
    # Lower is better (RMSE): the ranking and the regret's sign flip.
    lower = _hand_table(higher_is_better=False)
    assert enumeration.regret_and_rank(lower, [1, 1])["rank"] == 1
    assert enumeration.regret_and_rank(lower, [1, 1])["regret"] == pytest.approx(0.0)
    assert enumeration.regret_and_rank(lower, [0, 0])["rank"] == 3
    assert enumeration.regret_and_rank(lower, [0, 0])["regret"] == pytest.approx(0.9 - 0.7)
    worst = enumeration.regret_and_rank(lower, [1, 0])
    assert worst["rank"] == 4 and worst["regret"] == pytest.approx(0.95 - 0.7)
    with pytest.raises(ValueError, match="not a structure"):
        enumeration.regret_and_rank(table, [2, 0])


def test_table_round_trip(tmp_path):
    table = _hand_table()
    path = enumeration.save_table(table, tmp_path / "t.json")
    loaded = enumeration.load_enumeration_table("toy", "hand", path)
    assert loaded == json.loads(json.dumps(table))
    assert loaded["rows"][1]["test_std"] == pytest.approx(0.1)
    assert loaded["rows"][1]["ops"] == ["a", "b"]
    assert enumeration.load_enumeration_table("toy", "hand", tmp_path / "absent.json") is None


@pytest.mark.parametrize("space_name,dataset", [("mlp3", "digits"), ("conv1d3", "mnist1d"),
                                                ("tabular", "mnist1d")])
def test_committed_tables_are_complete(space_name, dataset):
    table = enumeration.load_enumeration_table(space_name, dataset)
    if table is None:
        pytest.skip(f"no committed table for {space_name} x {dataset}")
    assert table["num_structures"] == len(table["rows"]) == 125
    choices = {tuple(r["choice"]) for r in table["rows"]}
    assert len(choices) == 125
    assert table["command"].startswith("structsel enumerate")
    for r in table["rows"]:
        assert 0.0 <= r["test_mean"] <= 1.0 and r["params"] > 0
    # The best structure beats chance (10 classes) by far: the table is not noise.
    assert max(r["test_mean"] for r in table["rows"]) > 0.5


def test_table_lookup_answers_with_one_stored_seed():
    table = _hand_table()
    lookup = enumeration.TableLookup(table)
    choices = np.array([[0, 1]] * 4000 + [[1, 0]])
    rewards = lookup.reward(choices, key=jax.random.key(0))
    # structure [0, 1] has seeds (0.6, 0.8): every answer is one of them, each ~half the
    # time (binomial, n = 4000: 5 standard deviations = 0.04).
    assert set(np.round(rewards[:-1], 6)) == {0.6, 0.8}
    assert abs(np.mean(rewards[:-1] == 0.6) - 0.5) < 0.04
    assert rewards[-1] in (0.94, 0.96) and lookup.count == 4001
    # same key, same answers (reproducible); another key, other answers
    np.testing.assert_array_equal(lookup.reward(choices, key=jax.random.key(0)), rewards)
    assert not np.array_equal(lookup.reward(choices, key=jax.random.key(1)), rewards)
    # lower is better (RMSE): rewards are -metric, so larger is still better
    low = enumeration.TableLookup(_hand_table(higher_is_better=False))
    assert low.reward(np.array([[1, 1]]), key=jax.random.key(0))[0] == pytest.approx(-0.7)
    with pytest.raises(ValueError, match=r"choice \[2, 0\] is not a structure"):
        lookup.reward(np.array([[2, 0]]), key=jax.random.key(0))
    old = {**table, "rows": [{k: v for k, v in r.items() if k not in ("val", "test")}
                             for r in table["rows"]]}
    with pytest.raises(ValueError, match="no per-seed values"):
        enumeration.TableLookup(old)


def test_committed_tabular_table_matches_its_budget():
    from structsel.search import runner

    table = enumeration.load_enumeration_table("tabular", "digits")
    if table is None:
        pytest.skip("no committed table for tabular x digits")
    assert table["num_structures"] == len(table["rows"]) == 125 and table["num_seeds"] == 3
    assert len({tuple(r["choice"]) for r in table["rows"]}) == 125
    assert table["command"].startswith("structsel enumerate --space tabular --dataset digits")
    # trained as the default search on digits trains (budget "tabular", dropout 0.1 since
    # session 20's rebuild), so the search is scored like for like; a search at dropout 0
    # is reported as not matching; the early-stopping and schedule fields are recorded
    assert runner.table_matches(table, runner.BUDGETS["tabular"])
    assert table["settings"]["budget"]["dropout"] == runner.BUDGETS["tabular"].dropout > 0
    assert not runner.table_matches(table, runner.parse_budget("tabular,dropout=0"))
    assert not runner.table_matches(table, runner.BUDGETS["default"])
    assert table["settings"]["budget"]["eval_every"] > 0
    linear = next(r for r in table["rows"] if r["ops"] == ["identity"] * 3)
    assert linear["params"] == min(r["params"] for r in table["rows"])
    assert max(r["test_mean"] for r in table["rows"]) > 0.9
