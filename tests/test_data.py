"""Datasets: splits, standardisation, error paths."""
import numpy as np
import pytest

from structsel import cells as cell_lib
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
    ("a,b\n1,inf\n2,3\n3,0\n", "a", "column\\(s\\) \\['b'\\] contain inf \\(first at line 2\\)"),
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
    with pytest.raises(data.DataError, match="target column 'c' has no value on 1 row.*line 3"):
        data.load_table(_write(tmp_path / "e.csv", "a,c\n1,g\n2,\n3,h\n"), target="c")
    with pytest.raises(data.DataError, match="column 'a' is not numeric"):
        data.load_table(_write(tmp_path / "f.csv", "a,c\n1,g\nx,h\n3,h\n"), target="c")


def _mixed_cells(n=240, seed=0):
    """(cells as a CSV reader gives them, names, training rows): a numeric column with
    missing values on and off the training rows, one with missing values only off them, a
    text column with rare categories and a missing marker, a two-valued text column, an
    identifier, and a category seen only off the training rows."""
    rng = np.random.default_rng(seed)
    train, val, test = data.split_indices(n, seed=seed)
    a = rng.normal(size=n).round(3).astype(str).astype(object)
    a[train[:9]] = ""
    a[val[:3]] = "NA"
    b = rng.normal(size=n).round(3).astype(str).astype(object)
    b[test[:4]] = "?"
    colour = rng.choice(["red", "green", "blue", "teal"], size=n, p=[.4, .3, .2, .1]).astype(object)
    colour[train[:2]] = ["mauve", "ochre"]  # rare on the training rows: pooled as other
    colour[train[2:6]] = "n/a"  # a missing marker: its own category ''
    colour[test[0]] = "never-seen"
    sex = rng.choice(["F", "M"], size=n).astype(object)
    ident = np.array([f"id{i}" for i in range(n)], dtype=object)
    cells = np.stack([a, b, colour, sex, ident], axis=1)
    return cells, ["a", "b", "colour", "sex", "id"], train


def test_encoding_matches_scikit_learn_imputer_and_one_hot():
    """Oracle: scikit-learn fitted on the same training rows. SimpleImputer(median,
    add_indicator) for the numbers (an indicator only where training rows miss the value),
    OneHotEncoder(min_frequency=2, handle_unknown='infrequent_if_exist') for the text
    column (rare and unseen categories share the infrequent column) and drop='if_binary'
    for the two-valued one. Exact equality: both are 0/1 columns and medians of the same
    numbers."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    cells, names, train = _mixed_cells()
    encoding = data.fit_encoding(cells, names, train, source="t.csv")
    x, out_names = data.apply_encoding(cells, names, encoding, source="t.csv")

    def numbers(col):
        return np.array([np.nan if v.strip().lower() in cell_lib.MISSING else float(v) for v in col])

    nums = np.stack([numbers(cells[:, 0]), numbers(cells[:, 1])], axis=1)
    imputer = SimpleImputer(strategy="median", add_indicator=True).fit(nums[train])
    imputed = imputer.transform(nums)  # a, b, then the indicator of a (b misses none in train)
    text = np.array([["" if v.lower() in cell_lib.MISSING else v] for v in cells[:, 2]])
    onehot = OneHotEncoder(min_frequency=2, handle_unknown="infrequent_if_exist",
                           sparse_output=False).fit(text[train])
    binary = OneHotEncoder(drop="if_binary", sparse_output=False).fit(cells[train][:, 3:4])
    expected = np.concatenate([imputed[:, :1], imputed[:, 2:3], imputed[:, 1:2],
                               onehot.transform(text), binary.transform(cells[:, 3:4])], axis=1)
    np.testing.assert_array_equal(x, expected)
    assert out_names == ["a", "a (missing)", "b", "colour=(missing)", "colour=blue",
                         "colour=green", "colour=red", "colour=teal", "colour=(other)", "sex=M"]
    assert encoding["columns"][1] == {"name": "b", "kind": "numeric",
                                      "fill": float(np.median(nums[train, 1])), "indicator": False}
    assert encoding["columns"][4]["kind"] == "dropped" and "identifier" in \
        encoding["columns"][4]["reason"]
    # the row with a category never seen in training is in the 'other' column only
    row = int(np.nonzero(cells[:, 2] == "never-seen")[0][0])
    assert x[row, 3:9].tolist() == [0, 0, 0, 0, 0, 1]


def test_encoding_is_a_json_record_applied_to_another_file(tmp_path):
    """load_table fits the encoding on the split's training rows; the JSON round trip of
    the record applied to a file with the same columns gives the same feature columns, an
    unseen category of a column without 'other' is all zeros, and a file that does not fit
    the record raises DataError naming the column."""
    import json

    cells, names, _ = _mixed_cells()
    y = (np.arange(len(cells)) % 2).astype(str)
    lines = [",".join(names + ["label"])] + [",".join([*r, t]) for r, t in zip(cells, y)]
    path = _write(tmp_path / "m.csv", "\n".join(lines))
    ds = data.load_table(path)
    assert ds.num_features == 10 and ds.feature_names[-1] == "sex=M"
    # the 0/1 columns are centred, not scaled; the numbers are standardised
    ind = data.indicator_columns(ds.encoding)
    assert [ds.feature_names[j] for j in ind] == [
        n for n in ds.feature_names if "=" in n or n.endswith("(missing)")]
    np.testing.assert_allclose(np.ptp(ds.x_train[:, ind], axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(ds.x_train.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(ds.x_train[:, [0, 2]].std(0), 1.0, atol=1e-5)
    x, _, _ = data.read_table(path)  # the cells: numbers as float, text, '' for a gap
    assert x.dtype == object and x[int(np.nonzero(cells[:, 2] == "n/a")[0][0]), 2] == ""
    assert np.isnan(x[int(np.nonzero(cells[:, 0] == "")[0][0]), 0])
    record = json.loads(json.dumps(ds.encoding))
    again = data.load_table(path, encoding=record, seed=0)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    other = cells.copy()
    other[:, 3] = "X"  # a value of the two-valued column that the model never saw: 0
    xs, _ = data.apply_encoding(other, names, record, source="o.csv")
    assert np.all(xs[:, 9] == 0)
    with pytest.raises(data.DataError, match=r"feature columns \['a', 'b'\] are not"):
        data.apply_encoding(cells[:, :2], names[:2], record, source="o.csv")
    gaps = cells.copy()
    gaps[5, 1] = ""
    record["columns"][1] = {"name": "b", "kind": "numeric"}  # trained without gaps in b
    with pytest.raises(data.DataError, match=r"column 'b' has missing values \(first at line 7\)"):
        data.apply_encoding(gaps, names, record, source="o.csv")
    bad = cells.copy()
    bad[3, 0] = "high"
    with pytest.raises(data.DataError, match="line 5, column 'a' is not numeric"):
        data.apply_encoding(bad, names, record, source="o.csv")


def test_numeric_tables_are_read_as_before(tmp_path):
    """A table of numbers without gaps has no encoding: the features are the columns."""
    rows = ["a,b,label"] + [f"{i * 0.1},{(i * 7) % 5},{i % 2}" for i in range(30)]
    ds = data.load_table(_write(tmp_path / "n.csv", "\n".join(rows)))
    x, _, names = data.read_table(tmp_path / "n.csv")
    assert ds.encoding is None and ds.feature_names == ("a", "b") and x.dtype == np.float64
    tr, _, _ = data.split_indices(30, seed=0)
    np.testing.assert_allclose(ds.x_train, ((x - x[tr].mean(0)) / x[tr].std(0))[tr], atol=1e-6)


def test_npz_missing_values_are_filled_like_a_csv(tmp_path):
    """NaN in an .npz's x is a missing value: the training median plus an indicator."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2))
    x[[3, 7, 20], 1] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 2)
    ds = data.load_table(tmp_path / "d.npz")
    tr, _, _ = data.split_indices(50, seed=0)
    col = ds.encoding["columns"][1]
    assert col["fill"] == float(np.nanmedian(x[tr, 1]))
    assert col["indicator"] == bool(np.isnan(x[tr, 1]).any())
    assert ds.feature_names[:2] == ("x0", "x1") and np.isfinite(ds.x_train).all()


def test_codes_mixing_numbers_and_text_are_a_text_column(tmp_path):
    """Tickets or postcodes (mostly numbers, several text values) are text categories; a
    column of numbers with one repeated text value (an unknown missing marker) is an
    error that says how to write a missing value."""
    tickets = ["113803", "PC 17599", "A/5 21171", "113803", "STON/O2 3101282", "373450"] * 10
    rows = ["ticket,a,label"] + [f"{t},{i * 0.1},{i % 2}" for i, t in enumerate(tickets)]
    ds = data.load_table(_write(tmp_path / "t.csv", "\n".join(rows)))
    column = ds.encoding["columns"][0]
    assert column["kind"] == "categorical" and set(column["categories"]) == set(tickets)
    rows = ["a,b,label"] + [f"{'unknown' if i % 7 == 0 else i * 0.1},{i % 3},{i % 2}"
                            for i in range(40)]
    with pytest.raises(data.DataError, match="line 2, column 'a' is not numeric \\('unknown'; "
                                             "34 of its 40 values are numbers; write a missing"):
        data.load_table(_write(tmp_path / "u.csv", "\n".join(rows)))


@pytest.mark.parametrize("text, value, formats", [
    ("$1,200.50", 1200.5, ("currency", "thousands")),
    ("-$5", -5.0, ("currency",)),
    ("$-5", -5.0, ("currency",)),
    ("1,234.5 \u20ac", 1234.5, ("currency", "thousands")),
    ("\u00a3300", 300.0, ("currency",)),
    ("12.5%", 12.5, ("percent",)),
    ("-3 %", -3.0, ("percent",)),
    ("1,234,567", 1234567.0, ("thousands",)),
    ("2020-03-01", 18322.0, ("date",)),              # numpy: datetime64 days since 1970
    ("1969-12-31T18:00", -0.25, ("date",)),
    ("2020-03-01 12:00:30", 18322 + 43230 / 86400, ("date",)),
])
def test_numbers_written_with_units_are_read(text, value, formats):
    got, units, _ = cell_lib.parse_number(text)
    assert got == pytest.approx(value, rel=1e-15) and units == formats
    if "date" in formats:  # an independent oracle: numpy's calendar
        stamp = np.datetime64(text.replace(" ", "T"), "s").astype(np.int64)
        assert got == pytest.approx(stamp / 86400, rel=1e-15)


@pytest.mark.parametrize("text", ["6,621", "\u20ac3,5", "2020-02-30", "2020-03-01T25:00",
                                  "+ 5", "1.5.2", "(12)", "$5%", "--5", "A1", "12,34"])
def test_cells_that_are_not_unambiguous_numbers_stay_text(text):
    assert cell_lib.parse_number(text) == (None, (), False)


def test_percent_currency_dates_and_thousands_columns(tmp_path):
    rows = [("12.5%", "$1,200.00", "2020-03-01", "1,234,567", "none", "g"),
            ("3%", "$15", "2021-01-31", "12", "a", "h"),
            ("", "$2,000.10", "2019-12-31", "7", "b", "g")] * 8
    text = "rate,price,day,count,grade,y\n" + "\n".join(",".join(
        f'"{v}"' if "," in v else v for v in r) for r in rows) + "\n"
    ds = data.load_table(_write(tmp_path / "u.csv", text), target="y", seed=0)
    cols = {c["name"]: c for c in ds.encoding["columns"]}
    assert cols["rate"]["formats"] == ["percent"] and "fill" in cols["rate"]
    assert cols["price"]["formats"] == ["currency", "thousands"]
    assert cols["day"]["formats"] == ["date"]
    assert cols["count"]["formats"] == ["thousands"] and cols["grade"]["kind"] == "categorical"
    labels = dict(data.describe_encoding(ds.encoding))
    assert "price (currency, thousands)" in labels["numbers read"]
    assert "days since 1970-01-01" in labels["numbers read"]
    x, names = data.apply_encoding(np.array(rows, dtype=object)[:, :5],
                                   list(cols), ds.encoding, source="u.csv")
    day = np.array(["2020-03-01", "2021-01-31", "2019-12-31"] * 8, dtype="datetime64[D]")
    np.testing.assert_array_equal(x[:, names.index("day")], day.astype(np.int64))
    np.testing.assert_array_equal(x[:, names.index("price")], [1200.0, 15.0, 2000.1] * 8)
    np.testing.assert_array_equal(x[:, names.index("count")], [1234567.0, 12.0, 7.0] * 8)
    # '6,621' reads as 6621 where the column groups thousands unambiguously elsewhere
    # ('1,234,567'); next to '1,000' and '12' alone it could be a decimal comma: an error
    grouped = "a,y\n" + "".join(f'"{v}",{i % 2}\n' for i, v in
                               enumerate(["6,621", "1,234,567", "12"] * 8))
    ds = data.load_table(_write(tmp_path / "g.csv", grouped), target="y", seed=0)
    assert ds.encoding["columns"][0]["formats"] == ["thousands"]
    ambiguous = "a,y\n" + "".join(f'"{v}",{i % 2}\n' for i, v in
                                 enumerate(["6,621", "1,000", "12"] * 8))
    with pytest.raises(data.DataError, match="a decimal comma or a thousands separator"):
        data.load_table(_write(tmp_path / "a.csv", ambiguous), target="y", seed=0)


def test_targets_with_gaps_units_and_a_none_class(tmp_path):
    body = "".join(f"{i % 7},{v}\n" for i, v in enumerate(["1.5", "NA", "2.5", "3"] * 6))
    with pytest.raises(data.DataError, match="no value on 6 row.*line 3: 'NA'"):
        data.load_table(_write(tmp_path / "n.csv", "a,y\n" + body), target="y")
    prices = "".join(f"{i % 7},\"${100 * i:,}\"\n" for i in range(30))
    ds = data.load_table(_write(tmp_path / "p.csv", "a,y\n" + prices), target="y",
                         task="regression")
    assert ds.task == "regression"
    labels = "".join(f"{i % 7},{v}\n" for i, v in enumerate(["none", "mild", "severe"] * 8))
    ds = data.load_table(_write(tmp_path / "c.csv", "a,y\n" + labels), target="y")
    assert ds.classes == ("mild", "none", "severe")


def test_index_columns_are_dropped(tmp_path):
    # pandas' to_csv writes its index as an unnamed first column; in a file sorted by the
    # label, that row number would predict the label on the test rows of the same file
    rng = np.random.default_rng(0)
    a = rng.normal(size=60).round(3)
    y = np.sort((a > 0).astype(int))
    order = rng.permutation(60)
    lines = [f"{i},{i + 1},{order[i]},{order[i]},{i + 1},{order[i]},{a[i]},{y[i]}"
             for i in range(60)]
    path = _write(tmp_path / "i.csv", ",PassengerId,Unnamed: 0,customer_id,day,rank,a,y\n"
                  + "\n".join(lines) + "\n")
    ds = data.load_table(path, target="y", seed=0)
    # a day counting the rows is a trend, a named permutation may be a rank: both kept
    assert ds.feature_names == ("day", "rank", "a")
    reasons = {c["name"]: c.get("reason") for c in ds.encoding["columns"]}
    assert reasons[""] == "row numbers 0, 1, 2, ... down the file"
    assert reasons["PassengerId"] == "row numbers 1, 2, 3, ... down the file"
    assert reasons["Unnamed: 0"] == reasons["customer_id"] == (
        "an index column: the row numbers in another order")
    assert "(unnamed) (row numbers 0, 1, 2" in dict(data.describe_encoding(ds.encoding))[
        "dropped columns"]
    for name in ("id", "ID", "index", "No", "row_id", "order id", "UserID"):
        assert data._index_column(name, np.arange(5.0)), name
    for name in ("paid", "valid", "t", "width"):
        assert data._index_column(name, np.arange(5.0)) is None, name
    tsv = _write(tmp_path / "i.tsv", path.read_text().replace(",", "\t"))
    gz = tmp_path / "i.csv.gz"
    import gzip
    gz.write_bytes(gzip.compress(path.read_bytes()))
    for other in (tsv, gz):  # the same table, tab-separated or compressed
        got = data.load_table(other, target="y", seed=0)
        np.testing.assert_array_equal(got.x_train, ds.x_train)
    with pytest.raises(data.DataError, match=r"must be \.csv \(also \.tsv, \.txt"):
        data.load_table(_write(tmp_path / "i.json", "{}"), target="y")
    bad = _write(tmp_path / "b.csv.gz", "not gzip")
    with pytest.raises(data.DataError, match="cannot read the data file"):
        data.load_table(bad, target="y")


def _three_numbers(rng, n: int, gaps: int, decimals: int):
    """Columns of n cells: exponential (ties at `decimals`), normal with `gaps` empty
    cells, and four integer values (too few to be binned)."""
    a = rng.exponential(size=n).round(decimals)
    b = rng.normal(size=n).round(3).astype(object)
    b[rng.choice(n, gaps, replace=False)] = ""
    return a, b, rng.integers(0, 4, n)


def _encoded(tmp_path, columns: dict, **encoding):
    """Writes `columns` (the last one the target 'y') as a CSV, loads it with `encoding`
    (bins / ple) and applies the fitted encoding to all its cells. Returns the path, the
    Dataset, the column records by name, the encoded cells and their names, and the
    numbers of 'a' and 'b' with their gaps filled as the encoding fills them."""
    names, n = list(columns), len(columns["y"])
    text = ",".join(names) + "\n" + "".join(
        ",".join(str(columns[k][i]) for k in names) + "\n" for i in range(n))
    path = _write(tmp_path / "t.csv", text)
    ds = data.load_table(path, target="y", seed=0, **encoding)
    cols = {col["name"]: col for col in ds.encoding["columns"]}
    cells = np.array([r.split(",")[:-1] for r in text.splitlines()[1:]], dtype=object)
    x, out_names = data.apply_encoding(cells, names[:-1], ds.encoding, source=path)
    filled = {}
    for name in ("a", "b"):
        values = np.array([np.nan if v == "" else float(v) for v in columns[name]])
        filled[name] = np.where(np.isnan(values), cols[name].get("fill", 0.0), values)
    return path, ds, cols, x, out_names, filled


def test_quantile_bins_match_scikit_learn(tmp_path):
    # oracle: KBinsDiscretizer(strategy="quantile", quantile_method="linear"), one-hot,
    # fitted on the training rows (after the median fill); a column with ties, one with a
    # gap, one with too few distinct values to be binned, one of text
    from sklearn.preprocessing import KBinsDiscretizer

    rng, n = np.random.default_rng(3), 300
    a, b, c = _three_numbers(rng, n, 20, 2)
    t = rng.choice(["p", "q", "r"], n)
    y = rng.integers(0, 2, n)
    path, ds, cols, x, names, filled = _encoded(tmp_path, dict(a=a, b=b, c=c, t=t, y=y),
                                                bins=6)
    assert "bins" in cols["a"] and "bins" in cols["b"] and "bins" not in cols["c"]
    train = data.split_indices(n, seed=0)[0]
    for name, values in filled.items():
        ref = KBinsDiscretizer(n_bins=6, encode="onehot-dense", strategy="quantile",
                               quantile_method="linear").fit(values[train, None])
        mine = [j for j, nm in enumerate(names) if nm.startswith(f"{name} in [")]
        np.testing.assert_array_equal(x[:, mine], ref.transform(values[:, None]))
        np.testing.assert_allclose(cols[name]["bins"], ref.bin_edges_[0][1:-1], rtol=1e-15)
    binned = set(range(len(names))) - {names.index(nm) for nm in ("a", "b", "c")}
    assert set(data.indicator_columns(ds.encoding)) == binned  # all 0/1 columns: centred
    assert "a (6)" in dict(data.describe_encoding(ds.encoding))["number bins"]
    assert data.load_table(path, target="y", seed=0).encoding["columns"][0].get("bins") is None


def test_piecewise_linear_columns_span_the_linear_splines_on_the_quantile_knots(tmp_path):
    # budget numeric_ple: oracles are scikit-learn's quantile edges (KBinsDiscretizer),
    # the identity sum_t (e_t+1 - e_t) c_t + e_0 = v (the encoding loses nothing, beyond
    # the training range too), and SplineTransformer(degree=1) on the same knots, whose
    # hat functions span the same continuous piecewise-linear functions: least squares on
    # either basis (with a constant) gives the same fit. Tolerances: float64 round-off.
    from sklearn.preprocessing import KBinsDiscretizer, SplineTransformer

    rng, n = np.random.default_rng(5), 400
    a, b, c = _three_numbers(rng, n, 30, 3)
    y = rng.integers(0, 2, n)
    path, ds, cols, x, names, filled = _encoded(tmp_path, dict(a=a, b=b, c=c, y=y), ple=5)
    assert "ple" in cols["a"] and "ple" in cols["b"] and "ple" not in cols["c"]
    train = data.split_indices(n, seed=0)[0]
    for name, values in filled.items():
        edges = np.asarray(cols[name]["ple"])
        ref = KBinsDiscretizer(n_bins=5, encode="ordinal", strategy="quantile",
                               quantile_method="linear").fit(values[train, None])
        # 1e-14: np.quantile at linspace(0, 1, 6) vs percentiles at 0, 20, .., 100
        np.testing.assert_allclose(edges, ref.bin_edges_[0], rtol=1e-14)
        mine = [j for j, nm in enumerate(names) if nm.startswith(f"{name} (piece ")]
        pieces = x[:, mine]
        assert pieces.shape[1] == 5 and pieces[:, 1:-1].min() >= 0 and pieces[:, 1:-1].max() <= 1
        wide = np.linspace(values.min() - 2, values.max() + 2, 50)  # beyond the range too
        wide_pieces = data.piecewise_linear(wide, edges)
        np.testing.assert_allclose(wide_pieces @ np.diff(edges) + edges[0], wide, atol=1e-12)
        np.testing.assert_allclose(pieces @ np.diff(edges) + edges[0], values, atol=1e-12)
        hats = SplineTransformer(degree=1, knots=edges[:, None], extrapolation="linear",
                                 include_bias=True).fit(values[:, None]).transform(wide[:, None])
        target = np.sin(wide)
        fit = lambda basis: basis @ np.linalg.lstsq(basis, target, rcond=None)[0]  # noqa: E731
        np.testing.assert_allclose(fit(np.c_[np.ones(50), wide_pieces]), fit(hats),
                                   atol=1e-10)
    bounded = set(range(len(names))) - {names.index(nm) for nm in ("a", "b", "c")}
    assert set(data.indicator_columns(ds.encoding)) == bounded  # centred, not scaled
    assert "a (5)" in dict(data.describe_encoding(ds.encoding))["number pieces"]
    assert data.load_table(path, target="y", seed=0).encoding["columns"][0].get("ple") is None


def test_piecewise_columns_are_not_mapped_to_normal_scores(tmp_path):
    # budget quantile_skew maps skewed columns to normal scores for the networks; the
    # pieces' trial maps the same numbers, not their piecewise-linear columns (skewed
    # too: most rows at 0 or 1), or a linear function of them would not be a spline
    from structsel.search import runner

    rng = np.random.default_rng(6)
    n = 300
    a, b, y = rng.lognormal(size=n).round(4), rng.normal(size=n).round(4), rng.integers(0, 2, n)
    path = _write(tmp_path / "s.csv", "a,b,y\n" + "".join(f"{a[i]},{b[i]},{y[i]}\n"
                                                         for i in range(n)))
    config = runner.search_config(data=str(path), target="y", budget="tabular,numeric_ple=6")
    ds = runner.load_data(dataset=config.dataset, data=config.data, target="y", task=None,
                          split_seed=0, budget=config.budget)
    final = runner.final_problem(runner.make_problem(ds, "tabular", config.budget))
    assert final.quantile_columns == (0,) and ds.x_train.shape[1] == 2
    setup = runner._pieces_setup(final, config, ds, None, False)
    problem = setup["evaluator"].problem
    assert setup["roles"][:2] == [("number", 0), ("piece", 0)] and len(setup["roles"]) == 14
    assert setup["plain"] == [0, 7] and problem.quantile_columns == (0,)
    np.testing.assert_array_equal(np.asarray(problem.data.x_train)[:, 0],
                                  np.asarray(final.data.x_train)[:, 0])  # as mapped there
    wide = setup["wide"].x_train
    pieces = list(range(1, 7))
    assert abs(features_skewness(wide[:, pieces])).max() > 1  # skewed, yet kept
    np.testing.assert_array_equal(np.asarray(problem.data.x_train)[:, pieces], wide[:, pieces])


def features_skewness(x):
    from structsel.search import features

    return features.skewness(x)


@pytest.mark.parametrize("field", ["numeric_bins", "numeric_ple"])
def test_numeric_bins_budget(field):
    from structsel.search import runner

    assert getattr(runner.parse_budget(f"tabular,{field}=8"), field) == 8
    with pytest.raises(ValueError, match=f"{field} must be 0 .off. or an int >= 2"):
        runner.parse_budget(f"tabular,{field}=1")
    with pytest.raises(ValueError, match="numeric_bins applies to tables read with --data"):
        runner.load_data(dataset="wine", data=None, target=None, task=None, split_seed=0,
                         budget=runner.parse_budget("tabular,numeric_bins=8"))


def test_piecewise_columns_of_an_embedded_dataset(tmp_path):
    # the embedded sets get the pieces as a table read from a file does: fitted on the
    # split's training rows (oracle: the same numbers written as a CSV and read back, bit
    # for bit), and a trained model's recorded encoding rebuilds them (retrain)
    import sklearn.datasets

    from structsel.search import runner

    budget = runner.parse_budget("tabular,numeric_ple=4")
    ds = runner.load_data(dataset="wine", data=None, target=None, task=None, split_seed=1,
                          budget=budget, pieces=True)
    assert ds.x_train.shape[1] == 13 * 5 and ds.feature_names[1] == "alcohol (piece 1 of 4)"
    bunch = sklearn.datasets.load_wine()
    text = ",".join(bunch.feature_names + ["y"]) + "\n" + "".join(
        ",".join(repr(float(v)) for v in row) + f",{t}\n" for row, t in zip(bunch.data,
                                                                         bunch.target))
    table = data.load_table(_write(tmp_path / "wine.csv", text), target="y", seed=1, ple=4)
    assert table.encoding == ds.encoding
    np.testing.assert_array_equal(table.x_train, ds.x_train)
    again = runner.load_data(dataset="wine", data=None, target=None, task=None, split_seed=1,
                             budget=runner.parse_budget("tabular"), encoding=ds.encoding)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    plain = runner.load_data(dataset="wine", data=None, target=None, task=None, split_seed=1,
                             budget=runner.parse_budget("tabular"))
    assert plain.encoding is None and plain.x_train.shape[1] == 13


def test_decimal_commas_in_a_semicolon_separated_file(tmp_path):
    # a spreadsheet's export in much of Europe: ';' between fields, a decimal comma, dots
    # grouping thousands; oracle: the same numbers written the English way
    rng = np.random.default_rng(4)
    a = rng.normal(size=40).round(3)
    price = rng.uniform(100, 5000, 40).round(2)
    y = (a > 0).astype(int)
    eu = "a;price;share;y\n" + "".join(
        f"{a[i]:.3f};{price[i]:,.2f} \u20ac;{i % 7},5 %;{y[i]}\n".replace(",", "_")
        .replace(".", ",").replace("_", ".") for i in range(40))
    en = "a,price,share,y\n" + "".join(
        f'{a[i]:.3f},"{price[i]:.2f} \u20ac",{i % 7}.5 %,{y[i]}\n' for i in range(40))
    got = data.load_table(_write(tmp_path / "eu.csv", eu), target="y", seed=0)
    want = data.load_table(_write(tmp_path / "en.csv", en), target="y", seed=0)
    np.testing.assert_array_equal(got.x_train, want.x_train)
    formats = [[c.get("formats", []) for c in d.encoding["columns"]] for d in (got, want)]
    assert formats[0] == formats[1] == [[], ["currency"], ["percent"]]
    # without a decimal comma anywhere a dot is a decimal point, as in every other file
    x, _, _ = data.read_table(_write(tmp_path / "p.csv", "a;y\n" + "".join(
        f"{i}.500;{i % 2}\n" for i in range(30))), target="y")
    np.testing.assert_array_equal(x[:, 0], np.arange(30) + 0.5)
    assert cell_lib.from_decimal_comma("1.234,5") == "1234.5"
    assert cell_lib.from_decimal_comma("-0,8") == "-0.8" and cell_lib.from_decimal_comma("ab") == "ab"


def test_a_target_of_mostly_distinct_labels_is_refused(tmp_path):
    # e.g. --target name: every row its own class, silently (session 30's code read a
    # currency target this way, as 1496 classes in 1500 rows)
    body = "".join(f"{i % 5},person{i}\n" for i in range(40))
    with pytest.raises(data.DataError, match="40 classes in 40 rows.*right column"):
        data.load_table(_write(tmp_path / "n.csv", "a,name\n" + body), target="name")
    body = "".join(f"{i % 5},k{i % 20}\n" for i in range(40))  # 2 rows per class: accepted
    assert data.load_table(_write(tmp_path / "k.csv", "a,k\n" + body), target="k").num_classes == 20


@pytest.mark.parametrize("cells, iso", [
    (["03/15/2021", "12/01/2020", "7/4/2019"], ["2021-03-15", "2020-12-01", "2019-07-04"]),
    (["15/03/2021", "01/12/2020", "4/7/2019"], ["2021-03-15", "2020-12-01", "2019-07-04"]),
    (["15.03.2021", "01.12.2020"], ["2021-03-15", "2020-12-01"]),
    (["01.02.2020", "03.04.2021"], ["2020-02-01", "2021-04-03"]),  # dots: day first
    (["03/15/2021 14:30", "12/01/2020"], ["2021-03-15T14:30", "2020-12-01"]),
])
def test_dates_with_the_day_and_month_in_either_order(cells, iso):
    values, bad, formats = cell_lib.numbers_and_formats(np.array(cells, dtype=object))
    want = np.array(iso, dtype="datetime64[s]").astype(np.int64) / 86400  # numpy's calendar
    assert bad is None and formats == ["date"]
    np.testing.assert_allclose(values, want, rtol=1e-15)


def test_dates_that_never_say_which_field_is_the_day_stay_text():
    values, bad, formats = cell_lib.numbers_and_formats(
        np.array(["01/02/2021", "03/04/2020", "12/11/2021"], dtype=object))
    assert bad == 0 and formats == [] and np.isnan(values).all()
    # the day first (15 > 12), and 31 February is no date: that cell stays text
    values, bad, _ = cell_lib.numbers_and_formats(np.array(["15/03/2021", "31/02/2021"],
                                                        dtype=object))
    assert bad == 1 and values[0] == np.datetime64("2021-03-15").astype(np.int64)
