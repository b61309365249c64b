"""The families: what makes RoBERTa, DistilBERT, ELECTRA and ModernBERT differ from BERT, one block each.

A Family says how its config.json names BERT's settings, how its checkpoints name the encoder's tensors
and heads, and which architecture switches model.py reads (cfg.family.rotary, ...). model.py and the tasks
never test model_type. To add a family: write one block below (names, heads, switches) and add it to
FAMILIES, then its parity tests (tests/test_families.py, tests/test_family_heads.py); docs/families.md.
"""
from dataclasses import dataclass, field, replace
from typing import Callable

from minift.errors import MiniftError


def same(d: dict) -> dict:
    return d


@dataclass(frozen=True)
class Family:
    stem: str  # transformers' class-name stem: BertModel, XLMRobertaForMaskedLM, ...
    # ---- config.json ----
    renames: dict = field(default_factory=dict)  # the family's config.json name -> BERT's name for the same setting
    defaults: dict = field(default_factory=dict)  # its transformers config's defaults (its names), where not BERT's
    absent: tuple = ()  # BERT's fields its config.json lacks (the family fixes their value)
    own: tuple = ()  # BertConfig fields only this family's config.json has
    from_json: Callable[[dict], dict] = same  # config.json (its names) -> BertConfig's fields, beyond renames
    to_json: Callable[[dict], dict] = same  # and back
    # ---- checkpoints: Hugging Face names ----
    prefix: str = "bert"  # the encoder's name inside transformers' task models (bert.encoder.layer.0...)
    names: dict = field(default_factory=dict)  # minift module -> Hugging Face module(s) (see BERT_NAMES)
    pretraining_heads: tuple = ()  # checkpoint modules that are no part of the encoder
    lm_head: tuple = ()  # masked-LM head: dense, norm, decoder, and the decoder's bias (see BERT)
    lm_act: str = "hidden_act"  # its activation: a BertConfig field naming it, or the activation itself
    seq_head: tuple = ()  # *ForSequenceClassification: dense, norm (or None), out
    seq_act: str = "tanh"  # dense's activation: a BertConfig field naming it, or the activation itself
    seq_drop_in: bool = False  # dropout before the dense layer too
    pooler_is_head: bool = False  # the sequence head's dense layer is the encoder's pooler
    mean_pooling: bool = False  # classifier_pooling="mean" is read: the head averages every token's vector
    prediction_head: bool = False  # a dense -> activation -> norm `head` before QA's and tagging's last layer
    # ---- architecture switches (model.py) ----
    position_table: bool = True  # learned absolute positions; False: rotary ones
    position_offset: bool = False  # learned positions count real tokens from pad_token_id + 1 (RoBERTa's)
    rotary: bool = False  # rotary positions in attention (global and local theta)
    pre_norm: bool = False  # LayerNorm before each block (the embeddings' norm is the first layer's)
    geglu: bool = False  # the MLP's first layer gives value and gate: act(value) * gate
    final_norm: bool = False  # a LayerNorm after the last layer


def activation(config, name: str) -> str:
    """A head's activation: `name` itself, or the BertConfig field it names (hidden_act, classifier_activation)."""
    return getattr(config, name, name)


# ---- BERT: the reference (transformers' modeling_bert.py) ----
# minift module -> Hugging Face module(s); inside a layer, relative to names["layers"].{i}.
# A tuple is concatenated along the output dimension, in this order (minift's fused QKV).
BERT_NAMES = {"embeddings.word": "embeddings.word_embeddings", "embeddings.position": "embeddings.position_embeddings",
              "embeddings.token_type": "embeddings.token_type_embeddings", "embeddings.ln": "embeddings.LayerNorm",
              "embeddings.project": "embeddings_project", "pooler": "pooler.dense", "layers": "encoder.layer",
              "attn.qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
              "attn.proj": "attention.output.dense", "ln1": "attention.output.LayerNorm",
              "fc": "intermediate.dense", "proj": "output.dense", "ln2": "output.LayerNorm"}
BERT = Family(
    stem="Bert", prefix="bert", names=BERT_NAMES, pretraining_heads=("cls.",),
    # The masked-LM head is dense -> activation -> norm, then the decoder, whose weight is the word embeddings
    # (tied: files may hold a copy, never read) and whose bias is the last name (some files hold it twice,
    # under the decoder's name too).
    lm_head=("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder",
             "cls.predictions.bias"),
    seq_head=("bert.pooler", None, "classifier"), pooler_is_head=True)  # dropout -> classifier on the pooled [CLS]

# ---- RoBERTa, XLM-RoBERTa, CamemBERT: BERT's encoder, positions after the padding id ----
ROBERTA = Family(
    stem="Roberta", defaults={"vocab_size": 50265, "pad_token_id": 1}, prefix="roberta", names=BERT_NAMES,
    pretraining_heads=("lm_head.",), lm_head=("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "lm_head.bias"),
    lm_act="gelu",  # whatever hidden_act
    seq_head=("classifier.dense", None, "classifier.out_proj"), seq_drop_in=True, position_offset=True)
XLM_ROBERTA = replace(ROBERTA, stem="XLMRoberta", defaults={"pad_token_id": 1})
CAMEMBERT = replace(ROBERTA, stem="Camembert", defaults={"pad_token_id": 1})

# ---- ELECTRA: BERT's encoder with embeddings narrower than hidden_size (embedding_size), projected up ----
ELECTRA = Family(
    stem="Electra", defaults={"embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4,
                              "intermediate_size": 1024},
    own=("embedding_size",), to_json=lambda d: {**d, "embedding_size": d["embedding_size"] or d["hidden_size"]},
    prefix="electra", names=BERT_NAMES,
    pretraining_heads=("discriminator_predictions.", "generator_predictions.", "generator_lm_head."),
    # The generator's masked-LM head (a discriminator has none): it narrows to embedding_size before the decoder.
    lm_head=("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head",
             "generator_lm_head.bias"), lm_act="gelu",
    seq_head=ROBERTA.seq_head, seq_act="gelu", seq_drop_in=True)

# ---- DistilBERT: its own config and tensor names, no token types, an optional sinusoidal position table ----
DISTILBERT = Family(
    stem="DistilBert",
    renames={"dim": "hidden_size", "n_heads": "num_attention_heads", "n_layers": "num_hidden_layers",
             "hidden_dim": "intermediate_size", "activation": "hidden_act", "dropout": "hidden_dropout_prob",
             "attention_dropout": "attention_probs_dropout_prob", "seq_classif_dropout": "classifier_dropout"},
    defaults={"n_layers": 6, "dim": 768, "n_heads": 12, "hidden_dim": 3072, "activation": "gelu",
              "seq_classif_dropout": 0.2, "type_vocab_size": 0, "layer_norm_eps": 1e-12},
    absent=("type_vocab_size", "layer_norm_eps", "position_embedding_type"), own=("sinusoidal_pos_embds",),
    prefix="distilbert",
    names={"embeddings.word": "embeddings.word_embeddings", "embeddings.position": "embeddings.position_embeddings",
           "embeddings.ln": "embeddings.LayerNorm", "layers": "transformer.layer",
           "attn.qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"), "attn.proj": "attention.out_lin",
           "ln1": "sa_layer_norm", "fc": "ffn.lin1", "proj": "ffn.lin2", "ln2": "output_layer_norm"},
    pretraining_heads=("vocab_transform.", "vocab_layer_norm.", "vocab_projector."),
    lm_head=("vocab_transform", "vocab_layer_norm", "vocab_projector", "vocab_projector.bias"),
    seq_head=("pre_classifier", None, "classifier"), seq_act="relu")

# ---- ModernBERT: pre-LayerNorm, rotary positions (global and sliding-window layers), GeGLU, optional biases ----
MODERNBERT_BIASES = ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias")


def from_modernbert(d: dict) -> dict:
    """ModernBERT's config.json, old (global_rope_theta, global_attn_every_n_layers) or new (rope_parameters,
    layer_types) style -> BertConfig's fields."""
    biases = {k: d.get(k, False) for k in MODERNBERT_BIASES}
    odd = next((k for k, v in biases.items() if not isinstance(v, bool)), None)
    if odd:
        raise MiniftError(f"config: {odd}={biases[odd]!r}: expected true or false")
    if len(set(biases.values())) > 1:
        raise MiniftError(f"config: {biases} differ; minift supports ModernBERT with all of them alike")
    if d["embedding_dropout"] != d["mlp_dropout"]:
        raise MiniftError(f"config: embedding_dropout={d['embedding_dropout']} differs from mlp_dropout="
                          f"{d['mlp_dropout']}; minift applies one hidden dropout to both")
    rope = d.get("rope_parameters") or {}
    if not isinstance(rope, dict) or not all(isinstance(v, dict) for v in rope.values()):
        raise MiniftError(f"config: rope_parameters={rope!r}: expected an object of objects, "
                          '{"full_attention": {"rope_theta": ...}, "sliding_attention": {...}}')
    for kind in ("full_attention", "sliding_attention"):
        if rope.get(kind, {}).get("rope_type", "default") != "default":
            raise MiniftError(f"config: rope_parameters.{kind}.rope_type={rope[kind]['rope_type']!r} is not "
                              "supported; only 'default' rotary embeddings are implemented")
    every = d.get("global_attn_every_n_layers", 3)
    n = d.get("num_hidden_layers", 22)
    for key, value in (("global_attn_every_n_layers", every), ("num_hidden_layers", n)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise MiniftError(f"config: {key}={value!r}: expected a whole number >= 1")
    return {**d, "bias": biases["norm_bias"],
            "rope_theta": rope.get("full_attention", {}).get("rope_theta", d.get("global_rope_theta", 160_000.0)),
            "local_rope_theta": rope.get("sliding_attention", {}).get("rope_theta", d.get("local_rope_theta", 10_000.0)),
            "layer_types": d.get("layer_types") or
            ["sliding_attention" if i % every else "full_attention" for i in range(n)]}


def to_modernbert(d: dict) -> dict:
    rope = {"full_attention": {"rope_type": "default", "rope_theta": d.pop("rope_theta")},
            "sliding_attention": {"rope_type": "default", "rope_theta": d.pop("local_rope_theta")}}
    bias = d.pop("bias")
    return {**d, **dict.fromkeys(MODERNBERT_BIASES, bias), "rope_parameters": rope,
            "embedding_dropout": d["hidden_dropout_prob"]}


MODERNBERT = Family(
    stem="ModernBert",
    renames={"hidden_activation": "hidden_act", "norm_eps": "layer_norm_eps", "mlp_dropout": "hidden_dropout_prob",
             "attention_dropout": "attention_probs_dropout_prob"},
    defaults={"vocab_size": 50368, "intermediate_size": 1152, "num_hidden_layers": 22,
              "max_position_embeddings": 8192, "norm_eps": 1e-5, "pad_token_id": 50283,
              "hidden_activation": "gelu", "embedding_dropout": 0.0, "mlp_dropout": 0.0, "attention_dropout": 0.0,
              "classifier_dropout": 0.0, "type_vocab_size": 0},
    absent=("type_vocab_size", "position_embedding_type"),
    own=("bias", "layer_types", "local_attention", "rope_theta", "local_rope_theta", "classifier_pooling",
         "classifier_activation", "decoder_bias"),
    from_json=from_modernbert, to_json=to_modernbert,
    prefix="model",
    names={"embeddings.word": "embeddings.tok_embeddings", "embeddings.ln": "embeddings.norm",
           "final_ln": "final_norm", "layers": "layers", "attn.qkv": "attn.Wqkv", "attn.proj": "attn.Wo",
           "ln1": "attn_norm", "fc": "mlp.Wi", "proj": "mlp.Wo", "ln2": "mlp_norm"},
    pretraining_heads=("decoder.",),  # its masked LM's head.* is the classifier's too
    lm_head=("head.dense", "head.norm", "decoder", "decoder.bias"), lm_act="classifier_activation",
    seq_head=("head.dense", "head.norm", "classifier"), seq_act="classifier_activation", mean_pooling=True,
    prediction_head=True,
    position_table=False, rotary=True, pre_norm=True, geglu=True, final_norm=True)

# model_type (config.json) -> its family
FAMILIES = {"bert": BERT, "roberta": ROBERTA, "xlm-roberta": XLM_ROBERTA, "camembert": CAMEMBERT,
            "electra": ELECTRA, "distilbert": DISTILBERT, "modernbert": MODERNBERT}
