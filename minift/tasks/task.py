"""The task protocol: every member the training loop (train_loop.py), prediction and evaluation
(predict.py) and the command line (cli.py) call on a task, and nothing else about it.

A task is generic in three types of its own, named in its class line (for example
`class Classify(Task[Dataset, Features, torch.Tensor])`):

  Examples  what read() and from_texts() return: the rows of a file, or what a user typed
  Features  what features() returns: token ids once, plus labels and the alignment back to the input
  Row       what outputs() returns for each row of a batch: an fp32 CPU result that score() and decode()
            read (logits, embeddings, scores, ...)

The members below without a body are the ones each task writes; the others have a default here that
most tasks keep.
"""
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

import torch
from torch import nn

from minift.config import BertConfig

Examples, Features, Row = TypeVar("Examples"), TypeVar("Features"), TypeVar("Row")


class Task(ABC, Generic[Examples, Features, Row]):
    name: str  # --task NAME
    model: type[nn.Module]  # encoder + head, under the Hugging Face names of its *For... class
    metrics: tuple[str, ...]  # its dev metrics' names; the first is the default --metric
    default_max_length: int  # --max-length when none is given (capped at the model's positions)
    problem_type: str | None = None  # config.json's problem_type of its saved models, where it tells tasks apart
    streams: bool = True  # predict answers record by record (cli.streams); False: it reads its input whole

    @abstractmethod
    def read(self, path, opts, labelled: bool = True) -> Examples:
        """A file -> examples. opts: TaskOptions (or the RunConfig that extends it)."""

    @abstractmethod
    def from_texts(self, texts: list[str], pairs: list[str] | None, tok) -> Examples:
        """What a user typed (texts, and second texts or contexts) -> examples, for predict."""

    @abstractmethod
    def label_names(self, train: Examples) -> dict[int, str] | None:
        """id2label from the training examples; None for a task without labels."""

    @abstractmethod
    def features(self, examples: Examples, tok, max_length: int, config: BertConfig, opts, log=None) -> Features:
        """Examples -> token ids (+ labels, + the alignment back to the input), once per run."""

    @abstractmethod
    def batch(self, features: Features, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        """Rows idx of the features -> the model's keyword arguments, padded (labels included when known)."""

    @abstractmethod
    def outputs(self, model: nn.Module, batch: dict) -> list[Row]:
        """One batch through the model, without gradients -> one fp32 CPU result per row."""

    @abstractmethod
    def score(self, outputs: list[Row], features: Features) -> dict[str, float]:
        """Every row's result -> {metric: value}."""

    @abstractmethod
    def decode(self, outputs: list[Row], features: Features, examples: Examples, config: BertConfig) -> list[dict]:
        """Every row's result -> what a user reads, one dict per example."""

    def read_eval(self, path, opts) -> Examples:
        """The file the metrics score (--eval, `minift eval --data`): read()'s examples, plus what only scoring
        needs (embed: the distractor passages of --eval-corpus)."""
        return self.read(path, opts)

    def document(self, rows: list[dict]) -> dict | None:
        """decode's rows -> the JSON document `predict --output NAME.json` writes (qa: SQuAD's {id: answer});
        None: the task has no document of its own, and a .json output holds JSON lines like any other."""
        return None

    def claims(self, config: dict) -> bool:
        """Whether a saved model is this task's by a mark of its own in config.json, where several tasks
        save the same architecture (rerank: sentence-transformers' cross-encoder)."""
        return False
