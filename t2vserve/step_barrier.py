"""Step barrier: the sampling loops of one server on one device send their denoiser calls together.

Triton's dynamic batcher joins the requests queued at a denoiser entry within ``max_queue_delay_microseconds``
of the oldest. Independent loops drift out of phase: while loop A's batch executes, loop B's next step queues
alone, its delay runs out, and it executes alone the moment A's finishes, while A's next step arrives a
sampler update later and waits for B's. The loops then take turns at batch 2 and never share a step
(measured, H100: with four clients half the steps ran in pairs; with eight, batches of 6 and 2 took turns).

Here every loop (``scheduler`` instances are processes, ``t2v_stream`` runs one per worker thread) holds a
slot in a small table shared through a file in ``/dev/shm`` (one per server process and device) and, before each
denoiser call, waits until no other loop of the device is

* **computing** (between two calls: its sampler update; it is about to send), or
* **in flight for longer than the window** (its call was dispatched in another batch: it returns within a step),

and then sends. Loops released together reach the batcher within a fraction of a millisecond, so the batcher's
delay can be short (``spec.DENOISER_QUEUE_DELAY_US``), and a lone request, which never waits here, pays only
that delay per step. A loop in flight for less than the window has a call still queued: sending now joins it.
A loop that leaves its slot ``away`` (the stream's progress callback, which may decode a preview) is not
waited for, and no wait lasts longer than ``cap_s`` (a stuck or killed partner; a wait that reaches it frees the
slots of loops whose process died).

No Triton and no torch here: the tests drive it from threads and processes directly.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

#: Slot states. ``AWAY`` is held outside the loop's calls and updates (progress callbacks): never waited for.
IDLE, COMPUTING, IN_FLIGHT, READY, AWAY = 0, 1, 2, 3, 4
#: Loops of one device that can hold a slot at once (scheduler instances + stream workers, with room to spare).
SLOTS = 64
_FIELDS = 3  # pid, state, since (monotonic ns: when the state began)
#: Where the tables live (tmpfs: no disk writes); the server launcher removes its server's tables when it stops.
BARRIER_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
BARRIER_PREFIX = "t2v-step-barrier-"


def table_path(server_pid: int, device: str) -> Path:
    """The table of the loops of server process ``server_pid`` on ``device`` ("cuda:0", "host")."""
    return BARRIER_DIR / f"{BARRIER_PREFIX}{server_pid}-{device.replace(':', '')}"


def remove_tables(server_pid: int) -> list[Path]:
    """Delete server ``server_pid``'s tables (after it stopped); the paths removed."""
    removed = []
    for path in BARRIER_DIR.glob(f"{BARRIER_PREFIX}{server_pid}-*"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StepBarrier:
    """One process's view of a device's table; ``join`` gives a loop its slot for one request."""

    def __init__(self, path: Path, window_us: int, poll_s: float = 1e-4, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.path, self.window_ns, self.poll_s, self.clock = path, int(window_us) * 1000, poll_s, clock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = SLOTS * _FIELDS * 8
            if os.fstat(fd).st_size < size:
                fcntl.flock(fd, fcntl.LOCK_EX)  # the first process to open it sizes it
                try:
                    if os.fstat(fd).st_size < size:
                        os.ftruncate(fd, size)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.table = np.frombuffer(self._map, dtype=np.int64).reshape(SLOTS, _FIELDS)
        self._lock = threading.Lock()  # flock does not exclude the threads of one process

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The table to this thread alone: threads of this process (a lock) and other processes (flock)."""
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def join(self) -> "LoopSlot":
        """Claim a free slot (or one whose process died) for one request's loop; state COMPUTING."""
        pid = os.getpid()
        with self._exclusive():
            for index in range(SLOTS):
                owner = int(self.table[index, 0])
                if owner == 0 or (owner != pid and not _alive(owner)):
                    self.table[index, 2] = self.clock()
                    self.table[index, 1] = COMPUTING
                    self.table[index, 0] = pid
                    return LoopSlot(self, index)
        raise RuntimeError(f"step barrier {self.path}: all {SLOTS} slots are taken")

    def blocking(self, index: int) -> int:
        """How many other loops the loop in slot ``index`` should wait for now."""
        table = self.table
        states, since = table[:, 1], table[:, 2]
        waiting_for = (table[:, 0] != 0) & ((states == COMPUTING) | ((states == IN_FLIGHT) & (self.clock() - since > self.window_ns)))
        waiting_for[index] = False
        return int(waiting_for.sum())

    def reap(self) -> int:
        """Free the slots of loops whose process died (a stub killed mid-request); how many."""
        freed = 0
        with self._exclusive():
            for index in range(SLOTS):
                owner = int(self.table[index, 0])
                if owner and owner != os.getpid() and not _alive(owner):
                    self.table[index, 1], self.table[index, 0] = IDLE, 0
                    freed += 1
        return freed

    def close(self) -> None:
        self.table = None  # type: ignore[assignment]  # release the buffer before the map
        self._map.close()
        os.close(self._fd)


class LoopSlot:
    """One loop's slot: ``wait_turn`` before each denoiser call, ``returned`` after it, ``leave`` at the end."""

    def __init__(self, barrier: StepBarrier, index: int) -> None:
        self.barrier, self.index = barrier, index
        self.waits, self.waited_s = 0, 0.0  # calls that waited, and how long in all

    def _set(self, state: int) -> None:
        row = self.barrier.table[self.index]
        row[2] = self.barrier.clock()
        row[1] = state

    def wait_turn(self, cap_s: float) -> float:
        """Wait (at most ``cap_s``) until no other loop of the device is computing or long in flight, then mark this
        one in flight; the seconds waited."""
        self._set(READY)
        start = time.perf_counter()
        deadline, slept = start + cap_s, False
        while self.barrier.blocking(self.index):
            if time.perf_counter() >= deadline:
                self.barrier.reap()  # a partner that never came may have died: it is not waited for again
                break
            time.sleep(self.barrier.poll_s)
            slept = True
        self._set(IN_FLIGHT)
        if not slept:
            return 0.0
        waited = time.perf_counter() - start
        self.waits, self.waited_s = self.waits + 1, self.waited_s + waited
        return waited

    def returned(self) -> None:
        """The call answered: computing the next one."""
        self._set(COMPUTING)

    def away(self) -> None:
        """Out of the loop's critical path (a progress callback): others do not wait for this loop."""
        self._set(AWAY)

    def leave(self) -> None:
        row = self.barrier.table[self.index]
        row[1] = IDLE
        row[0] = 0


#: The loops' barrier counters as Triton custom metrics (``LoopSlot`` field -> name, help), labels model and version.
BARRIER_METRICS = {
    "waits": ("t2v_step_barrier_waits_total", "Denoiser calls that waited at the step barrier for another loop of the device"),
    "waited_s": ("t2v_step_barrier_wait_seconds_total", "Seconds denoiser calls waited at the step barrier"),
}
#: Longest wait for a partner: this many times the loop's previous call (a partner's call in flight returns within
#: about one), never more than ``MAX_WAIT_S`` (the first call: ``MAX_WAIT_S``) nor less than ``MIN_WAIT_S``.
WAIT_CALLS, MIN_WAIT_S, MAX_WAIT_S = 2.0, 0.02, 1.0


def wait_cap_s(previous_call_s: float | None) -> float:
    """How long a loop waits for its partners before a call, from its previous call's seconds (None: the first)."""
    if previous_call_s is None:
        return MAX_WAIT_S
    return min(MAX_WAIT_S, max(MIN_WAIT_S, WAIT_CALLS * previous_call_s))
