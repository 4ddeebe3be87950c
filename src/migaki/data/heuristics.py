"""Cheap signals about a text: its language by script, repetition, share of symbols.

They run over every row of data sets with hundreds of thousands of rows, so each is a few
regular-expression scans (C speed), not a loop over characters in Python.
"""

from __future__ import annotations

import re

KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
LETTER = re.compile(r"[^\W\d_]")
# Sentence punctuation (Latin and Japanese) is ordinary text, not a symbol.
SYMBOL = re.compile(r"[^\w\s.,!?;:'\"()\[\]\-、。！？「」『』（）・ー…〜～％%]")
LANGUAGES = ("ja", "en", "other")


def language_of(text: str) -> str:
    """`ja`, `en` or `other`, by the share of scripts among the letters.

    Kana marks Japanese; kanji without any kana is Japanese only in short texts (a name, an
    address), since longer ones are more likely Chinese. `en` means Latin script: telling
    English from French needs a real language detector."""
    letters = len(LETTER.findall(text))
    if not letters:
        return "other"
    kana, han = len(KANA.findall(text)), len(HAN.findall(text))
    if (kana + han) / letters >= 0.3:
        return "ja" if kana or han <= 20 else "other"
    if len(LATIN.findall(text)) / letters >= 0.6:
        return "en"
    return "other"


def repetition_ratio(text: str, n: int = 10) -> float:
    """Share of the text's n-character windows that occur more than once: high for rows that
    repeat a phrase over and over (a common failure of scraped or generated data)."""
    windows = len(text) - n + 1
    if windows <= 1:
        return 0.0
    unique = len({text[i : i + n] for i in range(windows)})
    return 1.0 - unique / windows


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are symbols (not letters, digits or punctuation)."""
    visible = len(text) - sum(1 for _ in re.finditer(r"\s", text))
    if not visible:
        return 0.0
    return len(SYMBOL.findall(text)) / visible
