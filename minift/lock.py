"""One writer per output: train's --out directory and the --output file of predict, embed and plot are
each checked before any work and held for the life of the command, so a second writer is refused at once.

A directory's lock is DIR/.lock; a file's is .NAME.lock beside it (the file itself is renamed into place,
so it cannot carry the lock). The lock file is created atomically and locked with flock, which the kernel
releases when the process ends in any way (kill -9 included). So a lock file left behind by a dead run is
known to be stale for certain, not guessed from its pid (which another process may have since, or which
may live in another container on a shared volume), and is taken over.

An existing file is replaced only with --force, and never when the command also reads it.
"""
import fcntl
import glob
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path

from minift.errors import MiniftError

LOCK = ".lock"
# Temporary files of a write that was killed: atomic_write's (.NAME.tmpPID) and safetensors' own (.tmp and six random characters).
TEMPORARY = re.compile(r"\..+\.tmp\d+|\.tmp\w{6}")


@contextmanager
def run_lock(out, log):
    """Hold out/.lock for the body of the with; refuse at once if a live process holds it. The temporary
    files of a killed run in `out` are removed once the lock is held (no live writer can own them then)."""
    out = Path(out)
    made = [d for d in (out, *out.parents) if not d.exists()]  # left again, if empty, when the run ends
    if out.exists() and not out.is_dir():
        raise MiniftError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MiniftError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    try:
        with hold(out / LOCK, f"--out {out}", "another run is writing there", "choose another --out", log):
            for p in out.iterdir():
                if TEMPORARY.fullmatch(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
            yield
    finally:
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:  # not empty: the run wrote there
                break


@contextmanager
def output_lock(output, force: bool, inputs, log, resumable=False, flag="--output"):
    """Check the output file `output` before any work, then hold its lock for the body of the with.
    Refused: a missing or unwritable directory, a directory, a file the command reads (`inputs`: files and
    directories, even with --force), an existing file unless `force` (--force, or --resume-from-output
    where the command is `resumable`)."""
    if output is None:  # stdout
        yield
        return
    output = Path(output)
    where = output.parent
    if output.is_dir():
        raise MiniftError(f"{flag} {output}: is a directory; give a file name")
    if not where.is_dir():
        raise MiniftError(f"{flag} {output}: {where} is not a directory" if where.exists() else
                          f"{flag} {output}: the directory {where} does not exist; create it first")
    for source in inputs:
        if source is not None and reads(Path(source), output):
            raise MiniftError(f"{flag} {output}: is {'inside ' if Path(source).is_dir() else ''}{source}, which this "
                              "command reads; choose another output file (--force does not allow this)")
    with hold(where / f".{output.name}.lock", f"{flag} {output}", "another command is writing it",
              "choose another output file", log):
        if output.exists() and not force:
            resume = "--resume-from-output to continue it, " if resumable else ""
            raise MiniftError(f"{flag} {output}: exists. Pass {resume}--force to replace it, or choose another file")
        for p in where.glob(f".{glob.escape(output.name)}.tmp*"):  # of a killed writer: none is alive now
            if TEMPORARY.fullmatch(p.name):
                p.unlink(missing_ok=True)
        yield


def reads(source: Path, output: Path) -> bool:
    """Whether writing `output` would change the file `source` or a file in the directory `source`."""
    if source.is_dir():
        return output.resolve().parent == source.resolve() and output.exists()
    return source.resolve() == output.resolve() or (source.exists() and output.exists()
                                                    and os.path.samefile(source, output))


@contextmanager
def hold(path: Path, what: str, busy: str, instead: str, log):
    """flock the file `path` (created if need be) for the body of the with, then remove it."""
    try:
        fd = take(path, what, busy, instead)
    except OSError as e:  # a read-only or full disk, a directory without write permission
        raise MiniftError(f"{what}: cannot write in {path.parent} ({e.strerror})") from None
    try:
        stale = _holder(fd)
        if stale:
            print(f"{path}: taking over the lock of {stale}, which has ended", file=log)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as e:
            raise MiniftError(f"{what}: cannot write {path} ({e.strerror})") from None
        yield
    finally:
        os.unlink(path)  # before the unlock: a process that opened it meanwhile finds it gone and starts over
        os.close(fd)


def take(path: Path, what: str, busy: str, instead: str) -> int:
    """An open file descriptor of `path`, flocked; refuse at once if a live process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise MiniftError(f"{what}: {busy} ({holder or 'a process starting up'}; see {path}). "
                              f"Wait for it to end or stop it, or {instead}.") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the run that held it removed the file between our open and our lock: take a new one


def _holder(fd) -> str:
    """'process PID on HOST' from a lock file's contents, '' if empty."""
    words = os.pread(fd, 200, 0).decode(errors="replace").split()
    return f"process {words[0]}" + (f" on {words[1]}" if len(words) > 1 else "") if words else ""
