"""Checkpoint I/O: Hugging Face directories of the BERT family in and out of minift's modules.

A Hugging Face directory holds config.json and model.safetensors (or shards listed in
model.safetensors.index.json). Tensor names differ between minift and Hugging Face in two
ways only: shorter module names, and one fused [3H, H] QKV projection where most families
keep query, key and value apart. Each family's table of names (minift/families.py) and
hf_names() are the whole translation.
"""
import glob
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minift.config import BertConfig
from minift.errors import MiniftError
from minift.families import BERT_NAMES, FAMILIES

def hf_names(name: str, names: dict = BERT_NAMES) -> list[str]:
    """Hugging Face tensor names (without the encoder's prefix) that make up minift tensor `name`."""
    parts = name.split(".")
    module, leaf = ".".join(parts[:-1]), parts[-1]  # e.g. "layers.3.attn.qkv", "weight"
    if parts[0] != "layers":
        return [f"{names[module]}.{leaf}"]
    i, sub = parts[1], ".".join(parts[2:-1])  # layers.{i}.{sub}.{leaf}
    hf = names[sub] if isinstance(names[sub], tuple) else (names[sub],)
    return [f"{names['layers']}.{i}.{x}.{leaf}" for x in hf]


def encoder_modules(names: dict) -> tuple[str, ...]:
    """The top-level Hugging Face names of the encoder's tensors (embeddings., encoder., ...)."""
    return tuple({v.split(".")[0] + "." for v in names.values() if isinstance(v, str)})


def read_tensors(path: Path, allow_pickle: bool = False, family: str = "bert",
                 keep: tuple = ()) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, with Hugging Face's naming variants normalised."""
    single, index, pickle = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    if single.exists():
        raw = _load_safetensors(single)
    elif index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise MiniftError(f"{index}: not a valid shard index (expected JSON with a 'weight_map'): {e}") from None
        raw = {}
        for shard in sorted(set(weight_map.values())):
            raw.update(_load_safetensors(path / shard))
        absent = sorted(set(weight_map) - set(raw))
        if absent:
            raise MiniftError(f"{index}: tensors listed in the index are in no shard: {', '.join(absent[:10])}")
    elif pickle.exists():
        if not allow_pickle:
            raise MiniftError(
                f"{path} has only pytorch_model.bin, a pickle file: loading a pickle can run arbitrary code, "
                "so minift refuses it. Convert it to model.safetensors, or opt in with allow_pickle=True "
                "(CLI: --allow-pickle) to load it through torch.load(weights_only=True).")
        try:
            raw = torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MiniftError(f"{pickle}: cannot be loaded with torch.load(weights_only=True): {e}") from None
        if not isinstance(raw, dict):
            raise MiniftError(f"{pickle}: expected a state dict (tensor names -> tensors), got a {type(raw).__name__}")
        odd = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
        if odd:
            raise MiniftError(f"{pickle}: expected a state dict (tensor names -> tensors); "
                              f"{odd[0]!r} holds a {type(raw[odd[0]]).__name__}")
    else:
        if not path.is_dir():
            raise MiniftError(f"{path}: no such model directory")
        raise MiniftError(f"{path}: no weights found; expected model.safetensors, "
                          "model.safetensors.index.json (sharded) or pytorch_model.bin")
    fam = FAMILIES[family]
    out, (_, _, decoder, bias) = {}, fam.lm_head
    for k, v in raw.items():
        # Old TensorFlow-converted checkpoints call LayerNorm's parameters gamma and beta.
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        k = k.removeprefix(fam.prefix + ".")
        # Pretraining heads and the position_ids buffer are not part of the encoder; `keep` names a head that
        # the model has (a masked LM's). A masked-LM decoder's weight is the word embeddings again (lm_head).
        if (k.startswith(fam.pretraining_heads) and not k.startswith(keep)) or k.endswith("position_ids") \
                or k == f"{decoder}.weight":
            continue
        out[k] = v
    if f"{decoder}.bias" != bias and f"{decoder}.bias" in out:
        out.setdefault(bias, out.pop(f"{decoder}.bias"))
    return out


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except FileNotFoundError:
        raise MiniftError(f"{file}: missing (named by the shard index)") from None
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        raise MiniftError(f"{file}: cannot be read as safetensors; the file is truncated or corrupted ({e}). "
                          "Fetch or copy it again.") from None


def load_pretrained(cls, path, allow_pickle=False, id2label=None, problem_type=None, new_head=False):
    """Build `cls` (Bert, or a task's model) from a Hugging Face directory, checking every shape.

    new_head=True leaves out the checkpoint's head, for fine-tuning on another label set or task."""
    from minift.model import Bert
    path = Path(path)
    if not path.is_dir():
        raise MiniftError(f"{path}: no such model directory")
    cfg = BertConfig.from_json(path / "config.json")
    if id2label is not None:
        cfg.id2label = {int(k): str(v) for k, v in id2label.items()}
    if problem_type is not None:
        cfg.problem_type = problem_type
    sd = read_tensors(path, allow_pickle, cfg.model_type, keep=getattr(cls, "HEAD", ()))
    if cls is Bert or new_head:  # the encoder alone: whatever head the checkpoint has is left behind
        sd = {k: v for k, v in sd.items() if k.startswith(encoder_modules(cfg.family.names))}
    model = cls(cfg, pooler="pooler.dense.weight" in sd) if cls is Bert else cls(cfg)
    if cls is not Bert and not model.POOLER:  # e.g. a tagger from a checkpoint that has a pooler, as transformers does
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
    # A base BERT has no head yet, and sentence-embedding checkpoints may lack the pooler:
    # those start from their initialisation, which the constructor already did.
    may_be_new = ("bert.pooler.", *getattr(model, "HEAD", ()))
    missing, misshaped, mistyped, known = [], [], [], set()
    with torch.no_grad():
        for name, param in model.state_dict().items():
            srcs = hf_tensor_names(model, name)
            known.update(srcs)  # names the model has are never "unexpected", even if absent or mis-shaped
            absent = [s for s in srcs if s not in sd]
            if absent:
                # A new head is new as a whole: half of one present (weight without bias) is missing tensors.
                module = srcs[0].rsplit(".", 1)[0] + "."
                if not name.startswith(may_be_new) or any(k.startswith(module) for k in sd):
                    missing += absent
                continue
            want = (param.shape[0] // len(srcs), *param.shape[1:])
            bad = [f"{s} {list(sd[s].shape)} (expected {list(want)})" for s in srcs if tuple(sd[s].shape) != want]
            # An integer or boolean tensor would be copied into the weights as numbers no training produced.
            mistyped += [f"{s} {str(sd[s].dtype).removeprefix('torch.')}" for s in srcs if not sd[s].is_floating_point()]
            if bad or mistyped:
                misshaped += bad
                continue
            param.copy_(torch.cat([sd[s] for s in srcs]) if len(srcs) > 1 else sd[srcs[0]])
    unexpected = sorted(k for k in sd if k not in known)
    if missing or unexpected or misshaped or mistyped:
        found = [(label, names) for label, names in (("missing", missing), ("unexpected", unexpected),
                 ("wrong shape", misshaped), ("not floating point", mistyped)) if names]
        lines = [f"{path}: the weights do not match config.json ({', '.join(f'{len(n)} {l}' for l, n in found)})"]
        for label, names in found:
                lines.append(f"  {label} ({len(names)}): " + ", ".join(names[:20]) + (" ..." if len(names) > 20 else ""))
        raise MiniftError("\n".join(lines))
    return model


def hf_tensor_names(model, name: str) -> list[str]:
    """Hugging Face names (without the encoder's prefix) of tensor `name` of a Bert or a task model."""
    from minift.model import Bert
    names = model.config.family.names
    if isinstance(model, Bert):
        return hf_names(name, names)
    if name.startswith("bert."):
        return hf_names(name.removeprefix("bert."), names)
    return [name]  # a task head's tensors carry their Hugging Face names already


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors under Hugging Face names, QKV split back into query, key, value."""
    prefix = model.config.family.prefix  # bert., roberta., distilbert., ...
    out = {}
    for name, t in model.state_dict().items():
        own = f"{prefix}." if name.startswith("bert.") else ""
        srcs = hf_tensor_names(model, name)
        for s, part in zip(srcs, t.detach().chunk(len(srcs))):
            out[own + s] = part.float().contiguous().cpu()
    return out


def save_pretrained(model, path, tokenizer=None):
    """Write a Hugging Face-compatible directory. Each file goes to a temporary name first and is
    renamed into place, so a crash mid-save never leaves a half-written file under the real name."""
    from minift.model import Bert
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    family = model.config.family.stem  # BertForSequenceClassification -> RobertaFor...
    arch = f"{family}Model" if isinstance(model, Bert) else family + model.ARCHITECTURE.removeprefix("Bert")
    config = (json.dumps(model.config.to_dict(arch), indent=2) + "\n").encode()
    atomic_write(path / "config.json", lambda f: f.write_bytes(config), len(config))
    tensors, meta = hf_state_dict(model), {"format": "pt"}
    atomic_write(path / "model.safetensors", lambda f: save_file(tensors, str(f), metadata=meta),
                 file_size(tensors, meta))
    if tokenizer is not None:
        tokenizer.save(path)


def atomic_write(target: Path, write, size: int | None = None):
    """Call write(tmp_path), fsync, then rename over target: readers see the old file or the new one.

    A write that fails (a full disk, any I/O error) leaves the old file as it was and no temporary file,
    and is a MiniftError naming the directory and `size`, the bytes the file needs."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp*"):  # from a process killed mid-write
        stale.unlink(missing_ok=True)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except (OSError, SafetensorError) as e:  # safetensors reports its own I/O errors as SafetensorError
        tmp.unlink(missing_ok=True)  # first, so that the message counts the space it held as free
        raise MiniftError(write_error(target, e, size)) from None
    finally:
        tmp.unlink(missing_ok=True)


def append_line(file: Path, lines: str):
    """Append lines whole or not at all: after a failed or interrupted write (a full disk, Ctrl-C) the file
    is cut back to where it was, so it never ends in part of a line, and a file the write created is removed."""
    data = lines.encode("utf-8")
    try:
        try:
            fd, created = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(file, os.O_WRONLY | os.O_APPEND), False
    except OSError as e:
        raise MiniftError(write_error(file, e, len(data))) from None
    try:
        start = os.fstat(fd).st_size
        try:
            rest = memoryview(data)
            while rest:  # a write may stop short at the end of the space (or of a size limit)
                rest = rest[os.write(fd, rest):]
        except BaseException as e:
            os.ftruncate(fd, start)
            if created:  # no empty file left behind to block the next run
                os.unlink(file)
            if isinstance(e, OSError):
                raise MiniftError(write_error(file, e, len(data))) from None
            raise
    finally:
        os.close(fd)


def json_line(record: dict) -> str:
    """One line of JSON Lines, valid JSON whatever the numbers: JSON has no NaN or infinity, so a
    non-finite number is written as null and the record's "non_finite" field names where."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        where = []

        def clean(x, at):
            if isinstance(x, float) and not math.isfinite(x):
                where.append(at)
                return None
            if isinstance(x, dict):
                return {k: clean(v, f"{at}.{k}" if at else str(k)) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v, f"{at}[{i}]") for i, v in enumerate(x)]
            return x
        record = clean(record, "")
        record["non_finite"] = f"NaN or infinity (not JSON) written as null: {', '.join(where[:5])}" + (
            f" and {len(where) - 5} more" if len(where) > 5 else "")
        return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


def write_error(file: Path, e: Exception, size: int | None) -> str:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    where = Path(file).parent.resolve()
    msg = f"cannot write {Path(file).name} in {where}: {reason}"
    if size is not None:
        try:
            free = f"; {shutil.disk_usage(where).free:,} bytes are free there"
        except OSError:
            free = ""
        msg += f". It needs about {size:,} bytes{free}"
    return msg + ". The files already there are as they were; make room (or fix the error) and run again."


def file_size(tensors: dict[str, torch.Tensor], metadata: dict) -> int:
    """About the size of the safetensors file of `tensors`: 8 bytes, a JSON header, the data."""
    header, data = {"__metadata__": metadata}, 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [data, data + n]}
        data += n
    return 8 + len(json.dumps(header, separators=(",", ":"))) + data


# ---- training state, for --resume ----
# One safetensors file: tensors (weights, AdamW moments, RNG) plus a JSON header with the rest
# (progress, schedule, scaler). One file means one atomic rename per save; safetensors means no
# pickle is ever loaded, not even our own.
TRAIN_STATE_VERSION = 1


def save_train_state(file: Path, model, optimizer, scheduler, scaler, progress: dict):
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, s in opt["state"].items():
        tensors.update({f"optim.{i}.{k}": v for k, v in s.items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta = {"format_version": TRAIN_STATE_VERSION, "progress": progress, "param_groups": opt["param_groups"],
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"minift": json.dumps(meta)}
    atomic_write(file, lambda f: save_file(tensors, str(f), metadata=meta), file_size(tensors, meta))


def load_train_state(file: Path, model, optimizer, scheduler, scaler) -> dict:
    """Restore everything save_train_state wrote; returns the progress dict."""
    try:
        with safe_open(str(file), "pt") as f:
            meta = json.loads((f.metadata() or {})["minift"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise MiniftError(f"{file}: not a readable minift checkpoint; it is truncated, corrupted or not "
                          f"from minift ({type(e).__name__}: {e})") from None
    if meta.get("format_version") != TRAIN_STATE_VERSION:
        raise MiniftError(f"{file}: checkpoint format version {meta.get('format_version')!r}; "
                          f"this minift reads version {TRAIN_STATE_VERSION}")
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise MiniftError(f"{file}: the checkpoint does not fit this model ({e})") from None
    state = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return meta["progress"]
