"""Admission: the per-model image budget, its stages and its deadline (no model, no server)."""

from __future__ import annotations

import asyncio

import pytest

from server.admission import Admission, Stage
from server.errors import QueueFull


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
