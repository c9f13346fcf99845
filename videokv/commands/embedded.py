"""`videokv ingest FILE`, `videokv ask VIDEO_ID QUESTION`, `videokv transcript VIDEO_ID`:
embedded mode, no server."""

from __future__ import annotations

import argparse
import json
import sys

from videokv.query.answers import MODES, WHEN_BY


def progress_bar(desc: str):
    """A tqdm bar on stderr driven by the pipeline's (done, total) callback."""
    from tqdm import tqdm

    state = {"bar": None}

    def update(done: int, total: int) -> None:
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit="chunk", file=sys.stderr, leave=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def runtime(model: str | None):
    """A Runtime from the settings, with `--model` (a checkpoint folder) over VIDEOKV_MODEL."""
    from videokv.runtime import Runtime, load_settings

    return Runtime(load_settings(**({"model": model} if model else {})))


MODEL_HELP = ("local checkpoint folder (default: VIDEOKV_MODEL); its config.json selects the backend, "
              "e.g. Qwen2-VL / Qwen2.5-VL. Ask with the same model a video was ingested with")


def main_ingest(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv ingest", description="Ingest a video into the KV store in one "
                                 "streaming pass (memory stays flat whatever its length; a killed ingest resumes "
                                 "where it stopped when run again); prints the video id alone on the last line.")
    ap.add_argument("file", help="the video file (mp4, mkv, webm, ...)")
    ap.add_argument("--tenant", default="default", help="whose video it is (default: default)")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object instead (video_id, status, duration_s, frames, chunks, sample_fps, "
                         "frames_per_s, peak_rss_mb, ...) and nothing else on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--model", default=None, metavar="PATH", help=MODEL_HELP)
    text = ap.add_argument_group("text channel (default: VIDEOKV_TEXT_OCR / _ASR / _SUBTITLES)")
    text.add_argument("--ocr", action=argparse.BooleanOptionalAction, default=None,
                      help="read on-screen text with Tesseract (apt-get install tesseract-ocr tesseract-ocr-eng)")
    text.add_argument("--asr", action=argparse.BooleanOptionalAction, default=None,
                      help="transcribe speech with PocketSphinx (apt-get install pocketsphinx pocketsphinx-en-us)")
    text.add_argument("--subtitles", default=None, metavar="FILE",
                      help="a .srt or .vtt subtitle file for this video")
    text.add_argument("--no-subtitles", action="store_true",
                      help="ignore subtitles (also the video's own subtitle stream)")
    args = ap.parse_args(argv)
    rt = runtime(args.model)
    from videokv.ingest.text import check_subtitle_file
    if args.subtitles:
        check_subtitle_file(args.subtitles)
    opts = rt.text_defaults.overridden(ocr=args.ocr, asr=args.asr, subtitle_file=args.subtitles,
                                       subtitles=False if args.no_subtitles else None)
    res = rt.pipeline.ingest(args.file, tenant=args.tenant, progress=None if args.quiet else progress_bar("ingest"),
                             text=opts)
    if args.json:
        print(json.dumps(ingest_summary(res)))
        return 0
    if not args.quiet:
        how = "already ingested (same file and model config)" if res.deduplicated else \
            f"{res.chunks_prefilled} chunks in {res.seconds:.1f} s, {res.frames_per_s:.1f} frames/s, " \
            f"{res.tokens_per_s:.0f} tokens/s" + (f", resumed at chunk {res.resumed_from}" if res.resumed_from else "")
        print(f"{args.file}: {res.status}, {how}", file=sys.stderr)
        if res.sample_fps and abs(res.sample_fps - rt.settings.sample_fps) > 1e-9:
            print(f"  sampled at {res.sample_fps:.4g} fps, below VIDEOKV_SAMPLE_FPS={rt.settings.sample_fps:g}: "
                  f"VIDEOKV_MAX_FRAMES={rt.settings.max_frames} capped it", file=sys.stderr)
        for src, r in (res.text or {}).items():
            if r.get("ran"):
                print(f"  text {src}: {r.get('segments', 0)} segments in {r.get('seconds', 0):.1f} s"
                      + (f" ({r['note']})" if r.get("note") else ""), file=sys.stderr)
    print(res.video_id)
    return 0


def ingest_summary(res) -> dict:
    """The ingest result as one JSON object, with the ingest process's peak RSS."""
    from videokv.ingest.pipeline import peak_rss_mb

    out = {"video_id": res.video_id, "status": res.status, "duration_s": round(res.duration_s, 3),
           "frames": res.frames, "chunks": res.chunks_total, "sample_fps": res.sample_fps,
           "frames_per_s": round(res.frames_per_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
    return {**out, **{k: v for k, v in res.__dict__.items() if k not in out and k != "chunks_total"}}


def main_transcript(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv transcript",
                                 description="Print a video's time-aligned text (OCR, speech, subtitles).")
    ap.add_argument("video_id", help="the id `videokv ingest` printed")
    ap.add_argument("--json", action="store_true", help="print the channels and segments as JSON")
    args = ap.parse_args(argv)
    rt = runtime(None)
    from videokv.ingest.text.align import transcript_view

    rec = rt.store.get_video(args.video_id)
    got = rt.store.get_transcript(rec.video_id)
    if args.json:
        print(json.dumps(transcript_view(rec, got), indent=1))
        return 0
    if got is None:
        print(f"video {rec.video_id} was ingested without a text channel", file=sys.stderr)
        return 0
    for seg in transcript_view(rec, got)["segments"]:
        print(f"[{seg['t_start']:8.2f}s - {seg['t_end']:8.2f}s] chunk {seg['chunk']:>4} {seg['source']:<8} {seg['text']}")
    return 0


def main_ask(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv ask", description="Ask a question about an ingested video.")
    ap.add_argument("video_id", help="the id `videokv ingest` printed")
    ap.add_argument("question", help="the question, in quotes")
    ap.add_argument("--top-k", type=int, default=None, help="chunks re-loaded at L level (default: settings)")
    ap.add_argument("--mode", choices=MODES, default="bilevel",
                    help="KV levels: bilevel (top-k at L, the rest at H), dense (all L) or sparse (all H)")
    ap.add_argument("--count-by", choices=("oracle", "lm"), default=None,
                    help='who answers "how many times" questions: the span counter (oracle; the default where '
                         'calibrated) or the LLM')
    ap.add_argument("--when-by", choices=WHEN_BY, default=None,
                    help='who answers "when" questions: the best moment\'s span, to a frame (moments; the default: '
                         'VIDEOKV_WHEN_BY) or the LLM')
    ap.add_argument("--max-new-tokens", type=int, default=48, help="longest answer, in tokens")
    ap.add_argument("--json", action="store_true", help="print the answer, evidence, moments and timings as JSON")
    ap.add_argument("--model", default=None, metavar="PATH", help=MODEL_HELP)
    args = ap.parse_args(argv)
    rt = runtime(args.model)
    stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
    ans = rt.queries.ask(args.video_id, args.question, top_k=args.top_k, mode=args.mode,
                         max_new_tokens=args.max_new_tokens, on_token=stream, count_by=args.count_by,
                         when_by=args.when_by)
    if args.json:
        print(json.dumps(ans.to_dict(), indent=1))
        return 0
    print()
    for e in ans.evidence:
        print(f"  evidence: chunk {e.chunk} [{e.t_start:.1f}s-{e.t_end:.1f}s] score={e.score:.3f} level={e.level}")
    t = ans.timings
    print(f"  ttft {t['ttft_ms']:.0f} ms, total {t['ttft_ms'] + t['decode_ms']:.0f} ms, "
          f"{ans.kv_bytes_loaded / 1e6:.1f} MB KV in context ({ans.context_tokens} tokens), "
          f"{ans.kv_bytes_read / 1e6:.1f} MB read, video prefill runs: {ans.video_prefill_runs}")
    return 0


def main_search(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv search", description="Find the moments a query describes: frame-"
                                 "precise spans from the visual oracle's frame scores and the text channel's "
                                 "segments, best first.")
    ap.add_argument("video_id", nargs="?", help="the video to search (omit with --all)")
    ap.add_argument("query", help="what to find, in quotes")
    ap.add_argument("--all", action="store_true", help="search every video of the tenant instead of one")
    ap.add_argument("--tenant", default="default", help="whose videos (default: default)")
    ap.add_argument("--limit", type=int, default=10, help="moments per page (default 10)")
    ap.add_argument("--page-token", default=None, help="the next_page_token a search printed")
    ap.add_argument("--min-score", type=float, default=None, help="leave out moments scored below this")
    ap.add_argument("--json", action="store_true", help='print one JSON object {"moments": [...], "next_page_token"}')
    ap.add_argument("--model", default=None, metavar="PATH", help=MODEL_HELP)
    args = ap.parse_args(argv)
    if args.all == (args.video_id is not None):
        ap.error("give a VIDEO_ID or --all (not both)")
    if not 1 <= args.limit <= 1000:
        ap.error("--limit must be between 1 and 1000")
    rt = runtime(args.model)
    tenant = args.tenant
    if not args.all:
        tenant = rt.store.get_video(args.video_id).tenant      # the video's own (an unknown id: exit 1)
    moments, token = rt.queries.moments(args.query, tenant=tenant, video_ids=None if args.all else [args.video_id],
                                        limit=args.limit, page_token=args.page_token, min_score=args.min_score)
    if args.json:
        print(json.dumps({"moments": [m.to_dict() for m in moments], "next_page_token": token}))
        return 0
    if not moments:
        print("no moments found", file=sys.stderr)
    for m in moments:
        what = f' "{m.text}"' if m.text else ""
        print(f"{m.video_id} {m.start:8.2f}s - {m.end:8.2f}s  score {m.score:7.3f}  {m.source:<8}{what}")
    if token:
        print(f"more: --page-token {token}", file=sys.stderr)
    return 0
