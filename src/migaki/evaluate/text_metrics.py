"""Text-overlap figures of generated answers against their references, each through the
field's library so the numbers mean what they mean elsewhere: exact match; BLEU and chrF
through sacrebleu; ROUGE-1/2/L through rouge-score.

All figures are on a 0..1 scale, beside `char_f1` (sacrebleu's 0..100 divided by 100).

Japanese has no spaces between words, so every word-level figure splits it into morphemes:
BLEU with sacrebleu's own `ja-mecab` tokenizer (MeCab with the IPA dictionary, as published
Japanese BLEU scores are computed) for rows whose reference is Japanese and `13a` (sacrebleu's
default) for the others; ROUGE with `data.words` (MeCab morphemes through fugashi for the
Japanese runs of a text, lower-cased words for the rest), since rouge-score's own tokenizer
keeps only [a-z0-9] and would score every Japanese answer 0. chrF counts characters and needs
no tokenizer.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from functools import cache
from typing import Any

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

from migaki.data.heuristics import language_of
from migaki.data.words import words

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# The figures `text_figures` returns, overall and (in answers.py) per language.
TEXT_FIGURES = ("exact_match", "bleu", "chrf", *ROUGE_TYPES, "language_match")


def normalize_answer(text: str) -> str:
    """The text exact match compares: NFKC (full-width digits and letters, half-width kana
    become their usual forms), case-folded, every run of whitespace one space, no space at
    either end. Case and spacing are folded because a capitalised first word or a trailing
    newline is how a model writes, not what it says; punctuation and the spaces between
    words stay, so "a bc" and "ab c" still differ (char_f1's normalizing drops every space)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the answer equals the reference after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


def bleu_tokenizer_name(reference_language: str) -> str:
    """sacrebleu's tokenizer for a row: `ja-mecab` when its reference is Japanese, else `13a`."""
    return "ja-mecab" if reference_language == "ja" else "13a"


def bleu_tokens(text: str, reference_language: str) -> str:
    """The text as sacrebleu's BLEU would tokenize it for a row of this reference language:
    tokens joined by single spaces. MeCab reads one line, so line breaks become spaces first."""
    if reference_language == "ja":
        return _ja_mecab()(" ".join(text.split()))
    return _tokenizer_13a()(text.rstrip())


def text_row(prediction: str, reference: str) -> dict[str, Any]:
    """One answer's figures, for error analysis: exact_match (bool); sentence-level bleu
    (sacrebleu's sentence BLEU, effective order, the usual smoothing) and chrf; rouge1,
    rouge2, rougeL (F-measure); language (of the answer) and reference_language, each `ja`,
    `en` or `other` (`data.heuristics.language_of`). Scores on 0..1."""
    language = language_of(reference)
    hypothesis, tokens = bleu_tokens(prediction, language), bleu_tokens(reference, language)
    rouge = _rouge().score(reference, prediction)
    return {
        "exact_match": exact_match(prediction, reference),
        "bleu": _sentence_bleu().sentence_score(hypothesis, [tokens]).score / 100,
        "chrf": _chrf().sentence_score(prediction, [reference]).score / 100,
        **{name: rouge[name].fmeasure for name in ROUGE_TYPES},
        "language": language_of(prediction),
        "reference_language": language,
    }


def text_figures(
    predictions: Sequence[str],
    references: Sequence[str],
    rows: Sequence[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """The figures of a set of answers, on 0..1: bleu and chrf at corpus level (n-gram counts
    summed over all rows, then one score, as sacrebleu and WMT compute them: not a mean of
    sentence scores); exact_match, rouge1, rouge2, rougeL as means over rows; language_match,
    the share of answers written in their reference's language.

    Rows may mix languages: each row's BLEU tokens come from its own reference's tokenizer
    and the counts of all rows are pooled, so on one language the figure is exactly
    sacrebleu's corpus BLEU with that tokenizer. `rows`: the `text_row` of each pair, when the
    caller has them already (so ROUGE runs once per row). Empty input gives {}."""
    if not predictions:
        return {}
    if rows is None:
        rows = [text_row(p, r) for p, r in zip(predictions, references, strict=True)]
    languages = [row["reference_language"] for row in rows]
    hypotheses = [bleu_tokens(p, lang) for p, lang in zip(predictions, languages, strict=True)]
    tokens = [bleu_tokens(r, lang) for r, lang in zip(references, languages, strict=True)]
    count = len(rows)
    figures = {
        "exact_match": sum(row["exact_match"] for row in rows) / count,
        "bleu": _corpus_bleu().corpus_score(hypotheses, [tokens]).score / 100,
        "chrf": _chrf().corpus_score(list(predictions), [list(references)]).score / 100,
    }
    figures |= {name: sum(row[name] for row in rows) / count for name in ROUGE_TYPES}
    figures["language_match"] = (
        sum(row["language"] == row["reference_language"] for row in rows) / count
    )
    return figures


def choice_confidence(logprobs: Sequence[float], tokens: Sequence[int], pick: int) -> float:
    """The probability of choice `pick` under a softmax over the choices' mean log-probability
    per answer token (nats), so a long choice is not made unlikely by its length alone."""
    means = [lp / max(n, 1) for lp, n in zip(logprobs, tokens, strict=True)]
    top = max(means)
    weights = [math.exp(mean - top) for mean in means]  # shifted by the max: no overflow
    return weights[pick] / sum(weights)


class WordTokenizer:
    """rouge-score's tokenizer protocol (`tokenize(text) -> list[str]`) over `data.words`:
    MeCab morphemes for Japanese runs, lower-cased words for the rest."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


# Each object below is built once per process: the MeCab taggers load a dictionary, and
# sacrebleu's tokenizers keep an LRU cache of the lines they have seen.
@cache
def _ja_mecab() -> TokenizerJaMecab:
    return TokenizerJaMecab()


@cache
def _tokenizer_13a() -> Tokenizer13a:
    return Tokenizer13a()


@cache
def _corpus_bleu() -> BLEU:
    return BLEU(tokenize="none")  # rows arrive tokenized by `bleu_tokens`


@cache
def _sentence_bleu() -> BLEU:
    # effective order: a short answer without any 4-gram match is not scored 0 outright
    return BLEU(tokenize="none", effective_order=True)


@cache
def _chrf() -> CHRF:
    return CHRF()


@cache
def _rouge():
    # rouge_score imports nltk (about 3 s): only when an answer is scored
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(ROUGE_TYPES), tokenizer=WordTokenizer())
