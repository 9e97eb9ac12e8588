"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The raw data folder: `$HF_META_DATA_DIR`, else the `shared/data` folder next to the project; skip if absent."""
    path = Path(os.environ.get("HF_META_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"data folder {str(path)!r} not found (set HF_META_DATA_DIR)")
    return path
