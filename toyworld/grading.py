"""Grading answers to toy-world questions (TOYWORLD.md): an answer is right when it contains
the expected token (digit, color, shape, number, or a time within tolerance), any case;
a counting answer by the count it states (counts_in), not by every number in it."""

from __future__ import annotations

import re

_TIME = re.compile(r"(?:(\d+):(\d{1,2}(?:\.\d+)?))|(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)")
_NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "once": "1", "twice": "2"}


def times_in(text: str) -> list[float]:
    """Seconds mentioned in text: "mm:ss" or "12.5s" / "12 seconds"."""
    out = []
    for m in _TIME.finditer(text):
        if m.group(1) is not None:
            out.append(int(m.group(1)) * 60 + float(m.group(2)))
        else:
            out.append(float(m.group(3)))
    return out


def counts_in(text: str) -> list[str]:
    """The counts an answer states, as digits: the number before "time(s)" and
    "once"/"twice", or, where it says neither, every number word and integer in it. An answer
    may list when each appearance began ("at 12.0s and 40.0s, 2 times"), and the digits of
    those times are not its count."""
    toks = re.findall(r"[a-z]+|\d+(?:\.\d+)?", text.lower())
    counted = [toks[i - 1] for i in range(1, len(toks)) if toks[i] in ("time", "times")]
    counted += [t for t in toks if t in ("once", "twice")]
    return [_NUMBER_WORDS.get(t, t) for t in (counted or toks)]


def is_correct(qa: dict, answer: str) -> bool:
    """qa: one question of a synth ground-truth JSON; answer: the model's text."""
    text = answer.lower()
    if qa["type"] == "temporal":
        lo, hi = qa["answer_span"]
        tol = qa.get("tolerance_s", 0.0)
        return any(lo - tol <= t <= hi + tol for t in times_in(text))
    expected = str(qa["answer"]).lower()
    if qa["type"] == "counting":
        return expected in counts_in(text)
    if qa["type"] == "ordering":
        return expected.removeprefix("the ").strip() in text
    return re.search(rf"\b{re.escape(expected)}\b", text) is not None


def evidence_hits(qa: dict, events: list[dict], evidence: list[dict]) -> bool:
    """Whether any cited chunk overlaps the time span of an event the question is about."""
    spans = [(e["t_start"], e["t_end"]) for e in events if e["id"] in qa.get("event_ids", [])]
    return any(ev["t_start"] < b and a < ev["t_end"] for ev in evidence for a, b in spans)
