"""BertConfig: the Hugging Face config.json of a BERT-family encoder, read, checked and written back.

One dataclass in BERT's names serves every family; a family's config.json names that differ are
translated on the way in and back out (each family's renames, minift/families.py), and its few own
settings are fields here too.
"""
import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from minift.errors import MiniftError
from minift.families import FAMILIES, Family

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# BertConfig fields that only some families' config.json have (ModernBERT's rotary settings, ...)
OWN = tuple(dict.fromkeys(f for family in FAMILIES.values() for f in family.own))


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    model_type: str = "bert"
    embedding_size: int | None = None  # ELECTRA: embeddings narrower than hidden_size, projected up
    sinusoidal_pos_embds: bool = False  # DistilBERT: position table initialised to sinusoids
    # ModernBERT: pre-LayerNorm, rotary positions, GeGLU, global attention on some layers, local on the others
    bias: bool = True  # False: LayerNorms and Linears without biases (norm_bias, attention_bias, mlp_bias, ...)
    layer_types: list[str] | None = None  # per layer "full_attention" or "sliding_attention"
    local_attention: int = 128  # a sliding-window layer sees tokens at most local_attention // 2 away
    rope_theta: float = 160_000.0  # rotary base of the global layers
    local_rope_theta: float = 10_000.0  # ... and of the local ones
    classifier_pooling: str = "cls"  # the sequence head reads the first token, or the mean of all
    classifier_activation: str = "gelu"
    decoder_bias: bool = True  # ModernBERT's masked-LM decoder has a bias (the other families' always has)
    tie_word_embeddings: bool = True  # the masked-LM decoder is the word embeddings (minift's always is)

    def __post_init__(self):
        # Every value is checked before a tensor is made from it; then refuse what this implementation does
        # not compute, rather than computing it wrongly.
        self.id2label = check_fields(self)
        estimate_memory(self)

    @property
    def family(self) -> Family:  # what the model and the tasks read of the family, never model_type
        return FAMILIES[self.model_type]

    @property
    def position_offset(self) -> int | None:
        """Learned positions start here and count real tokens only (RoBERTa's, after its padding id);
        None: positions are the token's index in the padded row (BERT's); rotary families have no table."""
        return self.pad_token_id + 1 if self.family.position_offset else None

    @property
    def max_tokens(self) -> int:  # the longest sequence the position table holds (RoBERTa's starts at the offset)
        return self.max_position_embeddings - (self.position_offset or 0)

    @property
    def sliding(self) -> list[bool]:  # per layer: local (sliding-window) attention?
        return [t == "sliding_attention" for t in (self.layer_types or ["full_attention"] * self.num_hidden_layers)]

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2  # Hugging Face's default

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in (self.id2label or {0: "LABEL_0", 1: "LABEL_1"}).items()}

    def check_tokenizer(self, tok, path):
        """Refuse a tokenizer whose ids go past the embedding table (they would index outside it)."""
        n = len(tok.tokens())
        if n > self.vocab_size:
            raise MiniftError(f"{path}: the tokenizer has {n} token ids (0 to {n - 1}) but config.json's "
                              f"{own_name(self.model_type, 'vocab_size')} is {self.vocab_size}: they do not belong "
                              "together (use the tokenizer files saved with this model)")

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        family = d.get("model_type", "bert")
        if not isinstance(family, str) or family not in FAMILIES:
            raise MiniftError(f"config: model_type={family!r} is not supported; supported: {', '.join(FAMILIES)}")
        for key in ("is_decoder", "add_cross_attention"):
            if d.get(key):
                raise MiniftError(f"config: {key}=true is not supported; minift implements the encoder only")
        # A setting under both the family's name and BERT's is the family's; one the family fixes is not read.
        fam = FAMILIES[family]
        d = {k: v for k, v in d.items()
             if k not in fam.absent and not (k in fam.renames.values() and own_name(family, k) in d)}
        d = fam.from_json({**fam.defaults, **d})  # a key left out means the family's default, not BERT's
        d = {fam.renames.get(k, k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "id2label" not in d and d.get("num_labels") is not None:  # num_labels without names
            if not is_whole(d["num_labels"], 1) or d["num_labels"] > MAX_LABELS:
                raise MiniftError(f"config: num_labels={d['num_labels']!r}: expected a whole number from 1 to {MAX_LABELS:,}")
            kw["id2label"] = {i: f"LABEL_{i}" for i in range(d["num_labels"])}
        return cls(**kw)

    @classmethod
    def from_json(cls, path) -> "BertConfig":
        return cls.read(path)[0]

    @classmethod
    def read(cls, path) -> tuple["BertConfig", dict]:
        """(the checked settings, config.json's object as read) of a model directory or its config.json: one
        reading serves a caller that also needs a key BertConfig does not keep (the architectures)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MiniftError(f"{path}: no config.json; a model directory needs config.json beside its weights") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MiniftError(f"{path}: not valid JSON ({e})") from None
        except OSError as e:  # unreadable, or a directory where the file should be
            raise MiniftError(f"{path}: cannot be read ({e.strerror})") from None
        if not isinstance(d, dict):
            raise MiniftError(f"{path}: expected a JSON object of BERT settings")
        try:
            return cls.from_dict(d), d
        except MiniftError as e:
            raise MiniftError(f"{path}: {str(e).removeprefix('config: ')}") from None

    def to_dict(self, architecture: str = "BertModel") -> dict:
        """config.json in the family's own names, as transformers writes it."""
        family = self.family
        d = asdict(self)
        if self.id2label is None:
            del d["id2label"]
        else:
            d["id2label"] = {str(k): v for k, v in self.id2label.items()}
            d["label2id"] = self.label2id
        if self.problem_type is None:
            del d["problem_type"]
        if self.tie_word_embeddings:  # every family's default
            del d["tie_word_embeddings"]
        for key in OWN:
            if key not in family.own:
                del d[key]
        d = family.to_json(d)
        for key in family.absent:
            d.pop(key, None)
        back = {v: k for k, v in family.renames.items()}
        return {"architectures": [architecture], **{back.get(k, k): v for k, v in d.items()}}


# ---- validation: every value read is checked before a tensor is made from it ----
SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings")  # whole numbers >= 1
PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")  # in [0, 1)
POSITIVE = ("layer_norm_eps", "rope_theta", "local_rope_theta")
SWITCHES = ("sinusoidal_pos_embds", "bias", "decoder_bias", "tie_word_embeddings")
CHOICES = {"model_type": tuple(FAMILIES), "hidden_act": ACTIVATIONS, "classifier_activation": ACTIVATIONS,
           "classifier_pooling": ("cls", "mean"), "position_embedding_type": ("absolute",),
           "problem_type": PROBLEM_TYPES}
MAX_LABELS = 1_000_000  # num_labels alone builds id2label: a bound before memory goes to it


def own_name(family: str, field: str) -> str:
    """A BertConfig field under the name the family's config.json gives it (DistilBERT: n_heads, not num_attention_heads)."""
    return next((k for k, v in FAMILIES[family].renames.items() if v == field), field)


def is_whole(v, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_fields(c: "BertConfig") -> dict[int, str] | None:
    """Refuse a value of the wrong type or out of range, naming the field as the family's config.json names it.
    Returns id2label with whole-number keys."""
    def fail(field, expected, value=None):
        name = own_name(c.model_type if c.model_type in FAMILIES else "bert", field)
        shown = repr(getattr(c, field)) if value is None else str(value)
        raise MiniftError(f"config: {name}={shown if len(shown) <= 80 else shown[:76] + ' ...'}: {expected}")
    for field, choices in CHOICES.items():
        v = getattr(c, field)
        if not (v is None and field == "problem_type") and (not isinstance(v, str) or v not in choices):
            fail(field, f"not supported; supported: {', '.join(choices)}")
    for field in SIZES:
        if not is_whole(getattr(c, field), 1):
            fail(field, "expected a whole number >= 1")
    for field, least in (("type_vocab_size", 0), ("pad_token_id", 0), ("local_attention", 2)):
        if not is_whole(getattr(c, field), least):
            fail(field, f"expected a whole number >= {least}")
    if c.embedding_size is not None and not is_whole(c.embedding_size, 1):
        fail("embedding_size", "expected a whole number >= 1")
    for field in PROBABILITIES:
        v = getattr(c, field)
        if not (v is None and field == "classifier_dropout") and not (is_number(v) and 0 <= v < 1):
            fail(field, "expected a dropout probability in [0, 1)")
    for field in POSITIVE:
        if not (is_number(getattr(c, field)) and getattr(c, field) > 0):
            fail(field, "expected a finite number > 0")
    if not (is_number(c.initializer_range) and c.initializer_range >= 0):
        fail("initializer_range", "expected a finite number >= 0")
    for field in SWITCHES:
        if not isinstance(getattr(c, field), bool):
            fail(field, "expected true or false")
    if c.pad_token_id >= c.vocab_size:
        fail("pad_token_id", f"outside the vocabulary (vocab_size={c.vocab_size}: ids 0 to {c.vocab_size - 1})")
    if c.hidden_size % c.num_attention_heads:
        fail("num_attention_heads", f"does not divide {own_name(c.model_type, 'hidden_size')}={c.hidden_size}")
    if c.family.rotary and (c.hidden_size // c.num_attention_heads) % 2:
        fail("num_attention_heads", "gives an odd head size; rotary positions rotate pairs of features")
    if c.max_tokens < 2:
        fail("max_position_embeddings", f"leaves {c.max_tokens} position(s) for tokens"
             + (f" after the offset pad_token_id + 1 = {c.position_offset}" if c.position_offset else "")
             + "; [CLS] and [SEP] alone need 2")
    check_layer_types(c, fail)
    return label_ids(c, fail)


def check_layer_types(c, fail):
    if c.layer_types is None:
        return
    if not isinstance(c.layer_types, list) or not all(isinstance(t, str) for t in c.layer_types):
        fail("layer_types", "expected a list of full_attention or sliding_attention")
    kinds = set(c.layer_types) - {"full_attention", "sliding_attention"}
    if kinds:
        fail("layer_types", f"has {sorted(kinds)}; expected full_attention or sliding_attention")
    if len(c.layer_types) != c.num_hidden_layers:
        fail("layer_types", f"has {len(c.layer_types)} entries for num_hidden_layers={c.num_hidden_layers}")


def label_ids(c, fail) -> dict[int, str] | None:
    """id2label with whole-number keys, which must be exactly 0 to n - 1, and distinct names."""
    if c.id2label is None:
        return None
    if not isinstance(c.id2label, dict):
        fail("id2label", 'expected an object {"0": "name", "1": ...}')
    out, names = {}, set()
    for k, v in c.id2label.items():
        if not (is_whole(k, 0) or isinstance(k, str) and re.fullmatch(r"0|[1-9][0-9]{0,8}", k)):
            fail("id2label", f"the key {k!r} is not a class id (0, 1, ...)", "{...}")
        if not isinstance(v, str):
            fail("id2label", f"class {k}'s name {v!r} is not a string", "{...}")
        if v in names:
            fail("id2label", f"the name {v!r} is given to two classes", "{...}")
        out[int(k)] = v
        names.add(v)
    if sorted(out) != list(range(len(out))):
        fail("id2label", f"the keys must be exactly 0 to {len(out) - 1}, without gaps", f"{{keys {sorted(out)}}}")
    return out


def machine_memory() -> int | None:
    """Bytes of memory this machine has; None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def param_count(c, **instead) -> int:
    """About how many parameters the model of config c has (encoder, pooler, the largest head), as model.py builds
    it; `instead` gives other values to some of c's sizes."""
    def get(field):
        return instead.get(field, getattr(c, field))
    H, I, V = get("hidden_size"), get("intermediate_size"), get("vocab_size")
    E = get("embedding_size") or H
    positions = get("max_position_embeddings") if c.family.position_table else 0
    embeddings = (V + positions + get("type_vocab_size")) * E + 2 * E + (E * H + H if E != H else 0)
    layer = 4 * H * H + (3 if c.family.geglu else 2) * H * I + 8 * H + 2 * I
    head = H * H + H * max(len(c.id2label or ()), 2) + V  # pooler or dense, classifier, a masked LM's bias
    return embeddings + get("num_hidden_layers") * layer + head


def estimate_memory(c):
    """Refuse a config whose fp32 parameters alone exceed the machine's memory, naming the field that asks most."""
    total = machine_memory()
    need = 4 * param_count(c)
    if total is None or need <= total:
        return
    fields_ = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
               "type_vocab_size", "embedding_size")
    culprit = max((f for f in fields_ if getattr(c, f)), key=lambda f: need - 4 * param_count(c, **{f: 1}))
    raise MiniftError(f"config: {own_name(c.model_type, culprit)}={getattr(c, culprit)}: the model would need about "
                      f"{size(need)} for its fp32 parameters alone, more than the {size(total)} of memory this "
                      "machine has")


def size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"



def bert_architecture(d: dict) -> str:
    """config.json's architecture under BERT's stem (RobertaForSequenceClassification -> BertForSequenceClassification):
    minift has one model class per task, whatever the family."""
    stem = FAMILIES[d["model_type"]].stem if d.get("model_type") in FAMILIES else "Bert"
    arch = (d.get("architectures") or [f"{stem}Model"])[0]
    return "Bert" + arch.removeprefix(stem) if arch.startswith(stem) else arch
