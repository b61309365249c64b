"""Inference and evaluation for every task: length-sorted batches through the model, then the task's
scoring (evaluate) or decoding into what a user reads (predict). Also sentence embeddings (embed)."""
import json
from pathlib import Path

import torch

from minift import tasks
from minift.config import BertConfig
from minift.data import length_batches
from minift.errors import MiniftError
from minift.gemm import describe, fast_linears
from minift.tokenizer import Tokenizer
from minift.train_step import pick_device, pick_precision


@torch.inference_mode()
def run_model(model, task, feats, pad_id: int, batch_size: int, device: torch.device, amp_dtype) -> list:
    """The task's result for every feature row, in the order of the rows. Batches hold similar
    lengths, so little compute goes to padding."""
    was_training = model.training
    model.eval()
    out = [None] * len(feats.ids)
    # One autocast region for all batches: it casts each weight to low precision once, not once per batch.
    # fp32 linears on the machine's fastest path (minift/gemm.py), packed once while the weights stay the same.
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None), \
            fast_linears(model, keep=not was_training):
        for idx in length_batches([len(x) for x in feats.ids], batch_size, seed=None):
            b = {k: v.to(device) for k, v in task.batch(feats, idx, pad_id).items()}
            for i, r in zip(idx, task.outputs(model, b)):
                out[i] = r
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


def check_sizes(model, batch_size: int, max_length: int | None, pairs: bool = False):
    """Refuse sizes the model cannot run before any work, instead of failing deep in a forward pass."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise MiniftError(f"--batch-size {batch_size}: expected a positive whole number")
    if max_length is not None:
        check_max_length(max_length, pairs, model.config.max_tokens)


def check_max_length(max_length: int, pairs: bool, most: int | None = None):
    """--max-length against [CLS] and [SEP] (and a pair's second [SEP]) and, once the model is known, its
    `most` positions."""
    least = 3 if pairs else 2
    if most is None and max_length < least:
        raise MiniftError(f"--max-length {max_length}: expected at least {least} tokens ([CLS] and [SEP] included)")
    if most is not None and not least <= max_length <= most:
        raise MiniftError(f"--max-length {max_length}: expected {least} to {most} tokens ([CLS] and [SEP] "
                          f"included; the model has {most} positions, from max_position_embeddings)")


def load(model_dir, device="auto", allow_pickle=False):
    """A fine-tuned model directory -> (model on device, tokenizer, task)."""
    if not Path(model_dir).is_dir():
        raise MiniftError(f"{model_dir}: no such model directory")
    config, saved = BertConfig.read(Path(model_dir) / "config.json")  # a clear error for an invalid config first
    task = tasks.of_saved(saved, model_dir)
    tokenizer = Tokenizer.from_dir(model_dir)
    config.check_tokenizer(tokenizer, model_dir)
    if task.name == "qa" and run_record(model_dir) is None:
        # Not trained by minift (saved by transformers, say): windows of the documented 384 tokens, as transformers'
        # question-answering pipeline cuts them, not the tokenizer's model_max_length. minift's own runs saved theirs.
        tokenizer.model_max_length = min(tokenizer.model_max_length, task.default_max_length)
    model = task.model.from_pretrained(model_dir, allow_pickle=allow_pickle)
    return model.to(pick_device(device)), tokenizer, task


def run_record(model_dir) -> dict | None:
    """The settings of the minift run that trained this model directory (its run.json), or None."""
    file = Path(model_dir) / "run.json"
    if not file.exists():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MiniftError(f"{file}: the record of the run that trained this model cannot be read ({e})") from None
    if not isinstance(record, dict):
        raise MiniftError(f"{file}: expected the JSON object of settings that `minift train` writes")
    return record


def task_options(options: dict, task, model_dir=None) -> tasks.TaskOptions:
    """The task's settings; those not given (None) are what the model in model_dir was trained with."""
    try:
        opts = tasks.TaskOptions(**options)
    except TypeError as e:
        raise MiniftError(f"unknown option: {e}") from None
    tasks.check_options(task, opts)
    if task.name == "qa" and opts.doc_stride is None and model_dir is not None:
        opts.doc_stride = (run_record(model_dir) or {}).get("doc_stride")  # a record without it: the default
    return opts


def outputs_of(model, tok, task, examples, opts, batch_size, max_length, precision, quantize=None, log=None):
    """Features of the examples (truncated as in training unless max_length is given), run: (outputs, features).
    quantize="int8": see minift/quantize.py. log: where to write matmul_line once the sizes are checked."""
    check_sizes(model, batch_size, max_length, examples.pairs is not None)
    dev = next(model.parameters()).device
    max_length = max_length or min(tok.model_max_length, model.config.max_tokens)
    feats = task.features(examples, tok, max_length, model.config, opts)
    amp_dtype = None if quantize else pick_precision(precision, dev)
    if quantize:
        from minift.quantize import quantize as quantize_model
        quantize_model(model, quantize, precision)
    if log is not None:
        print(f"minift {log[0]}: {describe(model, amp_dtype, quantize)}", file=log[1])
    return run_model(low_precision_weights(model, amp_dtype), task, feats, tok.pad_id, batch_size, dev, amp_dtype), feats


def predict(model_dir, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64,
            max_length: int | None = None, device: str = "auto", precision: str = "auto",
            allow_pickle: bool = False, quantize: str | None = None, **options) -> list[dict]:
    """One dict per text, as the model's task writes it: for a classifier {"label": name, "probs":
    {name: p}} (multilabel: "labels" and per-label probs), for a regressor {"score": x}; for question
    answering (texts: questions, pairs: their contexts) {"id", "answer", "score", "start", "end"}.
    options: the task's settings (TaskOptions)."""
    model, tok, task = load(model_dir, device, allow_pickle)
    examples = task.from_texts(texts, pairs, tok)
    opts = task_options(options, task, model_dir)
    return predict_examples(model, tok, task, examples, opts, batch_size, max_length, precision, quantize)


def predict_examples(model, tok, task, examples, opts, batch_size, max_length, precision, quantize=None,
                     log=None) -> list[dict]:
    outputs, feats = outputs_of(model, tok, task, examples, opts, batch_size, max_length, precision, quantize, log)
    return task.decode(outputs, feats, examples, model.config)


def evaluate(model_dir, data, text_column="text", text_pair_column=None, label_column="label",
             batch_size: int = 64, max_length: int | None = None, device: str = "auto", precision: str = "auto",
             allow_pickle: bool = False, quantize: str | None = None, log=None, **options) -> dict:
    """The task's metrics of a fine-tuned model on a labelled file, plus the number of examples.
    options: the task's other settings (TaskOptions). log: a file for the line naming the matmul path."""
    model, tok, task = load(model_dir, device, allow_pickle)
    check_sizes(model, batch_size, max_length, text_pair_column is not None)  # before reading the data
    opts = task_options(dict(options, text_column=text_column, text_pair_column=text_pair_column,
                             label_column=label_column), task, model_dir)
    examples = task.read_eval(data, opts)
    outputs, feats = outputs_of(model, tok, task, examples, opts, batch_size, max_length, precision, quantize,
                                None if log is None else ("eval", log))
    return {**task.score(outputs, feats), "examples": len(examples.texts),
            "skipped_empty": getattr(examples, "skipped_empty", 0)}


def embed(model_dir, texts: list[str], batch_size: int = 64, max_length: int | None = None, device: str = "auto",
          allow_pickle: bool = False, quantize: str | None = None, pooling: str | None = None) -> torch.Tensor:
    """Sentence embeddings [N, H], fp32, pooled as the directory's sentence-transformers files say (for
    all-MiniLM-L6-v2: the mean over real tokens, L2-normalised), or by `pooling` (mean, cls, max: see
    minift/pooling.py). max_length (default: the directory's max_seq_length, else 256) is capped at the model's
    positions."""
    from minift.pooling import read_pooling
    how = read_pooling(model_dir, pooling)
    model, tok = load_encoder(model_dir, device, allow_pickle, quantize)
    return embed_texts(model, tok, texts, batch_size, max_length or how.max_length or 256, how)


def load_encoder(model_dir, device="auto", allow_pickle=False, quantize: str | None = None):
    """A model directory's encoder (any head left out) in eval mode on device, and its tokenizer."""
    from minift.model import Bert
    if not Path(model_dir).is_dir():
        raise MiniftError(f"{model_dir}: no such model directory")
    tokenizer = Tokenizer.from_dir(model_dir)
    BertConfig.from_json(Path(model_dir) / "config.json").check_tokenizer(tokenizer, model_dir)
    model = Bert.from_pretrained(model_dir, allow_pickle=allow_pickle).to(pick_device(device)).eval()
    if quantize:
        from minift.quantize import quantize as quantize_model
        quantize_model(model, quantize)
    return model, tokenizer


@torch.inference_mode()
def embed_texts(model, tok, texts: list[str], batch_size: int = 64, max_length: int = 256,
                pooling=None) -> torch.Tensor:
    from minift.pooling import Pooling, pool
    max_length = min(max_length, model.config.max_tokens)
    check_sizes(model, batch_size, max_length)
    dev = next(model.parameters()).device
    ids, types = tok.encode(texts, None, max_length)
    out = torch.empty(len(texts), model.config.hidden_size)
    with fast_linears(model):  # fp32 linears on the machine's fastest path (minift/gemm.py)
        for idx in length_batches([len(x) for x in ids], batch_size, seed=None):
            pad = Tokenizer.pad([ids[i] for i in idx], [types[i] for i in idx], tok.pad_id)
            b = {k: v.to(dev) for k, v in pad.items()}
            h, _ = model(**b)  # [b, T, H]
            out[idx] = pool(h, b["attention_mask"], pooling or Pooling()).float().cpu()
    return out
