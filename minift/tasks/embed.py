"""Sentence embeddings (a bi-encoder): the encoder, pooled (minift/pooling.py), trained so that related texts
embed close together and unrelated ones apart.

Data: CSV/TSV (with a header) or JSON Lines, its columns in order.
  pairs    anchor, positive[, hard negative, ...]: every column a text. Loss: multiple-negatives ranking, each
           anchor against every positive and hard negative in its batch (minift/contrastive.py).
  scored   two text columns and a score column (named score, or --label-column): a number in any range, only
           the order counts. Loss: CoSENT.
Dev metrics: for pairs, each anchor retrieves among all the dev set's positives and negatives, and the passages
of --eval-corpus, never relevant (NDCG@10, MRR@10, recall@1, recall@10; minift/retrieval.py); for scored pairs,
the Spearman and Pearson correlation of cosine similarity with the score. The model saved is the encoder alone
(the family's *Model) with sentence-transformers' module files, so sentence_transformers.SentenceTransformer and
transformers.AutoModel both load it.
"""
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn

from minift.config import BertConfig
from minift.contrastive import LossSpec, cached_loss, cosine, embedding_loss
from minift.data import _text, read_records
from minift.errors import MiniftError
from minift.model import Bert
from minift.pooling import MODES, Pooling, pool, read_pooling, write_pooling
from minift.retrieval import correlations, ranks, retrieval_metrics
from minift.tasks.task import Task

PAIR_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")
SCORED_METRICS = ("spearman", "pearson")


@dataclass
class Targets:
    """What the loss needs beside the texts, carried in the batch as its labels: text ids [k, B] (equal ids, equal
    texts) or scores [B]; the loss settings; the pooling mode asked for (None: the model directory's); in evaluation,
    per example of the batch, whether it is an --eval-corpus passage (embedded after the rows, one text each)."""
    values: torch.Tensor | None
    spec: LossSpec
    pooling: str | None
    extra: list[bool] | None = None

    def to(self, device, non_blocking=False):
        v = self.values
        return replace(self, values=None if v is None else v.to(device, non_blocking=non_blocking))


class SentenceEncoder(nn.Module):
    """The encoder of any family and its pooling: texts -> one vector each."""
    ARCHITECTURE = "BertModel"  # the family's stem replaces Bert on save
    POOLER = False  # BERT's pooler is no part of a sentence embedding: left out

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = Bert(config, pooler=False)
        self.pooling = Pooling()

    def embed(self, input_ids, attention_mask, token_type_ids=None):  # [n, T] -> [n, H]
        h, _ = self.bert(input_ids, attention_mask, token_type_ids)
        return pool(h, attention_mask, self.pooling)

    def use(self, mode: str | None):
        if mode is not None:
            self.pooling = replace(self.pooling, mode=mode)

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels: Targets | None = None):
        """Rows are k columns of B texts each (column-major). -> embeddings [k B, H], and the loss given labels."""
        if labels is None:
            return self.embed(input_ids, attention_mask, token_type_ids)
        self.use(labels.pooling)
        spec, inputs = labels.spec, {"input_ids": input_ids, "attention_mask": attention_mask,
                                     "token_type_ids": token_type_ids}
        shape = (len(input_ids) // labels.values.shape[-1], labels.values.shape[-1])  # (k, B)
        if spec.mini_batch:
            if torch.distributed.is_initialized():
                raise MiniftError("--mini-batch (the gradient cache) runs in one process; leave out torchrun")
            return None, cached_loss(self.embed, inputs, shape, labels.values, spec)
        emb = self.embed(**inputs)
        return emb, embedding_loss(emb.view(*shape, -1), labels.values, spec)

    @classmethod
    def from_pretrained(cls, path, allow_pickle: bool = False, id2label=None, problem_type=None,
                        new_head: bool = False) -> "SentenceEncoder":
        """The encoder of a model directory, whatever head it has left behind (id2label, problem_type and
        new_head are the task protocol's, for heads: none here), pooled as its sentence-transformers files say
        (mean and L2-normalised without them)."""
        from minift.checkpoint import load_pretrained
        model = load_pretrained(cls, path, allow_pickle=allow_pickle, new_head=True)
        model.pooling = read_pooling(path)
        return model

    def save_pretrained(self, path, tokenizer=None):
        from minift.checkpoint import save_pretrained
        save_pretrained(self, path, tokenizer)
        length = tokenizer.model_max_length if tokenizer is not None else self.pooling.max_length
        write_pooling(path, self.pooling, self.config.hidden_size, min(length or 512, self.config.max_tokens))


@dataclass
class Rows:
    path: str
    columns: list[list[str]]  # k columns of n texts
    scores: list[float] | None
    lines: list[int]
    skipped_empty: int = 0
    extra: list[str] | None = None  # --eval-corpus passages, none of them a text of the rows
    pairs = None  # each text is encoded alone, never as a pair

    @property
    def texts(self) -> list[str]:
        return self.columns[0]


@dataclass
class Features:
    ids: list[list[int]]  # each example's first text, then each extra passage: what batches are sorted by
    columns: list[list[list[int]]]  # [k][n] token ids
    types: list[list[list[int]]]
    values: torch.Tensor | None  # [k, n] text ids (pairs), [n] scores, None for texts alone
    spec: LossSpec
    pooling: str | None
    extra: list[tuple[list[int], list[int]]]  # the extra passages' (ids, types); their examples follow the rows


class Embed(Task[Rows, Features, torch.Tensor]):  # a row: its texts' embeddings [k, H]
    name = "embed"
    model = SentenceEncoder
    problem_type = None
    default_max_length = 128
    metrics = PAIR_METRICS + SCORED_METRICS  # the default: NDCG@10 for pairs, Spearman for scored pairs

    # ---- reading ----
    def read(self, path, opts, labelled: bool = True) -> Rows:
        if not labelled:  # texts to embed: one column
            from minift.data import read_dataset
            ds = read_dataset(path, opts.text_column, None, need_labels=False)
            return Rows(ds.path, [ds.texts], None, ds.lines, ds.skipped_empty)
        rows = read_rows(str(path), opts.label_column)
        if rows.scores is not None and getattr(opts, "symmetric", False):
            raise MiniftError(f"--symmetric: {path} holds scored pairs, whose loss (CoSENT) has no direction")
        if hasattr(opts, "metric"):  # a training run: its --metric must be one this data gives
            choose_metric(opts, rows, self.metrics[0])
        return rows

    def read_eval(self, path, opts) -> Rows:
        rows = self.read(path, opts)
        if getattr(opts, "eval_corpus", None):
            if rows.scores is not None:
                raise MiniftError(f"--eval-corpus {opts.eval_corpus}: {path} holds scored pairs, scored by "
                                  "correlation; extra passages are for retrieval over pairs")
            rows.extra = distractors(opts.eval_corpus, opts.text_column, rows)
        return rows

    def from_texts(self, texts, pairs, tok) -> Rows:
        columns = [list(texts)] if pairs is None else [list(texts), list(pairs)]
        return Rows("<texts>", columns, None, list(range(1, len(texts) + 1)))

    def label_names(self, train) -> None:
        return None

    # ---- features ----
    def features(self, rows: Rows, tok, max_length: int, config: BertConfig, opts, log=None) -> Features:
        spec = loss_spec(opts, config.hidden_size)
        encoded = [tok.encode(col, None, max_length) for col in rows.columns]
        if rows.scores is not None:
            values = torch.tensor(rows.scores, dtype=torch.float32)
        elif len(rows.columns) > 1:  # ids of distinct texts, so that equal texts are known as such
            known = {}
            values = torch.tensor([[known.setdefault(t, len(known)) for t in col] for col in rows.columns])
        else:
            values = None
        extra = list(zip(*tok.encode(rows.extra, None, max_length))) if rows.extra else []
        return Features(encoded[0][0] + [ids for ids, _ in extra], [e[0] for e in encoded], [e[1] for e in encoded],
                        values, spec, getattr(opts, "pooling", None), extra)

    def batch(self, f: Features, idx: list[int], pad_id: int) -> dict:
        from minift.tokenizer import Tokenizer
        k, n = len(f.columns), len(f.columns[0])
        rows, extra = [i for i in idx if i < n], [f.extra[i - n] for i in idx if i >= n]
        b = Tokenizer.pad([f.columns[c][i] for c in range(k) for i in rows] + [ids for ids, _ in extra],
                          [f.types[c][i] for c in range(k) for i in rows] + [types for _, types in extra], pad_id)
        values = None if f.values is None else f.values[..., rows]
        b["labels"] = Targets(values if values is not None else torch.zeros(k, len(rows)), f.spec, f.pooling,
                              [i >= n for i in idx] if extra else None)
        return b

    def outputs(self, model, batch: dict) -> list[torch.Tensor]:  # per example: its k embeddings [k, H]
        t = batch["labels"]
        model.use(t.pooling)
        e = model.embed(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).float().cpu()
        n, extra = t.values.shape[-1], t.extra or []
        m = sum(extra)
        rows = iter(e[:len(e) - m].view(-1, n, e.shape[-1]).transpose(0, 1) if n else [])
        passages = iter(e[len(e) - m:, None])  # an extra passage: one text, [1, H]
        return [next(passages) if x else next(rows) for x in extra or [False] * n]

    # ---- scoring and output ----
    def score(self, outputs: list[torch.Tensor], f: Features) -> dict[str, float]:
        e = torch.stack(outputs[:len(f.columns[0])])  # [n, k, H]
        if f.values.is_floating_point():
            sim = cosine(e[:, 0], e[:, 1]).diagonal().numpy()
            return correlations(sim, f.values.numpy())
        e = nn.functional.normalize(e, dim=-1).numpy()
        ids = f.values[1:].T.reshape(-1).numpy()  # the documents: positives and negatives, each text once
        first = {}
        for j, t in enumerate(ids):
            first.setdefault(t, j)
        corpus = e[:, 1:].reshape(-1, e.shape[-1])[list(first.values())]
        if f.extra:  # distractors, after the documents: no query's relevant index moves
            corpus = np.concatenate([corpus, nn.functional.normalize(torch.cat(outputs[len(e):]), dim=-1).numpy()])
        where = {t: i for i, t in enumerate(first)}
        relevant = np.array([where[t] for t in f.values[1].tolist()])
        return retrieval_metrics(ranks(e[:, 0], corpus, relevant))

    def decode(self, outputs: list[torch.Tensor], f: Features, rows: Rows, config: BertConfig) -> list[dict]:
        """Per text: {"embedding": [...]}; per pair of texts: {"similarity": cosine}."""
        if len(outputs[0]) == 1:
            return [{"embedding": o[0].tolist()} for o in outputs]
        return [{"similarity": cosine(o[:1], o[1:2]).item()} for o in outputs]


def read_rows(path: str, label_column: str) -> Rows:
    """Pairs or scored pairs, every text non-empty and every score a number, or an error naming the line."""
    names, rows = None, None
    for line, record in read_records(path)[2]:
        if names is None:
            names = list(record)
            score = next((c for c in (label_column, "score") if c in names), None)
            texts = [c for c in names if c != score]
            if len(texts) < 2 or (score and len(texts) != 2):
                raise MiniftError(f"{path}: columns {', '.join(map(repr, names))}; expected anchor, positive[, "
                                  f"hard negatives...] (every column a text), or two texts and a score column "
                                  f"(named {label_column!r} or 'score')")
            rows = Rows(path, [[] for _ in texts], [] if score else None, [])
        for c in names:
            if c not in record:
                raise MiniftError(f"{path}, line {line}: no column {c!r} (the first row has "
                                  f"{', '.join(map(repr, names))})")
            if c != score and not _text(path, line, c, record[c]):
                raise MiniftError(f"{path}, line {line}: column {c!r} is empty; every text of a row is needed")
        for col, c in zip(rows.columns, texts):
            col.append(_text(path, line, c, record[c]))
        if score:
            try:
                x = float(record[score])
            except (TypeError, ValueError):
                x = math.nan
            if not math.isfinite(x):
                raise MiniftError(f"{path}, line {line}: score {record[score]!r} is not a number")
            rows.scores.append(x)
        rows.lines.append(line)
    if rows is None:
        raise MiniftError(f"{path}: no examples (expected a header row, or JSON objects, then one example per row)")
    return rows


def distractors(path, text_column: str, rows: Rows) -> list[str]:
    """The non-empty passages of an --eval-corpus file (read as `minift search --corpus` reads it), each once,
    leaving out those that are a text of the rows already (a corpus may hold the dev set's own positives)."""
    from minift.stream import records
    try:
        texts = [t for t, _ in records(path, text_column) if t.strip()]
    except MiniftError as e:
        raise MiniftError(f"--eval-corpus: {e}") from None
    if not texts:
        raise MiniftError(f"--eval-corpus {path}: no passages (every record is empty)")
    known = {t for col in rows.columns[1:] for t in col}
    return [t for t in dict.fromkeys(texts) if t not in known]


def choose_metric(opts, rows: Rows, default: str):
    """Scored pairs are scored by correlation: their default --metric is spearman."""
    scored = rows.scores is not None
    if scored and opts.metric == default:
        opts.metric = SCORED_METRICS[0]
    if opts.metric not in (SCORED_METRICS if scored else PAIR_METRICS):
        raise MiniftError(f"--metric {opts.metric}: {rows.path} holds {'scored pairs' if scored else 'pairs'}, "
                          f"scored by {', '.join(SCORED_METRICS if scored else PAIR_METRICS)}")


def loss_spec(opts, hidden: int) -> LossSpec:
    dims = ()
    if getattr(opts, "matryoshka", None):
        try:
            dims = tuple(int(d) for d in str(opts.matryoshka).split(","))
        except ValueError:
            dims = (0,)
        if not all(0 < d <= hidden for d in dims):
            raise MiniftError(f"--matryoshka {opts.matryoshka}: expected dimensions separated by commas, each from 1 "
                              f"to the model's {hidden} (e.g. {hidden},{hidden // 2},{hidden // 4})")
    mini = getattr(opts, "mini_batch", None)
    if mini is not None and (mini <= 0 or int(mini) != mini):
        raise MiniftError(f"--mini-batch {mini}: expected a positive whole number of texts per encoder pass")
    if not getattr(opts, "scale", 20.0) > 0:
        raise MiniftError(f"--scale {opts.scale}: expected a positive number (the inverse of the temperature)")
    if getattr(opts, "pooling", None) not in (None, *MODES):
        raise MiniftError(f"--pooling {opts.pooling!r}: expected one of {', '.join(MODES)}")
    return LossSpec(getattr(opts, "scale", 20.0), getattr(opts, "symmetric", False), dims, mini)
