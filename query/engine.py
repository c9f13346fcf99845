"""`QueryEngine`: question -> oracle -> top-k chunks -> KVPager -> assembled cache -> answer.

No video prefill ever runs here: every question is answered from stored KVs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from videokv.engine.backend import HFCausalBackend
from videokv.engine.batch import pieces, start
from videokv.engine.config import EngineConfig
from videokv.engine.decode import GenerationConfig, assemble
from videokv.kvstore import Hit, KVStore, Status
from videokv.oracles.base import RelevanceOracle

from .answers import COUNT_BY, MODES, Answer, ContextTooLong, Evidence, QueryError, ReingestRequired, VideoNotReady  # noqa: F401
from .budget import POLICIES, ChunkCosts, Layout, bilevel, chunk_costs, plan, uniform
from .counting import SpanCounter, asks_count
from .grounding import WHEN_BY, MomentFinder, asks_when, chunk_scores, frame_scores, when_answer
from .hotset import HotSetCache
from .moments import FrameRuns
from .pager import KVPager
from .retrieval import Channel, search

QUESTION_VECTORS = 256      # question vectors kept (per engine; a few KiB each)


@dataclass
class Prepared:
    """A question ready to decode (QueryEngine.prepare): its record, scores and layout, the
    paged parts and the assembled cache, the text after the video (`suffix`), the generation
    settings, the budget, perf_counter times [start, retrieved, paged], the context's stats;
    or, for a question answered without decoding, `answer`."""

    rec: object
    question: str
    mode: str
    scores: dict = field(default_factory=dict)
    layout: Layout | None = None
    paged: object = None
    cache: object = None
    suffix: str = ""
    gen: GenerationConfig | None = None
    budget: int = 0
    times: list = field(default_factory=list)
    vision_calls: int = 0
    answer: Answer | None = None
    stats: tuple = (0, 0, 0)      # kv_bytes_loaded, kv_bytes_read, context_tokens
    moments: list | None = None   # the question's moments, when the adaptive top-k found them


class QueryEngine:
    def __init__(self, backend: HFCausalBackend, store: KVStore, config: EngineConfig,
                 oracle: RelevanceOracle, top_k: int = 3, always_first_last: bool = True,
                 cache_bytes: int = 1 << 30, text_oracle: RelevanceOracle | None = None,
                 text_weight: float = 1.0, h_text: str = "drop", counter: SpanCounter | None = None,
                 context_budget: int | None = None, budget_policy: str = "pyramid", open_groups: int = 8,
                 when_by: str = "moments", answer_moments: int = 3, adaptive_margin: float | None = None):
        """h_text: "drop" pages unselected (H) chunks without their timestamp/text rows,
        "keep" with them (query/hotset.py says why drop is the default). counter: answers
        "how many times" questions from the visual oracle's per-frame (else per-chunk) scores
        (query/counting.py); None leaves them to the LLM. context_budget: most positions a
        question's video context may take (None: the model's maximum less the question and
        the answer); budget_policy, open_groups: how a video that does not fit at bi-level is
        paged (query/budget.py). when_by: who answers "when" questions by default: "moments"
        (the best moment's span; query/grounding.py) or "lm"; answer_moments: how many of the
        question's best moments every answer carries. adaptive_margin: when a question's best
        moment outscores its next by this much, only the chunks it spans are loaded at L (no
        top-k, no first/last; query/grounding.py `focus`); None: always the top-k."""
        if when_by not in WHEN_BY:
            raise ValueError(f"when_by must be one of {', '.join(WHEN_BY)}; got {when_by!r}")
        self.backend, self.store, self.config, self.oracle = backend, store, config, oracle
        # Used for videos ingested with a text channel (their record names the oracle).
        self.text_oracle, self.text_weight = text_oracle, text_weight
        self.fingerprint = config.fingerprint()
        # On CUDA, questions are paged and assembled by the GPU fast path (pinned staging,
        # copies overlapped with a fused rotation); elsewhere by KVPager + assemble. Both page
        # from one hot-set cache (pinned on CUDA).
        cuda = getattr(backend.device, "type", "cpu") == "cuda"
        self.hot = HotSetCache(store, self.fingerprint, cache_bytes, h_text, pin=cuda)
        self.pager = KVPager(self.hot)
        self.fast = None
        if cuda:
            from .device_pager import DevicePager
            self.fast = DevicePager(self.hot, backend)
        self.top_k = top_k
        self.always_first_last = always_first_last
        self._embed_lock = threading.Lock()
        self._model_lock = threading.RLock()     # the LLM: decoding, and a key/query oracle's embeddings
        self.counter = counter
        frame_floor = (getattr(oracle, "count_thresholds", None) or {}).get("frame")
        self.grounding = MomentFinder(self, FrameRuns(floor=frame_floor))
        self.when_by, self.answer_moments = when_by, answer_moments
        self.adaptive_margin = adaptive_margin
        if budget_policy not in POLICIES:
            raise ValueError(f"budget_policy must be one of {', '.join(POLICIES)}; got {budget_policy!r}")
        self.context_budget, self.budget_policy, self.open_groups = context_budget, budget_policy, open_groups
        self._costs: OrderedDict[str, ChunkCosts] = OrderedDict()
        self._costs_lock = threading.Lock()
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._vectors_lock = threading.Lock()

    def forget(self, video_id: str) -> None:
        """Drop what is cached for a video (its hot sets, its costs): it was deleted."""
        self.hot.evict(video_id)
        with self._costs_lock:
            self._costs.pop(video_id, None)

    def question_vector(self, oracle: RelevanceOracle, question: str) -> np.ndarray:
        """The oracle's vector for a question [dim] (read-only), one embedding at a time: a
        search may embed while a question decodes, and the encoders' tokenizers are not safe
        to share. Kept for the last QUESTION_VECTORS questions: one question asks for it up to
        four times (focus, retrieval, its moments, a search's two lists)."""
        key = (oracle.identity, question)
        with self._vectors_lock:
            if key in self._vectors:
                self._vectors.move_to_end(key)
                return self._vectors[key]
        with self._model_lock if getattr(oracle, "uses_backend", False) else self._embed_lock:
            vec = oracle.question_vector(question).numpy()
        vec.flags.writeable = False
        with self._vectors_lock:
            self._vectors[key] = vec
            while len(self._vectors) > QUESTION_VECTORS:
                self._vectors.popitem(last=False)
        return vec

    def channels(self, question: str, with_text: bool) -> list[Channel]:
        """The retrieval channels for a question: the visual oracle, and the text oracle when
        the videos searched have a text channel."""
        out = [Channel(self.oracle.identity, self.question_vector(self.oracle, question))]
        if with_text and self.text_oracle is not None:
            out.append(Channel(self.text_oracle.identity, self.question_vector(self.text_oracle, question),
                               self.text_weight, floor=0.0))
        return out

    def has_text(self, rec) -> bool:
        """The video was indexed by this engine's text oracle (ingested with a text channel)."""
        text_id = (rec.extra or {}).get("text_oracle")
        return bool(text_id) and self.text_oracle is not None and text_id == self.text_oracle.identity

    def retrieve(self, video_id: str, question: str, top_k: int, rec=None) -> list[Hit]:
        """The top_k chunks of one video, best first (query/retrieval.py). rec: the video's
        record, if the caller has it already."""
        rec = rec or self.store.get_video(video_id)
        return search(self.store, self.channels(question, self.has_text(rec)), top_k, rec.chunks_total,
                      video_ids=[video_id])

    def search(self, query: str, top_k: int, *, tenant: str, video_ids: list[str] | None = None) -> list[Hit]:
        """The top_k chunks across the tenant's READY videos (or `video_ids` of its videos), best
        first; hybrid when any video in scope has a text channel (each oracle's scores
        standardised over its 4 x top_k best candidates)."""
        recs = ([self.store.get_video(v) for v in video_ids] if video_ids is not None
                else self.store.list_videos(tenant))
        recs = [r for r in recs if r.status is Status.READY]     # never a video still ingesting
        if not recs:
            return []
        with_text = any(self.has_text(r) for r in recs)
        return search(self.store, self.channels(query, with_text), top_k, min(1000, 4 * top_k),
                      video_ids=[r.video_id for r in recs] if video_ids is not None else None, tenant=tenant)

    def ask(self, video_id: str, question: str, *, top_k: int | None = None, mode: str = "bilevel",
            max_new_tokens: int = 48, gen: GenerationConfig | None = None,
            on_token: Callable[[str], None] | None = None, chunks: Sequence[int] | None = None,
            count_by: str | None = None, check_context: bool = True, when_by: str | None = None) -> Answer:
        """chunks: the chunk indices to load at L level, chosen by the caller instead of by the
        oracle (no retrieval runs; top_k is ignored; first/last are still added when
        always_first_last). For ablations such as bench/needle.py's random selection.
        count_by: who answers a "how many times" question: "oracle" (the span counter; the
        default when the engine has one) or "lm" (decoded like any other question).
        when_by: who answers a "when" question: "moments" (its best moment's span) or "lm"
        (default: the engine's when_by). check_context: refuse (ContextTooLong) a context the model has no positions for; off
        only to time what would not fit (bench query). One question at a time; the query
        workers decode many at once (query/serving.py) through `prepare` and `finish`."""
        with self._model_lock:
            p = self.prepare(video_id, question, top_k=top_k, mode=mode, max_new_tokens=max_new_tokens, gen=gen,
                             chunks=chunks, count_by=count_by, check_context=check_context, on_token=on_token,
                             when_by=when_by)
            if p.answer is not None:
                return p.answer
            text, first_token_at = [], None
            seq = start(self.backend, p.cache, p.suffix, p.gen)
            for piece in pieces(self.backend, seq):
                first_token_at = first_token_at or time.perf_counter()
                text.append(piece)
                if on_token:
                    on_token(piece)
        return self.finish(p, "".join(text), first_token_at, tokens=seq.steps, finish_reason=seq.finish_reason)

    def prepare(self, video_id: str, question: str, *, top_k: int | None = None, mode: str = "bilevel",
                max_new_tokens: int = 48, gen: GenerationConfig | None = None, chunks: Sequence[int] | None = None,
                count_by: str | None = None, check_context: bool = True,
                on_token: Callable[[str], None] | None = None, when_by: str | None = None) -> Prepared:
        """Everything before decoding (see `ask`): the question checked, retrieval, the layout
        within the budget, the parts paged and assembled. A counting question answered by
        the span counter comes back as `Prepared.answer`. Call it holding the model (on the
        GPU, paging runs on the device)."""
        adaptive = top_k is None and self.adaptive_margin is not None and chunks is None and mode == "bilevel"
        top_k = self.top_k if top_k is None else top_k
        rec = self._askable(video_id, question, mode, count_by, top_k, when_by)
        if (count_by or "oracle") == "oracle" and self.counter is not None and chunks is None \
                and asks_count(question):
            return Prepared(rec, question, mode, answer=self._count(rec, question, mode, on_token))
        if (when_by or self.when_by) == "moments" and chunks is None and asks_when(question):
            answer = self._when(rec, question, mode, on_token)
            if answer is not None:
                return Prepared(rec, question, mode, answer=answer)
        vision_calls = self.backend.vision_calls
        t0 = time.perf_counter()
        _, suffix = self.backend.prompt_parts(self.config.system_prompt, question)
        gen = gen or GenerationConfig(max_new_tokens=max_new_tokens, stop=("<|im_end|>",))
        budget = self.budget(video_id, len(self.backend.tokenize(suffix)), gen.max_new_tokens)
        focus, moments = self.grounding.focus(rec, question, self.adaptive_margin) if adaptive else (None, None)
        scores, layout = self._layout(rec, question, top_k, mode, chunks, budget, focus)
        t1 = time.perf_counter()
        paged, cache = self._page(video_id, layout)
        if check_context:
            self._check_fits(video_id, mode, cache, suffix, gen.max_new_tokens)
        return Prepared(rec, question, mode, scores, layout, paged, cache, suffix, gen, budget,
                        [t0, t1, time.perf_counter()], vision_calls,
                        stats=(paged.bytes_in_context, paged.bytes_read, cache.tokens), moments=moments)

    def finish(self, p: Prepared, text: str, first_token_at: float | None, end: float | None = None,
               tokens: int = 0, finish_reason: str = "") -> Answer:
        """The Answer of a prepared question decoded to `text` (first token at
        `first_token_at`, done at `end`: perf_counter times) in `tokens` tokens, ended by
        `finish_reason` ("stop" or "length")."""
        end = end or time.perf_counter()
        first_token_at = first_token_at or end
        t0, t1, t2 = p.times
        t = {"retrieve_ms": (t1 - t0) * 1e3, "load_ms": (t2 - t1) * 1e3,
             "prefill_ms": (first_token_at - t2) * 1e3, "decode_ms": (end - first_token_at) * 1e3,
             "ttft_ms": (first_token_at - t0) * 1e3}
        return Answer(text.strip(), self._evidence(p.rec, p.scores, p.layout, p.mode),
                      {k: round(v, 2) for k, v in t.items()}, *p.stats,
                      self.backend.vision_calls - p.vision_calls, p.mode, p.rec.video_id, p.question,
                      levels=p.layout.levels(), policy=p.layout.policy, context_budget=p.budget,
                      sample_fps=p.rec.sample_fps, answer_tokens=tokens, finish_reason=finish_reason,
                      moments=self.best_moments(p.rec, p.question, p.moments))

    def budget(self, video_id: str, question_tokens: int, max_new_tokens: int) -> int:
        """Positions a question's video context may take: VIDEOKV_CONTEXT_BUDGET, at most the
        model's maximum less the question and the answer."""
        limit = getattr(self.backend.config, "max_position_embeddings", None)
        room = limit - question_tokens - max_new_tokens if limit else None
        budget = min(b for b in (self.context_budget, room) if b is not None) if (self.context_budget or room) \
            else 1 << 62
        prefix = self.costs(video_id).prefix
        if budget < prefix:
            raise ContextTooLong(f"video {video_id}: a context budget of {budget} positions (VIDEOKV_CONTEXT_BUDGET="
                                 f"{self.context_budget}, model positions {limit}, question {question_tokens}, "
                                 f"answer {max_new_tokens}) does not hold even the prompt prefix ({prefix})")
        return budget

    def costs(self, video_id: str) -> ChunkCosts:
        """What each part of a READY video takes in a context, from its chunk records (kept
        for the videos asked last)."""
        with self._costs_lock:
            got = self._costs.get(video_id)
            if got is not None:
                self._costs.move_to_end(video_id)
                return got
        got = chunk_costs(self.store, self.backend, video_id, self.hot.h_text)
        with self._costs_lock:
            self._costs[video_id] = got
            while len(self._costs) > 64:
                self._costs.popitem(last=False)
        return got

    def _askable(self, video_id: str, question: str, mode: str, count_by: str | None, top_k: int,
                 when_by: str | None = None):
        """The video's record, once the question can be asked as given (else QueryError)."""
        if mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if count_by is not None and count_by not in COUNT_BY:
            raise QueryError(f"count_by must be one of {', '.join(COUNT_BY)}; got {count_by!r}")
        if when_by is not None and when_by not in WHEN_BY:
            raise QueryError(f"when_by must be one of {', '.join(WHEN_BY)}; got {when_by!r}")
        if count_by == "oracle" and self.counter is None:
            raise QueryError("count_by='oracle' needs a span counter, and this engine has none: its oracle "
                             f"({self.oracle.identity}) has no calibrated count threshold (VIDEOKV_COUNT_THRESHOLD)")
        if not question or not question.strip():
            raise QueryError("the question is empty")
        if top_k < 0:
            raise QueryError(f"top_k must be >= 0, got {top_k}")
        rec = self.store.get_video(video_id)
        if rec.status is not Status.READY:
            raise VideoNotReady(f"video {video_id} is {rec.status.value}"
                                + (f" ({rec.reason})" if rec.reason else "") + ": it can be asked once READY")
        if rec.fingerprint != self.fingerprint:
            raise ReingestRequired(f"video {video_id} was ingested with model/config fingerprint {rec.fingerprint}, "
                                   f"but this engine is {self.fingerprint}: re-ingest it with the current settings")
        return rec

    def _layout(self, rec, question: str, top_k: int, mode: str, chunks: Sequence[int] | None,
                budget: int, focus: dict[int, float] | None = None) -> tuple[dict[int, float], Layout]:
        """(scores {chunk: score} of the chosen chunks, the layout of the context). focus: the
        adaptive top-k's chunks, which then alone go at L (no retrieval, no first/last)."""
        n = rec.chunks_total
        costs = self.costs(rec.video_id)
        if chunks is not None:
            bad = [i for i in chunks if not 0 <= int(i) < n]
            if bad:
                raise QueryError(f"chunks {bad} are out of range: video {rec.video_id} has chunks 0..{n - 1}")
            hits = [Hit(rec.video_id, int(i), 0.0) for i in chunks]
        elif focus:
            hits = [Hit(rec.video_id, i, score) for i, score in focus.items()]
        else:
            hits = self.retrieve(rec.video_id, question, top_k, rec) if top_k else []
        if mode in ("dense", "sparse"):
            return {h.chunk: h.score for h in hits}, uniform(costs, "L" if mode == "dense" else "H", mode)
        ends = [0, n - 1] if self.always_first_last and n and not focus else []
        ranked = list(dict.fromkeys([h.chunk for h in hits] + ends))
        full = bilevel(costs, set(ranked))
        if full.tokens <= budget:
            return {h.chunk: h.score for h in hits}, full
        # Past the budget: every chunk's relevance decides what is kept (the visual oracle's).
        qv = self.question_vector(self.oracle, question)
        every = {h.chunk: h.score for h in self.store.search(self.oracle.identity, qv, n, video_ids=[rec.video_id])}
        relevance = np.array([every.get(i, -np.inf) for i in range(n)], dtype=np.float64)
        layout = plan(costs, ranked, relevance, budget, self.budget_policy, self.open_groups)
        return {h.chunk: h.score for h in hits}, layout

    def _page(self, video_id: str, layout: Layout):
        """(paged, assembled cache): on CUDA the fast path pages and assembles at once."""
        if self.fast is not None:
            paged = self.fast.load(video_id, layout)
            return paged, paged.cache
        paged = self.pager.load(video_id, layout)
        return paged, assemble(self.backend, paged.parts)

    def _check_fits(self, video_id: str, mode: str, cache, suffix: str, max_new_tokens: int) -> None:
        limit = getattr(self.backend.config, "max_position_embeddings", None)
        need = cache.next_pos + len(self.backend.tokenize(suffix)) + max_new_tokens
        if limit and need > limit:
            raise ContextTooLong(f"video {video_id} in {mode} mode needs {need} positions (context, question and "
                                 f"answer) and the model has {limit}: ask in bilevel mode, or with fewer chunks")

    def _evidence(self, rec, scores: dict, layout: Layout, mode: str) -> list[Evidence]:
        """The chunks the answer came from, best first: the retrieved ones with the first and
        last (sparse: the retrieved ones only), each with the level it was paged at."""
        spans = {s.index: s for s in rec.plan}
        n = rec.chunks_total
        selected = set(scores) | ({0, n - 1} if self.always_first_last and n else set())
        shown = sorted(selected) if mode != "sparse" else sorted(scores)
        return [Evidence(i, spans[i].t_start, spans[i].t_end, scores.get(i, 0.0), layout.level_of(i))
                for i in sorted(shown, key=lambda i: -scores.get(i, float("-inf")))]

    def _count(self, rec, question: str, mode: str, on_token: Callable[[str], None] | None) -> Answer:
        """A "how many times" question, answered by the span counter (no KV is loaded, nothing
        is decoded): over the per-frame scores where the video has them and the counter a
        frame threshold, else over the chunk scores. Evidence: every chunk a counted span
        touches (score: its best position's), in temporal order."""
        t0 = time.perf_counter()
        qv = self.question_vector(self.oracle, question)
        framed = frame_scores(self.store, self.oracle, rec, qv) if self.counter.frame_threshold is not None else None
        if framed is not None:
            (scores, where), level, threshold = framed, "frames", self.counter.frame_threshold
        else:
            (scores, where), level, threshold = chunk_scores(self.store, self.oracle, rec, qv), "chunks", \
                self.counter.threshold
        runs = self.counter.spans(dict(enumerate(scores.tolist())), threshold)
        spans = [(where[r[0]][1], where[r[-1]][2]) for r in runs]
        best: dict[int, float] = {}
        for pos in (p for r in runs for p in r):
            best[where[pos][0]] = max(best.get(where[pos][0], -1.0), float(scores[pos]))
        text = self.counter.answer(question, spans)
        ms = round((time.perf_counter() - t0) * 1e3, 2)
        if on_token:
            on_token(text)
        plan = {s.index: s for s in rec.plan}
        evidence = [Evidence(i, plan[i].t_start, plan[i].t_end, s, "count") for i, s in sorted(best.items())]
        return Answer(text, evidence, {"retrieve_ms": ms, "load_ms": 0.0, "prefill_ms": 0.0, "decode_ms": 0.0,
                                       "ttft_ms": ms}, 0, 0, 0, 0, mode, rec.video_id, question,
                      {"answered_by": "span-counter", "count": len(runs), "counted_over": level,
                       "threshold": threshold, "spans": [[round(a, 2), round(b, 2)] for a, b in spans]},
                      moments=self.best_moments(rec, question))

    def best_moments(self, rec, question: str, found: list | None = None) -> list[dict]:
        """The question's best moments inside the video (query/grounding.py), as dicts; found:
        its moments, when the caller has them."""
        if not self.answer_moments:
            return []
        found = found if found is not None else self.grounding.in_video(rec, question)
        return [m.to_dict() for m in found[:self.answer_moments]]

    def moments(self, query: str, *, tenant: str, video_ids: list[str] | None = None, limit: int = 10,
                page_token: str | None = None, min_score: float | None = None):
        """(a page of the query's moments, best first; the next page's token): MomentFinder.search."""
        return self.grounding.search(query, tenant=tenant, video_ids=video_ids, limit=limit,
                                     page_token=page_token, min_score=min_score)

    def _when(self, rec, question: str, mode: str, on_token: Callable[[str], None] | None) -> Answer | None:
        """A "when" question answered by its best moment (no KV loaded, nothing decoded);
        None when the video has no moment for it (the LLM answers then)."""
        t0 = time.perf_counter()
        found = self.grounding.in_video(rec, question)
        if not found:
            return None
        best = found[0]
        text = when_answer(question, best)
        ms = round((time.perf_counter() - t0) * 1e3, 2)
        if on_token:
            on_token(text)
        timings = {"retrieve_ms": ms, "load_ms": 0.0, "prefill_ms": 0.0, "decode_ms": 0.0, "ttft_ms": ms}
        return Answer(text, [Evidence(best.chunk, best.start, best.end, best.score, "moment")], timings, 0, 0, 0, 0,
                      mode, rec.video_id, question, {"answered_by": "moments", "source": best.source},
                      sample_fps=rec.sample_fps, moments=[m.to_dict() for m in found[:max(1, self.answer_moments)]])
