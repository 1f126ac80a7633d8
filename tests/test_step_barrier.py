"""The sampling loops' step barrier (``t2vserve.step_barrier``): who waits for whom, across threads and processes,
and what it does to the batches a Triton-like dynamic batcher forms from independent loops."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from t2vserve.step_barrier import (
    AWAY, COMPUTING, IN_FLIGHT, MAX_WAIT_S, MIN_WAIT_S, StepBarrier, remove_tables, table_path, wait_cap_s,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "table"


def test_a_lone_loop_never_waits(path: Path) -> None:
    slot = StepBarrier(path, window_us=1000).join()
    for _ in range(5):
        assert slot.wait_turn(cap_s=1.0) < 0.05
        slot.returned()
    slot.leave()
    assert slot.waits == 0


@pytest.mark.parametrize("state, age_s, waits", [
    (COMPUTING, 0.0, True),  # between two calls: about to send
    (IN_FLIGHT, 0.5, True),  # dispatched in another batch: back within a step
    (IN_FLIGHT, 0.0, False),  # still queued at the batcher: send now to join it
    (AWAY, 0.0, False),  # a progress callback: not waited for
])
def test_who_waits_for_whom(path: Path, state: int, age_s: float, waits: bool) -> None:
    barrier = StepBarrier(path, window_us=50_000)
    me, partner = barrier.join(), barrier.join()
    partner._set(state)
    barrier.table[partner.index, 2] -= int(age_s * 1e9)
    assert barrier.blocking(me.index) == int(waits)
    waited = me.wait_turn(cap_s=0.2)  # nobody releases the partner: the cap ends the wait
    assert (waited >= 0.2) == waits and (waited < 0.1) == (not waits)
    assert barrier.table[me.index, 1] == IN_FLIGHT


def test_the_wait_ends_when_the_partner_is_ready(path: Path) -> None:
    barrier = StepBarrier(path, window_us=1000)
    me, partner = barrier.join(), barrier.join()  # both computing
    threading.Timer(0.1, lambda: partner.wait_turn(cap_s=1.0)).start()
    waited = me.wait_turn(cap_s=2.0)
    assert 0.08 < waited < 1.0 and me.waits == 1 and me.waited_s == pytest.approx(waited)


def _hold_a_slot(path: str, joined, release) -> None:  # runs in another process
    slot = StepBarrier(Path(path), window_us=1000).join()
    joined.set()
    release.wait(10)
    slot.returned()
    os._exit(0)  # no leave(): a stub that died mid-request


def test_processes_share_the_table_and_a_dead_loops_slot_is_reclaimed(path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    joined, release = context.Event(), context.Event()
    other = context.Process(target=_hold_a_slot, args=(str(path), joined, release))
    other.start()
    assert joined.wait(60)
    barrier = StepBarrier(path, window_us=1000)
    me = barrier.join()
    assert barrier.blocking(me.index) == 1  # the other process's loop is computing
    release.set()
    other.join(30)
    assert barrier.blocking(me.index) == 1  # it died holding its slot
    assert 0.1 <= me.wait_turn(cap_s=0.1) < 1.0  # waited for once, up to the cap, which frees its slot
    assert barrier.blocking(me.index) == 0 and me.wait_turn(cap_s=1.0) < 0.05
    claimed = [barrier.join() for _ in range(2)]  # the freed slot is claimed again
    assert {s.index for s in claimed} | {me.index} == {0, 1, 2} and barrier.table[:, 0].tolist().count(os.getpid()) == 3


def test_the_wait_cap_follows_the_previous_call() -> None:
    assert wait_cap_s(None) == MAX_WAIT_S
    assert wait_cap_s(0.0001) == MIN_WAIT_S
    assert wait_cap_s(0.1) == pytest.approx(0.2)
    assert wait_cap_s(100.0) == MAX_WAIT_S


def test_a_servers_tables_are_removed_with_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("t2vserve.step_barrier.BARRIER_DIR", tmp_path)
    for device in ("cuda:0", "cuda:1", "host"):
        StepBarrier(table_path(4242, device), window_us=1000).close()
    StepBarrier(table_path(4243, "cuda:0"), window_us=1000).close()
    assert sorted(p.name for p in remove_tables(4242)) == ["t2v-step-barrier-4242-cuda0", "t2v-step-barrier-4242-cuda1", "t2v-step-barrier-4242-host"]
    assert [p.name for p in tmp_path.iterdir()] == ["t2v-step-barrier-4243-cuda0"]


class Batcher:
    """Triton's dynamic batcher in miniature: one instance; a batch is the queue when the instance is free and the
    oldest request has waited ``delay_s`` (a request that waited while the instance was busy goes at once)."""

    def __init__(self, delay_s: float, execute_s: float) -> None:
        self.delay_s, self.execute_s = delay_s, execute_s
        self.queue: list[tuple[float, threading.Event]] = []
        self.batches: list[int] = []
        self.lock, self.stop = threading.Condition(), False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def call(self) -> None:
        done = threading.Event()
        with self.lock:
            self.queue.append((time.monotonic(), done))
            self.lock.notify()
        done.wait()

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.queue and not self.stop:
                    self.lock.wait()
                if self.stop:
                    return
                while (wait := self.queue[0][0] + self.delay_s - time.monotonic()) > 0:
                    self.lock.wait(wait)  # a new request notifies: wait out the oldest one's delay
                batch, self.queue = self.queue, []
            time.sleep(self.execute_s)
            self.batches.append(len(batch))
            for _, done in batch:
                done.set()

    def close(self) -> None:
        with self.lock:
            self.stop = True
            self.lock.notify()
        self.thread.join()


def _loops(batcher: Batcher, barrier: StepBarrier | None, loops: int, steps: int) -> None:
    def loop(index: int) -> None:
        time.sleep(0.013 * index)  # the requests arrive out of phase, as independent clients' do
        slot = barrier.join() if barrier is not None else None
        for step in range(steps):
            time.sleep(0.002 + 0.001 * ((index + step) % 3))  # the sampler update between two calls
            if slot is not None:
                slot.wait_turn(cap_s=1.0)
            batcher.call()
            if slot is not None:
                slot.returned()
        if slot is not None:
            slot.leave()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(loops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_loops_out_of_phase_share_batches_with_the_barrier_and_take_turns_without(path: Path) -> None:
    """Four loops that start 13 ms apart, 12 steps of a 40 ms execution each, a 1 ms batcher delay: without the
    barrier they take turns (each arrives while another's batch executes, and waits past the delay: batches 3, 1,
    3, 1, ...); with it they fall into step at the second call and nearly every execution carries all four."""
    without = Batcher(delay_s=0.001, execute_s=0.04)
    _loops(without, None, loops=4, steps=12)
    without.close()
    together = Batcher(delay_s=0.001, execute_s=0.04)
    _loops(together, StepBarrier(path, window_us=1000), loops=4, steps=12)
    together.close()
    assert sum(without.batches) == sum(together.batches) == 48
    assert len(together.batches) <= 16 < 20 <= len(without.batches), (without.batches, together.batches)
    assert together.batches.count(4) >= 9 and without.batches.count(4) <= 2, (without.batches, together.batches)
