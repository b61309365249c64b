import os
import signal
from pathlib import Path

import pytest
import torch

import minift.train_loop

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


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # On a small shared CPU, OpenMP threads spin-waiting for each other make the tiny model's steps up
    # to 1000x slower and erratic; one thread is fast. Session-wide because a resumed run is
    # bit-identical to an uninterrupted one only with the same thread count.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def interrupt_at(monkeypatch, at):
    """Deliver SIGINT to this process during training step `at`, as Ctrl-C would (the resume tests of every task)."""
    real, calls = minift.train_loop.train_step, []

    def step(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGINT)
        return result
    monkeypatch.setattr(minift.train_loop, "train_step", step)
