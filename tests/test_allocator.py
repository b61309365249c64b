"""minift/allocator.py: on a CPU run, a large block is served from glibc's heap instead of fresh pages, and what is
freed stays there for the next batch; MINIFT_MALLOC=default leaves glibc as it is; a wrong value is refused.
Each case runs in a fresh process: the setting is process-wide. What it saves in time is bench/bench.py's."""
import ctypes
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

try:
    ctypes.CDLL(None).mallinfo2
    GLIBC = True
except (OSError, AttributeError):
    GLIBC = False
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc (2.33 or newer, for mallinfo2) only: elsewhere nothing changes")

# Where a 64 MiB block comes from, after pick_device("cpu"): mmapped bytes (hblkhd), the heap's size (arena) and what
# of it is in use (uordblks), from glibc's own bookkeeping, before the block, with it, and after it is freed.
PROBE = """
import ctypes, json, torch
from minift.train_step import pick_device
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def now():
    i = libc.mallinfo2()
    return {"mmapped": i.hblkhd, "heap": i.arena, "in_use": i.uordblks}
pick_device("cpu")
before = now()
x = torch.ones(64 << 20, dtype=torch.uint8)
held = now()
del x
freed = now()
print(json.dumps({"before": before, "held": held, "freed": freed}))
"""
MIB64 = 64 << 20


def probe(setting):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | {"PYTHONPATH": str(ROOT)}
    if setting is not None:
        env["MINIFT_MALLOC"] = setting
    else:
        env.pop("MINIFT_MALLOC", None)
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    return r


@needs_glibc
def test_large_block_comes_from_the_heap_and_stays_there():
    r = probe(None)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["held"]["mmapped"] - m["before"]["mmapped"] < MIB64  # not fresh pages of its own
    assert m["held"]["in_use"] - m["before"]["in_use"] >= MIB64  # but a part of the heap
    assert m["freed"]["heap"] >= m["held"]["heap"]  # kept for the next block, not handed back


@needs_glibc
def test_default_leaves_glibc_as_it_is():
    r = probe("default")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["held"]["mmapped"] - m["before"]["mmapped"] >= MIB64  # glibc's own way: a mapping for the block
    assert m["freed"]["mmapped"] - m["before"]["mmapped"] < MIB64  # and it goes back when freed


def test_wrong_setting_is_refused_by_name():
    r = probe("jemalloc")
    assert r.returncode != 0
    assert "MINIFT_MALLOC='jemalloc': expected keep or default" in r.stderr
