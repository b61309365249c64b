"""Sequence (pair) classification, multi-label classification and regression: one vector per text.

The head is the family's *ForSequenceClassification's (BERT's: dropout and a linear layer on the pooled [CLS] vector).
The three kinds differ only in how labels are read and scored:
  classify    one class per text; cross-entropy; accuracy, macro-F1
  multilabel  any set of classes per text; one sigmoid per class; exact-set accuracy, macro-F1
  regression  one number per text; mean squared error; MSE, Pearson correlation
"""
import math
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.config import BertConfig
from minift.data import Dataset, read_dataset
from minift.errors import MiniftError
from minift.families import activation
from minift.model import ACT, Bert, Dropout, init_weights
from minift.tasks.task import Task

def put(root: nn.Module, path: str, module: nn.Module | nn.Parameter):
    """root.<path> = module, making the empty containers on the way (classifier.dense -> classifier, then dense)."""
    *owners, leaf = path.split(".")
    for name in owners:
        if not hasattr(root, name):
            root.add_module(name, nn.Module())
        root = getattr(root, name)
    setattr(root, leaf, module)  # (replaces the encoder's pooler=None)


# minift's name for each kind and the Hugging Face problem_type it is saved as.
PROBLEM_TYPE = {"classify": "single_label_classification", "multilabel": "multi_label_classification",
                "regression": "regression"}


class BertClassifier(nn.Module):
    """An encoder of the BERT family + its family's sequence classification head
    (BertForSequenceClassification, RobertaForSequenceClassification, ...)."""
    ARCHITECTURE = "BertForSequenceClassification"  # the family's stem replaces Bert on save

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        # The family's sequence head: dense -> activation (-> LayerNorm) -> dropout -> out, on the first token's
        # vector (ModernBERT: or the mean of all), under the family's Hugging Face names (minift/families.py).
        family = config.family
        self.POOLER = family.pooler_is_head  # BERT's: its head's dense layer is the encoder's pooler
        self.bert = Bert(config, pooler=False)
        H, bias = config.hidden_size, config.bias
        self.parts = family.seq_head
        dense, norm, out = self.parts
        put(self, dense, nn.Linear(H, H, bias=bias))
        if norm:
            put(self, norm, nn.LayerNorm(H, eps=config.layer_norm_eps, bias=bias))
        put(self, out, nn.Linear(H, config.num_labels))
        self.HEAD = tuple({path.split(".")[0] + "." for path in (dense, norm, out) if path and path[:5] != "bert."})
        self.act = ACT[activation(config, family.seq_act)]
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.drop = Dropout(p)
        self.drop_in = family.seq_drop_in  # dropout before dense too
        self.mean = family.mean_pooling and config.classifier_pooling == "mean"
        for path in filter(None, self.parts):  # the encoder's weights come from the checkpoint
            init_weights(self.get_submodule(path), config.initializer_range)
        # Training's loss options (--class-weights, --label-smoothing): not saved with the model.
        self.register_buffer("class_weights", None, persistent=False)  # [C]; multilabel: pos_weight
        self.label_smoothing = 0.0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        # The first token's vector alone, unless the head averages: then the last layer computes only its rows.
        x, pack = self.bert.encode(input_ids, attention_mask, token_type_ids, cls_only=not self.mean)  # [B or N, H]
        if self.mean:
            real = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            x = (pack.pad(x) * real[..., None]).sum(1) / real.sum(1, keepdim=True)  # [B, H]
        dense, norm, out = (self.get_submodule(path) if path else None for path in self.parts)
        x = self.act(dense(self.drop(x) if self.drop_in else x))
        logits = out(self.drop(x if norm is None else norm(x)))  # [B, num_labels]
        if labels is None:
            return logits
        return logits, self.loss(logits, labels)

    def problem_type(self, labels) -> str:
        # Hugging Face's rule when config.json does not say: one output is regression,
        # integer labels are single-label classes, float multi-hot rows are multi-label.
        if self.config.problem_type:
            return self.config.problem_type
        if self.config.num_labels == 1:
            return "regression"
        if labels.dtype in (torch.long, torch.int):
            return "single_label_classification"
        return "multi_label_classification"

    def loss(self, logits, labels):  # logits [B, C]; labels [B] (long or float) or [B, C] float
        kind = self.problem_type(labels)
        logits = logits.float()  # losses in fp32 even under autocast
        if kind == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1)) if self.config.num_labels == 1 \
                else F.mse_loss(logits, labels.float())
        if kind == "single_label_classification":
            return F.cross_entropy(logits, labels.view(-1), weight=self.class_weights,
                                   label_smoothing=self.label_smoothing)
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=self.class_weights)

    @classmethod
    def from_pretrained(cls, path, allow_pickle: bool = False, id2label=None, problem_type=None,
                        new_head: bool = False) -> "BertClassifier":
        """Load a fine-tuned classifier, or a base BERT with a freshly initialised head.

        id2label / problem_type set the head for a task; new_head=True discards a head already
        in the checkpoint (else it must fit id2label, or the shape check says why not)."""
        from minift.checkpoint import load_pretrained
        return load_pretrained(cls, path, allow_pickle=allow_pickle, id2label=id2label, problem_type=problem_type,
                               new_head=new_head)

    def save_pretrained(self, path, tokenizer=None):
        from minift.checkpoint import save_pretrained
        save_pretrained(self, path, tokenizer)


@dataclass
class Features:
    ids: list[list[int]]  # [CLS] text [SEP] (pair [SEP]) token ids, unpadded
    types: list[list[int]]
    labels: torch.Tensor | None  # [n] long, [n, C] float multi-hot, or [n] float; None when unlabelled
    # Gold labels the model does not know -> how often they occur; they have the ids (columns) after the model's.
    unseen: dict[str, int] = field(default_factory=dict)


class Classify(Task[Dataset, Features, torch.Tensor]):  # a row: its logits [C]
    model = BertClassifier
    default_max_length = 128

    def __init__(self, kind: str):
        self.name = kind
        self.problem_type = PROBLEM_TYPE[kind]
        self.metrics = ("mse", "pearson") if kind == "regression" else ("accuracy", "macro_f1", "loss")

    # ---- reading ----
    def read(self, path, opts, labelled: bool = True) -> Dataset:
        return read_dataset(path, opts.text_column, opts.text_pair_column, opts.label_column, need_labels=labelled)

    def from_texts(self, texts, pairs, tok) -> Dataset:
        return Dataset("<texts>", list(texts), None if pairs is None else list(pairs), None, list(range(1, len(texts) + 1)))

    def label_names(self, train: Dataset) -> dict[int, str]:
        """id2label from the training labels; regression has one output, called score."""
        check_kinds(train, self.name)
        try:
            label2id = label_map(train.labels, self.name)
        except MiniftError as e:  # label_map sees values only: name the file they came from
            raise MiniftError(f"{train.path}: {e}") from None
        return {i: n for n, i in label2id.items()} or {0: "score"}

    # ---- features ----
    def features(self, ds: Dataset, tok, max_length: int, config: BertConfig, opts, log=None) -> Features:
        ids, types = tok.encode(ds.texts, ds.pairs, max_length)
        if ds.labels is not None and self.name != "regression" and not config.id2label:
            raise MiniftError(f"{ds.path}: the model's config.json has no id2label, so its labels cannot be matched")
        unseen = Counter()
        labels = encode_labels(ds, config.label2id, self.name, unseen) if ds.labels is not None else None
        return Features(ids, types, labels, dict(unseen))

    def batch(self, f: Features, idx: list[int], pad_id: int) -> dict:
        from minift.tokenizer import Tokenizer
        b = Tokenizer.pad([f.ids[i] for i in idx], [f.types[i] for i in idx], pad_id)
        if f.labels is not None:
            b["labels"] = f.labels[idx]
        return b

    def outputs(self, model, batch: dict) -> list[torch.Tensor]:  # logits [C] per row
        return list(model(**{k: v for k, v in batch.items() if k != "labels"}).float().cpu())

    # ---- scoring and output ----
    def score(self, outputs: list[torch.Tensor], f: Features) -> dict[str, float]:
        """The metrics; gold labels the model does not know count as wrong answers, and are reported."""
        return {**metrics(torch.stack(outputs), f.labels, self.name), **unseen_labels(f.unseen)}

    def decode(self, outputs: list[torch.Tensor], f: Features, ds: Dataset, config: BertConfig) -> list[dict]:
        """Per text: {"label": name, "probs": {name: p}} (classify), {"labels": [...], "probs": ...}
        (multilabel) or {"score": x} (regression)."""
        logits = torch.stack(outputs)
        names = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else None
        if self.name == "regression":
            return [{"score": x} for x in logits.squeeze(-1).tolist()]
        if self.name == "multilabel":
            probs = torch.sigmoid(logits).tolist()
            return [{"labels": [n for n, p in zip(names, row) if p > 0.5], "probs": dict(zip(names, row))}
                    for row in probs]
        probs = torch.softmax(logits, dim=-1).tolist()
        return [{"label": names[max(range(len(row)), key=row.__getitem__)], "probs": dict(zip(names, row))}
                for row in probs]


def unseen_labels(unseen: dict[str, int]) -> dict:
    """What score adds for gold labels (or tags) the model does not know: {"unseen_labels": {name: count}}."""
    return {"unseen_labels": dict(sorted(unseen.items()))} if unseen else {}


def metrics(logits: torch.Tensor, labels: torch.Tensor, task: str) -> dict[str, float]:
    """classify: loss, accuracy, macro_f1; multilabel: loss, accuracy (exact set), macro_f1; regression: mse, pearson.

    Gold labels the model does not know have the ids (multilabel: the columns) after the model's C classes: never
    predicted, they are wrong answers, and classes of F1 0 in the macro average; the loss leaves them out."""
    if task == "regression":
        pred = logits.squeeze(-1)
        mse = F.mse_loss(pred, labels).item()
        pearson = torch.corrcoef(torch.stack([pred, labels]))[0, 1].item() if len(labels) > 1 else math.nan
        return {"mse": mse, "pearson": pearson}
    C = logits.shape[1]
    if task == "multilabel":
        loss = F.binary_cross_entropy_with_logits(logits, labels[:, :C]).item()
        pred, gold = F.pad(logits > 0, (0, labels.shape[1] - C)), labels > 0.5
        acc = (pred == gold).all(1).float().mean().item()
    else:
        known = labels < C
        loss = F.cross_entropy(logits[known], labels[known]).item() if known.any() else math.nan
        pred = logits.argmax(1)
        acc = (pred == labels).float().mean().item()
        n = max(C, int(labels.max()) + 1 if len(labels) else 0)
        pred, gold = F.one_hot(pred, n).bool(), F.one_hot(labels, n).bool()
    # Macro-F1 as scikit-learn's f1_score(average="macro"): the F1 of each class (one-vs-rest), averaged with
    # equal weight per class, over the classes the gold or predicted labels hold (a class absent from both
    # is no evidence either way); multilabel, like scikit-learn on indicator matrices, over every label.
    tp = (pred & gold).sum(0).float()
    fp = (pred & ~gold).sum(0).float()
    fn = (~pred & gold).sum(0).float()
    f1 = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn), torch.zeros_like(tp))
    seen = (tp + fp + fn > 0) if task == "classify" else torch.ones_like(tp, dtype=torch.bool)
    return {"loss": loss, "accuracy": acc, "macro_f1": f1[seen].mean().item()}


# ---- labels: the values a file holds -> class ids ----

def _missing(value):
    return value is None or (isinstance(value, str) and not value.strip())


def check_kinds(ds: Dataset, task: str):
    """A list or object where classify expects one label, named with its line (label_map sees values only)."""
    for v, line in zip(ds.labels, ds.lines):
        if task == "classify" and isinstance(v, (list, dict)):
            try:
                _class_name(v)
            except MiniftError as e:
                raise MiniftError(f"{ds.path}, line {line}: {e}") from None


def _class_name(value):
    if isinstance(value, (list, dict)):
        raise MiniftError(f"Label {value!r} is a {type(value).__name__}; single-label classification needs "
                          f"one label per example (lists of labels are for the multilabel task).")
    return str(value).strip()


def _label_names(value):
    # Multilabel values: a JSON list, or one string with the names separated by "|".
    names = value if isinstance(value, list) else str(value).split("|")
    return [n for n in (str(x).strip() for x in names) if n]


def label_map(labels: list, task: str) -> dict[str, int]:
    """label2id built from the training labels; regression has none."""
    if task == "regression":
        return {}
    if task == "multilabel":
        names = sorted({n for v in labels if v is not None for n in _label_names(v)})
        if not names:
            raise MiniftError("The training set has no labels at all; multilabel needs at least one label name.")
        return {n: i for i, n in enumerate(names)}
    if task != "classify":
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(PROBLEM_TYPE)}")
    # Missing values are left out here and reported with their line by encode_labels.
    names = {_class_name(v) for v in labels if not _missing(v)}
    if len(names) < 2:
        raise MiniftError(f"The training set has {len(names)} distinct label(s) ({', '.join(sorted(names))}); "
                          f"a classifier needs examples of at least 2 classes.")
    try:  # numeric labels sort as numbers so that -1/1 become 0/1 and 2 comes before 10
        order = sorted(names, key=int)
    except ValueError:
        order = sorted(names)
    return {n: i for i, n in enumerate(order)}


def encode_labels(ds: Dataset, label2id: dict, task: str, unseen: Counter | None = None) -> torch.Tensor:
    """The labels as the model's ids; a label the model does not know gets an id after the model's (the next
    free one, per name, in the order first met) and is counted in `unseen`."""
    unseen = Counter() if unseen is None else unseen
    check_kinds(ds, task)
    def fail(i, what):
        raise MiniftError(f"{ds.path}, line {ds.lines[i]}: {what}")

    if task == "regression":
        out = []
        for i, v in enumerate(ds.labels):
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = math.nan
            if not math.isfinite(x):
                fail(i, f"label {v!r} is not a number; regression needs a finite number on every row.")
            out.append(x)
        return torch.tensor(out, dtype=torch.float32)

    extra = {}  # unseen label -> its id after the model's

    def label_id(i, name):
        if name in label2id:
            return label2id[name]
        unseen[name] += 1
        return extra.setdefault(name, len(label2id) + len(extra))

    if task == "multilabel":
        rows = []
        for i, v in enumerate(ds.labels):
            if v is None:
                fail(i, "the label is null; use [] (or an empty string in CSV) for an example with no labels.")
            rows.append([label_id(i, n) for n in _label_names(v)])
        out = torch.zeros(len(ds.labels), len(label2id) + len(extra))
        for i, row in enumerate(rows):
            out[i, row] = 1.0
        return out

    ids = []
    for i, v in enumerate(ds.labels):
        if _missing(v):
            fail(i, "the label is missing; every example needs a label (drop the row or fill it in).")
        ids.append(label_id(i, _class_name(v)))
    return torch.tensor(ids, dtype=torch.long)
