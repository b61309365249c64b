"""--class-weights: a weight per class in the loss, for training sets where some classes are rare.

classify and tag weight each example's (word's) cross-entropy by its gold class's weight, and average
as PyTorch does (sum of w * loss over sum of w); multilabel weights each label's positive term
(BCEWithLogits' pos_weight). The spec is one of
  balanced         classify, tag: n / (classes * count of the class), scikit-learn's
                   compute_class_weight("balanced"); multilabel: negatives / positives of each label (1 for
                   a label on every example)
  label=w,...      the weights inline; a label not named keeps weight 1
  FILE             a file holding the same: a JSON object {"label": w}, or label=w lines
"""
import json
import math
from pathlib import Path

import torch

from minift.errors import MiniftError

TASKS = ("classify", "multilabel", "tag")


def class_weights(spec: str, task: str, feats, id2label: dict[int, str]) -> torch.Tensor:
    """The weights [C] of the classes id2label names, from spec and the training features of task (in TASKS)."""
    if spec == "balanced":
        return balanced(task, feats, len(id2label))
    given = read_spec(spec)
    names = {n: i for i, n in id2label.items()}
    out = torch.ones(len(names))
    for label, w in given.items():
        if label not in names:
            raise MiniftError(f"--class-weights: label {label!r} is not in the training set "
                              f"(labels: {', '.join(names)})")
        out[names[label]] = w
    return out


def read_spec(spec: str) -> dict[str, float]:
    """{label: weight} from a file or an inline label=w,... list."""
    where, text = "--class-weights", spec
    if Path(spec).is_file():
        where = f"--class-weights {spec}"
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MiniftError(f"{where}: cannot be read ({e})") from None
        if spec.lower().endswith(".json"):
            try:
                pairs = json.loads(text)
            except json.JSONDecodeError as e:
                raise MiniftError(f"{where}, line {e.lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(pairs, dict):
                raise MiniftError(f"{where}: expected a JSON object {{\"label\": weight, ...}}")
            return {str(k): number(v, f"{where}, label {k!r}") for k, v in pairs.items()}
    out = {}
    for item in filter(None, (x.strip() for x in text.replace("\n", ",").split(","))):
        label, eq, value = item.rpartition("=")
        if not eq or not label.strip():
            raise MiniftError(f"{where}: {item!r} is not label=weight; expected balanced, a file, or "
                              "label=weight pairs separated by commas")
        out[label.strip()] = number(value, f"{where}, label {label.strip()!r}")
    if not out:
        raise MiniftError(f"{where}: no label=weight pairs")
    return out


def number(value, where: str) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        w = math.nan
    if not (math.isfinite(w) and w > 0):
        raise MiniftError(f"{where}: weight {value!r}; expected a positive number")
    return w


def balanced(task: str, feats, n_classes: int) -> torch.Tensor:
    if task == "multilabel":  # [n, C] multi-hot
        pos = feats.labels.sum(0)
        neg = len(feats.labels) - pos
        return torch.where(neg > 0, neg / pos, 1.0)  # a label on every example: nothing to balance
    ids = feats.labels if task == "classify" else torch.tensor([t for tags in feats.gold for t in tags])
    counts = torch.bincount(ids, minlength=n_classes).float()
    return len(ids) / (n_classes * counts)
