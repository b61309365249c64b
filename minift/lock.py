"""One run per directory: --out/.lock names the process that writes there, and is held while it runs.

The file is created atomically and locked with flock, which the kernel releases when the process ends in
any way (kill -9 included). So a lock file left behind by a dead run is known to be stale for certain,
not guessed from its pid (which another process may have since, or which may live in another container
on a shared volume), and is taken over.
"""
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from minift.errors import MiniftError

LOCK = ".lock"


@contextmanager
def run_lock(out, log):
    """Hold out/.lock for the body of the with; refuse at once if a live process holds it."""
    out = Path(out)
    made = [d for d in (out, *out.parents) if not d.exists()]  # left again, if empty, when the run ends
    if out.exists() and not out.is_dir():
        raise MiniftError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MiniftError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise MiniftError(f"--out {out}: another run is writing there ({holder or 'a process starting up'}; "
                              f"see {path}). Wait for it to end or stop it, or choose another --out.") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the run that held it removed the file between our open and our lock: take a new one
    stale = _holder(fd)
    if stale:
        print(f"{path}: taking over the lock of {stale}, which has ended", file=log)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    try:
        yield
    finally:
        os.unlink(path)  # before the unlock: a process that opened it meanwhile finds it gone and starts over
        os.close(fd)
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:  # not empty: the run wrote there
                break


def _holder(fd) -> str:
    """'process PID on HOST' from a lock file's contents, '' if empty."""
    words = os.pread(fd, 200, 0).decode(errors="replace").split()
    return f"process {words[0]}" + (f" on {words[1]}" if len(words) > 1 else "") if words else ""
