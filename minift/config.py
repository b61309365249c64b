"""BertConfig: the Hugging Face config.json of a BERT-family encoder, read, checked and written back.

One dataclass in BERT's names serves every family; a family's config.json names that differ are
translated on the way in and back out (RENAMES), and its few own settings are fields here too.
"""
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from minift.errors import MiniftError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# model_type -> the class-name stem transformers gives the family (BertModel, XLMRobertaForMaskedLM, ...)
FAMILIES = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert",
            "electra": "Electra", "distilbert": "DistilBert", "modernbert": "ModernBert"}
ROBERTA = ("roberta", "xlm-roberta", "camembert")
# A family's config.json name -> BERT's name for the same setting.
RENAMES = {
    "distilbert": {"dim": "hidden_size", "n_heads": "num_attention_heads", "n_layers": "num_hidden_layers",
                   "hidden_dim": "intermediate_size", "activation": "hidden_act", "dropout": "hidden_dropout_prob",
                   "attention_dropout": "attention_probs_dropout_prob", "seq_classif_dropout": "classifier_dropout"},
    "modernbert": {"hidden_activation": "hidden_act", "norm_eps": "layer_norm_eps", "mlp_dropout": "hidden_dropout_prob",
                   "attention_dropout": "attention_probs_dropout_prob"},
}
# Fields that only these families' config.json have; ABSENT: BERT's fields a family's config.json lacks
# (the family fixes their value).
OWN = {"embedding_size": ("electra",), "sinusoidal_pos_embds": ("distilbert",)}
MODERNBERT_ONLY = ("bias", "layer_types", "local_attention", "rope_theta", "local_rope_theta", "classifier_pooling",
                   "classifier_activation", "decoder_bias")
ABSENT = {"distilbert": ("type_vocab_size", "layer_norm_eps", "position_embedding_type"),
          "modernbert": ("type_vocab_size", "position_embedding_type")}


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
        # Refuse what this implementation does not compute, rather than computing it wrongly.
        if self.model_type not in FAMILIES:
            raise MiniftError(f"config: model_type={self.model_type!r} is not supported; "
                              f"supported: {', '.join(FAMILIES)}")
        for key in ("hidden_act", "classifier_activation"):
            if getattr(self, key) not in ACTIVATIONS:
                raise MiniftError(f"config: {key}={getattr(self, key)!r} is not supported; "
                                  f"supported: {', '.join(ACTIVATIONS)}")
        if self.classifier_pooling not in ("cls", "mean"):
            raise MiniftError(f"config: classifier_pooling={self.classifier_pooling!r} is not one of cls, mean")
        kinds = set(self.layer_types or ()) - {"full_attention", "sliding_attention"}
        if kinds:
            raise MiniftError(f"config: layer_types has {sorted(kinds)}; expected full_attention or sliding_attention")
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise MiniftError(f"config: layer_types has {len(self.layer_types)} entries for "
                              f"num_hidden_layers={self.num_hidden_layers}")
        if self.position_embedding_type != "absolute":
            raise MiniftError(f"config: position_embedding_type={self.position_embedding_type!r} is not "
                              "supported; only 'absolute' position embeddings are implemented")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise MiniftError(f"config: problem_type={self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if self.hidden_size % self.num_attention_heads:
            raise MiniftError(f"config: hidden_size={self.hidden_size} is not divisible by "
                              f"num_attention_heads={self.num_attention_heads}")
        if self.id2label is not None:  # JSON keys are strings
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}

    # The switches of the families, in one place: model.py reads these, never model_type.
    @property
    def pre_norm(self) -> bool:  # LayerNorm before each block, a final one after the last; GeGLU; rotary
        return self.model_type == "modernbert"

    @property
    def position_offset(self) -> int | None:
        """Learned positions start here and count real tokens only (RoBERTa's, after its padding id);
        None: positions are the token's index in the padded row (BERT's); rotary families have no table."""
        return self.pad_token_id + 1 if self.model_type in ROBERTA else None

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

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        family = d.get("model_type", "bert")
        if family not in FAMILIES:
            raise MiniftError(f"config: model_type={family!r} is not supported; supported: {', '.join(FAMILIES)}")
        for key in ("is_decoder", "add_cross_attention"):
            if d.get(key):
                raise MiniftError(f"config: {key}=true is not supported; minift implements the encoder only")
        d = {**DEFAULTS.get(family, {}), **d}  # a key left out means the family's default, not BERT's
        if family == "modernbert":
            d = _from_modernbert(d)
        d = {RENAMES.get(family, {}).get(k, k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "id2label" not in d and d.get("num_labels"):  # num_labels without names
            kw["id2label"] = {i: f"LABEL_{i}" for i in range(d["num_labels"])}
        return cls(**kw)

    @classmethod
    def from_json(cls, path) -> "BertConfig":
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
            return cls.from_dict(d)
        except TypeError as e:
            raise MiniftError(f"{path}: {e}") from None
        except MiniftError as e:
            raise MiniftError(f"{path}: {e}") from None

    def to_dict(self, architecture: str = "BertModel") -> dict:
        """config.json in the family's own names, as transformers writes it."""
        family = self.model_type
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
        for key, owners in OWN.items():
            if family not in owners:
                del d[key]
        if family == "electra":
            d["embedding_size"] = self.embedding_size or self.hidden_size
        if family == "modernbert":
            d = _to_modernbert(d)
        else:
            for key in MODERNBERT_ONLY:
                del d[key]
        for key in ABSENT.get(family, ()):
            d.pop(key, None)
        back = {v: k for k, v in RENAMES.get(family, {}).items()}
        return {"architectures": [architecture], **{back.get(k, k): v for k, v in d.items()}}


def bert_architecture(d: dict) -> str:
    """config.json's architecture under BERT's stem (RobertaForSequenceClassification -> BertForSequenceClassification):
    minift has one model class per task, whatever the family."""
    stem = FAMILIES.get(d.get("model_type", "bert"), "Bert")
    arch = (d.get("architectures") or [f"{stem}Model"])[0]
    return "Bert" + arch.removeprefix(stem) if arch.startswith(stem) else arch


# Defaults of the families' transformers configs where they differ from BERT's.
DEFAULTS = {
    "roberta": {"vocab_size": 50265, "pad_token_id": 1}, "xlm-roberta": {"pad_token_id": 1},
    "camembert": {"pad_token_id": 1},
    "electra": {"embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "distilbert": {"n_layers": 6, "dim": 768, "n_heads": 12, "hidden_dim": 3072, "activation": "gelu",
                   "seq_classif_dropout": 0.2, "type_vocab_size": 0, "layer_norm_eps": 1e-12},
    "modernbert": {"vocab_size": 50368, "intermediate_size": 1152, "num_hidden_layers": 22,
                   "max_position_embeddings": 8192, "norm_eps": 1e-5, "pad_token_id": 50283,
                   "hidden_activation": "gelu", "embedding_dropout": 0.0, "mlp_dropout": 0.0, "attention_dropout": 0.0,
                   "classifier_dropout": 0.0, "type_vocab_size": 0},
}
BIASES = ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias")


def _from_modernbert(d: dict) -> dict:
    """ModernBERT's config.json, old (global_rope_theta, global_attn_every_n_layers) or new (rope_parameters,
    layer_types) style -> BertConfig's fields."""
    biases = {k: d.get(k, False) for k in BIASES}
    if len(set(biases.values())) > 1:
        raise MiniftError(f"config: {biases} differ; minift supports ModernBERT with all of them alike")
    if d["embedding_dropout"] != d["mlp_dropout"]:
        raise MiniftError(f"config: embedding_dropout={d['embedding_dropout']} differs from mlp_dropout="
                          f"{d['mlp_dropout']}; minift applies one hidden dropout to both")
    rope = d.get("rope_parameters") or {}
    for kind in ("full_attention", "sliding_attention"):
        if rope.get(kind, {}).get("rope_type", "default") != "default":
            raise MiniftError(f"config: rope_parameters.{kind}.rope_type={rope[kind]['rope_type']!r} is not "
                              "supported; only 'default' rotary embeddings are implemented")
    every = d.get("global_attn_every_n_layers", 3)
    n = d.get("num_hidden_layers", 22)
    return {**d, "bias": biases["norm_bias"],
            "rope_theta": rope.get("full_attention", {}).get("rope_theta", d.get("global_rope_theta", 160_000.0)),
            "local_rope_theta": rope.get("sliding_attention", {}).get("rope_theta", d.get("local_rope_theta", 10_000.0)),
            "layer_types": d.get("layer_types") or
            ["sliding_attention" if i % every else "full_attention" for i in range(n)]}


def _to_modernbert(d: dict) -> dict:
    rope = {"full_attention": {"rope_type": "default", "rope_theta": d.pop("rope_theta")},
            "sliding_attention": {"rope_type": "default", "rope_theta": d.pop("local_rope_theta")}}
    bias = d.pop("bias")
    return {**d, **dict.fromkeys(BIASES, bias), "rope_parameters": rope, "embedding_dropout": d["hidden_dropout_prob"]}
