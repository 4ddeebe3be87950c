"""The data layer: load files, detect formats, split, render with the chat template, batch."""

from migaki.data.formats import Example, to_examples
from migaki.data.load import Record, read_records
from migaki.data.prepare import Splits, load_splits, prepare_data
from migaki.data.split import split_examples, write_split
from migaki.data.tokenize import (
    IGNORE_INDEX,
    TokenizedExample,
    TokenizeReport,
    render_prompt,
    tokenize_all,
    tokenize_example,
)

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "Record",
    "Splits",
    "TokenizeReport",
    "TokenizedExample",
    "load_splits",
    "prepare_data",
    "read_records",
    "render_prompt",
    "split_examples",
    "to_examples",
    "tokenize_all",
    "tokenize_example",
    "write_split",
]
