"""One backoff for every retry: exponential from the first delay to the cap, jittered into the upper half."""
from tasks.backoff import compute_backoff


def test_the_ceiling_doubles_per_attempt_up_to_the_cap():
    assert [compute_backoff(n, first=0.5, cap=10, jitter=False) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert compute_backoff(10_000, first=30, cap=600, jitter=False) == 600  # no overflow on a long outage


def test_jitter_stays_within_the_upper_half_of_the_ceiling_and_varies():
    for attempt, ceiling in [(0, 1.0), (3, 8.0), (50, 30.0)]:
        delays = {compute_backoff(attempt, first=1.0, cap=30.0) for _ in range(200)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert len(delays) > 1
