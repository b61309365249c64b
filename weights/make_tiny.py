"""Make weights/tiny-bert: a random-weight BERT classifier small enough to commit, for fast tests.

Run from the repository root with transformers installed (a test extra):
    python weights/make_tiny.py
It writes the checkpoint with Hugging Face's own BertForSequenceClassification, so the file
layout is exactly what transformers produces, and records that model's outputs on fixed
inputs in weights/tiny-bert/reference.safetensors: minift's tests compare against these
without needing transformers.
"""
import json
import string
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

out = Path(__file__).parent / "tiny-bert"
out.mkdir(exist_ok=True)

# A small WordPiece vocabulary: specials, characters (word-initial and ## continuation), a few words.
words = ("the a an is was it this that and or but not no very good bad great awful movie film story "
         "plot actor actors love hate fun boring funny sad happy dull fine best worst i you we they "
         "of to in on for with as at by be are have has do does did so too just really").split()
chars = list(string.ascii_lowercase + string.digits + string.punctuation)
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + words
(out / "vocab.txt").write_text("\n".join(vocab) + "\n")
(out / "tokenizer_config.json").write_text(json.dumps(
    {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 64}, indent=2) + "\n")

torch.manual_seed(0)
cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
                 id2label={0: "negative", 1: "neutral", 2: "positive"},
                 label2id={"negative": 0, "neutral": 1, "positive": 2})
model = BertForSequenceClassification(cfg).eval()
model.save_pretrained(out)

# Fixed inputs: padding, token types, and one fully padded row.
g = torch.Generator().manual_seed(1)
ids = torch.randint(5, len(vocab), (4, 12), generator=g)
ids[:, 0] = 2
mask = torch.ones_like(ids)
mask[1, 7:] = 0
mask[2, 3:] = 0
mask[3, :] = 0
ids[mask == 0] = 0
types = torch.zeros_like(ids)
types[0, 6:] = 1
with torch.no_grad():
    o = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    base = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
save_file({"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
           "last_hidden_state": base.last_hidden_state.contiguous(), "pooler_output": base.pooler_output.contiguous(),
           "logits": o.logits.contiguous()}, str(out / "reference.safetensors"))
print(f"wrote {out}: {sum(f.stat().st_size for f in out.iterdir()) / 1024:.0f} KB")
