"""Export files write times through ``_iso_times`` (NumPy digits), which must give exactly
what Arrow's ``strftime`` with the export's format gives: every year, leap days, the last
microsecond of a day, missing values, sliced columns, and years strftime writes otherwise."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from service.services import export as export_service

FIRST, END = export_service._FOUR_DIGIT_YEARS
TS = pa.timestamp("us", tz="UTC")


def _strftime(col: pa.Array) -> pa.Array:
    return pc.strftime(col, format=export_service._TS_FORMAT)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(FIRST, END - 1)), max_size=40),
    st.integers(0, 5),
)
def test_iso_times_are_strftime_byte_for_byte(micros: list[int | None], cut: int) -> None:
    col = pa.array(micros, pa.int64()).cast(TS)
    assert export_service._iso_times(col).equals(_strftime(col))
    part = col.slice(min(cut, len(col)))  # an offset into the buffers, as a batch slice has
    assert export_service._iso_times(part).equals(_strftime(part))


def test_iso_times_at_the_edges() -> None:
    day = 86_400_000_000
    leap = 951_782_400_000_000  # 2000-02-29T00:00:00Z
    edges = [FIRST, END - 1, 0, -1, 1, leap, leap - 1, leap + day - 1, -day, None]
    col = pa.array(edges, pa.int64()).cast(TS)
    out = export_service._iso_times(col)
    assert out.equals(_strftime(col))
    assert out[0].as_py() == "0001-01-01T00:00:00.000000Z"
    assert out[1].as_py() == "9999-12-31T23:59:59.999999Z"
    assert out[5].as_py() == "2000-02-29T00:00:00.000000Z" and out[9].as_py() is None


def test_years_outside_four_digits_keep_strftime() -> None:
    col = pa.array([FIRST - 1, END, 0], pa.int64()).cast(TS)
    assert export_service._iso_times(col).equals(_strftime(col))
    assert export_service._iso_times(pa.array([], TS)).equals(_strftime(pa.array([], TS)))
