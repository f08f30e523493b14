"""Groups waiting generation requests into one ``backend.generate`` call (for ``ptgym serve``).

Handler threads put requests on a queue; one worker thread takes the oldest request plus every
waiting request with the same sampling parameters and runs them as one ``generate`` call, so
clients that arrive while the model is busy share the next batch. A request's ``seed`` s gives its
rows the per-prompt seeds s, s + 1, ... of ``backend.py``'s seeding contract, so a seeded
request's samples depend on the request only: seeded requests batch with seeded ones, unseeded
with unseeded.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from .backend import Backend, Completion, SamplingParams, row_seeds


@dataclass
class _Job:
    prompts: list[list[int]]
    params: SamplingParams  # with seed=None: the per-prompt seeds are in ``seeds``
    seeds: list[int] | None
    future: Future = field(default_factory=Future)


class Batcher:
    """Groups waiting requests into one ``backend.generate`` call (see the module docstring).

    ``batches`` and ``requests`` count the calls made and the requests served.
    """

    def __init__(self, backend: Backend, max_rows: int = 64):
        self.backend, self.max_rows = backend, max_rows
        self.batches = self.requests = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: list[_Job] = []  # taken from the queue but not batchable with the last group
        self._thread = threading.Thread(target=self._run, name="ptgym-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Block until this request's completions (one per prompt, in order) are ready."""
        seeds = row_seeds(len(prompts), params, None)
        job = _Job(prompts, replace(params, seed=None), seeds)
        self._queue.put(job)
        return job.future.result()

    def _next_group(self) -> list[_Job] | None:
        first = self._held.pop(0) if self._held else self._queue.get()
        if first is None:
            return None
        group, rows = [first], len(first.prompts)
        seeded = first.seeds is not None
        waiting = self._held + self._drain()
        self._held = []
        for job in waiting:
            if job is None:
                self._held.append(job)  # stop after this group
            elif (
                job.params == first.params
                and (job.seeds is not None) == seeded
                and rows + len(job.prompts) <= self.max_rows
            ):
                group.append(job)
                rows += len(job.prompts)
            else:
                self._held.append(job)
        return group

    def _drain(self) -> list[_Job | None]:
        jobs = []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs

    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            prompts = [p for job in group for p in job.prompts]
            seeds = None if group[0].seeds is None else [s for job in group for s in job.seeds]
            try:
                completions = self.backend.generate(prompts, group[0].params, seeds)
            except Exception as exc:  # handed to the waiting request threads
                for job in group:
                    job.future.set_exception(exc)
                continue
            self.batches += 1
            self.requests += len(group)
            start = 0
            for job in group:
                job.future.set_result(completions[start : start + len(job.prompts)])
                start += len(job.prompts)
