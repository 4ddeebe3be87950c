"""Evaluation: language-model metrics, generated answers scored against references, reports."""

from migaki.evaluate.evaluation import evaluate
from migaki.evaluate.generation import generate_answers, load_for_generation

__all__ = ["evaluate", "generate_answers", "load_for_generation"]
