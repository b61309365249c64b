import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    d = Path(os.environ.get("MINIFT_MINILM_DIR", ROOT / "weights" / "all-MiniLM-L6-v2"))
    if not (d / "model.safetensors").exists():
        pytest.fail(f"real weights not found at {d}: run `minift fetch weights minilm` first "
                    "(`make test` does it)", pytrace=False)
    return d


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return ROOT / "weights" / "tiny-bert"
