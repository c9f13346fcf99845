"""Small real video files, written with PyAV into tmp_path."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest


def frame_pattern(i: int, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3]: smooth texture that differs per frame (so frames are
    distinguishable after compression) without being incompressible."""
    ys, xs = np.mgrid[0:height, 0:width]
    r = (xs * 4 + i * 9) % 256
    g = (ys * 4 + i * 5) % 256
    b = np.full_like(r, (i * 37) % 256)
    return np.stack([r, g, b], -1).astype(np.uint8)


def write_video(path, n_frames=40, fps=8, size=(64, 48), codec="libx264", pts=None, time_base=None,
                gop=None, container_options=None, frames=None, codec_options=None):
    """Encode n_frames (or `frames`) to `path`. `pts` (ints in `time_base`) makes a
    variable-frame-rate file; default pts are 0..n-1 at 1/fps."""
    width, height = size
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        if codec_options:
            stream.codec_context.options = dict(codec_options)
        if time_base is not None:
            stream.codec_context.time_base = time_base
        container.start_encoding()
        tb = time_base or Fraction(1, fps)
        for i in range(n_frames):
            array = frames[i] if frames is not None else frame_pattern(i, width, height)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = pts[i] if pts is not None else i
            frame.time_base = tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture
def make_video(tmp_path):
    def make(name="clip.mp4", **kwargs):
        return write_video(tmp_path / name, **kwargs)
    return make


@pytest.fixture
def pattern():
    """`frame_pattern(i, W, H)`: the pixels `write_video` encodes as frame i."""
    return frame_pattern
