"""The BERT family's tokenizers on the `tokenizers` package, giving the ids of transformers' fast tokenizers.

WordPiece (BERT, DistilBERT, ELECTRA), byte-level BPE (RoBERTa, ModernBERT) and SentencePiece Unigram
(XLM-R, CamemBERT), read from tokenizer.json, or from vocab.txt (WordPiece) or vocab.json + merges.txt
(RoBERTa's BPE) where there is none. The special tokens a family adds around one text or a pair
([CLS] A [SEP] B [SEP], <s> A </s></s> B </s>) and its token type ids are read off the tokenizer's own
post-processor once (Template), and encode applies them after truncating. Words given already split
(tagging) are encoded as transformers' fast tokenizers encode them with is_split_into_words=True; a byte-level
BPE with add_prefix_space=True there, as transformers requires (_word_tokenizer).
"""

import copy
import json
import sys
from pathlib import Path

import tokenizers
import torch
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece

from minift.data import read_json
from minift.errors import MiniftError

# A run warns (once) when at least this share of the texts of one batch of work are mostly unknown tokens.
UNKNOWN_SHARE = 0.1
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # BERT's; WordPiece vocabularies must have them
# The roles of special tokens -> their defaults in BERT's and in RoBERTa's (and every SentencePiece family's) vocabularies
BERT_SPECIALS = dict(zip(("pad", "unk", "cls", "sep", "mask"), SPECIAL_TOKENS))
ROBERTA_SPECIALS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}


# tokenizer_config.json's settings that minift reads -> (the types they may have, what to say otherwise)
CONFIG_TYPES = {"do_lower_case": ((bool,), "true or false"), "tokenize_chinese_chars": ((bool,), "true or false"),
                "strip_accents": ((bool, type(None)), "true, false or null"),
                "add_prefix_space": ((bool,), "true or false"), "trim_offsets": ((bool,), "true or false"),
                "model_max_length": ((int,), "a whole number >= 1")}


def _read_config(path) -> dict:
    """tokenizer_config.json, each setting minift reads checked for its type."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise MiniftError(f"{path}: expected a JSON object of tokenizer settings")
    for key, (types, expected) in CONFIG_TYPES.items():
        v = config.get(key)
        if key in config and (not isinstance(v, types) or key == "model_max_length" and (isinstance(v, bool) or v < 1)):
            raise MiniftError(f"{path}: {key}={v!r}: expected {expected}")
    return config


def _check_list(name, value):
    # a str is iterable too and would silently be tokenised one character per text
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(value).__name__}")


def _specials(config: dict, tok) -> dict[str, str]:
    """Role -> special token: tokenizer_config.json's names where it gives them, else the vocabulary's defaults."""
    names = dict(BERT_SPECIALS if tok.token_to_id("[CLS]") is not None else ROBERTA_SPECIALS)
    for role in names:
        v = config.get(f"{role}_token")
        v = v.get("content") if isinstance(v, dict) else v  # older files store AddedToken objects
        names[role] = v if isinstance(v, str) else names[role]
    return names


def _template(tok, pair: bool, source) -> list:
    """The post-processor's layout as a list of (piece, type id): "A" or "B" for a text's tokens, an int for a
    special token, e.g. RoBERTa's pair [(0, 0), ("A", 0), (2, 0), (2, 0), ("B", 0), (2, 0)]."""
    if not tok.encode("a", add_special_tokens=False).ids:
        raise MiniftError(f"{source}: the tokenizer turns 'a' into no token at all; cannot read its special-token layout")
    # (encode, not post_process: this tokenizers' post_process loses the first text's sequence ids of a pair)
    enc = tok.encode("a", "a" if pair else None, add_special_tokens=True)
    out = []
    for i, seq, t in zip(enc.ids, enc.sequence_ids, enc.type_ids):
        piece = i if seq is None else "AB"[seq]
        if not (isinstance(piece, str) and out and out[-1][0] == piece):
            out.append((piece, t))
    return out


def _longest_first(a, b, budget):
    """Truncate a pair to budget tokens exactly as the `tokenizers` "longest_first" strategy does
    (which BertTokenizerFast(truncation=True) uses): the shorter side is kept whole if it fits in
    half the budget, else each side gets half and the longer one (the second on a tie) any odd token."""
    if len(a) + len(b) <= budget:
        return a, b
    short = min(len(a), len(b))
    keep_short = short if 2 * short <= budget else budget // 2
    keep_long = budget - keep_short
    return (a[:keep_long], b[:keep_short]) if len(a) > len(b) else (a[:keep_short], b[:keep_long])


def _bert_wordpiece(tok, config: dict, source):
    """BertTokenizerFast's settings on a WordPiece tokenizer, in place."""
    vocab = tok.get_vocab(with_added_tokens=False)  # the model's own: it falls back to [UNK] there
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None or t == tok.model.unk_token and t not in vocab]
    if missing:
        raise MiniftError(f"{source}: expected a BERT vocabulary with {', '.join(missing)} in it")
    # encode adds [CLS]/[SEP] itself, but a saved tokenizer.json should carry the template like any other
    if tok.post_processor is None:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
        )
    # BertTokenizerFast rebuilds these from tokenizer_config.json (with BERT's defaults for missing keys),
    # overriding tokenizer.json; a bare tokenizer.json keeps its own settings, as AutoTokenizer does.
    if config or not isinstance(tok.normalizer, normalizers.BertNormalizer):
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=config.get("tokenize_chinese_chars", True),
            strip_accents=config.get("strip_accents"),
            lowercase=config.get("do_lower_case", True),
        )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    # So that "[MASK]" typed in a text is the mask token, not "[", "mask", "]".
    tok.add_special_tokens(SPECIAL_TOKENS)


def _roberta_bpe(vocab, merges, config: dict):
    """RoBERTa's byte-level BPE from vocab.json + merges.txt, as transformers' RobertaTokenizer builds it."""
    try:
        tok = tokenizers.Tokenizer(BPE.from_file(str(vocab), str(merges)))
    except Exception as e:
        raise MiniftError(f"{vocab}, {merges}: expected a byte-level BPE vocabulary and merges ({e})") from None
    prefix_space = config.get("add_prefix_space", False)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    names = _specials(config, tok)
    missing = [names[r] for r in ("cls", "sep", "pad") if tok.token_to_id(names[r]) is None]
    if missing:
        raise MiniftError(f"{vocab}: expected a RoBERTa vocabulary with {', '.join(missing)} in it")
    tok.post_processor = processors.RobertaProcessing((names["sep"], tok.token_to_id(names["sep"])),
                                                      (names["cls"], tok.token_to_id(names["cls"])),
                                                      trim_offsets=config.get("trim_offsets", True),
                                                      add_prefix_space=prefix_space)
    tok.add_special_tokens([t for t in names.values() if tok.token_to_id(t) is not None])
    return tok


def _word_tokenizer(tok):
    """The tokenizer for pre-split words. A byte-level BPE marks a word that follows a space ("Ġword", its usual
    form) apart from one that starts the text ("word"); given words one by one, it would encode every word in
    the rare text-initial form unless its ByteLevel pre-tokenizer adds a space before each, which is why
    transformers requires add_prefix_space=True for is_split_into_words=True. A copy with that setting, then,
    whatever the saved one (ModernBERT's says false, and transformers' generic class ignores the argument; its
    authors found that tagging needs it). WordPiece and SentencePiece (Metaspace, "▁word") need no change."""
    pre = tok.pre_tokenizer
    if not isinstance(pre, pre_tokenizers.ByteLevel):
        if pre is not None and b'"ByteLevel"' in pre.__getstate__():
            raise MiniftError("tagging given words: this tokenizer's pre-tokenizer nests a ByteLevel step in "
                              f"{type(pre).__name__}; a space added before each word there would also go before "
                              "every piece an earlier step splits off. Supported: a plain ByteLevel pre-tokenizer "
                              "(RoBERTa's, ModernBERT's), WordPiece's and SentencePiece's")
        return tok
    words = copy.deepcopy(tok)
    words.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, trim_offsets=pre.trim_offsets,
                                                   use_regex=pre.use_regex)
    return words


class Tokenizer:
    """Training tokenises a dataset once with encode, then pads each batch with Tokenizer.pad."""

    def __init__(self, tok, model_max_length=512, config=None, source="tokenizer"):
        self._tok = tok
        self.model_max_length = model_max_length
        self._config = config or {}  # tokenizer_config.json as read, written back by save
        self.specials = _specials(self._config, tok)
        missing = [t for t in (self.specials["pad"], self.specials["cls"]) if tok.token_to_id(t) is None]
        if missing:
            raise MiniftError(f"{source}: the special tokens {', '.join(map(repr, missing))} are not in the vocabulary")
        self.pad_id, self.cls_id, self.sep_id, self.mask_id = (tok.token_to_id(self.specials[r])
                                                               for r in ("pad", "cls", "sep", "mask"))
        self.vocab_size = tok.get_vocab_size()
        self.single, self.pair = _template(tok, False, source), _template(tok, True, source)
        self._words = None  # the tokenizer of pre-split words, made when first needed (encode_words)
        self.unk_id = tok.token_to_id(self.specials["unk"])  # None: a byte-level BPE, which knows every byte
        self.warned = False  # of texts that are mostly unknown tokens: once per run, not once per text

    @classmethod
    def from_dir(cls, path):
        path = Path(path)
        names = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json", "merges.txt")
        json_file, vocab_file, config_file, bpe_vocab, bpe_merges = (path / n for n in names)
        if not path.is_dir():
            raise MiniftError(f"{path}: tokenizer directory not found (expected tokenizer.json or vocab.txt in it)")
        config = _read_config(config_file) if config_file.is_file() else {}
        if json_file.is_file():
            try:
                tok = tokenizers.Tokenizer.from_file(str(json_file))
            except Exception as e:
                raise MiniftError(f"{json_file}: expected a `tokenizers` JSON file ({e})") from None
            # A checkpoint's own settings (MiniLM's pad and truncate everything to 128) would override encode's.
            tok.no_truncation()
            tok.no_padding()
            source = json_file
        elif vocab_file.is_file():
            try:
                tok, source = tokenizers.Tokenizer(WordPiece.from_file(str(vocab_file), unk_token="[UNK]")), vocab_file
            except Exception as e:  # `tokenizers` raises a bare Exception, e.g. for a binary file
                raise MiniftError(f"{vocab_file}: expected a WordPiece vocabulary, one token per line in UTF-8 "
                                  f"({e})") from None
        elif bpe_vocab.is_file() and bpe_merges.is_file():
            tok, source = _roberta_bpe(bpe_vocab, bpe_merges, config), bpe_vocab
        else:
            raise MiniftError(f"{path}: no tokenizer found (looked for tokenizer.json, then vocab.txt, then "
                              "vocab.json + merges.txt; a SentencePiece .model needs converting to tokenizer.json)")
        if isinstance(tok.model, WordPiece):
            _bert_wordpiece(tok, config, source)
        named = _specials(config, tok)
        absent = [r for r in ("pad", "cls") if f"{r}_token" in config and tok.token_to_id(named[r]) is None]
        if absent:  # tokenizer_config.json names a token the vocabulary lacks
            raise MiniftError(f"{config_file}: {absent[0]}_token={named[absent[0]]!r} is not in the vocabulary ({source})")
        return cls(tok, config.get("model_max_length", 512), config, source)

    from_pretrained = from_dir  # the name a transformers user reaches for, as Bert.from_pretrained

    def _check(self, texts, pairs, max_length) -> tuple[int, int]:
        """The numbers of text tokens max_length leaves beside the special tokens of one text and of a pair."""
        _check_list("texts", texts)
        if pairs is not None:
            _check_list("pairs", pairs)
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
        room, pair_room = max_length - self.n_specials(False), max_length - self.n_specials(True)
        specials = max_length - (room if pairs is None else pair_room)
        if max_length < specials:
            raise ValueError(f"max_length {max_length} leaves no room for the {specials} special tokens")
        return room, pair_room

    def note_unknown(self, id_lists, texts):
        """Warn once when at least UNKNOWN_SHARE of these texts are mostly unknown tokens (over half of them):
        the vocabulary does not cover their language or script, and the model sees little of them."""
        if self.warned or self.unk_id is None or not id_lists:
            return
        mostly = [i for i, ids in enumerate(id_lists) if 2 * sum(x == self.unk_id for x in ids) > len(ids) > 0]
        if len(mostly) >= UNKNOWN_SHARE * len(id_lists):
            self.warned = True
            text = texts[mostly[0]]
            example = (text if isinstance(text, str) else " ".join(text))[:60]  # a text, or a sentence's words
            print(f"minift: warning: {len(mostly)} of {len(id_lists)} texts are mostly {self.specials['unk']} (over half "
                  f"their tokens), e.g. {example!r}: the model's vocabulary does not cover them; is it the right "
                  "model for their language?", file=sys.stderr)

    def n_specials(self, pair: bool) -> int:
        """How many special tokens one text (pair=False) or a pair gets."""
        return sum(isinstance(piece, int) for piece, _ in (self.pair if pair else self.single))

    def second_start(self, n_first: int) -> int:
        """Where a pair's second text starts when its first has n_first tokens ([CLS] A [SEP]: n_first + 2)."""
        before = self.pair[:[piece for piece, _ in self.pair].index("B")]
        return n_first + sum(isinstance(piece, int) for piece, _ in before)

    def with_specials(self, a, b=None):
        """Text tokens (of one text, or a pair) -> (ids, token type ids) with the special tokens around them."""
        ids, types = [], []
        for piece, t in self.single if b is None else self.pair:
            part = a if piece == "A" else b if piece == "B" else [piece]
            ids += part
            types += [t] * len(part)
        return ids, types

    def encode(self, texts, pairs=None, max_length=512):
        """(input_ids, token_type_ids), a list per text: unpadded, at most max_length long with the special tokens."""
        room, pair_room = self._check(texts, pairs, max_length)
        # Truncation is done here, not by `tokenizers`: that one also builds every overflow window and, for
        # pairs, every combination of both sides' windows, which takes seconds for one long pair.
        firsts = [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]
        self.note_unknown(firsts, texts)
        if pairs is None:
            out = [self.with_specials(a[:room]) for a in firsts]
        else:
            seconds = [e.ids for e in self._tok.encode_batch_fast(pairs, add_special_tokens=False)]
            # an empty second text makes a single text, as in transformers (its `if text_pair`)
            out = [self.with_specials(*_longest_first(a, b, pair_room)) if pair else
                   self.with_specials(a[:room]) for a, b, pair in zip(firsts, seconds, pairs)]
        return [ids for ids, _ in out], [types for _, types in out]

    def encode_offsets(self, texts):
        """(ids, offsets) per text, without [CLS]/[SEP]: the token ids and each token's (start, end)
        character span in the text, so that a span of tokens maps back to the exact substring."""
        _check_list("texts", texts)
        enc = self._tok.encode_batch(texts, add_special_tokens=False)
        self.note_unknown([e.ids for e in enc], texts)
        return [e.ids for e in enc], [e.offsets for e in enc]

    def tokens(self) -> list[str]:
        """Token strings by id; "" for an id no token has (a vocab.txt listing a token twice keeps the last id)."""
        vocab = self._tok.get_vocab()
        out = [""] * (max(vocab.values()) + 1)
        for t, i in vocab.items():
            out[i] = t
        return out

    def continues_word(self) -> torch.Tensor:
        """[V] bool by id: the token continues the word before it. WordPiece marks those ("##ing"); byte-level
        BPE and SentencePiece mark the others, the tokens after a space ("Ġword", "▁word"), as fairseq's
        whole-word masking reads them."""
        if isinstance(self._tok.model, WordPiece):
            return torch.tensor([t.startswith("##") for t in self.tokens()])
        return torch.tensor([not t.startswith(("Ġ", "▁")) for t in self.tokens()])

    def word_spans(self, text: str) -> list[tuple[int, int]]:
        """The words the pre-tokenizer splits `text` into, as (start, end) character offsets into it, trimmed of
        whitespace (a byte-level BPE's words carry the space before them); whitespace alone is no word."""
        spans = {}
        e = self._tok.encode(text, add_special_tokens=False)
        for w, (s, t) in zip(e.word_ids, e.offsets):
            spans[w] = (spans.get(w, (s, t))[0], t)
        out = []
        for s, t in (spans[w] for w in sorted(spans)):
            word = text[s:t]
            s, t = s + len(word) - len(word.lstrip()), t - len(word) + len(word.rstrip())
            out += [(s, t)] if s < t else []
        return out

    def encode_words(self, sentences: list[list[str]]) -> list[list[list[int]]]:
        """Pre-tokenized sentences -> per sentence, per word, its token ids (no special tokens): the pieces the
        family's fast tokenizer gives that word with is_split_into_words=True, and for byte-level BPE with the
        add_prefix_space=True that transformers asks for there (see _word_tokenizer). A word the normalizer
        removes entirely (a zero-width space) becomes the unknown token rather than vanish with its tag."""
        if self._words is None:
            self._words = _word_tokenizer(self._tok)
        unk = self._tok.token_to_id(self.specials["unk"])
        out = []
        encoded = self._words.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
        for words, e in zip(sentences, encoded):
            pieces = [[] for _ in words]
            for i, w in zip(e.ids, e.word_ids):
                pieces[w].append(i)
            out.append([p or [unk] for p in pieces])
        self.note_unknown([[i for p in s for i in p] for s in out], sentences)
        return out

    @staticmethod
    def pad(ids_list, type_ids_list, pad_id):
        """Right-pad to the longest sequence: input_ids, attention_mask, token_type_ids as [B, T] LongTensors."""
        T = max(map(len, ids_list), default=0)
        ids = [row + [pad_id] * (T - len(row)) for row in ids_list]
        types = [row + [0] * (T - len(row)) for row in type_ids_list]
        mask = [[1] * len(row) + [0] * (T - len(row)) for row in ids_list]
        shape = (len(ids_list), T)  # keeps an empty batch two-dimensional
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long).reshape(shape),
            "attention_mask": torch.tensor(mask, dtype=torch.long).reshape(shape),
            "token_type_ids": torch.tensor(types, dtype=torch.long).reshape(shape),
        }

    def __call__(self, texts, pairs=None, max_length=512, padding=True):
        ids, types = self.encode(texts, pairs, max_length)
        if not padding and len(set(map(len, ids))) > 1:
            raise ValueError("texts tokenise to different lengths; a batch tensor needs padding=True")
        return self.pad(ids, types, self.pad_id)

    def save(self, path):
        """Write the files that both Tokenizer.from_dir and transformers' AutoTokenizer load."""
        from minift.checkpoint import atomic_write
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        special = {f"{role}_token": token for role, token in self.specials.items()}
        config = {**self._config, **special, "model_max_length": self.model_max_length}
        files = {"tokenizer.json": self._tok.to_str(pretty=True)}
        if isinstance(self._tok.model, WordPiece):
            vocab = sorted(self._tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
            files["vocab.txt"] = "".join(token + "\n" for token, _ in vocab)
            norm = self._tok.normalizer
            config.update(tokenizer_class=self._config.get("tokenizer_class", "BertTokenizer"),
                          do_lower_case=norm.lowercase, strip_accents=norm.strip_accents,
                          tokenize_chinese_chars=norm.handle_chinese_chars)
        else:  # tokenizer.json holds all of it; a class that rebuilt it from other files could differ
            config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        files["tokenizer_config.json"] = json.dumps(config, indent=2) + "\n"
        files["special_tokens_map.json"] = json.dumps(special, indent=2) + "\n"
        for name, text in files.items():  # each renamed into place: a failed save leaves the old files
            data = text.encode("utf-8")
            atomic_write(path / name, lambda f: f.write_bytes(data), len(data))
