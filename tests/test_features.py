"""Input-feature screening on tables (`structsel.search.features`) and its use by the search."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from structsel import cli
from structsel.search import features, runner, tabular


def test_relevance_is_the_row_norm_of_the_input_kernels():
    # oracle: the stem kernel (d, D) and the skip kernel (d, c) read by hand, two runs
    space = tabular.tabular_space(num_outputs=3, width=4)
    fam = space.family
    runs = [fam.init(jax.random.key(s), jnp.zeros((2, 6))) for s in (0, 1)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *runs)
    got = features.relevance(fam, stacked, 6)
    skip = [e for e, edge in enumerate(fam.edges) if edge.src == 0 and e != 0]
    assert skip == [len(fam.edges) - 2]
    want = np.mean([np.sqrt(np.sum(np.asarray(w[0][0]["dense"]["kernel"]) ** 2, axis=1)
                            + np.sum(np.asarray(w[skip[0]][0]["dense"]["kernel"]) ** 2, axis=1))
                    for w in runs], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 weights summed in float64
    # a single run (no leading axis) is its own mean; a family that reads no column by a
    # dense layer has no relevance
    np.testing.assert_allclose(features.relevance(fam, runs[0], 6),
                               np.sqrt(np.sum(np.asarray(runs[0][0][0]["dense"]["kernel"]) ** 2, 1)
                                       + np.sum(np.asarray(runs[0][skip[0]][0]["dense"]["kernel"])
                                                ** 2, 1)), rtol=1e-6)
    assert features.relevance(fam, runs[0], 5) is None


def test_otsu_split_minimises_the_within_group_variance():
    # oracle: Otsu's equivalence, max between-group variance = min of k var_upper +
    # (n - k) var_lower over the splits of the sorted values
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 20):
        for _ in range(20):
            v = rng.normal(size=n) * rng.choice([0.1, 1.0, 5.0], size=n)
            s = np.sort(v)[::-1]
            within = [k * s[:k].var() + (n - k) * s[k:].var() for k in range(1, n)]
            assert features.otsu_split(v) == 1 + int(np.argmin(within))
    with pytest.raises(ValueError, match="at least 2 values"):
        features.otsu_split([1.0])


def test_propose_returns_otsus_upper_group_when_it_is_apart():
    # the relevances measured on circles + 6 noise columns and synth_interaction (2 and 4
    # informative columns) against wine's gradual ones (docs/tables.md, session 21)
    circles = [1.73, 1.84, 0.70, 0.78, 0.92, 0.74, 0.85, 0.96]
    np.testing.assert_array_equal(features.propose(circles), [0, 1])
    inter = [1.73, 1.67, 1.0, 0.87] + [0.41, 0.43, 0.53, 0.44, 0.45, 0.44, 0.38, 0.42, 0.45,
                                       0.49, 0.36, 0.46, 0.36, 0.45, 0.39, 0.5]
    np.testing.assert_array_equal(features.propose(inter), [0, 1, 2, 3])
    # wine's gradual relevances: at the default separation 1 Otsu's upper group (the six
    # columns with r >= 1.0 against <= 0.9: 1.11 apart) is proposed, validation decides;
    # session 21's 1.5 proposed nothing
    wine = [1.01, 0.76, 0.73, 0.9, 0.79, 0.69, 1.0, 0.77, 0.83, 1.28, 1.01, 1.01, 1.35]
    np.testing.assert_array_equal(features.propose(wine), [0, 6, 9, 10, 11, 12])
    assert features.propose(wine, separation=1.5) is None
    assert features.SEPARATION == 1.0
    # the separation is the smallest kept over the largest dropped: 2 passes, 2.01 not
    np.testing.assert_array_equal(features.propose([3.0, 1.0, 2.0, 1.0], separation=2.0),
                                  [0, 2])
    assert features.propose([3.0, 1.0, 2.0, 1.0], separation=2.01) is None
    # relevances tied across Otsu's split propose nothing (nothing is above the rest)
    assert features.propose([1.0, 1.0, 1.0]) is None
    np.testing.assert_array_equal(features.propose([2.0, 1.0, 1.0]), [0])
    for bad in ([1.0], [1.0, np.nan], [1.0, 0.0], [[1.0, 2.0]]):
        assert features.propose(bad) is None
    with pytest.raises(ValueError, match="separation must be a number >= 1"):
        features.propose([2.0, 1.0], separation=0.5)


def test_univariate_pvalues_are_scikit_learns_f_tests():
    # oracle: sklearn.feature_selection.f_classif (ANOVA) / f_regression (correlation), in
    # float64 both; rtol 1e-9 (the same sums in another order, p down to ~1e-40). A
    # constant column: p = 1 here, NaN there (0 / 0); a column that separates the classes
    # perfectly: p = 0 (F = inf there too)
    import warnings
    from sklearn.feature_selection import f_classif, f_regression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 12))
    x[:, 3] = 2.5
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    x[:, 4] = y  # separates perfectly: zero within-class variance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the constant column
        want_c = f_classif(x, y)[1]
    got_c = features.univariate_pvalues(x, y, classification=True)
    assert got_c[3] == 1.0 and got_c[4] == 0.0 and np.isnan(want_c[3])
    keep = np.arange(12) != 3
    np.testing.assert_allclose(got_c[keep], want_c[keep], rtol=1e-9, atol=1e-300)
    yr = x[:, 0] * 2 + rng.normal(size=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_r = f_regression(x, yr)[1]
    got_r = features.univariate_pvalues(x, yr, classification=False)
    assert got_r[3] == 1.0
    np.testing.assert_allclose(got_r[keep], want_r[keep], rtol=1e-9, atol=1e-300)
    # a single class, or no more rows than classes: no test, p = 1
    np.testing.assert_array_equal(features.univariate_pvalues(x, np.zeros(150, int), True), 1.0)


def test_fdr_columns_are_scipys_benjamini_hochberg_rejections():
    # oracle: scipy.stats.false_discovery_control (BH-adjusted p-values) <= level
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(2)
    for _ in range(30):
        p = rng.uniform(size=int(rng.integers(1, 80))) ** rng.choice([1.0, 3.0, 8.0])
        for level in (0.01, 0.05, 0.2):
            want = np.flatnonzero(false_discovery_control(p) <= level)
            np.testing.assert_array_equal(features.fdr_columns(p, level), want)
    # the step-up rule by hand: the second smallest, 0.03 > 0.05 * 2 / 4, fails alone, but
    # the third, 0.036 <= 0.05 * 3 / 4, passes and keeps both
    np.testing.assert_array_equal(features.fdr_columns([0.001, 0.036, 0.03, 0.9]), [0, 1, 2])
    assert features.fdr_columns([0.5, 0.9]).size == 0


def test_the_univariate_proposal_finds_a_wide_tables_columns_and_declines_otherwise():
    # 300 columns, 360 rows, the label a function of columns 0-14 (as the session-32 wide
    # table: there the search's relevances did not single them out)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(360, 300))
    y = (x[:, :15] @ rng.uniform(0.5, 1.0, size=15) > 0).astype(int)
    kept = features.propose_univariate(x, y, classification=True)
    assert kept is not None and set(kept) <= set(range(300)) and len(kept) <= 30
    assert len(set(kept) & set(range(15))) >= 8  # most of the informative ones, few others
    # the filter on a fold: all columns when none passes; the proposal declines both that
    # and a group of more than half of the columns
    noise = rng.normal(size=(360, 20))
    label = rng.integers(0, 2, size=360)
    np.testing.assert_array_equal(features.univariate_columns(noise, label, True),
                                  np.arange(20))
    assert features.propose_univariate(noise, label, True) is None
    strong = noise + label[:, None]  # every column informative
    assert features.propose_univariate(strong, label, True) is None
    np.testing.assert_array_equal(
        features.propose_univariate(strong, label, True, max_fraction=1.0), np.arange(20))
    # an XOR's columns pass no univariate test (the relevance proposal is theirs)
    xor = (noise[:, 0] * noise[:, 1] > 0).astype(int)
    p = features.univariate_pvalues(noise, xor, True)
    assert not {0, 1} & set(features.fdr_columns(p))


def test_a_trial_replaces_the_held_model_by_metric_then_loss_strictly_or_by_loss():
    better = runner._is_better
    # the relevance trial (not strict): a better metric wins whatever the loss; a tie
    # goes to the lower loss; an unknown loss decides nothing
    assert better(0.01, 0.9, 0.5) and not better(-0.01, 0.1, 0.5)
    assert better(0.0, 0.4, 0.5) and not better(0.0, 0.5, 0.5) and not better(0.0, None, 0.5)
    # the univariate trial (strict): a metric at least as good and a lower loss; the
    # adult-like split 0 of session 32 (accuracy +0.014, loss 0.4828 against 0.4809) stays
    assert not better(0.014, 0.4828, 0.4809, strict=True)
    assert better(0.014, 0.4800, 0.4809, strict=True) and better(0.0, 0.4, 0.5, strict=True)
    assert not better(-0.01, 0.1, 0.5, strict=True)
    assert better(0.01, None, 0.5, strict=True)  # no loss known: the metric alone
    assert not better(0.0, None, None, strict=True)
    # the pieces (by loss): the loss alone; f38 split 0 of session 34 (one validation row
    # worse, loss 0.3194 against 0.3269) is kept, a better metric with a higher loss not
    assert better(-0.0005, 0.3194, 0.3269, by_loss=True)
    assert not better(0.01, 0.6922, 0.6195, by_loss=True)
    assert not better(0.0, 0.5, 0.5, by_loss=True)
    assert better(0.01, None, 0.5, by_loss=True) and not better(0.0, None, 0.5, by_loss=True)


def _noisy_xor_csv(path, n=240, noise_columns=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2 + noise_columns))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    header = ",".join([f"f{j}" for j in range(x.shape[1])] + ["label"])
    rows = [",".join([f"{v:.5f}" for v in row] + [str(t)]) for row, t in zip(x, y)]
    path.write_text("\n".join([header] + rows) + "\n")
    return path


def test_search_screens_the_columns_and_retrain_reads_them(tmp_path, monkeypatch, capsys):
    # the proposal is pinned to the two informative columns of a noisy XOR (the search's
    # relevances after a 4-step search are not what is tested here: propose is, above);
    # the retrain of the selection on them must beat all 12 columns on validation. darts1:
    # the point weights' relevance (the Bayesian methods' posterior mean runs in the
    # benchmark), and a faster compile than the KL path of bayes_inner
    monkeypatch.setattr(features, "propose", lambda r: np.array([0, 1]))
    data = _noisy_xor_csv(tmp_path / "xor.csv", n=200)
    workdir = tmp_path / "s"
    budget = "tiny,feature_screening=1,train_steps=300,retrain_seeds=2,ensemble=1,width=4"
    assert cli.main(["search", "--data", str(data), "--budget", budget, "--method", "darts1",
                     "--no-fallback", "--no-gradient-boosting", "--workdir", str(workdir),
                     "--no-progress"]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    fs = summary["features"]
    assert len(fs["relevance"]) == 12 and fs["proposed"] == [0, 1]
    assert fs["kept"] == [0, 1] and fs["subset"]["val_metric"] > fs["all"]["val_metric"]
    assert summary["val_metric"] == fs["subset"]["val_metric"] and fs["time_s"] > 0
    assert summary["test_metric"] == fs["subset"]["test_metric"]
    structure = json.loads((workdir / "structure.json").read_text())
    # params on 2 columns: 10 noise columns x (stem width 4 + the skip's outputs) fewer
    assert fs["all"]["params"] - summary["params"] == 10 * (4 + structure["num_outputs"])
    assert structure["features"] == [0, 1] and structure["num_features"] == 12
    assert "2 of 12 columns: [0, 1]" in capsys.readouterr().out
    assert cli.main(["retrain", "--structure", str(workdir / "structure.json"), "--data",
                     str(data), "--no-progress"]) == 0
    rerun = json.loads((workdir / "retrain" / "summary.json").read_text())
    assert rerun["features"] == [0, 1] and rerun["params"] == summary["params"]
    # another table with a different number of columns is refused, naming both
    other = _noisy_xor_csv(tmp_path / "other.csv", noise_columns=1)
    assert cli.main(["retrain", "--structure", str(workdir / "structure.json"), "--data",
                     str(other), "--no-progress"]) == 2
    assert "of 12 feature columns, the data has 3" in capsys.readouterr().err


def test_screening_is_off_outside_tables_and_records_why_nothing_was_retrained():
    from types import SimpleNamespace

    assert runner.parse_budget("tabular").feature_screening
    assert not runner.parse_budget("default").feature_screening
    assert not runner.parse_budget("tabular,feature_screening=0").feature_screening
    outcome = SimpleNamespace(extra={"input_relevance": [1.0, 1.0, 1.0]})
    call = lambda budget, out=outcome: runner._screen_features(  # noqa: E731
        None, out, None, SimpleNamespace(budget=runner.parse_budget(budget)), None,
        {"val_metric": 0.5}, evaluator=None)
    assert call("tabular,feature_screening=0") == {"val_metric": 0.5}
    assert call("tabular", SimpleNamespace(extra={})) == {"val_metric": 0.5}  # no relevance
    fs = call("tabular")["features"]  # tied relevances: nothing proposed, nothing trained
    assert fs["proposed"] is None and fs["kept"] == "all" and "no clearly separated" in fs["reason"]
    text = runner.format_summary({"dataset": "t", "features": fs})
    assert "all 3 columns (no clearly separated group)" in text
    tried = {**fs, "proposed": [0, 1], "proposals": [
        {"source": "relevance", "proposed": [0, 1]}, {"source": "univariate", "proposed": [2]}]}
    assert ("all 3 columns (proposed [0, 1] by the search's input relevances; [2] by "
            "univariate F tests: not better on validation)") in runner.format_summary(
                {"features": tried})
    kept = {**fs, "proposed": [0], "kept": [0]}
    assert "1 of 3 columns: [0]" in runner.format_summary({"features": kept})
    fallback = {"selected_val": 0.5, "selected_test": 0.5, "selected_params": 10}
    text = runner.format_summary({"features": kept, "fallback": fallback})
    assert "the returned linear model reads all" in text


def test_masked_columns_train_the_model_of_those_columns_in_all_columns_shapes():
    # `Evaluator(columns=)` trains a subset of the columns with the program of all of them:
    # the data's dropped columns are 0 (`mask_columns`), the input kernels' kept rows are
    # scaled to fan-in k and the dropped rows are 0 (`fan_in_rescale`).
    space = tabular.tabular_space(num_outputs=3, width=4)
    fam, d, kept = space.family, 6, np.array([1, 4])
    w = fam.init(jax.random.key(0), jnp.zeros((1, d)))
    mask = features.column_mask(kept, d)
    np.testing.assert_array_equal(mask, [0, 1, 0, 0, 1, 0])
    # a mask of ones changes nothing, bit for bit (the factor is exactly 1.0)
    same = features.fan_in_rescale(fam, w, features.column_mask(range(d), d))
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(w)):
        np.testing.assert_array_equal(a, b)
    scaled = features.fan_in_rescale(fam, w, mask)
    inputs = [e for e, edge in enumerate(fam.edges) if edge.src == 0]
    for e in inputs:  # closed form: kept rows x sqrt(d / k), dropped rows 0
        k0, k1 = (np.asarray(x[e][0]["dense"]["kernel"]) for x in (w, scaled))
        np.testing.assert_allclose(k1, k0 * (mask * np.sqrt(d / 2))[:, None], rtol=1e-6)
    for e in set(range(len(fam.edges))) - set(inputs):  # the other edges are untouched
        for a, b in zip(jax.tree.leaves(scaled[e]), jax.tree.leaves(w[e])):
            np.testing.assert_array_equal(a, b)
    # oracle: on masked data it is the 2-column model whose input kernels are the kept rows
    x = jax.random.normal(jax.random.key(1), (5, d))
    small = jax.tree.map(lambda a: a, scaled)
    small = tuple(tuple(jax.tree_util.tree_map_with_path(
        lambda p, a: a[kept] if str(getattr(p[-1], "key", "")) == "kernel" else a, op)
        for op in ops) if e in inputs else ops for e, ops in enumerate(small))
    choice = np.zeros(fam.num_edges, np.int32)
    np.testing.assert_allclose(fam.apply_vertex(scaled, choice, x * mask),
                               fam.apply_vertex(small, choice, x[:, kept]), rtol=1e-5,
                               atol=1e-6)  # float32 sums over 6 vs 2 terms (4 of them 0)


def test_a_subset_of_columns_reuses_the_all_column_program_and_reads_only_those_columns():
    # The subset's training (`Evaluator(columns=)`, what the screening runs) compiles
    # nothing new: the same cached, already traced program. Its models read only the kept
    # columns: other values in a dropped column leave every number unchanged (exactly:
    # those inputs are 0 and their kernel rows are 0 and get no gradient).
    from structsel.data import make_dataset

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    budget = runner.parse_budget("tabular,train_steps=40,warmup_steps=5,eval_every=10,"
                                 "width=4,retrain_width=0,dropout=0")
    problem = runner.make_problem(make_dataset(x, y, name="t"), "tabular", budget)
    ev = runner.Evaluator(problem)
    keys = jax.random.split(jax.random.key(0), 2)
    choices = np.array([[0, 0, 0], [1, 0, 2]], np.int32)
    ev(choices, keys, outputs=True)
    fn = ev._fn(True, runner.devices_lib.run_mesh(ev.size))
    misses, traced = runner._compiled_trainer.cache_info().misses, fn._cache_size()
    sub = ev(choices[:1], keys, outputs=True, columns=[0, 1], size=ev.size)
    assert runner._compiled_trainer.cache_info().misses == misses
    assert fn._cache_size() == traced
    noisy = problem.data._replace(**{
        k: np.concatenate([np.asarray(getattr(problem.data, k))[:, :2], rng.normal(
            size=(len(getattr(problem.data, k)), 3)).astype(np.float32)], axis=1)
        for k in ("x_train", "x_val", "x_test")})
    other = runner.Evaluator(problem._replace(data=noisy))(choices[:1], keys, outputs=True,
                                                           columns=[0, 1], size=ev.size)
    for k in sub:
        np.testing.assert_array_equal(sub[k], other[k])
    assert not np.array_equal(sub["val_out"], ev(choices[:1], keys, outputs=True)["val_out"])


# --- skewed columns: normal scores through the training quantiles -------------------------

def _skewed_splits(seed=0, n=200):
    from structsel.search import enumeration

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[:, 0] = np.exp(2 * x[:, 0])                      # lognormal: skewness ~ 6
    x[:, 1] = rng.random(n) < 0.1                      # two values: skewed, 2 distinct
    x[:, 3] = np.round(np.exp(1.5 * x[:, 3]), 1)       # ties, skewed, > 5 % distinct
    x = x.astype(np.float32)
    cut = (int(0.6 * n), int(0.8 * n))
    return x, enumeration.Splits(x[:cut[0]], None, x[cut[0]:cut[1]], None, x[cut[1]:], None)


def test_skewness_and_the_skewed_columns_against_scipy():
    from scipy import stats

    x, _ = _skewed_splits()
    np.testing.assert_allclose(features.skewness(x), stats.skew(x.astype(np.float64), axis=0),
                               rtol=1e-10, atol=1e-12)  # both float64 moments
    assert features.skewness(np.ones((5, 1)))[0] == 0.0
    # column 1 is skewed but has 2 distinct values (<= 5 % of the rows): levels, kept
    np.testing.assert_array_equal(features.skewed_columns(x, 1.0), [0, 3])
    np.testing.assert_array_equal(features.skewed_columns(x, 1.0, min_distinct=0.0), [0, 1, 3])
    assert features.skewed_columns(x, 100.0).size == 0


def test_quantile_normalise_gives_the_normal_scores_of_the_training_ranks():
    from scipy import stats
    from scipy.special import ndtri

    x, sp = _skewed_splits()
    q = features.quantile_normalise(sp, [0, 1, 3])
    train = x[:len(sp.x_train)].astype(np.float64)
    n = len(train)
    # no ties: the score of each training row is Phi^-1((rank + 1/2) / n), standardised
    z = ndtri((stats.rankdata(train[:, 0]) - 0.5) / n)
    np.testing.assert_allclose(q.x_train[:, 0], (z - z.mean()) / z.std(), atol=2e-6)  # f32
    # ties: each tied group gets the mean of its rows' scores (a loop by hand)
    v = np.sort(train[:, 3])
    s = ndtri((np.arange(n) + 0.5) / n)
    by_hand = np.array([s[v == t].mean() for t in train[:, 3]])
    np.testing.assert_allclose(q.x_train[:, 3], (by_hand - by_hand.mean()) / by_hand.std(),
                               atol=2e-6)
    # two values: exactly what standardisation gives them; untouched columns unchanged
    b = train[:, 1]
    np.testing.assert_allclose(q.x_train[:, 1], (b - b.mean()) / b.std(), atol=2e-6)
    np.testing.assert_array_equal(q.x_val[:, 2], sp.x_val[:, 2])
    # a monotone transform of a column changes nothing on the training rows; other rows
    # interpolate between the training values (monotone, clamped at the extreme scores)
    logged = sp._replace(**{k: np.log(getattr(sp, k)[:, :1]) for k in ("x_train", "x_val",
                                                                        "x_test")})
    np.testing.assert_allclose(features.quantile_normalise(logged, [0]).x_train[:, 0],
                               q.x_train[:, 0], atol=1e-6)
    order = np.argsort(sp.x_test[:, 0])
    assert np.all(np.diff(q.x_test[order, 0]) >= 0)
    assert q.x_test[:, 0].max() <= q.x_train[:, 0].max() + 1e-6
    assert q.x_test[:, 0].min() >= q.x_train[:, 0].min() - 1e-6


def test_tables_map_their_skewed_columns_for_the_networks_only(tmp_path, monkeypatch):
    from structsel.data import make_dataset
    from structsel.search import enumeration, retrain

    x, _ = _skewed_splits(n=240)
    y = (np.log(x[:, 0]) + x[:, 2] > 0).astype(np.int64)
    ds = make_dataset(x, y, name="t")
    b = runner.parse_budget("tabular")
    assert b.quantile_skew == 1.0 and runner.parse_budget("default").quantile_skew == 0.0
    for bad in ("-1", "inf"):
        with pytest.raises(ValueError, match="budget quantile_skew must be a finite number"):
            runner.parse_budget(f"tabular,quantile_skew={bad}")
    problem = runner.make_problem(ds, "tabular", b)
    assert problem.quantile_columns == (0, 3)
    raw = enumeration.splits_of(ds)
    expected = features.quantile_normalise(raw, [0, 3])
    for k in ("x_train", "x_val", "x_test"):
        np.testing.assert_array_equal(getattr(problem.data, k), getattr(expected, k))
    off = runner.make_problem(ds, "tabular", runner.parse_budget("tabular,quantile_skew=0"))
    assert off.quantile_columns == () and np.array_equal(off.data.x_train, raw.x_train)
    wine = runner.load_data(dataset="wine", data=None, target=None, task=None, split_seed=0,
                            budget=b)  # no column of wine is that skewed: unchanged
    assert runner.make_problem(wine, "tabular", b).quantile_columns == ()
    # end to end: recorded in summary.json and structure.json; retrain maps the same columns
    path = tmp_path / "skewed.csv"
    header = ",".join([f"x{j}" for j in range(4)] + ["y"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="",
               fmt="%.8g")
    workdir = tmp_path / "s"
    assert cli.main(["search", "--data", str(path), "--target", "y", "--method", "darts1",
                     "--budget", "tiny,quantile_skew=1,ensemble=1,retrain_seeds=2",
                     "--no-fallback", "--no-gradient-boosting", "--workdir", str(workdir),
                     "--no-progress"]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    structure = json.loads((workdir / "structure.json").read_text())
    assert summary["quantile_columns"] == structure["quantile_columns"] == [0, 3]
    calls = []
    real = features.quantile_normalise
    monkeypatch.setattr(features, "quantile_normalise",
                        lambda s, cols: calls.append(list(cols)) or real(s, cols))
    rerun = retrain.run_retrain(structure=str(workdir / "structure.json"), data=str(path),
                                target="y", seeds=2)
    assert calls == [[0, 3]] and rerun["params"] == summary["params"]


@pytest.mark.parametrize("keep", [True, False])
def test_piecewise_columns_trial_keeps_or_drops_them_consistently(keep, tmp_path, monkeypatch,
                                                                  capsys):
    # budget numeric_ple: after the selection, the returned model is retrained with the
    # pieces of its numbers. The rule itself is `_is_better` (tested above); here it is
    # forced either way, and what is written must then describe the model returned: its
    # columns, its parameter count, its encoding, and a retrain that rebuilds it
    rng = np.random.default_rng(1)
    n = 240
    x = np.c_[rng.uniform(-3, 3, n), rng.normal(size=(n, 2))]
    y = (np.sin(3 * x[:, 0]) + 0.3 * rng.normal(size=n) > 0).astype(int)
    rows = [",".join([f"{v:.5f}" for v in row] + [str(t)]) for row, t in zip(x, y)]
    data = tmp_path / "sine.csv"
    data.write_text("\n".join(["a,b,c,label"] + rows) + "\n")
    forced = []
    monkeypatch.setattr(runner, "_is_better", lambda *a, **k: forced.append(a) or keep)
    workdir = tmp_path / "s"
    budget = "tiny,train_steps=60,retrain_seeds=2,ensemble=1,width=4,numeric_ple=5"
    assert cli.main(["search", "--data", str(data), "--budget", budget, "--method", "darts1",
                     "--no-fallback", "--no-gradient-boosting", "--workdir", str(workdir),
                     "--no-progress"]) == 0
    assert len(forced) == 1  # the pieces' trial alone (no screening in this budget)
    summary = json.loads((workdir / "summary.json").read_text())
    structure = json.loads((workdir / "structure.json").read_text())
    pieces = summary["pieces"]
    assert pieces["kept"] is keep and pieces["bins"] == 5 and pieces["num_features"] == 18
    assert pieces["proposed"] == list(range(18)) and pieces["time_s"] > 0
    out = capsys.readouterr().out
    assert ("kept: 15 piecewise-linear columns of 3 numbers" if keep else "not kept") in out
    if keep:
        assert summary["val_metric"] == pieces["subset"]["val_metric"]
        assert summary["params"] == pieces["subset"]["params"]
        assert structure["features"] == list(range(18)) and structure["num_features"] == 18
        assert [len(c["ple"]) for c in structure["encoding"]["columns"]] == [6, 6, 6]
        assert summary["encoding"] == structure["encoding"]
        assert summary["feature_names"][:2] == ["a", "a (piece 1 of 5)"]
    else:
        assert summary["val_metric"] != pieces["subset"]["val_metric"]
        assert "encoding" not in structure and "features" not in structure
        assert summary["feature_names"] == ["a", "b", "c"]
    # the same structure; its stem (width 4) and linear skip (2 outputs) read 15 more columns
    assert pieces["subset"]["choice"] == pieces["held"]["choice"]
    assert pieces["subset"]["params"] - pieces["held"]["params"] == 15 * (4 + 2)
    assert cli.main(["retrain", "--structure", str(workdir / "structure.json"), "--data",
                     str(data), "--no-progress"]) == 0
    rerun = json.loads((workdir / "retrain" / "summary.json").read_text())
    assert rerun["params"] == summary["params"]
