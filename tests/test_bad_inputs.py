"""Bad-input catalogue (issue 13; docs/errors.md).

Every case states its input, the exception type (CLI: exit status 2) and the words its
message must hold: the offending argument, column or file and, where the list is short,
the allowed values. CLI cases run in-process through `structsel.cli.main` with compilation
patched to fail, so each error is raised before anything is compiled; stderr holds one
`structsel: error: ...` line (argparse errors: its usage and one error line) and never a
traceback. The SUPPORTED cases are inputs that work, with what is checked about them.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import structsel as ss
from structsel import basis, bilevel, cli, data, distributions as dist, objective as obj
from structsel import structure as st
from structsel.family import Edge, Family, darts_cell, discrete_model, export_structure
from structsel.search import retrain, runner, spaces

LIN = basis.linear(2)
X = jnp.ones((4, 3))
KEY = jax.random.key(0)
NAN, INF = float("nan"), float("inf")
TWO_OPS = Family(2, (Edge(0, 1, (LIN, basis.dense(2, "tanh"))),))


def _objective(likelihood="categorical", **kw):
    return obj.Objective(TWO_OPS, likelihood, relaxation=st.Softmax(),
                         coefficients=obj.darts(), weights="point", **kw)


def _loss(likelihood, y):
    o = _objective(likelihood)
    params, hparams = o.init(KEY, X)
    return o.inner_loss(params, hparams, (X, y), obj.Context.create(KEY))


def _apply_with_features(n):
    """Weights initialised on 3 features applied to n features."""
    return TWO_OPS.apply(TWO_OPS.init(KEY, X), TWO_OPS.ones_gamma(), jnp.ones((4, n)))


def _coefficients(*c):
    return obj.Objective(TWO_OPS, "gaussian", coefficients=obj.Coefficients(*c))


# (id, call, exception, words the message must contain)
API = [
    # --- graphs
    ("cycle", lambda: Family(3, (Edge(0, 1, (LIN,)), Edge(2, 1, (LIN,)), Edge(1, 2, (LIN,)))),
     ValueError, ["edge 1 (2->1)", "src < dst", "cycle"]),
    ("self-loop", lambda: Family(2, (Edge(1, 1, (LIN,)),)), ValueError, ["edge 0 (1->1)", "cycle"]),
    ("vertex without incoming edge", lambda: Family(3, (Edge(0, 2, (LIN,)),)),
     ValueError, ["vertex 1", "no incoming edge"]),
    ("dangling vertex (no outgoing edge)",
     lambda: Family(3, (Edge(0, 1, (LIN,)), Edge(0, 2, (LIN,)))),
     ValueError, ["vertex 1", "no outgoing edge", "output vertex 2"]),
    ("vertex out of range", lambda: Family(3, (Edge(0, 1, (LIN,)), Edge(1, 5, (LIN,)))),
     ValueError, ["edge 1 (1->5)", "0..2"]),
    ("duplicate edge", lambda: Family(2, (Edge(0, 1, (LIN,)), Edge(0, 1, (LIN,)))),
     ValueError, ["edge 1 (0->1)", "duplicated"]),
    ("edge without ops", lambda: Edge(0, 1, ()), ValueError, ["Edge(0, 1)", "non-empty"]),
    ("op given by name", lambda: Edge(0, 1, ("dense",)), ValueError, ["Edge(0, 1)", "BasisSpec"]),
    ("num_vertices 1", lambda: Family(1, ()), ValueError, ["num_vertices", ">= 2"]),
    ("unknown aggregation", lambda: Family(2, (Edge(0, 1, (LIN,)),), "max"),
     ValueError, ["aggregation of vertex 1", "['concat', 'mean', 'sum']", "'max'"]),
    ("aggregation count", lambda: Family(3, (Edge(0, 1, (LIN,)), Edge(1, 2, (LIN,))), ("sum",)),
     ValueError, ["aggregation", "2 entries", "got 1"]),
    ("ops of an edge with different output shapes",
     lambda: Family(2, (Edge(0, 1, (basis.linear(2), basis.linear(3))),)).init(KEY, X),
     ValueError, ["edge 0 (0->1)", "different output shapes"]),
    ("sum of mismatched shapes",
     lambda: Family(3, (Edge(0, 1, (basis.linear(2),)), Edge(0, 2, (basis.linear(3),)),
                        Edge(1, 2, (basis.linear(2),)))).init(KEY, X),
     ValueError, ["vertex 2", "aggregation 'sum'"]),
    ("mismatched op count in gamma", lambda: TWO_OPS.apply(TWO_OPS.init(KEY, X), (jnp.ones(3),), X),
     ValueError, ["gamma[0]", "shape (3,)", "expected (2,)"]),
    ("gamma for too many edges",
     lambda: TWO_OPS.apply(TWO_OPS.init(KEY, X), (jnp.ones(2), jnp.ones(2)), X),
     ValueError, ["gamma", "one array per edge (1)", "got 2"]),
    ("vertex indices of the wrong length", lambda: TWO_OPS.vertex_gamma((0, 1)),
     ValueError, ["indices", "one entry per edge (1)"]),
    ("choice out of range", lambda: TWO_OPS.apply_vertex(TWO_OPS.init(KEY, X), jnp.array([7]), X),
     ValueError, ["choice[0] = 7", "0..1"]),
    ("float choice", lambda: TWO_OPS.apply_vertex(TWO_OPS.init(KEY, X), jnp.array([1.0]), X),
     ValueError, ["choice", "integer"]),
    ("readout smaller than the number of classes", lambda: _loss("categorical", jnp.array([0, 1, 4, 2])),
     ValueError, ["labels y", "0..1", "readout has 2 outputs"]),
    ("readout of the wrong size for the regression target", lambda: _loss("gaussian", jnp.ones(4)),
     ValueError, ["target y of shape (4,)", "output of shape (4, 2)", "readout"]),
    ("unknown op in a structure", lambda: discrete_model(TWO_OPS, {
        "format": "structsel.structure/1", "num_vertices": 2, "aggregation": ["sum"],
        "edges": [{"edge": 0, "src": 0, "dst": 1,
                   "ops": [{"index": 0, "spec": {"name": "magic", "kwargs": {}}}]}]}),
     ValueError, ["unknown basis function 'magic'", "'dense'"]),
    ("structure op index out of range", lambda: discrete_model(TWO_OPS, {
        "format": "structsel.structure/1", "num_vertices": 2, "aggregation": ["sum"],
        "edges": [{"edge": 0, "src": 0, "dst": 1, "ops": [{"index": 5, "spec": LIN.to_dict()}]}]}),
     ValueError, ["op index 5", "2 ops"]),
    ("export of a non-binary gamma", lambda: export_structure(TWO_OPS, (jnp.array([0.3, 0.7]),)),
     ValueError, ["gamma[0]", "not binary"]),
    ("darts cell without intermediates", lambda: darts_cell(0, (LIN,)),
     ValueError, ["num_intermediate", ">= 1"]),
    ("darts cell unknown output", lambda: darts_cell(1, (LIN,), output="max"),
     ValueError, ["output must be one of", "'concat'"]),
    ("unknown activation", lambda: basis.dense(3, "swishy"),
     ValueError, ["activation must be one of", "'relu'", "'swishy'"]),
    ("width 0", lambda: basis.dense(0, "relu"), ValueError, ["features", "positive int"]),
    # --- shapes and dtypes
    ("gamma with NaN", lambda: TWO_OPS.apply(TWO_OPS.init(KEY, X), (jnp.array([NAN, 1.0]),), X),
     ValueError, ["gamma[0] must be finite"]),
    ("x with more features than the weights", lambda: _apply_with_features(5),
     ValueError, ["weights of edge 0", "(4, 5)", "another number of features"]),
    ("x with fewer features than in_features", lambda: Family(2, (Edge(0, 1, (
        basis.dense(2, "tanh", in_features=3),)),)).validate(jnp.ones((4, 2))),
     ValueError, ["edge 0 (0->1)", "input has 2 features", "in_features=3"]),
    ("float labels", lambda: _loss("categorical", jnp.array([0.0, 1.0, 1.0, 0.0])),
     ValueError, ["labels y", "integer", "float32"]),
    ("labels of the wrong shape", lambda: _loss("categorical", jnp.zeros((4, 1), jnp.int32)),
     ValueError, ["labels y of shape (4, 1)", "(4, 2)"]),
    ("make_dataset 3-D features", lambda: data.make_dataset(np.ones((30, 2, 2)), np.arange(30.0),
                                                            name="t"),
     data.DataError, ["features", "2-D", "(30, 2, 2)"]),
    ("make_dataset target length", lambda: data.make_dataset(np.ones((30, 2)), np.arange(29.0),
                                                             name="t"),
     data.DataError, ["target", "one value per row (30)"]),
    ("make_dataset unknown task", lambda: data.make_dataset(np.eye(30), np.arange(30) % 2, name="t",
                                                            task="ranking"),
     data.DataError, ["task must be one of", "'classification', 'regression'"]),
    # --- temperatures, concentrations, scales
    ("GS temperature 0", lambda: dist.gumbel_softmax(jnp.zeros(3), 0.0),
     ValueError, ["temperature", "> 0"]),
    ("GS temperature NaN", lambda: dist.gumbel_softmax(jnp.zeros(3), NAN), ValueError, ["temperature"]),
    ("GS temperature inf", lambda: dist.gumbel_softmax(jnp.zeros(3), INF),
     ValueError, ["temperature", "finite"]),
    ("GS relaxation mean at temperature inf", lambda: st.GumbelSoftmax().mean(jnp.zeros(3), INF),
     ValueError, ["temperature", "finite"]),
    ("Dirichlet relaxation temperature -1",
     lambda: st.Dirichlet().sample(jnp.zeros(3), -1.0, key=KEY), ValueError, ["temperature", "> 0"]),
    ("logit-normal relaxation temperature inf",
     lambda: st.LogitNormal().sample(jnp.zeros(4), INF, key=KEY), ValueError, ["temperature", "finite"]),
    ("GS logits NaN", lambda: dist.gumbel_softmax(jnp.array([0.0, NAN]), 1.0),
     ValueError, ["logits", "finite"]),
    ("one-op simplex", lambda: dist.gumbel_softmax(jnp.zeros(1), 1.0), ValueError, ["logits", "K >= 2"]),
    ("Dirichlet concentration 0", lambda: dist.dirichlet(jnp.array([1.0, 0.0]), 1.0),
     ValueError, ["concentration", "> 0"]),
    ("Dirichlet concentration NaN", lambda: dist.dirichlet(jnp.array([1.0, NAN]), 1.0),
     ValueError, ["concentration"]),
    ("Dirichlet concentration inf", lambda: dist.dirichlet(jnp.array([1.0, INF]), 1.0),
     ValueError, ["concentration", "finite"]),
    ("logit-normal scale negative", lambda: dist.logit_normal(jnp.zeros(2), -jnp.ones(2)),
     ValueError, ["scale", "> 0"]),
    ("logit-normal scale inf", lambda: dist.logit_normal(jnp.zeros(2), jnp.array([1.0, INF])),
     ValueError, ["scale", "finite"]),
    ("logit-normal loc inf", lambda: dist.logit_normal(jnp.array([0.0, INF]), jnp.ones(2)),
     ValueError, ["loc", "finite"]),
    ("logit-normal shapes", lambda: dist.logit_normal(jnp.zeros(2), jnp.ones(3)),
     ValueError, ["loc and scale", "same shape"]),
    ("Monte Carlo KL without key", lambda: dist.kl_divergence(
        dist.gumbel_softmax(jnp.zeros(3), 1.0), dist.gumbel_softmax(jnp.ones(3), 1.0)),
     ValueError, ["key is required"]),
    ("threshold above 1", lambda: st.threshold_vertex(jnp.ones(3), 1.5), ValueError, ["threshold", "[0, 1]"]),
    ("threshold NaN", lambda: st.threshold_vertex(jnp.ones(3), NAN), ValueError, ["threshold", "[0, 1]"]),
    ("top-k with k 0", lambda: st.darts_topk(((0, 1),), (jnp.ones(2),), k=0), ValueError, ["k", ">= 1"]),
    ("schedule temperature -1", lambda: bilevel.constant(-1.0), ValueError, ["t must be", "> 0"]),
    ("schedule temperature inf", lambda: bilevel.exponential(1.0, INF, 10), ValueError, ["t1", "finite"]),
    # --- lambda values and strategy names
    ("lambda_lik negative", lambda: _coefficients(-1.0, 1.0, 1.0),
     ValueError, ["coefficients.lik_q", ">= 0"]),
    ("lambda_prior^L NaN", lambda: _coefficients(1.0, 1.0, NAN), ValueError, ["coefficients.prior_l", "finite"]),
    ("lambda_prior^Q inf", lambda: _coefficients(1.0, INF, 1.0), ValueError, ["coefficients.prior_q", "finite"]),
    ("KL weight c negative", lambda: obj.Objective(TWO_OPS, "gaussian", coefficients=obj.single_level(-0.1)),
     ValueError, ["coefficients.prior_q", ">= 0"]),
    ("lambda_struct without references", lambda: _coefficients(1.0, 1.0, 1.0, (0.5,)),
     ValueError, ["coefficients.struct", "one lambda_struct per reference (0)"]),
    ("coefficient rows of different lengths", lambda: obj.coefficient_batch(
        [obj.Coefficients(1.0, 1.0, 1.0, (1.0,)), obj.Coefficients(1.0, 1.0, 1.0)]),
     ValueError, ["lambda_struct"]),
    ("noise_std 0", lambda: obj.Objective(TWO_OPS, "gaussian", noise_std=0.0), ValueError, ["noise_std", "> 0"]),
    ("inv_gamma negative", lambda: obj.Objective(TWO_OPS, "gaussian", inv_gamma=(-1.0, 0.0)),
     ValueError, ["inv_gamma", ">= 0"]),
    ("num_samples 0", lambda: obj.Objective(TWO_OPS, "gaussian", num_samples=0),
     ValueError, ["num_samples", "positive int"]),
    ("unknown likelihood", lambda: obj.Objective(TWO_OPS, "poisson"),
     ValueError, ["likelihood must be one of", "('gaussian', 'categorical')", "'poisson'"]),
    ("unknown weight model", lambda: obj.Objective(TWO_OPS, "gaussian", weights="laplace"),
     ValueError, ["weights must be one of", "('gaussian', 'point')"]),
    ("relaxation given by name", lambda: obj.Objective(TWO_OPS, "gaussian", relaxation="gumbel"),
     ValueError, ["relaxation must be", "GumbelSoftmax"]),
    ("unknown hypergradient method", lambda: ss.get_method("newton"),
     ValueError, ["method must be one of", "'cg'", "'newton'"]),
    ("unknown hypergradient option", lambda: ss.get_method("cg", tolerance=1e-3),
     ValueError, ["unknown option(s) ['tolerance']", "valid options"]),
    # --- search configuration (the CLI's arguments as a library call)
    ("budget unknown override", lambda: runner.parse_budget("small,nonsense=3"),
     ValueError, ["budget override", "'nonsense=3'", "'search_steps'", "'width'"]),
    ("budget search_steps=0", lambda: runner.parse_budget("small,search_steps=0"),
     ValueError, ["budget search_steps", ">= 1"]),
    ("budget width=-1", lambda: runner.parse_budget("small,width=-1"), ValueError, ["budget width", ">= 1"]),
    ("budget width=2.5", lambda: runner.parse_budget("small,width=2.5"),
     ValueError, ["budget width must be an int", "'2.5'"]),
    ("budget learning_rate=inf", lambda: runner.parse_budget("tiny,learning_rate=inf"),
     ValueError, ["budget learning_rate", "finite number > 0"]),
    ("budget weight_decay=nan", lambda: runner.parse_budget("tiny,weight_decay=nan"),
     ValueError, ["budget weight_decay", ">= 0"]),
    ("budget schedule", lambda: runner.parse_budget("tiny,schedule=linear"),
     ValueError, ["budget schedule must be one of", "'cosine'"]),
    ("unknown budget", lambda: runner.parse_budget("huge"),
     ValueError, ["budget must start with one of", "'tiny'", "'huge'"]),
    ("unknown space", lambda: spaces.build_space("resnet", num_outputs=2, width=4),
     ValueError, ["space must be one of", "'mlp3'", "'resnet'"]),
    ("space width -1", lambda: spaces.build_space("mlp3", num_outputs=2, width=-1),
     ValueError, ["width must be an int >= 1"]),
    ("unknown method", lambda: runner.search_config(method="magic"),
     ValueError, ["method must be one of", "'bayes'", "'magic'"]),
    ("unknown relaxation", lambda: runner.search_config(relaxation="gumbel"),
     ValueError, ["relaxation must be one of", "'gumbel_softmax'"]),
    ("negative seed", lambda: runner.search_config(seed=-1), ValueError, ["seed must be an int >= 0"]),
    ("KL weight inf", lambda: runner.search_config(kl_weights="1,inf"),
     ValueError, ["kl_weights", "finite numbers > 0", "'inf'"]),
    ("budget retrain_width=-1", lambda: runner.parse_budget("tabular,retrain_width=-1"),
     ValueError, ["budget retrain_width", ">= 0"]),
    ("budget dropout=1", lambda: runner.parse_budget("tabular,dropout=1"),
     ValueError, ["budget dropout", "[0, 1)", "1.0"]),
    ("dropout outside tabular", lambda: runner.search_config(space="mlp3",
                                                              budget="tiny,dropout=0.2"),
     ValueError, ["dropout applies to the space 'tabular' only", "'mlp3'"]),
    ("checkpoint_every=-1", lambda: runner.search_config(checkpoint_every=-1),
     ValueError, ["checkpoint_every must be an int >= 0", "-1"]),
    ("checkpoint a black-box method", lambda: runner.search_config(method="random",
                                                                    checkpoint_every=5),
     ValueError, ["checkpoint_every applies to the gradient methods", "'random'"]),
    ("devices=0", lambda: runner.search_config(devices=0),
     ValueError, ["devices must be 'all' or an int >= 1", "0"]),
    ("devices beyond the machine", lambda: runner.data_mesh(10_000),
     ValueError, ["devices must be 'all' or an int in 1..", "10000"]),
]


@pytest.mark.parametrize("call,exc,words", [pytest.param(*c[1:], id=c[0]) for c in API])
def test_api_rejects_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, message


# --- experiment configs ----------------------------------------------------------------------

def _config(module, **kw):
    import importlib
    return lambda: importlib.import_module(f"experiments.{module}").Config(**kw)


EXPERIMENTS = [
    ("two_layer_digits method", _config("two_layer_digits", method="adam"),
     ["method must be one of", "'adam'"]),
    ("two_layer_digits log_every", _config("two_layer_digits", log_every=7),
     ["log_every must divide outer_steps (300)"]),
    ("two_layer_digits activations", _config("two_layer_digits", activations=("tanh", "swish")),
     ["activations must be 2 names", "'relu'"]),
    ("hypergradients methods", _config("hypergradients", methods=("magic",)),
     ["methods must be a non-empty subset", "'cg'"]),
    ("hypergradients reference", _config("hypergradients", methods=("cg",), reference="exact"),
     ["reference must be one of methods", "('cg',)"]),
    ("vae_ard steps 0", _config("vae_ard", steps=0), ["steps must be an int >= 1"]),
    ("vae_ard learning_rate negative", _config("vae_ard", learning_rate=-1.0),
     ["learning_rate must be >= 0"]),
    ("glm_toy temperature negative", _config("glm_toy", temperatures=(0.2, -1.0)),
     ["temperatures must be a non-empty tuple of finite numbers > 0"]),
    ("glm_toy lr inf", _config("glm_toy", lr=INF), ["lr must be a finite number > 0"]),
    ("glm_toy negative lambda", _config("glm_toy", settings=((1.0, -1.0, 1.0),)),
     ["settings", "lambda_prior^Q", ">= 0"]),
    ("glm_toy restarts 0", _config("glm_toy", restarts=0), ["restarts must be an int >= 1"]),
    ("simplex_densities temperature inf", _config("simplex_densities", temperatures=(0.1, INF)),
     ["temperatures must be finite numbers > 0"]),
    ("simplex_densities temperature 0", _config("simplex_densities", temperatures=(0.0,)),
     ["temperatures must be finite numbers > 0"]),
    ("simplex_densities concentration", _config("simplex_densities", s=(0.5, 0.5, 0.0)),
     ["s must hold 3 finite positive numbers"]),
]


@pytest.mark.parametrize("call,words", [pytest.param(*c[1:], id=c[0]) for c in EXPERIMENTS])
def test_experiment_config_rejects_bad_values(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value), str(info.value)


def test_experiment_unknown_set_field_exits_2(tmp_path, capsys):
    from experiments import common, glm_toy

    with pytest.raises(SystemExit) as info:
        common.parse(glm_toy.Config, ["--set", "nonsense=1", "--workdir", str(tmp_path / "w")],
                     name="glm_toy")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "'nonsense=1'" in err and "'temperatures'" in err
    assert not (tmp_path / "w").exists()


def test_experiment_bad_set_value_exits_2(tmp_path, capsys):
    """A --set value that the config's own checks refuse: one error line, no traceback."""
    from experiments import common, simplex_densities

    with pytest.raises(SystemExit) as info:
        common.parse(simplex_densities.Config, ["--set", "temperatures=[-1]", "--workdir",
                                                str(tmp_path / "w")], name="simplex_densities")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "error: temperatures must be finite numbers > 0; got (-1,)" in err
    assert not (tmp_path / "w").exists()


# --- data files and the CLI ---------------------------------------------------------------

def _rows(n=30, sep=","):
    rng = np.random.default_rng(0)
    return "\n".join(sep.join([f"{a:.3f}", f"{b:.3f}", str(c)]) for a, b, c in
                     zip(rng.normal(size=n), rng.normal(size=n), rng.integers(0, 2, n)))


def _csv(text, name="d.csv"):
    """A builder: tmp_path -> path of a file holding `text` (bytes written as they are)."""
    def make(tmp):
        path = tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)
    return make


def _npz(name="d.npz", **arrays):
    def make(tmp):
        np.savez(tmp / name, **arrays)
        return str(tmp / name)
    return make


GOOD = "a,b,label\n" + _rows()

# (id, data file builder, extra arguments, words of the message)
DATA = [
    ("empty file", _csv(""), [], ["d.csv", "header row and at least one data row"]),
    ("header only", _csv("a,b,label\n"), [], ["d.csv", "header row and at least one data row"]),
    ("one row", _csv("a,b,label\n1,2,0\n"), [], ["target: the last column", "too few rows"]),
    ("one class", _csv("a,b,label\n" + "\n".join(f"{i},{i % 3},1" for i in range(30))),
     ["--task", "classification"],
     ["at least 2 classes", "constant"]),
    ("constant regression target", _csv("a,b,y\n" + "\n".join(f"{i},{i % 3},1.5" for i in range(30))),
     [], ["target: the last column", "constant", "1.5"]),
    ("inf feature", _csv(GOOD + "\n0.1,inf,1"), [], ["feature column(s) ['b']", "line 32"]),
    ("missing value in a typed column", _csv(GOOD + "\n,high,1"), [],
     ["line 32", "column 'b' is not numeric", "30 of its 31 values are numbers"]),
    # in a comma-separated file a decimal comma is ambiguous (';'-separated: read, test_data)
    ("decimal comma", _csv("a,b,label\n" + "\n".join(f'"{i},5",{i % 3},{i % 2}' for i in range(30))),
     [], ["line 2", "column 'a' is not numeric", "'0,5'", "decimal comma"]),
    ("NaN target", _csv(GOOD + "\n0.1,0.2,nan"), [], ["the target column", "no value on 1 row",
                                                    "'nan'"]),
    ("inf target", _csv("a,b,y\n" + _rows() + "\n0.1,0.2,inf"), ["--target", "y"],
     ["target: column 'y'", "NaN or inf"]),
    ("string in a numeric column", _csv(GOOD + "\n0.1,high,1"), [], ["line 32", "column 'b' is not numeric"]),
    ("duplicate column names", _csv("a,a,label\n" + _rows()), [], ["column names must be unique", "['a']"]),
    ("target column also a feature", _csv("label,b,label\n" + _rows()), ["--target", "label"],
     ["column names must be unique", "['label']"]),
    ("unknown target column", _csv(GOOD), ["--target", "klass"],
     ["unknown target column 'klass'", "['a', 'b', 'label']"]),
    ("text target as regression", _csv("a,b,label\n" + "\n".join(f"{i},{i % 3},{'gh'[i % 2]}"
                                                                   for i in range(30))),
     ["--task", "regression"], ["regression needs a numeric target"]),
    ("empty text label", _csv("a,b,label\n1,2,g\n3,4,\n" + _rows().replace(",0\n", ",h\n")), [],
     ["line 3", "target column 'label' has no value"]),
    ("ragged row", _csv(GOOD + "\n1,2"), [], ["line 32 has 2 fields, header has 3"]),
    ("blank line in the middle", _csv(GOOD.replace("\n", "\n\n", 1)), [],
     ["line 2 has 0 fields, header has 3"]),
    ("one column only", _csv("label\n" + "\n".join(str(i % 2) for i in range(30))), [],
     ["at least one feature column", "[',', ';', '\\t', '|']"]),
    ("not UTF-8", _csv(("a,b,label\n" + _rows() + "\n1,2,\xe9").encode("latin-1")), [],
     ["d.csv", "not UTF-8"]),
    ("npz without x and y", _npz(a=np.ones(3)), [], ["d.npz", "'x' and 'y'", "['a']"]),
    ("corrupted npz", _csv(b"PK not a zip", name="d.npz"), [], ["d.npz", "cannot read it as an .npz"]),
    ("npz with text features", _npz(x=np.array([["a"]] * 30), y=np.arange(30) % 2), [],
     ["features must be numeric", "<U1"]),
    ("npz rows differ", _npz(x=np.ones((30, 2)), y=np.arange(29) % 2), [],
     ["target must have one value per row (30)"]),
    ("other extension", _csv("a,b\n1,2\n", name="d.json"), [],
     [".csv (also .tsv, .txt", "or .npz", "d.json"]),
    ("missing file", lambda tmp: str(tmp / "nope.csv"), [], ["data file not found", "nope.csv"]),
    ("directory instead of a file", lambda tmp: str(tmp), [], ["is a directory", ".csv or .npz"]),
]


def _no_compile(monkeypatch):
    """Make any compilation of the CLI's programs fail the test."""
    def compiled(*args, **kwargs):
        raise AssertionError("a program was compiled before the error")
    monkeypatch.setattr(jax, "jit", compiled)
    monkeypatch.setattr(runner, "_compiled_trainer", compiled)
    monkeypatch.setattr(retrain, "train_discrete", compiled)


def _cli_error(argv, capsys, monkeypatch) -> str:
    """Runs the CLI, asserts exit status 2, no traceback and one error line; returns it."""
    _no_compile(monkeypatch)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse: usage line(s) and one error line
        code = exit_.code
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[0].startswith("usage:"), lines
    else:
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
    assert code == 2
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-1].startswith("structsel") and "error: " in lines[-1], lines
    return lines[-1]


@pytest.mark.parametrize("make,extra,words", [pytest.param(*c[1:], id=c[0]) for c in DATA])
def test_search_rejects_bad_data(make, extra, words, tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "run"
    line = _cli_error(["search", "--data", make(tmp_path), *extra, "--budget", "tiny",
                       "--workdir", str(workdir), "--no-progress"], capsys, monkeypatch)
    for word in words:
        assert word in line, line
    assert not workdir.exists()  # nothing was started


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads a file without read permission")
def test_search_rejects_an_unreadable_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_text(GOOD)
    path.chmod(0)
    try:
        line = _cli_error(["search", "--data", str(path), "--workdir", str(tmp_path / "w")],
                          capsys, monkeypatch)
    finally:
        path.chmod(0o644)
    assert "d.csv" in line and "cannot read the data file" in line


def test_search_rejects_a_file_the_os_refuses(tmp_path, capsys, monkeypatch):
    """The same error when opening is refused, simulated (runs as root too)."""
    path = tmp_path / "d.csv"
    path.write_text(GOOD)

    def refuse(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(data, "open", refuse, raising=False)  # shadows the builtin in data
    line = _cli_error(["search", "--data", str(path), "--workdir", str(tmp_path / "w")],
                      capsys, monkeypatch)
    assert "d.csv: cannot read the data file (Permission denied)" in line


ARGS = [
    ("unknown method", ["search", "--method", "magic"], ["method must be one of", "'bayes'"]),
    ("unknown relaxation", ["search", "--relaxation", "gumbel"],
     ["relaxation must be one of", "'gumbel_softmax'", "'dirichlet'"]),
    ("relaxation of a black-box method", ["search", "--method", "random", "--relaxation", "dirichlet"],
     ["--relaxation", "gradient methods only"]),
    ("unknown space", ["search", "--space", "resnet"], ["space must be one of", "'mlp3'"]),
    ("unknown dataset", ["search", "--dataset", "cifar"], ["dataset must be one of", "'digits'"]),
    ("data and dataset", ["search", "--data", "d.csv", "--dataset", "wine"],
     ["either --data FILE or --dataset NAME"]),
    ("target without data", ["search", "--target", "y"], ["--target applies to --data files only"]),
    ("unknown budget", ["search", "--budget", "huge"], ["budget must start with one of", "'small'"]),
    ("budget unknown override", ["search", "--budget", "small,nonsense=3"],
     ["budget override", "'nonsense=3'", "'search_steps'"]),
    ("budget search_steps=0", ["search", "--budget", "small,search_steps=0"],
     ["budget search_steps must be an int >= 1"]),
    ("budget width=-1", ["search", "--budget", "small,width=-1"], ["budget width must be an int >= 1"]),
    ("budget learning_rate=nan", ["search", "--budget", "tiny,learning_rate=nan"],
     ["budget learning_rate", "finite number > 0"]),
    ("budget batching", ["search", "--budget", "tiny,batching=pmap"],
     ["budget batching must be one of", "('auto', 'vmap', 'map')"]),
    ("KL weight negative", ["search", "--kl-weight", "1,-0.1"], ["kl_weights", "> 0", "'-0.1'"]),
    ("KL weight NaN", ["search", "--kl-weight", "nan"], ["kl_weights", "finite"]),
    ("KL weight of a point-weight method", ["search", "--method", "darts1", "--kl-weight", "1"],
     ["kl_weights applies to the Bayesian methods", "bayes_outer"]),
    ("task of an embedded dataset", ["search", "--dataset", "wine", "--task", "regression"],
     ["task of the embedded dataset wine is classification"]),
    ("seeds 0 (argparse)", ["search", "--seeds", "0"], ["--seeds", "integer >= 1"]),
    ("seed -1 (argparse)", ["search", "--seed", "-1"], ["--seed", "integer >= 0"]),
    ("unknown task (argparse)", ["search", "--task", "ranking"],
     ["--task", "'classification', 'regression'"]),
    ("no subcommand (argparse)", [], ["COMMAND"]),
    ("enumerate unknown space", ["enumerate", "--space", "resnet", "--dataset", "wine"],
     ["space must be one of", "'mlp3'"]),
    ("enumerate unknown dataset", ["enumerate", "--space", "mlp1", "--dataset", "cifar"],
     ["dataset must be one of", "'digits'"]),
    ("enumerate budget width=0", ["enumerate", "--space", "mlp1", "--dataset", "wine",
                                  "--budget", "tiny,width=0"], ["budget width must be an int >= 1"]),
    ("enumerate a space too large", ["enumerate", "--space", "mlp6", "--dataset", "wine",
                                     "--budget", "tiny"], ["mlp6", "15625 structures", "4096"]),
    ("enumerate without --space (argparse)", ["enumerate", "--dataset", "wine"], ["--space"]),
    ("sweep unknown target", ["sweep", "nonsense", "--grid", "a=1"],
     ["target must be one of", "'glm_toy'"]),
    ("sweep unknown grid key", ["sweep", "glm_toy", "--grid", "nonsense=1,2"],
     ["unknown grid key 'nonsense'", "temperature"]),
    ("sweep grid without values", ["sweep", "glm_toy", "--grid", "temperature"],
     ["--grid expects key=v1,v2", "'temperature'"]),
    ("sweep negative temperature", ["sweep", "glm_toy", "--grid", "temperature=-1,1"],
     ["temperature", "finite number > 0", "'-1'"]),
    ("sweep lr inf", ["sweep", "glm_toy", "--grid", "lr=inf"], ["lr", "finite number > 0"]),
    ("sweep negative lambda", ["sweep", "glm_toy", "--grid", "prior_q=-1"], ["prior_q", ">= 0"]),
    ("sweep devices 0", ["sweep", "glm_toy", "--grid", "temperature=1", "--devices", "0"],
     ["devices must be 'all' or an int >= 1"]),
]


@pytest.mark.parametrize("argv,words", [pytest.param(*c[1:], id=c[0]) for c in ARGS])
def test_cli_rejects_bad_arguments(argv, words, tmp_path, capsys, monkeypatch):
    argv = list(argv)
    if argv and argv[0] in ("search", "sweep"):
        argv += ["--workdir", str(tmp_path / "w"), "--no-progress"]
    if argv and argv[0] == "enumerate":
        argv += ["--out", str(tmp_path / "table.json"), "--no-progress"]
    line = _cli_error(argv, capsys, monkeypatch)
    for word in words:
        assert word in line, line
    assert not (tmp_path / "w").exists() and not (tmp_path / "table.json").exists()


@pytest.mark.parametrize("argv", [
    pytest.param(["search", "--dataset", "wine", "--workdir", "{file}"], id="search workdir is a file"),
    pytest.param(["search", "--dataset", "wine", "--workdir", "{file}/run"], id="workdir under a file"),
    pytest.param(["retrain", "--structure", "s.json", "--workdir", "{file}"], id="retrain workdir"),
    pytest.param(["sweep", "glm_toy", "--grid", "lr=0.1", "--workdir", "{file}"], id="sweep workdir"),
    pytest.param(["enumerate", "--space", "mlp1", "--dataset", "wine", "--out", "{file}/t.json"],
                 id="enumerate out under a file"),
])
def test_cli_rejects_a_file_in_place_of_an_output_folder(argv, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    argv = [a.replace("{file}", str(tmp_path / "file")) for a in argv]
    line = _cli_error(argv, capsys, monkeypatch)
    assert f"{tmp_path / 'file'} is a file, not a directory" in line
    assert ("--out" if "--out" in argv else "--workdir") in line


def test_enumerate_out_is_a_directory(tmp_path, capsys, monkeypatch):
    line = _cli_error(["enumerate", "--space", "mlp1", "--dataset", "wine", "--out", str(tmp_path)],
                      capsys, monkeypatch)
    assert "out" in line and "is a directory" in line


def _structure(**changes):
    """A structure.json of the mlp1 space (the linear op kept) for breast_cancer, edited."""
    record = {**spaces.build_space("mlp1", num_outputs=2, width=4).export([2]),
              "dataset": "breast_cancer", "task": "classification", "width": 4, "num_outputs": 2}
    return {**json.loads(json.dumps(record)), **changes}


def _edit_op(key, value):
    record = _structure()
    op = record["edges"][1]["ops"][0]
    if key == "name":
        op["spec"]["name"] = value
    elif value is None:
        del op[key]
    else:
        op[key] = value
    return record


# (id, content of the structure file (str: written as is), words of the message)
RETRAIN = [
    ("corrupted JSON", '{"space": "mlp1", ', ["structure.json", "not valid JSON", "line 1"]),
    ("JSON list", "[1, 2]", ["structure.json", "JSON object", "list"]),
    ("another space (conv1d3)", _structure(space="conv1d3"),
     ["does not fit its space 'conv1d3'", "another space", "conv1d"]),
    ("another space (mlp3)", _structure(space="mlp3"), ["does not fit its space 'mlp3'"]),
    ("unknown space", _structure(space="resnet"), ["space must be one of", "'mlp3'", "'resnet'"]),
    ("unknown op", _edit_op("name", "magic"), ["unknown basis function 'magic'", "'dense'"]),
    ("op without spec", _edit_op("spec", None), ["edges[1].ops[0]", "'spec'"]),
    ("op index out of range", _edit_op("index", 9), ["op index 9", "5 ops"]),
    ("no edges", {k: v for k, v in _structure().items() if k != "edges"},
     ["not a structure.json", "'edges'"]),
    ("width not an int", _structure(width="abc"), ["'width' must be an int >= 1", "'abc'"]),
    ("width -1", _structure(width=-1), ["'width' must be an int >= 1", "-1"]),
    ("outputs differ from the data", _structure(num_outputs=3),
     ["built for 3 outputs", "the data needs 2"]),
    ("classes of another data set", _structure(classes=["a", "b"]),
     ["label 0 is not one of the model's classes", "['a', 'b']"]),
    ("split seed not an int", _structure(split={"seed": "x"}), ["'split'", "'seed' is an int >= 0"]),
]


@pytest.mark.parametrize("content,words", [pytest.param(*c[1:], id=c[0]) for c in RETRAIN])
def test_retrain_rejects_bad_structure_files(content, words, tmp_path, capsys, monkeypatch):
    path = tmp_path / "structure.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    line = _cli_error(["retrain", "--structure", str(path), "--seeds", "1", "--budget", "tiny",
                       "--workdir", str(tmp_path / "w"), "--no-progress"], capsys, monkeypatch)
    for word in words:
        assert word in line, line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_retrain_structure_path_errors(where, tmp_path, capsys, monkeypatch):
    path = tmp_path / "structure.json" if where == "missing" else tmp_path
    line = _cli_error(["retrain", "--structure", str(path)], capsys, monkeypatch)
    assert str(path) in line
    assert ("not found" if where == "missing" else "is a directory") in line


# --- SUPPORTED inputs -----------------------------------------------------------------------

def _same_table(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


@pytest.mark.parametrize("text,kw", [
    pytest.param(GOOD.replace(",", ";"), {}, id="semicolon-separated"),
    pytest.param(GOOD.replace(",", "\t"), {}, id="tab-separated"),
    pytest.param("\ufeff" + GOOD, {"target": "label"}, id="UTF-8 with a byte-order mark"),
    pytest.param(GOOD + "\n\n \n", {}, id="blank lines at the end"),
])
def test_supported_csv_dialects_read_as_the_comma_file(text, kw, tmp_path):
    """SUPPORTED: ';', tab or '|' when the header row holds more of them than commas; a
    byte-order mark is skipped (the first column keeps its name); blank lines at the end
    are ignored (one in the middle is a row with the wrong number of fields)."""
    (tmp_path / "comma.csv").write_text(GOOD)
    (tmp_path / "other.csv").write_text(text, encoding="utf-8")
    _same_table(data.read_table(tmp_path / "other.csv", **kw),
                data.read_table(tmp_path / "comma.csv", **kw))


def test_supported_bom_before_a_first_target_column(tmp_path):
    """SUPPORTED: the BOM does not hide the name of the first column."""
    (tmp_path / "bom.csv").write_text("\ufefflabel,a\n" + "\n".join(f"{i % 2},{i % 7}"
                                                                     for i in range(30)),
                                      encoding="utf-8")
    ds = data.load_table(tmp_path / "bom.csv", target="label")
    assert ds.num_classes == 2 and ds.num_features == 1


def test_supported_constant_column_is_standardised_to_zero(tmp_path):
    """SUPPORTED: a constant feature column (std 0) is centred, not divided by zero."""
    rows = "\n".join(f"{v:.3f},7,{c}" for v, c in zip(np.linspace(-1, 1, 30), [0, 1] * 15))
    (tmp_path / "c.csv").write_text("a,const,label\n" + rows)
    ds = data.load_table(tmp_path / "c.csv")
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert np.all(np.isfinite(x)) and np.all(x[:, 1] == 0.0)


def test_supported_text_target_maps_to_sorted_classes(tmp_path):
    """SUPPORTED: a categorical target given as strings becomes classes 0..C-1 in sorted order."""
    labels = ["setosa", "virginica", "versicolor"] * 10
    rows = "\n".join(f"{i * 0.1:.1f},{c}" for i, c in enumerate(labels))
    (tmp_path / "t.csv").write_text("a,species\n" + rows)
    ds = data.load_table(tmp_path / "t.csv")
    assert ds.classes == ("setosa", "versicolor", "virginica") and ds.num_classes == 3
    assert set(np.concatenate([ds.y_train, ds.y_val, ds.y_test]).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("dtype", [np.int32, np.float16])
def test_supported_integer_and_float16_arrays(dtype, tmp_path):
    """SUPPORTED: integer / float16 features of an .npz are read as float (float32 after
    standardisation); integer and float16 inputs of a Family give float32 outputs and a
    finite objective (float16 x: float16 variables, as `Objective.init` documents)."""
    x = np.random.default_rng(0).integers(-3, 4, (30, 3)).astype(dtype)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 2)
    ds = data.load_table(tmp_path / "d.npz")
    assert ds.x_train.dtype == np.float32 and np.all(np.isfinite(ds.x_train))
    xj = jnp.asarray(x)
    out = jax.jit(TWO_OPS.apply)(TWO_OPS.init(KEY, xj), TWO_OPS.ones_gamma(), xj)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    o = _objective("categorical")
    params, hparams = o.init(KEY, xj)
    assert jax.tree.leaves(params)[0].dtype == (jnp.float16 if dtype == np.float16 else jnp.float32)
    loss = jax.jit(o.inner_loss)(params, hparams, (xj, jnp.arange(30) % 2), obj.Context.create(KEY))
    assert bool(jnp.isfinite(loss))


def test_supported_path_with_spaces_and_the_file_is_read_once(tmp_path, monkeypatch, capsys):
    """SUPPORTED: a data file under a directory whose name has spaces. The search reads the
    file once (a counter on the reader, not a timing) and hands the Dataset on: the run is
    stopped where the search starts (`make_problem`), since no later step takes a path."""
    folder = tmp_path / "my data dir"
    folder.mkdir()
    (folder / "my table.csv").write_text("a,b,label\n" + _rows(60))
    calls, seen = [], []
    read = data._read_cells
    monkeypatch.setattr(data, "_read_cells", lambda *a, **k: calls.append(a) or read(*a, **k))

    class Started(Exception):
        pass

    def make_problem(ds, *args, **kwargs):
        seen.append(ds)
        raise Started

    monkeypatch.setattr(runner, "make_problem", make_problem)
    with pytest.raises(Started):
        cli.main(["search", "--data", str(folder / "my table.csv"), "--budget", "tiny",
                  "--workdir", str(folder / "run dir"), "--no-progress"])
    assert [str(a[0]) for a in calls] == [str(folder / "my table.csv")]
    assert seen[0].name == "my table" and seen[0].split["train"] == 36
    assert "Traceback" not in capsys.readouterr().err
