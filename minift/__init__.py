"""minift: a from-scratch, minimal BERT fine-tuner."""
from minift.config import BertConfig
from minift.errors import MiniftError
from minift.model import Bert, BertClassifier

__all__ = ["Bert", "BertClassifier", "BertConfig", "MiniftError"]
