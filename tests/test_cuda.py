"""The GPU path, for a machine with CUDA: `pytest -m cuda` (bench/gpu.sh runs it). Skipped elsewhere.

- fp32 on the GPU against the CPU (TF32 off): logits within 1e-5, gradients within 1e-4.
- bf16 and fp16 (with GradScaler) steps against the fp32 step: the updates point the same way.
- torch.compile with dynamic shapes (what --compile auto does on a GPU): no new graph for a new length.
- Host syncs inside a step: only the documented ones (Packing: the real-token count and the nonzero of
  the mask; train_step: whether the gradient norm is finite).
- DDP with NCCL on one process: the same update as without DDP.
"""
import os
import warnings

import pytest
import torch

from minift import BertClassifier
from minift.train_step import make_loss_fn, make_optimizer, make_schedule, train_step
from test_train import make_batches, no_dropout

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def to(batch, dev):
    return {k: v.to(dev) for k, v in batch.items()}


def one_step(tiny_dir, dev, amp=None, scaler=None, wrap=lambda m: m):
    """One update of the dropout-free tiny classifier; returns (loss, norm, update as one vector)."""
    net = no_dropout(BertClassifier.from_pretrained(tiny_dir)).to(dev)
    start = torch.cat([p.detach().flatten() for p in net.parameters()])
    opt = make_optimizer(net, 1e-3, 0.01)
    loss_fn = make_loss_fn(wrap(net), amp, dev, compile=False)
    micro = [to(b, dev) for b in make_batches(tiny_dir, seed=5)]
    loss, norm, applied = train_step(loss_fn, opt, make_schedule(opt, 0, 10), scaler, micro, 1.0)
    assert applied
    return loss.item(), norm.item(), (torch.cat([p.detach().flatten() for p in net.parameters()]) - start).cpu()


def test_fp32_matches_cpu(minilm_dir, tiny_dir):
    net = BertClassifier.from_pretrained(minilm_dir, id2label={0: "a", 1: "b"}).eval()
    b = make_batches(tiny_dir, seed=1, n_micro=1, size=8)[0]  # the two vocabularies share [CLS] and word ids
    with torch.no_grad():
        cpu = net(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        gpu = net.to(GPU)(*(b[k].to(GPU) for k in ("input_ids", "attention_mask", "token_type_ids")))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    (l_c, n_c, u_c), (l_g, n_g, u_g) = one_step(tiny_dir, CPU), one_step(tiny_dir, GPU)
    assert l_g == pytest.approx(l_c, rel=1e-5) and n_g == pytest.approx(n_c, rel=1e-4)
    torch.testing.assert_close(u_g, u_c, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_step_close_to_fp32(tiny_dir, amp):
    if amp == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    l32, n32, u32 = one_step(tiny_dir, GPU)
    l16, n16, u16 = one_step(tiny_dir, GPU, amp, scaler)
    assert l16 == pytest.approx(l32, abs=1e-2) and n16 == pytest.approx(n32, rel=5e-2)
    assert torch.nn.functional.cosine_similarity(u16, u32, dim=0) > 0.99


def test_compile_adds_no_graph_for_new_lengths(tiny_dir):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    net = BertClassifier.from_pretrained(tiny_dir).to(GPU).train()
    loss_fn = make_loss_fn(net, torch.bfloat16 if torch.cuda.is_bf16_supported() else None, GPU, compile=True)
    opt = make_optimizer(net, 1e-4, 0.01)
    sched = make_schedule(opt, 0, 100)
    graphs = None
    for T in (40, 64, 96, 128):  # no length equal to the batch size (duck sizing would tie them)
        b = {"input_ids": torch.randint(1000, 1100, (12, T), device=GPU),
             "attention_mask": torch.ones(12, T, dtype=torch.long, device=GPU),
             "token_type_ids": torch.zeros(12, T, dtype=torch.long, device=GPU),
             "labels": torch.randint(0, 3, (12,), device=GPU)}
        b["attention_mask"][::2, T // 2:] = 0
        train_step(loss_fn, opt, sched, None, [b], 1.0)
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs


def test_host_syncs_in_a_step_are_the_documented_ones(tiny_dir):
    """set_sync_debug_mode warns at every host sync: Packing's int() of the real-token count and its
    nonzero(), and train_step's isfinite() of the norm; nothing else."""
    net = BertClassifier.from_pretrained(tiny_dir).to(GPU).train()
    opt = make_optimizer(net, 1e-4, 0.01)
    sched = make_schedule(opt, 0, 100)
    loss_fn = make_loss_fn(net, None, GPU, compile=False)
    micro = [to(b, GPU) for b in make_batches(tiny_dir, seed=2, n_micro=1)]
    train_step(loss_fn, opt, sched, None, micro, 1.0)  # warm-up: lazy initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_step(loss_fn, opt, sched, None, micro, 1.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 3, syncs


def test_ddp_nccl_one_process_matches_plain(tiny_dir, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        ddp = one_step(tiny_dir, GPU, wrap=lambda m: DistributedDataParallel(m, device_ids=[0]))
    finally:
        dist.destroy_process_group()
    plain = one_step(tiny_dir, GPU)
    assert ddp[0] == pytest.approx(plain[0], rel=1e-6)
    torch.testing.assert_close(ddp[2], plain[2], rtol=1e-5, atol=1e-7)
