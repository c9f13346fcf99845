"""`videokv bench text`: what the text channel (issue 9) buys in retrieval and answers, and
what it costs at ingest.

Videos made in the run (ingest.textsynth.make_text_video; --videos of --minutes, default 3 of
10; --quick: 2 of 3), with real names and places (held out from the adapter's pseudo-names):
  match          scoreboard + game clock all along; 10-s banners "GOAL: MARTINEZ",
                 "YELLOW CARD: KOWALSKI", ... at a few points of the game;
  announcements  a station: clock and two banners ("WELCOME TO YORK"), spoken announcements
                 (espeak-ng: "the train to leeds leaves from platform four"), the same as .srt;
  lecture        slides as banners, spoken sentences, an .srt.
A question has keys (a correct answer contains one as a word, any case) and expected chunks
(those overlapping the banner, or the voiced span of the sentence).

Each video is ingested with no text channel and once per source it has (ocr; asr and subtitle
with speech): the same file with other channels is another content, so a full ingest each.
Banner questions go to the ocr ingest, speech questions to the asr and the subtitle ingests:
  retrieval  recall@1/@3 of the text oracle alone (its own FAISS index), the visual oracle
             alone, the hybrid (QueryEngine.retrieve), and chance (k random chunks);
  answers    accuracy of QueryEngine.ask (bilevel) on the text ingest vs the no-text ingest of
             the same file: the same questions;
  diagnosis  whether a key is in the source's extracted text of the expected chunks, and in
             their rendered (token-capped) lines: a miss is the extractor's, the cap's, or
             retrieval's/the model's.
Ingest cost per video: frames/s of each ingest (IngestResult.frames_per_s, after a warm-up
ingest that loads everything), each channel's extraction seconds (IngestResult.text), and the
ratio to the mean of two no-text ingests, one before and one after the text ones (their spread
is the noise of a shared CPU); the headline is the announcements video (every source).
Writes --out JSON (default runs/bench-text/text.json), a PNG and markdown next to it.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ._common import bench_settings, log, machine, max_rss_mb, write_json, write_outputs
from ._text_report import KS, markdown, plot, side_by_side

TAG = "text"
TENANT = "bench-text"
SOURCES = ("ocr", "asr", "subtitle")
CHANNELS = ("none",) + SOURCES
KINDS = ("match", "announcements", "lecture")
BANNER_S = 10.0

# kind -> [(fraction of the video, banner, question, keys)]
BANNERS = {
    "match": [(0.22, "GOAL: MARTINEZ", "Who scored the goal?", ("martinez",)),
              (0.45, "YELLOW CARD: KOWALSKI", "Who got the yellow card?", ("kowalski",)),
              (0.63, "SUBSTITUTION: HENDERSON", "Which player was substituted?", ("henderson",)),
              (0.84, "RED CARD: OKAFOR", "Who was shown the red card?", ("okafor",))],
    "announcements": [(0.1, "WELCOME TO YORK", "Which station is this?", ("york",)),
                      (0.7, "NEXT TRAIN: EDINBURGH", "Where does the next train go?", ("edinburgh",))],
    "lecture": [(0.3, "CHAPTER 4: GLACIERS", "What is chapter 4 about?", ("glaciers", "glacier")),
                (0.75, "HOMEWORK DUE FRIDAY", "When is the homework due?", ("friday",))],
}
# kind -> [(fraction, sentence as subtitled (spoken: lower case, no punctuation), question, keys)]
SPEECH = {
    "announcements": [
        (0.2, "The train to Leeds leaves from platform four.", "Which platform does the train to Leeds leave from?",
         ("four", "4")),
        (0.4, "The nine fifteen service to Glasgow is cancelled.", "What happened to the service to Glasgow?",
         ("cancelled", "canceled")),
        (0.58, "Passengers for Bristol should change at Birmingham.", "Where should passengers for Bristol change?",
         ("birmingham",)),
        (0.8, "The cafe on platform two closes at six tonight.", "When does the cafe close?", ("six", "6"))],
    "lecture": [
        (0.15, "The lecture on volcanoes starts in room twelve.", "Which room is the lecture on volcanoes in?",
         ("twelve", "12")),
        (0.45, "Today professor Adams will talk about ancient Rome.", "What will professor Adams talk about?",
         ("rome", "roman")),
        (0.6, "The exam will be held on Thursday morning.", "When will the exam be held?", ("thursday",)),
        (0.88, "Please bring a calculator and a blue pen.", "What should you bring besides a blue pen?",
         ("calculator",))],
}
VIDEO_ARGS = {"match": {"scoreboard": True, "clock": True}, "announcements": {"scoreboard": False, "clock": True},
              "lecture": {"scoreboard": False, "clock": False}}


def spoken(sentence: str) -> str:
    return re.sub(r"[^a-z ]", "", sentence.lower())


def has_key(text: str, keys) -> bool:
    return any(re.search(rf"\b{re.escape(k.lower())}\b", text.lower()) for k in keys)


def make_video(workdir: Path, kind: str, minutes: float, seed: int) -> dict:
    """Render one video (+ its .srt when it has speech); its questions with their time spans."""
    from videokv.toyworld.textsynth import make_text_video, write_srt

    dur = minutes * 60.0
    banners = [(round(f * dur), round(f * dur) + BANNER_S, text) for f, text, _, _ in BANNERS[kind]]
    speech = [(round(f * dur, 1), spoken(s)) for f, s, _, _ in SPEECH.get(kind, [])]
    path = workdir / f"{kind}-{minutes:g}min-s{seed}.mp4"
    t = time.perf_counter()
    truth = make_text_video(path, minutes, banners=banners, speech=speech, seed=seed, **VIDEO_ARGS[kind])
    render_s = time.perf_counter() - t
    qs = [{"kind": "screen", "question": q, "keys": list(keys), "span": [a, b], "text": text}
          for (a, b, text), (_, _, q, keys) in zip(banners, BANNERS[kind])]
    srt, cues = None, []
    said = {s["text"]: s for s in truth["speech"]}
    for f, sentence, q, keys in SPEECH.get(kind, []):
        s = said[spoken(sentence)]
        cues.append((s["t_start"], s["t_end"], sentence))
        qs.append({"kind": "speech", "question": q, "keys": list(keys), "span": [s["t_start"], s["t_end"]],
                   "text": sentence})
    if cues:   # subtitles carry exactly what is said, over the voiced span
        srt = write_srt(path.with_suffix(".srt"), cues)
    return {"kind": kind, "path": str(path), "srt": str(srt) if srt else None, "minutes": minutes,
            "duration": truth["duration"], "render_s": round(render_s, 2), "questions": qs}


def ingest(rt, path: str, channel: str, srt: str | None, tenant: str = TENANT) -> dict:
    """One ingest of `path` with only `channel` on ("none": all off; "all": every source)."""
    on = SOURCES if channel == "all" else (channel,)
    opts = rt.text_defaults.overridden(ocr="ocr" in on, asr="asr" in on, subtitles="subtitle" in on,
                                       subtitle_file=srt if "subtitle" in on else None)
    res = rt.pipeline.ingest(path, tenant=tenant, text=opts)
    ran = {s: r for s, r in (res.text or {}).items() if r.get("ran")}
    return {"video_id": res.video_id, "deduplicated": res.deduplicated, "chunks": res.chunks_total,
            "frames": res.frames, "seconds": round(res.seconds, 2), "frames_per_s": round(res.frames_per_s, 2),
            "extract_s": {s: round(r["seconds"], 2) for s, r in ran.items()},
            "segments": {s: r["segments"] for s, r in ran.items()}, "report": res.text or {}}


def chance(n: int, e: int, k: int) -> float:
    """P(k chunks drawn at random from n include one of the e expected)."""
    return 1.0 - (math.comb(n - e, k) / math.comb(n, k) if n - e >= k else 0.0) if n else 0.0


def chunk_lines(rt, vid: str) -> list[str]:
    """Each chunk's text line as the pipeline rendered it (the same aligner and token cap over
    the stored segments): what the chunk's KVs and the text oracle actually saw."""
    from videokv.ingest.text import TextSegment
    from videokv.ingest.text.align import chunk_texts

    segs = [TextSegment.from_dict(d) for d in (rt.store.get_transcript(vid) or {}).get("segments", [])]
    spans = [(c.t_start, c.t_end) for c in rt.store.get_video(vid).plan]
    return chunk_texts(segs, spans, rt.settings.text_max_tokens, lambda line: len(rt.backend.tokenize(line)))


def evaluate(rt, q: dict, vid: str, plain_vid: str, source: str, top_k: int, max_new: int, cache: dict) -> dict:
    """One question on one text ingest: retrieval of each oracle, answers with and without text.
    cache: per video its chunk lines, per (no-text video, question) its answer."""
    rec = rt.store.get_video(vid)
    a, b = q["span"]
    expected = [c.index for c in rec.plan if c.t_start < b and a < c.t_end]
    lo, hi = rec.plan[expected[0]].t_start, rec.plan[expected[-1]].t_end
    k = max(KS)
    tv = rt.text_oracle.question_vector(q["question"]).numpy()
    vv = rt.oracle.question_vector(q["question"]).numpy()
    top = {"text": [h.chunk for h in rt.store.search(rt.text_oracle.identity, tv, k, video_ids=[vid])],
           "visual": [h.chunk for h in rt.store.search(rt.oracle.identity, vv, k, video_ids=[vid])],
           "hybrid": [h.chunk for h in rt.queries.retrieve(vid, q["question"], k)]}
    segs = (rt.store.get_transcript(vid) or {}).get("segments", [])
    extracted = " | ".join(s["text"] for s in segs if s["source"] == source and s["t_start"] < hi and lo < s["t_end"])
    if vid not in cache:
        cache[vid] = chunk_lines(rt, vid)
    lines = {c: cache[vid][c] for c in expected}
    with_text = rt.queries.ask(vid, q["question"], top_k=top_k, mode="bilevel", max_new_tokens=max_new)
    key = (plain_vid, q["question"])
    if key not in cache:   # the no-text answer is the same for every source of one video
        cache[key] = rt.queries.ask(plain_vid, q["question"], top_k=top_k, mode="bilevel",
                                    max_new_tokens=max_new).answer
    without = cache[key]
    return {**q, "source": source, "expected_chunks": expected, "top3": top,
            "hit": {f"{o}@{n}": bool(set(top[o][:n]) & set(expected)) for o in top for n in KS},
            "chance": {f"@{n}": round(chance(rec.chunks_total, len(expected), n), 4) for n in KS},
            "extracted": extracted[:300], "key_extracted": has_key(extracted, q["keys"]),
            "lines": lines, "key_in_line": has_key(" ".join(lines.values()), q["keys"]),
            "answer_with_text": with_text.answer, "answer_without_text": without,
            "evidence": [e.chunk for e in with_text.evidence],
            "correct_with_text": has_key(with_text.answer, q["keys"]),
            "correct_without_text": has_key(without, q["keys"])}


def _mean(xs):
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else None


def summarize(rows: list[dict]) -> tuple[dict, dict]:
    ret, ans = {}, {}
    for s in SOURCES:
        rs = [r for r in rows if r["source"] == s]
        if not rs:
            continue
        ret[s] = {"n": len(rs), "key_extracted": _mean(r["key_extracted"] for r in rs),
                  "key_in_line": _mean(r["key_in_line"] for r in rs),
                  **{o: {f"recall@{n}": _mean(r["hit"][f"{o}@{n}"] for r in rs) for n in KS}
                     for o in ("text", "visual", "hybrid")},
                  "chance": {f"recall@{n}": _mean(r["chance"][f"@{n}"] for r in rs) for n in KS}}
        w, wo = _mean(r["correct_with_text"] for r in rs), _mean(r["correct_without_text"] for r in rs)
        ans[s] = {"n": len(rs), "questions": [r["question"] for r in rs], "with_text": w, "without_text": wo,
                  "delta": round(w - wo, 4)}
    return ret, ans


def cost_table(video: dict) -> dict:
    """Ingest cost of every channel run on one video, with ratios to its no-text ingests' mean."""
    base = (video["ingests"]["none"]["frames_per_s"] + video["ingests"]["none_again"]["frames_per_s"]) / 2
    return {ch: r if "error" in r else
            {"frames": r["frames"], "seconds": r["seconds"], "frames_per_s": r["frames_per_s"],
             "ratio_vs_none": round(r["frames_per_s"] / base, 3), "extract_s": r["extract_s"].get(ch, 0.0),
             "segments": r["segments"].get(ch)} for ch, r in video["ingests"].items()}


def targets(res: dict) -> dict:
    ret, ans, cost = res["retrieval"], res["answers"], res["ingest_cost"]["channels"]
    out = {}
    if "ocr" in ret:
        v = ret["ocr"]["text"]["recall@1"]
        out["text_oracle_recall@1_ocr_ge_0.8"] = {"value": v, "met": v >= 0.8}
    out["hybrid_recall@3_ge_0.8"] = {s: {"value": r["hybrid"]["recall@3"], "met": r["hybrid"]["recall@3"] >= 0.8}
                                     for s, r in ret.items()}
    out["hybrid_recall@3_ge_text_oracle"] = {
        s: {"value": [r["hybrid"]["recall@3"], r["text"]["recall@3"]],
            "met": r["hybrid"]["recall@3"] >= r["text"]["recall@3"]} for s, r in ret.items()}
    out["accuracy_with_text_gt_without"] = {s: {"value": [a["with_text"], a["without_text"]],
                                                "met": a["with_text"] > a["without_text"]} for s, a in ans.items()}
    sub = cost.get("subtitle", {}).get("ratio_vs_none")
    if sub is not None:
        out["subtitle_ingest_frames_per_s_ratio_ge_0.8"] = {"value": sub, "met": sub >= 0.8}
    return out


def run(args, rt=None) -> dict:
    import torch

    from videokv.runtime import Runtime

    base = bench_settings(args.threads)     # (ingest/text/ocr.py runs Tesseract single-threaded itself)
    t0 = time.perf_counter()
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    home = args.home or Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    again_home = Path(tempfile.mkdtemp(prefix="again-", dir=workdir))
    if rt is None:
        # the model cache stays where it is: a fresh home must not re-convert it
        rt = Runtime(base.model_copy(update={"home": home, "model_cache": base.models_dir}))
    be, s = rt.backend, rt.settings
    top_k = args.top_k or s.top_k
    kinds = KINDS[:args.videos]
    log(t0, TAG, f"model {s.model} on {be.device}; {len(kinds)} videos of {args.minutes:g} min "
                 f"({', '.join(kinds)}); top-k {top_k}; store {s.home}")
    cfg = {"videos": list(kinds), "minutes": args.minutes, "seed": args.seed, "top_k": top_k,
           "always_first_last": s.always_first_last, "mode": "bilevel", "max_new_tokens": args.max_new_tokens,
           "text_weight": s.text_weight, "text_max_tokens": s.text_max_tokens, "ocr_min_conf": s.ocr_min_conf,
           "model": s.model, "oracle": rt.oracle.identity, "text_oracle": rt.text_oracle.identity,
           "chunk_frames": s.chunk_frames, "sample_fps": s.sample_fps, "torch_threads": torch.get_num_threads()}
    result = {"bench": "text", "partial": True, "config": cfg, "machine": machine(be.device), "videos": []}
    try:
        # Warm-up: loads MiniLM, Tesseract/PocketSphinx data and the first-call paths, so no
        # measured ingest pays for them.
        warm = make_video(workdir, "announcements", 0.5, args.seed + 99)
        ingest(rt, warm["path"], "all", warm["srt"], tenant=TENANT + "-warmup")
        again = Runtime(s.model_copy(update={"home": again_home}))
        again.backend, again.oracle, again.text_oracle = be, rt.oracle, rt.text_oracle
        ingest(again, warm["path"], "none", None, tenant=TENANT + "-warmup")
        log(t0, TAG, "warm-up done")
        rows, cache = [], {}
        for i, kind in enumerate(kinds):
            v = make_video(workdir, kind, args.minutes, args.seed + i)
            log(t0, TAG, f"{kind}: rendered in {v['render_s']:.1f} s")
            v["ingests"] = {}
            for ch in CHANNELS:
                if ch in ("asr", "subtitle") and not v["srt"]:
                    continue
                try:
                    r = ingest(rt, v["path"], ch, v["srt"])
                except Exception as e:   # e.g. ToolMissing: report it, measure the rest
                    v["ingests"][ch] = {"error": f"{type(e).__name__}: {e}"}
                    log(t0, TAG, f"{kind} {ch}: FAILED {v['ingests'][ch]['error']}")
                    continue
                v["ingests"][ch] = r
                log(t0, TAG, f"{kind} {ch}: {r['frames']} frames at {r['frames_per_s']:.1f} frames/s "
                             f"(extract {r['extract_s']}, segments {r['segments']})")
            # The CPU is shared: the no-text ingest again after the text ones brackets them, and
            # the spread of the two shows the noise (in another store: chunks are shared by content).
            r = v["ingests"]["none_again"] = ingest(again, v["path"], "none", None)
            log(t0, TAG, f"{kind} none again: {r['frames_per_s']:.1f} frames/s")
            plain = v["ingests"]["none"]["video_id"]
            for ch in SOURCES:
                if "video_id" not in v["ingests"].get(ch, {}):
                    continue
                for q in v["questions"]:
                    if (q["kind"] == "screen") == (ch == "ocr"):
                        row = evaluate(rt, q, v["ingests"][ch]["video_id"], plain, ch, top_k,
                                       args.max_new_tokens, cache)
                        rows.append({"video": kind, **row})
                        log(t0, TAG, f"{kind} {ch}: {q['question']!r} expected {row['expected_chunks']} hybrid "
                                     f"{row['top3']['hybrid']} -> {row['answer_with_text']!r} "
                                     f"(without: {row['answer_without_text']!r})")
            v["cost"] = cost_table(v)
            result["videos"].append(v)
            write_json(args.out, result)
        result["questions"] = rows
        result["retrieval"], result["answers"] = summarize(rows)
        head = next((v for v in result["videos"] if set(CHANNELS) <= set(v["ingests"])), result["videos"][0])
        result["ingest_cost"] = {"video": head["kind"], "frames": head["ingests"]["none"]["frames"],
                                 "channels": head["cost"]}
        result["targets"] = targets(result)
        result["partial"] = False
    finally:
        shutil.rmtree(again_home, ignore_errors=True)
        if args.home is None and not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    result["machine"]["max_rss_mb"] = max_rss_mb()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv: list[str], rt=None) -> int:
    """rt: a Runtime to use (tests share their loaded model); default: one from settings."""
    ap = argparse.ArgumentParser(prog="videokv bench text", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 videos of 3 minutes (a test run)")
    ap.add_argument("--videos", type=int, default=None, help=f"how many of {', '.join(KINDS)} (default 3; quick 2)")
    ap.add_argument("--minutes", type=float, default=None, help="length of each video (default 10; quick 3)")
    ap.add_argument("--top-k", type=int, default=None, help="bilevel top-k (default: VIDEOKV_TOP_K)")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="longest answer, in tokens")
    ap.add_argument("--seed", type=int, default=0, help="video seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    ap.add_argument("--home", type=Path, default=None, help="KV store home (default: a temporary one, removed)")
    ap.add_argument("--keep-home", action="store_true", help="keep the temporary store home")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench-text/work"), help="videos and .srt files")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-text/text.json"), help="JSON result (PNG and markdown beside it)")
    ap.add_argument("--png", type=Path, default=None, help="plot (default: --out with .png)")
    a = ap.parse_args(argv)
    a.videos = a.videos or (2 if a.quick else 3)
    a.minutes = a.minutes or (3.0 if a.quick else 10.0)
    if not 2 <= a.videos <= len(KINDS) or a.minutes < 1:
        ap.error(f"--videos must be 2-{len(KINDS)} (the second has every source) and --minutes >= 1")
    result = run(a, rt)
    write_outputs(result, a.out, a.png, plot, markdown, side_by_side)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
