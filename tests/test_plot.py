"""minift plot (matplotlib: in the test extra, as in the plot extra): a valid PNG of the size its panels make, one run or several overlaid; clear errors for a
run without metrics, a damaged metrics.jsonl, and a machine without matplotlib."""
import io
import struct
import sys

import pytest

from minift.cli import main
from minift.errors import MiniftError
from minift.plot import DPI, PANEL, plot
from minift.train_loop import train
from test_reliability import API_FAST, write_csv


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("plot")
    data, dev = write_csv(d / "train.csv", 12, seed=1), write_csv(d / "dev.csv", 6, seed=2)
    out = []
    for lr in (1e-3, 1e-2):  # two runs that differ in one setting
        out.append(d / f"lr{lr:g}")
        train(tiny_dir, data, out[-1], eval=dev, epochs=3, batch_size=4, lr=lr, log=io.StringIO(), **API_FAST)
    return out


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("n", [1, 2])
def test_png_of_the_panels_size(runs, tmp_path, n):
    import matplotlib.image
    out = tmp_path / "curves.png"
    assert main(["plot", *map(str, runs[:n]), "--output", str(out)]) == 0
    # panels: loss (train and dev), dev_accuracy, dev_macro_f1, in one row
    width, height = int(PANEL[0] * DPI) * 3, int(PANEL[1] * DPI)
    assert png_size(out) == (width, height)
    pixels = matplotlib.image.imread(out)  # decodes whole: a valid PNG, not just a valid header
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.05  # drawn on, not blank
    assert not [p for p in tmp_path.iterdir() if p.name != "curves.png"]  # no temporary file left


def test_no_metrics_is_a_clear_error(runs, tmp_path, capsys):
    empty = tmp_path / "run"
    empty.mkdir()
    out = tmp_path / "curves.png"
    assert main(["plot", str(runs[0]), str(empty), "--output", str(out)]) == 2
    assert capsys.readouterr().err == (f"minift plot: error: {empty}: no metrics yet; a run writes a line to "
                                       "metrics.jsonl after each evaluation (every epoch, and where --max-steps "
                                       "stops it)\n")
    (empty / "metrics.jsonl").write_text('{"step": 3, "train_loss": 0.7}\n{"step": 6, "tra')  # the last is being written
    plot([empty], out)
    (empty / "metrics.jsonl").write_text('{"step": 3}\nnot json\n')
    with pytest.raises(MiniftError, match=r"metrics.jsonl, line 2: not a JSON line"):
        plot([empty], out)
    with pytest.raises(MiniftError, match="no such run directory"):
        plot([tmp_path / "nope"], out)


def test_without_matplotlib_says_how_to_install_it(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MiniftError, match=r"needs matplotlib.*pip install 'minift\[plot\]'"):
        plot(runs, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
