"""bench/ runs everywhere: --quick end to end, the time-bounded ceilings, what a machine without native
bf16 skips, and bench/gpu.sh's CPU-side logic (--dry-run). Nothing here measures speed."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

from bench import bench

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_quick_bench_runs_every_case(tmp_path):
    t = time.time()
    r = subprocess.run([sys.executable, "bench/bench.py", "--quick", "--out", str(tmp_path)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"bench.py --quick: {time.time() - t:.0f} s")
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["meta"]["cpu_class"] in r.stdout.splitlines()[1]  # the table's header names the CPU class
    cases = {row["case"][0] for row in result["rows"]}
    assert cases == {"a", "b", "c"}
    systems = [row["system"] for row in result["rows"]]
    assert any("identical" in s for s in systems if s.startswith("minift"))
    for case in "abc":  # every case has minift on the inputs its peer gets
        assert any(row["case"][0] == case and "identical" in row["case"] + row["system"] for row in result["rows"])
    try:
        import onnxruntime  # noqa: F401
        assert {"onnxruntime (identical batches), fp32", "onnxruntime (identical batches), int8"} <= set(systems)
    except ImportError:
        assert "onnxruntime or onnx not installed" in r.stderr
    assert "minift (identical batches), int8" in systems
    assert (tmp_path / "bench.md").read_text().strip() in r.stdout


def test_ceiling_is_bounded_by_time():
    t = time.perf_counter()
    gflops = bench.matmul_ceiling(torch.device("cpu"), torch.float32, 0.5)
    assert gflops > 0 and time.perf_counter() - t < 5  # budget + at most one product past it + set-up


def test_without_native_bf16_it_is_skipped(monkeypatch):
    monkeypatch.setattr(bench, "pick_precision", lambda p, dev: None)
    cpu = torch.device("cpu")
    assert bench.precisions(cpu) == [None]
    asked = []
    monkeypatch.setattr(bench, "matmul_ceiling", lambda dev, dtype, budget, make=None: asked.append(dtype) or 1.0)
    assert "bf16_matmul_gflops" not in bench.ceilings(cpu, quick=True)
    assert torch.float32 in asked and torch.bfloat16 not in asked


def test_gpu_sh_dry_run(tmp_path):
    results = tmp_path / "gpu.md"
    r = subprocess.run(["bash", "bench/gpu.sh", "--dry-run", str(results)], cwd=ROOT, capture_output=True, text=True,
                       env={**ENV, "PY": sys.executable}, timeout=900)
    assert r.returncode == 0, r.stderr
    text = results.read_text()
    assert "## pytest -m cuda" in text and "skipped" in text and "exit 0" in text
    assert "## bench.py --device cpu, cases a b c" in text and "| a train MiniLM 8x64 fp32, identical inputs |" in text
    assert "not a GPU measurement" in text
    assert text.count("exit 0") == 2, text


def test_gpu_sh_respects_its_total_limit(tmp_path):
    """With 21 s in all, no step may get more than what is left of them, so the bench step (which needs
    20 s at least) is reported as not run, and the script ends soon after the limit."""
    results = tmp_path / "gpu.md"
    t = time.time()
    r = subprocess.run(["bash", "bench/gpu.sh", "--dry-run", str(results)], cwd=ROOT, capture_output=True, text=True,
                       env={**ENV, "PY": sys.executable, "GPU_SH_LIMIT_S": "21"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert time.time() - t < 21 + 10 + 15  # the limit, timeout's kill-after, the set-up and the header
    text = results.read_text()
    limits = [int(x) for x in re.findall(r"\(limit (\d+) s\)", text)]
    assert all(x <= 21 for x in limits) and len(limits) <= 1
    assert text.endswith("not run: the total time limit (21 s) was reached\n")
