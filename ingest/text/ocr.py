"""On-screen text: Tesseract over the sampled frames, re-reading only what changed.

    segs = read_frames(iter_frames(path, 1.0, 10_000, size=...))   # [TextSegment(source="ocr")]

Cost control (most frames of most videos show the same text as the frame before):
  - a frame is compared with the last frame sent to OCR on a grid of cells (grayscale
    pixel differences); no changed cell -> its text is the previous frame's, no OCR;
  - changed cells are grown along the text they touch (connected cells with strong
    edges, in this or the reference frame) into boxes; if the boxes cover under half the
    frame, only those padded crops are read and their words replace the previous words
    whose centres fall inside them; otherwise the whole frame is read;
  - images are written to a temp dir and read by one tesseract process per batch (its
    start-up, ~60 ms, is more than reading a small crop).

Words come from Tesseract's TSV output (boxes + confidences); words under `min_conf` are
dropped; words are grouped into lines by Tesseract's line ids, split where the gap between
two words is wider than ~2.5 text heights (a scoreboard and a clock on one row).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .segments import TextSegment, ToolMissing

PROGRAM = "tesseract"
PACKAGES = "tesseract-ocr tesseract-ocr-eng"
PIXEL_DIFF = 40        # grey levels: above compression noise, below any text edge
CHANGED_PIXELS = 3     # pixels over PIXEL_DIFF that make a cell "changed"
EDGE = 48              # grey-level step between neighbours that counts as an edge
EDGE_PIXELS = 4        # edge pixels that make a cell "texty"
FULL_FRACTION = 0.5    # crops covering more than this share of the frame: read it all
BATCH_IMAGES = 64      # images per tesseract process
# Frames up to this size are read at 2x: Tesseract's recogniser wants text ~30 px tall, and
# at 360p a caption's confidence drops from ~95 to ~50 without it. Bilinear, not bicubic:
# bicubic's sharp edges turned a clock "11:32" into "TV32" (blocky pixels, same).
UPSCALE_BELOW = 1000
LINE_GAP = 2.5         # a gap wider than this many word heights splits a line
_WORDISH = re.compile(r"[A-Za-z0-9]{2}|^\d+$")


def _env() -> dict:
    # One thread per tesseract: we share the CPU with decoding and the model.
    return {**os.environ, "OMP_THREAD_LIMIT": "1"}


def require() -> None:
    """ToolMissing unless tesseract is installed."""
    if shutil.which(PROGRAM) is None:
        raise ToolMissing("OCR", PROGRAM, PACKAGES)


def tesseract_version() -> str:
    """'tesseract 5.3.0' (first line of `tesseract --version`); ToolMissing if absent."""
    require()
    out = subprocess.run([PROGRAM, "--version"], capture_output=True, text=True, env=_env())
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else PROGRAM


@dataclass
class _Word:
    text: str
    conf: float
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in frame pixels
    line: tuple                      # (image id, block, paragraph, line)


@dataclass
class _Image:
    """One image sent to tesseract: a frame or a crop of it, at (x, y) in the frame,
    upscaled `up` times; region: the box whose words it replaces (None: the whole frame)."""

    path: str
    x: int
    y: int
    up: int
    region: tuple[int, int, int, int] | None


def _gray(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(np.uint16)
    return ((f[..., 0] * 77 + f[..., 1] * 150 + f[..., 2] * 29) >> 8).astype(np.uint8)


def _cell_counts(mask: np.ndarray, cell: int) -> np.ndarray:
    """Count of True pixels per cell x cell block: [ceil(H/cell), ceil(W/cell)]."""
    h, w = mask.shape
    ph, pw = -h % cell, -w % cell
    m = np.pad(mask, ((0, ph), (0, pw)))
    return m.reshape(m.shape[0] // cell, cell, m.shape[1] // cell, cell).sum(axis=(1, 3))


def _texty(gray: np.ndarray, cell: int) -> np.ndarray:
    g = gray.astype(np.int16)
    edges = np.zeros(gray.shape, bool)
    edges[:, 1:] |= np.abs(g[:, 1:] - g[:, :-1]) > EDGE
    edges[1:, :] |= np.abs(g[1:, :] - g[:-1, :]) > EDGE
    return _cell_counts(edges, cell) >= EDGE_PIXELS


def _regions(changed: np.ndarray, texty: np.ndarray, reach: int) -> list[tuple[int, int, int, int]]:
    """Boxes (r0, c0, r1, c1) in cells, end-exclusive, of the components of `texty |
    changed` (bridged `reach` cells sideways, so a word's letters and a line's words join)
    that contain a changed cell."""
    mask = texty | changed
    left, right = np.zeros_like(mask), np.zeros_like(mask)
    for k in range(1, reach + 1):
        left[:, k:] |= mask[:, :-k]
        right[:, :-k] |= mask[:, k:]
    bridged = mask | (left & right)  # a gap of up to 2*reach-1 cells with text on both sides
    rows, cols = mask.shape
    seen = np.zeros_like(mask)
    boxes = []
    for r, c in zip(*np.nonzero(changed)):
        if seen[r, c]:
            continue
        stack, box = [(r, c)], [r, c, r + 1, c + 1]
        seen[r, c] = True
        while stack:
            y, x = stack.pop()
            box = [min(box[0], y), min(box[1], x), max(box[2], y + 1), max(box[3], x + 1)]
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < rows and 0 <= nx < cols and bridged[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        boxes.append(tuple(box))
    return _merge_boxes(boxes)


def _merge_boxes(boxes, pad: int = 1):
    """Pad boxes by `pad` cells and merge overlapping ones until none overlap."""
    boxes = [(r0 - pad, c0 - pad, r1 + pad, c1 + pad) for r0, c0, r1, c1 in boxes]
    merged = True
    while merged:
        merged = False
        out = []
        for b in boxes:
            for i, o in enumerate(out):
                if b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]:
                    out[i] = (min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3]))
                    merged = True
                    break
            else:
                out.append(b)
        boxes = out
    return boxes


def _parse_tsv(tsv: str, n_images: int, min_conf: float) -> list[list[tuple]]:
    """Per image (TSV page_num order): [(text, conf, left, top, width, height, block, par, line)]."""
    pages: list[list[tuple]] = [[] for _ in range(n_images)]
    for row in tsv.splitlines()[1:]:
        f = row.split("\t")
        if len(f) < 12 or f[0] != "5":
            continue
        text, conf = " ".join(f[11].split()), float(f[10])
        page = int(f[1]) - 1
        if text and conf >= min_conf and 0 <= page < n_images:
            pages[page].append((text, conf, int(f[6]), int(f[7]), int(f[8]), int(f[9]), f[2], f[3], f[4]))
    return pages


def _run_tesseract(paths: list[str], workdir: Path, min_conf: float) -> list[list[tuple]]:
    listing = workdir / f"list-{time.monotonic_ns()}.txt"
    listing.write_text("\n".join(paths) + "\n")
    try:
        done = subprocess.run([PROGRAM, str(listing), "stdout", "--psm", "3", "tsv"], capture_output=True,
                              text=True, env=_env())
    except FileNotFoundError:
        raise ToolMissing("OCR", PROGRAM, PACKAGES) from None
    if done.returncode != 0:
        if "traineddata" in done.stderr or "Failed loading language" in done.stderr:
            raise ToolMissing("OCR", PROGRAM, PACKAGES)
        raise RuntimeError(f"tesseract failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    for p in paths:
        os.unlink(p)
    listing.unlink()
    return _parse_tsv(done.stdout, len(paths), min_conf)


def _lines(words: list[_Word]) -> list[tuple[str, float]]:
    """(text, mean conf 0-100) per line, top to bottom then left to right."""
    groups: dict[tuple, list[_Word]] = {}
    for w in words:
        groups.setdefault(w.line, []).append(w)
    lines = []
    for ws in groups.values():
        ws.sort(key=lambda w: w.box[0])
        height = float(np.median([w.box[3] - w.box[1] for w in ws]))
        run = [ws[0]]
        for prev, w in zip(ws, ws[1:]):
            if w.box[0] - prev.box[2] > LINE_GAP * height:
                lines.append(run)
                run = []
            run.append(w)
        lines.append(run)
    out = []
    for run in sorted(lines, key=lambda r: (min(w.box[1] for w in r) // 8, r[0].box[0])):
        text = " ".join(w.text for w in run)
        if _WORDISH.search(text):  # lone punctuation/letters are texture, not text
            out.append((text, float(np.mean([w.conf for w in run]))))
    return out


class _Tracker:
    """Turns per-frame line sets into segments: a line seen on consecutive frames is one
    segment from its first frame's time to the end of its last frame."""

    def __init__(self):
        self.open: dict[str, list] = {}   # text -> [t_start, t_end, conf_sum, n]
        self.done: list[TextSegment] = []

    def frame(self, t: float, end: float, lines: list[tuple[str, float]]) -> None:
        present = set()
        for text, conf in lines:
            if text in present:
                continue
            present.add(text)
            seg = self.open.get(text)
            if seg is None:
                self.open[text] = [t, end, conf, 1]
            else:
                seg[1], seg[2], seg[3] = end, seg[2] + conf, seg[3] + 1
        for text in [k for k in self.open if k not in present]:
            self._close(text)

    def _close(self, text: str) -> None:
        t0, t1, conf, n = self.open.pop(text)
        self.done.append(TextSegment(t0, t1, text, "ocr", round(conf / n / 100.0, 4)))

    def finish(self) -> list[TextSegment]:
        for text in list(self.open):
            self._close(text)
        return sorted(self.done, key=lambda s: (s.t_start, s.t_end, s.text))

    def take_closed(self) -> list[TextSegment]:
        """The segments closed since the last call (final: their text is gone)."""
        out, self.done = self.done, []
        return out

    def open_now(self) -> list[TextSegment]:
        """The segments still on screen, as they stand."""
        return [TextSegment(t0, t1, text, "ocr", round(conf / n / 100.0, 4)) for text, (t0, t1, conf, n) in self.open.items()]


# The longer side OCR reads frames at (decoded once with the model's frames).
OCR_MAX_SIDE = 1280


def ocr_size(width: int, height: int, max_side: int = OCR_MAX_SIDE) -> tuple[int, int] | None:
    """(W, H) OCR reads a width x height video at: None (native) when its longer side is at
    most max_side, else scaled down (even sides) so that side is max_side."""
    if max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(16, round(width * scale / 2) * 2), max(16, round(height * scale / 2) * 2)


class OcrStream:
    """read_frames one chunk at a time: `add(frames, times, end)` reads a chunk's frames (a
    tesseract run per chunk that changed); `take_closed()` / `open_now()` / `finish()`."""

    def __init__(self, min_conf: float = 60.0, max_side: int = 1280):
        require()
        self._tmp = tempfile.TemporaryDirectory(prefix="videokv-ocr-")
        self.reader = _Reader(Path(self._tmp.name), min_conf, max_side)

    def add(self, frames: np.ndarray, times: np.ndarray, end: float) -> None:
        """frames uint8 [n, H, W, 3] with times [n]; each lasts until the next, the last until `end`."""
        for frame, t in zip(frames, times):
            self.reader.add(frame, float(t))
        self.reader.flush(end)

    def take_closed(self) -> list[TextSegment]:
        return self.reader.tracker.take_closed()

    def open_now(self) -> list[TextSegment]:
        return self.reader.tracker.open_now()

    def finish(self) -> list[TextSegment]:
        out = self.reader.tracker.finish()
        self._tmp.cleanup()
        return out

    @property
    def stats(self) -> dict:
        return self.reader.stats


class _Reader:
    """read_frames' state: the reference frame, the current words, the frames waiting for
    the next tesseract run, and the segments so far."""

    def __init__(self, workdir: Path, min_conf: float, max_side: int):
        self.workdir, self.min_conf, self.max_side = workdir, min_conf, max_side
        self.stats = {"frames": 0, "full": 0, "crops": 0, "unchanged": 0, "tesseract_runs": 0, "seconds": 0.0}
        self.tracker = _Tracker()
        self.words: list[_Word] = []
        self.pending: list[tuple[float, list[_Image]]] = []  # per frame since the last run ([] = unchanged)
        self.n_images = 0
        self.ref = self.ref_texty = None

    def _plan(self, gray: np.ndarray, cell: int, texty: np.ndarray) -> list[tuple[int, int, int, int]] | None:
        """Regions (x0, y0, x1, y1) to read; [] when nothing changed; None: the whole frame."""
        if self.ref is None or self.ref.shape != gray.shape:
            return None
        changed = _cell_counts(np.abs(gray.astype(np.int16) - self.ref) > PIXEL_DIFF, cell) >= CHANGED_PIXELS
        if not changed.any():
            return []
        h, w = gray.shape
        boxes = [(max(0, c0 * cell), max(0, r0 * cell), min(w, c1 * cell), min(h, r1 * cell))
                 for r0, c0, r1, c1 in _regions(changed, texty | self.ref_texty, reach=3)]
        return boxes if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) < FULL_FRACTION * w * h else None

    def add(self, frame: np.ndarray, t: float) -> None:
        if self.n_images >= BATCH_IMAGES:
            self.flush(t)
        self.stats["frames"] += 1
        h, w = frame.shape[:2]
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            frame = np.asarray(Image.fromarray(frame).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
            h, w = frame.shape[:2]
        gray = _gray(frame)
        cell = max(8, round(max(h, w) / 80))
        texty = _texty(gray, cell)
        regions = self._plan(gray, cell, texty)
        if regions == []:
            self.stats["unchanged"] += 1
            self.pending.append((t, []))
            return
        self.ref, self.ref_texty = gray.astype(np.int16), texty
        up = 2 if max(h, w) < UPSCALE_BELOW else 1
        images = []
        for x0, y0, x1, y1 in regions or [(0, 0, w, h)]:
            path = str(self.workdir / f"{self.stats['frames']}-{len(images)}.pgm")
            img = Image.fromarray(gray[y0:y1, x0:x1])
            if up > 1:
                img = img.resize((img.width * up, img.height * up), Image.BILINEAR)
            img.save(path)
            images.append(_Image(path, x0, y0, up, None if regions is None else (x0, y0, x1, y1)))
        self.stats["full" if regions is None else "crops"] += len(images)
        self.n_images += len(images)
        self.pending.append((t, images))

    def flush(self, last_end: float) -> None:
        """Read the pending images in one tesseract run; replay the frames in order."""
        paths = [im.path for _, images in self.pending for im in images]
        results = iter([])
        if paths:
            t0 = time.perf_counter()
            results = iter(_run_tesseract(paths, self.workdir, self.min_conf))
            self.stats["seconds"] += time.perf_counter() - t0
            self.stats["tesseract_runs"] += 1
        for i, (t, images) in enumerate(self.pending):
            for k, im in enumerate(images):
                u = im.up
                found = [_Word(text, conf, (im.x + x // u, im.y + y // u, im.x + (x + w) // u, im.y + (y + h) // u),
                               (f"{t}:{k}", b, p, l)) for text, conf, x, y, w, h, b, p, l in next(results)]
                if im.region is None:
                    self.words = found
                else:  # the crop's words replace those whose centres it covers
                    x0, y0, x1, y1 = im.region
                    self.words = [w for w in self.words if not (x0 <= (w.box[0] + w.box[2]) / 2 < x1
                                                                and y0 <= (w.box[1] + w.box[3]) / 2 < y1)] + found
            end = self.pending[i + 1][0] if i + 1 < len(self.pending) else last_end
            self.tracker.frame(t, end, _lines(self.words))
        self.pending.clear()
        self.n_images = 0


def read_frames(batches: Iterable, min_conf: float = 60.0, max_side: int = 1280,
                stats: dict | None = None) -> list[TextSegment]:
    """OCR segments of sampled frames.

    batches: SampledFrames in time order (.frames uint8 [N, H, W, 3] RGB, .timestamps
    seconds); a frame lasts until the next frame's time (the last one: one spacing).
    min_conf: Tesseract word confidence 0-100 below which a word is dropped.
    max_side: frames larger than this are downscaled first (pixels cost OCR time).
    stats: if given, filled with counts: frames, full (frames read whole), crops (regions
    read), unchanged (frames not read), tesseract_runs, seconds (in tesseract)."""
    require()
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="videokv-ocr-") as tmp:
        reader = _Reader(Path(tmp), min_conf, max_side)
        for batch in batches:
            for frame, t in zip(batch.frames, batch.timestamps):
                times.append(float(t))
                reader.add(frame, float(t))
        spacing = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        if times:
            reader.flush(times[-1] + spacing)
    if stats is not None:
        stats.update(reader.stats)
    return reader.tracker.finish()
