"""Extractive question answering (--task qa): features, answers, metrics, the model, the loop.

References and tolerances:
- features: identical (==) to transformers' BertTokenizerFast with truncation="only_second",
  return_overflowing_tokens and return_offsets_mapping, and to run_qa.py's start/end labelling;
- span search: hand-made logits with one right answer each;
- exact match / F1: equal (within 1e-9: the same float operations) to the official SQuAD v1.1 and
  v2.0 evaluation scripts, whose formulas are copied below;
- BertForQuestionAnswering: fp32 logits and loss within 1e-5 of transformers, gradients within 1e-4;
- resume: bit-identical (torch.equal).
No SQuAD-like corpus is reachable offline: every file here is made by the test.
"""
import collections
import io
import json
import os
import random
import re
import shutil
import signal
import string
import sys

import pytest
import torch
from safetensors.torch import load_file

import minift.train_loop
from minift.cli import main
from minift.errors import MiniftError
from minift.predict import evaluate, load, predict, task_options
from minift.tasks import TaskOptions
from minift.tasks.qa import QA, BertQA, best_answers, make_features, squad_metrics
from minift.tokenizer import Tokenizer
from minift.train_loop import train
from conftest import interrupt_at

TOL = 1e-5
FAST = dict(precision="fp32", compile="off", device="cpu")
WORDS = "the movie film story plot good bad great awful love hate fun boring funny sad happy dull fine".split()


def close(a, b, tol=TOL):
    return (a - b).abs().max().item() <= tol


# ---- 1. features: identical to BertTokenizerFast + run_qa.py's labelling ----

CONTEXTS = [
    "The café in Zürich serves crème brûlée; its owner, Ōsaka-born, said “naïve” twice.",
    "Tabs\tand  double  spaces,\nnew lines\r\nand\u00a0no-break\u2009thin spaces: 東京 is Tokyo, 🙂 a smile.",
    "zero\u200bwidth joiners, com\u0301bining accents, ＦＵＬＬＷＩＤＴＨ letters and Straße (ß) [MASK] tokens.",
    "   Leading and trailing whitespace around a plain sentence about the movie and the plot.   ",
    " ".join(random.Random(4).choice(WORDS) for _ in range(90)),  # long: many windows
]


def spans_of(context: str, rng, n: int):
    """n answers (text, answer_start): runs of 1-4 whitespace-separated words, at every word first, and one
    that starts on the whitespace before a word."""
    words = [m for m in re.finditer(r"\S+", context)]
    out = []
    for k in list(range(len(words))) + [rng.randrange(len(words)) for _ in range(n)]:
        last = words[min(len(words) - 1, k + rng.randrange(4))]
        out.append((context[words[k].start():last.end()], words[k].start()))
    k = rng.randrange(1, len(words))
    out.append((context[words[k].start() - 1:words[k].end()], words[k].start() - 1))
    return out


def squad_rows(rng):
    rows = []
    for c, context in enumerate(CONTEXTS):
        for a, (text, start) in enumerate(spans_of(context, rng, 10)):
            question = rng.choice(["what is it?", "Which café, in Zürich?", "who  said\tit", "and " * rng.randint(1, 6)])
            rows.append({"id": f"{c}-{a}", "question": question, "context": context,
                         "answers": [(text, start)]})
    return rows


def reference_features(hf_tok, rows, max_length, stride):
    """BertTokenizerFast's windows, and run_qa.py's prepare_train_features labelling."""
    enc = hf_tok([r["question"] for r in rows], [r["context"] for r in rows], truncation="only_second",
                 max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    starts, ends, context_offsets = [], [], []
    for w, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(w)
        text, start_char = rows[enc["overflow_to_sample_mapping"][w]]["answers"][0]
        end_char = start_char + len(text)
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        context_offsets.append([tuple(o) for o, s in zip(offsets, seq) if s == 1])
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(0)
            ends.append(0)
            continue
        # run_qa.py's loops, except that the first stops at the context's end: run_qa.py walks on into
        # [SEP] (offsets (0, 0)) and labels [SEP] when the answer starts at the window's last token.
        i = first
        while i <= last and offsets[i][0] <= start_char:
            i += 1
        starts.append(i - 1)
        i = last
        while offsets[i][1] >= end_char:
            i -= 1
        ends.append(i + 1)
    return enc, starts, ends, context_offsets


def qa_examples(rows, path="<rows>"):
    from minift.tasks.qa import Examples
    answers = None if rows[0]["answers"] is None else [r["answers"] for r in rows]
    return Examples(path, [r["id"] for r in rows], [r["question"] for r in rows], [r["context"] for r in rows],
                    answers, [f"question {r['id']!r}" for r in rows])


@pytest.mark.parametrize("max_length,stride", [(24, 4), (32, 10), (40, 0), (384, 128)])
def test_features_match_bert_tokenizer_fast(minilm_dir, max_length, stride):
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    rows = squad_rows(random.Random(max_length))
    enc, starts, ends, offsets = reference_features(hf_tok, rows, max_length, stride)
    opts = TaskOptions(doc_stride=stride)
    f = make_features(qa_examples(rows), Tokenizer.from_dir(minilm_dir), max_length, opts)
    assert f.ids == enc["input_ids"]
    assert f.types == enc["token_type_ids"]
    assert f.example == enc["overflow_to_sample_mapping"]
    ours = [f.offsets[i][s:s + len(t) - t.index(1) - 1] for i, s, t in zip(f.example, f.first, f.types)]
    assert ours == offsets  # each context token's character span, window by window
    assert f.start.tolist() == starts and f.end.tolist() == ends
    # The cases are there: answers at a window's first and last context token, answers that two windows
    # share or that fall across a window's edge (labelled [CLS] in one window, found in the next).
    n_windows = collections.Counter(f.example)
    assert max(n_windows.values()) >= (3 if max_length < 384 else 1)
    if max_length < 384:
        firsts = {w for w, s in enumerate(starts) if s and s == f.types[w].index(1)}
        lasts = {w for w, e in enumerate(ends) if e and e == len(f.ids[w]) - 2}
        assert firsts and lasts
        cut = []  # windows that hold part of the answer only: labelled [CLS]
        for w, i in enumerate(f.example):
            text, a = rows[i]["answers"][0]
            lo, hi = offsets[w][0][0], offsets[w][-1][1]
            if a < hi and a + len(text) > lo and not lo <= a < a + len(text) <= hi:
                assert starts[w] == 0
                cut.append(any(starts[v] for v, j in enumerate(f.example) if j == i))
        # with overlapping windows, some of those answers are whole in the next window; without, none is
        assert cut and any(cut) == (stride > 0)


def test_features_match_with_a_vocab_txt_tokenizer(tiny_dir):
    """The same on tiny-bert, whose tokenizer is built from vocab.txt alone (another code path)."""
    transformers = pytest.importorskip("transformers")
    rows = squad_rows(random.Random(7))
    enc, starts, ends, _ = reference_features(transformers.BertTokenizerFast.from_pretrained(tiny_dir), rows, 48, 16)
    f = make_features(qa_examples(rows), Tokenizer.from_dir(tiny_dir), 48, TaskOptions(doc_stride=16))
    assert (f.ids, f.types, f.example) == (enc["input_ids"], enc["token_type_ids"], enc["overflow_to_sample_mapping"])
    assert f.start.tolist() == starts and f.end.tolist() == ends


# ---- 2. answers from hand-made logits ----

CONTEXT = "good  bad\tgreat awful love hate fun boring dull fine"  # one tiny-bert token per word


@pytest.fixture(scope="module")
def windows(tiny_dir):
    """Question "is it" over CONTEXT in windows of 7 context tokens, 3 shared: words 0-6 and 4-9."""
    rows = [{"id": "q", "question": "is it", "context": CONTEXT, "answers": []}]
    f = make_features(qa_examples(rows), Tokenizer.from_dir(tiny_dir), 12, TaskOptions(doc_stride=3, squad_v2=True))
    assert f.first == [0, 4] and [len(x) for x in f.ids] == [12, 11]
    return f


def logits(f, w, starts: dict, ends: dict):
    """[2, T] scores for window w: -10 everywhere but the given {position: score}; the context starts at 4."""
    x = torch.full((2, len(f.ids[w])), -10.0)
    for row, d in ((0, starts), (1, ends)):
        for k, v in d.items():
            x[row, k] = v
    return x


def answer(f, outputs, **opts):
    f.opts = TaskOptions(**{"doc_stride": 3, **opts})
    (a,) = best_answers(outputs, f)
    assert a["answer"] == ("" if a["start"] is None else CONTEXT[a["start"]:a["end"]])
    return a


def test_best_valid_span(windows):
    # Higher scores that make no answer: a question token (1), [SEP] (11), ends before their start (4, 7 < 8).
    w0 = logits(windows, 0, {1: 9, 8: 8, 5: 3}, {11: 9, 4: 8, 7: 2})
    a = answer(windows, [w0, logits(windows, 1, {}, {})])
    assert (a["answer"], a["score"]) == ("bad\tgreat awful", 5.0)  # tokens 5..7: words 1-3, whitespace kept
    # At most --max-answer-length tokens: the 3-token span is out at 2, the best 2-token one is in.
    w0[1, 6] = 1.5
    assert answer(windows, [w0, logits(windows, 1, {}, {})], max_answer_length=2)["answer"] == "bad\tgreat"
    assert answer(windows, [w0, logits(windows, 1, {}, {})], max_answer_length=3)["answer"] == "bad\tgreat awful"


def test_spans_across_windows(windows):
    # The best span is in the second window (words 8-9: its tokens 8-9), a worse one in the first.
    w0, w1 = logits(windows, 0, {5: 2}, {6: 2}), logits(windows, 1, {8: 3}, {9: 3})
    a = answer(windows, [w0, w1])
    assert (a["answer"], a["start"], a["end"]) == ("dull fine", CONTEXT.index("dull"), len(CONTEXT))
    # Words 4-6 are in both windows; a span there is found from either.
    w1 = logits(windows, 1, {4: 4}, {6: 4})  # window 1's tokens 4..6 are words 4-6
    assert answer(windows, [w0, w1])["answer"] == "love hate fun"


def test_no_answer_threshold(windows):
    # Best span 4 + 4 = 8; [CLS] scores 5 + 5 = 10 in window 0 and 3 + 3 = 6 in window 1: the lowest (6) counts.
    w0, w1 = logits(windows, 0, {0: 5, 4: 4}, {0: 5, 4: 4}), logits(windows, 1, {0: 3}, {0: 3})
    assert answer(windows, [w0, w1], squad_v2=True)["answer"] == "good"
    no = answer(windows, [w0, w1], squad_v2=True, null_threshold=-2.5)  # 6 > 8 - 2.5
    assert (no["answer"], no["start"], no["score"]) == ("", None, 6.0)
    assert answer(windows, [w0, w1], squad_v2=True, null_threshold=-1.5)["answer"] == "good"
    w1[:, 0] = 4.5  # [CLS] 9 > 8
    assert answer(windows, [w0, w1], squad_v2=True)["answer"] == ""
    assert answer(windows, [w0, w1], squad_v2=False)["answer"] == "good"  # v1.1: always an answer


def test_only_the_top_20_starts_count(tiny_dir):
    question = "is it " * 12  # 24 tokens: positions 1-24
    rows = [{"id": "q", "question": question, "context": CONTEXT, "answers": None}]
    f = make_features(qa_examples(rows), Tokenizer.from_dir(tiny_dir), 60, TaskOptions())
    ctx = f.types[0].index(1)
    assert ctx == 26
    # 20 better starts, all on question tokens; the one start in the context ranks 21st, with the best end.
    x = logits(f, 0, {**{k: 20.0 - k * 0.1 for k in range(1, 21)}, ctx + 2: 1.0}, {ctx + 2: 5.0})
    (a,) = best_answers([x], f)
    assert (a["answer"], a["start"]) == ("", None)  # no valid span among the top 20 x top 20
    x[0, ctx + 2] = 18.5  # now the 16th start
    (a,) = best_answers([x], f)
    assert a["answer"] == "great"


# ---- 3. exact match and F1: the official evaluation scripts' formulas ----
# From SQuAD's evaluate-v1.1.py (normalize_answer, f1_score, exact_match_score, evaluate).

def v11_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()
    return white_space_fix(remove_articles(remove_punc(lower(s))))


def v11_f1_score(prediction, ground_truth):
    prediction_tokens = v11_normalize_answer(prediction).split()
    ground_truth_tokens = v11_normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def v11_exact_match_score(prediction, ground_truth):
    return v11_normalize_answer(prediction) == v11_normalize_answer(ground_truth)


def v11_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article['paragraphs']:
            for qa in paragraph['qas']:
                total += 1
                ground_truths = [x['text'] for x in qa['answers']]
                prediction = predictions[qa['id']]
                exact_match += max(v11_exact_match_score(prediction, g) for g in ground_truths)
                f1 += max(v11_f1_score(prediction, g) for g in ground_truths)
    return {'exact_match': 100.0 * exact_match / total, 'f1': 100.0 * f1 / total}


# From SQuAD's evaluate-v2.0.py (get_tokens, compute_exact, compute_f1, get_raw_scores, make_eval_dict,
# with no no-answer probabilities: its threshold step then changes nothing).

def v20_normalize_answer(s):
    def remove_articles(text):
        regex = re.compile(r'\b(a|an|the)\b', re.UNICODE)
        return re.sub(regex, ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()
    return white_space_fix(remove_articles(remove_punc(lower(s))))


def v20_get_tokens(s):
    if not s:
        return []
    return v20_normalize_answer(s).split()


def v20_compute_exact(a_gold, a_pred):
    return int(v20_normalize_answer(a_gold) == v20_normalize_answer(a_pred))


def v20_compute_f1(a_gold, a_pred):
    gold_toks = v20_get_tokens(a_gold)
    pred_toks = v20_get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def v20_evaluate(dataset, preds):
    exact, f1, has_ans = {}, {}, {}
    for article in dataset:
        for p in article['paragraphs']:
            for qa in p['qas']:
                qid = qa['id']
                has_ans[qid] = bool(qa['answers'])
                gold_answers = [a['text'] for a in qa['answers'] if v20_normalize_answer(a['text'])]
                if not gold_answers:
                    gold_answers = ['']
                exact[qid] = max(v20_compute_exact(a, preds[qid]) for a in gold_answers)
                f1[qid] = max(v20_compute_f1(a, preds[qid]) for a in gold_answers)

    def make_eval_dict(qids):
        return {'exact': 100.0 * sum(exact[k] for k in qids) / len(qids), 'f1': 100.0 * sum(f1[k] for k in qids) / len(qids)}
    out = make_eval_dict(list(exact))
    for name, keep in (('HasAns', True), ('NoAns', False)):
        qids = [k for k, v in has_ans.items() if v == keep]
        if qids:
            out.update({f'{name}_{k}': v for k, v in make_eval_dict(qids).items()})
    return out


# (prediction, gold answers): punctuation, articles, case, whitespace, several golds, repeats, partial
# overlap, golds that normalise to nothing, no answer, punctuation outside ASCII (kept, as the scripts do).
CASES = [
    ("Denver Broncos", ["Denver Broncos", "The Denver Broncos"]), ("the Broncos!", ["Denver Broncos"]),
    ("an apple a day", ["apple day"]), ("A  CAT\tsat.", ["a cat sat"]), ("1,000", ["1000", "one thousand"]),
    ("cat cat cat", ["cat"]), ("the cat sat on the mat", ["cat on a mat", "dog"]), ("dog", ["cat", "dog", "dog"]),
    ("“quoted”", ["quoted"]), ("Straße", ["strasse"]), ("", ["something"]), ("", []), ("anything", []),
    ("the", ["a"]), ("", ["the"]), ("a", ["the", "cat"]), ("theory", ["the ory"]), ("x", ["x y z w"]),
    ("Zürich, Switzerland", ["Zürich"]), ("don't", ["dont", "do not"]),
]


@pytest.mark.parametrize("v2", [False, True], ids=["v1.1", "v2.0"])
def test_exact_match_and_f1_equal_the_official_scripts(v2):
    cases = CASES if v2 else [(p, g) for p, g in CASES if g]  # v1.1 has an answer for every question
    dataset = [{"paragraphs": [{"qas": [{"id": str(k), "answers": [{"text": t} for t in g]}
                                        for k, (_, g) in enumerate(cases)]}]}]
    preds = {str(k): p for k, (p, _) in enumerate(cases)}
    ref = v20_evaluate(dataset, preds) if v2 else v11_evaluate(dataset, preds)
    ours = squad_metrics([p for p, _ in cases], [g for _, g in cases], v2)
    ref = {("exact" if k == "exact_match" else k): v for k, v in ref.items()}
    assert set(ours) == set(ref)
    for k in ref:
        assert abs(ours[k] - ref[k]) < 1e-9, k
    for p, g in cases:  # question by question, where one wrong case cannot hide in an average
        one = v20_evaluate([{"paragraphs": [{"qas": [{"id": "0", "answers": [{"text": t} for t in g]}]}]}], {"0": p}) \
            if v2 else v11_evaluate([{"paragraphs": [{"qas": [{"id": "0", "answers": [{"text": t} for t in g]}]}]}], {"0": p})
        mine = squad_metrics([p], [g], v2)
        assert abs(mine["f1"] - one["f1"]) < 1e-9 and mine["exact"] == one["exact" if v2 else "exact_match"], (p, g)
    assert 0 < ours["exact"] < ours["f1"] < 100


# ---- 4. the model: BertForQuestionAnswering parity ----

def batch_of(vocab, B=3, T=19, seed=0, padded=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, T // 2:] = 0
        mask[2, 5:] = 0
    types = (torch.arange(T) > 6).long().expand(B, T) * mask
    return ids, mask, types


def check_parity(hf, ours):
    ids, mask, types = batch_of(ours.config.vocab_size)
    m = mask.bool()
    with torch.no_grad():
        o = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        x = ours(ids, mask, types)
    assert close(x[..., 0][m], o.start_logits[m]) and close(x[..., 1][m], o.end_logits[m])
    # Loss and gradients on an unpadded batch (where transformers' padding logits cannot enter its softmax).
    ids, mask, types = batch_of(ours.config.vocab_size, padded=False, seed=1)
    start, end = torch.tensor([8, 0, 12]), torch.tensor([10, 0, 12])
    o = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=start, end_positions=end)
    logits, loss = ours(ids, mask, types, start_positions=start, end_positions=end)
    assert close(loss, o.loss) and close(logits[..., 0], o.start_logits)
    o.loss.backward()
    loss.backward()
    hf_p, ours_p = dict(hf.named_parameters()), dict(ours.named_parameters())
    for a, b in [("bert.embeddings.word.weight", "bert.embeddings.word_embeddings.weight"),
                 ("bert.layers.0.fc.weight", "bert.encoder.layer.0.intermediate.dense.weight"),
                 ("qa_outputs.weight", "qa_outputs.weight"), ("qa_outputs.bias", "qa_outputs.bias")]:
        assert close(ours_p[a].grad, hf_p[b].grad, 1e-4), a


@pytest.mark.parametrize("spec", [dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, hidden_act="gelu"),
                                  dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu_new")],
                         ids=["h32", "h48"])
def test_parity_random_configs(spec, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(spec["hidden_size"])
    hf = transformers.BertForQuestionAnswering(transformers.BertConfig(
        **spec, vocab_size=101, intermediate_size=2 * spec["hidden_size"] + 3, max_position_embeddings=40,
        attn_implementation="sdpa")).eval()
    with torch.no_grad():  # real-looking weights: the 0.02 initialisation makes every output nearly the same
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    hf.save_pretrained(tmp_path)
    ours = BertQA.from_pretrained(tmp_path).eval()
    assert ours.bert.pooler is None
    check_parity(hf, ours)


def test_parity_minilm_and_padding(minilm_dir):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.BertForQuestionAnswering.from_pretrained(minilm_dir, attn_implementation="sdpa").eval()
    ours = BertQA.from_pretrained(minilm_dir).eval()
    ours.qa_outputs.load_state_dict(hf.qa_outputs.state_dict())  # both start from MiniLM with one random head
    check_parity(hf, ours)
    # On a padded batch the loss is the mean of the rows' losses without their padding: padding never
    # enters the softmax (transformers lets its padding positions' scores in).
    ids, mask, types = batch_of(ours.config.vocab_size, seed=2)
    start, end = torch.tensor([8, 3, 1]), torch.tensor([12, 8, 4])  # rows of 19, 9 and 5 tokens
    with torch.no_grad():
        _, loss = ours(ids, mask, types, start_positions=start, end_positions=end)
        rows = [hf(input_ids=ids[i:i + 1, :n], token_type_ids=types[i:i + 1, :n], start_positions=start[i:i + 1],
                   end_positions=end[i:i + 1]).loss for i, n in enumerate(mask.sum(1).tolist())]
    assert close(loss, torch.stack(rows).mean())


# ---- 5. the loop: memorise, save, predict, resume, refuse bad input ----

def make_rows(n, seed, unanswerable=False):
    """Questions about random word sequences: "what is W?", answered by 1-3 words from a W."""
    rng, rows = random.Random(seed), []
    for k in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(12, 40))]
        i = rng.randrange(len(words) - 2)
        text, start = " ".join(words[i:i + 1 + rng.randrange(3)]), len(" ".join(words[:i])) + (1 if i else 0)
        rows.append({"id": f"q{k}", "question": f"what is {words[i]}?", "context": " ".join(words),
                     "answers": [(text, start)]})
        if unanswerable and k % 3 == 0:
            rows.append({"id": f"n{k}", "question": "who is it?", "context": " ".join(words), "answers": []})
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            a = {"text": [t for t, _ in r["answers"]], "answer_start": [s for _, s in r["answers"]]}
            f.write(json.dumps({"id": r["id"], "question": r["question"], "context": r["context"], "answers": a}) + "\n")
    return path


def write_squad(path, rows):
    """SQuAD v2.0 layout: questions grouped under their paragraph; is_impossible for no answer."""
    paragraphs = {}
    for r in rows:
        qa = {"id": r["id"], "question": r["question"], "is_impossible": not r["answers"],
              "answers": [{"text": t, "answer_start": s} for t, s in r["answers"]]}
        paragraphs.setdefault(r["context"], []).append(qa)
    data = [{"title": "t", "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()]}]
    path.write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")
    return path


QA_RUN = dict(FAST, task="qa", max_length=32, doc_stride=8, batch_size=8, warmup=0.0, seed=0)


@pytest.fixture(scope="module")
def memorised(tiny_dir, tmp_path_factory):
    """tiny-bert fine-tuned on 11 questions (3 without an answer) until it knows them: (out, rows, data file)."""
    d = tmp_path_factory.mktemp("qa")
    rows = make_rows(8, seed=1, unanswerable=True)
    data = write_squad(d / "train.json", rows)
    row = train(tiny_dir, data, d / "out", eval=data, lr=1e-2, max_steps=150, epochs=1000, squad_v2=True, metric="loss",
                log=io.StringIO(), **QA_RUN)
    assert row["dev_f1"] == 100.0
    return d / "out", rows, data


def test_memorises_a_small_set(memorised):
    out, rows, data = memorised
    m = evaluate(out, data, doc_stride=8, squad_v2=True, precision="fp32", device="cpu")
    assert (m["exact"], m["f1"], m["HasAns_exact"], m["NoAns_exact"], m["examples"]) == (100.0, 100.0, 100.0, 100.0, 11)
    assert m["loss"] < 0.1
    # predict takes (question, context) pairs; answers keep their character offsets
    got = predict(out, [r["question"] for r in rows], [r["context"] for r in rows], doc_stride=8, squad_v2=True,
                  precision="fp32", device="cpu")
    for r, g in zip(rows, got):
        if r["answers"]:
            (text, start), = r["answers"]
            assert (g["answer"], g["start"], g["end"]) == (text, start, start + len(text))
        else:
            assert (g["answer"], g["start"]) == ("", None)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"] and len(config["id2label"]) == 2
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 32


def test_windows_default_to_the_training_run_or_to_384_and_128(memorised, tmp_path):
    """eval and predict cut windows as the model was trained (its run.json: --max-length 32 --doc-stride 8) unless
    told otherwise; a directory minift did not train gets the documented 384 / 128, not the tokenizer's 512."""
    out, rows, data = memorised
    as_trained = evaluate(out, data, squad_v2=True, precision="fp32", device="cpu")
    assert as_trained == evaluate(out, data, doc_stride=8, max_length=32, squad_v2=True, precision="fp32", device="cpu")
    assert as_trained["exact"] == 100.0
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign, ignore=shutil.ignore_patterns("run.json", "metrics.jsonl", "checkpoint.safetensors"))
    config = json.loads((foreign / "tokenizer_config.json").read_text())
    (foreign / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 512}))
    _, tok, _ = load(foreign, "cpu")
    assert tok.model_max_length == 384
    opts = task_options({"squad_v2": True}, QA(), foreign)
    assert opts.doc_stride is None
    with pytest.raises(MiniftError, match="--doc-stride 128: must be less than"):  # 128 does not fit 32 tokens
        make_features(QA().read(data, opts), tok, 32, opts)
    assert task_options({}, QA(), out).doc_stride == 8


def test_saved_model_gives_the_same_logits_in_transformers(memorised):
    transformers = pytest.importorskip("transformers")
    out, rows, _ = memorised
    hf = transformers.BertForQuestionAnswering.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = tok([r["question"] for r in rows], [r["context"] for r in rows], truncation="only_second", max_length=32,
              stride=8, return_overflowing_tokens=True, padding=True, return_tensors="pt")
    ours = BertQA.from_pretrained(out).eval()
    with torch.no_grad():
        o = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
        x = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    m = enc["attention_mask"].bool()
    assert close(x[..., 0][m], o.start_logits[m]) and close(x[..., 1][m], o.end_logits[m])


def test_cli_predict_and_eval(memorised, tmp_path, capsys):
    out, rows, data = memorised
    args = ["--model", str(out), "--doc-stride", "8", "--squad-v2", "--precision", "fp32", "--device", "cpu"]
    r = rows[2]  # answerable
    assert main(["predict", *args, "--question", r["question"], "--context", r["context"]]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (line["text"], line["answer"], line["start"]) == (r["question"], r["answers"][0][0], r["answers"][0][1])
    # --input: SQuAD JSON Lines; --output NAME.json: the official evaluation's {id: answer}
    jsonl = write_jsonl(tmp_path / "dev.jsonl", rows)
    assert main(["predict", *args, "--input", str(jsonl), "--output", str(tmp_path / "preds.json")]) == 0
    preds = json.loads((tmp_path / "preds.json").read_text())
    assert preds == {r["id"]: (r["answers"][0][0] if r["answers"] else "") for r in rows}
    assert main(["eval", *args, "--data", str(jsonl)]) == 0
    assert json.loads(capsys.readouterr().out)["exact"] == 100.0
    # the two file layouts read the same
    task = QA()
    a, b = task.read(jsonl, None), task.read(data, None)
    assert (a.ids, a.questions, a.contexts, a.answers) == (b.ids, b.questions, b.contexts, b.answers)
    assert main(["predict", *args, "--question", "what?", "--question", "who?", "--context", "x"]) == 2
    assert "--context" in capsys.readouterr().err




def test_resume_is_bit_identical(tiny_dir, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", make_rows(12, seed=2))
    dev = write_jsonl(tmp_path / "dev.jsonl", make_rows(4, seed=3))
    run = dict(QA_RUN, eval=dev, lr=3e-3, max_steps=8, log=io.StringIO())
    a_row = train(tiny_dir, data, tmp_path / "a", **run)
    with monkeypatch.context() as mp:
        interrupt_at(mp, 3)
        assert train(tiny_dir, data, tmp_path / "b", **run) == {"stopped_at": 3}
    assert train(tiny_dir, data, tmp_path / "b", resume=True, **run) == a_row
    for name in ("model.safetensors", "checkpoint.safetensors"):
        ta, tb = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta), name
    rows_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() == rows_a and len(rows_a) >= 2


BAD = [  # (JSON Lines record or SQuAD document, what the error says)
    ({"id": "a1", "question": "q?", "context": "the plot", "answers": {"text": ["plot"], "answer_start": [3]}},
     r"question 'a1'.*answer_start 3 does not point at the answer 'plot'.*'\splo'"),
    ({"id": "a2", "question": "q?", "context": "   ", "answers": {"text": [], "answer_start": []}},
     r"question 'a2'.*the context is empty"),
    ({"id": "a3", "question": "q?", "answers": {"text": [], "answer_start": []}}, r"question 'a3'.*no 'context' field"),
    ({"id": "a4", "question": "q?", "context": "the plot"}, r"question 'a4'.*no 'answers' field"),
    ({"question": "q?", "context": "the plot", "answers": {"text": [], "answer_start": []}}, r"line 2.*no 'id' field"),
    ({"id": "a6", "question": "q?", "context": "the plot", "answers": {"text": ["plot"], "answer_start": []}},
     r"question 'a6'.*1 texts but 0 answer_starts"),
    ({"id": "a7", "question": "q?", "context": "the plot", "answers": {"text": [], "answer_start": []}},
     r"1 question\(s\) have no answer.*question 'a7'.*--squad-v2"),
    ({"id": "q0", "question": "q?", "context": "the plot", "answers": {"text": ["plot"], "answer_start": [4]}},
     r"question 'q0'.*the id is used twice"),
    ({"id": "a9", "question": "is it " * 20, "context": "the plot", "answers": {"text": ["plot"], "answer_start": [4]}},
     r"question 'a9'.*40 tokens, which leaves no room for the context in --max-length 32"),
    ({"data": [{"paragraphs": [{"context": "the plot", "qas": [{"id": "s1", "question": "q?",
      "answers": [{"text": "the", "answer_start": "0"}]}]}]}]}, r"question 's1'.*'answer_start' is '0'; expected a whole number"),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, r"data\[0\]\.paragraphs\[0\]: no 'context' field"),
]


@pytest.mark.parametrize("record,error", BAD, ids=[f"bad{k}" for k in range(len(BAD))])
def test_bad_input_is_named_and_nothing_is_written(tiny_dir, tmp_path, record, error):
    if "data" in record:
        path = tmp_path / "train.json"
        path.write_text(json.dumps(record))
    else:
        path = write_jsonl(tmp_path / "train.jsonl", make_rows(1, seed=0))
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    with pytest.raises(MiniftError, match=f"{re.escape(str(path))}[,:] .*{error}"):
        train(tiny_dir, path, tmp_path / "out", log=io.StringIO(), **QA_RUN)
    assert not (tmp_path / "out").exists()


def test_bad_settings(tiny_dir, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", make_rows(2, seed=0))
    for kw, error in [(dict(doc_stride=30), r"--doc-stride 30: must be less than the \d+ context tokens"),
                      (dict(doc_stride=-1), r"--doc-stride -1: expected a whole number >= 0"),
                      (dict(max_answer_length=0), r"--max-answer-length 0")]:
        with pytest.raises(MiniftError, match=error):
            train(tiny_dir, path, tmp_path / "out", log=io.StringIO(), **{**QA_RUN, **kw})
        assert not (tmp_path / "out").exists()
    with pytest.raises(MiniftError, match="train.txt.*question answering reads SQuAD .json or .jsonl"):
        train(tiny_dir, tmp_path / "train.txt", tmp_path / "out", log=io.StringIO(), **QA_RUN)
