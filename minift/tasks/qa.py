"""Extractive question answering (SQuAD): the answer is a span of the context, found by scoring every
context token as the span's start and as its end.

A question and its context are one pair, question first. A context longer than a window is cut into
windows of --max-length tokens that overlap by --doc-stride tokens (the question whole in each); a
question's answer is the best span over all of its windows, mapped back through the tokens' character
offsets to the exact substring of the context. SQuAD v2.0 (--squad-v2) adds questions without an answer:
the [CLS] token's score stands for "no answer".

The head is BertForQuestionAnswering's: one linear layer giving each token a start and an end score.
"""
import json
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.config import BertConfig
from minift.data import json_lines, read_text
from minift.errors import MiniftError
from minift.model import Bert, PredictionHead, init_weights
from minift.tasks.task import Task

N_BEST = 20  # start and end candidates per window, as Hugging Face's run_qa.py and the original BERT
DOC_STRIDE = 128  # with windows of 384 tokens (QA.default_max_length): SQuAD's usual, and transformers' pipeline's


class BertQA(nn.Module):
    """An encoder of the BERT family + qa_outputs [2, H] on every token (BertForQuestionAnswering, and
    RoBERTa's, DistilBERT's, ELECTRA's; no pooler, no dropout). ModernBERT's has its dense -> activation ->
    norm head before a classifier [2, H] (ModernBertForQuestionAnswering)."""
    ARCHITECTURE = "BertForQuestionAnswering"  # the family's stem replaces Bert on save
    HEAD = ("qa_outputs.",)
    POOLER = False

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = Bert(config, pooler=False)
        H = config.hidden_size
        if config.family.prediction_head:
            self.HEAD = ("head.", "classifier.")
            self.head = PredictionHead(config)
            self.classifier = nn.Linear(H, 2)
            init_weights(self.classifier, config.initializer_range)
        else:
            self.qa_outputs = nn.Linear(H, 2)
            init_weights(self.qa_outputs, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None, end_positions=None):
        x, pack = self.bert.encode(input_ids, attention_mask, token_type_ids)  # [N, H] real tokens
        if self.config.family.prediction_head:
            x = self.classifier(self.head(x))
        else:
            x = self.qa_outputs(x)
        logits = pack.pad(x)  # [B, T, 2]: each token's start and end score
        if attention_mask is not None:  # padding is never an answer and stays out of the softmax
            logits = logits.masked_fill(attention_mask[..., None] == 0, torch.finfo(logits.dtype).min)
        if start_positions is None:
            return logits
        return logits, self.loss(logits, start_positions, end_positions)

    @staticmethod
    def loss(logits, start_positions, end_positions):  # logits [B, T, 2]; positions [B]
        logits = logits.float()  # losses in fp32 even under autocast
        return (F.cross_entropy(logits[..., 0], start_positions) + F.cross_entropy(logits[..., 1], end_positions)) / 2

    @classmethod
    def from_pretrained(cls, path, allow_pickle: bool = False, id2label=None, problem_type=None,
                        new_head: bool = False) -> "BertQA":
        from minift.checkpoint import load_pretrained
        return load_pretrained(cls, path, allow_pickle=allow_pickle, id2label=id2label, new_head=new_head)

    def save_pretrained(self, path, tokenizer=None):
        from minift.checkpoint import save_pretrained
        save_pretrained(self, path, tokenizer)


# ---- reading ----

@dataclass
class Examples:
    path: str
    ids: list[str]
    questions: list[str]
    contexts: list[str]
    answers: list[list[tuple[str, int]]] | None  # gold (text, answer_start) per question, [] = none; None: unread
    where: list[str]  # "question 'id'" or "line N, question 'id'": for error messages

    # The generic code's names: the first and second text of each pair.
    texts = property(lambda self: self.questions)
    pairs = property(lambda self: self.contexts)


def read(path, labelled: bool) -> Examples:
    """SQuAD v1.1 / v2.0 JSON, or JSON Lines in the layout of Hugging Face's `squad` data sets."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise MiniftError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; question answering "
                          "reads SQuAD .json or .jsonl files")
    text = read_text(path)
    records = squad_records(path, text) if suffix == ".json" else jsonl_records(path, text)
    ds = Examples(str(path), [], [], [], [] if labelled else None, [])
    seen = set()
    for where, rec in records:
        add_example(ds, where, rec, labelled)
        if ds.ids[-1] in seen:
            raise MiniftError(f"{path}, {where}: the id is used twice; answers are written per id")
        seen.add(ds.ids[-1])
    if not ds.ids:
        raise MiniftError(f"{path}: no questions in the file")
    return ds


def squad_records(path, text):
    """(where, {id, question, context, answers: [{text, answer_start}]}) per question of a SQuAD JSON file"""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise MiniftError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise MiniftError(f'{path}: expected SQuAD JSON, {{"data": [{{"paragraphs": [{{"context": "...", '
                          f'"qas": [...]}}]}}]}} (for JSON Lines, name the file .jsonl)')
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(need(path, f"data[{a}]", article, "paragraphs", list)):
            at = f"data[{a}].paragraphs[{p}]"
            context = need(path, at, para, "context", str)
            for q, qa in enumerate(need(path, at, para, "qas", list)):
                if not isinstance(qa, dict):
                    raise MiniftError(f"{path}, {at}.qas[{q}]: expected an object, got {type(qa).__name__}")
                # v2.0 marks unanswerable questions (their "answers" is empty; "plausible_answers" is not gold)
                answers = [] if qa.get("is_impossible") else qa.get("answers")
                yield where_of(qa, f"{at}.qas[{q}]"), {**qa, "context": context, "answers": answers}


def jsonl_records(path, text):
    """(where, record) per line: {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}."""
    like = '{"id": "...", "question": "...", "context": "...", "answers": {"text": [...], "answer_start": [...]}}'
    for n, rec in json_lines(path, text.split("\n"), like):
        where = where_of(rec, f"line {n}")
        if where != f"line {n}":
            where = f"line {n}, {where}"
        answers = rec.get("answers")
        if isinstance(answers, dict):
            texts, starts = need(path, where, answers, "text", list), need(path, where, answers, "answer_start", list)
            if len(texts) != len(starts):
                raise MiniftError(f"{path}, {where}: answers has {len(texts)} texts but {len(starts)} answer_starts")
            answers = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
        elif answers is not None:
            raise MiniftError(f'{path}, {where}: "answers" should be {{"text": [...], "answer_start": [...]}}')
        yield where, {**rec, "answers": answers}


def where_of(rec, fallback: str) -> str:
    return f"question {rec['id']!r}" if isinstance(rec, dict) and isinstance(rec.get("id"), (str, int)) else fallback


KIND = {str: "a string", int: "a whole number", list: "a list"}


def need(path, where, obj, key, kind):
    """obj[key], which must be there and of the kind (a type, or a tuple of types)."""
    if not isinstance(obj, dict) or key not in obj:
        raise MiniftError(f"{path}, {where}: no {key!r} field")
    if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
        kinds = " or ".join(KIND[k] for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise MiniftError(f"{path}, {where}: {key!r} is {obj[key]!r}; expected {kinds}")
    return obj[key]


def add_example(ds: Examples, where: str, rec: dict, labelled: bool):
    qid = need(ds.path, where, rec, "id", (str, int))
    question, context = need(ds.path, where, rec, "question", str), need(ds.path, where, rec, "context", str)
    if not question.strip():
        raise MiniftError(f"{ds.path}, {where}: the question is empty")
    if not context.strip():
        raise MiniftError(f"{ds.path}, {where}: the context is empty")
    if labelled:
        if rec.get("answers") is None:
            raise MiniftError(f"{ds.path}, {where}: no 'answers' field (an unanswerable question has an empty list)")
        gold = []
        for a in need(ds.path, where, rec, "answers", list):
            text, start = need(ds.path, where, a, "text", str), need(ds.path, where, a, "answer_start", int)
            if not text.strip():
                raise MiniftError(f"{ds.path}, {where}: an answer's text is empty")
            if start < 0 or context[start:start + len(text)] != text:
                raise MiniftError(f"{ds.path}, {where}: answer_start {start} does not point at the answer {text!r}: "
                                  f"the context there reads {context[max(start, 0):max(start, 0) + len(text)]!r}")
            gold.append((text, start))
        ds.answers.append(gold)
    ds.ids.append(str(qid))
    ds.questions.append(question)
    ds.contexts.append(context)
    ds.where.append(where)


# ---- features: windows over the context ----

@dataclass
class Features:
    ids: list[list[int]]  # per window: [CLS] question [SEP] part of the context [SEP]
    types: list[list[int]]
    example: list[int]  # the question each window belongs to
    first: list[int]  # the window's first context token, counted in the context's tokens
    offsets: list[list[tuple[int, int]]]  # per question: each context token's (start, end) character span
    start: torch.Tensor | None  # [windows] the answer's first and last token, 0 ([CLS]) when the window
    end: torch.Tensor | None    # lacks it; None when unlabelled
    examples: Examples
    opts: object  # max_answer_length, null_threshold, squad_v2: what turns scores into answers
    window: list[tuple[int, int]] = field(default_factory=list)  # positions of the first and last context token


def window_starts(n: int, room: int, stride: int) -> list[int]:
    """First token of each window of `room` tokens over n context tokens, as `tokenizers` cuts its
    overflowing windows: the next starts `stride` tokens before the previous one ends, until one reaches the end."""
    starts = [0]
    while starts[-1] + room < n:
        starts.append(starts[-1] + room - stride)
    return starts


def answer_tokens(offsets, char_start: int, char_end: int) -> tuple[int, int] | None:
    """The first and last token of the answer at characters [char_start, char_end) among a window's context
    tokens (their character spans: offsets); None when the window does not hold the whole answer.
    The start is the last token that starts at or before char_start, the end the first that ends at or
    after char_end: Hugging Face's run_qa.py labelling, kept inside the context."""
    if not offsets or offsets[0][0] > char_start or offsets[-1][1] < char_end:
        return None
    start = sum(1 for a, _ in offsets if a <= char_start) - 1
    end = next(k for k, (_, b) in enumerate(offsets) if b >= char_end)
    return start, end


def doc_stride(opts) -> int:
    return DOC_STRIDE if opts.doc_stride is None else opts.doc_stride


def check_options(opts):
    for name, least in (("doc_stride", 0), ("max_answer_length", 1)):
        v = doc_stride(opts) if name == "doc_stride" else getattr(opts, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise MiniftError(f"--{name.replace('_', '-')} {v}: expected a whole number >= {least}")
    if not math.isfinite(opts.null_threshold):
        raise MiniftError(f"--null-threshold {opts.null_threshold}: expected a finite number")


def make_features(ds: Examples, tok, max_length: int, opts) -> Features:
    check_options(opts)
    if ds.answers is not None and not opts.squad_v2 and not all(ds.answers):
        n = sum(1 for a in ds.answers if not a)
        raise MiniftError(f"{ds.path}: {n} question(s) have no answer (SQuAD v2.0 data, e.g. "
                          f"{ds.where[[bool(a) for a in ds.answers].index(False)]}); pass --squad-v2")
    questions, _ = tok.encode_offsets(ds.questions)
    unique = list(dict.fromkeys(ds.contexts))  # SQuAD asks several questions of each paragraph: tokenise it once
    ids_of, offsets_of = tok.encode_offsets(unique)
    at = {c: k for k, c in enumerate(unique)}
    f = Features([], [], [], [], [offsets_of[at[c]] for c in ds.contexts], None, None, ds, opts)
    starts, ends = [], []
    for i, (q, c) in enumerate(zip(questions, ds.contexts)):
        context = ids_of[at[c]]
        room = max_length - len(q) - tok.n_specials(pair=True)  # context tokens per window
        lead = tok.second_start(len(q))  # where the context starts: after [CLS] q [SEP], or <s> q </s></s>
        if room < 1:
            raise MiniftError(f"{ds.path}, {ds.where[i]}: the question is {len(q)} tokens, which leaves no room for "
                              f"the context in --max-length {max_length}")
        if len(context) > room and doc_stride(opts) >= room:
            raise MiniftError(f"--doc-stride {doc_stride(opts)}: must be less than the {room} context tokens a window "
                              f"holds for {ds.where[i]} of {ds.path} (--max-length less the question and "
                              f"{tok.n_specials(pair=True)} special tokens)")
        gold = ds.answers[i][0] if ds.answers is not None and ds.answers[i] else None  # train on the first answer
        for s in window_starts(len(context), room, doc_stride(opts)):
            part = context[s:s + room]
            ids, types = tok.with_specials(q, part)
            f.ids.append(ids)
            f.types.append(types)
            f.window.append((lead, lead + len(part) - 1))
            f.example.append(i)
            f.first.append(s)
            if ds.answers is not None:
                span = gold and answer_tokens(f.offsets[i][s:s + room], gold[1], gold[1] + len(gold[0]))
                starts.append(span[0] + lead if span else 0)
                ends.append(span[1] + lead if span else 0)
    if ds.answers is not None:
        f.start, f.end = torch.tensor(starts), torch.tensor(ends)
    return f


# ---- answers: the best span over a question's windows ----

def best_answers(outputs: list[torch.Tensor], f: Features) -> list[dict]:
    """Per question: {"id", "answer", "score", "start", "end"}; the answer is context[start:end].

    In each window, the best of the top-N_BEST starts and ends that make a span inside the context, end
    not before start, at most --max-answer-length tokens; the score is start + end logit. The question's
    [CLS] score is its lowest over the windows (the window that holds the answer speaks for it); with
    --squad-v2 the answer is empty (no answer) when that score beats the best span's by --null-threshold."""
    n = len(f.examples.ids)
    best, null = [None] * n, [math.inf] * n  # best: (score, first char, end char)
    for w, logits in enumerate(outputs):  # logits [2, T]: start and end scores of the window's tokens
        i, (ctx, last) = f.example[w], f.window[w]  # the window's first and last context token
        null[i] = min(null[i], float(logits[0, 0] + logits[1, 0]))
        tops = logits.topk(min(N_BEST, logits.size(1)), dim=1).indices.tolist()
        scores = logits.tolist()
        for s in tops[0]:
            for e in tops[1]:
                if not ctx <= s <= e <= last or e - s >= f.opts.max_answer_length:
                    continue
                score = scores[0][s] + scores[1][e]
                if best[i] is None or score > best[i][0]:
                    off = f.offsets[i]
                    best[i] = (score, off[f.first[w] + s - ctx][0], off[f.first[w] + e - ctx][1])
    out = []
    for i, qid in enumerate(f.examples.ids):
        if best[i] is None or (f.opts.squad_v2 and null[i] > best[i][0] + f.opts.null_threshold):
            out.append({"id": qid, "answer": "", "score": null[i] if f.opts.squad_v2 else None,
                        "start": None, "end": None})
        else:
            score, a, b = best[i]
            out.append({"id": qid, "answer": f.examples.contexts[i][a:b], "score": score, "start": a, "end": b})
    return out


# ---- SQuAD's exact match and F1, as its official evaluation scripts compute them ----

def normalize_answer(s: str) -> str:
    """Lowercase; drop punctuation, the articles a/an/the and extra whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def f1_score(pred: str, gold: str, v2: bool) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if not p or not g:  # v2.0: an empty answer scores 1 against an empty gold answer; v1.1: 0
        return float(v2 and p == g)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(preds: list[str], golds: list[list[str]], v2: bool) -> dict[str, float]:
    """exact and f1 in percent, each the best over a question's gold answers (v1.1 script), or (v2.0)
    with gold answers that normalise to nothing left out, no gold answer meaning "no answer", and the
    HasAns / NoAns splits."""
    exact, f1 = [], []
    for pred, gold in zip(preds, golds):
        if v2:
            gold = [g for g in gold if normalize_answer(g)] or [""]
        exact.append(max(float(normalize_answer(pred) == normalize_answer(g)) for g in gold))
        f1.append(max(f1_score(pred, g, v2) for g in gold))
    out = {"exact": 100 * sum(exact) / len(exact), "f1": 100 * sum(f1) / len(f1)}
    if v2:
        for name, keep in (("HasAns", True), ("NoAns", False)):
            rows = [k for k, g in enumerate(golds) if bool(g) == keep]
            if rows:
                out[f"{name}_exact"] = 100 * sum(exact[k] for k in rows) / len(rows)
                out[f"{name}_f1"] = 100 * sum(f1[k] for k in rows) / len(rows)
    return out


# ---- the task ----

class QA(Task[Examples, Features, torch.Tensor]):  # a row: a window's start and end scores [2, T]
    name = "qa"
    model = BertQA
    problem_type = None
    metrics = ("f1", "exact", "loss")
    default_max_length = 384  # SQuAD's usual windows (with --doc-stride 128)
    streams = False  # a question needs its context: predict reads its input whole

    def read(self, path, opts, labelled: bool = True) -> Examples:
        return read(path, labelled)

    def from_texts(self, texts, pairs, tok) -> Examples:
        if pairs is None or len(pairs) != len(texts):
            raise MiniftError(f"question answering needs a context for each question: got {len(texts)} question(s) "
                              f"and {len(pairs or [])} context(s) (--question ... --context ...)")
        ds = Examples("<texts>", [], [], [], None, [])
        for k, (q, c) in enumerate(zip(texts, pairs), 1):
            add_example(ds, f"question {k}", {"id": str(k), "question": q, "context": c}, labelled=False)
        return ds

    def label_names(self, train) -> dict[int, str]:
        return {0: "LABEL_0", 1: "LABEL_1"}  # what Hugging Face's BertForQuestionAnswering configs hold

    def features(self, ds: Examples, tok, max_length: int, config: BertConfig, opts, log=None) -> Features:
        return make_features(ds, tok, max_length, opts)

    def batch(self, f: Features, idx: list[int], pad_id: int) -> dict:
        from minift.tokenizer import Tokenizer
        b = Tokenizer.pad([f.ids[i] for i in idx], [f.types[i] for i in idx], pad_id)
        if f.start is not None:
            b["start_positions"], b["end_positions"] = f.start[idx], f.end[idx]
        return b

    def outputs(self, model, batch: dict) -> list[torch.Tensor]:  # [2, T] start and end scores per window
        keys = ("input_ids", "attention_mask", "token_type_ids")
        logits = model(**{k: batch[k] for k in keys}).float().cpu()  # [B, T, 2]
        return [x[:n].T for x, n in zip(logits, batch["attention_mask"].sum(1).tolist())]

    def score(self, outputs: list[torch.Tensor], f: Features) -> dict[str, float]:
        preds = [a["answer"] for a in best_answers(outputs, f)]
        out = squad_metrics(preds, [[t for t, _ in g] for g in f.examples.answers], f.opts.squad_v2)
        losses = [BertQA.loss(x.T[None], f.start[w:w + 1], f.end[w:w + 1]) for w, x in enumerate(outputs)]
        return {**out, "loss": torch.stack(losses).mean().item()}

    def decode(self, outputs: list[torch.Tensor], f: Features, ds: Examples, config: BertConfig) -> list[dict]:
        return best_answers(outputs, f)

    def document(self, rows: list[dict]) -> dict:
        """predict --output NAME.json: the official evaluation's prediction file, {id: answer}."""
        return {r["id"]: r["answer"] for r in rows}
