"""An optional judge (`eval.judge`): a local model rates each generated answer against the
question and the reference answer on a rubric, with one score from 1 to `scale`.

Its figures are reported on their own and never enter the metrics: a small local judge is
noisy and biased (towards long answers, towards its own style), so a reader must be able to
tell its opinion from the measured figures. A reply without a readable score is counted as
unparsable, never given a score."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from migaki.config import JudgeConfig
from migaki.evaluate import generation
from migaki.models.inference import LoadedModel

# "Score: 4" needs a handful of tokens; a little more lets a chatty judge reach the number.
JUDGE_MAX_NEW_TOKENS = 32
REPLY_CHARS = 200  # of each reply kept in the result, to show what the judge said
# "Score" (or スコア / 評価 / 点数, for a judge that answers in Japanese), then punctuation or
# markup such as "**Score:** 4" or "Score = 4", then the number.
SCORE_LABEL = re.compile(
    r"(?:score|スコア|評価|点数)[^\w\n]{0,6}(?:is\s+|は)?(\d+(?:\.\d+)?)", re.IGNORECASE
)
# A whole number on its own: not part of 4.5 or 0.4 (a period after it that ends a sentence
# is fine).
INTEGER = re.compile(r"(?<![\d.])(\d+)(?!\.?\d)")


def judge_prompt(rubric: str, scale: int, question: str, reference: str, answer: str) -> str:
    """The judge's one user message for a row: rubric, question, reference and answer, and
    how to reply."""
    return (
        f"{rubric}\n\n"
        f"Question:\n{question}\n\n"
        f"Reference answer:\n{reference}\n\n"
        f"Answer to rate:\n{answer}\n\n"
        f"Rate the answer to rate on a scale from 1 (worst) to {scale} (best). "
        f'Reply with "Score: N", where N is a whole number from 1 to {scale}.'
    )


def parse_score(reply: str, scale: int) -> int | None:
    """The score in a judge's reply, or None when there is none to read.

    The first "Score: N" decides: N if it is a whole number in 1..scale, else None (an
    out-of-range or decimal score is not moved into range). A reply without such a label
    gives its first whole number in 1..scale (decimals such as 4.5 are not read), or None.
    Full-width digits count (NFKC)."""
    reply = unicodedata.normalize("NFKC", reply)
    labelled = SCORE_LABEL.search(reply)
    if labelled:  # "Score: 4.5" or "Score: 7" of 5 is no score, rather than 4 or 5
        value = float(labelled.group(1))
        return int(value) if value.is_integer() and 1 <= value <= scale else None
    for match in INTEGER.finditer(reply):
        value = int(match.group(1))
        if 1 <= value <= scale:
            return value
    return None


def judge_answers(
    judge: JudgeConfig,
    rows: Sequence[dict],
    loaded: LoadedModel | None = None,
    batch_size: int = 32,
    max_new_tokens: int = JUDGE_MAX_NEW_TOKENS,
) -> dict:
    """Scores of the judge model for rows with `prompt`, `reference` and `answer` (strings).

    The first `judge.max_rows` rows are judged (all when it is None); the rest are counted
    in `left_out`. `loaded`: the judge model already loaded (judging several systems'
    answers loads it once); else `judge.model` (a run directory, a bundled alias or a local
    folder) is loaded with `load_for_generation`. Replies are greedy.

    Returns {"model", "rubric", "scale", "rows" (judged), "left_out", "mean_score" (over the
    parsed scores; None when none parsed), "parsed", "unparsable", "scores" (per judged row:
    an int in 1..scale or None), "replies" (the first 200 characters of each reply)}. The
    rows are not changed. Raises UserError for a judge model that cannot be loaded."""
    judged = list(rows if judge.max_rows is None else rows[: judge.max_rows])
    if loaded is None and judged:
        loaded = generation.load_for_generation(judge.model, tuned=True)
    conversations = [
        [
            {
                "role": "user",
                "content": judge_prompt(
                    judge.rubric, judge.scale, row["prompt"], row["reference"], row["answer"]
                ),
            }
        ]
        for row in judged
    ]
    answers = (
        generation.generate_answers(loaded, conversations, max_new_tokens, batch_size)
        if judged
        else []
    )
    replies = [text for text, _ in answers]
    scores = [parse_score(reply, judge.scale) for reply in replies]
    parsed = [score for score in scores if score is not None]
    return {
        "model": str(judge.model),
        "rubric": judge.rubric,
        "scale": judge.scale,
        "rows": len(judged),
        "left_out": len(rows) - len(judged),
        "mean_score": sum(parsed) / len(parsed) if parsed else None,
        "parsed": len(parsed),
        "unparsable": len(scores) - len(parsed),
        "scores": scores,
        "replies": [reply[:REPLY_CHARS] for reply in replies],
    }
