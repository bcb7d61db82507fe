"""Data quality for feature views: expectations, source schema checks, statistics profiles and drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from falaj.core.features.quality import (
    Failure,
    NotNullExpectation,
    RangeExpectation,
    check_schema,
    drift,
    dump_expectations,
    profile,
    psi_severity,
    run_expectations,
    validate_expectations,
)
from falaj.core.plugin.interfaces import FeatureViewDef

VIEW = FeatureViewDef(
    tenant="acme",
    name="transactions",
    version=3,
    join_keys=(("customer", "string"),),
    features=(
        ("amount", "float64"),
        ("items", "int64"),
        ("country", "string"),
        ("online", "bool"),
        ("first_seen", "timestamp"),
        ("score1", "float64"),
        ("score2", "float64"),
        ("score3", "float64"),
        ("level", "int64"),
        ("channel", "string"),
    ),
)
T0 = datetime(2024, 3, 1, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")


def _table(rows: int = 100_000, seed: int = 0, shift: float = 0.0) -> pa.Table:
    """A batch of the view: 10 features, 1 key, event times over one day from T0, 5% of amounts null."""
    rng = np.random.default_rng(seed)
    amount = rng.normal(100 + shift, 20, rows)
    return pa.table(
        {
            "customer": pa.array([f"c{i}" for i in rng.integers(0, 5000, rows)]),
            "amount": pa.array(amount, mask=rng.random(rows) < 0.05),
            "items": pa.array(rng.integers(1, 10, rows)),
            "country": pa.array(rng.choice(["AE", "BH", "SA", "OM"], rows, p=[0.4, 0.3, 0.2, 0.1])),
            "online": pa.array(rng.random(rows) < 0.3),
            "first_seen": pa.array(
                np.datetime64("2023-01-01") + rng.integers(0, 365, rows).astype("timedelta64[D]")
            ).cast(TS),
            "score1": pa.array(rng.random(rows)),
            "score2": pa.array(rng.random(rows)),
            "score3": pa.array(rng.random(rows)),
            "level": pa.array(rng.integers(0, 5, rows)),
            "channel": pa.array(rng.choice(["web", "app", "branch"], rows)),
            "event_ts": pa.array(
                np.datetime64("2024-03-01") + rng.integers(0, 86_400_000_000, rows).astype("timedelta64[us]")
            ).cast(TS),
            "event_id": pa.array([f"e{i}" for i in range(rows)]),
        }
    )


@pytest.fixture(scope="module")
def batch() -> pa.Table:
    return _table()


# -- expectations at definition time ---------------------------------------------------------------------

GOOD = [
    {"type": "schema"},
    {"type": "schema", "mode": "exact"},
    {"type": "not_null", "column": "amount", "max_null_rate": 0.1},
    {"type": "not_null", "column": "customer"},
    {"type": "range", "column": "amount", "min": 0},
    {"type": "range", "column": "items", "min": 1, "max": 9},
    {"type": "range", "column": "event_ts", "min": "2024-03-01T00:00:00Z", "max": "2024-03-02T00:00:00+00:00"},
    {"type": "allowed_values", "column": "country", "values": ["AE", "BH", "SA", "OM"]},
    {"type": "allowed_values", "column": "level", "values": [0, 1, 2, 3, 4]},
    {"type": "allowed_values", "column": "online", "values": [True, False]},
    {"type": "freshness", "max_age_seconds": 7200},
    {"type": "unique", "columns": ["event_id"]},
]


def test_expectations_parse_and_round_trip_as_json() -> None:
    parsed = validate_expectations(VIEW, GOOD)
    assert [e.type for e in parsed] == [g["type"] for g in GOOD]
    assert isinstance(parsed[2], NotNullExpectation) and parsed[2].max_null_rate == 0.1
    assert isinstance(parsed[6], RangeExpectation) and parsed[6].min == T0
    stored = json.loads(json.dumps(dump_expectations(parsed)))
    assert stored[6]["min"] == "2024-03-01T00:00:00Z"
    assert stored[3] == {"type": "not_null", "column": "customer", "max_null_rate": 0.0}
    assert validate_expectations(VIEW, stored) == parsed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "not_null", "column": "amout"}, r"expectation 1 \(not_null\): unknown column 'amout'; view "),
        ({"type": "nonsense"}, r"expectation 1: type 'nonsense' is not one of schema, not_null, range"),
        ({"column": "amount"}, r"expectation 1: type None is not one of"),
        ({"type": "not_null", "column": "amount", "max_null_rate": 1.5}, r"max_null_rate: Input should be less"),
        ({"type": "not_null", "column": "amount", "colour": "red"}, r"colour: Extra inputs are not permitted"),
        ({"type": "range", "column": "amount"}, r"expectation 1 \(range\): .*give min, max or both"),
        ({"type": "range", "column": "amount", "min": 5, "max": 1}, r"min 5 is above max 1"),
        ({"type": "range", "column": "country", "min": 1}, r"range needs a numeric or timestamp column; 'country'"),
        ({"type": "range", "column": "amount", "min": "2024-01-01"}, r"'amount' is float64: its bounds are numbers"),
        ({"type": "range", "column": "event_ts", "max": 5}, r"'event_ts' is a timestamp: its bounds are ISO 8601"),
        ({"type": "range", "column": "amount", "min": "5"}, r"'5' is not an ISO 8601 timestamp"),
        ({"type": "range", "column": "amount", "min": True}, r"not a boolean"),
        ({"type": "allowed_values", "column": "level", "values": ["1"]}, r"'level' is int64, but values include '1'"),
        ({"type": "allowed_values", "column": "level", "values": [True]}, r"values include True"),
        ({"type": "allowed_values", "column": "amount", "values": [1]}, r"allowed_values needs a string, int64 or"),
        ({"type": "allowed_values", "column": "country", "values": []}, r"values: List should have at least 1"),
        ({"type": "freshness", "max_age_seconds": 0}, r"max_age_seconds: Input should be greater than 0"),
        ({"type": "unique", "columns": ["customer", "nope"]}, r"unknown column 'nope'"),
        ({"type": "unique", "columns": ["customer", "customer"]}, r"columns are named more than once"),
        ("not_null", r"expectation 1: must be an object with a 'type', got str"),
    ],
)
def test_bad_expectations_are_refused_by_index(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_expectations(VIEW, [{"type": "schema"}, raw])


def test_expectations_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="expectations must be a list"):
        validate_expectations(VIEW, {"type": "schema"})  # type: ignore[arg-type]


# -- source schema -----------------------------------------------------------------------------------------


def test_a_matching_source_has_no_differences(batch: pa.Table) -> None:
    assert check_schema(VIEW, batch.schema) == []
    # wider and narrower types that read without loss are fine; so are ISO strings for timestamps
    schema = batch.schema.set(batch.schema.get_field_index("items"), pa.field("items", pa.int16()))
    schema = schema.set(schema.get_field_index("amount"), pa.field("amount", pa.int32()))
    schema = schema.set(schema.get_field_index("event_ts"), pa.field("event_ts", pa.string()))
    schema = schema.set(schema.get_field_index("country"), pa.field("country", pa.dictionary(pa.int8(), pa.string())))
    assert check_schema(VIEW, schema) == []


def test_schema_differences_name_the_column_and_both_types(batch: pa.Table) -> None:
    drifted = batch.drop_columns(["items"]).set_column(
        batch.schema.get_field_index("amount") - 0, "amount", pa.array(["1.5"] * batch.num_rows)
    )
    drifted = drifted.set_column(drifted.schema.get_field_index("level"), "level", pa.array([1.5] * batch.num_rows))
    drifted = drifted.append_column("subject_id", pa.array([1] * batch.num_rows))
    problems = check_schema(VIEW, drifted.schema)
    assert problems == [
        "column 'amount': the source has string, which cannot be read as the declared float64",
        "column 'items' is missing from the source; the view declares it int64",
        "column 'level': the source has double, which cannot be read as the declared int64",
        "column 'subject_id': the source has int64, which cannot be read as the declared string",
    ]


def test_column_map_reads_view_columns_from_renamed_source_columns(batch: pa.Table) -> None:
    source = batch.rename_columns(
        ["cust_id" if c == "customer" else "ts" if c == "event_ts" else c for c in batch.column_names]
    )
    assert check_schema(VIEW, source.schema, {"customer": "cust_id", "event_ts": "ts"}) == []
    assert check_schema(VIEW, source.schema) == [
        "column 'customer' is missing from the source; the view declares it string",
        "column 'event_ts' is missing from the source; the view declares it timestamp",
    ]
    wrong = check_schema(VIEW, source.schema, {"customer": "cust_id", "event_ts": "amount", "ghost": "x"})
    assert wrong == [
        "column map names 'ghost', which view 'transactions' does not have",
        "column 'event_ts' (source column 'amount'): the source has double, which cannot be read as the declared "
        "timestamp",
    ]


# -- running expectations ----------------------------------------------------------------------------------


def test_a_good_batch_meets_its_expectations(batch: pa.Table) -> None:
    expectations = validate_expectations(VIEW, GOOD)
    assert run_expectations(VIEW, batch, expectations, now=T0 + timedelta(days=1, minutes=30)) == []


def test_each_failure_names_the_expectation_the_column_what_was_seen_and_expected(batch: pa.Table) -> None:
    expectations = validate_expectations(
        VIEW,
        [
            {"type": "not_null", "column": "amount", "max_null_rate": 0.01},
            {"type": "range", "column": "items", "min": 2, "max": 8},
            {"type": "range", "column": "first_seen", "max": "2023-06-30T23:59:59"},
            {"type": "allowed_values", "column": "country", "values": ["AE", "BH", "SA"]},
            {"type": "freshness", "max_age_seconds": 3600},
            {"type": "unique", "columns": ["customer"]},
            {"type": "unique", "columns": ["customer", "event_id"]},
            {"type": "not_null", "column": "score1"},
        ],
    )
    failures = run_expectations(VIEW, batch, expectations, now=T0 + timedelta(days=1, hours=3))
    assert [f.index for f in failures] == [0, 1, 2, 3, 4, 5]
    by_index = {f.index: f for f in failures}

    nulls = batch.column("amount").null_count
    rate = nulls / batch.num_rows
    assert 0.04 < rate < 0.06
    assert by_index[0] == Failure(
        0,
        "not_null",
        "amount",
        f"null rate {rate:.4g} ({nulls} of 100000 rows)",
        "0.01",
        f"not_null amount: null rate {rate:.4g} ({nulls} of 100000 rows) > 0.01",
    )
    items = np.asarray(batch.column("items"))
    outside = int(((items < 2) | (items > 8)).sum())
    assert by_index[1].message == f"range items: {outside} of 100000 rows (observed min 1, max 9) not within [2, 8]"
    assert by_index[2].column == "first_seen"
    assert by_index[2].expected == "[-inf, 2023-06-30T23:59:59+00:00]"
    oman = int((np.asarray(batch.column("country")) == "OM").sum())
    assert by_index[3].message == (
        f"allowed_values country: {oman} of 100000 rows have other values (e.g. 'OM') not in {{'AE', 'BH', 'SA'}}"
    )
    newest = max(batch.column("event_ts").to_pylist())
    age = (T0 + timedelta(days=1, hours=3) - newest).total_seconds()
    assert by_index[4].message == f"freshness event_ts: newest event {newest.isoformat()} is {age:g} s old > 3600 s"
    assert by_index[5].message.startswith("unique customer: 95000 duplicate rows, 5000 distinct of 100000")
    assert json.loads(json.dumps([f.to_dict() for f in failures]))[0]["expectation"] == "not_null"


def test_nan_counts_as_null_and_nulls_are_not_range_or_value_failures() -> None:
    table = pa.table(
        {
            "amount": pa.array([1.0, float("nan"), None, 5.0]),
            "country": pa.array(["AE", None, "AE", "AE"]),
            "event_ts": pa.array([T0] * 4, TS),
        }
    )
    expectations = validate_expectations(
        VIEW,
        [
            {"type": "not_null", "column": "amount", "max_null_rate": 0.5},
            {"type": "not_null", "column": "amount", "max_null_rate": 0.25},
            {"type": "range", "column": "amount", "min": 0, "max": 10},
            {"type": "allowed_values", "column": "country", "values": ["AE"]},
        ],
    )
    failures = run_expectations(VIEW, table, expectations, now=T0)
    assert [f.message for f in failures] == ["not_null amount: null rate 0.5 (2 of 4 rows) > 0.25"]


def test_schema_expectations_and_unreadable_columns() -> None:
    table = pa.table(
        {
            "customer": pa.array(["a", "b"]),
            "amount": pa.array(["x", "y"]),
            "event_ts": pa.array([T0, T0], TS),
            "surprise": pa.array([1, 2]),
        }
    )
    expectations = validate_expectations(
        VIEW,
        [
            {"type": "schema"},
            {"type": "schema", "mode": "exact"},
            {"type": "range", "column": "amount", "min": 0},
            {"type": "not_null", "column": "items"},
        ],
    )
    messages = [f.message for f in run_expectations(VIEW, table, expectations, now=T0)]
    schema_problems = [
        "column 'amount' has string, which cannot be read as the declared float64",
        "column 'items' (int64) is missing",
        "column 'country' (string) is missing",
    ]
    assert messages[0] == f"schema: {schema_problems[0]} (expected the view's columns and types)"
    assert sum(m.startswith("schema: ") for m in messages) == 2 * 10 + 1  # 10 per schema check, 1 extra column
    assert "schema: columns 'surprise' are not in the view (expected exactly its columns)" in messages
    assert messages[-2].startswith("range amount: cannot read string as float64")
    assert messages[-1] == (
        "not_null items: column missing from the batch (expected a column readable as the declared type)"
    )


def test_freshness_of_an_empty_batch_and_an_empty_table_otherwise_passes() -> None:
    empty = _table(0)
    expectations = validate_expectations(VIEW, [e for e in GOOD if e["type"] != "freshness"])
    assert run_expectations(VIEW, empty, expectations, now=T0) == []
    fresh = validate_expectations(VIEW, [{"type": "freshness", "max_age_seconds": 60}])
    (failure,) = run_expectations(VIEW, empty, fresh, now=T0)
    assert failure.message == "freshness event_ts: no rows (expected an event within 60 s of 2024-03-01T00:00:00+00:00)"


# -- profiles and drift ------------------------------------------------------------------------------------


def test_profile_statistics_match_numpy_and_are_json(batch: pa.Table) -> None:
    prof = profile(VIEW, batch)
    json.dumps(prof, allow_nan=False)
    assert prof["rows"] == 100_000
    assert prof["entities"] == len(np.unique(batch.column("customer").to_numpy()))
    event_ts = batch.column("event_ts").to_numpy()  # naive UTC datetime64[us]
    assert prof["event_ts"]["min"] == str(event_ts.min()) + "+00:00"
    assert prof["event_ts"]["max"] == str(event_ts.max()) + "+00:00"

    amount = prof["features"]["amount"]
    values = batch.column("amount").drop_null().to_numpy()
    assert amount["count"] == len(values) and amount["nulls"] == 100_000 - len(values)
    assert amount["null_rate"] == pytest.approx(amount["nulls"] / 100_000)
    assert amount["min"] == values.min() and amount["max"] == values.max()
    assert amount["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert amount["std"] == pytest.approx(values.std(), rel=1e-9)
    for key, q in [("p01", 1), ("p05", 5), ("p25", 25), ("p50", 50), ("p75", 75), ("p95", 95), ("p99", 99)]:
        assert amount["quantiles"][key] == pytest.approx(np.percentile(values, q), rel=1e-12)
    hist = amount["histogram"]
    assert len(hist["edges"]) == 21 and hist["edges"][0] == values.min() and hist["edges"][-1] == values.max()
    assert sum(hist["counts"]) == len(values)
    assert hist["counts"] == np.histogram(values, bins=np.asarray(hist["edges"]))[0].tolist()

    country = prof["features"]["country"]
    assert country["kind"] == "categorical" and country["distinct"] == 4
    assert [t["value"] for t in country["top"]] == ["AE", "BH", "SA", "OM"]
    assert sum(t["count"] for t in country["top"]) == 100_000
    online = prof["features"]["online"]
    assert {t["value"] for t in online["top"]} == {True, False}
    seen = prof["features"]["first_seen"]
    assert seen["kind"] == "timestamp" and seen["min"] >= "2023-01-01" and seen["max"] < "2024-01-01"


def test_profile_edge_cases_are_json() -> None:
    table = pa.table(
        {
            "customer": ["a", "a", "b"],
            "amount": pa.array([None, None, None], pa.float64()),
            "items": [4, 4, 4],
            "score1": [float("inf"), 1.0, float("nan")],
            "country": pa.array([None, None, None], pa.string()),
            "event_ts": pa.array([T0] * 3, TS),
        }
    )
    view = FeatureViewDef(
        "acme",
        "small",
        1,
        (("customer", "string"),),
        (("amount", "float64"), ("items", "int64"), ("score1", "float64"), ("country", "string")),
    )
    prof = profile(view, table)
    json.dumps(prof, allow_nan=False)
    assert prof["entities"] == 2
    assert prof["features"]["amount"]["count"] == 0 and prof["features"]["amount"]["histogram"] is None
    assert prof["features"]["items"]["histogram"] == {
        "edges": pytest.approx([3.5 + i / 20 for i in range(21)]),
        "counts": [0] * 10 + [3] + [0] * 9,
    }
    score = prof["features"]["score1"]
    assert (score["count"], score["nulls"], score["infinite"], score["min"], score["max"]) == (2, 1, 1, 1.0, 1.0)
    assert prof["features"]["country"] == {
        "dtype": "string",
        "count": 0,
        "nulls": 3,
        "null_rate": 1.0,
        "kind": "categorical",
        "distinct": 0,
        "top": [],
    }


def test_psi_severity_thresholds() -> None:
    assert [psi_severity(x) for x in (0.0, 0.099, 0.1, 0.25, 0.2501, 3.0)] == [
        "none",
        "none",
        "moderate",
        "moderate",
        "significant",
        "significant",
    ]


def test_drift_is_none_for_the_same_distribution_and_significant_for_a_shift(batch: pa.Table) -> None:
    reference = profile(VIEW, batch)
    same = profile(VIEW, _table(50_000, seed=1), reference=reference)
    report = drift(reference, same)
    numeric = ["amount", "items", "score1", "score2", "score3", "level"]
    categorical = ["country", "online", "channel"]
    for name in numeric + categorical:
        assert report[name]["severity"] == "none", (name, report[name])
        assert report[name]["exact"] is True
        assert report[name]["psi"] < 0.01
    assert report["first_seen"]["severity"] == "unknown"

    shifted_table = _table(50_000, seed=2, shift=30.0)  # amount's mean moves by 1.5 standard deviations
    countries = np.random.default_rng(5).choice(["AE", "BH", "SA", "OM"], 50_000, p=[0.1, 0.2, 0.3, 0.4])
    shifted_table = shifted_table.set_column(
        shifted_table.schema.get_field_index("country"), "country", pa.array(countries)
    )
    shifted = profile(VIEW, shifted_table, reference=reference)
    report = drift(reference, shifted)
    assert report["amount"]["severity"] == "significant" and report["amount"]["psi"] > 1.0
    assert report["country"]["severity"] == "significant" and report["country"]["bins"] == 5
    assert report["score1"]["severity"] == "none"

    # without reference= the current profile has its own bins: drift is then an estimate, close to the exact one
    estimate = drift(reference, profile(VIEW, shifted_table))
    assert estimate["amount"]["exact"] is False
    assert estimate["amount"]["severity"] == "significant"
    assert estimate["amount"]["psi"] == pytest.approx(report["amount"]["psi"], rel=0.2)
    assert estimate["country"]["exact"] is True  # four values: the current top list is complete


def test_drift_psi_by_hand() -> None:
    view = FeatureViewDef("acme", "v", 1, (("k", "string"),), (("c", "string"),))

    def table(values: list[str]) -> pa.Table:
        return pa.table({"k": ["x"] * len(values), "c": values, "event_ts": pa.array([T0] * len(values), TS)})

    reference = profile(view, table(["a"] * 50 + ["b"] * 50))
    current = profile(view, table(["a"] * 80 + ["b"] * 20), reference=reference)
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)  # "other" is empty in both
    assert drift(reference, current)["c"]["psi"] == pytest.approx(expected)
    unseen = profile(view, table(["z"] * 100), reference=reference)
    result = drift(reference, unseen)["c"]
    assert result["severity"] == "significant" and result["exact"] is True
    assert drift(reference, {"features": {}})["c"] == {
        "kind": "categorical",
        "psi": None,
        "severity": "unknown",
        "reason": "not in current",
    }
