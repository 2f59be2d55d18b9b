"""Datasets: splits, standardisation, error paths."""
import numpy as np
import pytest

from structsel import data


def test_digits_split_and_standardise():
    ds = data.load_sklearn("digits", seed=3)
    n = len(ds.y_train) + len(ds.y_val) + len(ds.y_test)
    assert n == 1797 and ds.num_classes == 10 and ds.task == "classification"
    # Training statistics are exactly standardised (constant pixels stay 0).
    assert np.allclose(ds.x_train.mean(0), 0, atol=1e-5)
    std = ds.x_train.std(0)
    assert np.all((np.abs(std - 1) < 1e-4) | (std == 0))
    again = data.load_sklearn("digits", seed=3)
    assert np.array_equal(again.x_val, ds.x_val)  # same seed, same split
    other = data.load_sklearn("digits", seed=4)
    assert not np.array_equal(other.x_val, ds.x_val)


def test_regression_target_scale():
    ds = data.load_sklearn("diabetes", seed=0)
    mean, std = ds.target_scale
    assert ds.task == "regression" and ds.num_classes == 0
    assert abs(ds.y_train.mean()) < 1e-5 and 100 < mean < 200 and std > 10


def test_glm_toy_matches_thesis_setup():
    x, y = data.glm_toy(seed=0)
    assert x.shape == (50, 12) and np.all(x[:, -1] == 1.0)
    # y = tanh(x_0) + 0.5 eps: the residual has std close to 0.5 (50 samples: +-0.15).
    assert abs(np.std(y - np.tanh(x[:, 0])) - 0.5) < 0.15


def _write(path, text):
    path.write_text(text)
    return path


def test_csv_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{rng.normal()},{rng.normal()},{i % 2}" for i in range(40)]
    ds = data.load_table(_write(tmp_path / "t.csv", "\n".join(rows)), target="label")
    assert ds.task == "classification" and ds.num_features == 2 and ds.num_classes == 2


@pytest.mark.parametrize("text,target,match", [
    ("a,b\n1,2\n", "c", "unknown target column 'c'"),
    ("a,b\n1,x\n2,3\n", "b", "column 'b' is not numeric"),
    ("a,b\n1,\n2,3\n3,0\n", "a", "NaN"),
])
def test_csv_errors(tmp_path, text, target, match):
    with pytest.raises(data.DataError, match=match):
        data.load_table(_write(tmp_path / "bad.csv", text), target=target)


def test_other_errors(tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        data.load_table(tmp_path / "missing.csv")
    with pytest.raises(data.DataError, match="at least 2 classes"):
        data.make_dataset(np.ones((30, 2)), np.zeros(30), name="x", task="classification")
    with pytest.raises(data.DataError, match="too few rows"):
        data.make_dataset(np.ones((5, 2)), np.arange(5.0), name="x")
    with pytest.raises(data.DataError, match="dataset must be one of"):
        data.load("cifar")
