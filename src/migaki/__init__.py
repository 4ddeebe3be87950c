"""migaki (磨き): fine-tune pre-trained language models on your own data, privately."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "load_recipe", "train"]


def __getattr__(name: str):
    # Lazy: `import migaki` stays fast for the CLI's --help; torch loads on first real use.
    if name == "train":
        from migaki.train import train

        return train
    if name == "evaluate":
        from migaki.evaluate import evaluate

        return evaluate
    if name == "load_recipe":
        from migaki.config import load_recipe

        return load_recipe
    raise AttributeError(name)
