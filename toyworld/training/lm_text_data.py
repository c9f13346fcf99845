"""Text-channel training data for the adapter's second stage ("text refine"): a text line
for chunks of a caption video (engine/lm_data.py), as `text_line` renders on-screen text
(OCR), speech (ASR) and subtitles, and questions whose short answers copy that text.

Everything is generated from the caller's rng. Names are pseudo-names from a syllable
generator and places are pseudo-words, so nothing here overlaps the real-looking names
and fixed English sentences the benchmark and tests use: the adapter must learn to copy
what a line says, not to remember names.

    sports:  every chunk 'Screen: "HOME 2 AWAY 1 07:12"', a few add "GOAL: KORVANI",
             some speech (commentary and everyday sentences)
    street:  signs "VARLO STATION", plates "TAXI KX 4821", some speech
    lecture: slide titles of random words, speech on most chunks, sometimes subtitles
    talk:    speech on most chunks, subtitles on some, a ticker now and then
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from videokv.engine.prefill import text_line

from .lm_data import QA, CaptionVideo

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "br", "dr", "gr", "kr", "tr", "st", "sh")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "k", "m")
WORDS = ("copper", "lantern", "harbor", "orchard", "velvet", "granite", "meadow", "pepper", "marble",
         "canyon", "willow", "saddle", "ribbon", "thunder", "walnut", "basket", "compass", "mirror",
         "pillow", "ginger", "tunnel", "feather", "cactus", "pebble", "kettle", "anchor", "violet",
         "falcon", "barley", "candle", "garden", "silver", "rocket", "puzzle", "island", "engine",
         "butter", "forest", "glacier", "hammer", "jacket", "ladder", "magnet", "napkin", "oyster",
         "pencil", "rabbit", "sunset", "tomato", "wizard", "cotton", "desert", "lemon", "planet")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# banner event -> what a question says the player did
EVENTS = {"GOAL": "scored the goal", "YELLOW CARD": "got the yellow card", "RED CARD": "got the red card",
          "SUBSTITUTION": "was substituted", "PENALTY": "took the penalty", "CORNER": "took the corner",
          "OFFSIDE": "was offside", "FOUL": "committed the foul"}
WHO = ("Who {vp}?", "Which player {vp}?", "According to the screen, who {vp}?", "Who {vp}, as shown on screen?")
SCREEN = ("What was shown on screen about {kw}?", "What did the screen say about {kw}?",
          "What on-screen text mentioned {kw}?", "What did the text on screen say about {kw}?")
SAID = ("What was said about {kw}?", "What did the speaker say about {kw}?", "What did they say about {kw}?")
SAID_SUB = ("What was said about {kw}?", "What did the subtitles say about {kw}?")
WHEN_SCREEN = ("When was {q}{text}{q} shown on screen?", "At what time did the screen show {q}{text}{q}?",
               "When did {q}{text}{q} appear on screen?")
WHEN_SAID = ("When was {q}{text}{q} said?", "When did the speaker say {q}{text}{q}?",
             "At what time was {q}{text}{q} said?")

# (keyword a question names, sentence template, key template); each used once per video.
# Slots: {place} pseudo-place, {name} pseudo-name (title case), {w} a word, {n}/{m} numbers, {day}.
SENTENCES = (
    ("the train", "the train to {place} leaves from platform {n}", "{place}"),
    ("the meeting", "the meeting starts at {n} in room {m}", "room {m}"),
    ("the price", "the price of {w} went up by {n} percent", "{w}"),
    ("tomorrow", "tomorrow will be windy with {n} degrees in {place}", "{place}"),
    ("the package", "your package from {place} arrives on {day}", "{place}"),
    ("the concert", "the concert in {place} was moved to {day}", "{place}"),
    ("the soup", "add {n} spoons of {w} to the soup", "{w}"),
    ("the bridge", "the {place} bridge is closed until {day}", "{place}"),
    ("the doctor", "doctor {name} will see you in room {n}", "{name}"),
    ("the flight", "flight {n} to {place} is boarding at gate {m}", "{place}"),
    ("the library", "the library lends {w} books until {day}", "{w}"),
    ("the ticket", "a ticket costs {n} coins at the {w} gate", "{n} coins"),
    ("the museum", "the museum opens a new hall about {w}", "{w}"),
    ("the password", "the new password is {w} {n}", "{w} {n}"),
    ("the keeper", "the keeper {name} has made {n} saves today", "{name}"),
    ("the crowd", "the crowd here is about {n} thousand people", "{n} thousand"),
    ("the coach", "the coach {name} wants more {w} from the team", "{name}"),
    ("the market", "the {w} market opens every {day}", "{w}"),
    ("the river", "the river near {place} rose {n} meters overnight", "{place}"),
    ("the recipe", "the recipe needs {n} grams of {w}", "{w}"),
)
# (keyword, on-screen template, key template); upper-case like signs and plates.
SIGNS = (
    ("the station", "{PLACE} STATION", "{PLACE}"),
    ("the street", "{W} STREET {n}", "{W}"),
    ("the taxi", "TAXI {AA} {nnnn}", "{AA} {nnnn}"),
    ("the bus", "BUS {n} TO {PLACE}", "{PLACE}"),
    ("the exit", "EXIT {n} {PLACE}", "{PLACE}"),
    ("the hotel", "HOTEL {W} {n} ROOMS", "{W}"),
    ("the pharmacy", "{W} PHARMACY OPEN", "{W}"),
    ("the museum", "{PLACE} MUSEUM OF {W}", "{PLACE}"),
    ("the sale", "SALE {n} PERCENT OFF {W}", "{W}"),
)


@dataclass
class TextItem:
    """One piece of a chunk's text channel and what can be asked about it."""

    source: str                 # "ocr" | "asr" | "subtitle"
    text: str
    keyword: str = ""           # what a question names ("" = not asked about)
    key: str = ""               # what a right answer must contain
    event: str = ""             # banner event (text_who)
    name: str = ""


@dataclass
class TextVideo:
    """A caption video plus its text channel: items and rendered line per chunk."""

    video: CaptionVideo
    items: list[list[TextItem]] = field(default_factory=list)

    def parts(self, i: int) -> dict[str, str]:
        # Joined as ingest/text/align.py joins them: screen items are separate things.
        return {src: (" | " if src == "ocr" else " ").join(it.text for it in self.items[i] if it.source == src)
                for src in ("ocr", "asr", "subtitle")}

    def line(self, i: int) -> str:
        return text_line(self.parts(i))

    @property
    def lines(self) -> list[str]:
        return [self.line(i) for i in range(self.video.n_chunks)]


def pseudo_word(rng: np.random.Generator, syllables: tuple[int, int] = (2, 3)) -> str:
    n = int(rng.integers(syllables[0], syllables[1] + 1))
    return "".join(str(rng.choice(ONSETS)) + str(rng.choice(VOWELS)) + str(rng.choice(CODAS)) for _ in range(n))


def _word(rng: np.random.Generator, used: set[str]) -> str:
    """A random word no other item of the video uses (so a keyword names one item)."""
    w = str(rng.choice([w for w in WORDS if w not in used]))
    used.add(w)
    return w


def _fill(template: str, rng: np.random.Generator, slots: dict[str, str], used: set[str]) -> str:
    """Fill the template's slots, drawing each one the first time it is needed."""
    draw = {"place": lambda: pseudo_word(rng).title(), "name": lambda: pseudo_word(rng).title(),
            "w": lambda: _word(rng, used),
            "n": lambda: str(int(rng.integers(2, 100))), "m": lambda: str(int(rng.integers(100, 1000))),
            "day": lambda: str(rng.choice(DAYS)), "PLACE": lambda: pseudo_word(rng).upper(),
            "W": lambda: _word(rng, used).upper(),
            "AA": lambda: "".join(rng.choice(list("ABCDEFGHJKLMNPRSTVXZ"), 2)),
            "nnnn": lambda: str(int(rng.integers(1000, 10000)))}
    for _, name, _, _ in string.Formatter().parse(template):
        if name and name not in slots:
            slots[name] = draw[name]()
    return template.format(**slots)


def _templated(pool, rng: np.random.Generator, used: set[str], source: str) -> TextItem | None:
    """An item from an unused (keyword, template, key) entry of pool, or None."""
    free = [p for p in pool if p[0] not in used]
    if not free:
        return None
    kw, template, key = free[int(rng.integers(len(free)))]
    used.add(kw)
    slots: dict[str, str] = {}
    text = _fill(template, rng, slots, used)
    return TextItem(source, text, kw, _fill(key, rng, slots, used))


def _slide(rng: np.random.Generator, used: set[str]) -> TextItem | None:
    """A slide title of random words; asked about one word, keyed on another."""
    words = [str(w) for w in rng.choice([w for w in WORDS if w not in used], 3, replace=False)]
    used.update(words)
    form = int(rng.integers(3))
    text = (f"{words[0].title()} and {words[1].title()} in {words[2].title()}" if form == 0 else
            f"Notes on {words[0].title()} {words[1].title()} {words[2].title()}" if form == 1 else
            f"{words[0].title()} {words[1].title()}: {words[2].title()}")
    kw, key = (words[0], words[1]) if rng.random() < 0.5 else (words[2], words[0])
    return TextItem("ocr", text, kw, key.title())


def text_video(video: CaptionVideo, rng: np.random.Generator, n_tokens: Callable[[str], int],
               cap: int = 48, kind: str | None = None) -> TextVideo:
    """Text lines for the chunks of `video`; each line (`text_line`) at most `cap` tokens
    (n_tokens counts them): items are dropped, subtitles first, then speech, then on-screen
    extras, until it fits (the scoreboard stays)."""
    kind = kind or str(rng.choice(["sports", "sports", "street", "lecture", "talk"]))
    n = video.n_chunks
    used: set[str] = set()
    items: list[list[TextItem]] = [[] for _ in range(n)]
    p_speech, p_sub, p_sign = {"sports": (0.3, 0.1, 0.0), "street": (0.3, 0.1, 0.4),
                               "lecture": (0.6, 0.3, 0.0), "talk": (0.7, 0.3, 0.1)}[kind]
    if kind == "sports":
        home, away = (("HOME", "AWAY") if rng.random() < 0.5 else
                      tuple(pseudo_word(rng, (1, 1)).upper()[:3] for _ in range(2)))
        score = [int(rng.integers(0, 3)), int(rng.integers(0, 3))]
        clock0 = float(rng.uniform(0, 80 * 60))
        events = [str(e) for e in rng.permutation(list(EVENTS))[:int(rng.integers(1, 5))]]
        where = sorted(int(c) for c in rng.choice(n, min(n, len(events)), replace=False))
        banners = dict(zip(where, events))
        # As OCR lines come out of ingest (align.py): the scoreboard and a ticking clock are
        # separate items, the clock (counting up or down) at its first and last value in
        # the chunk, the banner in between.
        sign = 1.0 if rng.random() < 0.5 else -1.0
        span = video.chunk_times[1] - video.chunk_times[0] if n > 1 else 16.0

        def clock(t: float) -> str:
            t = max(0.0, t)
            return f"{int(t // 60) % 100:02d}:{int(t % 60):02d}"

        for i in range(n):
            secs = clock0 + sign * (video.chunk_times[i] - video.chunk_times[0])
            ev = banners.get(i)
            if ev == "GOAL":
                score[int(rng.integers(2))] += 1
            board = TextItem("ocr", f"{home} {score[0]} {away} {score[1]}")
            first = TextItem("ocr", clock(secs))
            items[i] += [board, first] if rng.random() < 0.5 else [first, board]
            if ev:
                name = pseudo_word(rng).upper()
                items[i].append(TextItem("ocr", f"{ev}: {name}", key=name, event=ev, name=name))
            if span > 1:
                items[i].append(TextItem("ocr", clock(secs + sign * (span - 1))))
    slides = sorted(int(c) for c in rng.choice(n, int(rng.integers(1, min(n, 4) + 1)), replace=False)) \
        if kind == "lecture" else []
    for i in range(n):
        if i in slides:
            items[i].append(_slide(rng, used))
        if rng.random() < p_sign:
            it = _templated(SIGNS, rng, used, "ocr")
            if it:
                items[i].append(it)
        for src, p in (("asr", p_speech), ("subtitle", p_sub)):
            if rng.random() < p:
                it = _templated(SENTENCES, rng, used, src)
                if it:
                    items[i].append(it)
    tv = TextVideo(video, items)
    for i in range(n):
        while n_tokens(tv.line(i)) > cap and len(items[i]) > 1:
            drop = next((j for src in ("subtitle", "asr", "ocr") for j in range(len(items[i]) - 1, 0, -1)
                         if items[i][j].source == src), len(items[i]) - 1)
            items[i].pop(drop)
    return tv


def text_questions(tv: TextVideo, rng: np.random.Generator) -> list[QA]:
    """Every text question the lines allow (one random wording each): who for each banner,
    what-on-screen / what-said for each keyword, when for each text shown in one chunk."""
    out: list[QA] = []
    seen: dict[str, int] = {}
    for chunk in tv.items:
        for it in chunk:
            seen[it.text] = seen.get(it.text, 0) + 1
    times = tv.video.chunk_times
    for i, chunk in enumerate(tv.items):
        for it in chunk:
            t = f"{times[i]:.1f}s"
            if it.event:
                q = str(rng.choice(WHO)).format(vp=EVENTS[it.event])
                a = f"It was {it.name}." if rng.random() < 0.5 else f"{it.name}."
                out.append(QA("text_who", q, a, {i}, it.name))
            elif it.keyword:
                kw = it.keyword
                if it.source == "ocr" and rng.random() < 0.3:     # as the screen writes it
                    kw = kw[:4] + kw[4:].upper() if kw.startswith("the ") else kw.upper()
                if it.source == "ocr":
                    out.append(QA("text_screen", str(rng.choice(SCREEN)).format(kw=kw),
                                  f'The screen showed "{it.text}".', {i}, it.key))
                else:
                    who = "speaker" if it.source == "asr" else "subtitles"
                    out.append(QA("text_said", str(rng.choice(SAID if it.source == "asr" else SAID_SUB)).format(kw=kw),
                                  f'The {who} said "{it.text}".', {i}, it.key))
            if (it.event or it.keyword) and seen[it.text] == 1:
                q = '"' if rng.random() < 0.5 else ""
                text, wording = it.text, WHEN_SCREEN
                if it.source != "ocr":      # a sentence is often quoted by its first words
                    words = text.split()
                    text = " ".join(words[:int(rng.integers(4, 7))]) if rng.random() < 0.5 else text
                    wording = WHEN_SAID if it.source == "asr" else WHEN_SAID[::2]
                out.append(QA("text_when", str(rng.choice(wording)).format(q=q, text=text), f"At {t}.", {i}, t))
    return out
