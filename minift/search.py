"""Exact semantic search: the queries' embeddings against every passage of a corpus, by cosine similarity.

The corpus is read a chunk of records at a time (minift/stream.py's records: a .txt line, a CSV/TSV row, a JSON
line), embedded or, given an index (the .npy that `minift embed --input CORPUS --output INDEX` wrote), read from
it as a memory map in step; only each query's best top_k so far are kept, so memory stays flat however large the
corpus. Empty records (NaN rows of the index) are never found. A cross-encoder (--rerank) may then reorder each
query's top_k.
"""
from itertools import islice

import numpy as np

from minift.errors import MiniftError
from minift.stream import records

CHUNK = 4096  # passages embedded and scored at a time: memory for these alone


def search(model_dir, corpus, queries: list[str], top_k: int = 10, index=None, rerank_model=None,
           text_column: str = "text", batch_size: int = 64, max_length: int | None = None,
           device: str = "auto") -> list[dict]:
    """Per query: {"query", "results": [{"rank", "score", "record" (1-based), "text"}, ...]}, best first."""
    from minift.pooling import read_pooling
    from minift.predict import embed_texts, load_encoder
    if not queries:
        raise MiniftError("no queries: give them as arguments")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise MiniftError(f"--top-k {top_k}: expected a positive whole number")
    pooling = read_pooling(model_dir)
    model, tok = load_encoder(model_dir, device)
    length = max_length or pooling.max_length or 256
    q = embed_texts(model, tok, queries, batch_size, length, pooling).numpy()  # [nq, H]
    rows = open_index(index, q.shape[1]) if index else None
    best = [[] for _ in queries]  # per query: (score, record, text), at most top_k
    recs, at = iter(records(corpus, text_column)), 0
    while chunk := [text for text, _ in islice(recs, CHUNK)]:
        if rows is not None:
            if at + len(chunk) > len(rows):
                raise MiniftError(f"--index {index}: {len(rows)} rows, but {corpus} has more records; make the index "
                                  f"again with `minift embed --input {corpus} --output {index}`")
            vecs = np.asarray(rows[at:at + len(chunk)], dtype=np.float32)
        else:
            vecs = np.full((len(chunk), q.shape[1]), np.nan, dtype=np.float32)
            keep = [i for i, t in enumerate(chunk) if t.strip()]
            if keep:
                vecs[keep] = embed_texts(model, tok, [chunk[i] for i in keep], batch_size, length, pooling).numpy()
        keep_best(best, q, vecs, chunk, at, top_k)
        at += len(chunk)
    if rows is not None and at != len(rows):
        raise MiniftError(f"--index {index}: {len(rows)} rows, but {corpus} has {at} records; make the index again")
    out = []
    for query, found in zip(queries, best):
        found = sorted(found, key=lambda r: (-r[0], r[1]))
        results = [{"rank": i + 1, "score": s, "record": n + 1, "text": t} for i, (s, n, t) in enumerate(found)]
        if rerank_model is not None and results:
            results = rerank_results(rerank_model, query, results, batch_size, device)
        out.append({"query": query, "results": results})
    return out


def open_index(index, dim: int):
    try:
        rows = np.load(index, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise MiniftError(f"--index {index}: cannot be read as a .npy file ({e})") from None
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise MiniftError(f"--index {index}: shape {rows.shape}, but the model's embeddings have {dim} dimensions; "
                          "was it made with another model?")
    return rows


def keep_best(best, q, vecs, texts, start: int, top_k: int):
    """Merge one chunk's passages into each query's best top_k. Vectors are normalised here: an index may not be."""
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    sim = q @ (vecs / np.where(norms > 0, norms, 1)).T  # [nq, n]
    sim = np.where(np.isnan(sim), -np.inf, sim)
    k = min(top_k, sim.shape[1])
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    for found, row, idx in zip(best, sim, top):
        found += [(float(row[i]), start + int(i), texts[i]) for i in idx if np.isfinite(row[i])]
        found.sort(key=lambda r: (-r[0], r[1]))
        del found[top_k:]


def rerank_results(model_dir, query: str, results: list[dict], batch_size: int, device: str) -> list[dict]:
    from minift.tasks.rerank import rerank
    by_text = {}
    for r in results:
        by_text.setdefault(r["text"], []).append(r)
    scored = rerank(model_dir, query, [r["text"] for r in results], batch_size, device)
    out = []
    for i, s in enumerate(scored):
        r = by_text[s["passage"]].pop(0)
        out.append({**r, "rank": i + 1, "rerank_score": s["score"]})
    return out
