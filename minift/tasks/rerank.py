"""Reranking (a cross-encoder): a query and a passage read together -> one relevance score.

The model is the family's *ForSequenceClassification with one output (classify.py's BertClassifier), saved with
sentence-transformers' cross-encoder marker in config.json, so that sentence_transformers.CrossEncoder loads it
(and scores with the same sigmoid) and minift knows it again as a reranker.
Data: CSV/TSV (with a header) or JSON Lines of (query, passage, label) rows: the two text columns in order and a
label column (--label-column, or score): relevance, 0/1 or graded. Rows with the same query form its group; every
group needs a relevant passage (label > 0).
Losses: pointwise binary cross-entropy on each pair (labels in [0, 1]), or --listwise: a softmax over each query's
group against its labels, normalised (one positive among negatives: cross-entropy).
Metrics, per query over its group, averaged: NDCG@10 (gain 2^label - 1), MRR@10 (first passage with label > 0).
"""
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minift.config import BertConfig
from minift.errors import MiniftError
from minift.retrieval import grouped_metrics
from minift.tasks.classify import BertClassifier
from minift.tasks.embed import Rows, read_rows
from minift.tasks.task import Task

# What sentence-transformers writes into a cross-encoder's config.json; its activation gives predict's score.
MARKER = {"activation_fn": "torch.nn.modules.activation.Sigmoid", "version": "minift"}


@dataclass
class Groups:
    """A batch's labels: each pair's label and the index of its query's group; the loss to take."""
    labels: torch.Tensor  # [P] float
    group: torch.Tensor  # [P] long, 0.. in the batch
    listwise: bool

    def to(self, device, non_blocking=False):
        return replace(self, labels=self.labels.to(device, non_blocking=non_blocking),
                       group=self.group.to(device, non_blocking=non_blocking))


class CrossEncoder(BertClassifier):
    """A sequence classifier with one output, read as a relevance score."""

    def loss(self, logits, targets: Groups):
        s = logits.float().squeeze(-1)  # [P]
        if not targets.listwise:
            return F.binary_cross_entropy_with_logits(s, targets.labels)
        n = int(targets.group.max()) + 1
        # Each group's log-softmax: subtract its logsumexp, gathered per pair.
        z = torch.full((n,), float("-inf"), device=s.device).scatter_reduce(0, targets.group, s, "amax")
        lse = z + torch.zeros(n, device=s.device).index_add(0, targets.group, (s - z[targets.group]).exp()).log()
        total = torch.zeros(n, device=s.device).index_add(0, targets.group, targets.labels)
        target = targets.labels / total[targets.group]
        return -(target * (s - lse[targets.group])).sum() / n

    def save_pretrained(self, path, tokenizer=None):
        from minift.checkpoint import atomic_write
        super().save_pretrained(path, tokenizer)
        file = Path(path) / "config.json"
        data = (json.dumps({**json.loads(file.read_text()), "sentence_transformers": MARKER}, indent=2) + "\n").encode()
        atomic_write(file, lambda f: f.write_bytes(data), len(data))


@dataclass
class Features:
    ids: list[list[int]]  # per query: its first pair (what batches are sorted by)
    rows: list[list[int]]  # per query: the rows of its pairs in the file
    pairs: list[list[list[int]]]  # per query, per passage: [CLS] query [SEP] passage [SEP]
    types: list[list[list[int]]]
    labels: list[list[float]] | None
    listwise: bool


class Rerank(Task[Rows, Features, torch.Tensor]):  # a row: a query's passages' scores [k]
    name = "rerank"
    model = CrossEncoder
    default_max_length = 256
    metrics = ("ndcg@10", "mrr@10")

    def claims(self, config: dict) -> bool:
        """A *ForSequenceClassification that sentence-transformers saved as a cross-encoder, with one output."""
        return "sentence_transformers" in config and len(config.get("id2label") or {0: 0}) == 1

    def read(self, path, opts, labelled: bool = True) -> Rows:
        if not labelled:
            raise MiniftError(f"{path}: give a reranker its passages with `minift predict --query Q PASSAGE...`")
        rows = read_rows(str(path), opts.label_column)
        if rows.scores is None:
            raise MiniftError(f"{path}: expected query, passage and a label column "
                              f"(named {opts.label_column!r} or 'score')")
        positive = {}
        for q, y, line in zip(rows.columns[0], rows.scores, rows.lines):
            if y < 0 or (y > 1 and not getattr(opts, "listwise", False)):
                raise MiniftError(f"{path}, line {line}: label {y:g}; binary cross-entropy needs labels from 0 to 1 "
                                  "(graded labels: --listwise, or divide them by the largest)")
            positive[q] = positive.get(q, (line, False))[0], positive.get(q, (line, False))[1] or y > 0
        for q, (line, ok) in positive.items():
            if not ok:
                raise MiniftError(f"{path}, line {line}: query {q[:60]!r} has no relevant passage (label > 0) "
                                  "in the file: it can neither be learnt nor scored")
        return rows

    def from_texts(self, texts, pairs, tok) -> Rows:
        if pairs is None:
            raise MiniftError("a reranker scores a query with passages: `minift predict --query Q PASSAGE...`")
        return Rows("<texts>", [list(texts), list(pairs)], None, list(range(1, len(texts) + 1)))

    def label_names(self, train) -> dict[int, str]:
        # transformers' default name, which sentence-transformers' cross-encoders carry: their head is kept
        return {0: "LABEL_0"}

    def features(self, rows: Rows, tok, max_length: int, config: BertConfig, opts, log=None) -> Features:
        ids, types = tok.encode(rows.columns[0], rows.columns[1], max_length)
        order = {}  # query -> its rows, in the order queries first appear
        for i, q in enumerate(rows.columns[0]):
            order.setdefault(q, []).append(i)
        groups = list(order.values())
        labels = None if rows.scores is None else [[rows.scores[i] for i in g] for g in groups]
        return Features([ids[g[0]] for g in groups], groups, [[ids[i] for i in g] for g in groups],
                        [[types[i] for i in g] for g in groups], labels, getattr(opts, "listwise", False))

    def batch(self, f: Features, idx: list[int], pad_id: int) -> dict:
        from minift.tokenizer import Tokenizer
        b = Tokenizer.pad([p for i in idx for p in f.pairs[i]], [t for i in idx for t in f.types[i]], pad_id)
        group = torch.tensor([j for j, i in enumerate(idx) for _ in f.pairs[i]])
        labels = torch.zeros(len(group)) if f.labels is None else torch.tensor([y for i in idx for y in f.labels[i]])
        b["labels"] = Groups(labels, group, f.listwise)
        return b

    def outputs(self, model, batch: dict) -> list[torch.Tensor]:  # per query: its passages' logits
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).float().cpu().squeeze(-1)
        group = batch["labels"].group.cpu()
        return [logits[group == j] for j in range(int(group.max()) + 1)] if len(group) else []

    def score(self, outputs: list[torch.Tensor], f: Features) -> dict[str, float]:
        return grouped_metrics([o.numpy() for o in outputs], [np.array(y) for y in f.labels])

    def decode(self, outputs: list[torch.Tensor], f: Features, rows: Rows, config: BertConfig) -> list[dict]:
        """Per (query, passage): {"score": sigmoid of the logit}, as CrossEncoder.predict gives it."""
        out = [None] * len(rows.lines)
        for group, o in zip(f.rows, outputs):
            for i, s in zip(group, torch.sigmoid(o).tolist()):
                out[i] = {"score": s}
        return out


def rerank(model_dir, query: str, passages: list[str], batch_size: int = 64, device: str = "auto",
           precision: str = "auto") -> list[dict]:
    """[{"passage", "score"}], best first: a reranker's scores of one query with each passage."""
    from minift.predict import load, predict_examples, task_options
    model, tok, task = load(model_dir, device)
    if not isinstance(task, Rerank):
        raise MiniftError(f"{model_dir}: a {task.name} model, not a reranker (train one with --task rerank)")
    rows = task.from_texts([query] * len(passages), passages, tok)
    scores = predict_examples(model, tok, task, rows, task_options({}, task), batch_size, None, precision)
    return sorted(({"passage": p, **s} for p, s in zip(passages, scores)), key=lambda r: -r["score"])
