"""Evaluation: language-model metrics, generated answers scored against references, reports."""

from migaki.evaluate.generation import LoadedModel, generate_answers, load_for_inference
from migaki.evaluate.report import evaluate

__all__ = ["LoadedModel", "evaluate", "generate_answers", "load_for_inference"]
