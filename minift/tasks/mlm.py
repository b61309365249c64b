"""Masked-LM adaptation: continue BERT's pretraining objective on one's own unlabelled text.

Texts are tokenised and packed into sequences of --max-length tokens, [CLS] chunk [SEP] (the family's
special tokens: <s> chunk </s> for RoBERTa), where the chunks cut the stream of all texts joined by [SEP]
(so no position goes to padding), or kept one text per sequence with --no-pack. In every sequence 15% of
the tokens other than [CLS] and [SEP] are chosen (whole words with --whole-word-mask); of those 80%
become [MASK] (<mask>), 10% a random token and 10% stay as they are, and the model predicts the original
token at each chosen position (Devlin et al., 2019).

The head is the family's *ForMaskedLM's (BERT's cls.predictions, RoBERTa's lm_head, ...): dense,
activation, LayerNorm, then a decoder whose weight is the word-embedding matrix itself (tied) plus an
output bias. Only the chosen positions go through the head: a [vocab]-wide row for every token of a
batch would cost far more than the encoder. Under --mode head the transform and the bias train; the
decoder is the word embeddings, which belong to the frozen encoder.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.config import BertConfig
from minift.data import FORMATS, read_dataset, read_text
from minift.errors import MiniftError
from minift.families import FAMILIES, activation
from minift.model import ACT, Bert, init_weights
from minift.tasks.classify import put
from minift.tasks.task import Task

MASK_RATE = 0.15  # of the tokens other than the special ones ([CLS] and [SEP], <s> and </s>)
TOP_K = 5  # predictions shown per [MASK] by predict


class BertForMaskedLM(nn.Module):
    """An encoder of the BERT family + its family's masked-LM head, under the family's Hugging Face names
    (Family.lm_head, minift/families.py); the decoder weight is bert.embeddings.word.weight. ELECTRA's is its
    generator's head, which narrows to embedding_size before the decoder."""
    ARCHITECTURE = "BertForMaskedLM"  # the family's stem replaces Bert on save
    # The head's modules and bias in every family's names: loading keeps whichever the checkpoint's family has.
    HEAD = tuple({f"{m}." for f in FAMILIES.values() for m in f.lm_head[:3]}
                 | {f.lm_head[3] for f in FAMILIES.values()})
    POOLER = False
    PRETRAINED_HEAD = True  # BERT checkpoints usually carry this head: starting without it is worth a note

    def __init__(self, config: BertConfig):
        super().__init__()
        if not config.tie_word_embeddings:
            raise MiniftError("config: tie_word_embeddings=false is not supported for --task mlm; minift's "
                              "masked-LM decoder is the word embeddings themselves")
        self.config = config
        self.bert = Bert(config, pooler=False)
        E = config.embedding_size or config.hidden_size
        self.parts = dense, norm, _, bias = config.family.lm_head
        put(self, dense, nn.Linear(config.hidden_size, E, bias=config.bias))
        put(self, norm, nn.LayerNorm(E, eps=config.layer_norm_eps, bias=config.bias))
        init_weights(self.get_submodule(dense), config.initializer_range)
        init_weights(self.get_submodule(norm), config.initializer_range)
        # The decoder is no module of its own: its weight *is* the embedding matrix, so it cannot come
        # untied, and no tensor is stored twice (safetensors refuses shared tensors; Hugging Face omits
        # the decoder's weight from its files and ties it on load, as here).
        if config.decoder_bias:
            put(self, bias, nn.Parameter(torch.zeros(config.vocab_size)))
        self.act = ACT[activation(config, config.family.lm_act)]  # RoBERTa's: GELU whatever hidden_act

    def logits(self, x):  # [M, H] -> [M, E] -> [M, V]
        dense, norm, _, bias = self.parts
        x = self.get_submodule(norm)(self.act(self.get_submodule(dense)(x)))
        bias = self.get_parameter(bias) if self.config.decoder_bias else None
        return F.linear(x, self.bert.embeddings.word.weight, bias)

    def masked(self, input_ids, attention_mask, token_type_ids, where):
        """Logits [M, V] at the M positions where `where` [B, T] is True (real tokens only), in row-major order."""
        x, pack = self.bert.encode(input_ids, attention_mask, token_type_ids)  # [N, H]
        return self.logits(x[pack.unpad(where)])  # the chosen rows first: never [N, V]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        """Without labels, Hugging Face's logits [B, T, V] (zeros where the padding is); with labels [B, T]
        (the original token at chosen positions, -100 elsewhere and at padding): (logits [M, V] of the
        chosen positions, their mean cross-entropy)."""
        if labels is None:
            x, pack = self.bert.encode(input_ids, attention_mask, token_type_ids)
            return pack.pad(self.logits(x))
        where = labels != -100
        logits = self.masked(input_ids, attention_mask, token_type_ids, where)
        return logits, F.cross_entropy(logits.float(), labels[where])

    @classmethod
    def from_pretrained(cls, path, allow_pickle: bool = False, id2label=None, problem_type=None,
                        new_head: bool = False) -> "BertForMaskedLM":
        """A masked LM from a Hugging Face directory: its cls.predictions when the checkpoint has them and
        new_head is False, else a fresh head (BERT's initialisation). id2label and problem_type are taken
        as every task model takes them, and are None for a masked LM: it has no labels."""
        from minift.checkpoint import load_pretrained
        model = load_pretrained(cls, path, allow_pickle=allow_pickle, new_head=new_head)
        model.config.id2label = model.config.problem_type = None  # a classifier's settings, if it was one
        return model

    def save_pretrained(self, path, tokenizer=None):
        from minift.checkpoint import save_pretrained
        save_pretrained(self, path, tokenizer)


# ---- texts and sequences ----

@dataclass
class Texts:
    path: str
    texts: list[str]
    lines: list[int]  # 1-based line of each text in its file
    skipped_empty: int = 0
    draw_masks: bool = True  # False: predict the [MASK] tokens the texts hold themselves
    pairs = None  # single texts only


@dataclass
class Features:
    ids: list[list[int]]  # [CLS] ... [SEP] token ids per sequence, unmasked
    draw_masks: bool
    whole_word: bool
    mask_id: int
    special: list[int]  # never masked: [CLS], [SEP] (the family's)
    piece: torch.Tensor  # [V] bool: the token continues a word (Tokenizer.continues_word), for whole-word masking
    tokens: list[str]  # the vocabulary by id, for predict's output


# A sequence's result: [summed loss, correct, count] over its masked tokens when labelled, else (top token
# ids [m, k], their probabilities [m, k]) for each of its m [MASK] tokens.
MaskedRow = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class MaskedLM(Task[Texts, Features, MaskedRow]):
    name = "mlm"
    model = BertForMaskedLM
    problem_type = None
    metrics = ("loss", "accuracy", "perplexity")
    default_max_length = 128

    def read(self, path, opts, labelled: bool = True) -> Texts:
        """One text per line of a .txt, or the text column of a .csv/.tsv/.jsonl. labelled=False (predict):
        the texts hold the [MASK] tokens to fill in."""
        if opts.text_pair_column:
            raise MiniftError(f"--text-pair-column {opts.text_pair_column}: the mlm task reads single texts")
        suffix = Path(path).suffix.lower()
        if suffix == ".txt":
            return Texts(str(path), *read_lines(path), draw_masks=labelled)
        if suffix not in FORMATS:
            raise MiniftError(f"{path}: unsupported file type {suffix or '(no extension)'!r}. The mlm task reads "
                              f".txt (one text per line) and the text column of {', '.join(FORMATS)} files.")
        ds = read_dataset(path, opts.text_column, None, need_labels=False)
        return Texts(ds.path, ds.texts, ds.lines, ds.skipped_empty, draw_masks=labelled)

    def from_texts(self, texts, pairs, tok) -> Texts:
        if pairs is not None:
            raise MiniftError("the mlm task reads single texts, not pairs")
        return Texts("<texts>", list(texts), list(range(1, len(texts) + 1)), draw_masks=False)

    def label_names(self, train: Texts) -> None:
        return None

    def features(self, ds: Texts, tok, max_length: int, config: BertConfig, opts, log=None) -> Features:
        specials = [piece for piece, _ in tok.single if isinstance(piece, int)]  # [CLS] and [SEP], <s> and </s>
        if max_length < len(specials) + 1:
            raise MiniftError(f"--max-length {max_length}: a masked LM needs at least {len(specials) + 1} "
                              f"(the {len(specials)} special tokens and a token)")
        if tok.mask_id is None:
            raise MiniftError(f"the tokenizer has no mask token ({tok.specials['mask']!r} is not in its vocabulary; "
                              "tokenizer_config.json's mask_token names it)")
        tokens = tok.tokens()  # (no more than config.vocab_size: BertConfig.check_tokenizer)
        f = Features([], ds.draw_masks, opts.whole_word_mask, tok.mask_id, specials, tok.continues_word(), tokens)
        if not ds.draw_masks or opts.no_pack:  # one text per sequence, truncated
            f.ids = tok.encode(ds.texts, None, max_length)[0]
            return f
        lead = [piece for piece, _ in tok.single].index("A")  # special tokens before the text
        body = slice(lead, lead - len(specials) or None)
        pieces = [ids[body] for ids in tok.encode(ds.texts, None, 10 ** 9)[0]]  # whole texts, no special tokens
        f.ids = [tok.with_specials(c)[0] for c in pack(pieces, max_length - len(specials), tok.sep_id)]
        if log is not None:
            n = sum(map(len, pieces))
            print(f"{ds.path}: {len(ds.texts)} texts, {n:,} tokens, packed into {len(f.ids)} sequences "
                  f"of up to {max_length} tokens", file=log)
        return f

    def batch(self, f: Features, idx: list[int], pad_id: int) -> dict:
        """Rows idx, padded; with labels [B, T] (-100 where nothing is to be predicted) when masks are drawn,
        else with predict_at [B, T], where the texts hold [MASK] (read by outputs, not by the model).

        Masks are drawn here, per batch, rather than once with the features, so that every epoch masks
        anew. In training they come from torch's global generator: train() seeds it, and the checkpoint
        saves and restores its state, so a run draws the same masks however often it is stopped and
        resumed. An evaluation (run_model, under inference mode) draws sequence i's masks from a generator
        seeded with i: the same tokens are scored at every evaluation, whatever the batch size."""
        fixed = torch.is_inference_mode_enabled()
        rows, labels = [], []
        for i in idx:
            ids = torch.tensor(f.ids[i])
            if f.draw_masks:
                ids, lab = mask_tokens(ids, f, torch.Generator().manual_seed(i) if fixed else None)
                labels.append(lab)
            rows.append(ids)
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)  # [B, T]
        mask = nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
        b = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        if f.draw_masks:
            b["labels"] = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
        else:
            b["predict_at"] = ids == f.mask_id
        return b

    def outputs(self, model, b: dict) -> list:
        """Per sequence: [summed loss, correct, count] over its masked tokens when labels are given; else
        (top token ids [m, k], their probabilities [m, k]) for each of its m [MASK] tokens."""
        where = b["labels"] != -100 if "labels" in b else b["predict_at"]
        logits = model.masked(b["input_ids"], b["attention_mask"], b["token_type_ids"], where).float()  # [M, V]
        rows = where.nonzero()[:, 0]  # [M] the sequence of each chosen position, in the same row-major order
        if "labels" in b:
            gold = b["labels"][where]
            stats = torch.stack([F.cross_entropy(logits, gold, reduction="none"),
                                 (logits.argmax(-1) == gold).float(), torch.ones_like(gold, dtype=torch.float)], 1)
            return list(torch.zeros(len(where), 3, device=logits.device).index_add_(0, rows, stats).cpu())
        probs, ids = logits.softmax(-1).topk(TOP_K)  # [M, k]
        return [(ids[rows == r].cpu(), probs[rows == r].cpu()) for r in range(len(where))]

    def score(self, outputs: list, f: Features) -> dict[str, float]:
        """Over all masked tokens: mean cross-entropy (nats), accuracy of the top prediction, perplexity."""
        loss, correct, n = torch.stack(outputs).double().sum(0).tolist()
        if not n:
            raise MiniftError("the texts hold no token that could be masked (only [CLS] and [SEP])")
        return {"loss": loss / n, "accuracy": correct / n, "perplexity": math.exp(loss / n)}

    def decode(self, outputs: list, f: Features, ds: Texts, config: BertConfig) -> list[dict]:
        """Per text: {"masks": [[{"token": t, "score": p}, ... TOP_K] for each [MASK] in it]}."""
        return [{"masks": [[{"token": f.tokens[i], "score": p} for i, p in zip(ids, probs)]
                           for ids, probs in zip(ids_m.tolist(), probs_m.tolist())]}
                for ids_m, probs_m in outputs]


def read_lines(path) -> tuple[list[str], list[int]]:
    """The non-blank lines of a UTF-8 text file and their line numbers."""
    text = read_text(path)
    found = [(s.strip(), n) for n, s in enumerate(text.split("\n"), 1) if s.strip()]
    if not found:
        raise MiniftError(f"{path}: no texts (the file is empty or blank). Expected one text per line.")
    return [s for s, _ in found], [n for _, n in found]


def pack(pieces: list[list[int]], size: int, sep: int) -> list[list[int]]:
    """Cut the texts' tokens, joined by [SEP], into chunks of at most `size`; a [SEP] at either end of a
    chunk is dropped (the sequence's own [SEP] or [CLS] already separates there)."""
    stream = [t for p in pieces for t in p + [sep]][:-1]
    chunks = []
    for i in range(0, len(stream), size):
        c = stream[i:i + size]
        c = c[1:] if c[0] == sep else c
        c = c[:-1] if c and c[-1] == sep else c
        if c:
            chunks.append(c)
    return chunks


def mask_tokens(ids, f: Features, gen=None):
    """BERT's masking of one sequence ids [T] -> (input ids [T], labels [T]: the original token where one
    was chosen, -100 elsewhere). All draws come from `gen` (torch's global generator when None).

    round(15%) of the maskable tokens are chosen, as the original pretraining data did: words in random
    order, each word whole, while the total stays within that count (the first word always). Without
    --whole-word-mask every token is a word of its own, so exactly that many random tokens are chosen."""
    T = len(ids)
    maskable = ~torch.isin(ids, torch.tensor(f.special))  # [T]
    start = maskable.clone()  # where a word starts
    if f.whole_word:  # a "##" piece (BPE: one without "Ġ") continues the word before it, unless after [CLS]/[SEP]
        start[1:] &= ~(f.piece[ids[1:]] & maskable[:-1])
    word = start.cumsum(0) - 1  # [T] word number of each position
    n_words = int(start.sum())
    k = round(MASK_RATE * int(maskable.sum()))
    order = torch.randperm(n_words, generator=gen)  # words in random order
    sizes = torch.bincount(word[maskable], minlength=n_words)[order]
    take = max(1, int((sizes.cumsum(0) <= k).sum())) if n_words else 0
    chosen = maskable & torch.isin(word, order[:take])  # [T]
    # Of the chosen: 80% [MASK], 10% a random token, 10% unchanged.
    r = torch.rand(T, generator=gen)
    random_ids = torch.randint(len(f.tokens), (T,), generator=gen)
    out = torch.where(chosen & (r < 0.8), f.mask_id, ids)
    out = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, out)
    return out, torch.where(chosen, ids, -100)
