"""Every bad input raises its VideoError subclass, with a stable code and a message
naming the file, and nothing hangs."""

from __future__ import annotations

import av
import numpy as np
import pytest

from videokv.ingest import video
from videokv.ingest.sampling import sample_frames
from videokv.ingest.video import VideoError, probe


def assert_error(path, code):
    with pytest.raises(VideoError) as info:
        probe(path)
    assert info.value.code == code, str(info.value)
    assert path.name in str(info.value)
    assert str(info.value).endswith(".")
    return info.value


def test_missing_file(tmp_path):
    assert_error(tmp_path / "nope.mp4", "file_not_found")


def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    assert_error(path, "empty_file")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    assert_error(path, "not_a_video")


def test_text_file(tmp_path):
    # FFmpeg's "tty" demuxer would render a text file as a video: we refuse it.
    path = tmp_path / "notes.txt"
    path.write_text("hello world, this is not a video\n" * 200)
    assert_error(path, "not_a_video")


def test_hls_playlist_is_not_opened(tmp_path):
    # A playlist could make the demuxer read other local files: refused outright.
    (tmp_path / "secret.ts").write_bytes(b"\x47" * 188 * 4)
    path = tmp_path / "upload.mp4"
    path.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nsecret.ts\n#EXT-X-ENDLIST\n")
    assert_error(path, "not_a_video")


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_mp4(make_video, tmp_path, faststart):
    # moov at the end (default): the cut file has no index; faststart: the index
    # promises 5 s but the data stops half-way (caught by the tail check).
    options = {"movflags": "faststart"} if faststart else {}
    frames = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(40)]
    full = make_video("full.mp4", frames=frames, container_options=options)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    probe(full)  # the whole file is fine
    assert_error(cut, "truncated")


def test_truncated_detected_when_sampling_without_probe(make_video, tmp_path):
    frames = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(40)]
    full = make_video("full.mp4", frames=frames, container_options={"movflags": "faststart"})
    info = probe(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    # A caller that reuses a stale VideoInfo still gets an error, not duplicated frames.
    with pytest.raises(VideoError) as err:
        sample_frames(cut, 8.0, 100, info=info)
    assert err.value.code in ("truncated", "corrupt")


def test_empty_container(tmp_path):
    path = tmp_path / "noframes.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height = 64, 48
        container.start_encoding()
    assert_error(path, "no_frames")


def test_undecodable_frames(make_video, tmp_path):
    data = bytearray(make_video("ok.mp4", n_frames=40, size=(96, 64)).read_bytes())
    start = data.find(b"mdat") + 4
    data[start:start + len(data) // 2] = bytes(len(data) // 2)  # zero the coded frames
    path = tmp_path / "zeroed.mp4"
    path.write_bytes(bytes(data))
    assert_error(path, "no_frames")


@pytest.mark.parametrize("container,codec", [("ogg", "libopus"), ("m4a", "aac")])
def test_audio_only(tmp_path, container, codec):
    path = tmp_path / f"sound.{container}"
    rate = 48000 if codec == "libopus" else 44100
    samples = 960 if codec == "libopus" else 1024
    with av.open(str(path), "w", format="ipod" if container == "m4a" else None) as out:
        stream = out.add_stream(codec, rate=rate)
        layout = stream.codec_context.format.name
        for i in range(30):
            dtype = np.int16 if layout.startswith("s16") else np.float32
            frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), dtype), format=layout, layout="mono")
            frame.sample_rate, frame.pts = rate, i * samples
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    assert_error(path, "audio_only")


def test_too_small_resolution(make_video):
    assert_error(make_video("tiny.mp4", size=(16, 8), n_frames=4), "bad_resolution")


def test_too_large_resolution(make_video):
    # ffv1 in mkv: lossless and fast, and it allows a frame 8200 px wide.
    assert_error(make_video("wide.mkv", codec="ffv1", size=(8200, 16), n_frames=2), "bad_resolution")


def test_unsupported_codec(make_video, tmp_path):
    # Rewrite the Matroska CodecID so FFmpeg knows the stream is video but has no decoder.
    data = make_video("ok.mkv", codec="mpeg4").read_bytes()
    assert data.count(b"V_MPEG4/ISO/ASP") == 1
    path = tmp_path / "alien.mkv"
    path.write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_ZZZZZ/ISO/ZZZ"))
    assert_error(path, "unsupported_codec")


def test_codes_are_stable():
    assert set(video.ERROR_CODES) >= {"not_a_video", "truncated", "empty_file", "no_frames", "audio_only",
                                      "bad_resolution", "unsupported_codec", "file_not_found", "corrupt"}
