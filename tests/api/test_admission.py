"""service/admission.py: the in-flight bound, the bounded queue, its timeout."""

from __future__ import annotations

import asyncio

import pytest

from service.admission import Admission, QueueFull, QueueTimeout


async def _hold(admission: Admission, release: asyncio.Event, entered: list[int], tag: int) -> None:
    async with admission.slot():
        entered.append(tag)
        await release.wait()


async def test_requests_beyond_the_bound_wait_in_order_and_run_when_a_slot_frees():
    admission = Admission(max_in_flight=2, max_queue=5, queue_timeout_s=10)
    release, entered = asyncio.Event(), []
    tasks = [asyncio.create_task(_hold(admission, release, entered, i)) for i in range(4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert entered == [0, 1]
    assert (admission.in_flight, admission.waiting) == (2, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert entered == [0, 1, 2, 3]
    assert (admission.in_flight, admission.waiting) == (0, 0)


async def test_full_queue_is_refused_at_once_with_a_retry_hint():
    admission = Admission(max_in_flight=1, max_queue=1, queue_timeout_s=30)
    release, entered = asyncio.Event(), []
    holder = asyncio.create_task(_hold(admission, release, entered, 0))
    waiter = asyncio.create_task(_hold(admission, release, entered, 1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert admission.would_refuse()
    with pytest.raises(QueueFull) as refused:
        async with admission.slot():
            pass
    assert refused.value.retry_after_s >= 1
    release.set()
    await asyncio.gather(holder, waiter)
    assert not admission.would_refuse()


async def test_waiting_past_the_queue_timeout_gives_up_and_frees_its_place():
    admission = Admission(max_in_flight=1, max_queue=4, queue_timeout_s=0.05)
    release, entered = asyncio.Event(), []
    holder = asyncio.create_task(_hold(admission, release, entered, 0))
    await asyncio.sleep(0)
    with pytest.raises(QueueTimeout):
        async with admission.slot():
            pass
    assert admission.waiting == 0
    release.set()
    await holder
    async with admission.slot():  # the slot count is intact after the timeout
        assert admission.in_flight == 1


async def test_zero_queue_refuses_as_soon_as_every_slot_is_taken():
    admission = Admission(max_in_flight=1, max_queue=0, queue_timeout_s=1)
    async with admission.slot():
        with pytest.raises(QueueFull):
            async with admission.slot():
                pass
