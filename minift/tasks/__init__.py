"""Tasks: what differs between fine-tuning jobs on one encoder, one file each.

The training loop (train_loop.py), evaluation and prediction (predict.py) and the command line are the
same for every task; they call the members of the protocol in task.py, and nothing else about a task.
This file holds the settings a task reads (TaskOptions), the registry (TASKS) and how a saved model
directory finds its task (of_saved).
"""
from dataclasses import dataclass, fields

from minift.config import bert_architecture
from minift.errors import MiniftError
from minift.tasks.classify import Classify
from minift.tasks.embed import Embed
from minift.tasks.rerank import Rerank
from minift.tasks.qa import QA
from minift.tasks.mlm import MaskedLM
from minift.tasks.tag import Tag


@dataclass
class TaskOptions:
    """The settings that reading a task's files and making its features need; train's RunConfig extends
    them, and evaluate / predict take them as keyword arguments."""
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    doc_stride: int | None = None  # None: what the model was trained with (its run.json), else qa.DOC_STRIDE
    max_answer_length: int = 30
    null_threshold: float = 0.0
    squad_v2: bool = False
    whole_word_mask: bool = False
    no_pack: bool = False
    format: str | None = None  # conll, jsonl or wordtag; None: by the file's extension
    pooling: str | None = None  # mean, cls or max; None: as the model directory's sentence-transformers files say
    scale: float = 20.0
    symmetric: bool = False
    matryoshka: str | None = None  # leading dimensions, e.g. "384,256,128,64"
    mini_batch: int | None = None
    eval_corpus: str | None = None  # extra passages for the dev retrieval metrics (distractors)
    listwise: bool = False


# The settings only one task reads. Given for another task they would change nothing, silently.
OWNER = {"doc_stride": "qa", "max_answer_length": "qa", "null_threshold": "qa", "squad_v2": "qa",
         "whole_word_mask": "mlm", "no_pack": "mlm", "format": "tag", "pooling": "embed", "scale": "embed",
         "symmetric": "embed", "matryoshka": "embed", "mini_batch": "embed", "eval_corpus": "embed",
         "listwise": "rerank"}


def check_options(task, opts: TaskOptions):
    """Refuse another task's setting given a value other than its default."""
    for f in fields(TaskOptions):
        owner = OWNER.get(f.name)
        if owner not in (None, task.name) and getattr(opts, f.name) != f.default:
            raise MiniftError(f"--{f.name.replace('_', '-')} is a setting of --task {owner}, and this is --task "
                              f"{task.name}: it would change nothing")


TASKS = {name: Classify(name) for name in ("classify", "multilabel", "regression")}
TASKS["qa"] = QA()
TASKS["mlm"] = MaskedLM()
TASKS["tag"] = Tag()
TASKS["embed"] = Embed()
TASKS["rerank"] = Rerank()


def get(name: str):
    if name not in TASKS:
        raise MiniftError(f"--task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


def of_saved(config: dict, path) -> object:
    """The task a fine-tuned model directory was trained for, from its config.json."""
    arch = bert_architecture(config)
    found = [t for t in TASKS.values() if t.model.ARCHITECTURE == arch]
    if not found:
        raise MiniftError(f"{path}: config.json names architecture {arch!r}, which is not a fine-tuned model of "
                          f"any minift task ({', '.join(sorted({t.model.ARCHITECTURE for t in TASKS.values()}))}); "
                          "fine-tune it first with `minift train`")
    if len(found) == 1:
        return found[0]
    # A task that knows its models by a mark of their own (rerank: sentence-transformers' cross-encoder's) first.
    claimed = [t for t in found if t.claims(config)]
    if claimed:
        return claimed[0]
    # Sequence classification: Hugging Face's rule when problem_type is absent.
    kind = config.get("problem_type")
    if kind is None:
        kind = "regression" if config.get("num_labels", len(config.get("id2label") or {}) or 2) == 1 \
            else "single_label_classification"
    return next(t for t in found if t.problem_type == kind)
