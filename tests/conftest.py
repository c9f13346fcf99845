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
