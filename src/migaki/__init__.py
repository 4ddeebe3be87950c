"""migaki (磨き): fine-tune pre-trained language models on your own data, privately."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "load_recipe", "train"]

# The Python API, by the module that holds each name. Loaded on first use, so that
# `import migaki` stays fast for the CLI's --help; torch loads with the first real call.
_API = {"train": "migaki.train", "evaluate": "migaki.evaluate", "load_recipe": "migaki.config"}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(name)
    return getattr(importlib.import_module(_API[name]), name)
