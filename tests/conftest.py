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
    from videokv.engine.models import load_backend
    from videokv.settings import Settings

    return load_backend(Settings(home=tmp_path_factory.mktemp("home"), model_cache=MODEL_CACHE))


@pytest.fixture(scope="session")
def tokenizer(embedded_backend):
    return embedded_backend.tokenizer
