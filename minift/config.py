"""BertConfig: the Hugging Face config.json of a BERT, read, checked and written back."""
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from minift.errors import MiniftError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


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

    def __post_init__(self):
        # Refuse what this implementation does not compute, rather than computing it wrongly.
        if self.hidden_act not in ACTIVATIONS:
            raise MiniftError(f"config: hidden_act={self.hidden_act!r} is not supported; "
                              f"supported: {', '.join(ACTIVATIONS)}")
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

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2  # Hugging Face's default

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in (self.id2label or {0: "LABEL_0", 1: "LABEL_1"}).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        if d.get("model_type", "bert") != "bert":
            raise MiniftError(f"config: model_type={d['model_type']!r} is not supported; only 'bert' is")
        for key in ("is_decoder", "add_cross_attention"):
            if d.get(key):
                raise MiniftError(f"config: {key}=true is not supported; minift implements the BERT encoder only")
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
        d = asdict(self)
        if self.id2label is None:
            del d["id2label"]
        else:
            d["id2label"] = {str(k): v for k, v in self.id2label.items()}
            d["label2id"] = self.label2id
        if self.problem_type is None:
            del d["problem_type"]
        return {"architectures": [architecture], "model_type": "bert", **d}
