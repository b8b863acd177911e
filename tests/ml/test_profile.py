import json
import random

from service.ml.profile import DataProfile, build_profile, drift_report, out_of_range


def test_profile_round_trip_and_contents(datasets):
    d = datasets["credit_data"]
    prof = build_profile(d.rows, d.fields)
    again = DataProfile.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert again == prof
    inc = prof.fields["Income"]
    assert 0 < inc["missing_rate"] < 0.2
    assert inc["min"] <= inc["p01"] <= inc["q1"] <= inc["p99"] <= inc["max"]
    assert prof.fields["Home"]["closed"] and "rent" in prof.fields["Home"]["frequencies"]
    text = build_profile(datasets["fine_foods"].rows, datasets["fine_foods"].fields)
    assert text.fields["review"]["len_max"] >= text.fields["review"]["len_p50"] > 0
    assert not text.fields["product"]["closed"]  # ids: new values are normal


def test_out_of_range_rules(datasets):
    d = datasets["credit_data"]
    prof = build_profile(d.rows, d.fields)
    typical = dict(d.rows[0])
    assert out_of_range(prof, typical) == []
    assert out_of_range(prof, {**typical, "Income": None, "Home": None}) == []
    assert out_of_range(prof, {**typical, "Amount": 10**9}) == ["Amount"]
    assert out_of_range(prof, {**typical, "Age": -500}) == ["Age"]
    assert out_of_range(prof, {**typical, "Home": "castle"}) == ["Home"]
    f = datasets["fine_foods"]
    tprof = build_profile(f.rows, f.fields)
    row = dict(f.rows[0])
    assert out_of_range(tprof, {**row, "product": "B0NEWPRODUCT"}) == []
    huge = "word " * int(tprof.fields["review"]["len_max"] * 3)
    assert out_of_range(tprof, {**row, "review": huge}) == ["review"]


def test_drift_report(datasets):
    d = datasets["credit_data"]
    prof = build_profile(d.rows[:2000], d.fields)
    same = drift_report(prof, d.rows[2000:3000])
    assert same["Income"]["psi"] < 0.1
    shifted = [
        {**r, "Income": (r["Income"] or 0) * 5, "Home": "castle", "Job": None}
        for r in d.rows[2000:3000]
    ]
    rep = drift_report(prof, shifted)
    assert rep["Income"]["psi"] > 0.5
    assert rep["Income"]["psi_p_value"] < 1e-6
    assert rep["Home"]["unseen_rate"] == 1.0
    assert rep["Job"]["missing_rate_change"] > 0.9
    json.dumps(rep)


def test_range_checker_agrees_with_out_of_range_on_every_dataset_row():
    from service.ml.datasets import load_dataset
    from service.ml.profile import build_profile, out_of_range, range_checker

    for name in ("credit_data", "fine_foods", "letter"):
        rows, _labels, fields, _label_set = load_dataset(name)
        profile = build_profile(rows[:500], fields)
        check = range_checker(profile)
        extremes = [{**rows[0], f["name"]: 1e12} for f in fields if f["type"] == "number"]
        extremes += [
            {**rows[0], f["name"]: "never-seen"} for f in fields if f["type"] == "category"
        ]
        extremes += [{**rows[0], f["name"]: "x" * 100_000} for f in fields if f["type"] == "text"]
        for row in rows + extremes:
            assert check(row) == out_of_range(profile, row)


def test_field_psi_on_a_small_unchanged_sample_is_not_significant(datasets):
    """A few dozen rows move a tied field's PSI past the warning level by chance; the
    p-value (against the training count kept in the profile) says it is noise."""
    d = datasets["credit_data"]
    rows = list(d.rows)
    random.Random(0).shuffle(rows)  # the file is sorted in places: an i.i.d. stream
    prof = build_profile(rows[:2000], d.fields)
    assert prof.fields["Expenses"]["present"] == 2000
    reports = [drift_report(prof, rows[2000 + 40 * k : 2040 + 40 * k]) for k in range(40)]
    psis = [r["Expenses"]["psi"] for r in reports]
    p_values = [r["Expenses"]["psi_p_value"] for r in reports]
    assert max(psis) > 0.25  # PSI alone would warn
    assert sum(p < 0.001 for p in p_values) <= 1


def test_range_checker_answers_a_batch_as_it_answers_each_row():
    """``RangeChecker.many`` (a batch's rows at once, number fields as NumPy columns) flags
    exactly what the row-at-a-time check flags: on validated input (floats), at the bounds
    themselves and just beyond, on missing and non-finite values, and on raw rows whose
    values need the converters (the whole batch then goes row by row)."""
    import math

    from service.input_schema import fast_validator
    from service.ml.datasets import load_dataset
    from service.ml.profile import build_profile, numeric_bounds, range_checker

    for name in ("credit_data", "fine_foods", "letter"):
        rows, _labels, fields, _label_set = load_dataset(name)
        profile = build_profile(rows[:500], fields)
        check = range_checker(profile)
        validate = fast_validator(fields, 100_000)
        validated = [v for v in (validate(row) for row in rows[:2000]) if v is not None]
        assert len(validated) > 1000, name
        edges: list[dict] = []
        for spec in fields:
            field = spec["name"]
            if spec["type"] == "number" and numeric_bounds(profile.fields[field]):
                low, high = numeric_bounds(profile.fields[field])
                beyond = (math.nextafter(low, -math.inf), math.nextafter(high, math.inf))
                for x in (low, high, *beyond):
                    edges.append({**validated[0], field: x})
                for x in (math.nan, math.inf, -math.inf, None):
                    edges.append({**validated[0], field: x})
            elif spec["type"] == "category":
                edges += [{**validated[0], field: v} for v in ("never-seen", None)]
            elif spec["type"] == "text":
                edges += [{**validated[0], field: v} for v in ("x" * 100_000, None)]
        # Every field out at once: the names come in the profile's order.
        everything = dict(validated[0])
        for spec in fields:
            everything[spec["name"]] = {"number": 1e12, "category": "never-seen"}.get(
                spec["type"], "x" * 100_000
            )
        batch = [*validated, *edges, everything]
        flagged = check.many(batch)
        assert flagged == [check(row) for row in batch], name
        assert any(flagged), name  # the edges beyond the bounds are flagged
        assert check.many(rows) == [check(row) for row in rows], name  # raw: converters
        assert check.many([]) == []
