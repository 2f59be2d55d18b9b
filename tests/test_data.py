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
    ("a,b\n1,x\n2,3\n", "a", "column 'b' is not numeric"),  # a text *target* is labels
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


def test_text_labels_map_to_sorted_integers(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["h", "g", "h", "b"] * 10
    rows = ["a,b,class"] + [f"{rng.normal()},{rng.normal()},{c}" for c in labels]
    ds = data.load_table(_write(tmp_path / "t.csv", "\n".join(rows)), target="class")
    assert ds.task == "classification" and ds.num_classes == 3
    assert ds.classes == ("b", "g", "h")  # class i is classes[i]: sorted order
    x, y, _ = data.read_table(tmp_path / "t.csv", target="class")
    all_codes = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    assert sorted(all_codes.tolist()) == sorted({"b": 0, "g": 1, "h": 2}[c] for c in labels)
    # A model's mapping is applied as given: same codes, and labels it lacks are refused.
    again = data.make_dataset(x, y, name="t", classes=["b", "g", "h", "z"])
    np.testing.assert_array_equal(again.y_val, ds.y_val)
    assert again.num_classes == 4 and again.classes == ("b", "g", "h", "z")
    with pytest.raises(data.DataError, match="label 'h' is not one of the model's classes"):
        data.make_dataset(x, y, name="t", classes=["b", "g"])
    with pytest.raises(data.DataError, match="regression needs a numeric target"):
        data.make_dataset(x, y, name="t", task="regression")


def test_numeric_labels_record_their_classes():
    x = np.random.default_rng(0).normal(size=(40, 2))
    ds = data.make_dataset(x, np.array([3, 7] * 20), name="n")
    assert ds.classes == (3, 7) and set(ds.y_train.tolist()) <= {0, 1}
    assert data.make_dataset(x, np.arange(40.0) * 0.37, name="r").classes is None
    assert data.load_sklearn("wine").classes == (0, 1, 2)


def test_text_label_errors(tmp_path):
    with pytest.raises(data.DataError, match="line 3, target column 'c' is empty"):
        data.load_table(_write(tmp_path / "e.csv", "a,c\n1,g\n2,\n3,h\n"), target="c")
    with pytest.raises(data.DataError, match="column 'a' is not numeric"):
        data.load_table(_write(tmp_path / "f.csv", "a,c\n1,g\nx,h\n3,h\n"), target="c")
