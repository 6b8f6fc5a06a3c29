"""Admission: the per-model image budget, its stages and its deadline (no model, no server)."""

from __future__ import annotations

import asyncio

import pytest

from contract.errors import QueueFull
from server.flow.admission import CAPACITY_MEMORY_S, Admission, Stage, Ticket


@pytest.mark.asyncio
async def test_budget_is_taken_and_given_back() -> None:
    adm = Admission("m", capacity=3, timeout=5.0)
    with adm.admit(2) as ticket:
        assert (adm.in_flight, adm.decoding, ticket.stage) == (2, 2, Stage.DECODING)
        ticket.queued()
        assert (adm.in_flight, adm.decoding, ticket.stage) == (2, 0, Stage.QUEUED)
    assert (adm.in_flight, adm.decoding) == (0, 0)


@pytest.mark.asyncio
async def test_over_capacity_is_refused_and_takes_nothing() -> None:
    adm = Admission("m", capacity=3, timeout=5.0)
    held = adm.admit(2)
    with pytest.raises(QueueFull) as e:
        adm.admit(2)
    assert e.value.message == (
        "model 'm' is at capacity: 2 of 3 images in flight (decoding, queued or running), "
        "2 more asked; retry later"
    )
    assert adm.in_flight == 2 and adm.decoding == 2
    assert e.value.retry_after == 1 and e.value.status == 503
    held.release()


@pytest.mark.asyncio
async def test_grow_takes_more_or_nothing() -> None:
    adm = Admission("m", capacity=4, timeout=5.0)
    ticket = adm.admit(1)
    ticket.grow(2)
    assert (ticket.images, adm.in_flight, adm.decoding) == (3, 3, 3)
    with pytest.raises(QueueFull):
        ticket.grow(2)
    assert (ticket.images, adm.in_flight) == (3, 3)
    ticket.grow(0)  # a single-image request: nothing to take
    ticket.release()
    ticket.release()  # idempotent
    assert (adm.in_flight, adm.decoding) == (0, 0)


@pytest.mark.asyncio
async def test_released_while_decoding_clears_the_backlog() -> None:
    adm = Admission("m", capacity=4, timeout=5.0)
    ticket = adm.admit(3)
    ticket.release()
    ticket.queued()  # too late: nothing moves
    assert (adm.in_flight, adm.decoding) == (0, 0)


@pytest.mark.asyncio
async def test_deadline_is_set_at_admission() -> None:
    adm = Admission("m", capacity=1, timeout=0.25)
    before = asyncio.get_running_loop().time()
    ticket = adm.admit()
    assert before + 0.25 <= ticket.deadline <= asyncio.get_running_loop().time() + 0.25
    assert 0 < ticket.remaining() <= 0.25
    ticket.release()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        Admission("m", capacity=0, timeout=1.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_is_unknown_until_completions_span_a_quarter_second() -> None:
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock)
    assert adm.rate() is None
    adm.completed(4)
    clock.now += 0.1
    adm.completed(4)
    assert adm.rate() is None  # two events, 0.1 s
    clock.now += 0.1
    adm.completed(4)
    assert adm.rate() is None  # three events, 0.2 s
    clock.now += 0.1
    adm.completed(4)
    assert adm.rate() == pytest.approx(12 / 0.3)  # images after the first event / span


def test_a_request_that_would_wait_past_its_deadline_is_refused_at_the_door() -> None:
    """At 20 images/s and a 1 s deadline, 20 images in flight is the most that can still be
    dispatched in time: the 21st is refused now instead of timing out later."""
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock)
    held = adm.admit(18)
    for _ in range(11):  # 2 images every 0.1 s while busy: 20 images/s
        adm.completed(2)
        clock.now += 0.1
    assert adm.rate() == pytest.approx(20.0)
    two = adm.admit(2)  # 20 in flight: (18 + 2) / 20 = 1.0 s, just in time
    with pytest.raises(QueueFull) as e:
        adm.admit(1)
    assert e.value.message == (
        "model 'm' is finishing about 20.0 images/s: this request's images would wait about "
        "1.05 s, more than its queue timeout of 1 s; retry later"
    )
    assert adm.in_flight == 20
    two.release()
    held.release()
    # Idle: the history is dropped (an interval spanning idle time is not a rate).
    assert adm.in_flight == 0 and adm.rate() is None
    adm.admit(50).release()  # without a rate, the capacity alone applies


def test_old_completions_leave_the_window() -> None:
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock)
    for _ in range(5):
        adm.completed(10)
        clock.now += 0.1
    clock.now += 5.0
    adm.completed(1)
    assert adm.rate() is None  # only the last completion is within the window


def test_a_stale_rate_expires_with_time_alone() -> None:
    """A slow spell, then one request holding the model busy: the old rate must not keep
    refusing work after its window, even though no completion arrives to prune it."""
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock)
    held = adm.admit(1)
    for _ in range(11):  # 2 images/s
        adm.completed(1)
        clock.now += 0.5
    with pytest.raises(QueueFull, match="would wait about"):
        adm.admit(30)
    clock.now += 3.0
    assert adm.rate() is None
    adm.admit(30).release()
    held.release()


def test_images_the_engines_take_at_once_wait_for_nobody() -> None:
    """With room for a batch of 32 running, a 32-image request behind one in flight is not
    refused for a slow recent rate: only the images beyond that headroom must wait."""
    clock = FakeClock()
    adm = Admission("m", capacity=200, timeout=2.0, clock=clock, headroom=32)
    held = adm.admit(1)
    for _ in range(11):  # 10 images/s
        adm.completed(1)
        clock.now += 0.1
    adm.admit(31).release()  # (1 + 31 - 32) = 0 ahead
    adm.admit(40).release()  # 9 ahead: 0.9 s
    with pytest.raises(QueueFull, match=r"would wait about 2\.10 s"):
        adm.admit(52)  # 21 ahead: 2.1 s > 2 s
    held.release()


def test_grow_after_queued_is_a_programming_error() -> None:
    adm = Admission("m", capacity=4, timeout=1.0, clock=FakeClock())
    ticket = adm.admit(1)
    ticket.queued()
    with pytest.raises(RuntimeError, match="grow after queued"):
        ticket.grow(1)
    ticket.release()
    assert (adm.in_flight, adm.decoding) == (0, 0)


@pytest.mark.asyncio
async def test_the_deadline_counts_from_the_end_of_the_body() -> None:
    adm = Admission("m", capacity=1, timeout=0.25)
    ticket = adm.admit()
    await asyncio.sleep(0.1)  # the upload: the client's time, not the server's
    ticket.body_complete()
    assert ticket.remaining() == pytest.approx(0.25, abs=0.02)
    ticket.release()


def backlog(adm: Admission, clock: FakeClock, held: int, per_step: int, steps: int) -> Ticket:
    """``held`` images past their upload, ``per_step`` of them finishing every 0.1 s."""
    ticket = adm.admit(held)
    ticket.body_complete()
    for _ in range(steps):
        adm.completed(per_step)
        clock.now += 0.1
    return ticket


def test_a_burst_after_a_quiet_spell_is_judged_by_the_capacity_seen_under_backlog() -> None:
    """Saturated, the model finished 40 images/s; then a trickle kept it in flight at 2
    images/s. The finishing rate now says 2 (what was asked), the capacity still 40 (what it
    can do): a 30-image burst is admitted (23 ahead of the headroom: 0.58 s at 40/s), where the
    finishing rate alone would have refused it for an 11.5 s wait."""
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock, headroom=8)
    backlog(adm, clock, held=20, per_step=4, steps=11).release()  # 20 > 8: a backlog
    trickle = adm.admit(1)
    trickle.body_complete()
    for _ in range(6):  # 1 image every 0.5 s, 1 in flight: no backlog
        adm.completed(1)
        clock.now += 0.5
    assert adm.finishing_rate() == pytest.approx(2.0)
    assert adm.backlog_rate() == pytest.approx(40.0)
    assert adm.rate() == pytest.approx(40.0)
    burst = adm.admit(30)
    assert adm.in_flight == 31
    burst.release()
    trickle.release()


def test_the_capacity_clock_runs_only_while_a_backlog_stands() -> None:
    """Two saturated spells of 0.5 s at 20 images/s with 3 s without a backlog between them:
    the capacity is 20/s (images over backlog seconds), not diluted by the gap."""
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock, headroom=4)
    backlog(adm, clock, held=10, per_step=2, steps=6).release()
    clock.now += 3.0
    spell = backlog(adm, clock, held=10, per_step=2, steps=5)
    assert adm.backlog_rate() == pytest.approx(20.0)  # 20 images after the first / 1.0 s
    assert adm.finishing_rate() == pytest.approx(20.0)  # this spell alone, within the window
    spell.release()


def test_images_still_uploading_are_no_backlog() -> None:
    """Admitted but their bodies not in: the model is not behind, so what it finishes
    meanwhile is demand, not capacity."""
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock, headroom=4)
    uploading = adm.admit(50)
    for _ in range(11):
        adm.completed(2)
        clock.now += 0.1
    assert adm.backlog_rate() is None and adm.finishing_rate() == pytest.approx(20.0)
    uploading.body_complete()
    assert adm.working == 50
    uploading.release()
    assert (adm.working, adm.in_flight) == (0, 0)


def test_a_measured_capacity_is_forgotten_after_its_memory() -> None:
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock, headroom=4)
    backlog(adm, clock, held=10, per_step=4, steps=11).release()
    assert adm.backlog_rate() == pytest.approx(40.0)
    clock.now += CAPACITY_MEMORY_S
    assert adm.backlog_rate() is None


def test_a_batch_completing_at_once_counts_as_one_instant() -> None:
    """A batch of 32 one-image requests completes as 32 events at one time: a rate taken from
    there must not count the other 31 as finished within the span (that doubled the rate of a
    slow model: batches of 32 a second apart are 32 images/s, not (31 + 64) / 2)."""
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock, headroom=4)
    held = adm.admit(40)
    held.body_complete()
    for _ in range(3):
        for _ in range(32):
            adm.completed(1)
        clock.now += 1.0
    clock.now -= 1.0
    assert adm.finishing_rate() == pytest.approx(32.0)  # 64 images after the first instant / 2 s
    assert adm.backlog_rate() == pytest.approx(32.0)
    held.release()


def test_behind_a_backlog_the_headroom_is_not_subtracted() -> None:
    """Saturated at 40 images/s with a backlog standing (20 images past their upload, headroom
    8), a 1 s timeout admits only what drains in 1 s counting everything in flight: 20 + 20
    = 1.0 s is admitted, 20 + 21 refused. Subtracting the headroom there admitted
    20 + 28 (1.2 s of work), which overload measured as deadline drops (server/flow/admission.py)."""
    clock = FakeClock()
    adm = Admission("m", capacity=100, timeout=1.0, clock=clock, headroom=8)
    held = backlog(adm, clock, held=20, per_step=4, steps=11)
    assert adm.rate() == pytest.approx(40.0)
    adm.admit(20).release()
    with pytest.raises(QueueFull, match=r"would wait about 1\.02 s"):
        adm.admit(21)
    held.release()
    # Without a backlog (nothing past its upload) the engines' headroom still comes first.
    idle = adm.admit(1)
    adm.admit(40).release()  # 1 + 40 - 8 = 33 ahead: 0.83 s at the remembered 40/s
    idle.release()
