import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _videokv_home(tmp_path, monkeypatch):
    """Every test gets its own VIDEOKV_HOME; converted models stay in a shared cache."""
    monkeypatch.setenv("VIDEOKV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VIDEOKV_MODEL_CACHE", os.environ.get("VIDEOKV_MODEL_CACHE", str(ROOT / ".venv" / "videokv-models")))
    from videokv.settings import get_settings
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


MODEL_CACHE = Path(os.environ.get("VIDEOKV_MODEL_CACHE", str(ROOT / ".venv" / "videokv-models")))


@pytest.fixture(scope="session")
def embedded_backend(tmp_path_factory):
    """The embedded SmolLM2 backend, loaded once per session (converted once per cache)."""
    from videokv.runtime import Runtime
    from videokv.settings import Settings

    return Runtime(Settings(home=tmp_path_factory.mktemp("home"), model_cache=MODEL_CACHE)).backend


@pytest.fixture(scope="session")
def tokenizer(embedded_backend):
    return embedded_backend.tokenizer


def make_runtime(home, **overrides):
    """A Runtime over `home` with the shared model cache and `overrides` over the defaults."""
    from videokv.runtime import Runtime
    from videokv.settings import Settings

    return Runtime(Settings(home=home, model_cache=MODEL_CACHE, **overrides))


@pytest.fixture(scope="session")
def toy_video(tmp_path_factory):
    """A 96-second toy-world video (6 chunks of 16 frames at 1 fps) and its ground truth."""
    from videokv.toyworld.synth import render_video

    path = tmp_path_factory.mktemp("videos") / "toy.mp4"
    truth = render_video(path, 1.6, 3, seed=7)
    return path, truth.to_dict()


@pytest.fixture(scope="session")
def ingested(tmp_path_factory, toy_video, embedded_backend):
    """A Runtime (sharing the session's model) with the toy video ingested."""
    rt = make_runtime(tmp_path_factory.mktemp("home"), top_k=1)
    rt.backend = embedded_backend
    result = rt.pipeline.ingest(toy_video[0])
    return rt, result


def write_rotated_video(path, frames, fps: int = 4) -> None:
    """An H.264 file of `frames` ([H, W, 3] uint8 each) stored as given, with a 90-degree
    display rotation (how phones store portrait video)."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.set_display_rotation(90)
        for i, a in enumerate(frames):
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())
