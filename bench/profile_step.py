"""Where minift's training step spends its time: torch.profiler over case (b)'s real polarity batches.

    python bench/profile_step.py [--steps 10] [--precision auto|fp32|bf16]

Same model and batches as bench.py's case (b) for minift, in the precision "auto" picks (or the one
given); prints seconds per step and the profiler's table of operators by their own time.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench import bench

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--steps", type=int, default=10)
p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
args = p.parse_args()
dev = torch.device("cpu")
systems, _ = bench.b_systems(dev, with_hf=False)
((_, (batches, collate, amp)),) = systems.items()
amp = {"auto": amp, "fp32": None, "bf16": torch.bfloat16}[args.precision]
print(f"precision: {'fp32' if amp is None else str(amp).removeprefix('torch.')}")
step = bench.minift_trainer(None, dev, amp)[0]
for idx in batches[:5]:  # warm-up
    step(bench.to(collate(idx), dev))
timed = batches[5:5 + args.steps]
t = time.perf_counter()
for idx in timed:
    step(bench.to(collate(idx), dev))
print(f"{(time.perf_counter() - t) / len(timed):.4f} s/step over {len(timed)} steps")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for idx in timed:
        step(bench.to(collate(idx), dev))
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
