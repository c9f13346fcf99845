"""The text channel end to end with the real programs (tesseract, pocketsphinx, espeak-ng,
ffmpeg): synthetic videos with known on-screen text and speech -> segments -> chunk lines.

One 2-minute video (scoreboard, ticking clock, banners, 12 spoken sentences) is made and
extracted once per module; the other tests use short or static videos.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest

from videokv.ingest.sampling import iter_frames
from videokv.ingest.text import BadSubtitles, TextOptions, TextSegment, ToolMissing, asr, ocr, subtitles
from videokv.ingest.text.align import chunk_texts, transcript
from videokv.ingest.text.extract import extract_segments
from videokv.ingest.video import probe
from videokv.toyworld import textsynth as ts


def needs(*programs: str):
    """Skip (with the packages to install) where one of these programs is missing; the parsers
    and alignment rules run everywhere."""
    missing = [p for p in programs if shutil.which(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (apt-get install tesseract-ocr "
                              "tesseract-ocr-eng pocketsphinx pocketsphinx-en-us espeak-ng ffmpeg)")


OCR = needs("tesseract")
ASR = needs("pocketsphinx_continuous")
ALL_TOOLS = needs("tesseract", "pocketsphinx_continuous", "espeak-ng")

FPS, CHUNK = 1.0, 16   # the pipeline's defaults: 1 frame/s, 16 frames per chunk
BANNERS = [(20.0, 28.0, "GOAL MARTINEZ"), (50.0, 60.0, "HALF TIME"), (70.0, 78.0, "YELLOW CARD NUMBER 7")]
RECALL_MIN = 0.70


def words_count(text: str) -> int:
    """A stand-in tokenizer: words and punctuation marks are tokens."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def norm(text: str) -> str:
    return " ".join(text.split())


def chunk_spans(info) -> list[tuple[float, float]]:
    n = int(np.ceil(info.duration * FPS - 1e-9))
    return [(k / FPS, min(k + CHUNK, n) / FPS) for k in range(0, n, CHUNK)]


def chunk_of(t: float) -> int:
    return int(t * FPS) // CHUNK


@pytest.fixture(scope="module")
def game(tmp_path_factory):
    """(path, truth, info, segments, report) of the 2-minute video, OCR + ASR."""
    path = tmp_path_factory.mktemp("text") / "game.mp4"
    truth = ts.make_text_video(path, 2.0, banners=BANNERS, speech=ts.spread_speech(start=4.0, gap=9.0), seed=3)
    info = probe(path)
    segments, report = extract_segments(path, info, TextOptions(ocr=True, asr=True), FPS, 10_000)
    return path, truth, info, segments, report


# ---------------------------------------------------------------- OCR


@ALL_TOOLS
def test_banners_land_in_their_chunks_only(game):
    path, truth, info, segments, report = game
    lines = chunk_texts(segments, chunk_spans(info), 400, words_count)
    for t0, t1, text in BANNERS:
        inside = {chunk_of(t0), chunk_of(t1 - 1e-3)}
        for k, line in enumerate(lines):
            assert (text in line) == (k in inside), (text, k, line)
    ocr_banners = [s for s in segments if s.source == "ocr" and s.text == "GOAL MARTINEZ"]
    assert len(ocr_banners) == 1 and abs(ocr_banners[0].t_start - 20) <= 1 and abs(ocr_banners[0].t_end - 28) <= 1


@ALL_TOOLS
def test_scoreboard_and_clock_are_read(game):
    path, truth, info, segments, report = game
    screen = [s for s in segments if s.source == "ocr"]
    for span in truth["scoreboard"]:
        seen = [s for s in screen if s.text == norm(span["text"])]
        assert seen, span
        assert abs(min(s.t_start for s in seen) - span["t_start"]) <= 1.0
    # The clock: the value shown at each sampled second is read at that time (allowing
    # a few misreads of single frames).
    times = np.arange(0, int(info.duration), 1.0)
    hits = sum(any(s.text == ts.clock_text(t, truth["clock"]["start"]) and s.t_start <= t < s.t_end for s in screen)
               for t in times)
    assert hits >= 0.9 * len(times)
    assert all(0.6 <= s.conf <= 1 for s in screen)


@ALL_TOOLS
def test_ocr_reads_changed_regions_not_whole_frames(game):
    path, truth, info, segments, report = game
    stats = report["ocr"]["stats"]
    assert report["ocr"]["ran"] and report["ocr"]["tool"].startswith("tesseract")
    assert stats["frames"] == 120
    # The clock ticks every second, so every frame changes, but only in small regions.
    assert stats["full"] <= 3, stats
    # Read as ingest streams it: one tesseract run per 16-frame chunk at most (its crops
    # batched into one image), never one per frame.
    assert stats["tesseract_runs"] <= 120 // 16 + 1, stats


@OCR
def test_static_screen_is_read_once(tmp_path):
    path = tmp_path / "static.mp4"
    ts.make_text_video(path, 1.0, banners=[(30.0, 40.0, "BREAKING NEWS")], clock=False, scoreboard=True,
                       size=(320, 180), seed=5)
    stats: dict = {}
    segs = ocr.read_frames(iter_frames(path, FPS, 10_000), stats=stats)
    # 60 sampled frames, the screen changes a few times: banner in/out, a goal or two.
    assert stats["frames"] == 60 and stats["full"] == 1
    assert stats["crops"] + stats["full"] <= 8 and stats["unchanged"] >= 52, stats
    texts = {s.text for s in segs}
    assert "BREAKING NEWS" in texts


def test_missing_tesseract_names_the_package(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    ts.make_text_video(path, 0.1, size=(128, 72))
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without tesseract (or anything else)
    with pytest.raises(ToolMissing) as err:
        extract_segments(path, probe(path), TextOptions(ocr=True), FPS, 100)
    assert "tesseract-ocr" in str(err.value) and "OCR" in str(err.value)
    with pytest.raises(ToolMissing, match="pocketsphinx-en-us"):
        extract_segments(path, probe(path), TextOptions(asr=True), FPS, 100)


# ---------------------------------------------------------------- ASR


def _recall(truth_speech, asr_segments):
    """(recalled words, total words, per sentence [(sentence, recognised words)])."""
    hit = total = 0
    per = []
    for s in truth_speech:
        got = [w for seg in asr_segments for w, a, b in seg.words if s["t_start"] - 1 <= (a + b) / 2 <= s["t_end"] + 1]
        want = Counter(s["text"].split())
        hit += sum((want & Counter(got)).values())
        total += sum(want.values())
        per.append((s, got))
    return hit, total, per


@ALL_TOOLS
def test_speech_word_recall_and_times(game):
    path, truth, info, segments, report = game
    speech = [s for s in segments if s.source == "asr"]
    hit, total, per = _recall(truth["speech"], speech)
    assert hit / total >= RECALL_MIN, f"word recall {hit}/{total}: " + "; ".join(f"{s['text']!r} -> {' '.join(g)!r}"
                                                                          for s, g in per)
    assert report["asr"]["ran"] and report["asr"]["segments"] == len(speech)
    # Each recognised word of a sentence is heard within ~1 s of where it was said.
    for s, got in per:
        truth_words = {}
        for w, a, b in s["words"]:
            truth_words.setdefault(w, []).append((a + b) / 2)
        for seg in speech:
            for w, a, b in seg.words:
                if w in truth_words and s["t_start"] - 1 <= (a + b) / 2 <= s["t_end"] + 1:
                    assert min(abs((a + b) / 2 - m) for m in truth_words[w]) <= 1.0, (w, a, b, s)
    # Nothing is "heard" in the long silences between sentences.
    spoken = [(s["t_start"] - 1, s["t_end"] + 1) for s in truth["speech"]]
    stray = [w for seg in speech for w, a, b in seg.words if not any(x <= (a + b) / 2 <= y for x, y in spoken)]
    assert len(stray) <= 2, stray


@ALL_TOOLS
def test_speech_goes_to_the_chunk_it_was_said_in(game):
    path, truth, info, segments, report = game
    lines = chunk_texts([s for s in segments if s.source == "asr"], chunk_spans(info), 400, words_count)
    for s in truth["speech"]:
        k0, k1 = chunk_of(s["t_start"]), chunk_of(s["t_end"])
        if k0 != k1:
            continue  # a sentence over a chunk boundary is split between the two
        said = set(s["text"].split())
        heard = re.search(r'Speech: "([^"]*)"', lines[k0])
        assert heard and said & set(heard.group(1).split()), (s["text"], lines[k0])


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """A 55-second video with sentences from 9, 20, 31 (over 32 s) and 42 s."""
    path = tmp_path_factory.mktemp("talk") / "talk.mp4"
    ts.make_text_video(path, 55 / 60, speech=ts.spread_speech(ts.SENTENCES[:4], start=9.0, gap=11.0), size=(128, 72),
                       scoreboard=False, clock=False, fps=1.0)
    return path, asr.transcribe(path)


def _words(segments) -> list[tuple[str, float, float]]:
    return [(w, a, b) for seg in segments for w, a, b in seg.words]


@needs("pocketsphinx_continuous", "espeak-ng")
def test_streamed_speech_is_the_one_pass_transcript(talk):
    """Asked chunk by chunk as an ingest asks, the stream hears what one pass over the whole
    track hears (same words, same times), and each answer holds every utterance that began
    before the time asked."""
    path, segments = talk
    assert len(segments) >= 3
    stream = asr.SpeechStream(path)
    got = []
    try:
        for t in [1.0, 2.5, *range(5, 50, 4), 21.0]:
            got += stream.advance_to(t)
            assert {s.t_start for s in segments if s.t_start < t} <= {s.t_start for s in got}, t
        got += stream.advance_to(float("inf"))
    finally:
        stream.close()
    assert _words(got) == _words(segments)


@needs("pocketsphinx_continuous", "espeak-ng", "ffmpeg")
def test_speech_of_a_track_that_starts_late(talk, tmp_path):
    """Audio that starts 6 s after the picture: asked before it starts, the stream has
    nothing yet (not an error); in the end, the one-pass words at the track's times."""
    path, _ = talk
    late = tmp_path / "late.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(path), "-itsoffset", "6", "-i", str(path),
                    "-map", "0:v", "-map", "1:a", "-c", "copy", str(late)], check=True)
    segments = asr.transcribe(late)
    assert segments and segments[0].t_start > 14.0         # the first sentence, said at 9 s, now after 15 s
    stream = asr.SpeechStream(late)
    try:
        assert stream.advance_to(1.0) == []
        got = stream.advance_to(float("inf"))
    finally:
        stream.close()
    assert _words(got) == _words(segments)


@needs("pocketsphinx_continuous", "espeak-ng")
def test_closing_a_stream_midway_stops_its_recogniser(talk):
    path, _ = talk
    stream = asr.SpeechStream(path)
    assert stream.advance_to(10.0)
    process, errors = stream._proc, stream._errors
    stream.close()
    stream.close()                       # twice: a no-op
    assert process.poll() is not None and errors.closed


class StopHere(Exception):
    pass


def _recognisers() -> list:
    import psutil
    return [p for p in psutil.Process().children(recursive=True) if p.name().startswith("pocketsphinx")]


@needs("pocketsphinx_continuous", "espeak-ng")
def test_an_ingest_stopped_midway_resumes_with_the_speech_of_one_pass(talk, tmp_path, embedded_backend):
    """Stopped after its first commit (at 32 s, inside the third sentence), the ingest leaves
    no recogniser running; resumed, its transcript holds each utterance once, as one pass
    over the whole file heard it (the one over the resume point heard whole, twice)."""
    from tests.conftest import make_runtime

    path, segments = talk
    rt = make_runtime(tmp_path / "home", chunk_frames=4)      # commits every 8 chunks: 32 s
    rt.backend = embedded_backend
    opts = TextOptions(asr=True, subtitles=False)

    def stop(done, total):
        raise StopHere(f"stopped at chunk {done} of {total}")

    with pytest.raises(StopHere):
        rt.pipeline.ingest(path, progress=stop, text=opts)
    assert _recognisers() == []
    res = rt.pipeline.ingest(path, text=opts)
    assert res.status == "READY" and 0 < res.resumed_from < res.chunks_total
    stored = [TextSegment.from_dict(d) for d in rt.store.get_transcript(res.video_id)["segments"]]
    assert [s for s in stored if s.source == "asr"] == segments
    assert any(s.t_start < res.resumed_from * 4 < s.t_end for s in segments)


@ASR
def test_no_audio_track(tmp_path):
    path = tmp_path / "silent.mp4"
    ts.make_text_video(path, 0.2, size=(128, 72), scoreboard=False, clock=False)
    info = probe(path)
    assert not info.has_audio
    assert asr.transcribe(path) == []
    segments, report = extract_segments(path, info, TextOptions(asr=True, subtitles=True), FPS, 100)
    assert segments == []
    assert report["asr"]["note"] == "no audio track" and not report["asr"]["ran"]
    assert report["subtitle"]["note"] == "no subtitles"


def test_parse_pocketsphinx_output():
    out = ("hello world\n<s> 0.000 0.100 0.99\nhello 0.110 0.500 0.8\n<sil> 0.510 0.600 1.0\n"
           "[NOISE] 0.61 0.70 1.0\nworld(2) 0.710 1.100 0.6\n</s> 1.11 1.2 1.0\n"
           "read\n<s> 3.000 3.100 1.0\nread(2) 3.1 3.5 0.9\n</s> 3.5 3.6 1.0\n")
    segs = asr.parse_output(out, offset=10.0)
    assert [s.text for s in segs] == ["hello world", "read"]
    assert segs[0].words == [("hello", 10.11, 10.5), ("world", 10.71, 11.1)]
    assert segs[0].t_start == 10.11 and segs[1].t_end == 13.5


# ---------------------------------------------------------------- subtitles

CUES = [(2.0, 5.5, "<i>Welcome</i> to the match"), (17.0, 20.0, "Kick off!\nHere we go"),
        (40.0, 44.0, "A great save")]


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """A 1-minute video with no text and no audio."""
    path = tmp_path_factory.mktemp("quiet") / "quiet.mp4"
    ts.make_text_video(path, 1.0, size=(128, 72), scoreboard=False, clock=False)
    return path


@pytest.mark.parametrize("writer,suffix", [(ts.write_srt, ".srt"), (ts.write_vtt, ".vtt")])
def test_subtitle_files_align_to_chunks(quiet, tmp_path, writer, suffix):
    sub = writer(tmp_path / f"cues{suffix}", CUES)
    info = probe(quiet)
    segs, report = extract_segments(quiet, info, TextOptions(subtitle_file=str(sub)), FPS, 10_000)
    assert [(s.t_start, s.t_end, s.text) for s in segs] == [
        (2.0, 5.5, "Welcome to the match"), (17.0, 20.0, "Kick off! Here we go"), (40.0, 44.0, "A great save")]
    assert report["subtitle"]["ran"] and report["subtitle"]["segments"] == 3
    lines = chunk_texts(segs, chunk_spans(info), 48, words_count)
    assert lines == ['Subtitles: "Welcome to the match".', 'Subtitles: "Kick off! Here we go".',
                     'Subtitles: "A great save".', ""]


def test_vtt_features():
    text = ("\ufeffWEBVTT - match commentary\nKind: captions\n\nNOTE a comment\nspanning lines\n\n"
            "STYLE\n::cue { color: yellow }\n\nintro\n00:01.000 --> 00:02.500 align:start position:10%\n"
            "<v Commentator>Hello &amp; <c.loud>welcome</c></v>\n<b>second</b> line\n\n"
            "01:00:03.250 --> 01:00:04.000\nlate\n")
    segs = subtitles.parse_text(text, "vtt")
    assert [(s.t_start, s.t_end, s.text) for s in segs] == [(1.0, 2.5, "Hello & welcome second line"),
                                                            (3603.25, 3604.0, "late")]
    srt = "1\r\n00:00:01.000 --> 00:00:02,000\r\n{\\an8}Top <font color=red>red</font>\r\n"
    assert subtitles.parse_text(srt, "srt")[0].text == "Top red"


@pytest.mark.parametrize("text,fmt,message", [
    ("", "srt", "empty"),
    ("this is not a subtitle file\nat all", "srt", "line 1"),
    ("1\n00:00:01,000 -> 00:00:02,000\nhi\n", "srt", "line 2: expected a cue timing"),
    ("1\n00:00:05,000 --> 00:00:02,000\nhi\n", "srt", "ends"),
    ("1\n00:00:01,000 --> 00:00:02,000\nok\n\nbanana\n00:00:03,000 --> 00:00:04,000\nx\n", "srt", "line 5: expected a cue number"),
    ("00:01.000 --> 00:02.000\nno header\n", "vtt", "must start with 'WEBVTT'"),
    ("WEBVTT\n\n00:01.000 --> 00:02.000\n", "vtt", "no cues with text"),
    ("\x00\x01binary", "srt", "binary"),
])
def test_bad_subtitles_say_what_is_wrong(text, fmt, message):
    with pytest.raises(BadSubtitles, match=re.escape(message)):
        subtitles.parse_text(text, fmt)


def test_bad_subtitle_file_names_the_file(quiet, tmp_path):
    bad = tmp_path / "broken.srt"
    bad.write_text("1\n00:00:01,000 --> soon\nhi\n")
    with pytest.raises(BadSubtitles, match=r"broken\.srt: line 2"):
        extract_segments(quiet, probe(quiet), TextOptions(subtitle_file=str(bad)), FPS, 100)


@needs("ffmpeg")
def test_embedded_subtitle_stream(quiet, tmp_path):
    srt = ts.write_srt(tmp_path / "cues.srt", CUES)
    muxed = tmp_path / "with_subs.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(quiet), "-i", str(srt), "-map", "0", "-map", "1",
                    "-c", "copy", "-c:s", "mov_text", str(muxed)], check=True)
    assert subtitles.has_subtitle_stream(muxed) and not subtitles.has_subtitle_stream(quiet)
    info = probe(muxed)
    segs, report = extract_segments(muxed, info, TextOptions(), FPS, 10_000)
    assert [s.text for s in segs] == ["Welcome to the match", "Kick off! Here we go", "A great save"]
    assert all(abs(s.t_start - c[0]) < 0.05 and abs(s.t_end - c[1]) < 0.05 for s, c in zip(segs, CUES))
    assert report["subtitle"]["ran"] and "PyAV" in report["subtitle"]["tool"]
    # Subtitles off: neither the stream nor a file is used.
    segs, report = extract_segments(muxed, info, TextOptions(subtitles=False, subtitle_file=str(srt)), FPS, 10_000)
    assert segs == [] and not report["subtitle"]["ran"]


# ---------------------------------------------------------------- alignment


def test_alignment_rules():
    segs = [TextSegment(0.0, 40.0, "HOME 1  AWAY 0", "ocr", 0.9),
            TextSegment(3.0, 4.0, "HOME 1 AWAY 0", "ocr", 0.8),   # same line again: shown once
            TextSegment(5.0, 6.0, 'say "cheese"', "ocr", 0.9),
            TextSegment(14.0, 18.0, "what a goal that was", "asr", 0.7,
                        words=[("what", 14.0, 14.5), ("a", 14.5, 14.7), ("goal", 14.7, 15.5),
                               ("that", 16.1, 16.5), ("was", 16.5, 17.0)])]
    lines = chunk_texts(segs, [(0, 16), (16, 32), (32, 48), (48, 64)], 100, words_count)
    assert lines[0] == 'Screen: "HOME 1 AWAY 0 | say \'cheese\'". Speech: "what a goal".'
    assert lines[1] == 'Screen: "HOME 1 AWAY 0". Speech: "that was".'
    assert lines[2] == 'Screen: "HOME 1 AWAY 0".' and lines[3] == ""
    rows = transcript(segs)
    assert [r["t_start"] for r in rows] == [0.0, 3.0, 5.0, 14.0] and rows[3]["words"][0] == ["what", 14.0, 14.5]


@pytest.mark.parametrize("count", [words_count, lambda s: len(s.split()), len])
def test_token_cap_holds_and_cuts_on_word_boundaries(count):
    rng = np.random.default_rng(0)
    vocab = ["goal", "HOME", "AWAY", "07:12", "penalty", "kick", "the", "referee", "Martinez", "yellow", "card"]
    segs = [TextSegment(float(t), float(t) + float(rng.uniform(0.5, 20)), " ".join(rng.choice(vocab, rng.integers(1, 6))),
                        str(rng.choice(["ocr", "subtitle"]))) for t in rng.uniform(0, 60, 40)]
    segs.append(TextSegment(0, 60, "", "asr", words=[(str(rng.choice(vocab)), t, t + 0.3) for t in np.arange(0, 60, 0.4)]))
    spans = [(k * 16.0, k * 16.0 + 16) for k in range(4)]
    for cap in (4, 8, 16, 32, 48, 200):
        for line in chunk_texts(segs, spans, cap, count):
            assert count(line) <= cap, (cap, line)
            for part in re.findall(r'"([^"]*)"', line):  # every kept word is a whole word
                for word in part.replace(" | ", " ").split():
                    assert word in vocab, (word, line)
    # A generous cap keeps every source; a small one still shares it.
    line = chunk_texts(segs, spans[:1], 48, words_count)[0]
    assert all(label in line for label in ("Screen:", "Speech:", "Subtitles:")), line


def test_a_ticking_clock_keeps_its_first_and_last_value_and_leaves_room_for_a_banner():
    from videokv.ingest.text import TextSegment
    from videokv.ingest.text.align import chunk_texts
    segs = [TextSegment(float(t), float(t + 1), f"07:{59 - t:02d}", "ocr") for t in range(16)]
    segs += [TextSegment(0.0, 16.0, "HOME 1 AWAY 0", "ocr"), TextSegment(9.0, 11.0, "GOAL: MARTINEZ", "ocr")]
    (line,) = chunk_texts(segs, [(0.0, 16.0)], 48, lambda s: len(s.split()))
    assert line == 'Screen: "07:59 | HOME 1 AWAY 0 | GOAL: MARTINEZ | 07:44".'
