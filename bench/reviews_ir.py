"""Retrieval on reviews-ir (`minift fetch data reviews-ir`): a bi-encoder alone, then with a reranker on its top 10.

  python bench/reviews_ir.py rerank-data DIR [BI|K] writes DIR/rerank-train.csv: each training query with its
                                                    passage (label 1) and another review's (label 0): a random
                                                    one; K random others (rerank-K.csv); or with BI the one that
                                                    bi-encoder ranks first among the others, at 128 tokens
                                                    (rerank-hard.csv)
  python bench/reviews_ir.py eval DIR BI [RERANKER] each test query against every test passage: recall@1,
                                                    recall@10, MRR@10 of the bi-encoder, then of the reranker's
                                                    order of the bi-encoder's top 10 (the bi-encoder at 256
                                                    tokens, the reranker at the length it was trained with)
"""
import csv
import json
import random
import sys
from pathlib import Path

import numpy as np

from minift.predict import embed, load, predict_examples, task_options
from minift.retrieval import ranks, retrieval_metrics


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["query"], r["passage"]) for r in csv.DictReader(f)]


def rerank_data(d: Path, bi: str | None = None):
    pairs, rng = read(d / "train.csv"), random.Random(0)
    if bi and bi.isdigit():
        return write_rows(d / f"rerank-{bi}.csv", [row for i, (q, p) in enumerate(pairs) for row in [(q, p, 1)] + [
            (q, pairs[j][1], 0) for j in rng.sample([j for j in range(len(pairs)) if j != i], int(bi))]])
    if bi:
        q = embed(bi, [x for x, _ in pairs], max_length=128).numpy()
        sim = q @ embed(bi, [x for _, x in pairs], max_length=128).numpy().T
        np.fill_diagonal(sim, -np.inf)
        hard = sim.argmax(1)
    rows = []
    for i, (q, p) in enumerate(pairs):
        j = rng.randrange(len(pairs) - 1)
        j += j >= i  # any review but its own
        rows += [(q, p, 1), (q, pairs[int(hard[i]) if bi else j][1], 0)]
    write_rows(d / ("rerank-hard.csv" if bi else "rerank-train.csv"), rows)


def write_rows(path: Path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("query", "passage", "label"), *rows])


def evaluate(d: Path, bi: str, reranker: str | None, max_length: int = 256):
    pairs = read(d / "test.csv")
    q = embed(bi, [x for x, _ in pairs], max_length=max_length).numpy()
    p = embed(bi, [x for _, x in pairs], max_length=max_length).numpy()
    rank = ranks(q, p, np.arange(len(pairs)))
    out = {"bi-encoder": retrieval_metrics(rank)}
    if reranker:
        model, tok, task = load(reranker)
        top = np.argsort(-(q @ p.T), axis=1, kind="stable")[:, :10]
        new = []
        for i, cand in enumerate(top):
            rows = task.from_texts([pairs[i][0]] * len(cand), [pairs[j][1] for j in cand], tok)
            s = [r["score"] for r in predict_examples(model, tok, task, rows, task_options({}, task), 16, None, "auto")]
            order = [int(cand[k]) for k in np.argsort(-np.array(s), kind="stable")]
            new.append(order.index(i) + 1 if i in order else 11)  # past the top 10: not found
        out["bi-encoder + reranker"] = retrieval_metrics(np.array(new))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "rerank-data":
        rerank_data(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        evaluate(Path(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
