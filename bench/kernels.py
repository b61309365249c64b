"""Why minift's CPU attention and dropout are written out: the alternatives, timed side by side.

    python bench/kernels.py [--threads N]

Forward + backward of one attention block (MiniLM's 12 heads of 32, batch 32), of its softmax on
bf16 scores (the bf16 kernel against softmax computed in fp32), and of one hidden dropout
([32, T, 384], p = 0.1), median of 7 runs after a warm-up, in fp32 and bf16.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from minift.model import attention, dropout


def timed(f, n=7):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    torch.set_num_threads(ap.parse_args().threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per forward + backward, median of 7")
    print("| T | dtype | op | SDPA (default) | SDPA (math) | F.dropout | minift | speedup |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for T in (48, 128):
        for dt in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(32, 12, T, 32, dtype=dt, requires_grad=True) for _ in range(3))
            m = torch.ones(32, 1, 1, T, dtype=torch.bool)
            m[::2, ..., T // 2:] = False  # half the rows padded to half length

            def run(f):
                f().float().sum().backward()

            sdpa = timed(lambda: run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=0.1)))
            with sdpa_kernel(SDPBackend.MATH):
                math_ = timed(lambda: run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=0.1)))
            ours = timed(lambda: run(lambda: attention(q, k, v, m, 0.1)))
            print(f"| {T} | {dt} | attention, dropout 0.1 | {sdpa:.1f} | {math_:.1f} | | {ours:.1f} | "
                  f"{min(sdpa, math_) / ours:.2f}x |")
            if dt == torch.bfloat16:  # minift's softmax runs in fp32 even on bf16 scores
                s = torch.randn(32, 12, T, T, dtype=dt, requires_grad=True)
                low = timed(lambda: torch.softmax(s, -1).float().sum().backward())
                high = timed(lambda: torch.softmax(s, -1, dtype=torch.float32).sum().backward())
                print(f"| {T} | {dt} | softmax: bf16 kernel vs fp32 | {low:.2f} | | | {high:.2f} | {low / high:.2f}x |")
            x = torch.randn(32, T, 384, dtype=dt, requires_grad=True)
            g = torch.randn_like(x)
            theirs = timed(lambda: F.dropout(x, 0.1, True).backward(g))
            ours = timed(lambda: dropout(x, 0.1).backward(g))
            print(f"| {T} | {dt} | hidden dropout | | | {theirs:.2f} | {ours:.2f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
