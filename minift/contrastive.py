"""The losses that train sentence embeddings, and the gradient cache that lets them see large batches.

Shapes: k columns (anchor, positive, then any hard negatives), B examples, H embedding width.
  ranking_loss  multiple-negatives ranking (InfoNCE): each anchor's positive against every positive and hard
                negative of the batch, on cosine similarity x scale; symmetric adds each positive against every
                anchor. A candidate whose text is the anchor's own positive's text, in another row, is no negative:
                it is left out of the softmax (masked), as is, symmetric, another row's copy of the anchor.
  cosent_loss   CoSENT for scored pairs: log(1 + sum over pairs (i, j) scored s_i > s_j of e^(scale (cos_j - cos_i))).
  matryoshka    either loss summed over leading slices of the embedding, so that a truncated vector still works.
sentence-transformers' MultipleNegativesRankingLoss, CoSENTLoss and MatryoshkaLoss compute the same
(tests/test_embed.py).

cached_loss is the gradient cache (Gao et al., 2021): the loss over a batch too large to hold its activations
is computed from embeddings made without gradients, mini-batch by mini-batch; its gradient with respect to those
embeddings is then pushed through the encoder again, one mini-batch at a time, re-run with the same dropout.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossSpec:
    scale: float = 20.0
    symmetric: bool = False
    dims: tuple[int, ...] = ()  # Matryoshka: the leading dimensions the loss is summed over; () for all only
    mini_batch: int | None = None  # gradient cache: texts per encoder pass


def cosine(a, b):  # [n, H], [m, H] -> [n, m]
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def ranking_loss(emb, ids, scale: float, symmetric: bool = False):
    """emb [k, B, H] (k >= 2); ids [k, B]: equal ids are equal texts."""
    k, B, _ = emb.shape
    rows = torch.arange(B, device=emb.device)
    docs, doc_ids = emb[1:].reshape(-1, emb.shape[-1]), ids[1:].reshape(-1)  # positives first, then negatives
    # A candidate equal to row i's positive but not that positive itself would be a false negative.
    cols = torch.arange(len(doc_ids), device=emb.device)
    same = (doc_ids[None, :] == ids[1][:, None]) & (cols[None, :] != rows[:, None])
    logits = (scale * cosine(emb[0], docs)).masked_fill(same, float("-inf"))  # [B, (k-1) B]
    log_z = torch.logsumexp(logits, 1)
    if symmetric:  # each positive against every anchor: one softmax per direction, averaged
        same = (ids[0][None, :] == ids[0][:, None]) & (rows[None, :] != rows[:, None])
        back = (scale * cosine(emb[1], emb[0])).masked_fill(same, float("-inf"))  # [B, B]
        log_z = (log_z + torch.logsumexp(back, 1)) / 2
    return -(logits[rows, rows] - log_z).mean()


def cosent_loss(emb, scores, scale: float):
    """emb [2, B, H]; scores [B]: any range, only their order counts."""
    s = scale * (F.normalize(emb[0], dim=-1) * F.normalize(emb[1], dim=-1)).sum(-1)  # [B]
    higher = scores[:, None] > scores[None, :]
    diff = (s[None, :] - s[:, None]).masked_fill(~higher, float("-inf"))  # [i, j]: s_j - s_i where i scores higher
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), 0)


def embedding_loss(emb, targets, spec: LossSpec):
    """The loss of one batch: emb [k, B, H]; targets: text ids [k, B] (long) or scores [B] (float).
    In fp32 at least, autocast or not: similarities x 20 in bf16 would be off by some 0.1."""
    emb = emb.to(torch.promote_types(emb.dtype, torch.float32))

    def one(e):
        if targets.is_floating_point():
            return cosent_loss(e, targets, spec.scale)
        return ranking_loss(e, targets, spec.scale, spec.symmetric)
    with torch.autocast(emb.device.type, enabled=False):
        return sum(one(emb[..., :d]) for d in spec.dims) if spec.dims else one(emb)


def cached_loss(embed, inputs: dict, shape, targets, spec: LossSpec):
    """The loss of embed(**inputs) (rows: k x B texts) as embedding_loss computes it, with activations for
    spec.mini_batch texts at a time alone: returns a loss whose backward() re-runs the encoder mini-batch by
    mini-batch with the loss's gradient with respect to the embeddings (the hook below)."""
    n, device = len(inputs["input_ids"]), inputs["input_ids"].device
    chunks = [slice(i, i + spec.mini_batch) for i in range(0, n, spec.mini_batch)]
    cuda = [device] if device.type == "cuda" else []
    amp = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
    states, parts = [], []
    with torch.no_grad():
        for c in chunks:
            states.append((torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]))
            parts.append(embed(**{k: v[c] for k, v in inputs.items()}))
    emb = torch.cat(parts).detach().requires_grad_()
    with torch.enable_grad():
        loss = embedding_loss(emb.view(*shape, -1), targets, spec)
        (grad,) = torch.autograd.grad(loss, emb)

    def replay(g):  # g: d(outer loss)/d(this loss), e.g. 1 / micro-batches, or a GradScaler's scale
        # A hook runs inside backward(), where gradients are off unless asked for.
        with torch.random.fork_rng(devices=cuda), torch.enable_grad(), \
                torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            for c, (cpu_state, cuda_states) in zip(chunks, states):  # the same dropout masks as above
                torch.set_rng_state(cpu_state)
                for d, s in zip(cuda, cuda_states):
                    torch.cuda.set_rng_state(s, d)
                torch.autograd.backward(embed(**{k: v[c] for k, v in inputs.items()}), grad[c] * g)
    out = loss.detach().requires_grad_()
    out.register_hook(replay)
    return out
