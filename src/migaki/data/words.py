"""Words of a text for retrieval and word-level metrics: MeCab morphemes (fugashi with the
unidic-lite dictionary) for Japanese, which has no spaces between words, and lower-cased
word characters for everything else. A text that mixes scripts is split into runs first, so
an English product name inside a Japanese sentence stays one word."""

from __future__ import annotations

import re
import unicodedata
from functools import cache

# A run of Japanese script: kana, kanji, the iteration and long-vowel marks.
JAPANESE_RUN = re.compile(
    r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆ー]+"
)
WORD = re.compile(r"\w+", re.UNICODE)


@cache
def _tagger():
    import fugashi  # loads MeCab and its dictionary (~50 MB): only when Japanese is met

    return fugashi.Tagger()


def morphemes(text: str) -> list[str]:
    """MeCab's morphemes of a Japanese text (surface forms, punctuation and spaces left out)."""
    return [word.surface for word in _tagger()(text) if WORD.search(word.surface)]


def words(text: str) -> list[str]:
    """The text's words after NFKC: Japanese runs split into morphemes, other runs into word
    characters, lower-cased. Punctuation is dropped."""
    text = unicodedata.normalize("NFKC", text)
    out: list[str] = []
    position = 0
    for match in JAPANESE_RUN.finditer(text):
        out += WORD.findall(text[position : match.start()].lower())
        out += morphemes(match.group())
        position = match.end()
    out += WORD.findall(text[position:].lower())
    return out
