"""Token tagging (part of speech, named entities): one tag per word.

The head is BertForTokenClassification's: dropout and a linear layer on every token's hidden state
(the same in RoBERTa's, DistilBERT's and ELECTRA's; ModernBERT's puts its dense -> activation -> norm
first). Words are split into the tokenizer's pieces (Tokenizer.encode_words); a word's tag trains on, and
is predicted from, its first piece; the other pieces, [CLS] and [SEP] are ignored by the loss (label -100).
A sentence longer than --max-length is cut into overlapping windows of whole words, and each word belongs
to the one window where it has the most context on its shorter side: it trains and is predicted there,
exactly once.

Files (the format follows the extension unless --format names it):
  conll    .conll .iob .bio   a token per line, the tag in the last column; a blank line ends a
                              sentence; -DOCSTART- lines are skipped
  jsonl    .jsonl .ndjson     {"tokens": [...], "tags": [...]} per line
  wordtag  .txt               a sentence per line of word/TAG tokens, the tag after the last "/"

Metrics: word accuracy and loss; when the tags follow a chunk scheme (IOB2 or BIOES: O and
B-/I-/E-/S-TYPE), entity precision, recall and F1 (exact span and type) as seqeval's default mode
scores them.
"""
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.config import BertConfig
from minift.data import FORMATS as DATA_FORMATS, json_lines, read_text
from minift.errors import MiniftError
from minift.model import Bert, Dropout, PredictionHead, init_weights
from minift.tasks.classify import unseen_labels
from minift.tasks.task import Task

# minift.data.FORMATS names the JSON Lines extensions for every task; tagging adds its own formats around them
FORMATS = {".conll": "conll", ".iob": "conll", ".bio": "conll",
           **{ext: fmt for ext, fmt in DATA_FORMATS.items() if fmt == "jsonl"}, ".txt": "wordtag"}
IGNORE = -100  # the label the loss skips, as in PyTorch's cross_entropy and Hugging Face


class BertTagger(nn.Module):
    """An encoder of the BERT family + dropout + a linear layer on every token (BertForTokenClassification,
    and RoBERTa's, DistilBERT's, ELECTRA's); ModernBERT's has its head (dense -> activation -> norm) before
    the dropout (ModernBertForTokenClassification)."""
    ARCHITECTURE = "BertForTokenClassification"  # the family's stem replaces Bert on save
    HEAD = ("classifier.",)
    POOLER = False

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = Bert(config, pooler=False)
        if config.family.prediction_head:
            self.HEAD = ("head.", "classifier.")
            self.head = PredictionHead(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.drop = Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)
        # Training's loss options (--class-weights, --label-smoothing): not saved with the model.
        self.register_buffer("class_weights", None, persistent=False)  # [C]
        self.label_smoothing = 0.0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        """-> logits [B, T, C] (zeros at padding), and with labels [B, T] the mean cross-entropy over
        the labels that are not -100 (weighted by class_weights, smoothed by label_smoothing, as
        F.cross_entropy does). Padding is never computed, so its labels do not count."""
        x, pack = self.bert.encode(input_ids, attention_mask, token_type_ids)  # [N, H] real tokens
        if self.config.family.prediction_head:
            x = self.head(x)
        logits = self.classifier(self.drop(x))  # [N, C]
        if labels is None:
            return pack.pad(logits)
        loss = F.cross_entropy(logits.float(), pack.unpad(labels), ignore_index=IGNORE, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)
        return pack.pad(logits), loss

    @classmethod
    def from_pretrained(cls, path, allow_pickle: bool = False, id2label=None, problem_type=None,
                        new_head: bool = False) -> "BertTagger":
        """A fine-tuned tagger, or a base BERT with a fresh head for id2label's tags (see BertClassifier)."""
        from minift.checkpoint import load_pretrained
        return load_pretrained(cls, path, allow_pickle=allow_pickle, id2label=id2label, problem_type=problem_type,
                               new_head=new_head)

    def save_pretrained(self, path, tokenizer=None):
        from minift.checkpoint import save_pretrained
        save_pretrained(self, path, tokenizer)


# ---- reading ----

@dataclass
class Sentences:
    path: str
    words: list[list[str]]
    tags: list[list[str]] | None  # None when not read (prediction)
    lines: list[list[int]]  # per word, the line it was read from
    texts: list[str]  # the text each sentence's words sit in: the input, or the words joined by spaces
    spans: list[list[tuple[int, int]]]  # per word, its (start, end) characters in texts
    pairs = None  # single texts only: what the generic code asks of every task's examples


def joined(path, words, tags, lines) -> Sentences:
    """Sentences read from a file: their text is their words joined by spaces."""
    texts, spans = [], []
    for ws in words:
        at, sp = 0, []
        for w in ws:
            sp.append((at, at + len(w)))
            at += len(w) + 1
        texts.append(" ".join(ws))
        spans.append(sp)
    return Sentences(path, words, tags, lines, texts, spans)


def read_tagged(path, fmt: str | None = None, labelled: bool = True) -> Sentences:
    path = str(path)
    fmt = fmt or FORMATS.get(Path(path).suffix.lower())
    if fmt not in READERS:
        what = f"--format {fmt!r}" if fmt else f"file type {Path(path).suffix or '(no extension)'!r}"
        raise MiniftError(f"{path}: unsupported {what} for tagging; expected --format conll, jsonl or wordtag "
                          f"(by extension: {', '.join(f'{k} {v}' for k, v in FORMATS.items())})")
    words, tags, lines = [], [], []
    for sentence in READERS[fmt](path, read_text(path), labelled):  # [(word, tag, line)] per sentence
        w, t, n = zip(*sentence)
        words.append(list(w))
        tags.append(list(t))
        lines.append(list(n))
    if not words:
        raise MiniftError(f"{path}: no sentences (the file is empty or holds only blank lines)")
    return joined(path, words, tags if labelled else None, lines)


# Each reader yields a sentence at a time as [(word, tag, line)]. str.split() takes tabs, spaces and a
# CRLF file's \r alike, and splitting on "\n" alone keeps a word holding U+2028 whole.

def read_conll(path, text, labelled):
    sentence, columns = [], None
    for n, line in enumerate(text.split("\n"), 1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":  # a blank line or a document marker ends a sentence
            if sentence:
                yield sentence
            sentence = []
            continue
        if labelled and len(cols) == 1:
            raise MiniftError(f"{path}, line {n}: the token {cols[0]!r} has no tag; a CoNLL line is "
                              "`token<TAB or spaces>tag` (other columns between them are ignored)")
        columns = columns or len(cols)
        if len(cols) != columns:
            raise MiniftError(f"{path}, line {n}: {len(cols)} columns, but the first token line has {columns}; "
                              "every token line needs the same columns (token first, tag last)")
        sentence.append((cols[0], cols[-1] if len(cols) > 1 else None, n))
    if sentence:
        yield sentence


def read_jsonl(path, text, labelled):
    for n, obj in json_lines(path, text.split("\n"), like=None):  # not an object: told below what one holds
        obj = obj if isinstance(obj, dict) else {}
        words, tags = obj.get("tokens"), obj.get("tags")
        for name in ("tokens", "tags") if labelled else ("tokens",):
            value = obj.get(name)
            if not (isinstance(value, list) and value and all(isinstance(x, str) and x for x in value)):
                raise MiniftError(f"{path}, line {n}: expected {{\"tokens\": [...], \"tags\": [...]}} with "
                                  f"\"{name}\" a non-empty list of non-empty strings")
        if labelled and len(words) != len(tags):
            raise MiniftError(f"{path}, line {n}: {len(words)} tokens but {len(tags)} tags; "
                              "every token needs exactly one tag")
        yield [(w, tags[i] if labelled else None, n) for i, w in enumerate(words)]


def read_wordtag(path, text, labelled):
    for n, line in enumerate(text.split("\n"), 1):
        sentence = []
        for token in line.split():
            word, slash, tag = token.rpartition("/")
            if not (slash and word and tag):
                raise MiniftError(f"{path}, line {n}: {token!r} is not word/TAG (the tag follows the last '/'). "
                                  "A .txt file is read as word/TAG sentences; --format conll reads "
                                  "`token<TAB>tag` lines instead")
            sentence.append((word, tag, n))
        if sentence:
            yield sentence


READERS = {"conll": read_conll, "jsonl": read_jsonl, "wordtag": read_wordtag}


# ---- features: words -> windows of pieces ----

def windows(lengths: list[int], budget: int) -> list[tuple[int, int, list[int]]]:
    """Cut a sentence (lengths: pieces per word, each at most budget) into windows [a, b) of whole
    words holding at most budget pieces, each starting halfway into the one before. Each word is owned
    by the window where it has the most pieces of context on its shorter side (the first on a tie).
    Returns (a, b, the words it owns) for each window that owns any."""
    spans, a = [], 0
    while a < len(lengths):
        b, used = a, 0
        while b < len(lengths) and used + lengths[b] <= budget:
            used += lengths[b]
            b += 1
        spans.append((a, b))
        if b == len(lengths):
            break
        a, half = a + 1, lengths[a]
        while a < b and half < used / 2:
            half += lengths[a]
            a += 1
    cum = [0]
    for n in lengths:
        cum.append(cum[-1] + n)
    owned = [[] for _ in spans]
    for w in range(len(lengths)):
        context = [min(cum[w] - cum[a], cum[b] - cum[w + 1]) if a <= w < b else -1 for a, b in spans]
        owned[context.index(max(context))].append(w)
    return [(a, b, own) for (a, b), own in zip(spans, owned) if own]


@dataclass
class Features:
    ids: list[list[int]]  # per window: [CLS] pieces [SEP] (or the family's special tokens)
    types: list[list[int]]
    labels: list[list[int]] | None  # per window, per token: the tag id at an owned word's first piece, else -100
    sentence: list[int]  # per window: the sentence it comes from
    owned: list[list[tuple[int, int]]]  # per window: (token position, word) of the words it predicts
    n_words: list[int]  # per sentence
    gold: list[list[int]] | None  # per sentence, per word: the tag id
    names: list[str]  # tag id -> tag
    # Gold tags the model does not know -> how often they occur; their ids come after the model's (in `unseen`'s order)
    unseen: dict[str, int] = field(default_factory=dict)


class Tag(Task[Sentences, Features, torch.Tensor]):  # a row: its tokens' logits [T, C]
    name = "tag"
    model = BertTagger
    problem_type = None
    metrics = ("accuracy", "f1", "precision", "recall", "loss")
    default_max_length = 128

    def read(self, path, opts, labelled: bool = True) -> Sentences:
        return read_tagged(path, opts.format, labelled)

    def from_texts(self, texts, pairs, tok) -> Sentences:
        """Plain texts, split into words by the tokenizer's pre-tokenizer."""
        if pairs is not None:
            raise MiniftError("tagging takes single texts, not pairs")
        spans = [tok.word_spans(t) for t in texts]
        words = [[t[a:b] for a, b in sp] for t, sp in zip(texts, spans)]
        return Sentences("<texts>", words, None, [[i] * len(w) for i, w in enumerate(words, 1)], list(texts), spans)

    def label_names(self, train: Sentences) -> dict[int, str]:
        return dict(enumerate(sorted({t for tags in train.tags for t in tags})))

    def features(self, ds: Sentences, tok, max_length: int, config: BertConfig, opts, log=None) -> Features:
        names = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
        if getattr(opts, "metric", None) in ("f1", "precision", "recall") and not is_chunked(names):
            raise MiniftError(f"--metric {opts.metric}: the tags ({', '.join(names[:8])}{' ...' * (len(names) > 8)}) "
                              "follow no chunk scheme (O and B-/I-/E-/S-TYPE), so there are no entities to score; "
                              "use --metric accuracy")
        unseen = Counter()
        gold = tag_ids(ds, names, unseen) if ds.tags is not None else None
        budget = max_length - tok.n_specials(pair=False)  # [CLS] and [SEP]
        if budget < 1:
            raise MiniftError(f"--max-length {max_length}: leaves no room for a word beside the "
                              f"{tok.n_specials(pair=False)} special tokens; a tagger needs at least "
                              f"{tok.n_specials(pair=False) + 1}")
        lead = [piece for piece, _ in tok.single].index("A")  # special tokens before the text: [CLS]
        f = Features([], [], [] if gold is not None else None, [], [], [len(w) for w in ds.words], gold, names,
                     dict(unseen))
        split = []  # windows per sentence that needed more than one
        for s, pieces in enumerate(tok.encode_words(ds.words)):
            pieces = [p[:budget] for p in pieces]  # a word longer than a window keeps its first pieces
            parts = windows([len(p) for p in pieces], budget)
            split += [len(parts)] if len(parts) > 1 else []
            for a, b, own in parts:
                body, owned = [], []
                for w in range(a, b):
                    if w in own:
                        owned.append((lead + len(body), w))
                    body += pieces[w]
                ids, types = tok.with_specials(body)
                f.ids.append(ids)
                f.types.append(types)
                f.sentence.append(s)
                f.owned.append(owned)
                if gold is not None:
                    labels = [IGNORE] * len(ids)
                    for pos, w in owned:  # (a tag the model does not know has nothing to learn from)
                        labels[pos] = gold[s][w] if gold[s][w] < len(names) else IGNORE
                    f.labels.append(labels)
        if split and log is not None:
            print(f"{ds.path}: {len(split)} of {len(ds.words)} sentences are longer than {max_length} tokens; "
                  f"split into {sum(split)} overlapping windows", file=log)
        return f

    def batch(self, f: Features, idx: list[int], pad_id: int) -> dict:
        from minift.tokenizer import Tokenizer
        b = Tokenizer.pad([f.ids[i] for i in idx], [f.types[i] for i in idx], pad_id)
        if f.labels is not None:
            T = b["input_ids"].shape[1]
            b["labels"] = torch.tensor([f.labels[i] + [IGNORE] * (T - len(f.labels[i])) for i in idx],
                                       dtype=torch.long).reshape(len(idx), T)
        return b

    def outputs(self, model, batch: dict) -> list[torch.Tensor]:  # logits [T_i, C] per row, padding cut off
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).float().cpu()
        return [row[:n] for row, n in zip(logits, batch["attention_mask"].sum(1).tolist())]

    # ---- scoring and output ----
    def score(self, outputs: list[torch.Tensor], f: Features) -> dict[str, float]:
        """Word accuracy and loss (and entity scores); a gold tag the model does not know is a wrong answer, left
        out of the loss, and reported in "unseen_labels"."""
        logits = word_logits(outputs, f)
        gold = torch.tensor([t for tags in f.gold for t in tags])
        flat = torch.cat(logits)  # [all words, C]
        known = gold < len(f.names)
        result = {"accuracy": (flat.argmax(1) == gold).float().mean().item(),
                  "loss": F.cross_entropy(flat[known], gold[known]).item() if known.any() else math.nan}
        if is_chunked(f.names):
            pred = [[f.names[i] for i in x.argmax(1).tolist()] for x in logits]
            names = f.names + list(f.unseen)
            result.update(entity_scores([[names[i] for i in tags] for tags in f.gold], pred))
        return {**result, **unseen_labels(f.unseen)}

    def decode(self, outputs: list[torch.Tensor], f: Features, ds: Sentences, config: BertConfig) -> list[dict]:
        """Per sentence: {"words": [{"word", "tag", "start", "end"}]}, and with chunk tags "entities":
        [{"type", "text", "start", "end"}]; start and end are character offsets into the sentence's text."""
        rows = []
        for s, logits in enumerate(word_logits(outputs, f)):
            tags = [f.names[i] for i in logits.argmax(1).tolist()]
            spans, text = ds.spans[s], ds.texts[s]
            row = {"words": [{"word": w, "tag": t, "start": a, "end": b}
                             for w, t, (a, b) in zip(ds.words[s], tags, spans)]}
            if is_chunked(f.names):
                row["entities"] = [{"type": typ, "text": text[spans[i][0]:spans[j][1]], "start": spans[i][0],
                                    "end": spans[j][1]} for typ, i, j in entities(tags)]
            rows.append(row)
        return rows


def tag_ids(ds: Sentences, names: list[str], unseen: Counter) -> list[list[int]]:
    """The tags as the model's ids; a tag the model does not know gets an id after the model's (per tag, in the
    order first met) and is counted in `unseen`."""
    if not names:
        raise MiniftError(f"{ds.path}: the model's config.json has no id2label, so its tags cannot be matched")
    tag2id = {t: i for i, t in enumerate(names)}
    for tags in ds.tags:
        for t in tags:
            if t not in tag2id:
                unseen[t] += 1
                tag2id[t] = len(tag2id)
            elif tag2id[t] >= len(names):
                unseen[t] += 1
    return [[tag2id[t] for t in tags] for tags in ds.tags]


def word_logits(outputs: list[torch.Tensor], f: Features) -> list[torch.Tensor]:
    """Per sentence [words, C]: each word's logits from the window that owns it."""
    out = [torch.zeros(n, len(f.names)) for n in f.n_words]
    for logits, s, owned in zip(outputs, f.sentence, f.owned):
        pos, words = zip(*owned)
        out[s][list(words)] = logits[list(pos)]
    return out


# ---- entities ----

def is_chunked(names: list[str]) -> bool:
    """Whether the tags follow a chunk scheme: O and B-/I-/E-/S-TYPE (IOB2, BIOES), with at least one chunk tag."""
    return any(n != "O" for n in names) and all(n == "O" or re.fullmatch(r"[BIES]-.+", n) for n in names)


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each chunk, read as seqeval's default mode reads them: an I- or
    E- without a B- starts a chunk, and a change of type ends one chunk and starts another."""
    out, start, prev, prev_type = [], 0, "O", ""
    for i, t in enumerate([*tags, "O"]):
        tag, typ = t[0], t[2:]
        if prev in "ES" or (prev in "BI" and tag in "BSO") or (prev != "O" and typ != prev_type):
            out.append((prev_type, start, i - 1))
        if tag in "BS" or (prev in "ESO" and tag in "EI") or (tag != "O" and typ != prev_type):
            start = i
        prev, prev_type = tag, typ
    return out


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over entities that match in span and type exactly."""
    g = {(s, *e) for s, tags in enumerate(gold) for e in entities(tags)}
    p = {(s, *e) for s, tags in enumerate(pred) for e in entities(tags)}
    hit = len(g & p)
    precision = hit / len(p) if p else 0.0
    recall = hit / len(g) if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}
