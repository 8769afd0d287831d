"""Dynamic batching: requests queue up; one runner thread takes up to `max_batch` of them, waiting
at most `max_delay` for the first one's batch to fill, whichever comes first.

Requests that arrive while the model runs are already queued when it finishes, so under load the
batches fill without waiting. The batcher waits for more only while other requests are on their
way (`arriving`: being read or decoded), so a lone client never pays `max_delay`. The queue is bounded:
`submit` raises `QueueFull` at once (the server answers 503 with Retry-After) instead of holding
memory for a backlog it cannot serve. The model runs in one dedicated thread, so the event loop
keeps accepting and decoding requests meanwhile, except a lone request to a model measured under
0.3 ms, which runs right on the loop (the two thread hops would cost more than the model).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

INLINE_MODEL_S = 0.0003


class QueueFull(Exception):
    pass


@dataclass
class Done:
    outputs: dict[str, np.ndarray]  # this request's row of every output
    queue_s: float
    model_s: float
    batch: int


class Batcher:
    def __init__(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], *, max_batch: int,
                 max_delay_s: float, queue: int, after_batch: Callable | None = None):
        self.run, self.max_batch, self.max_delay_s = run, max(1, int(max_batch)), max(0.0, float(max_delay_s))
        self.after_batch = after_batch  # (stacked inputs, outputs, queue waits, model seconds), in the model thread
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, int(queue)))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekd-model")
        self._task: asyncio.Task | None = None
        self.arriving = 0  # requests read or decoded right now (event-loop thread only): worth waiting for
        self._model_s = 1.0  # running mean of a single request's model time; starts "slow"

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """After the server stopped taking requests: finish what is queued, then stop the thread."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: dict[str, np.ndarray]) -> Done:
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((inputs, future, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFull from None
        return await future

    async def call(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stacked batch directly in the model thread (warm-up), bypassing the queue."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run, inputs)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.perf_counter() + self.max_delay_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.perf_counter()
                    if left <= 0 or not self.arriving:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            batch = [b for b in batch if not b[1].done()]  # a client that went away was cancelled
            if batch:
                try:
                    await self._run(loop, batch)
                except Exception as e:  # noqa: BLE001 -- the loop must outlive any one batch
                    logging.getLogger("edgekd.serve").error("batch failed: %s: %s", type(e).__name__, e)
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(e)

    async def _run(self, loop, batch) -> None:
        started = time.perf_counter()
        waits = [started - t0 for _, _, t0 in batch]
        try:
            stacked = {n: np.stack([b[0][n] for b in batch]) for n in batch[0][0]}
            if len(batch) == 1 and self._model_s < INLINE_MODEL_S:
                # a lone request to a sub-0.3 ms model: the hop to the model thread and back would cost more
                outs, model_s = self._timed(stacked)
            else:
                outs, model_s = await loop.run_in_executor(self._executor, self._timed, stacked)
            if len(batch) == 1:
                self._model_s = model_s if self._model_s == 1.0 else 0.9 * self._model_s + 0.1 * model_s
        except Exception as e:  # noqa: BLE001 -- every waiting request gets the error, the loop goes on
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for i, (_, future, _) in enumerate(batch):
            if not future.done():
                future.set_result(Done({k: v[i] for k, v in outs.items()}, waits[i], model_s, len(batch)))
        if self.after_batch is not None:  # metrics and drift after the answers, in the model thread's queue
            self._executor.submit(self._after, stacked, outs, waits, model_s)

    def _timed(self, stacked):
        t0 = time.perf_counter()
        outs = self.run(stacked)
        return outs, time.perf_counter() - t0

    def _after(self, *args) -> None:
        try:
            self.after_batch(*args)
        except Exception as e:  # noqa: BLE001 -- bookkeeping must never stop the model thread
            logging.getLogger("edgekd.serve").error("after a batch: %s: %s", type(e).__name__, e)
