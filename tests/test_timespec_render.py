"""--since/--until parsing and the text helpers of the history commands (pure functions)."""
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from monitor.commands.render import fmt_duration, fmt_time, one_line, table, to_csv
from monitor.commands.timespec import parse_timespec, resolve_time

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize("text, age", [
    ("30s", timedelta(seconds=30)), ("15m", timedelta(minutes=15)), ("2h", timedelta(hours=2)),
    ("7d", timedelta(days=7)), ("1w", timedelta(weeks=1)), (" 24h ", timedelta(hours=24)), ("0s", timedelta(0)),
])
def test_relative_ages_count_back_from_now(text, age):
    assert resolve_time(text, SHANGHAI, NOW) == NOW - age


@pytest.mark.parametrize("text, expected", [
    ("2026-11-23T14:00", datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)),  # naive: Asia/Shanghai
    ("2026-11-23 14:00:30", datetime(2026, 11, 23, 6, 0, 30, tzinfo=timezone.utc)),
    ("2026-11-23", datetime(2026, 11, 22, 16, 0, tzinfo=timezone.utc)),  # local midnight
    ("2026-11-23T06:00Z", datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)),
    ("2026-11-23T08:00:00+02:00", datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)),
])
def test_iso_times_naive_ones_in_the_configured_zone(text, expected):
    result = resolve_time(text, SHANGHAI, NOW)
    assert result == expected and result.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "15", "15 minutes", "-5m", "2026-11-31", "", "1y"])
def test_bad_times_say_what_is_accepted(text):
    with pytest.raises(ValueError, match="is not a time: use ISO 8601"):
        parse_timespec(text)


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0.0004, "0ms"), (0.25, "250ms"), (1.0, "1.0s"), (12.34, "12s"), (65, "1m05s"),
    (3599.6, "1h00m"), (7380, "2h03m"), (3 * 86400 + 4 * 3600, "3d04h"),
])
def test_durations(seconds, text):
    assert fmt_duration(seconds) == text


def test_times_shown_in_the_zone_and_text_cut_to_one_line():
    assert fmt_time(NOW, SHANGHAI) == "2026-11-23 14:00:00" and fmt_time(None, SHANGHAI) == "-"
    assert one_line("ValueError('x')\nmore", 40) == "ValueError('x')"
    assert one_line("a" * 10, 5) == "aaaa…" and one_line(None, 5) == "-"


def test_table_aligns_columns():
    assert table(("A", "NUM"), [("x", 1), ("long", None)], right=(1,)).splitlines() == [
        "A     NUM", "----  ---", "x       1", "long    -"]


def test_csv_uses_empty_cells_for_null_and_local_iso_times():
    out = to_csv([{"id": "a", "at": NOW, "n": None}], ["id", "at", "n"], SHANGHAI)
    assert out == "id,at,n\na,2026-11-23T14:00:00+08:00,\n"
