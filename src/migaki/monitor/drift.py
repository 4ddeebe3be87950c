"""Drift of served traffic against a run's training data: the figures of `migaki monitor`.

Inputs: a run directory (its training split `data/train.jsonl`, read through the data layer,
and its tokenizer) and a `migaki serve` log folder (`requests.jsonl`, serve/log.py). Only the
requests that run served are compared; the others are counted and left out. The user's text
of a training row is its last user message (its text, for text and classification rows), as
the log's `question` is the last user message of a request.

Each figure is an effect size with a threshold (THRESHOLDS) and, where it is a comparison of
two samples, a permutation p-value (fixed seed). A figure is flagged when its effect passes
its threshold *and* p < THRESHOLDS["p_value"]: a small log differs from the training data by
chance, and an alarm on every quiet day would teach people to ignore it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from migaki.data.formats import Example, convert_records
from migaki.data.heuristics import LANGUAGES, language_of
from migaki.data.load import read_records
from migaki.data.pii import PLACEHOLDERS, find_pii
from migaki.errors import UserError
from migaki.models import recipe_tokenizer
from migaki.models.embed import DEFAULT_ENCODER, embed
from migaki.rundir import load_run_recipe
from migaki.serve.log import REQUESTS, LoggedRequest, read_requests

log = logging.getLogger(__name__)

Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> unit vectors (n, dim)

THRESHOLDS: dict[str, float] = {
    # Kolmogorov–Smirnov distance of the input lengths (tokens): the largest gap between the
    # cumulative shares of training rows and requests up to some length. 0.2: at some length a
    # fifth of the traffic sits on the other side than the training data would put it; for a
    # bell-shaped spread that is a shift by half a standard deviation, which truncation and
    # answer lengths feel.
    "length_ks": 0.2,
    # Total variation distance of the language shares (ja, en, other): the share of traffic
    # that would have to change language to match the training mix. 0.1: one request in ten
    # in a language the model saw less of than that is worth knowing; below that the
    # heuristic's own mistakes on short texts weigh as much.
    "language_tvd": 0.1,
    # Share of traffic tokens seen fewer than RARE_COUNT times in training, minus the same share
    # of the training rows (each against all the other rows: what in-distribution text gives).
    # 0.05: one token in twenty more than usual is new words, names or scripts; ordinary
    # rewording moves it by a point or two.
    "rare_token_excess": 0.05,
    # Share of requests with personal data (any `pii` count in the log) minus the share of
    # training rows with any (found, or already masked). 0.05: one request in twenty more
    # carrying personal data matters for what the log and the model keep.
    "pii_rate_excess": 0.05,
    # Cosine distance between the mean embeddings of training rows and requests. 0.05, measured
    # with MiniLM on the bundled support FAQ's English questions: a quarter of the traffic on
    # unrelated topics passes it (a fifth: 0.025, a third: 0.08), as does a sixth in Japanese.
    # Two random halves of those 184 questions differ by 0.05 by chance: the p-value gate is
    # what keeps small logs quiet; the chance distance shrinks as 1/n.
    "centroid_distance": 0.05,
    # Permutation p-value under which a difference is not taken for chance. 0.01: a job run
    # daily on five figures raises a false alarm about once in twenty days at most.
    "p_value": 0.01,
}
RARE_COUNT = 3  # a token seen fewer times in training gave the model next to nothing to learn
ROUNDS = 500  # permutations per test: p-values down to 1/501, well under THRESHOLDS["p_value"]
MAX_TEST_ROWS = 2000  # rows per side in a scalar permutation test (subsampled: under a second)
MAX_MMD_ROWS = 500  # rows per side in the embedding test (its kernel matrix is squared)
MAX_EMBEDDED = 10_000  # rows per side embedded (subsampled beyond: minutes on a CPU)
FARTHEST = 10  # requests listed as farthest from the training data
HISTOGRAM_BINS = 30


def monitor_run(
    run: str | Path,
    log_dir: str | Path,
    *,
    encoder: str | Path = DEFAULT_ENCODER,
    embedder: Embedder | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare the requests of `log_dir` that run `run` served with its training split.

    `embedder` (texts -> unit vectors) replaces `embed` with `encoder`. Returns the report
    (JSON-able): run, log, counts, `figures` (by key: title, value, threshold, p_value,
    flagged and details), `flagged` (keys), `farthest` (the requests least like any training
    row, with their log lines) and `thresholds`.
    Raises UserError for a missing run, a run without a training split, an empty or corrupt
    log (FILE:LINE) and a log holding no request of this run."""
    run = Path(run).expanduser()
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    recipe = load_run_recipe(run)
    train = training_rows(run, recipe)
    requests, left_out = served_requests(log_dir, run)
    tokenizer = recipe_tokenizer(recipe.model, chat=False)
    train_ids = tokenizer([row[1] for row in train], add_special_tokens=False)["input_ids"]
    traffic_ids = tokenizer([r.question for r in requests], add_special_tokens=False)["input_ids"]
    encoder_name = "custom" if embedder is not None else str(encoder)
    embedder = embedder or partial(embed, model_name_or_path=encoder)
    drift, farthest = embedding_drift(train, requests, embedder, seed)
    figures = {
        "lengths": length_drift(train_ids, traffic_ids, seed),
        "languages": language_drift([t for _, t, _ in train], [r.question for r in requests], seed),
        "rare_tokens": rare_token_drift(train_ids, traffic_ids, len(tokenizer), seed),
        "personal_data": pii_drift([full for _, _, full in train], requests, seed),
        "embeddings": drift,
    }
    return {
        "run": str(run.resolve()),
        "log": str(Path(log_dir) / REQUESTS),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "tokenizer": recipe.model.base,
        "encoder": encoder_name,
        "training_rows": len(train),
        "requests": len(requests),
        "left_out": left_out,
        "figures": figures,
        "flagged": [key for key, figure in figures.items() if figure["flagged"]],
        "farthest": farthest,
        "thresholds": THRESHOLDS | {"rare_count": RARE_COUNT, "permutations": ROUNDS},
    }


# --- inputs ---


def training_rows(run: Path, recipe) -> list[tuple[int, str, str]]:
    """(line, user text, whole row's text) of each training row with a user text. Raises
    UserError when the run has no training split, DataError (FILE:LINE) for a bad row."""
    path = run / "data" / "train.jsonl"
    records = read_records(path) if path.is_file() else []
    if not records:
        raise UserError(
            f"{path}: the run has no training split to compare with (was it trained by migaki?)"
        )
    label_column, rendering = recipe.data.label_column, recipe.data.choice_prompt
    examples, problems, _ = convert_records(records, "auto", label_column, rendering)
    if problems:
        raise problems[0]
    rows = [(e.line, _user_text(e), _whole_text(e)) for e in examples]
    kept = [row for row in rows if row[1].strip()]
    if not kept:
        raise UserError(f"{path}: no training row holds a user text to compare with")
    if len(kept) < len(rows):
        log.info("%d training rows without a user text left out", len(rows) - len(kept))
    return kept


def _user_text(example: Example) -> str:
    if example.messages is not None:
        users = [m["content"] for m in example.messages if m["role"] == "user"]
        return users[-1] if users else ""
    return example.text or ""


def _whole_text(example: Example) -> str:
    parts = [m["content"] for m in example.messages or []]
    return "\n".join([*parts, example.text or ""])


def served_requests(log_dir: str | Path, run: Path) -> tuple[list[LoggedRequest], dict[str, Any]]:
    """The requests of the log that `run` served (`run` field, or `model` equal to the run
    folder's name when the log has no run), and what was left out: {"other models":
    {model: count}, "no user text": count}. Raises UserError when none is left."""
    requests = read_requests(log_dir)
    target = run.resolve()
    resolved = {  # once per run named in the log, not once per request
        name: Path(name).expanduser().resolve() for name in {r.run for r in requests if r.run}
    }

    def served(request: LoggedRequest) -> bool:
        if request.run is not None:
            return resolved[request.run] == target
        return request.model == target.name

    mine = [r for r in requests if served(r)]
    others = Counter(r.model for r in requests if not served(r))
    if not mine:
        seen = ", ".join(f"{model} ({n})" for model, n in others.most_common())
        raise UserError(
            f"{Path(log_dir) / REQUESTS}: no request was served by {target} (models in the log: "
            f"{seen}); give the log folder of the server that ran this run"
        )
    asked = [r for r in mine if r.question.strip()]
    left_out = {"other models": dict(others), "no user text": len(mine) - len(asked)}
    if others:
        log.warning("left out %d requests of other models: %s", others.total(), dict(others))
    if not asked:
        raise UserError(f"{Path(log_dir) / REQUESTS}: no request of {target} holds a user text")
    if len(asked) < len(mine):
        log.warning("left out %d requests without a user text", len(mine) - len(asked))
    return asked, left_out


# --- figures ---


def _figure(title: str, key: str, value: float, p_value: float | None, **detail) -> dict:
    threshold = THRESHOLDS[key]
    significant = p_value is None or p_value < THRESHOLDS["p_value"]
    return {
        "title": title,
        "threshold_key": key,
        "value": round(float(value), 4),
        "threshold": threshold,
        "p_value": None if p_value is None else round(float(p_value), 4),
        "flagged": bool(value > threshold and significant),
        **detail,
    }


def length_drift(train_ids: list[list[int]], traffic_ids: list[list[int]], seed: int) -> dict:
    """Input lengths in tokens: medians, p90, histograms and the KS distance (and its p)."""
    train = np.array([len(ids) for ids in train_ids], dtype=float)
    traffic = np.array([len(ids) for ids in traffic_ids], dtype=float)
    edges = np.histogram_bin_edges(np.concatenate([train, traffic]), bins=HISTOGRAM_BINS)
    return _figure(
        "Input length (tokens), KS distance",
        "length_ks",
        ks_distance(train, traffic),
        permutation_p(ks_distance, train, traffic, seed),
        train={"median": float(np.median(train)), "p90": float(np.percentile(train, 90))},
        traffic={"median": float(np.median(traffic)), "p90": float(np.percentile(traffic, 90))},
        histogram={
            "edges": edges.round(2).tolist(),
            "train": np.histogram(train, edges)[0].tolist(),
            "traffic": np.histogram(traffic, edges)[0].tolist(),
        },
    )


def language_drift(train_texts: list[str], traffic_texts: list[str], seed: int) -> dict:
    """Language shares (`language_of`) and their total variation distance (and its p)."""
    codes = {language: i for i, language in enumerate(LANGUAGES)}
    train = np.array([codes[language_of(t)] for t in train_texts])
    traffic = np.array([codes[language_of(t)] for t in traffic_texts])

    def shares(values: np.ndarray) -> dict[str, float]:
        counts = np.bincount(values, minlength=len(LANGUAGES)) / len(values)
        return {language: round(float(counts[i]), 4) for language, i in codes.items()}

    return _figure(
        "Language mix, total variation distance",
        "language_tvd",
        total_variation(train, traffic),
        permutation_p(total_variation, train, traffic, seed),
        train=shares(train),
        traffic=shares(traffic),
    )


def rare_token_drift(
    train_ids: list[list[int]], traffic_ids: list[list[int]], vocab: int, seed: int
) -> dict:
    """Shares of tokens never seen / seen fewer than RARE_COUNT times in training, for the
    traffic (against all training rows) and for the training rows (each against the others)."""
    counts = np.bincount(np.concatenate([np.asarray(i, int) for i in train_ids]), minlength=vocab)

    def row(ids: list[int], own: bool) -> tuple[int, int, int]:
        ids_array = np.asarray(ids, dtype=int).clip(0, len(counts) - 1)
        seen = counts[ids_array]
        if own:  # leave the row itself out
            _, inverse, times = np.unique(ids_array, return_inverse=True, return_counts=True)
            seen = seen - times[inverse]
        return int((seen == 0).sum()), int((seen < RARE_COUNT).sum()), len(ids_array)

    train = np.array([row(ids, own=True) for ids in train_ids]).reshape(-1, 3)
    traffic = np.array([row(ids, own=False) for ids in traffic_ids]).reshape(-1, 3)
    return _figure(
        f"Tokens seen < {RARE_COUNT}× in training, excess share",
        "rare_token_excess",
        _token_share(traffic, 1) - _token_share(train, 1),
        permutation_p(lambda a, b: _token_share(b, 1) - _token_share(a, 1), train, traffic, seed),
        train={"unknown": _token_share(train, 0), "rare": _token_share(train, 1)},
        traffic={"unknown": _token_share(traffic, 0), "rare": _token_share(traffic, 1)},
    )


def _token_share(rows: np.ndarray, column: int) -> float:
    """rows (n, 3): unknown, rare and all tokens per row; the share of `column` in all."""
    return round(float(rows[:, column].sum() / max(1, rows[:, 2].sum())), 4)


def pii_drift(train_texts: list[str], requests: list[LoggedRequest], seed: int) -> dict:
    """Share of requests with any personal data masked (`pii`) against the share of training
    rows where `find_pii` finds some or a placeholder shows it was masked before training."""
    train_types: Counter[str] = Counter()
    train = np.zeros(len(train_texts), dtype=float)
    for i, text in enumerate(train_texts):
        found = Counter(f.type for f in find_pii(text))
        found.update(
            {kind: text.count(mark) for kind, mark in PLACEHOLDERS.items() if mark in text}
        )
        train_types.update(found)
        train[i] = bool(found)
    traffic = np.array([any(r.pii.values()) for r in requests], dtype=float)
    traffic_types = sum((Counter(r.pii) for r in requests), Counter())
    return _figure(
        "Requests with personal data, excess rate",
        "pii_rate_excess",
        traffic.mean() - train.mean(),
        permutation_p(lambda a, b: b.mean() - a.mean(), train, traffic, seed),
        train={"rate": round(float(train.mean()), 4), "by_type": dict(train_types)},
        traffic={"rate": round(float(traffic.mean()), 4), "by_type": dict(traffic_types)},
    )


def embedding_drift(
    train: list[tuple[int, str, str]], requests: list[LoggedRequest], embedder: Embedder, seed: int
) -> tuple[dict, list[dict]]:
    """Embedding drift (centroid cosine distance; RBF MMD² with its permutation p) and the
    FARTHEST requests least like any training row (lowest max cosine similarity)."""
    rng = np.random.default_rng(seed)
    train_rows = _sample(len(train), MAX_EMBEDDED, rng)
    traffic_rows = _sample(len(requests), MAX_EMBEDDED, rng)
    x = np.asarray(embedder([train[i][1] for i in train_rows]), dtype=np.float32)
    y = np.asarray(embedder([requests[i].question for i in traffic_rows]), dtype=np.float32)
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    cosine = float(mean_x @ mean_y / max(1e-12, np.linalg.norm(mean_x) * np.linalg.norm(mean_y)))
    x_test, y_test = x[_sample(len(x), MAX_MMD_ROWS, rng)], y[_sample(len(y), MAX_MMD_ROWS, rng)]
    mmd2, p_value = mmd_test(x_test, y_test, seed)
    nearest, nearest_row = _nearest(y, x)
    # each training row's nearest other row: the second highest similarity (the first is itself)
    own = np.sort(x[_sample(len(x), MAX_MMD_ROWS, rng)] @ x.T, axis=1)[:, -2] if len(x) > 1 else 1
    figure = _figure(
        "Embeddings, centroid cosine distance",
        "centroid_distance",
        1.0 - cosine,
        p_value,
        mmd2=round(mmd2, 6),
        embedded={"train": len(x), "traffic": len(y)},
        nearest_similarity=_similarity_histograms(np.atleast_1d(own).astype(float), nearest),
        projection=_projection(x_test, y_test),
    )
    order = np.argsort(nearest, kind="stable")[:FARTHEST]
    farthest = [
        _farthest_entry(requests[traffic_rows[i]], nearest[i], train[train_rows[nearest_row[i]]])
        for i in order
    ]
    return figure, farthest


def _farthest_entry(request: LoggedRequest, similarity: float, row: tuple[int, str, str]) -> dict:
    return {
        "line": request.line,
        "id": request.id,
        "time": request.time,
        "question": request.question,
        "similarity": round(float(similarity), 4),
        "nearest_train_line": row[0],
        "nearest_train_text": row[1],
    }


def _nearest(queries: np.ndarray, keys: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, ...]:
    """For each query row, the highest cosine similarity to a key row and that row's index."""
    best, where = [], []
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ keys.T
        best.append(sims.max(axis=1))
        where.append(sims.argmax(axis=1))
    return np.concatenate(best).astype(float), np.concatenate(where)


def _similarity_histograms(train: np.ndarray, traffic: np.ndarray) -> dict[str, Any]:
    """Median and histogram (shared bins, from the lowest tenth reached up to 1) of each."""
    low = float(np.floor(min(train.min(), traffic.min()) * 10) / 10)
    edges = np.linspace(max(-1.0, min(low, 0.9)), 1.0, HISTOGRAM_BINS + 1)
    return {
        name: {
            "median": round(float(np.median(values)), 4),
            "edges": edges.round(3).tolist(),
            "counts": np.histogram(np.clip(values, edges[0], 1.0), edges)[0].tolist(),
        }
        for name, values in (("train", train), ("traffic", traffic))
    }


def _projection(x: np.ndarray, y: np.ndarray) -> dict[str, list]:
    """Both samples on the first two principal axes of the pooled sample, for a scatter plot."""
    pooled = np.concatenate([x, y]).astype(float)
    centred = pooled - pooled.mean(axis=0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:2]  # (2, dim); pooled has 2+ rows
    points = (centred @ axes.T).round(4)
    return {"train": points[: len(x)].tolist(), "traffic": points[len(x) :].tolist()}


# --- statistics ---


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance: the largest gap between the empirical CDFs, in [0, 1]."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance of two samples of category codes (ints >= 0), in [0, 1]."""
    size = int(max(a.max(), b.max())) + 1
    share_a, share_b = (
        np.bincount(a, minlength=size) / len(a),
        np.bincount(b, minlength=size) / len(b),
    )
    return float(np.abs(share_a - share_b).sum() / 2)


def permutation_p(
    statistic: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray, seed: int
) -> float:
    """One-sided permutation p-value of `statistic(a, b)` (larger: more different), rows of a
    and b shuffled between the two ROUNDS times; each side subsampled to MAX_TEST_ROWS."""
    rng = np.random.default_rng(seed)
    a, b = a[_sample(len(a), MAX_TEST_ROWS, rng)], b[_sample(len(b), MAX_TEST_ROWS, rng)]
    observed = statistic(a, b)
    pooled = np.concatenate([a, b])
    hits = 0
    for _ in range(ROUNDS):
        order = rng.permutation(len(pooled))
        hits += statistic(pooled[order[: len(a)]], pooled[order[len(a) :]]) >= observed - 1e-12
    return (hits + 1) / (ROUNDS + 1)


def mmd_test(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
    """Squared maximum mean discrepancy (biased estimate) of x (n, dim) and y (m, dim) with a
    Gaussian kernel (bandwidth: the median squared distance of the pooled rows), and its
    permutation p-value over ROUNDS shuffles."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([x, y]).astype(float)
    norms = (z**2).sum(axis=1)
    squared = np.maximum(norms[:, None] + norms[None, :] - 2 * z @ z.T, 0.0)
    off_diagonal = squared[~np.eye(len(z), dtype=bool)]
    scale = float(np.median(off_diagonal)) if off_diagonal.size else 1.0
    kernel = np.exp(-squared / (scale or 1.0))
    labels = np.r_[np.full(len(x), 1 / len(x)), np.full(len(y), -1 / len(y))]
    weights = np.stack([labels, *(rng.permutation(labels) for _ in range(ROUNDS))], axis=1)
    stats = np.einsum("ip,ip->p", weights, kernel @ weights)  # (rounds + 1,)
    p_value = (int((stats[1:] >= stats[0] - 1e-12).sum()) + 1) / (ROUNDS + 1)
    return float(stats[0]), p_value


def _sample(size: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `limit` of `size` rows, random beyond the limit, in order."""
    if size <= limit:
        return np.arange(size)
    return np.sort(rng.choice(size, limit, replace=False))
