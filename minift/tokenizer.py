"""BERT WordPiece tokenizer on the `tokenizers` package, giving the same ids as transformers' BertTokenizerFast."""

import json
from pathlib import Path

import tokenizers
import torch
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from minift.errors import MiniftError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _read_json(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MiniftError(f"{path}: expected a readable JSON file ({e})") from None


def _check_list(name, value):
    # a str is iterable too and would silently be tokenised one character per text
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(value).__name__}")


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


class Tokenizer:
    """Training tokenises a dataset once with encode, then pads each batch with Tokenizer.pad."""

    def __init__(self, tok, model_max_length=512):
        self._tok = tok
        self.model_max_length = model_max_length
        self.pad_id, self.cls_id, self.sep_id = (tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]"))
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def from_dir(cls, path):
        path = Path(path)
        names = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
        json_file, vocab_file, config_file = (path / n for n in names)
        if not path.is_dir():
            raise MiniftError(f"{path}: tokenizer directory not found (expected tokenizer.json or vocab.txt in it)")
        config = _read_json(config_file) if config_file.is_file() else {}
        if json_file.is_file():
            try:
                tok = tokenizers.Tokenizer.from_file(str(json_file))
            except Exception as e:
                raise MiniftError(f"{json_file}: expected a `tokenizers` JSON file ({e})") from None
            if not isinstance(tok.model, WordPiece):
                raise MiniftError(f"{json_file}: expected a WordPiece (BERT) tokenizer, got {type(tok.model).__name__}")
            # A checkpoint's own settings (MiniLM's pad and truncate everything to 128) would override encode's.
            tok.no_truncation()
            tok.no_padding()
        elif vocab_file.is_file():
            tok = tokenizers.Tokenizer(WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
        else:
            raise MiniftError(f"{path}: no tokenizer found (looked for tokenizer.json, then vocab.txt)")
        missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
        if missing:
            source = json_file if json_file.is_file() else vocab_file
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
        return cls(tok, config.get("model_max_length", 512))

    from_pretrained = from_dir  # the name a transformers user reaches for, as Bert.from_pretrained

    def encode(self, texts, pairs=None, max_length=512):
        """(input_ids, token_type_ids), a list per text: unpadded, at most max_length long with [CLS]/[SEP]."""
        _check_list("texts", texts)
        if pairs is not None:
            _check_list("pairs", pairs)
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
        if max_length < (2 if pairs is None else 3):
            raise ValueError(f"max_length {max_length} leaves no room for the [CLS]/[SEP] tokens")
        # Truncation is done here, not by `tokenizers`: that one also builds every overflow window and, for
        # pairs, every combination of both sides' windows, which takes seconds for one long pair.
        cls, sep = [self.cls_id], [self.sep_id]
        firsts = [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]
        if pairs is None:
            ids = [cls + a[: max_length - 2] + sep for a in firsts]
            return ids, [[0] * len(i) for i in ids]
        ids, types = [], []
        for e, a, pair in zip(self._tok.encode_batch_fast(pairs, add_special_tokens=False), firsts, pairs):
            if not pair:  # an empty second text makes a single text, as in transformers (its `if text_pair`)
                ids.append(cls + a[: max_length - 2] + sep)
                types.append([0] * len(ids[-1]))
                continue
            a, b = _longest_first(a, e.ids, max_length - 3)
            ids.append(cls + a + sep + b + sep)
            types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        return ids, types

    def encode_offsets(self, texts):
        """(ids, offsets) per text, without [CLS]/[SEP]: the token ids and each token's (start, end)
        character span in the text, so that a span of tokens maps back to the exact substring."""
        _check_list("texts", texts)
        enc = self._tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in enc], [e.offsets for e in enc]

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
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path / "tokenizer.json"))
        vocab = sorted(self._tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
        (path / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
        norm = self._tok.normalizer
        special = {f"{name}_token": f"[{name.upper()}]" for name in ("unk", "sep", "pad", "cls", "mask")}
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": norm.lowercase,
            "strip_accents": norm.strip_accents,
            "tokenize_chinese_chars": norm.handle_chinese_chars,
            "model_max_length": self.model_max_length,
            **special,
        }
        for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            (path / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
