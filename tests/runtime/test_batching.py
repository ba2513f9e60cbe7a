"""scripts/runtime/batching.py: greedy micro-batching keeps each caller's results, batches what
queued while a batch ran, bounds batch size, never waits to fill a batch, runs its workers side by
side each on its own thread, and contains failures."""
import asyncio
import threading
import time

import pytest

from scripts.runtime.batching import MicroBatcher, QueueFull


def test_concurrent_requests_share_batches_and_get_their_own_results():
    calls = []

    def run(items):
        calls.append(list(items))
        time.sleep(0.02)  # while one batch runs, the others queue
        return [x * 10 for x in items]

    async def main():
        b = MicroBatcher(run, max_items=64)
        results = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(20)))
        return b, results

    b, results = asyncio.run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    assert b.batches == len(calls) < 20  # fewer calls than requests
    assert sorted(x for c in calls for x in c) == sorted(list(range(20)) + list(range(100, 120)))


def test_a_batch_never_exceeds_max_items_but_takes_an_oversized_request_alone():
    sizes = []

    def run(items):
        sizes.append(len(items))
        time.sleep(0.01)
        return list(items)

    async def main():
        b = MicroBatcher(run, max_items=5)
        reqs = [[1, 2], [3, 4], [5, 6], list(range(9)), [7]]
        return await asyncio.gather(*(b.submit(r) for r in reqs)), reqs

    got, reqs = asyncio.run(main())
    assert got == reqs
    assert all(s <= 5 for s in sizes if s != 9) and 9 in sizes


def test_a_lone_request_does_not_wait():
    """Each request alone is run at once as its own batch of one: nothing waits for a batch to
    fill. A batcher that did would hang here (the deadline is far above any thread hop)."""
    sizes = []

    def run(items):
        sizes.append(len(items))
        return items

    async def main():
        b = MicroBatcher(run, max_items=8)
        for i in range(20):
            assert await asyncio.wait_for(b.submit([i]), timeout=5) == [i]

    asyncio.run(main())
    assert sizes == [1] * 20


def test_a_failing_batch_fails_its_callers_only_and_the_batcher_goes_on():
    started = threading.Event()

    def run(items):
        started.set()
        if "bad" in items:
            raise ValueError("boom")
        return items

    async def main():
        b = MicroBatcher(run, max_items=1)  # one request per batch: the failure stays in its own
        bad = asyncio.ensure_future(b.submit(["bad"]))
        good = asyncio.ensure_future(b.submit(["ok"]))
        with pytest.raises(ValueError, match="boom"):
            await bad
        assert await good == ["ok"]
        assert await b.submit(["later"]) == ["later"]

    asyncio.run(main())
    assert started.is_set()


@pytest.mark.parametrize("bad", [dict(max_items=0), dict(workers=0)])
def test_max_items_and_workers_must_be_positive(bad):
    with pytest.raises(ValueError, match="must be ≥ 1"):
        MicroBatcher(lambda x: x, **bad)


def test_fast_batches_run_on_the_loop_and_slow_ones_in_a_thread():
    def make(seconds):
        threads = []

        def run(items):
            threads.append(threading.get_ident())
            time.sleep(seconds)
            return items
        return run, threads

    async def drive(run, n=12):
        b = MicroBatcher(run, inline_below_s=0.05)
        for i in range(n):
            await b.submit([i])
        return threading.get_ident()

    fast, fast_threads = make(0.0)
    loop_thread = asyncio.run(drive(fast))
    assert fast_threads[0] != loop_thread  # unknown cost: the first call goes to a thread
    assert set(fast_threads[1:]) == {loop_thread}
    slow, slow_threads = make(0.1)
    loop_thread = asyncio.run(drive(slow, 4))
    assert loop_thread not in slow_threads


def test_workers_run_batches_side_by_side_each_always_on_its_own_thread():
    """Two workers: two batches run at once (a second call starts while the first sleeps), and
    every call of a worker runs on that worker's one thread (torch's OpenMP pool belongs to the
    thread that calls it), set-up included."""
    threads, running, overlapped = [], [0], [False]
    lock = threading.Lock()

    def run(items):
        with lock:
            running[0] += 1
            overlapped[0] |= running[0] > 1
            threads.append(threading.get_ident())
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return items

    async def main():
        b = MicroBatcher(run, max_items=1, workers=2)
        setup = {b.on_worker(n, threading.get_ident) for n in range(2)}
        got = await asyncio.gather(*(b.submit([i]) for i in range(20)))
        return b, setup, got

    b, setup, got = asyncio.run(main())
    assert got == [[i] for i in range(20)] and b.batches == 20
    assert overlapped[0]
    assert set(threads) == setup and len(setup) == 2 and threading.get_ident() not in setup


def test_with_several_workers_nothing_runs_on_the_loop():
    """Inline calls would serialize the workers: with more than one, every call takes a thread."""
    threads = []

    def run(items):
        threads.append(threading.get_ident())
        return items

    async def main():
        b = MicroBatcher(run, workers=2, inline_below_s=10.0)
        for i in range(10):
            await b.submit([i])
        return threading.get_ident()

    assert asyncio.run(main()) not in threads


def test_a_request_beyond_max_pending_waiting_is_refused_and_the_queue_then_drains():
    """One batch runs (held), two requests wait: a fourth is refused at once; once the held batch
    ends, every accepted request gets its result and the batcher takes requests again."""
    release = threading.Event()

    def run(items):
        release.wait(5)
        return [x + 1 for x in items]

    async def main():
        b = MicroBatcher(run, max_items=1, max_pending=2)
        running = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)  # the first batch has left the queue and holds the worker
        waiting = [asyncio.ensure_future(b.submit([i])) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="2 requests already wait"):
            await b.submit([3])
        release.set()
        done = await asyncio.gather(running, *waiting)
        return done, await b.submit([9])

    done, again = asyncio.run(main())
    assert done == [[1], [2], [3]] and again == [10]


def test_max_pending_must_be_positive():
    with pytest.raises(ValueError, match="max_pending"):
        MicroBatcher(lambda items: items, max_pending=0)
