import numpy as np
import pytest

from tests.conftest import make_runtime
from tests.ingest.conftest import write_video
from videokv.ingest.video import VideoError


def bad_files(tmp):
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (tmp / "notes.txt").write_text("this is not a video\n" * 100)
    good = write_video(tmp / "good.mp4", n_frames=40, fps=8, size=(64, 48),
                       frames=[np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(40)],
                       container_options={"movflags": "faststart"})
    data = good.read_bytes()
    (tmp / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_video(tmp / "tiny.mp4", n_frames=4, size=(16, 8))
    return {"empty.mp4": "empty_file", "random.mp4": "not_a_video", "notes.txt": "not_a_video",
            "truncated.mp4": ("truncated", "corrupt"), "tiny.mp4": "bad_resolution", "missing.mp4": "file_not_found"}


def test_bad_inputs_store_nothing(tmp_path, embedded_backend):
    rt = make_runtime(tmp_path / "home")
    rt.backend = embedded_backend
    for name, code in bad_files(tmp_path).items():
        with pytest.raises(VideoError) as err:
            rt.pipeline.ingest(tmp_path / name)
        assert err.value.code in (code if isinstance(code, tuple) else (code,)), name
        assert name in str(err.value)
    assert rt.store.list_videos() == []


def test_cli_bad_input_is_a_sentence_and_exit_2(tmp_path, capsys):
    from videokv.cli import main
    (tmp_path / "x.mp4").write_bytes(b"")
    assert main(["ingest", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videokv ingest: ") and "x.mp4" in err and "Traceback" not in err
