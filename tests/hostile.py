"""The hostile battery's one check, shared by its test modules: a command that must be refused is run
through the real command line (minift.cli.main, in this process so that a hundred cases take seconds)
and must

  - exit with status 2,
  - print no traceback, and one error line that names the culprit (a file and line, a field, an option),
  - leave every file that existed before byte-identical (nothing a user had is lost or changed).

`refused(argv, culprit, tree)` returns the error line, for further checks.
"""
import contextlib
import hashlib
import io
from pathlib import Path

from minift.cli import main


def snapshot(tree: Path) -> dict[str, str]:
    """sha256 of every file under tree (the user's files a command must not touch)."""
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(tree).rglob("*")) if p.is_file()}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's own refusals
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def refused(argv: list, culprit: str, tree: Path) -> str:
    before = snapshot(tree)
    rc, out, err = run_cli(argv)
    shown = f"minift {' '.join(map(str, argv))}\nexit {rc}\nstdout: {out[-2000:]}\nstderr: {err[-4000:]}"
    assert rc == 2, shown
    assert "Traceback" not in err, shown
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, shown
    assert culprit in errors[0], f"{culprit!r} not named in the error line\n{shown}"
    after = snapshot(tree)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"files changed or removed: {changed}\n{shown}"
    return errors[0]
