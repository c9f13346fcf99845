"""`QuestionServer`: one model, many questions in flight, decoded together (continuous batching).

A single model thread runs this loop:

    admit   questions waiting, up to max_batch in flight: each is prepared (retrieval, layout,
            paging, assembly: QueryEngine.prepare) and gets its own question prefill and first
            token (engine.batch.start); a counting question answered by the span counter, or
            one that fails, is done at once
    step    one decode step for every question in flight (engine.batch.step); text pieces go
            to each question's `on_token`; finished questions leave with their Answer

so a question that arrives while others decode joins at the next step instead of waiting
for them. `max_batch=1` is one question at a time through the same code (the baseline the
service bench compares with). Answers are the same either way (greedy: identical text).
Questions and their answers cross threads through `concurrent.futures.Future`.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from videokv.engine import batch
from videokv.engine.decode import GenerationConfig

from .engine import QueryEngine


@dataclass
class Ticket:
    """A question submitted to the server: what to ask (QueryEngine.prepare's arguments), where
    its text pieces go, and the future its Answer (or error) lands in."""

    video_id: str
    question: str
    params: dict
    on_token: Callable[[str], None] | None = None
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    prepared: object = None
    first_token_at: float | None = None
    text: list[str] = field(default_factory=list)


class QuestionServer:
    """engine: the QueryEngine whose model this server owns; max_batch: questions decoded
    together at most (1: one at a time)."""

    def __init__(self, engine: QueryEngine, max_batch: int = 16):
        self.engine, self.max_batch = engine, max(1, int(max_batch))
        self._inbox: queue.Queue[Ticket | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="videokv-model", daemon=True)
        self._stop = False
        self._thread.start()

    # ------------------------------------------------------------------ API
    def submit(self, video_id: str, question: str, on_token: Callable[[str], None] | None = None,
               **params) -> Future:
        """Queue a question; its Future resolves to the Answer (or raises what ask would)."""
        t = Ticket(video_id, question, params, on_token)
        self._inbox.put(t)
        return t.future

    def close(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._inbox.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the model thread
    def _loop(self) -> None:
        active: list[tuple[Ticket, batch.Sequence]] = []
        while not self._stop:
            self._admit(active, block=not active)
            if not active:
                continue
            seqs = [s for _, s in active]
            with self.engine._model_lock:
                batch.step(self.engine.backend, seqs)
            for t, s in active:
                self._emit(t, s)
            active[:] = [(t, s) for t, s in active if not self._finished(t, s)]

    def _admit(self, active: list, block: bool) -> None:
        """Prepare the waiting questions while there is room (blocking for the first when
        nothing is in flight) and start them together: one forward for all their question
        prefills."""
        ready: list[Ticket] = []
        while len(active) + len(ready) < self.max_batch:
            try:
                t = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            except queue.Empty:
                break
            if t is None:
                break
            block = False
            if not t.future.set_running_or_notify_cancel():
                continue
            try:
                with self.engine._model_lock:
                    t.prepared = self.engine.prepare(t.video_id, t.question, on_token=t.on_token, **t.params)
            except BaseException as e:      # noqa: BLE001 - the error is the question's answer
                t.future.set_exception(e)
                continue
            if t.prepared.answer is not None:
                t.future.set_result(t.prepared.answer)
            else:
                ready.append(t)
        if not ready:
            return
        try:
            with self.engine._model_lock:
                seqs = batch.start_many(self.engine.backend, [(t.prepared.cache, t.prepared.suffix,
                                                              t.prepared.gen or GenerationConfig(), t) for t in ready])
        except BaseException as e:          # noqa: BLE001
            for t in ready:
                t.future.set_exception(e)
            return
        for t, seq in zip(ready, seqs):
            t.prepared.cache = t.prepared.paged = None      # the sequence holds its own copy now
            self._emit(t, seq)
            if not self._finished(t, seq):
                active.append((t, seq))

    def _emit(self, t: Ticket, s: batch.Sequence) -> None:
        if s.pieces and t.first_token_at is None:
            t.first_token_at = time.perf_counter()
        for piece in s.pieces:
            t.text.append(piece)
            if t.on_token is not None:
                try:
                    t.on_token(piece)
                except Exception:           # noqa: BLE001 - a listener gone away stops nothing
                    t.on_token = None
        s.pieces.clear()

    def _finished(self, t: Ticket, s: batch.Sequence) -> bool:
        if not s.done:
            return False
        s.cache = None                      # free the sequence's KV now
        try:
            ans = self.engine.finish(t.prepared, "".join(t.text), t.first_token_at, tokens=s.steps,
                                     finish_reason=s.finish_reason)
            ans.timings["queued_ms"] = round((t.prepared.times[0] - t.submitted) * 1e3, 2)
            t.future.set_result(ans)
        except BaseException as e:          # noqa: BLE001
            t.future.set_exception(e)
        return True
