"""Scoring embeddings: retrieval metrics of queries against a corpus, correlations of similarity with scores.
numpy only.

Each query has one relevant document. Its rank counts every document scoring at least as high as the relevant
one (ties go against it: a model that scores everything alike ranks nothing first).
  recall@k  the share of queries whose relevant document ranks k or better
  MRR@10    the mean of 1 / rank, 0 past rank 10
  NDCG@10   the mean of 1 / log2(rank + 1), 0 past rank 10 (one relevant document: the ideal DCG is 1)
"""
import numpy as np


def ranks(queries: np.ndarray, corpus: np.ndarray, relevant: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """queries [n, H], corpus [m, H] (both L2-normalised), relevant [n]: the index of each query's document
    in the corpus -> the rank of that document for each query, 1 the best."""
    out = np.empty(len(queries), dtype=np.int64)
    for i in range(0, len(queries), chunk):  # [chunk, m] similarities at a time
        sim = queries[i:i + chunk] @ corpus.T
        mine = sim[np.arange(len(sim)), relevant[i:i + chunk]]
        out[i:i + chunk] = (sim >= mine[:, None]).sum(1)
    return out


def retrieval_metrics(rank: np.ndarray) -> dict[str, float]:
    rank = np.asarray(rank, dtype=np.float64)
    top10 = rank <= 10
    return {"ndcg@10": float(np.mean(np.where(top10, 1 / np.log2(rank + 1), 0))),
            "mrr@10": float(np.mean(np.where(top10, 1 / rank, 0))),
            "recall@1": float(np.mean(rank <= 1)), "recall@10": float(np.mean(top10))}


def grouped_metrics(scores: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, float]:
    """Per query, its passages' scores and labels (graded relevance, > 0 relevant) -> NDCG@10 (gain 2^label - 1)
    and MRR@10, averaged over queries. Ties go against the relevant: among equal scores the lowest label first."""
    ndcg, mrr = [], []
    for s, y in zip(scores, labels):
        order = np.lexsort((y, -s))[:10]  # by score descending, then label ascending
        discount = 1 / np.log2(np.arange(2, len(order) + 2))
        ideal = ((2.0 ** np.sort(y)[::-1][:10] - 1) * discount[:min(10, len(y))]).sum()
        ndcg.append(((2.0 ** y[order] - 1) * discount).sum() / ideal if ideal > 0 else 0.0)
        hits = np.flatnonzero(y[order] > 0)
        mrr.append(1 / (hits[0] + 1) if len(hits) else 0.0)
    return {"ndcg@10": float(np.mean(ndcg)), "mrr@10": float(np.mean(mrr))}


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2  # ranks start..end-1 (0-based) -> their mean, 1-based
    out = np.empty(len(x))
    out[order] = np.repeat(mean_rank, ends - starts)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64) - np.mean(a), np.asarray(b, np.float64) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def correlations(similarity: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {"spearman": pearson(rankdata(similarity), rankdata(scores)), "pearson": pearson(similarity, scores)}
