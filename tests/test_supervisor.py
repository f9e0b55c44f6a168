"""The supervisor restarts a dead thread after a backoff, and gives up on one that keeps dying."""
from monitor.supervisor import RESTART_LIMIT, RESTART_WINDOW, Periodic, Service, Supervisor


class Dies(Service):
    """A thread with a bug: it raises as soon as it runs."""

    def run(self) -> None:
        raise RuntimeError("boom")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def die(service: Service) -> None:
    service.join(5)
    assert not service.is_alive()


def test_a_dead_thread_is_restarted_after_a_backoff_and_counted():
    clock = Clock()
    supervisor = Supervisor(clock=clock)
    dies = Dies("reader")
    dies.start()
    supervisor.watch("reader", dies)
    die(dies)
    assert supervisor.check() is None and dies.starts == 1  # the restart waits for its backoff
    assert dies.counters.get("reader.crashed") == 1 and dies.last_error == "RuntimeError: boom"
    clock.now += 30
    assert supervisor.check() is None and dies.starts == 2
    assert supervisor.counters.get("reader.restarts") == 1


def test_a_thread_that_keeps_dying_within_the_window_stops_the_daemon_and_old_deaths_are_forgotten():
    clock = Clock()
    supervisor = Supervisor(clock=clock)
    dies = Dies("reader")
    dies.start()
    supervisor.watch("reader", dies)
    for _ in range(RESTART_LIMIT + 1):  # deaths a window apart never add up
        die(dies)
        assert supervisor.check() is None
        clock.now += RESTART_WINDOW
        assert supervisor.check() is None  # the restart

    supervisor = Supervisor(clock=clock)
    dies2 = Dies("stream")
    dies2.start()
    supervisor.watch("stream", dies2)
    for _ in range(RESTART_LIMIT - 1):
        die(dies2)
        assert supervisor.check() is None
        clock.now += 8.1  # past the longest restart delay so far (1, 2, 4, 8 s), all within the window
        assert supervisor.check() is None
    die(dies2)
    assert supervisor.check() == f"the stream thread died {RESTART_LIMIT} times within {RESTART_WINDOW:g}s " \
                                 "(RuntimeError: boom)"


def test_a_thread_that_may_not_be_restarted_stops_the_daemon_when_it_dies():
    supervisor = Supervisor(clock=Clock())
    dies = Dies("writer")
    dies.start()
    supervisor.watch("writer", dies, restart=False)
    die(dies)
    assert supervisor.check() == "the writer thread died (RuntimeError: boom)"


def test_a_periodic_job_runs_until_stopped():
    calls = []
    loop = Periodic("tick", 0.01, lambda: calls.append(1), at_start=True)
    loop.start()
    while len(calls) < 3:
        loop.join(0.01)
    loop.stop()
    loop.join(5)
    assert not loop.is_alive()
