"""The toy world's vocabulary and a frame renderer (see shared/TOYWORLD.md).

Pure functions of a numpy Generator: backgrounds, object sprites (shapes and digit
cards) and frame composition. `synth.py` builds whole videos from these;
`random_scene(rng)` makes single labelled frames for training a vision tower.

Frames are uint8 [H, W, 3] RGB. Boxes are (x0, y0, x1, y1) pixels, x1/y1 exclusive,
the object's full (unoccluded) extent clipped to the frame.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 35),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "orange": (245, 135, 20),
    "purple": (140, 50, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
DIGITS = tuple(str(d) for d in range(10))
# DejaVu (Debian package fonts-dejavu-core); Pillow finds them by file name.
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
)
_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/local/share/fonts")

MAX_ROTATION = 30.0
MAX_OCCLUSION = 0.25
# Distractors 5-25% of frame height per TOYWORLD; we keep them <= 18% and events >= 22%
# so that "larger than distractors" holds for every pair, not just on average.
DISTRACTOR_HEIGHT = (0.05, 0.18)
EVENT_HEIGHT = (0.22, 0.60)
# Neutral occluder colour: far from every vocabulary colour.
OCCLUDER_RGB = (128, 128, 120)
# Backgrounds stay at least this far (RGB distance) from every vocabulary colour, so
# that colour words always refer to objects.
BACKGROUND_MIN_DISTANCE = 95.0


def color_distance(rgb, name: str) -> np.ndarray:
    """Euclidean RGB distance of pixels [..., 3] to vocabulary colour `name`."""
    return np.linalg.norm(np.asarray(rgb, np.float32) - np.asarray(COLORS[name], np.float32), axis=-1)


def classify_pixels(frame: np.ndarray, max_distance: float = 70.0) -> np.ndarray:
    """int8 [H, W]: index into list(COLORS) of each pixel's nearest vocabulary colour,
    or -1 when no vocabulary colour is within `max_distance` (background, occluder)."""
    palette = np.asarray(list(COLORS.values()), np.float32)
    dist = np.linalg.norm(frame[..., None, :].astype(np.float32) - palette, axis=-1)
    nearest = dist.argmin(-1).astype(np.int8)
    nearest[dist.min(-1) > max_distance] = -1
    return nearest


@lru_cache(maxsize=64)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        for folder in _FONT_DIRS:
            try:
                return ImageFont.truetype(f"{folder}/{name}", size)
            except OSError:
                continue
    raise RuntimeError(
        f"font {name} not found: install the DejaVu fonts (Debian/Ubuntu: apt-get install fonts-dejavu-core)"
    )


# ---------------------------------------------------------------- backgrounds


def _muted_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-saturation colour far from every vocabulary colour."""
    for _ in range(200):
        h, s, v = rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.75)
        rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))
        if min(float(color_distance(rgb, n)) for n in COLORS) >= BACKGROUND_MIN_DISTANCE:
            return rgb
    return (120, 110, 100)


@dataclass
class Background:
    """kind: "solid" | "gradient" | "noise". Drift makes it change slowly with t."""

    kind: str
    color_a: tuple[int, int, int]
    color_b: tuple[int, int, int]
    angle: float  # gradient direction, degrees
    drift: float  # gradient: degrees/s; noise: pixels/s; solid: brightness wobble
    noise_amp: float
    noise_seed: int
    _texture: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Background":
        kind = str(rng.choice(["solid", "gradient", "noise"]))
        a = _muted_color(rng)
        b = _muted_color(rng)
        # Every point of a gradient must also stay muted: check the midpoint.
        mid = tuple((x + y) // 2 for x, y in zip(a, b))
        if min(float(color_distance(mid, n)) for n in COLORS) < BACKGROUND_MIN_DISTANCE:
            b = a
        return cls(kind, a, b, float(rng.uniform(0, 360)), float(rng.uniform(0, 6) * rng.choice([0, 1])),
                   float(rng.uniform(6, 20)), int(rng.integers(2**31)))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "color_a": list(self.color_a), "color_b": list(self.color_b),
                "angle": self.angle, "drift": self.drift, "noise_amp": self.noise_amp}

    def render(self, width: int, height: int, t: float) -> np.ndarray:
        """float32 [H, W, 3] background at time t seconds."""
        a = np.asarray(self.color_a, np.float32)
        if self.kind == "solid":
            # Slow brightness wobble (+-6 levels) as "drift".
            return np.broadcast_to(a + 6.0 * np.sin(0.2 * self.drift * t), (height, width, 3)).astype(np.float32)
        if self.kind == "gradient":
            theta = np.deg2rad(self.angle + self.drift * t)
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
            proj = (xs - width / 2) * np.cos(theta) + (ys - height / 2) * np.sin(theta)
            span = 0.5 * (abs(width * np.cos(theta)) + abs(height * np.sin(theta))) + 1e-6
            w = ((proj / span) * 0.5 + 0.5).clip(0, 1)[..., None]
            return a * (1 - w) + np.asarray(self.color_b, np.float32) * w
        # noise: a smooth random texture twice the frame, scrolled by drift * t pixels.
        if self._texture is None or self._texture.shape[:2] != (2 * height, 2 * width):
            tex_rng = np.random.default_rng(self.noise_seed)
            small = tex_rng.normal(0, 1, (max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
            img = Image.fromarray(((small.clip(-3, 3) + 3) * 42.5).astype(np.uint8)).resize(
                (2 * width, 2 * height), Image.Resampling.BICUBIC)
            self._texture = (np.asarray(img, np.float32) / 127.5 - 1.0) * self.noise_amp
        off = int(self.drift * t) % height
        tex = self._texture[off:off + height, off % width:off % width + width]
        return a + tex


# ---------------------------------------------------------------- objects


@dataclass
class ToyObject:
    """One shape or card. `height` is its unrotated size in pixels."""

    kind: str  # "shape" | "card"
    color: str
    shape: str | None = None  # for kind == "shape"
    digit: str | None = None  # for kind == "card"
    height: int = 40
    rotation: float = 0.0
    filled: bool = True
    stroke: float = 0.18  # outline width as a fraction of height
    font: str = FONTS[0]
    text_color: str = "white"
    occlusion: float = 0.0  # fraction of the bbox covered by the occluder strip
    occlusion_side: str = "left"

    @property
    def name(self) -> str:
        return f"{self.color} card" if self.kind == "card" else f"{self.color} {self.shape}"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def contrasting_text(color: str) -> str:
    r, g, b = COLORS[color]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def _shape_polygon(shape: str, s: float) -> list[tuple[float, float]]:
    c = s / 2
    if shape == "triangle":
        return [(c, 0), (s, s * 0.93), (0, s * 0.93)]
    if shape == "star":
        pts = []
        for i in range(10):
            r = c if i % 2 == 0 else c * 0.45
            ang = -np.pi / 2 + i * np.pi / 5
            pts.append((c + r * np.cos(ang), c + r * np.sin(ang)))
        return pts
    if shape == "cross":
        a, b = s * 0.33, s * 0.67
        return [(a, 0), (b, 0), (b, a), (s, a), (s, b), (b, b), (b, s), (a, s), (a, b), (0, b), (0, a), (a, a)]
    raise ValueError(shape)


@lru_cache(maxsize=512)
def _sprite_cached(obj_key: tuple) -> tuple[Image.Image, tuple[int, int, int, int]]:
    obj = ToyObject(**dict(obj_key))
    return _draw_sprite(obj)


def sprite(obj: ToyObject) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """RGBA image of the object, rotated, with its occluder; and the object's own
    bbox inside that image (before occlusion). Cached: objects are re-pasted per frame."""
    return _sprite_cached(tuple(sorted(obj.to_dict().items())))


SUPERSAMPLE = 2  # sprites are drawn at 2x and downsampled: anti-aliased edges


def _draw_sprite(obj: ToyObject) -> tuple[Image.Image, tuple[int, int, int, int]]:
    h = max(8, int(obj.height))
    rgb = COLORS[obj.color]
    k = SUPERSAMPLE
    H = h * k
    if obj.kind == "card":
        w = max(6, int(round(h * 0.72)))
        img = Image.new("RGBA", (w * k, H), rgb + (0,))
        draw = ImageDraw.Draw(img)
        draw.rounded_rectangle([0, 0, w * k - 1, H - 1], radius=max(1, H // 12), fill=rgb + (255,))
        font = load_font(obj.font, max(6, int(H * 0.68)))
        draw.text((w * k / 2, H / 2), obj.digit, font=font, fill=COLORS[obj.text_color] + (255,), anchor="mm")
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    else:
        # Draw the filled silhouette as a mask; an outline is the mask minus its
        # erosion: an even stroke for every shape (PIL's polygon `width` leaves
        # artefacts at the star's and cross's sharp corners). The padding keeps the
        # erosion away from the image border, which would leave strokes open there.
        pad = 2 * k
        mask = Image.new("L", (H + 2 * pad, H + 2 * pad), 0)
        draw = ImageDraw.Draw(mask)
        if obj.shape == "circle":
            draw.ellipse([pad, pad, pad + H - 1, pad + H - 1], fill=255)
        elif obj.shape == "square":
            inset = pad + H * 0.06
            draw.rectangle([inset, inset, 2 * pad + H - 1 - inset, 2 * pad + H - 1 - inset], fill=255)
        else:
            draw.polygon([(x + pad, y + pad) for x, y in _shape_polygon(obj.shape, H - 1)], fill=255)
        if not obj.filled:
            inner = mask
            for _ in range(max(2, int(round(obj.stroke * H * 0.6)))):
                inner = inner.filter(ImageFilter.MinFilter(3))
            mask = ImageChops.subtract(mask, inner)
        side = h + 2 * pad // k
        mask = mask.resize((side, side), Image.Resampling.LANCZOS)
        img = Image.new("RGBA", (side, side), rgb + (0,))
        img.putalpha(mask)
    img = img.rotate(obj.rotation, resample=Image.Resampling.BICUBIC, expand=True)
    alpha = np.asarray(img.getchannel("A"))
    ys, xs = np.nonzero(alpha > 127)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    if obj.occlusion > 0:
        img = _occlude(img, bbox, obj.occlusion, obj.occlusion_side)
    return img, bbox


def _occlude(img: Image.Image, bbox, fraction: float, side: str) -> Image.Image:
    """Cover a strip of the bbox from one side with an opaque neutral bar, shrinking
    it until at most MAX_OCCLUSION of the object's pixels are hidden."""
    alpha = np.asarray(img.getchannel("A")) > 127
    total = alpha.sum()
    x0, y0, x1, y1 = bbox
    while fraction > 0.01:
        bw, bh = (x1 - x0) * fraction, (y1 - y0) * fraction
        strip = {"left": (x0, y0, x0 + bw, y1), "right": (x1 - bw, y0, x1, y1),
                 "top": (x0, y0, x1, y0 + bh), "bottom": (x0, y1 - bh, x1, y1)}[side]
        sx0, sy0, sx1, sy1 = (int(round(v)) for v in strip)
        if sx1 <= sx0 or sy1 <= sy0:      # a sprite too small for a visible strip: no occluder
            return img
        if alpha[sy0:sy1, sx0:sx1].sum() <= MAX_OCCLUSION * total:
            out = img.copy()
            ImageDraw.Draw(out).rectangle([sx0, sy0, sx1 - 1, sy1 - 1], fill=OCCLUDER_RGB + (255,))
            return out
        fraction *= 0.8
    return img


def random_object(rng: np.random.Generator, kind: str, color: str, frame_height: int,
                  height_range: tuple[float, float], shape: str | None = None, digit: str | None = None,
                  occlusion_p: float = 0.3) -> ToyObject:
    """A randomly rendered object of the given identity (size, rotation, fill, font, occlusion)."""
    occluded = rng.random() < occlusion_p
    return ToyObject(
        kind=kind, color=color, shape=shape, digit=digit,
        height=int(round(frame_height * rng.uniform(*height_range))),
        rotation=float(np.round(rng.uniform(-MAX_ROTATION, MAX_ROTATION), 1)),
        filled=bool(kind == "card" or rng.random() < 0.7),
        stroke=float(np.round(rng.uniform(0.14, 0.22), 3)),
        font=str(rng.choice(FONTS)),
        text_color=contrasting_text(color),
        occlusion=float(np.round(rng.uniform(0.05, MAX_OCCLUSION), 3)) if occluded else 0.0,
        occlusion_side=str(rng.choice(["left", "right", "top", "bottom"])),
    )


def paste(canvas: Image.Image, obj: ToyObject, center: tuple[float, float]) -> tuple[int, int, int, int]:
    """Draw `obj` centred at `center` (x, y) on an RGB canvas; return its bbox in frame
    pixels, clipped to the frame."""
    img, (bx0, by0, bx1, by1) = sprite(obj)
    x = int(round(center[0] - img.width / 2))
    y = int(round(center[1] - img.height / 2))
    canvas.paste(img, (x, y), img)
    W, H = canvas.size
    return (max(0, x + bx0), max(0, y + by0), min(W, x + bx1), min(H, y + by1))


def sprite_extent(obj: ToyObject) -> tuple[int, int]:
    img, _ = sprite(obj)
    return img.width, img.height


def finish(canvas: Image.Image, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Mild blur then Gaussian pixel noise; uint8 [H, W, 3]."""
    if blur > 0.05:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    frame = np.asarray(canvas, np.float32)
    if noise > 0:
        frame = frame + rng.normal(0.0, noise, frame.shape).astype(np.float32)
    return frame.clip(0, 255).astype(np.uint8)


def random_scene(rng: np.random.Generator, size: tuple[int, int] = (320, 240),
                 n_events: int | None = None, n_distractors: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """One labelled toy-world frame for training: (uint8 [H, W, 3], labels).

    labels: one dict per object with role ("event" | "distractor"), kind, color,
    shape/digit, bbox (x0, y0, x1, y1) and the full rendering parameters."""
    W, H = size
    bg = Background.random(rng)
    canvas = Image.fromarray(bg.render(W, H, float(rng.uniform(0, 100))).clip(0, 255).astype(np.uint8))
    labels, event_boxes = [], []
    n_d = int(rng.integers(0, 5)) if n_distractors is None else n_distractors
    n_e = int(rng.integers(0, 3)) if n_events is None else n_events
    for role, count, hr in (("distractor", n_d, DISTRACTOR_HEIGHT), ("event", n_e, EVENT_HEIGHT)):
        for _ in range(count):
            kind = "card" if role == "event" and rng.random() < 0.5 else "shape"
            obj = random_object(rng, kind, str(rng.choice(list(COLORS))), H, hr,
                                shape=str(rng.choice(SHAPES)) if kind == "shape" else None,
                                digit=str(rng.choice(DIGITS)) if kind == "card" else None)
            w, h = sprite_extent(obj)
            for _ in range(10):  # events should not hide each other (occlusion <= 25%)
                center = (rng.uniform(w / 2, max(w / 2, W - w / 2)), rng.uniform(h / 2, max(h / 2, H - h / 2)))
                box = (center[0] - w / 2, center[1] - h / 2, center[0] + w / 2, center[1] + h / 2)
                if role == "distractor" or not any(_overlaps(box, b) for b in event_boxes):
                    break
            if role == "event":
                event_boxes.append(box)
            bbox = paste(canvas, obj, center)
            labels.append({"role": role, **obj.to_dict(), "bbox": list(bbox)})
    frame = finish(canvas, float(rng.uniform(0, 0.8)), float(rng.uniform(0, 5)), rng)
    return frame, labels


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
