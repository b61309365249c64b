"""The training loop: data in, fine-tuned Hugging Face model directory out.

out/ holds, at every moment, a usable model: config.json, model.safetensors and the tokenizer
files of the best model so far (by the chosen dev metric; the latest one without a dev set),
plus run.json (the whole run configuration), metrics.jsonl (one line per evaluation) and
checkpoint.safetensors (everything --resume needs to continue exactly where it stopped).
"""
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from minift.checkpoint import load_train_state, save_train_state
from minift.config import BertConfig
from minift.data import TASKS, encode_labels, label_map, length_batches, read_dataset
from minift.errors import MiniftError
from minift.model import BertClassifier, count_params
from minift.modes import apply_mode, merge_lora, parse_mode
from minift.predict import PROBLEM_TYPE, logits_for, metrics
from minift.tokenizer import Tokenizer
from minift.train_step import (make_loss_fn, make_optimizer, make_schedule, pick_device, pick_precision,
                               train_step)

# A frozen encoder leaves few, freshly initialised parameters to move: they take larger steps.
DEFAULT_LR = {"full": 5e-5, "top": 1e-4, "lora": 5e-4, "head": 1e-3}
# Everything a run writes into --out.
RUN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
             "special_tokens_map.json", "run.json", "metrics.jsonl", "checkpoint.safetensors")
# Metrics where lower is better; for the others higher is better.
LOWER_IS_BETTER = ("loss", "mse")


@dataclass
class RunConfig:
    """Every choice of a run. Saved as out/run.json; the CLI's flags are these fields."""
    model: str
    train: str
    out: str
    eval: str | None = None
    task: str = "classify"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    epochs: int = 3
    max_steps: int | None = None
    lr: float | None = None  # by mode: DEFAULT_LR
    batch_size: int = 32
    grad_accum: int = 1
    max_length: int | None = None  # 128, or fewer if the model has fewer positions
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    layer_decay: float = 1.0
    mode: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    precision: str = "auto"
    compile: str = "auto"
    device: str = "auto"
    metric: str | None = None
    seed: int = 0

    def check(self):
        def positive(name, integer=True):
            v = getattr(self, name)
            if v is not None and (v <= 0 or (integer and int(v) != v)):
                kind = "a positive whole number" if integer else "a positive number"
                raise MiniftError(f"--{name.replace('_', '-')} {v}: expected {kind}")
        for name in ("epochs", "max_steps", "batch_size", "grad_accum", "max_length", "lora_rank"):
            positive(name)
        for name in ("lr", "max_grad_norm", "lora_alpha", "layer_decay"):  # lr None: set below
            positive(name, integer=False)
        least = 3 if self.text_pair_column else 2  # [CLS] and [SEP], and a second [SEP] for a pair
        if self.max_length is not None and self.max_length < least:
            raise MiniftError(f"--max-length {self.max_length}: expected at least {least} tokens "
                              "([CLS] and [SEP] included)")
        if not 0 <= self.warmup < 1:
            raise MiniftError(f"--warmup {self.warmup}: expected the warmup fraction of all steps, in [0, 1)")
        if self.weight_decay < 0:
            raise MiniftError(f"--weight-decay {self.weight_decay}: expected a number >= 0")
        if self.task not in TASKS:
            raise MiniftError(f"--task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.compile not in ("auto", "on", "off"):
            raise MiniftError(f"--compile {self.compile!r}: expected auto, on or off")
        kind, _ = parse_mode(self.mode)
        if self.lr is None:
            self.lr = DEFAULT_LR[kind]
        if self.metric is None:
            self.metric = "mse" if self.task == "regression" else "accuracy"
        allowed = ("mse", "pearson") if self.task == "regression" else ("loss", "accuracy", "macro_f1")
        if self.metric not in allowed:
            raise MiniftError(f"--metric {self.metric!r}: for task {self.task} expected one of {', '.join(allowed)}")


def check_out_dir(out: Path, resume: bool, overwrite: bool):
    """Refuse to mix two runs in one directory: a previous run is only replaced or continued on request."""
    if resume:
        if not (out / "checkpoint.safetensors").exists():
            raise MiniftError(f"--resume: {out} holds no checkpoint.safetensors to resume from")
        return
    if out.exists() and not out.is_dir():
        raise MiniftError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MiniftError(f"--out {out}: the directory is not empty (it may hold another run). "
                          "Pass --resume to continue the run there, --overwrite to replace it, or choose another --out.")


def train(model: str, train: str, out: str, eval: str | None = None, resume: bool = False,
          overwrite: bool = False, allow_pickle: bool = False, log=None, **options) -> dict:
    """Fine-tune the BERT in directory `model` on file `train`; write the model to `out`.

    Options are the fields of RunConfig. allow_pickle=True lets a model directory that has only
    pytorch_model.bin load (through torch.load(weights_only=True)); the output is safetensors either way.
    Returns the last evaluation's row of metrics.jsonl (dev metrics when `eval` is given)."""
    log = sys.stderr if log is None else log  # looked up per call: sys.stderr may have been replaced since import
    try:
        cfg = RunConfig(model=str(model), train=str(train), out=str(out), eval=eval and str(eval), **options)
    except TypeError as e:
        raise MiniftError(f"train(): {e}") from None
    cfg.check()
    out = Path(cfg.out)
    check_out_dir(out, resume, overwrite)
    device = pick_device(cfg.device)
    rank, world, device = start_distributed(device)
    if rank != 0:  # one process writes files and progress
        log = open(os.devnull, "w")
    amp_dtype = pick_precision(cfg.precision, device)
    # torch.compile did not pay on a 2-core CPU (bench/), where its first step costs half a minute.
    compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    torch.manual_seed(cfg.seed)

    # ---- data: read, map labels, tokenise once ----
    tr = read_dataset(cfg.train, cfg.text_column, cfg.text_pair_column, cfg.label_column)
    try:
        label2id = label_map(tr.labels, cfg.task)
    except MiniftError as e:  # label_map sees values only: name the file they came from
        raise MiniftError(f"{cfg.train}: {e}") from None
    y_tr = encode_labels(tr, label2id, cfg.task)
    dv = y_dv = None
    if cfg.eval:
        dv = read_dataset(cfg.eval, cfg.text_column, cfg.text_pair_column, cfg.label_column)
        y_dv = encode_labels(dv, label2id, cfg.task)
    for ds in (tr, dv):
        if ds is not None and ds.skipped_empty:
            print(f"{ds.path}: skipped {ds.skipped_empty} example(s) with empty text", file=log)

    id2label = {i: n for n, i in label2id.items()} or {0: "score"}
    if not Path(cfg.model).is_dir():
        raise MiniftError(f"{cfg.model}: no such model directory")
    # A checkpoint fine-tuned for other labels keeps its encoder and gets a new head.
    before = BertConfig.from_json(Path(cfg.model) / "config.json")
    new_head = before.id2label not in (None, id2label) or before.problem_type not in (None, PROBLEM_TYPE[cfg.task])
    net = BertClassifier.from_pretrained(cfg.model, allow_pickle=allow_pickle, id2label=id2label,
                                         problem_type=PROBLEM_TYPE[cfg.task], new_head=new_head)
    if new_head:
        print(f"{cfg.model}: its classifier was for {before.id2label}; starting a new one for {id2label}", file=log)
    tok = Tokenizer.from_dir(cfg.model)
    cfg.max_length = cfg.max_length or min(128, net.config.max_position_embeddings)
    if cfg.max_length > net.config.max_position_embeddings:
        raise MiniftError(f"--max-length {cfg.max_length}: the model has only "
                          f"{net.config.max_position_embeddings} positions (max_position_embeddings)")
    tok.model_max_length = cfg.max_length  # so that predict truncates as training did
    if resume:
        try:
            saved = json.loads((out / "run.json").read_text())
        except (OSError, ValueError) as e:
            raise MiniftError(f"--resume: {out / 'run.json'}, the record of the run's settings, cannot be read "
                              f"({e}); start a new run instead") from None
        changed = {k: (saved.get(k), v) for k, v in dataclasses.asdict(cfg).items() if saved.get(k) != v}
        if changed:
            raise MiniftError(f"--resume: these settings differ from the run in {out} (was, now): {changed}; "
                              "resume with the same settings, or start a new run")
    ids, types = tok.encode(tr.texts, tr.pairs, cfg.max_length)
    dv_ids, dv_types = tok.encode(dv.texts, dv.pairs, cfg.max_length) if dv else (None, None)

    apply_mode(net, cfg.mode, cfg.lora_rank, cfg.lora_alpha)
    net.to(device).train()
    batches_per_epoch = math.ceil(len(ids) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    opt = make_optimizer(net, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    sched = make_schedule(opt, int(cfg.warmup * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    # Under torchrun, DDP averages the gradients of the ranks' slices of each global batch.
    ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    loss_fn = make_loss_fn(ddp, amp_dtype, device, compile)

    state = {"step": 0, "epoch": 0, "batch": 0, "best": None, "tokens": 0}
    if resume:  # before the first line of output: a checkpoint that cannot be resumed is a plain refusal
        state = load_train_state(out / "checkpoint.safetensors", net, opt, sched, scaler)
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:  # --overwrite: the old run goes whole, never half of it beside the new one
            (out / name).unlink(missing_ok=True)
        (out / "run.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    print(f"minift: {cfg.mode} fine-tuning, {count_params(net, True):,} of {count_params(net):,} parameters train; "
          f"{len(ids)} examples, {total_steps} steps of {cfg.batch_size * cfg.grad_accum}; device {device}, "
          f"precision {amp_dtype or 'fp32'}, compile {'on' if compile else 'off'}"
          + (f", {world} processes" if world > 1 else ""), file=log)

    def save_state():
        if rank == 0:
            save_train_state(out / "checkpoint.safetensors", net, opt, sched, scaler, state)

    def save_model():
        if rank != 0:
            return
        keep = merge_lora(copy.deepcopy(net)) if cfg.mode == "lora" else net
        keep.save_pretrained(out, tok)

    def evaluate(epoch_done: float) -> dict:
        if world > 1:
            dist.barrier()  # every rank has finished the step; only rank 0 evaluates and writes
            if rank != 0:
                return {}
        loss = state.get("loss")  # NaN after a skipped step: null in JSON, which has no NaN
        row = {"step": state["step"], "epoch": round(epoch_done, 3),
               "train_loss": loss if loss is not None and math.isfinite(loss) else None}
        if dv is not None:
            row.update({f"dev_{k}": v for k, v in metrics(
                logits_for(net, dv_ids, dv_types, tok.pad_id, 2 * cfg.batch_size, device, amp_dtype),
                y_dv, cfg.task).items()})
            score = row[f"dev_{cfg.metric}"]
            better = state["best"] is None or (score < state["best"] if cfg.metric in LOWER_IS_BETTER else score > state["best"])
        else:
            better = True
        if better:
            state["best"] = row.get(f"dev_{cfg.metric}")
            save_model()
        row["kept"] = better
        with open(out / "metrics.jsonl", "a") as f:  # appended and flushed per line: never lost
            f.write(json.dumps(row) + "\n")
        print("  eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), file=log)
        return row

    # SIGINT / SIGTERM: finish the current step, save a checkpoint, leave cleanly.
    stop = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
        handlers = {s: signal.signal(s, lambda n, f: stop.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    last, t0, seqs, toks, bad, start_step = {}, time.time(), 0, 0, 0, state["step"]
    try:
        while state["step"] < total_steps:
            batches = length_batches([len(x) for x in ids], cfg.batch_size, seed=cfg.seed + state["epoch"])
            if world > 1:  # a batch too small to give every rank an example is left out
                batches = [b for b in batches if len(b) >= world]
            while state["batch"] < len(batches) and state["step"] < total_steps:
                group = batches[state["batch"]: state["batch"] + cfg.grad_accum]
                micro = []
                for idx in group:
                    idx = idx[rank::world]  # this process's slice of the global batch
                    b = Tokenizer.pad([ids[i] for i in idx], [types[i] for i in idx], tok.pad_id)
                    b["labels"] = y_tr[idx]
                    micro.append({k: v.to(device, non_blocking=True) for k, v in b.items()})
                loss, norm, applied = train_step(loss_fn, opt, sched, scaler, micro, cfg.max_grad_norm)
                stopping = bool(stop)
                if world > 1:
                    # One all-reduce per step: the global batch's loss for the log, and whether any rank
                    # was signalled. Every rank stops after the same step because each decides on the
                    # reduced flag alone: a signal landing after the all-reduce waits for the next step.
                    both = torch.stack([loss.float(), torch.tensor(float(stopping), device=loss.device)])
                    dist.all_reduce(both)
                    loss, stopping = both[0] / world, bool(both[1] > 0)
                state["batch"] += len(group)
                state["step"] += 1
                bad = 0 if applied else bad + 1
                if bad >= 5:
                    raise MiniftError(f"training stopped at step {state['step']}: the loss or gradients were not finite "
                                      f"for {bad} steps in a row (last loss {float(loss):.4g}). Lower --lr, or use "
                                      f"--precision fp32/bf16. The last good model is in {out}.")
                state["loss"] = float(loss)
                seqs += sum(len(g) for g in group)
                toks += sum(len(ids[i]) for idx in group for i in idx)
                if time.time() - last.get("t", 0) > 2 or state["step"] == total_steps:
                    el = time.time() - t0
                    eta = el / (state["step"] - start_step) * (total_steps - state["step"])
                    print(f"step {state['step']}/{total_steps} epoch {state['epoch'] + 1} loss {state['loss']:.4f} "
                          f"lr {sched.get_last_lr()[0]:.2e} {seqs / el:.1f} seq/s {toks / el:,.0f} tok/s ETA {eta:.0f}s",
                          file=log)
                    last["t"] = time.time()
                if stopping:
                    save_state()
                    print(f"minift: stopped by signal at step {state['step']}; checkpoint saved. "
                          f"Continue with --resume.", file=log)
                    if world > 1:
                        dist.barrier()  # rank 0 has saved: now all may leave
                    return {"stopped_at": state["step"]} if rank == 0 else {}
            if state["batch"] >= len(batches):  # an epoch ended
                state["epoch"] += 1
                state["batch"] = 0
                evaluate(state["epoch"])
                save_state()
        if state["batch"]:  # stopped by max_steps inside an epoch
            row = evaluate(state["epoch"] + state["batch"] / batches_per_epoch)
            save_state()
        elif rank == 0:
            row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        else:
            row = {}
        if world > 1:
            # Rank 0 may still be evaluating and saving; a rank that tears its process group down meanwhile
            # was seen to abort ("terminate called without an active exception"). Leave together.
            dist.barrier()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if world > 1:
            # Freeing a gloo process group joins its worker threads while holding the GIL, and a worker
            # freeing a finished collective's tensors needs the GIL: freed at the wrong moment, as when
            # the DDP wrapper (which holds the group) went with this frame, the process hung (seen about
            # once in 50 runs). So free the wrapper now, let the workers finish with the GIL released,
            # and only then free the group.
            del ddp, loss_fn
            time.sleep(0.1)
            dist.destroy_process_group()
    return row


def start_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun (which sets WORLD_SIZE, RANK, LOCAL_RANK); (0, 1, device) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device
