"""minift search: the top k of a corpus streamed in chunks equal the top k of all similarities at once, from the
texts or from an index; empty records are never found; a mismatched index is a clear error."""
import json

import numpy as np
import pytest

import minift.search
from minift import MiniftError
from minift.predict import embed
from minift.search import search

transformers = pytest.importorskip("transformers")

CORPUS = ["the cat is on a mat", "", "it is raining", "a dog is barking", "pizza is my favourite food",
          "the car drives quickly", "a bird in the sky", "fish live in the water", "a quiet song", "cold white flakes"]
QUERIES = ["a kitten on a rug", "wet weather", "fast cars"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from test_families import random_checkpoint
    return random_checkpoint("bert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=37), "distilbert", tmp_path_factory.mktemp("m") / "bert",
                             transformers.AutoModel)


def similarities(model_dir):  # [queries, non-empty records]: all at once
    texts = [t for t in CORPUS if t]
    return embed(model_dir, QUERIES, device="cpu").numpy() @ embed(model_dir, texts, device="cpu").numpy().T


@pytest.mark.parametrize("use_index", [False, True])
def test_streamed_top_k_is_the_exact_top_k(model_dir, tmp_path, monkeypatch, use_index):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    index = None
    if use_index:
        from minift.cli import main
        index = tmp_path / "corpus.npy"
        assert main(["embed", "--model", str(model_dir), "--input", str(corpus), "--output", str(index)]) == 0
    monkeypatch.setattr(minift.search, "CHUNK", 3)  # several chunks
    got = search(model_dir, corpus, QUERIES, top_k=4, index=index, device="cpu")
    sim = similarities(model_dir)
    texts = [t for t in CORPUS if t]
    column = {i + 1: j for j, i in enumerate(i for i, t in enumerate(CORPUS) if t)}  # record -> column of sim
    # The exact top k, up to the order of scores equal within fp32 rounding (a random tiny model embeds some
    # texts almost alike, and batches of other sizes round differently): the scores found are the k largest
    # of all similarities at once, in order, and each is its own record's similarity.
    for g, row in zip(got, sim):
        found, scores = [r["record"] for r in g["results"]], [r["score"] for r in g["results"]]
        np.testing.assert_allclose(scores, np.sort(row)[::-1][:4], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row[[column[r] for r in found]], scores, rtol=1e-5, atol=1e-6)
        assert [r["text"] for r in g["results"]] == [texts[column[r]] for r in found]
    assert all(r["text"] for g in got for r in g["results"])  # the empty record is never found


def test_index_of_another_corpus_is_refused(model_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    np.save(tmp_path / "short.npy", np.zeros((3, 32), dtype=np.float32))
    with pytest.raises(MiniftError, match="3 rows, but .* has more records"):
        search(model_dir, corpus, QUERIES, index=tmp_path / "short.npy", device="cpu")
    np.save(tmp_path / "wide.npy", np.zeros((10, 8), dtype=np.float32))
    with pytest.raises(MiniftError, match="embeddings have 32 dimensions"):
        search(model_dir, corpus, QUERIES, index=tmp_path / "wide.npy", device="cpu")
    with pytest.raises(MiniftError, match="--top-k 0"):
        search(model_dir, corpus, QUERIES, top_k=0, device="cpu")


def test_cli_search_prints_json_lines(model_dir, tmp_path, capsys):
    from minift.cli import main
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    assert main(["search", "--model", str(model_dir), "--corpus", str(corpus), "--top-k", "2", *QUERIES]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["query"] for x in lines] == QUERIES and all(len(x["results"]) == 2 for x in lines)


@pytest.mark.parametrize("case", ["embed-empty", "rerank-no-positive", "search-index", "embed-metric"])
def test_command_line_refusals_leave_every_file_alone(model_dir, tmp_path, case):
    """Through the real command line: exit 2, one error line naming the culprit, no file changed or left."""
    from hostile import refused
    bad = tmp_path / "bad.csv"
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    train = ["train", "--model", model_dir, "--train", bad, "--out", tmp_path / "out"]
    if case == "embed-empty":
        bad.write_text("anchor,positive\na,b\nc, \n", encoding="utf-8")
        refused([*train, "--task", "embed"], f"{bad}, line 3", tmp_path)
    elif case == "rerank-no-positive":
        bad.write_text("query,passage,label\nq,p,0\nq,r,0\n", encoding="utf-8")
        refused([*train, "--task", "rerank"], f"{bad}, line 2", tmp_path)
    elif case == "search-index":
        np.save(tmp_path / "i.npy", np.zeros((2, 32), dtype=np.float32))
        refused(["search", "--model", model_dir, "--corpus", corpus, "--index", tmp_path / "i.npy", "q"],
                "--index", tmp_path)
    else:
        bad.write_text("anchor,positive\na,b\n", encoding="utf-8")
        refused([*train, "--task", "embed", "--metric", "pearson"], "--metric pearson", tmp_path)
    assert not (tmp_path / "out").exists()
