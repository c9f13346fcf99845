"""Text-channel input an attacker controls: subtitle markup that used to backtrack
quadratically, a megabyte-long cue, many cues: all linear now, and the chunk lines are
exactly what the straightforward per-chunk scan gives."""

from __future__ import annotations

import random
import time

import pytest

from videokv.ingest.text import TextSegment, align
from videokv.ingest.text.subtitles import MAX_CUE_CHARS, clean_text, parse_text


def _words(text: str) -> int:
    return len(text.split()) + text.count('"')


@pytest.mark.parametrize("unit", ["<", "{\\", "<i", "<<>"])
def test_markup_stripping_is_linear(unit):
    """10x the input may take ~10x the time, never ~100x (`<[^>]*>` on a run of '<' was
    quadratic: 250 KB took 36 s)."""
    def seconds(n):
        text = "1\n00:00:01,000 --> 00:00:02,000\n" + unit * n + "\n"
        t0 = time.perf_counter()
        parse_text(text, "srt") if unit != "{\\" else clean_text(unit * n)
        return time.perf_counter() - t0
    seconds(2000)
    small, big = min(seconds(20_000) for _ in range(3)), min(seconds(200_000) for _ in range(3))
    assert big < max(30 * small, 0.05), (small, big)


def test_a_huge_cue_is_cut_to_a_screenful():
    text = clean_text("word " * 300_000)
    assert len(text) <= MAX_CUE_CHARS and text.endswith("word")


def _reference(segments, spans, max_tokens, count):
    """What chunk_texts computed before it bucketed segments: every chunk scans them all."""
    ordered = sorted(enumerate(segments), key=lambda p: (p[1].t_start, p[0]))
    return [align.chunk_line(align._chunk_items(ordered, a, b), max_tokens, count) for a, b in spans]


def test_bucketed_alignment_equals_the_full_scan():
    rng = random.Random(3)
    vocab = ["goal", "save", "corner", "HOME", "AWAY", "1", "2", "07:12", "MARTINEZ", "card"]
    for trial in range(30):
        segs = []
        for _ in range(rng.randint(0, 40)):
            a = rng.uniform(0, 200)
            b = a + rng.choice([0.0, rng.uniform(0, 5), rng.uniform(0, 60)])
            src = rng.choice(["ocr", "subtitle", "asr"])
            text = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6)))
            words = []
            if src == "asr":
                ws = text.split()
                step = (b - a) / max(1, len(ws))
                words = [(w, a + i * step, a + (i + 1) * step) for i, w in enumerate(ws)]
            segs.append(TextSegment(a, b, text, src, 1.0, words))
        spans = [(16.0 * i, 16.0 * (i + 1)) for i in range(13)]
        for budget in (6, 48):
            assert align.chunk_texts(segs, spans, budget, _words) == _reference(segs, spans, budget, _words), trial


def test_a_megabyte_cue_over_many_chunks_tokenizes_a_bounded_amount():
    """A 1 MB subtitle line over 40 chunks: each chunk's line is fitted from at most a line's
    worth of characters (it re-tokenized the whole megabyte ~133 times per chunk before)."""
    tokenized = []

    def count(text: str) -> int:
        tokenized.append(len(text))
        return _words(text)

    cue = TextSegment(0.0, 640.0, "blah " * 200_000, "subtitle")
    spans = [(16.0 * i, 16.0 * (i + 1)) for i in range(40)]
    lines = align.chunk_texts([cue], spans, 48, count)
    assert all(line.startswith('Subtitles: "blah') and _words(line) <= 48 for line in lines)
    assert sum(tokenized) < 40 * 50 * 32 * 48, sum(tokenized)      # per chunk: ~50 fits of <= one cap
