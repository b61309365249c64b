"""Soak, test-sized: 2,000 training steps of the tiny model on texts of random lengths (train(), with its
evaluations, saves and metrics lines, 20 epochs of them) keep resident memory flat after warm-up (growth
under 5%) and never open more files. bench/soak.py is the same run on MiniLM; this runs it as a script
in a fresh process, so that nothing earlier tests left behind is counted."""
import json
import subprocess
import sys

from conftest import ROOT
from test_reliability import SUBPROCESS_ENV


def test_memory_and_open_files_stay_flat(tiny_dir):
    r = subprocess.run([sys.executable, "bench/soak.py", "--model", str(tiny_dir), "--steps", "2000", "--batch-size", "4",
                        "--max-length", "32", "--examples", "400", "--precision", "fp32"],
                       capture_output=True, text=True, cwd=ROOT, env=SUBPROCESS_ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["steps"] == 2000
    assert got["rss_growth"] < 0.05, got
    assert got["fds_max"] == got["fds_after_warmup"], got
