"""How a table's cell becomes a number (or stays text), as people write tables.

`numbers` reads a column of cells: plain numbers, missing-value markers (`MISSING`), and
numbers written with units (`parse_number`: currency and percent signs, thousands grouped
by commas, ISO dates; `parse_column`: thousands and day / month order decided by the
column). `from_decimal_comma` rewrites a cell written with a decimal comma, as
spreadsheets in much of Europe write numbers. `structsel.data` reads and encodes tables
with them.
"""
from __future__ import annotations

import datetime
import re

import numpy as np

# numbers with a decimal comma (and dots grouping thousands), as spreadsheets write them in
# much of Europe: read so in a file separated by ';', tab or '|' that has such a cell
_EU_NUMBER = re.compile(r"^(?P<pre>[-+]?[$\u20ac\u00a3\u00a5]?\s?[-+]?)"
                        r"(?P<num>(\d{1,3}(\.\d{3})+|\d+)(,\d+)?)"
                        r"(?P<post>\s?(%|[$\u20ac\u00a3\u00a5])?)$")


def from_decimal_comma(cell: str) -> str:
    """'1.234,5' -> '1234.5', '12,5 %' -> '12.5 %', '-0,8' -> '-0.8'; other cells unchanged."""
    m = _EU_NUMBER.match(cell.strip())
    if not m:
        return cell
    return m["pre"] + m["num"].replace(".", "").replace(",", ".") + m["post"]


def has_decimal_comma(cell: str) -> bool:
    """Whether the cell is a number with a decimal comma ('-0,8', '1.234,5 €')."""
    m = "," in cell and _EU_NUMBER.match(cell.strip())
    return bool(m) and "," in m["num"]


# feature cells read as a missing value (compared after strip, case-insensitive): pandas'
# default missing markers and UCI's '?'
MISSING = frozenset({"", "?", "na", "n/a", "nan", "-nan", "null", "none", "#n/a", "<na>"})
# a number with a decimal comma and nothing else: ambiguous in a comma-separated file
DECIMAL_COMMA = re.compile(r"^[-+]?\d+,\d+$")


def is_missing(value) -> bool:
    """Whether a cell is a missing value (`MISSING`, or NaN)."""
    if isinstance(value, str):
        return value.strip().lower() in MISSING
    return bool(np.isnan(value))


def category(value) -> str:
    """A text cell as its category ('' for a missing value)."""
    if not isinstance(value, str):
        return "" if np.isnan(value) else f"{float(value):g}"
    return "" if is_missing(value) else value.strip()


# numbers as people write them in tables (`parse_number`): a currency sign before or after,
# a percent sign after, thousands grouped by commas; ISO dates and date-times
_UNITS = re.compile(r"^(?P<sign>[-+]?)(?P<pre>[$\u20ac\u00a3\u00a5]?)(?P<sign2>[-+]?)"
                    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?\s?"
                    r"(?P<post>%|[$\u20ac\u00a3\u00a5])?$")
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?)?$")
_EPOCH = datetime.date(1970, 1, 1).toordinal()
FORMATS = ("currency", "percent", "thousands", "date")  # what `parse_number` reads, by name


def parse_number(text: str, grouped: bool = False) -> tuple[float | None, tuple, bool]:
    """(value, formats, unambiguous grouping) of a cell that `float` does not read:
    '$1,200.50' -> 1200.5 ('currency', 'thousands'), '12.5%' -> 12.5 ('percent',),
    '1,234,567' -> 1234567 ('thousands',), '2020-03-01' or '2020-03-01T12:00' -> days since
    1970-01-01 ('date',); (None, (), False) for text. A single comma group without a
    currency sign or a decimal point ('6,621': 6621, or 6.621 with a decimal comma) is read
    only with `grouped` (the column has unambiguous groupings elsewhere)."""
    text = text.strip()
    m = _DATE.match(text)
    if m:
        return (*days(*m.groups()), False)
    m = _UNITS.match(text)
    if not m or (m["sign"] and m["sign2"]) or (m["pre"] and m["post"]):
        return None, (), False
    digits = m["int"]
    clear = "," in digits and (digits.count(",") > 1 or bool(m["frac"]) or bool(m["pre"])
                               or m["post"] not in (None, "%"))
    if "," in digits and not (clear or grouped):
        return None, (), False
    value = float(digits.replace(",", "") + (m["frac"] or ""))
    value = -value if "-" in (m["sign"] + m["sign2"]) else value
    units = (("percent",) if m["post"] == "%" else ("currency",) if m["pre"] or m["post"]
             else ()) + (("thousands",) if "," in digits else ())
    return (value, units, clear) if units else (None, (), False)


def parse_column(col: np.ndarray) -> dict:
    """{distinct cell: (value, formats)}: value NaN for a missing cell, None for text."""
    parsed, clear = {}, False
    for v in col:
        if v not in parsed:
            if is_missing(v):
                parsed[v] = (np.nan, ())
                continue
            try:
                parsed[v] = (float(v), ())
            except ValueError:
                value, units, unambiguous = parse_number(v)
                parsed[v] = (value, units)
                clear |= unambiguous
    if clear:  # '6,621' next to '1,234.50' or '1,234,567': a thousands separator too
        for v, (value, _) in parsed.items():
            if value is None:
                parsed[v] = parse_number(v, grouped=True)[:2]
    dates = {v: m for v, (value, _) in parsed.items()
             if value is None and (m := _DAY_MONTH.match(v.strip()))}
    order = day_first(list(dates.values())) if dates else None
    if order is not None:  # 03/15/2021 or 15.03.2021: the column says which is the day
        for v, m in dates.items():
            day, month = (m[1], m[3]) if order else (m[3], m[1])
            parsed[v] = days(m[4], month, day, m[5], m[6], m[7])
    return parsed


# dates written day and month first: 03/15/2021, 15.03.2021, 3/15/2021 14:30
_DAY_MONTH = re.compile(r"^(\d{1,2})([/.])(\d{1,2})\2(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


def day_first(matches) -> bool | None:
    """Whether a column's dates `_DAY_MONTH` put the day first: True when a first field
    exceeds 12 and no second one does, False for the other way round (03/15/2021, as
    written in the US), True for dotted dates that do not say (15.03.2021 is the European
    way), None when slashed dates never say (01/02/2021: January or February?)."""
    first = max(int(m[1]) for m in matches)
    second = max(int(m[3]) for m in matches)
    if first > 12 and second <= 12:
        return True
    if second > 12 and first <= 12:
        return False
    if first <= 12 and second <= 12 and all(m[2] == "." for m in matches):
        return True
    return None


def days(year, month, day, hour=None, minute=None, second=None) -> tuple[float | None, tuple]:
    """(days since 1970-01-01, ('date',)) of a date and time of day given as digits, or
    (None, ()) when it is not one (31 February, 25:00)."""
    h, mi, sec = int(hour or 0), int(minute or 0), float(second or 0)
    if not (h < 24 and mi < 60 and sec < 60):
        return None, ()
    try:
        ordinal = datetime.date(int(year), int(month), int(day)).toordinal() - _EPOCH
    except ValueError:
        return None, ()
    return ordinal + (3600 * h + 60 * mi + sec) / 86400, ("date",)


def numbers(col: np.ndarray) -> tuple[np.ndarray, int | None]:
    """(the column as float64 with NaN where a value is missing, row of the first cell that
    is neither a number (`parse_number`: also with a currency or percent sign, thousands
    separators, an ISO date) nor missing, or None)."""
    return numbers_and_formats(col)[:2]


def numbers_and_formats(col: np.ndarray) -> tuple[np.ndarray, int | None, list[str]]:
    """`numbers` and the formats (`FORMATS`, sorted) its numbers were written in, from
    one parse of each distinct cell."""
    if np.issubdtype(col.dtype, np.number):
        return col.astype(np.float64), None, []
    parsed = parse_column(col)
    value = {v: np.nan if p[0] is None else p[0] for v, p in parsed.items()}
    out = np.fromiter(map(value.__getitem__, col), np.float64, len(col))
    text = {v for v, p in parsed.items() if p[0] is None}
    bad = next((i for i, v in enumerate(col) if v in text), None) if text else None
    return out, bad, sorted({unit for _, units in parsed.values() for unit in units})
