"""The training loop, the same for every task: data in, fine-tuned Hugging Face model directory out.

out/ holds, at every moment, a usable model: config.json, model.safetensors and the tokenizer
files of the best model so far (by the chosen dev metric; the latest one without a dev set),
plus run.json (the whole run configuration), metrics.jsonl (one line per evaluation) and
checkpoint.safetensors (everything --resume needs to continue exactly where it stopped).

train() reads top to bottom in four phases: setup() builds a Run (data, model, optimizer, or the
state of an interrupted run), run_epochs() steps through the batches, evaluate_and_keep() scores
the dev set and keeps the best model, save_state() writes the checkpoint.
"""
import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from minift import tasks
from minift.class_weights import class_weights
from minift.checkpoint import append_line, atomic_write, json_line, load_train_state, save_train_state
from minift.config import BertConfig, bert_architecture
from minift.data import length_batches
from minift.errors import MiniftError
from minift.run_config import (RUN_FILES, RunConfig, check_inputs_apart, check_out_dir, check_same_settings,
                               forget_if_nothing_kept)
from minift import gemm
from minift.gemm import describe
from minift.lock import run_lock
from minift.model import count_params
from minift.modes import apply_mode, merge_lora
from minift.predict import check_max_length, run_model
from minift.tokenizer import Tokenizer
from minift.train_step import (accumulation_shares, loss_units, make_loss_fn, make_optimizer,
                               make_schedule, pick_device, pick_precision, train_step)

# Metrics where lower is better; for the others higher is better.
LOWER_IS_BETTER = ("loss", "mse", "perplexity")


@dataclass
class Run:
    """What one training run holds: built by setup(), advanced by run_epochs()."""
    cfg: RunConfig
    out: Path
    log: object
    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None
    task: object
    tok: Tokenizer
    net: torch.nn.Module
    train_feats: object
    dev_feats: object | None
    opt: torch.optim.Optimizer
    sched: object
    scaler: object
    ddp: torch.nn.Module
    loss_fn: object
    total_steps: int
    batches_per_epoch: int
    class_weights: torch.Tensor | None  # on the CPU, where loss_units counts the batches
    # step, epoch, batch (position in the epoch), best (dev metric kept) and best_step, loss, evaluated (the
    # step of the last evaluation), waited (evaluations without improvement), early_stop: saved in every checkpoint
    state: dict = field(default_factory=lambda: {"step": 0, "epoch": 0, "batch": 0, "best": None, "tokens": 0})
    last: list = field(default_factory=list)  # the last step's micro-batches, for loss_is_finite


def train(model: str, train: str, out: str, eval: str | None = None, resume: bool = False,
          overwrite: bool = False, allow_pickle: bool = False, log=None, **options) -> dict:
    """Fine-tune the model in directory `model` on file `train` for options["task"]; write it to `out`.

    Options are the fields of RunConfig. allow_pickle=True lets a model directory that has only
    pytorch_model.bin load (through torch.load(weights_only=True)); the output is safetensors either way.
    Returns the last evaluation's row of metrics.jsonl (dev metrics when `eval` is given)."""
    log = sys.stderr if log is None else log  # looked up per call: sys.stderr may have been replaced since import
    check_inputs_apart(Path(model), Path(out), [train, eval])
    # One run per directory, checked before anything else; under torchrun rank 0 holds it for all.
    with run_lock(out, log) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext():
        try:
            cfg = RunConfig(model=str(model), train=str(train), out=str(out), eval=eval and str(eval), **options)
        except TypeError as e:
            raise MiniftError(f"train(): {e}") from None
        cfg.check()
        check_out_dir(Path(cfg.out), resume, overwrite)
        run = setup(cfg, resume, allow_pickle, log)
        # SIGINT / SIGTERM: finish the current step, save a checkpoint, leave cleanly.
        stop = []
        handlers = {}
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            handlers = {s: signal.signal(s, lambda n, f: stop.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return run_epochs(run, stop)
        except MiniftError:
            if not resume and run.rank == 0:
                forget_if_nothing_kept(run.out)
            raise
        finally:
            gemm.pin(None)
            for s, h in handlers.items():  # whatever was there before, SIG_IGN included
                signal.signal(s, h)
            if run.world > 1:
                leave_process_group(run)


# ---- phase 1: set-up ----

def setup(cfg: RunConfig, resume: bool, allow_pickle: bool, log) -> Run:
    out = Path(cfg.out)
    device = pick_device(cfg.device)
    rank, world, device = start_distributed(device)
    if rank != 0:  # one process writes files and progress
        log = open(os.devnull, "w")
    amp_dtype = pick_precision(cfg.precision, device)
    # torch.compile did not pay on a 2-core CPU (bench/), where its first step costs half a minute.
    compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    torch.manual_seed(cfg.seed)

    task = tasks.get(cfg.task)
    tr = task.read(cfg.train, cfg)
    dv = task.read_eval(cfg.eval, cfg) if cfg.eval else None
    for ds in (tr, dv):
        if ds is not None and getattr(ds, "skipped_empty", 0):
            print(f"{ds.path}: skipped {ds.skipped_empty} example(s) with empty text", file=log)
    net, tok, note = load_model(task, cfg, task.label_names(tr), allow_pickle)
    train_feats = task.features(tr, tok, cfg.max_length, net.config, cfg, log)
    dev_feats = task.features(dv, tok, cfg.max_length, net.config, cfg, log) if dv else None
    settings = dataclasses.asdict(cfg)
    weights = set_loss_options(net, cfg, train_feats, settings)
    if resume:
        check_same_settings(out, settings)
    if note:  # after the data, whose errors come first and alone
        print(note, file=log)
    net.bert.checkpointing = cfg.checkpointing

    apply_mode(net, cfg.mode, cfg.lora_rank, cfg.lora_alpha)
    net.to(device).train()
    batches_per_epoch = math.ceil(len(train_feats.ids) / cfg.batch_size)
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)
    opt = make_optimizer(net, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    sched = make_schedule(opt, int(cfg.warmup * total_steps), total_steps, cfg.schedule, cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    # Under torchrun, DDP averages the gradients of the ranks' slices of each global batch.
    ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    run = Run(cfg, out, log, rank, world, device, amp_dtype, task, tok, net, train_feats, dev_feats, opt, sched,
              scaler, ddp, make_loss_fn(ddp, amp_dtype, device, compile), total_steps, batches_per_epoch,
              None if weights is None else weights.cpu())

    if resume:  # before the first line of output: a checkpoint that cannot be resumed is a plain refusal
        run.state = load_train_state(out / "checkpoint.safetensors", net, opt, sched, scaler)
    gemm.pin(run.state.get("gemm"))  # a resumed run: the matmul path its first part measured; else measure
    run.state["gemm"] = gemm.path_for(net)[0]
    if not resume and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:  # --overwrite: the old run goes whole, never half of it beside the new one
            (out / name).unlink(missing_ok=True)
        text = (json.dumps(settings, indent=2) + "\n").encode()
        atomic_write(out / "run.json", lambda f: f.write_bytes(text), len(text))
    print(f"minift: {cfg.mode} fine-tuning for {cfg.task}, {count_params(net, True):,} of {count_params(net):,} "
          f"parameters train; {len(train_feats.ids)} examples, {total_steps} steps of {cfg.batch_size * cfg.grad_accum}; "
          f"device {device}, precision {amp_dtype or 'fp32'}, compile {'on' if compile else 'off'}"
          + (f", {world} processes" if world > 1 else "")
          + (", class weights " + " ".join(f"{k}={v:.4g}" for k, v in settings["class_weight_values"].items())
             if weights is not None else "")
          + (f"; dev evaluation's {describe(net, amp_dtype)}" if dev_feats is not None else ""), file=log)
    return run


def set_loss_options(net, cfg: RunConfig, train_feats, settings: dict) -> torch.Tensor | None:
    """--class-weights and --label-smoothing onto the model's loss; the weights also into settings (run.json
    keeps them: a FILE may change, and balanced follows the data). Returns the weights."""
    net.label_smoothing = cfg.label_smoothing
    if cfg.class_weights is None:
        return None
    net.class_weights = class_weights(cfg.class_weights, cfg.task, train_feats, net.config.id2label)
    settings["class_weight_values"] = dict(zip(net.config.id2label.values(), net.class_weights.tolist()))
    return net.class_weights


def load_model(task, cfg: RunConfig, id2label, allow_pickle: bool):
    """The task's model from cfg.model, with a new head unless the checkpoint's head is this task's with
    these labels; its tokenizer; a note when a head was replaced. Sets cfg.max_length's default."""
    if not Path(cfg.model).is_dir():
        raise MiniftError(f"{cfg.model}: no such model directory")
    before, saved = BertConfig.read(Path(cfg.model) / "config.json")
    tok = Tokenizer.from_dir(cfg.model)
    before.check_tokenizer(tok, cfg.model)
    arch = bert_architecture(saved)
    new_head = (arch != task.model.ARCHITECTURE or (id2label is not None and before.id2label not in (None, id2label))
                or before.problem_type not in (None, task.problem_type))
    net = task.model.from_pretrained(cfg.model, allow_pickle=allow_pickle, id2label=id2label,
                                     problem_type=task.problem_type, new_head=new_head)
    note = (f"{cfg.model}: its head was for {arch} {before.id2label or ''}; starting a new one for {cfg.task} "
            f"{id2label or ''}") if new_head and arch != "BertModel" else None
    if new_head and arch == "BertModel" and getattr(task.model, "PRETRAINED_HEAD", False):
        note = (f"{cfg.model}: a bare encoder (architecture BertModel) without the pretrained head of "
                f"{task.model.ARCHITECTURE}; starting a new one for {cfg.task}")
    cfg.max_length = cfg.max_length or min(task.default_max_length, net.config.max_tokens)
    check_max_length(cfg.max_length, bool(cfg.text_pair_column), net.config.max_tokens)
    tok.model_max_length = cfg.max_length  # so that predict truncates as training did
    return net, tok, note


# ---- phase 2: the loop ----

def run_epochs(run: Run, stop: list) -> dict:
    """Step until total_steps or an early stop, evaluating after every epoch (and every --eval-every
    steps); a signal stops after the current step."""
    cfg, state = run.cfg, run.state
    progress = Progress(run)
    while state["step"] < run.total_steps and not state.get("early_stop"):
        lengths = [len(x) for x in run.train_feats.ids]
        batches = length_batches(lengths, cfg.batch_size, seed=cfg.seed + state["epoch"])
        if run.world > 1:  # a batch too small to give every rank an example is left out
            batches = [b for b in batches if len(b) >= run.world]
        while state["batch"] < len(batches) and state["step"] < run.total_steps:
            if state["batch"]:  # here, not after the step: a run stopped by a signal does it when resumed
                mid_epoch(run)
                if state.get("early_stop"):
                    break
            group = batches[state["batch"]: state["batch"] + cfg.grad_accum]
            stopping = one_step(run, group, stop)
            progress.update(group, lengths)
            if stopping:
                save_state(run)
                print(f"minift: stopped by signal at step {state['step']}; checkpoint saved. "
                      f"Continue with --resume.", file=run.log)
                if run.world > 1:
                    dist.barrier()  # rank 0 has saved: now all may leave
                return {"stopped_at": state["step"]} if run.rank == 0 else {}
        if state["batch"] >= len(batches):  # an epoch ended
            state["epoch"] += 1
            state["batch"] = 0
            evaluate_and_keep(run, state["epoch"])
            save_state(run)
    if state["batch"] and state.get("evaluated") != state["step"]:  # stopped by max_steps inside an epoch
        row = evaluate_and_keep(run, state["epoch"] + state["batch"] / run.batches_per_epoch)
        save_state(run)
    elif run.rank == 0:
        row = json.loads((run.out / "metrics.jsonl").read_text().splitlines()[-1])
    else:
        row = {}
    if run.world > 1:
        # Rank 0 may still be evaluating and saving; a rank that tears its process group down meanwhile
        # was seen to abort ("terminate called without an active exception"). Leave together.
        dist.barrier()
    return row


def mid_epoch(run: Run):
    """After a step inside an epoch: --eval-every evaluates and saves the checkpoint, --save-every saves it."""
    cfg, state = run.cfg, run.state
    if cfg.eval_every and state["step"] % cfg.eval_every == 0 and state.get("evaluated") != state["step"]:
        evaluate_and_keep(run, state["epoch"] + state["batch"] / run.batches_per_epoch)
        save_state(run)
    elif cfg.save_every and state["step"] % cfg.save_every == 0:
        save_state(run)


def one_step(run: Run, group: list[list[int]], stop: list) -> bool:
    """One optimizer step over the micro-batches `group`; returns whether to stop after it: a signal came
    (into `stop`) before the step ended, on any rank."""
    state = run.state
    micro, units = [], []
    for idx in group:
        b = run.task.batch(run.train_feats, idx[run.rank::run.world], run.tok.pad_id)  # this process's slice
        units.append(loss_units(b, run.class_weights))
        micro.append({k: v.to(run.device, non_blocking=True) for k, v in b.items()})
    # Each micro-batch's loss weighs by what it holds of the global batch: a mean over tokens (tag, mlm)
    # or windows (qa) comes out as that of one big batch, however the micro-batches and ranks split it.
    shares = accumulation_shares(units, run.world, run.device)
    loss, norm, applied = train_step(run.loss_fn, run.opt, run.sched, run.scaler, micro, run.cfg.max_grad_norm,
                                     shares, run.ddp.no_sync if run.world > 1 else None)
    run.last = micro
    stopping = bool(stop)
    if run.world > 1:
        # One all-reduce per step: the global batch's loss for the log, and whether any rank was
        # signalled. Every rank stops after the same step because each decides on the reduced flag
        # alone: a signal landing after the all-reduce waits for the next step.
        both = torch.stack([loss.float(), torch.tensor(float(stopping), device=loss.device)])
        dist.all_reduce(both)
        loss, stopping = both[0] / run.world, bool(both[1] > 0)
    state["batch"] += len(group)
    state["step"] += 1
    state["bad"] = 0 if applied else state.get("bad", 0) + 1
    if not applied and not_finite(run.net):  # the step before went wrong: its update made the weights so
        diverged(run, f"the weights are no longer finite ({not_finite(run.net)}); the loss is {float(loss):.4g}")
    if state["bad"] >= 5:
        diverged(run, f"the loss or gradients were not finite for {state['bad']} steps in a row "
                      f"(last loss {float(loss):.4g})")
    state["loss"] = float(loss)
    return stopping


def diverged(run: Run, why: str):
    """Stop a run whose numbers are lost, saying where the last model that was still good is, if anywhere."""
    kept = (run.out / "model.safetensors").exists() and (run.out / "run.json").exists()
    raise MiniftError(f"training stopped at step {run.state['step']}: {why}. Lower --lr, or use --precision "
                      "fp32/bf16. " + (f"The last good model is in {run.out}." if kept else
                                       f"No model was kept in {run.out}: none was good yet."))


def not_finite(net) -> str | None:
    """The name of the first parameter holding NaN or infinity, or None."""
    return next((name for name, p in net.named_parameters() if not torch.isfinite(p).all()), None)


class Progress:
    """A progress line at most every 2 s: step, loss, learning rate, throughput, time left."""

    def __init__(self, run: Run):
        self.run, self.t0, self.last, self.seqs, self.toks = run, time.time(), 0.0, 0, 0
        self.start_step = run.state["step"]

    def update(self, group, lengths):
        run, state = self.run, self.run.state
        self.seqs += sum(len(g) for g in group)
        self.toks += sum(lengths[i] for idx in group for i in idx)
        if time.time() - self.last > 2 or state["step"] == run.total_steps:
            el = time.time() - self.t0
            eta = el / (state["step"] - self.start_step) * (run.total_steps - state["step"])
            print(f"step {state['step']}/{run.total_steps} epoch {state['epoch'] + 1} loss {state['loss']:.4f} "
                  f"lr {run.sched.get_last_lr()[0]:.2e} {self.seqs / el:.1f} seq/s {self.toks / el:,.0f} tok/s "
                  f"ETA {eta:.0f}s", file=run.log)
            self.last = time.time()


# ---- phase 3: evaluation and keeping the best ----

def evaluate_and_keep(run: Run, epoch_done: float) -> dict:
    """Score the dev set (if any), save the model when it is the best so far, count the evaluations
    without improvement (--patience), append a metrics.jsonl row. A model whose numbers are lost is
    never kept; at the end of the run that fails it (diverged)."""
    state = run.state
    state["evaluated"] = state["step"]
    if run.world > 1:
        dist.barrier()  # every rank has finished the step; only rank 0 evaluates and writes
    row = score_and_keep(run, epoch_done) if run.rank == 0 else {}
    if run.world > 1 and run.cfg.patience:  # every rank stops with rank 0
        flag = torch.tensor([float(bool(state.get("early_stop")))], device=run.device)
        dist.broadcast(flag, 0)
        state["early_stop"] = bool(flag.item())
    return row


def score_and_keep(run: Run, epoch_done: float) -> dict:
    cfg, state = run.cfg, run.state
    loss = state.get("loss")  # NaN after a skipped step: null in JSON, which has no NaN
    row = {"step": state["step"], "epoch": round(epoch_done, 3),
           "train_loss": loss if loss is not None and math.isfinite(loss) else None}
    if not_finite(run.net):
        diverged(run, f"the weights are no longer finite ({not_finite(run.net)})")
    last = state["step"] >= run.total_steps
    # A skipped last step is kept past only if the model's loss on that batch is finite now (a passing fault).
    better = not (state.get("bad") and not loss_is_finite(run))
    if not better and last:
        diverged(run, f"the loss of the model on its last training batch is not finite (its last {state['bad']} "
                      "step(s) were skipped)")
    if run.dev_feats is not None:
        outputs = run_model(run.net, run.task, run.dev_feats, run.tok.pad_id, 2 * cfg.batch_size, run.device,
                            run.amp_dtype)
        row.update({f"dev_{k}": v for k, v in run.task.score(outputs, run.dev_feats).items()})
        score, best = row[f"dev_{cfg.metric}"], state["best"]
        better = better and is_better(score, best, cfg.metric in LOWER_IS_BETTER)
        gain = None if best is None else (best - score if cfg.metric in LOWER_IS_BETTER else score - best)
        state["waited"] = 0 if better and (gain is None or gain > cfg.min_delta) else state.get("waited", 0) + 1
    if better:
        state["best"], state["best_step"] = row.get(f"dev_{cfg.metric}"), state["step"]
        save_model(run)
    row["kept"] = better
    if cfg.patience and state.get("waited", 0) >= cfg.patience:
        state["early_stop"] = True
        row["early_stop"] = {"best_step": state.get("best_step"), f"best_dev_{cfg.metric}": state["best"]}
    append_line(run.out / "metrics.jsonl", json_line(row))  # whole lines only, even on a full disk
    print("  eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                               if k != "early_stop"), file=run.log)
    if (last or state.get("early_stop")) and run.dev_feats is not None and state["best"] is None:
        diverged(run, f"no evaluation gave a finite dev_{cfg.metric}")
    if state.get("early_stop"):
        print(f"minift: early stop at step {state['step']}: dev {cfg.metric} did not improve by more than "
              f"{cfg.min_delta} in {cfg.patience} evaluations; kept the model of step {state['best_step']}, "
              f"dev {cfg.metric} {state['best']:.4f}", file=run.log)
    return row


def is_better(score, best, lower: bool) -> bool:
    """Only a finite score is ever better: than none, or than the best so far."""
    finite = isinstance(score, (int, float)) and math.isfinite(score)
    return finite and (best is None or (score < best if lower else score > best))


def loss_is_finite(run: Run) -> bool:
    """Whether the model's loss on the last step's micro-batches is finite (forward only, this process;
    in eval mode, so that no dropout draws from the random state a resumed run must repeat)."""
    run.net.eval()
    try:
        with torch.no_grad(), torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32,
                                             enabled=run.amp_dtype is not None):
            return all(bool(torch.isfinite(run.net(**b)[1])) for b in run.last)
    finally:
        run.net.train()


# ---- phase 4: checkpointing ----

def save_model(run: Run):
    if run.rank == 0:
        keep = merge_lora(copy.deepcopy(run.net)) if run.cfg.mode == "lora" else run.net
        keep.save_pretrained(run.out, run.tok)


def save_state(run: Run):
    if run.rank == 0:
        save_train_state(run.out / "checkpoint.safetensors", run.net, run.opt, run.sched, run.scaler, run.state)


# ---- several processes (torchrun) ----

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


def leave_process_group(run: Run):
    # Freeing a gloo process group joins its worker threads while holding the GIL, and a worker freeing
    # a finished collective's tensors needs the GIL: freed at the wrong moment, as when the DDP wrapper
    # (which holds the group) went with train()'s frame, the process hung (seen about once in 50 runs).
    # So free the wrapper now, let the workers finish with the GIL released, and only then free the group.
    run.ddp = run.loss_fn = None
    time.sleep(0.1)
    dist.destroy_process_group()
