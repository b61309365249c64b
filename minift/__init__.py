"""minift: a from-scratch, minimal BERT fine-tuner."""
from minift.config import BertConfig
from minift.errors import MiniftError
from minift.model import Bert
from minift.predict import embed, evaluate, predict
from minift.tasks.classify import BertClassifier
from minift.tokenizer import Tokenizer
from minift.train_loop import train

__all__ = ["Bert", "BertClassifier", "BertConfig", "MiniftError", "Tokenizer", "embed", "evaluate", "predict", "train"]
