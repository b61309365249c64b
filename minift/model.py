"""The BERT encoder (Devlin et al., 2019) and its descendants, from scratch. The task heads on top are in
minift/tasks/.

Shapes: B batch, T tokens, N real (non-padding) tokens of the batch, H hidden, E embedding width,
nh heads, hd = H // nh head size, I intermediate, R >= N packed rows. Between attentions, activations
are [R, H]: padding costs nothing there (see Packing).
BERT: post-LayerNorm residual blocks, absolute position embeddings, exactly as the original BERT
and Hugging Face's BertModel compute them, so pretrained checkpoints load unchanged (minift/checkpoint.py
maps the names). The descendants differ in a few places, each switched by a BertConfig field or a named
switch of the family (cfg.family.rotary, ...: minift/families.py):
  RoBERTa, XLM-R, CamemBERT  positions count real tokens from pad_token_id + 1 (Bert.encode)
  DistilBERT                 no token types (Embeddings)
  ELECTRA                    embeddings of width E < H, projected up (Embeddings)
  ModernBERT                 pre-LayerNorm without biases, rotary positions, GeGLU, sliding-window
                             attention on some layers, a final LayerNorm (Layer, Bert.encode)
"""
import contextlib
import functools
import platform

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from minift.config import BertConfig

ACT = {
    "gelu": F.gelu,  # the exact, erf-based GELU of the original BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,  # sequence heads only (BERT's pooler, RoBERTa's head)
}


def dropout(x, p: float):
    """Inverted dropout. The keep-mask comes from 16-bit slices of 64-bit random integers: one draw of
    the generator serves four elements, which on CPU makes forward and backward 2-3x faster than
    F.dropout's bernoulli_ (bench/kernel_choices.py). Each slice keeps 15 random bits (random_() leaves the top
    bit of an int64 at 0), so p is applied in steps of 1/32768."""
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_().view(torch.int16)[:n]
    keep = (bits.view(x.shape) & 0x7FFF) >= round(p * 32768)
    return x * (keep * (1.0 / (1.0 - p))).to(x.dtype)


class Dropout(nn.Dropout):
    def forward(self, x):
        return dropout(x, self.p) if self.training and self.p > 0 else x


# From which query length SDPA's fused CPU kernel beats the written-out formula without dropout, by CPU class
# and dtype (bench/kernel_choices.py; its tables in docs/measurements.md). The written-out scores [B, nh, Tq, T]
# grow with T^2 and fall out of cache as sequences grow; the fused kernel never stores them. A single [CLS]
# query (Tq = 1) is written out except on AMX. Training with dropout always writes it out on a CPU: SDPA has
# no fused CPU kernel with dropout.
SDPA_CPU_INFERENCE = {"AMX": {torch.float32: 1, torch.bfloat16: 1},
                      "AVX-512+bf16": {torch.float32: 128, torch.bfloat16: 192},
                      "AVX-512": {torch.float32: 128, torch.bfloat16: 128},
                      "AVX2-only": {torch.float32: 128, torch.bfloat16: 1}}  # bf16 emulated: written out is slow


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512f, amx_int8, ...) from /proc/cpuinfo, read once; none where there
    is no /proc/cpuinfo. Where PyTorch's own kernels are held below AVX-512 (ATEN_CPU_CAPABILITY=avx2), its
    AVX-512 and AMX flags are left out: minift then decides as it would on a CPU without them."""
    try:
        flags = frozenset(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return frozenset()
    if "avx512f" in flags and torch.backends.cpu.get_cpu_capability() != "AVX512":
        flags = frozenset(f for f in flags if not f.startswith(("avx512", "amx")))
    return flags


def cpu_class() -> str:
    """AMX, AVX-512+bf16, AVX-512 or AVX2-only (or the machine's name), from the CPU's flags."""
    flags = cpu_flags()
    return next((name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512+bf16"), ("avx512f", "AVX-512"),
                                         ("avx2", "AVX2-only")) if flag in flags), platform.machine())


CPU_CLASS = cpu_class()


def attention(q, k, v, mask, p_drop: float, sdpa: bool | None = None):
    """softmax(q k^T / sqrt(hd) + mask) v with dropout on the probabilities.
    q [B, nh, Tq, hd]; k, v [B, nh, T, hd]; mask [B or 1, 1, 1 or Tq, T] bool (True = attend) or None
    -> [B, nh, Tq, hd].

    GPUs take SDPA's fused kernels. On CPU the same formula written out is faster for BERT's
    short sequences in training: SDPA's fused CPU kernel has no dropout, and its fallback does more
    passes over the [B, nh, Tq, T] scores (bench/kernel_choices.py; docs/measurements.md). In inference
    the choice is by CPU class, dtype and query length (SDPA_CPU_INFERENCE); sdpa=True or False forces a path.
    tests/ check the two paths agree."""
    if sdpa is None:
        sdpa = q.is_cuda or (p_drop == 0 and q.size(2) >= SDPA_CPU_INFERENCE.get(CPU_CLASS, {}).get(q.dtype, 1 << 62))
    if sdpa:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
    B, nh, Tq, hd = q.shape
    T = k.size(2)
    if mask is None:
        s = (q * hd ** -0.5) @ k.transpose(-2, -1)  # [B, nh, Tq, T]
    else:  # scale, matmul and the additive mask (padded keys get the most negative number) in one baddbmm
        bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, torch.finfo(q.dtype).min)
        bias = bias.expand(B, nh, -1, T).reshape(B * nh, -1, T)  # a view when the mask is per key only
        s = torch.baddbmm(bias, q.reshape(B * nh, Tq, hd), k.reshape(B * nh, T, hd).transpose(1, 2),
                          alpha=hd ** -0.5).view(B, nh, Tq, T)
    # Softmax in fp32 even when s is bf16: more exact, at about the bf16 kernel's speed on CPU
    # (bench/kernel_choices.py: from 0.8x to 2x of it, run to run).
    probs = torch.softmax(s, dim=-1, dtype=torch.float32).to(v.dtype)
    return (dropout(probs, p_drop) if p_drop > 0 else probs) @ v


def local_attention(q, k, v, mask, w: int, p_drop: float):
    """attention() over the keys at most w positions from each query (ModernBERT's sliding window), in blocks:
    each block of w queries sees the 3w keys of its own block and the two beside it, so that scores and mask
    take O(T * w) memory, not O(T * T). q, k, v [B, nh, T, hd]; mask [B, 1, 1, T] bool (True = real token) or
    None -> [B, nh, T, hd]."""
    B, nh, T, hd = q.shape
    nb = -(-T // w)  # blocks of w queries; the last one padded
    pad = nb * w - T

    def keys(x, dim):  # pad w before and w + pad after, then the 3w keys of each block: [..., nb, ..., 3w]
        return F.pad(x, (0, 0) * (x.dim() - 1 - dim) + (w, w + pad)).unfold(dim, 3 * w, w)
    qb = F.pad(q, (0, 0, 0, pad)).reshape(B, nh, nb, w, hd).transpose(1, 2).reshape(B * nb, nh, w, hd)
    kb, vb = (keys(x, 2).permute(0, 2, 1, 4, 3).reshape(B * nb, nh, 3 * w, hd) for x in (k, v))
    real = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask.view(B, T)
    r, c = torch.arange(w, device=q.device), torch.arange(3 * w, device=q.device)
    band = (c[None, :] - w - r[:, None]).abs() <= w  # [w, 3w]: query r of a block, key c of its three
    # Padding queries attend to their whole band (finite, unread), so that no row is masked entirely.
    # [B, nb, 3w] keys that are real tokens | [B, nb, w] queries that are not -> [B * nb, 1, w, 3w]
    see = keys(real, 1)[:, :, None, :] | ~F.pad(real, (0, pad)).view(B, nb, w, 1)
    y = attention(qb, kb, vb, (band & see).view(B * nb, 1, w, 3 * w), p_drop)  # [B * nb, nh, w, hd]
    return y.reshape(B, nb, nh, w, hd).transpose(1, 2).reshape(B, nh, nb * w, hd)[:, :, :T]


class Packing:
    """Where the real tokens of a padded [B, T] batch sit.

    The model computes on the N real tokens only, packed into rows of an [N, ...] tensor, so
    that embeddings, projections, feed-forward and LayerNorm cost what the real tokens cost,
    however much padding a batch carries. Attention alone needs the [B, T] layout, to keep
    the sequences apart: pad() and unpad() move between the two layouts.

    With bucket=True the encoder computes on R >= N rows (N rounded up to 4 significant bits: at most
    1/8 more): bf16 matmuls on a CPU go to oneDNN, which compiles and caches kernels for every new row
    count (milliseconds and megabytes each), and with buckets a long run meets a few dozen row counts
    instead of thousands. The R - N extra rows repeat the first token; attention never reads them as
    keys (they are not in the [B, T] layout) and they are dropped before any head sees them."""

    # Which tokens are real is data, not shape: torch.compile cannot trace it into a graph. It runs
    # eagerly here, and the compiled graph takes the packing as input (N as a symbolic size).
    @torch.compiler.disable
    def __init__(self, input_ids, attention_mask=None, bucket: bool = False):  # [B, T]; 1 = real token
        B, T = self.B, self.T = input_ids.shape
        m = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        # A row with no real token would softmax over nothing and give NaN; let it attend
        # everywhere instead: its output is meaningless but finite, and nobody reads it.
        m = m | ~m.any(dim=1, keepdim=True)
        lengths = m.sum(dim=1)  # [B]
        self.n = int(lengths.sum())  # N
        full = self.n == B * T  # no padding: both layouts are the same memory, nothing to copy
        self.mask = None if full else m[:, None, None, :]  # [B, 1, 1, T], broadcast over heads and queries
        idx = None if full else m.flatten().nonzero().squeeze(1)  # [N] places of the real tokens in [B*T]
        if idx is not None and bucket:
            idx = torch.cat([idx, idx.new_zeros(rows_bucket(self.n) - self.n)])  # [R]
        self.idx = idx
        # Each sequence's [CLS] is its first real token (position 0 with the usual right padding).
        self.first = lengths.cumsum(0) - lengths  # [B] rows of the [CLS] tokens in the packed [N, ...]

    def rows(self, x):  # [B, T, ...] -> [R, ...]: what the encoder computes on
        x = x.flatten(0, 1)
        return x if self.idx is None else x[self.idx]

    def unpad(self, x):  # [B, T, ...] -> [N, ...]: the real tokens
        return self.rows(x)[:self.n]

    def pad(self, x):  # [N or R, C] -> [B, T, C], zeros where the padding is
        if self.idx is not None:
            x = x.new_zeros(self.B * self.T, x.size(1)).index_copy(0, self.idx[:self.n], x[:self.n])
        return x.view(self.B, self.T, -1)


def rows_bucket(n: int) -> int:
    """n rounded up to its 4 leading bits: 1000 -> 1024, 1100 -> 1152; 8 buckets per doubling."""
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        E = cfg.embedding_size or cfg.hidden_size
        # padding_idx keeps the [PAD] row's gradient at zero, as Hugging Face's BERT does.
        self.word = nn.Embedding(cfg.vocab_size, E, padding_idx=cfg.pad_token_id)
        # None: rotary positions instead
        self.position = nn.Embedding(cfg.max_position_embeddings, E) if cfg.family.position_table else None
        self.token_type = nn.Embedding(cfg.type_vocab_size, E) if cfg.type_vocab_size else None
        self.ln = nn.LayerNorm(E, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.drop = Dropout(cfg.hidden_dropout_prob)
        self.project = nn.Linear(E, cfg.hidden_size) if E != cfg.hidden_size else None

    def forward(self, input_ids, token_type_ids, positions):  # [N] each -> [N, H]
        x = self.word(input_ids)  # [N, E]
        if self.token_type is not None:
            x = x + self.token_type(token_type_ids)
        if self.position is not None:
            x = x + self.position(positions)
        x = self.drop(self.ln(x))
        return x if self.project is None else self.project(x)


def rotary(cfg: BertConfig, theta: float, positions):
    """cos and sin [N, hd] of the rotation angles position * theta^(-2i/hd), each frequency used twice
    (the rotate-half layout of RoFormer and ModernBERT); fp32."""
    hd = cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float, device=positions.device) / hd))
    angles = positions[:, None].float() * inv_freq  # [N, hd/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):  # x [N, nh, hd] rotated by the angles of its token, in fp32 -> x's dtype
    x1, x2 = x.float().chunk(2, dim=-1)
    return (x.float() * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig, local: bool = False):
        super().__init__()
        self.nh = cfg.num_attention_heads
        self.window = cfg.local_attention // 2 if local else None  # keys at most this far from the query
        # One [3H, H] projection instead of three: one matmul reads x once.
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.p_drop = cfg.attention_probs_dropout_prob

    def forward(self, x, pack, mask, rope=None, cls=None):
        """x [R, H] the packed rows (the real tokens first); pack: Packing; mask [B, 1, 1, T] (True = real token)
        or None; rope: (cos, sin) [R, hd] to rotate queries and keys by. -> [R, H], or [B, H] given cls (the
        rows of the [CLS] tokens)."""
        B, T, H = pack.B, pack.T, x.size(1)
        qkv = self.qkv(x)  # [N, 3H]
        if rope is not None:  # rotated where they are packed: each real token once
            q, k, v = qkv.view(-1, 3, self.nh, H // self.nh).unbind(1)  # [N, nh, hd] each
            qkv = torch.cat([rotate(q, *rope), rotate(k, *rope), v], dim=1).view(-1, 3 * H)
        q, k, v = pack.pad(qkv).view(B, T, 3, self.nh, H // self.nh).permute(2, 0, 3, 1, 4)  # 3 x [B, nh, T, hd]
        if cls is not None:  # one query per sequence, its [CLS] token (at position 0): [B, nh, 1, hd]
            q = qkv[cls, :H].view(B, 1, self.nh, H // self.nh).transpose(1, 2)
            if self.window is not None:  # which sees the keys within the window of position 0 alone
                k, v = k[:, :, :self.window + 1], v[:, :, :self.window + 1]
                mask = mask if mask is None else mask[..., :self.window + 1]
        p = self.p_drop if self.training else 0.0
        if self.window is not None and k.size(2) > self.window + 1:  # a window shorter than the sequence
            y = local_attention(q, k, v, mask, self.window, p)  # [B, nh, T, hd]
        else:
            y = attention(q, k, v, mask, p)  # [B, nh, T or 1, hd]
        y = y.transpose(1, 2).reshape(B, -1, H)  # [B, T or 1, H]
        return self.proj(pack.rows(y) if cls is None else y.view(B, H))


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig, first: bool = False, local: bool = False):
        super().__init__()
        H, I, bias = cfg.hidden_size, cfg.intermediate_size, cfg.bias
        self.pre_norm, self.geglu = cfg.family.pre_norm, cfg.family.geglu
        self.attn = SelfAttention(cfg, local)
        # Pre-LN: the embeddings' LayerNorm is the first layer's input norm already.
        self.ln1 = None if self.pre_norm and first else nn.LayerNorm(H, eps=cfg.layer_norm_eps, bias=bias)
        self.fc = nn.Linear(H, 2 * I if self.geglu else I, bias=bias)  # GeGLU: value, gate
        self.proj = nn.Linear(I, H, bias=bias)
        self.ln2 = nn.LayerNorm(H, eps=cfg.layer_norm_eps, bias=bias)
        self.act = ACT[cfg.hidden_act]
        self.drop = Dropout(cfg.hidden_dropout_prob)

    def fc_act(self, x):  # [.., H] -> [.., I]; at inference minift/gemm.py may make the two one oneDNN product
        return self.act(self.fc(x))

    def mlp(self, x):  # [.., H] -> [.., I] -> [.., H]
        if not self.geglu:
            return self.proj(self.fc_act(x))
        value, gate = self.fc(x).chunk(2, dim=-1)
        return self.proj(self.act(value) * gate)

    def forward(self, x, pack, mask, rope=None, cls=None):  # [R, H] -> [R, H], or [B, H]: the [CLS] rows, given cls
        if not self.pre_norm:  # post-LN: normalise after the residual add
            x = self.ln1((x if cls is None else x[cls]) + self.drop(self.attn(x, pack, mask, rope, cls)))
            return self.ln2(x + self.drop(self.mlp(x)))
        a = self.attn(x if self.ln1 is None else self.ln1(x), pack, mask, rope, cls)
        x = (x if cls is None else x[cls]) + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x)))


def init_weights(module: nn.Module, std: float):
    """BERT's initialisation: N(0, std) weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                m.weight.data[m.padding_idx].zero_()
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class PredictionHead(nn.Module):
    """ModernBERT's dense -> activation -> norm between the encoder and each task's last layer
    (ModernBertPredictionHead, under the name `head`): [.., H] -> [.., H]."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.act = ACT[cfg.classifier_activation]
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        init_weights(self, cfg.initializer_range)

    def forward(self, x):
        return self.norm(self.act(self.dense(x)))


class Bert(nn.Module):
    def __init__(self, config: BertConfig, pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, first=i == 0, local=local) for i, local in enumerate(config.sliding))
        self.final_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.bias) \
            if config.family.final_norm else None
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None
        self.checkpointing = False  # --checkpointing: keep each layer's input only, recompute the rest in backward
        self.recompute_context = None  # what that recomputation runs under: the forward's (see make_loss_fn)
        init_weights(self, config.initializer_range)
        if config.sinusoidal_pos_embds:  # DistilBERT's fixed table: sin at even features, cos at odd ones
            pos = torch.arange(config.max_position_embeddings, dtype=torch.float64)[:, None]
            j = torch.arange(config.hidden_size)
            angle = pos / 10000 ** (2 * (j // 2) / config.hidden_size)
            self.embeddings.position.weight.data.copy_(torch.where(j % 2 == 0, angle.sin(), angle.cos()))

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, cls_only: bool = False):
        """input_ids, attention_mask (1 = real token, 0 = padding), token_type_ids: [B, T].
        Returns (x, pack): the last hidden states of the real tokens packed as [N, H], and the Packing
        that says where they sit in [B, T]. With cls_only, x is [B, H], the [CLS] rows alone: a head that
        reads nothing else lets the last layer compute only those rows past its keys and values."""
        B, T = input_ids.shape
        cfg = self.config
        # bf16 / fp16 matmuls on a CPU compile a kernel per row count: bucket the row counts (see Packing).
        low = torch.is_autocast_enabled("cpu") or self.embeddings.word.weight.dtype != torch.float32
        pack = Packing(input_ids, attention_mask, bucket=input_ids.device.type == "cpu" and low)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if cfg.position_offset is not None:  # RoBERTa's: real tokens counted from pad_token_id + 1
            real = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
            positions = real.cumsum(1) - 1 + cfg.position_offset
        ids, types, positions = (pack.rows(t) for t in (input_ids, token_type_ids, positions))  # [R] each
        x = self.embeddings(ids, types, positions)  # [R, H]
        ropes = {False: None}  # by "is the layer local"
        if cfg.family.rotary:
            ropes = {False: rotary(cfg, cfg.rope_theta, positions), True: rotary(cfg, cfg.local_rope_theta, positions)}
        for i, (layer, local) in enumerate(zip(self.layers, cfg.sliding)):
            last = cls_only and i == len(self.layers) - 1
            # [R, H]; [B, H] after the last given cls_only
            args = (x, pack, pack.mask, ropes[local], pack.first if last else None)
            if self.checkpointing and self.training and torch.is_grad_enabled():
                # The recomputation replays the same dropout masks (checkpoint restores the RNG state) and
                # the same linears: it runs in backward, after the forward's context has closed.
                ctx = {} if self.recompute_context is None else \
                    {"context_fn": lambda: (contextlib.nullcontext(), self.recompute_context())}
                x = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False, **ctx)
            else:
                x = layer(*args)
        if self.final_ln is not None:
            x = self.final_ln(x)
        return (x if cls_only else x[:pack.n]), pack

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pooled_only: bool = False):
        """Hugging Face's BertModel outputs: the hidden states [B, T, H] (zeros where the padding is) and
        the pooled [CLS] vector [B, H]; with pooled_only, the pooled vector alone (the last layer then
        computes only the [CLS] rows: a quarter of its work)."""
        x, pack = self.encode(input_ids, attention_mask, token_type_ids, cls_only=pooled_only)
        cls = x if pooled_only else x[pack.first]  # [B, H]
        pooled = torch.tanh(self.pooler(cls)) if self.pooler is not None else None
        return pooled if pooled_only else (pack.pad(x), pooled)

    @classmethod
    def from_pretrained(cls, path, allow_pickle: bool = False) -> "Bert":
        from minift.checkpoint import load_pretrained
        return load_pretrained(cls, path, allow_pickle=allow_pickle)

    def save_pretrained(self, path, tokenizer=None):
        from minift.checkpoint import save_pretrained
        save_pretrained(self, path, tokenizer)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

