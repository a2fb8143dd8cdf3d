"""service/admission.py: cost-sized permits, the FIFO queue, early refusals, the adaptive limit."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.admission import (
    TOLERANCE,
    Admission,
    CongestionLimit,
    Overloaded,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)

LATER = 3600.0  # a deadline far away


def fixed(max_in_flight: int, max_queue: int = 8, queue_timeout_s: float = 10) -> Admission:
    return Admission(max_in_flight, max_queue, queue_timeout_s, adaptive=False)


async def _hold(admission: Admission, release: asyncio.Event, entered: list[int], tag: int, cost: int = 1,
                deadline_s: float = LATER) -> None:
    async with admission.permit(cost, time.monotonic() + deadline_s):
        entered.append(tag)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_beyond_the_limit_wait_in_order_and_run_when_a_permit_frees():
    admission = fixed(2)
    release, entered = asyncio.Event(), []
    tasks = [asyncio.create_task(_hold(admission, release, entered, i)) for i in range(4)]
    await _settle()
    assert entered == [0, 1]
    assert (admission.in_flight, admission.waiting) == (2, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert entered == [0, 1, 2, 3]
    assert (admission.in_flight, admission.waiting) == (0, 0)


async def test_cost_counts_engine_sequences_and_no_newcomer_jumps_the_queue():
    admission = fixed(4)
    release, entered = asyncio.Event(), []
    first = asyncio.create_task(_hold(admission, release, entered, 0, cost=2))
    big = asyncio.create_task(_hold(admission, release, entered, 1, cost=3))  # 2 + 3 > 4: waits
    small = asyncio.create_task(_hold(admission, release, entered, 2, cost=1))  # would fit, but queues behind
    await _settle()
    assert entered == [0] and (admission.in_flight, admission.waiting) == (2, 4)
    release.set()
    await asyncio.gather(first, big, small)
    assert entered == [0, 1, 2]


async def test_a_request_costlier_than_the_limit_runs_alone():
    admission = fixed(2)
    release, entered = asyncio.Event(), []
    alone = asyncio.create_task(_hold(admission, release, entered, 0, cost=10))
    after = asyncio.create_task(_hold(admission, release, entered, 1))
    await _settle()
    assert entered == [0] and admission.in_flight == 10
    release.set()
    await asyncio.gather(alone, after)
    assert entered == [0, 1]


async def test_full_queue_is_refused_at_once_with_a_retry_hint():
    admission = fixed(1, max_queue=1, queue_timeout_s=30)
    release, entered = asyncio.Event(), []
    holder = asyncio.create_task(_hold(admission, release, entered, 0))
    waiter = asyncio.create_task(_hold(admission, release, entered, 1))
    await _settle()
    with pytest.raises(QueueFull) as refused:
        async with admission.permit(1, time.monotonic() + LATER):
            pass
    assert refused.value.retry_after_s >= 1
    release.set()
    await asyncio.gather(holder, waiter)


async def test_waiting_past_the_queue_timeout_gives_up_and_frees_its_place():
    admission = fixed(1, queue_timeout_s=0.05)
    release, entered = asyncio.Event(), []
    holder = asyncio.create_task(_hold(admission, release, entered, 0))
    await asyncio.sleep(0)
    with pytest.raises(QueueTimeout):
        async with admission.permit(1, time.monotonic() + LATER):
            pass
    assert admission.waiting == 0
    release.set()
    await holder
    async with admission.permit(1, time.monotonic() + LATER):  # the count is intact after the timeout
        assert admission.in_flight == 1


async def test_a_cancelled_waiter_leaves_no_trace():
    admission = fixed(1)
    release, entered = asyncio.Event(), []
    holder = asyncio.create_task(_hold(admission, release, entered, 0))
    waiter = asyncio.create_task(_hold(admission, release, entered, 1))
    await _settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert (admission.in_flight, admission.waiting) == (1, 0)
    release.set()
    await holder
    assert (admission.in_flight, admission.waiting) == (0, 0) and entered == [0]


async def test_the_queue_wait_ends_at_the_request_deadline():
    admission = fixed(1, queue_timeout_s=30)
    release, entered = asyncio.Event(), []
    holder = asyncio.create_task(_hold(admission, release, entered, 0))
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(QueueTimeout):
        async with admission.permit(1, time.monotonic() + 0.05):
            pass
    assert time.monotonic() - started < 1
    release.set()
    await holder


async def test_work_that_cannot_finish_in_time_is_refused_at_once():
    admission = fixed(1)
    admission.service_s = 2.0  # measured: a request takes 2 s with its permit
    release, entered = asyncio.Event(), []
    holder = asyncio.create_task(_hold(admission, release, entered, 0))
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:  # 2 s of waiting + 2 s of service > 3 s
        async with admission.permit(1, time.monotonic() + 3):
            pass
    assert time.monotonic() - started < 0.1
    assert 1 <= refused.value.retry_after_s <= 2  # jittered within the predicted wait
    waiter = asyncio.create_task(_hold(admission, release, entered, 1, deadline_s=10))  # fits in 10 s: queued
    await _settle()
    assert admission.waiting == 1
    release.set()
    await asyncio.gather(holder, waiter)


async def test_close_answers_every_queued_request_and_refuses_newcomers():
    admission = fixed(1)
    release, entered = asyncio.Event(), []
    holder = asyncio.create_task(_hold(admission, release, entered, 0))
    waiters = [asyncio.create_task(_hold(admission, release, entered, i)) for i in (1, 2)]
    await _settle()
    admission.close()
    for waiter in waiters:
        with pytest.raises(ShuttingDown):
            await waiter
    with pytest.raises(ShuttingDown):
        async with admission.permit(1, time.monotonic() + LATER):
            pass
    release.set()
    await holder
    assert (admission.in_flight, admission.waiting) == (0, 0)


def test_the_limit_grows_while_the_time_per_token_stays_flat():
    limit = CongestionLimit(maximum=64)
    assert limit.value == 1
    for _ in range(400):  # 4 calls at each limit before it grows
        limit.observe_call(0.010, 10)  # 1 ms per token whatever the load: a GPU
        limit.observe_request(busy=int(limit.value))
    assert limit.value == 64


def test_the_limit_settles_where_the_time_per_token_passes_the_tolerance():
    # A saturated engine: the time per token grows with the sequences at once (2 CPU cores).
    limit = CongestionLimit(maximum=64)
    for _ in range(400):
        busy = int(limit.value)
        limit.observe_call(0.001 * busy, 1)
        limit.observe_request(busy=busy)
    assert 1 <= limit.value <= TOLERANCE + 2


def test_a_fixed_limit_never_moves():
    limit = CongestionLimit(maximum=5, adaptive=False)
    for _ in range(50):
        limit.observe_call(10.0, 1)
        limit.observe_request(busy=5)
    assert limit.value == 5


def test_the_limit_does_not_grow_when_it_does_not_bind():
    limit = CongestionLimit(maximum=64)
    for _ in range(50):
        limit.observe_call(0.01, 10)
        limit.observe_request(busy=0)
    assert limit.value == 1
