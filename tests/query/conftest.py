import pytest

from videokv.ingest.synth import render_video
from videokv.runtime import Runtime
from videokv.settings import Settings

from ..conftest import MODEL_CACHE


def make_runtime(home, **overrides) -> Runtime:
    return Runtime(Settings(home=home, model_cache=MODEL_CACHE, **overrides))


@pytest.fixture(scope="session")
def toy_video(tmp_path_factory):
    """A 96-second toy-world video (6 chunks of 16 frames at 1 fps) and its ground truth."""
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
