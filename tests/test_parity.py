"""minift against transformers on the real MiniLM: the first test to read.

The model is all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters) with a 3-label sequence
classification head: transformers' BertForSequenceClassification is the reference, minift's
BertClassifier the model under test. Both hold the same weights (transformers' model, head included,
is written to a directory and minift reads it from there) and get the same batch: four sentence pairs
of different lengths, so that three rows carry padding and both token types occur. Both run in fp32
with dropout off. Compared: the logits, the loss, and after loss.backward() the gradient of every
parameter, each matched to transformers' by name.

The tolerances, OUTPUTS and GRADIENTS below, are relative to the largest magnitude in the reference tensor.
"""
import pytest
import torch

from minift import BertClassifier, Tokenizer
from minift.checkpoint import hf_tensor_names

OUTPUTS = 1e-5    # logits and loss: the same fp32 operations, summed in another order (minift fuses Q, K
#                   and V into one matmul, computes on the real tokens only, and the last layer for [CLS] alone)
GRADIENTS = 1e-4  # every gradient: the same operations in reverse, summed over more terms (tokens, batch)

PAIRS = [("A gorgeous, witty, heartfelt film.", "Is it good?"),
         ("The plot is a mess and the jokes fall flat, one after another, for two long hours.", "Is it good?"),
         ("It is a movie.", "What is it?"),
         ("Neither the actors nor the score can save it.", "Why not?")]
LABELS = torch.tensor([0, 2, 1, 2])


def relative_error(ours, reference):
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def transformers_gradient(hf, ours, name):
    """transformers' gradient of minift's tensor `name`: its parts in transformers, stacked (minift's fused
    QKV weight is transformers' query, key and value weights, one above the other)."""
    grads = {n: p.grad for n, p in hf.named_parameters()}
    prefix = "bert." if name.startswith("bert.") else ""  # the head's tensors carry transformers' names already
    return torch.cat([grads[prefix + part] for part in hf_tensor_names(ours, name)])


def test_minilm_classifier_matches_transformers(minilm_dir, tmp_path):
    transformers = pytest.importorskip("transformers")

    # 1. The reference, with a fresh 3-label head, and minift loaded from what it saves.
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=3, attn_implementation="eager").eval()  # eval(): dropout off; gradients still flow
    torch.nn.init.normal_(hf.classifier.weight, std=1.0)  # logits of order 1, not the 0.02 init's near-uniform ones
    hf.save_pretrained(tmp_path)
    ours = BertClassifier.from_pretrained(tmp_path).eval()

    # 2. One batch, tokenised once, for both.
    batch = Tokenizer.from_dir(minilm_dir)([a for a, _ in PAIRS], [b for _, b in PAIRS])
    assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()

    # 3. Forward: logits [4, 3] and the cross-entropy loss.
    reference = hf(**batch, labels=LABELS)
    logits, loss = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], labels=LABELS)
    assert relative_error(logits, reference.logits) <= OUTPUTS
    assert relative_error(loss, reference.loss) <= OUTPUTS

    # 4. Backward: every parameter's gradient, and every one of transformers' parameters accounted for.
    reference.loss.backward()
    loss.backward()
    covered = set()
    for name, p in ours.named_parameters():
        expected = transformers_gradient(hf, ours, name)
        assert p.grad is not None and expected.abs().max() > 0, name
        assert relative_error(p.grad, expected) <= GRADIENTS, name
        covered |= {("bert." if name.startswith("bert.") else "") + part for part in hf_tensor_names(ours, name)}
    assert covered == {n for n, _ in hf.named_parameters()}
