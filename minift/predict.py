"""Inference and evaluation: batched, length-sorted forward passes, probabilities and metrics."""
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from minift.data import encode_labels, length_batches, read_dataset
from minift.errors import MiniftError
from minift.model import BertClassifier
from minift.tokenizer import Tokenizer
from minift.train_step import pick_device, pick_precision

# minift's task names and the Hugging Face problem_type each one is saved as.
PROBLEM_TYPE = {"classify": "single_label_classification", "multilabel": "multi_label_classification",
                "regression": "regression"}
TASK = {v: k for k, v in PROBLEM_TYPE.items()}


@torch.inference_mode()
def logits_for(model, ids: list[list[int]], types: list[list[int]], pad_id: int, batch_size: int,
               device: torch.device, amp_dtype) -> torch.Tensor:
    """Logits [N, C] in fp32, in the order of `ids`. Batches hold similar lengths to waste little on padding."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(ids), model.config.num_labels)
    # One autocast region for all batches: it casts each weight to low precision once, not once per batch.
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for idx in length_batches([len(x) for x in ids], batch_size, seed=None):
            b = {k: v.to(device) for k, v in Tokenizer.pad([ids[i] for i in idx], [types[i] for i in idx], pad_id).items()}
            out[idx] = model(**b).float().cpu()
    model.train(was_training)
    return out


def low_precision_weights(model, amp_dtype):
    """Store the matmul weights in the autocast dtype, for inference only: autocast would otherwise cast
    every weight again for every batch. Embeddings and LayerNorms stay fp32, as under autocast."""
    if amp_dtype is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.to(amp_dtype)
    return model


def metrics(logits: torch.Tensor, labels: torch.Tensor, task: str) -> dict[str, float]:
    """classify: loss, accuracy, macro_f1; multilabel: loss, accuracy (exact set), macro_f1; regression: mse, pearson."""
    if task == "regression":
        pred = logits.squeeze(-1)
        mse = F.mse_loss(pred, labels).item()
        pearson = torch.corrcoef(torch.stack([pred, labels]))[0, 1].item() if len(labels) > 1 else math.nan
        return {"mse": mse, "pearson": pearson}
    if task == "multilabel":
        loss = F.binary_cross_entropy_with_logits(logits, labels).item()
        pred, gold = logits > 0, labels > 0.5
        acc = (pred == gold).all(1).float().mean().item()
    else:
        loss = F.cross_entropy(logits, labels).item()
        pred = logits.argmax(1)
        acc = (pred == labels).float().mean().item()
        n = logits.shape[1]
        pred, gold = F.one_hot(pred, n).bool(), F.one_hot(labels, n).bool()
    # Macro-F1: the F1 of each class (one-vs-rest), averaged with equal weight per class.
    tp = (pred & gold).sum(0).float()
    fp = (pred & ~gold).sum(0).float()
    fn = (~pred & gold).sum(0).float()
    f1 = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn), torch.zeros_like(tp))
    return {"loss": loss, "accuracy": acc, "macro_f1": f1.mean().item()}


def check_sizes(model, batch_size: int, max_length: int | None, pairs: bool = False):
    """Refuse sizes the model cannot run before any work, instead of failing deep in a forward pass."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise MiniftError(f"--batch-size {batch_size}: expected a positive whole number")
    if max_length is None:
        return
    least, most = (3 if pairs else 2), model.config.max_position_embeddings
    if not least <= max_length <= most:
        raise MiniftError(f"--max-length {max_length}: expected {least} to {most} tokens ([CLS] and [SEP] "
                          f"included; the model has {most} positions, max_position_embeddings)")


def load(model_dir, device="auto", allow_pickle=False):
    """A fine-tuned model directory -> (model on device, tokenizer, task)."""
    model = BertClassifier.from_pretrained(model_dir, allow_pickle=allow_pickle)
    tokenizer = Tokenizer.from_dir(model_dir)
    task = TASK.get(model.config.problem_type or "single_label_classification")
    if model.config.num_labels == 1 and model.config.problem_type is None:
        task = "regression"
    dev = pick_device(device)
    return model.to(dev), tokenizer, task


def logits_of(model, tok, texts, pairs, batch_size, max_length, precision) -> torch.Tensor:
    """Tokenise (truncating as in training unless max_length is given) and run: logits [N, C], fp32."""
    check_sizes(model, batch_size, max_length, pairs is not None)
    dev = next(model.parameters()).device
    ids, types = tok.encode(texts, pairs, max_length or min(tok.model_max_length, model.config.max_position_embeddings))
    amp_dtype = pick_precision(precision, dev)
    return logits_for(low_precision_weights(model, amp_dtype), ids, types, tok.pad_id, batch_size, dev, amp_dtype)


def predict(model_dir, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64,
            max_length: int | None = None, device: str = "auto", precision: str = "auto",
            allow_pickle: bool = False) -> list[dict]:
    """Per text: {"label": name, "probs": {name: p}} (classify, multilabel: "labels" and per-label probs),
    or {"score": x} (regression)."""
    model, tok, task = load(model_dir, device, allow_pickle)
    logits = logits_of(model, tok, texts, pairs, batch_size, max_length, precision)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)] if model.config.id2label else None
    if task == "regression":
        return [{"score": x} for x in logits.squeeze(-1).tolist()]
    if task == "multilabel":
        probs = torch.sigmoid(logits).tolist()
        return [{"labels": [n for n, p in zip(names, row) if p > 0.5], "probs": dict(zip(names, row))} for row in probs]
    probs = torch.softmax(logits, dim=-1).tolist()
    return [{"label": names[max(range(len(row)), key=row.__getitem__)], "probs": dict(zip(names, row))} for row in probs]


def evaluate(model_dir, data, text_column="text", text_pair_column=None, label_column="label",
             batch_size: int = 64, max_length: int | None = None, device: str = "auto", precision: str = "auto",
             allow_pickle: bool = False) -> dict:
    """Metrics of a fine-tuned model on a labelled file (see metrics())."""
    model, tok, task = load(model_dir, device, allow_pickle)
    check_sizes(model, batch_size, max_length, text_pair_column is not None)  # before reading the data
    ds = read_dataset(data, text_column, text_pair_column, label_column)
    if task != "regression" and not model.config.id2label:
        raise MiniftError(f"{Path(model_dir) / 'config.json'}: has no id2label, so labels in {data} cannot be matched")
    labels = encode_labels(ds, model.config.label2id, task)
    logits = logits_of(model, tok, ds.texts, ds.pairs, batch_size, max_length, precision)
    return {**metrics(logits, labels, task), "examples": len(ds.texts), "skipped_empty": ds.skipped_empty}


@torch.inference_mode()
def embed(model_dir, texts: list[str], batch_size: int = 64, max_length: int = 256, device: str = "auto",
          allow_pickle: bool = False) -> torch.Tensor:
    """Sentence embeddings [N, H], fp32: the mean of the last hidden states over real tokens, L2-normalised
    (what sentence-transformers computes for all-MiniLM-L6-v2). max_length is capped at the model's positions."""
    from minift.model import Bert
    dev = pick_device(device)
    model = Bert.from_pretrained(model_dir, allow_pickle=allow_pickle).to(dev).eval()
    max_length = min(max_length, model.config.max_position_embeddings)
    check_sizes(model, batch_size, max_length)
    tok = Tokenizer.from_dir(model_dir)
    ids, types = tok.encode(texts, None, max_length)
    out = torch.empty(len(texts), model.config.hidden_size)
    for idx in length_batches([len(x) for x in ids], batch_size, seed=None):
        b = {k: v.to(dev) for k, v in Tokenizer.pad([ids[i] for i in idx], [types[i] for i in idx], tok.pad_id).items()}
        h, _ = model(**b)  # [b, T, H]
        m = b["attention_mask"].unsqueeze(-1).float()  # [b, T, 1]
        out[idx] = F.normalize((h * m).sum(1) / m.sum(1), dim=-1).cpu()
    return out
