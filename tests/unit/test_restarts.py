"""The workers' restart policy (server.restarts), on a fake clock: backoff per slot, its
reset after a healthy run, misses, and when the server gives up."""

from __future__ import annotations

from server.restarts import (
    BACKOFF_MAX_S,
    GIVE_UP_MISSES,
    HEALTHY_AFTER_S,
    Slot,
    no_worker_can_serve,
)


def served(slot: Slot, start: float, ready_after: float = 5.0) -> None:
    slot.started(start)
    slot.ready(start + ready_after)


def test_deaths_in_a_row_double_the_wait_up_to_the_cap() -> None:
    slot, now, delays = Slot(0), 0.0, []
    for _ in range(8):
        served(slot, now)
        now += 10.0  # ready for 5 s only: not healthy
        delays.append(slot.exited(now))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert BACKOFF_MAX_S == 30.0
    assert slot.misses == 0  # each got ready: none was a miss


def test_a_worker_ready_long_enough_resets_its_slot() -> None:
    slot = Slot(0)
    for t in (0.0, 20.0, 40.0):
        served(slot, t)
        slot.exited(t + 10.0)
    assert slot.deaths == 3
    served(slot, 100.0, ready_after=5.0)
    assert slot.exited(105.0 + HEALTHY_AFTER_S) == 1.0  # served 60 s: back to 1 s
    assert slot.deaths == 1


def test_a_worker_dying_while_loading_is_a_miss_and_ready_clears_misses() -> None:
    slot = Slot(1)
    slot.started(0.0)
    assert not slot.serving
    assert slot.exited(3.0) == 1.0
    slot.started(4.0)
    assert slot.exited(6.0) == 2.0
    assert slot.misses == 2 and not slot.ever_ready
    served(slot, 8.0)
    assert slot.serving and slot.misses == 0 and slot.ever_ready
    assert slot.exited(20.0) == 4.0  # the run of deaths goes on: ready 7 s only


def test_no_worker_can_serve_only_when_none_is_ready_and_every_slot_kept_missing() -> None:
    a, b = Slot(0), Slot(1)
    served(b, 0.0)
    for i in range(GIVE_UP_MISSES):
        a.started(10.0 * i)
        a.exited(10.0 * i + 1)
    assert a.misses == GIVE_UP_MISSES
    assert not no_worker_can_serve([a, b])  # b serves
    b.exited(50.0)  # b dies after serving: not a miss
    assert not no_worker_can_serve([a, b])
    for i in range(GIVE_UP_MISSES - 1):
        b.started(60.0 + i)
        b.exited(60.5 + i)
        assert not no_worker_can_serve([a, b])
    b.started(70.0)
    b.exited(71.0)
    assert no_worker_can_serve([a, b])
    b.started(80.0)  # a try in progress does not count as serving until it is ready
    assert no_worker_can_serve([a, b])
    b.ready(85.0)
    assert not no_worker_can_serve([a, b])
