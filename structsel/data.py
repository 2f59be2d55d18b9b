"""Datasets available offline: scikit-learn's bundled sets, mnist1d (generated), the GLM toy.

Every loader returns a `Dataset` with a train / validation / test split made from a seed
and features standardised with the training statistics. Regression targets are
standardised too; `Dataset.target_scale` maps predictions back to the original units.
Classification labels may be numbers or text (a CSV column such as `g` / `h`): the
distinct labels, sorted, become classes 0..C-1 and `Dataset.classes` records them (class i
is `classes[i]`), so a model trained on one file can be scored on another with the same
mapping (`make_dataset(..., classes=...)`).
Bad data raises `DataError` (a ValueError) with one line saying what is wrong.
"""

from __future__ import annotations

import csv
import pathlib
import zipfile
from typing import NamedTuple

import numpy as np

TASKS = ("classification", "regression")
SKLEARN_SETS = ("digits", "breast_cancer", "wine", "diabetes")


class DataError(ValueError):
    """The data cannot be used as given (message names the problem)."""


class Dataset(NamedTuple):
    """A split, standardised dataset (numpy float32 features)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    num_classes: int  # 0 for regression
    name: str
    target_scale: tuple[float, float] = (0.0, 1.0)  # (mean, std) of the raw regression target
    split: dict | None = None  # seed and sizes, for the run record
    classes: tuple | None = None  # original label of each class 0..C-1 (None: regression)

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[-1])


def split_indices(n: int, *, seed: int, val_fraction: float = 0.2,
                  test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random permutation cut into train / validation / test index arrays."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise DataError(f"{name} must be in (0, 1), got {frac}")
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 2:
        raise DataError(f"too few rows for the split: {n} rows give train/val/test = "
                        f"{n_train}/{n_val}/{n_test}; need at least 2 in each")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def infer_task(y: np.ndarray) -> str:
    """Classification for text labels and for integer-valued targets with at most 50
    distinct values; regression otherwise."""
    if not np.issubdtype(np.asarray(y).dtype, np.number):
        return "classification"
    values = np.unique(y)
    integral = np.all(np.equal(np.mod(values, 1), 0))
    return "classification" if integral and len(values) <= 50 else "regression"


def _label(value):
    """A class label as a JSON scalar: str, int for integral numbers, else float."""
    if isinstance(value, (str, np.str_)):
        return str(value)
    value = float(value)
    return int(value) if value.is_integer() else value


def encode_labels(y: np.ndarray, classes=None) -> tuple[np.ndarray, tuple]:
    """(integer classes, labels): y_i -> index of y_i in the sorted distinct labels, or in
    `classes` when given (a label it does not list raises DataError)."""
    if classes is None:
        labels, codes = np.unique(y, return_inverse=True)
        return codes.astype(np.int32), tuple(_label(c) for c in labels)
    classes = tuple(_label(c) for c in classes)
    index = {c: i for i, c in enumerate(classes)}
    try:
        codes = np.array([index[_label(v)] for v in y], dtype=np.int32)
    except KeyError as err:
        raise DataError(f"label {err.args[0]!r} is not one of the model's classes "
                        f"{list(classes)}") from None
    return codes, classes


def make_dataset(x: np.ndarray, y: np.ndarray, *, name: str, seed: int = 0, task: str | None = None,
                 val_fraction: float = 0.2, test_fraction: float = 0.2,
                 classes=None) -> Dataset:
    """Validates, splits and standardises (x, y); `task` is inferred when None.

    Labels (numbers or text) become classes 0..C-1 in sorted order, or in the order of
    `classes` when given (the mapping of a trained model; then C = len(classes)).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    text = not np.issubdtype(y.dtype, np.number)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D table, got shape {x.shape}")
    if x.shape[1] == 0:
        raise DataError("features must have at least one column besides the target, got none")
    if y.shape != (x.shape[0],):
        raise DataError(f"target must have one value per row ({x.shape[0]}), got shape {y.shape}")
    if not np.all(np.isfinite(x)):
        rows = np.unique(np.nonzero(~np.isfinite(x))[0])[:5].tolist()
        raise DataError(f"features contain NaN or inf (rows {rows}...)")
    if not text and not np.all(np.isfinite(y.astype(np.float64))):
        raise DataError("target contains NaN or inf")
    task = task or infer_task(y)
    if task not in TASKS:
        raise DataError(f"task must be one of {TASKS}, got {task!r}")
    if text and task == "regression":
        raise DataError(f"regression needs a numeric target; it has text labels such as "
                        f"{str(y[0])!r}")
    tr, va, te = split_indices(len(y), seed=seed, val_fraction=val_fraction,
                               test_fraction=test_fraction)
    mean, std = x[tr].mean(0), x[tr].std(0)
    std = np.where(std > 0, std, 1.0)
    xs = ((x - mean) / std).astype(np.float32)
    if task == "classification":
        ys, labels = encode_labels(y, classes)
        if len(labels) < 2:
            raise DataError(f"classification needs at least 2 classes, got {len(labels)} "
                            f"(the target is constant: {list(labels)})")
        num_classes, scale = len(labels), (0.0, 1.0)
    else:
        labels = None
        yf = y.astype(np.float64)
        if np.all(yf == yf[0]):
            raise DataError(f"regression needs a target that varies; the target is constant "
                            f"({yf[0]:g} in every row)")
        mu, sd = float(yf[tr].mean()), float(yf[tr].std() or 1.0)
        ys, num_classes, scale = ((yf - mu) / sd).astype(np.float32), 0, (mu, sd)
    split = {"seed": int(seed), "train": len(tr), "val": len(va), "test": len(te)}
    return Dataset(xs[tr], ys[tr], xs[va], ys[va], xs[te], ys[te], task, num_classes, name,
                   scale, split, labels)


def load_sklearn(name: str = "digits", *, seed: int = 0, **kwargs) -> Dataset:
    """One of scikit-learn's bundled sets: digits, breast_cancer, wine, diabetes."""
    if name not in SKLEARN_SETS:
        raise DataError(f"name must be one of {SKLEARN_SETS}, got {name!r}")
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    task = "regression" if name == "diabetes" else "classification"
    return make_dataset(bunch.data, bunch.target, name=name, seed=seed, task=task, **kwargs)


def load_mnist1d(*, seed: int = 0, num_samples: int = 5000, **kwargs) -> Dataset:
    """mnist1d generated locally (never downloaded): 40-step sequences, 10 classes."""
    from mnist1d.data import get_dataset_args, make_dataset as make_mnist1d

    args = get_dataset_args()
    args.num_samples = num_samples
    data = make_mnist1d(args)
    x = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    return make_dataset(x, y, name="mnist1d", seed=seed, task="classification", **kwargs)


def glm_toy(*, seed: int = 0, num_objects: int = 50, num_features: int = 11,
            noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The thesis' GLM toy: x_j ~ N(0, 1) plus a constant feature 1; y = tanh(x_0) + noise*eps.

    Returns X of shape (m, num_features + 1) (last column is the constant) and y of shape (m,).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_objects, num_features))
    y = np.tanh(x[:, 0]) + noise * rng.standard_normal(num_objects)
    x = np.concatenate([x, np.ones((num_objects, 1))], axis=1)
    return x.astype(np.float32), y.astype(np.float32)


def read_table(path: str | pathlib.Path, *, target: str | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads a CSV (header row) or .npz (arrays `x`, `y`) into features, target, names.

    For a CSV, `target` names the label column (default: the last column); a target
    column with a value that is not a number is read as text labels (array of str). The
    CSV is UTF-8 (a byte-order mark is skipped) separated by ',' or, when its header row
    holds more of them, ';', tab or '|'. Integer and float16 arrays of an .npz are
    accepted (converted to float).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; expected a .csv or .npz file")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path) as npz:
                if "x" not in npz or "y" not in npz:
                    raise DataError(f"{path}: .npz needs arrays 'x' and 'y', has "
                                    f"{sorted(npz.files)}")
                x, y = npz["x"], npz["y"]
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"{path}: cannot read it as an .npz archive ("
                            f"{str(err).splitlines()[0][:80]})") from None
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{path}: features must be numeric, got dtype {x.dtype}")
        return x.reshape(len(x), -1), y, [f"x{i}" for i in range(int(np.prod(x.shape[1:])))]
    if path.suffix.lower() != ".csv":
        raise DataError(f"data file must be .csv or .npz, got {path.name}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            f.seek(0)
            delimiter = max(_DELIMITERS, key=first.count)
            rows = list(csv.reader(f, delimiter=delimiter if first.count(delimiter) else ","))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the data file ({err.strerror})") from None
    while rows and not any(v.strip() for v in rows[-1]):  # blank lines at the end
        rows.pop()
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(f"{path}: column names must be unique; {duplicated} appear more than "
                        "once (a target column repeated as a feature would leak the label)")
    if len(header) < 2:
        raise DataError(f"{path}: needs at least one feature column and a target column "
                        f"separated by one of {list(_DELIMITERS)}; the header is {header}")
    target = target or header[-1]
    if target not in header:
        raise DataError(f"{path}: unknown target column {target!r}; columns are {header}")
    col = header.index(target)
    names = [h for i, h in enumerate(header) if i != col]
    x = np.empty((len(body), len(names)))
    labels = []
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {r} has {len(row)} fields, header has {len(header)}")
        features = [v for i, v in enumerate(row) if i != col]
        try:
            x[r - 2] = [float(v) if v.strip() != "" else np.nan for v in features]
        except ValueError:
            bad = next(h for h, v in zip(names, features) if not _is_float(v))
            raise DataError(f"{path}: line {r}, column {bad!r} is not numeric") from None
        labels.append(row[col].strip())
    if all(_is_float(v) for v in labels):
        y = np.array([float(v) if v != "" else np.nan for v in labels])
    else:
        empty = [r for r, v in enumerate(labels, start=2) if v == ""]
        if empty:
            raise DataError(f"{path}: line {empty[0]}, target column {target!r} is empty")
        y = np.array(labels, dtype=str)
    return x, y, names


_DELIMITERS = (",", ";", "\t", "|")


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return value.strip() == ""
    return True


def load_table(path: str | pathlib.Path, *, target: str | None = None, task: str | None = None,
               seed: int = 0, **kwargs) -> Dataset:
    """A CSV/.npz file as a split, standardised Dataset (see `read_table`; `kwargs` go to
    `make_dataset`, e.g. `classes`)."""
    x, y, names = read_table(path, target=target)
    csv_file = pathlib.Path(path).suffix.lower() == ".csv"
    bad = ~np.isfinite(np.asarray(x, dtype=np.float64))
    if bad.any():
        cols = [names[j] for j in np.nonzero(bad.any(0))[0]]
        row = int(np.nonzero(bad.any(1))[0][0])
        raise DataError(f"{path}: feature column(s) {cols[:5]} contain NaN, inf or empty "
                        f"values (first at {f'line {row + 2}' if csv_file else f'row {row}'})")
    try:
        return make_dataset(x, y, name=pathlib.Path(path).stem, seed=seed, task=task, **kwargs)
    except DataError as err:
        column = f"column {target!r}" if target else ("the last column" if csv_file
                                                      else "array 'y'")
        raise DataError(f"{path} (target: {column}): {err}") from None


def load(name: str, *, seed: int = 0, **kwargs) -> Dataset:
    """A named embedded dataset: one of SKLEARN_SETS or 'mnist1d'."""
    if name == "mnist1d":
        return load_mnist1d(seed=seed, **kwargs)
    if name in SKLEARN_SETS:
        return load_sklearn(name, seed=seed, **kwargs)
    raise DataError(f"dataset must be one of {SKLEARN_SETS + ('mnist1d',)}, got {name!r}")
