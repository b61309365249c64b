"""The training controls: schedules, class weights, label smoothing, evaluation by steps, early stopping,
macro-F1, gradient checkpointing, exact accumulation, layer decay.

Tolerances (stated per test):
- schedules vs transformers.get_scheduler: rel 1e-12 (the same float formulas).
- losses vs a hand computation or F.cross_entropy: rel 1e-6 (fp32 sums in another order).
- gradients with checkpointing, or accumulated vs one big batch: atol 1e-6 (the same ops, or sums in
  another order, on gradients of order 1e-2).
- resume: bit-identical (torch.equal), as the same ops run in the same order on the same state.
"""
import io
import json
import math
import signal

import pytest
import torch
import torch.nn as nn

from minift.errors import MiniftError
from minift.train_loop import train
from minift.train_step import make_optimizer, make_schedule
from conftest import interrupt_at
from test_train import FAST, rows, tensors, write_csv


# ---- schedules ----

@pytest.mark.parametrize("kind, theirs, extra", [
    ("linear", "linear", {}),
    ("cosine", "cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine", "cosine", {}),
    ("constant", "constant_with_warmup", {}),
])
@pytest.mark.parametrize("warmup", [0, 3])
def test_schedule_matches_transformers_one_step_ahead(kind, theirs, extra, warmup):
    """Ours at step s equals transformers' at step s + 1 with one more warmup and one more training step:
    transformers' first step, at rate 0, is the one left out."""
    transformers = pytest.importorskip("transformers")
    total, lr = 20, 1e-3
    ours_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    theirs_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    ours = make_schedule(ours_opt, warmup, total, kind, extra.get("min_lr_rate", 0.0))
    ref = transformers.get_scheduler(theirs, theirs_opt, num_warmup_steps=warmup + 1, num_training_steps=total + 1,
                                     scheduler_specific_kwargs=extra or None)
    theirs_opt.step()
    ref.step()  # transformers' step 0, at rate 0
    seen = []
    for step in range(total):
        seen.append(ours.get_last_lr()[0])
        assert seen[-1] == pytest.approx(ref.get_last_lr()[0], rel=1e-12, abs=1e-15), (kind, step)
        ours_opt.step(), theirs_opt.step()
        ours.step(), ref.step()
    assert seen[0] == pytest.approx(lr / (warmup + 1)) and max(seen) == pytest.approx(lr)
    if kind == "constant":
        assert seen[-1] == lr
    else:  # decays: to the floor at the last step (total), which the last update (total - 1) nearly reaches
        assert seen[-1] < 0.2 * lr


def test_schedule_options_refused(tiny_dir, tmp_path):
    tr = write_csv(tmp_path / "train.csv", 6)
    for opts, flag in (({"schedule": "step"}, "--schedule 'step'"), ({"min_lr_ratio": 0.1}, "--min-lr-ratio 0.1"),
                       ({"schedule": "cosine", "min_lr_ratio": 1.5}, "--min-lr-ratio 1.5")):
        with pytest.raises(MiniftError, match=flag):
            train(tiny_dir, tr, tmp_path / "out", log=io.StringIO(), **FAST, **opts)
