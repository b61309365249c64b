"""One run per directory, with real processes: a second run (new, --overwrite or --resume) on an --out where
a run is alive is refused at once naming its process; the lock of a killed run is taken over with a note."""
import os
import signal
import subprocess
import sys

from conftest import ROOT
from minift.lock import LOCK
from test_reliability import FAST, SUBPROCESS_ENV, wait_for_line, write_csv


def test_a_live_run_holds_its_directory(tiny_dir, tmp_path):
    f = write_csv(tmp_path / "train.csv", 4000)  # epochs of 1000 steps: few saves while it runs
    out = tmp_path / "out"
    base = [sys.executable, "-m", "minift", "train", "--model", str(tiny_dir), "--train", str(f), "--out", str(out),
            "--batch-size", "4", *FAST]
    argv = [*base, "--max-steps", "1000000"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env=SUBPROCESS_ENV)
    try:
        wait_for_line(first, "step ")  # it holds the lock and trains
        assert (out / LOCK).read_text().split()[0] == str(first.pid)
        # The lock is checked before anything else: also before --resume looks for a checkpoint.
        second = [subprocess.Popen([*argv, extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=ROOT, env=SUBPROCESS_ENV) for extra in ("--overwrite", "--resume")]
        for p in second:
            _, stderr = p.communicate(timeout=600)
            assert p.returncode == 2, stderr
            assert stderr.startswith(f"minift train: error: --out {out}: another run is writing there "
                                     f"(process {first.pid} on "), stderr
        assert first.poll() is None  # the refusals took nothing from the live run
    finally:
        first.send_signal(signal.SIGKILL)  # as a crash would: its lock file stays behind
        first.communicate()
    assert (out / LOCK).read_text().split()[0] == str(first.pid)  # left behind by the killed run

    r = subprocess.run([*base, "--max-steps", "2", "--overwrite"],
                       capture_output=True, text=True, cwd=ROOT, env=SUBPROCESS_ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{out / LOCK}: taking over the lock of process {first.pid} on " in r.stderr
    assert not (out / LOCK).exists()  # released when the run ends
