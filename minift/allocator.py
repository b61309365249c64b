"""Freed memory kept for the next batch, on Linux with glibc.

Every batch on a CPU allocates its activations anew and frees them when it is done. glibc's malloc
serves a block above its mmap threshold (128 KiB at first, rising as such blocks are freed, to at most
32 MiB) with fresh pages from the kernel, and hands them back when the block is freed. So the next
batch's block of the same size arrives as fresh pages again: each faults on its first touch and the
kernel zeroes it, a cost paid for every large tensor of every batch and larger than many of the products
that fill them (on a virtual machine most of all). A feed-forward output of 64 sequences of 128 tokens is
50 MiB in MiniLM, over the cap, however often it is freed. ONNX Runtime keeps memory in an arena of its
own and pays this once; docs/performance.md measures what it costs torch models here.

keep_freed_memory() has glibc serve every block from its heap (M_MMAP_MAX 0) and keep what is freed at
the heap's top instead of returning it (M_TRIM_THRESHOLD), so a batch reuses the pages the one before it
touched. The price is memory: the process holds on to what it has freed until it exits, and its peak
can be higher, as the heap fragments (docs/performance.md). It is process-wide and applies to everything
in the process, transformers included. MINIFT_MALLOC=default
leaves glibc's behaviour as it is; elsewhere than Linux with glibc nothing changes.
"""
import ctypes
import functools
import os
import sys

from minift.errors import MiniftError

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_UP_TO = 2**31 - 1  # bytes free at the heap's top before glibc returns them: mallopt takes a C int


def requested() -> str:
    choice = os.environ.get("MINIFT_MALLOC", "keep").strip().lower() or "keep"
    if choice not in ("keep", "default"):
        raise MiniftError(f"MINIFT_MALLOC={choice!r}: expected keep or default")
    return choice


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse, once per process (see above). Whether it now does."""
    if requested() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # glibc's own: other C libraries' mallopt may ignore these parameters
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
    except (OSError, AttributeError):
        return False
