"""Probe and sampling of known synthetic videos: timestamps, caps, seek vs sequential, VFR."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest

from tests.conftest import write_rotated_video
from videokv.ingest import sampling
from videokv.ingest.sampling import iter_frames, sample_frames
from videokv.ingest.video import content_hash, probe


@pytest.fixture
def ten_seconds(make_video):
    # 10 s at 8 fps, keyframe every 16 frames (2 s) so seeking has something to skip.
    return make_video("ten.mp4", n_frames=80, fps=8, size=(64, 48), gop=16)


def test_probe_known_video(ten_seconds):
    info = probe(ten_seconds)
    assert (info.width, info.height, info.codec) == (64, 48, "h264")
    assert info.duration == pytest.approx(10.0)
    assert info.fps == pytest.approx(8.0)
    assert info.frame_count == 80
    assert not info.has_audio
    assert info.to_dict()["time_base"] == str(info.time_base)


def test_sample_one_fps_timestamps_and_pixels(ten_seconds, pattern):
    s = sample_frames(ten_seconds, fps=1.0, max_frames=100)
    assert s.frames.shape == (10, 48, 64, 3) and s.frames.dtype == np.uint8
    np.testing.assert_allclose(s.timestamps, np.arange(10.0))
    np.testing.assert_allclose(s.targets, np.arange(10.0))
    for k in range(10):  # second k shows source frame 8k
        diff = np.abs(s.frames[k].astype(int) - pattern(8 * k, 64, 48).astype(int)).mean()
        assert diff < 8, (k, diff)


def test_max_frames_spreads_uniformly(ten_seconds):
    s = sample_frames(ten_seconds, fps=8.0, max_frames=5)
    np.testing.assert_allclose(s.timestamps, [0, 2, 4, 6, 8])
    np.testing.assert_allclose(sampling.sample_targets(10.0, 1.0, 4), [0, 2.5, 5, 7.5])
    np.testing.assert_allclose(sampling.sample_targets(2.5, 1.0, 100), [0, 1, 2])


def test_resize(ten_seconds):
    s = sample_frames(ten_seconds, fps=0.5, max_frames=100, size=(32, 24))
    assert s.frames.shape == (5, 24, 32, 3)


@pytest.mark.parametrize("fps", [0.25, 0.4, 1.0, 3.0])
def test_seek_matches_sequential(ten_seconds, fps, monkeypatch):
    sequential = sample_frames(ten_seconds, fps, 100, mode="sequential")
    seeks = []
    real_seek = sampling._Cursor.seek
    monkeypatch.setattr(sampling._Cursor, "seek", lambda self, t: (seeks.append(t), real_seek(self, t)))
    seeked = sample_frames(ten_seconds, fps, 100, mode="seek")
    if fps < 0.5:
        assert len(seeks) >= 2  # sparse targets really went through the seek path
    np.testing.assert_array_equal(seeked.pts, sequential.pts)
    np.testing.assert_array_equal(seeked.timestamps, sequential.timestamps)
    np.testing.assert_array_equal(seeked.frames, sequential.frames)


def test_iter_frames_batches(ten_seconds):
    batches = list(iter_frames(ten_seconds, fps=1.0, max_frames=100, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    whole = sample_frames(ten_seconds, fps=1.0, max_frames=100)
    np.testing.assert_array_equal(np.concatenate([b.frames for b in batches]), whole.frames)


def test_sampling_faster_than_source_dedupes(ten_seconds):
    s = sample_frames(ten_seconds, fps=16.0, max_frames=1000)
    assert len(s) == 80 and len(np.unique(s.pts)) == 80
    assert len(sample_frames(ten_seconds, fps=16.0, max_frames=1000, dedupe=False)) == 160


def test_variable_frame_rate_uses_timestamps(make_video):
    # Irregular gaps in ms: 0, 0.1, 0.35, 1.2, 1.3, 2.6, 2.7, 4.9, 5.0, 5.05, 6.5 (ends 7.5).
    pts_ms = [0, 100, 350, 1200, 1300, 2600, 2700, 4900, 5000, 5050, 6500]
    path = make_video("vfr.mp4", n_frames=len(pts_ms), fps=10, pts=pts_ms, time_base=Fraction(1, 1000))
    info = probe(path)
    s = sample_frames(path, fps=1.0, max_frames=100, mode="sequential")
    assert 6.5 < info.duration < 8.0  # from timestamps, not from 11 frames / 10 fps
    targets = np.arange(int(np.ceil(info.duration)))
    latest = sorted({max(p for p in pts_ms if p <= 1000 * t) / 1000 for t in targets})
    # Targets 3 s and 4 s both fall on the frame at 2.7 s: it is returned once.
    assert latest == [0.0, 0.35, 1.3, 2.7, 5.0, 5.05]
    np.testing.assert_allclose(s.timestamps, latest, atol=1e-3)
    np.testing.assert_allclose(s.targets, [0, 1, 2, 3, 5, 6])
    seeked = sample_frames(path, fps=0.3, max_frames=100, mode="seek")
    np.testing.assert_array_equal(seeked.pts, sample_frames(path, fps=0.3, max_frames=100, mode="sequential").pts)


def test_webm_vp9(make_video):
    path = make_video("clip.webm", codec="libvpx-vp9", n_frames=16, fps=8)
    info = probe(path)
    assert info.codec == "vp9" and info.duration == pytest.approx(2.0, abs=0.15)
    np.testing.assert_allclose(sample_frames(path, 1.0, 10).timestamps, [0, 1])


def test_content_hash(ten_seconds):
    assert content_hash(ten_seconds) == hashlib.sha256(ten_seconds.read_bytes()).hexdigest()


def test_a_single_keyframe_file_is_decoded_once_not_once_per_sample(make_video):
    """One keyframe for the whole file (a long recording, keyint larger than the video):
    seeking to each sparse target would decode from that one keyframe again every time
    (quadratic). The sampler reads the container's keyframe index and decodes forward."""
    from videokv.ingest.sampling import iter_frames
    from videokv.ingest.video import probe

    n = 1200                                                        # 20 min at 1 fps
    path = make_video("one_keyframe.mp4", n_frames=n, fps=1, size=(64, 48), gop=100_000,
                      codec_options={"keyint_min": "100000", "sc_threshold": "0"})
    info = probe(path)
    stats: dict = {}
    got = sum(len(b) for b in iter_frames(path, 0.2, 10_000, info=info, stats=stats))   # every 5 s: "seek" mode
    assert got == n // 5
    assert stats["decoded"] <= n + 16 and stats["seeks"] == 0, stats
    # Where keyframes are dense, sparse sampling still seeks (and decodes far less).
    dense = make_video("dense_keyframes.mp4", n_frames=n, fps=1, size=(64, 48), gop=10)
    stats = {}
    assert sum(len(b) for b in iter_frames(dense, 0.05, 10_000, stats=stats)) == n // 20
    assert stats["seeks"] > 0 and stats["decoded"] < n // 2, stats


def test_rotation_metadata_turns_frames_upright(tmp_path):
    """A phone video stored sideways with a display rotation is sampled upright, as ffmpeg
    shows it (autorotate), and probe reports its displayed size."""

    from videokv.ingest.sampling import sample_frames
    from videokv.ingest.video import probe

    path = tmp_path / "portrait.mp4"
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = 255                                        # stored: the left half is white
    write_rotated_video(path, [stored] * 8)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (32, 64, 1)
    got = sample_frames(path, 1.0, 100, info=info).frames[0]
    assert got.shape == (64, 32, 3)
    # a quarter turn counter-clockwise (what `ffmpeg -i portrait.mp4 x.png` writes): the stored
    # left half ends up at the bottom
    assert got[40:].mean() > 200 and got[:24].mean() < 50
    small = sample_frames(path, 1.0, 100, size=(16, 32), info=info).frames[0]
    assert small.shape == (32, 16, 3) and small[20:].mean() > 200 and small[:12].mean() < 50
