"""Sentence pooling: the last hidden states of a text -> one vector, as sentence-transformers computes it.

A sentence-transformers model directory says how in its own files: modules.json lists the modules after
the encoder (a Pooling, then optionally a Normalize), and the Pooling's config.json (in 1_Pooling/) names
the mode. read_pooling() reads them; write_pooling() writes them, so that
sentence_transformers.SentenceTransformer(out) loads a directory minift trained as what it is.
Modes: mean (over the real tokens), cls (the first token), max (per feature, over the real tokens).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from minift.data import read_json
from minift.errors import MiniftError

MODES = ("mean", "cls", "max")
# Pooling's config.json before sentence-transformers 6 named its mode by one switch per mode.
LEGACY = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean"}
ST = "sentence_transformers.models."


@dataclass
class Pooling:
    mode: str = "mean"
    normalize: bool = True  # L2 to unit length, as a Normalize module does
    max_length: int | None = None  # sentence_bert_config.json's max_seq_length: what the model was trained at


def read_pooling(model_dir, mode: str | None = None) -> Pooling:
    """The directory's pooling from its sentence-transformers files; without them, `mode` (default mean)
    with normalisation. A `mode` given overrides the files' mode (their normalisation stays)."""
    if mode is not None and mode not in MODES:
        raise MiniftError(f"--pooling {mode!r}: expected one of {', '.join(MODES)}")
    d = Path(model_dir)
    if not (d / "modules.json").is_file():
        return Pooling(mode or "mean")
    modules = read_json(d / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise MiniftError(f"{d / 'modules.json'}: expected a list of modules, each with a type")
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown or "Pooling" not in kinds:
        raise MiniftError(f"{d / 'modules.json'}: modules {', '.join(kinds)}; minift computes a Transformer, then a "
                          f"Pooling, then optionally a Normalize" + (f" (not {', '.join(unknown)})" if unknown else ""))
    cfg_file = d / modules[kinds.index("Pooling")].get("path", "") / "config.json"
    found = _mode(cfg_file, read_json(cfg_file))
    max_length = read_json(d / "sentence_bert_config.json").get("max_seq_length") \
        if (d / "sentence_bert_config.json").is_file() else None
    return Pooling(mode or found, "Normalize" in kinds, max_length)


def _mode(path, cfg: dict) -> str:
    modes = cfg.get("pooling_mode") or [m for k, m in LEGACY.items() if cfg.get(k)] or \
        [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in MODES:
        raise MiniftError(f"{path}: pooling mode {'+'.join(map(str, modes))}; minift supports one of "
                          f"{', '.join(MODES)}")
    return modes[0]


def pool(h, mask, pooling: Pooling):
    """h [B, T, H] (last hidden states), mask [B, T] (1 = real token) -> [B, H], in fp32 at least (a bf16
    vector would round every cosine similarity to some 3 digits)."""
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    if pooling.mode == "cls":
        x = h[:, 0]
    elif pooling.mode == "max":
        x = h.masked_fill(mask[..., None] == 0, float("-inf")).max(1).values
    else:
        m = mask[..., None].to(h.dtype)
        x = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(x, dim=-1) if pooling.normalize else x


def write_pooling(out_dir, pooling: Pooling, hidden: int, max_length: int):
    """modules.json, 1_Pooling/config.json (2_Normalize/ when normalising) and sentence_bert_config.json."""
    from minift.checkpoint import atomic_write
    d = Path(out_dir)
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST + "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": ST + "Pooling"}]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": ST + "Normalize"})
        (d / "2_Normalize").mkdir(exist_ok=True)
    (d / "1_Pooling").mkdir(exist_ok=True)
    config = {"word_embedding_dimension": hidden, **{k: m == pooling.mode for k, m in LEGACY.items()},
              "pooling_mode_mean_sqrt_len_tokens": False}
    for name, obj in (("modules.json", modules), ("1_Pooling/config.json", config),
                      ("sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})):
        data = (json.dumps(obj, indent=2) + "\n").encode()
        atomic_write(d / name, lambda f: f.write_bytes(data), len(data))
