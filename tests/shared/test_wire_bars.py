"""Bars on the wire: the columnar fast path agrees with the per-bar models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from shared.data.synthetic import synthetic_bars
from shared.serving.schemas import ActRequest, Bar, SessionBars
from shared.serving.wire_bars import bars_from_models, bars_to_wire, plain_bars


def wire(n: int = 200, seed: int = 0) -> list[dict]:
    bars = synthetic_bars("random_walk", n, seed=seed)
    return json.loads(json.dumps(bars_to_wire(bars)))


def by_models(items: list) -> object:
    """What the per-bar models make of `items`: Bars, or the ValidationError's type."""
    try:
        return bars_from_models([Bar.model_validate(b) for b in items])
    except (ValidationError, ValueError) as exc:
        return type(exc)


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("ts", "open", "high", "low", "close", "volume"))


def test_plain_bars_equal_the_models():
    items = wire()
    fast = plain_bars(items)
    assert fast is not None and same(fast, by_models(items))
    assert fast.ts.dtype == np.dtype("datetime64[ns]") and fast.close.dtype == np.float64


@pytest.mark.parametrize(
    "ts",
    [
        "2024-03-04T10:00:00Z",
        "2024-03-04T10:00:00.5Z",
        "2024-03-04T10:00:00.123456Z",
        "2024-03-04T11:30:00+01:30",
        "2024-03-04T05:00:00-05:00",
        "2024-03-04T10:00:00+00:00",
        "2024-03-04T10:00:00-00:00",
        "2024-03-04T23:00:00+23:59",
        "2024-03-04T10:00:00+24:00",
        "2024-03-04T10:00:00+05:60",
        "2024-03-04T24:00:00Z",
        "2024-03-04T23:59:60Z",
        "2023-02-29T10:00:00Z",
        "2024-02-29T10:00:00Z",
        "1969-12-31T23:00:00Z",
        "2199-12-31T23:00:00Z",
        "2200-01-01T00:00:00Z",
        "2024-03-04 10:00:00Z",
        "2024-03-04T10:00:00z",
        "2024-03-04T10:00:00",
        "2024-03-04T10:00Z",
        "2024-03-04T10:00:00.1234567Z",
    ],
)
def test_timestamps_agree_or_fall_back(ts):
    """Whatever the fast path accepts, the models accept with the same instant."""
    items = wire(3)
    items[-1]["ts"] = ts
    items[0]["ts"], items[1]["ts"] = "1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z"
    fast, slow = plain_bars(items), by_models(items)
    if fast is not None:
        assert isinstance(slow, type(fast)) and same(fast, slow), (ts, slow)


def test_refusals_fall_back_to_the_models():
    """Every bar the fast path declines is left to the models, which refuse it too
    (or, for a number sent as a string, accept it: lax JSON is still served)."""
    good = wire(20)
    refused = []
    for field, value in [
        ("high", 0.5),  # below low
        ("open", 1e9),
        ("close", -1.0),
        ("low", float("nan")),
        ("volume", -1.0),
        ("volume", float("inf")),
        ("open", True),
        ("open", 10**400),
        ("colour", "red"),
    ]:
        bad = [dict(b) for b in good]
        bad[5][field] = value
        refused.append(bad)
    swapped = [dict(b) for b in good]
    swapped[7]["ts"] = swapped[6]["ts"]
    missing = [dict(b) for b in good]
    del missing[3]["close"]
    for case in [*refused, swapped, missing]:
        assert plain_bars(case) is None and by_models(case) in (ValidationError, ValueError)
    for case in ([], "bars", [1, 2]):
        assert plain_bars(case) is None
    text = [dict(b) for b in good]
    text[5]["open"] = str(text[5]["open"])
    assert plain_bars(text) is None and same(by_models(text), plain_bars(good))
    ints = [dict(b, open=2, high=3, low=1, close=2, volume=5) for b in good]  # integers are numbers
    assert same(plain_bars(ints), by_models(ints))


def test_requests_hold_bars_and_name_bad_ones():
    items = wire(190)
    request = ActRequest.model_validate({"bars": items, "position": {"side": 1, "bars_held": 3}})
    assert same(request.bars, by_models(items))
    assert same(ActRequest.model_validate_json(json.dumps({"bars": items})).bars, request.bars)
    again = ActRequest.model_validate_json(request.model_dump_json())  # serialised as bar objects
    assert same(again.bars, request.bars)
    assert same(ActRequest(bars=request.bars).bars, request.bars)  # Bars from Python (the client)
    broken = [dict(b) for b in items]
    broken[5]["high"] = broken[5]["low"] - 0.001
    with pytest.raises(ValidationError) as err:
        ActRequest.model_validate({"bars": broken})
    assert err.value.errors()[0]["loc"] == ("bars", 5)
    unordered = [dict(b) for b in items]
    unordered[7]["ts"] = unordered[6]["ts"]
    with pytest.raises(ValidationError, match=r"bars\[7\]\.ts"):
        ActRequest.model_validate({"bars": unordered})
    with pytest.raises(ValidationError):
        SessionBars.model_validate({"bars": []})
    schema = ActRequest.model_json_schema()
    assert schema["properties"]["bars"]["anyOf"][0]["items"] == {"$ref": "#/$defs/Bar"}
