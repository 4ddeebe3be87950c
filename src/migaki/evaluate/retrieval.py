"""Passages for retrieval-augmented prompts and examples for few-shot prompts.

`load_documents` reads `compare.documents` (files or folders of .txt, .md and .jsonl) into
passages of at most `compare.chunk_chars` characters; `Retriever` finds the passages nearest
to each question by BM25 over Japanese-aware words (`data.words`: MeCab morphemes for
Japanese), by sentence-embedding cosine (the bundled MiniLM), or both fused by rank;
`nearest_examples` picks the training rows most similar to each question for few-shot
prompts, never the question itself.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import bm25s
import numpy as np

from migaki.data.words import words
from migaki.errors import DataError, UserError
from migaki.models.embed import DEFAULT_ENCODER, embed

log = logging.getLogger(__name__)

DOCUMENT_SUFFIXES = (".txt", ".md", ".jsonl")
# The fields of a .jsonl line read as its passage, in this order: the first one present.
JSONL_FIELDS = ("text", "content", "passage")
RETRIEVAL_METHODS = ("hybrid", "bm25", "embedding")
# Reciprocal rank fusion's constant (Cormack et al. 2009, and Elasticsearch's and Vespa's
# default): a passage at rank r in one list adds 1 / (60 + r), so a passage near the top of
# both lists beats one at the very top of only one, and neither score scale matters.
RRF_K = 60
# How deep each method's ranking goes into the fusion (at least k).
FUSION_DEPTH = 50

HEADING = re.compile(r"^#{1,6}\s")
PARAGRAPH_BREAK = re.compile(r"\n[ \t\u3000]*\n")
# After a Japanese full stop or exclamation / question mark, or after . ! ? before a space
# (so "3.5" and "e.g.x" stay whole).
SENTENCE_END = re.compile(r"(?<=[。．！？])|(?<=[.!?])(?=\s)")


@dataclass(frozen=True)
class Passage:
    """A retrievable text and where it came from: `file:chunk-N` for .txt/.md (N from 1),
    `file:line-N` for a .jsonl line (`file:line-N.M` when its text was cut into pieces)."""

    text: str
    source: str


def load_documents(paths: Sequence[str | Path], chunk_chars: int) -> list[Passage]:
    """Passages of every file in `paths` (files, or folders walked recursively in sorted
    order): .txt and .md cut at blank lines into paragraphs and packed into chunks of at most
    `chunk_chars` characters; each .jsonl line's `text` (else `content`, else `passage`)
    field one passage, cut the same way when longer. Files of other kinds inside a folder are
    counted and logged, not read.

    Raises UserError for a path that does not exist, a file named directly that is not
    .txt/.md/.jsonl, a file that is not UTF-8, a .jsonl line that is not a JSON object with
    one of the fields, or a path that yields no passage."""
    passages: list[Passage] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            files = _document_files(path)
        elif path.is_file():
            if path.suffix.lower() not in DOCUMENT_SUFFIXES:
                raise UserError(
                    f"{path}: compare.documents reads .txt, .md and .jsonl files only "
                    "(convert it to text first)"
                )
            files = [path]
        else:
            raise UserError(f"{path}: compare.documents path not found")
        found = [p for file in files for p in _file_passages(file, chunk_chars)]
        if not found:
            raise UserError(f"{path}: compare.documents path holds no text to retrieve")
        passages += found
    return passages


def _document_files(folder: Path) -> list[Path]:
    """The .txt/.md/.jsonl files under `folder`, sorted; the others logged with their count."""
    files, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            (files if path.suffix.lower() in DOCUMENT_SUFFIXES else skipped).append(path)
    if skipped:
        names = ", ".join(str(p.relative_to(folder)) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning(
            "%s: %d files read, %d skipped (not .txt/.md/.jsonl): %s%s",
            folder,
            len(files),
            len(skipped),
            names,
            more,
        )
    return files


def _read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8-sig")  # -sig: a byte-order mark is not text
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 to retrieve from it"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None


def _file_passages(path: Path, chunk_chars: int) -> list[Passage]:
    text = _read_text(path)
    if path.suffix.lower() != ".jsonl":
        return [
            Passage(chunk, f"{path}:chunk-{number}")
            for number, chunk in enumerate(chunk_text(text, chunk_chars), 1)
        ]
    passages, fields = [], dict.fromkeys(JSONL_FIELDS, 0)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        field, value = _jsonl_passage(path, number, line)
        fields[field] += 1
        pieces = chunk_text(value, chunk_chars)
        for part, piece in enumerate(pieces, 1):
            where = f"line-{number}" if len(pieces) == 1 else f"line-{number}.{part}"
            passages.append(Passage(piece, f"{path}:{where}"))
    used = ", ".join(f"{count} from '{name}'" for name, count in fields.items() if count)
    log.info("%s: %d passages (%s)", path, len(passages), used or "no lines")
    return passages


def _jsonl_passage(path: Path, number: int, line: str) -> tuple[str, str]:
    """(field, text) of one .jsonl line; DataError naming file:line when it has none."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(path, number, f"invalid JSON ({exc.msg})", "invalid_json") from None
    field = next((f for f in JSONL_FIELDS if isinstance(row, dict) and f in row), None)
    if field is None or not isinstance(row[field], str):
        raise DataError(
            path, number, "a documents line needs a string field 'text', 'content' or 'passage'"
        )
    return field, row[field]


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """`text` cut into chunks of at most `chunk_chars` characters: paragraphs (split at blank
    lines) packed whole, joined by a blank line; a paragraph longer than that cut at sentence
    ends, then hard at `chunk_chars`. A markdown heading is packed with the paragraph after
    it, so a section's title stays with its first text."""
    paragraphs = [p.strip() for p in PARAGRAPH_BREAK.split(text) if p.strip()]
    blocks: list[str] = []
    heading = ""
    for paragraph in paragraphs:
        if HEADING.match(paragraph) and "\n" not in paragraph:
            heading = f"{heading}\n\n{paragraph}" if heading else paragraph
            continue
        blocks.append(f"{heading}\n\n{paragraph}" if heading else paragraph)
        heading = ""
    if heading:  # a heading at the end of the file, with nothing after it
        blocks.append(heading)
    chunks: list[str] = []
    for block in blocks:
        for piece in _split_long(block, chunk_chars):
            if chunks and len(chunks[-1]) + 2 + len(piece) <= chunk_chars:
                chunks[-1] += "\n\n" + piece
            else:
                chunks.append(piece)
    return chunks


def _split_long(paragraph: str, chunk_chars: int) -> list[str]:
    """A paragraph in pieces of at most `chunk_chars`: whole sentences where they fit."""
    if len(paragraph) <= chunk_chars:
        return [paragraph]
    pieces: list[str] = []
    current = ""
    for sentence in SENTENCE_END.split(paragraph):
        if len(current) + len(sentence) <= chunk_chars:
            current += sentence
            continue
        if current.strip():
            pieces.append(current.strip())
        sentence = sentence.lstrip()  # a new piece starts at the sentence, not its space
        while len(sentence) > chunk_chars:  # one sentence longer than a chunk: cut it hard
            pieces.append(sentence[:chunk_chars].strip())
            sentence = sentence[chunk_chars:].lstrip()
        current = sentence
    if current.strip():
        pieces.append(current.strip())
    return [piece for piece in pieces if piece]


class Retriever:
    """Top-k passages for questions.

    method `bm25`: Okapi BM25 (bm25s, Lucene's variant) over `data.words` tokens, ranking only
    passages that share a word with the question (so it may return fewer than k);
    `embedding`: cosine similarity of `encoder` sentence embeddings; `hybrid`: reciprocal
    rank fusion of both rankings (each cut at max(k, 50) passages): a passage scores the sum
    of 1 / (60 + rank) over the lists it is in. Ties go to the earlier passage, so results
    do not depend on the order of floating-point sums."""

    def __init__(
        self,
        passages: Sequence[Passage],
        method: str = "hybrid",
        encoder: str | Path = DEFAULT_ENCODER,
    ) -> None:
        """Index `passages` (BM25 and/or their embeddings, once). Raises UserError for no
        passages or an unknown method."""
        if not passages:
            raise UserError("no passages to retrieve from (compare.documents gave no text)")
        if method not in RETRIEVAL_METHODS:
            raise UserError(
                f"compare.retrieval: unknown method '{method}' "
                f"(use one of {', '.join(RETRIEVAL_METHODS)})"
            )
        self.passages = list(passages)
        self.method = method
        self.encoder = encoder
        self.lexical = method in ("hybrid", "bm25")
        self.bm25 = None  # stays None when no passage has a word (bm25s cannot index that)
        self.vectors = None  # (passages, dim) unit vectors
        tokens = [words(p.text) for p in self.passages] if self.lexical else []
        if any(tokens):
            self.bm25 = bm25s.BM25()
            self.bm25.index(tokens, show_progress=False)
        if method in ("hybrid", "embedding"):
            self.vectors = embed([p.text for p in self.passages], encoder)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """The `k` best passages for each query, best first (fewer only for `bm25` when fewer
        passages share a word with the query, or when there are fewer than k passages).
        Queries are embedded in one batch."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return [[self.passages[i] for i in row] for row in self.ranked_indices(queries, k)]

    def ranked_indices(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """`search`, as indices into the passages."""
        depth = max(k, FUSION_DEPTH)
        lexical = self._bm25_rankings(queries, depth) if self.lexical else None
        semantic = self._embedding_rankings(queries, depth) if self.vectors is not None else None
        if lexical is None:
            return [ranking[:k] for ranking in semantic]
        if semantic is None:
            return [ranking[:k] for ranking in lexical]
        return [reciprocal_rank_fusion([a, b])[:k] for a, b in zip(lexical, semantic, strict=True)]

    def _bm25_rankings(self, queries: Sequence[str], depth: int) -> list[list[int]]:
        if self.bm25 is None:
            return [[] for _ in queries]
        rankings = []
        for query in queries:
            ids = self.bm25.get_tokens_ids(words(query))
            scores = self.bm25.get_scores_from_ids(ids) if ids else np.zeros(len(self.passages))
            order = _best_first(scores)[:depth]
            rankings.append([int(i) for i in order if scores[i] > 0])
        return rankings

    def _embedding_rankings(self, queries: Sequence[str], depth: int) -> list[list[int]]:
        similarity = embed(list(queries), self.encoder) @ self.vectors.T  # (queries, passages)
        return [[int(i) for i in _best_first(row)[:depth]] for row in similarity]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], constant: int = RRF_K) -> list[int]:
    """Items of several best-first rankings ordered by the sum over rankings of
    1 / (constant + rank), rank from 1; ties go to the smaller item."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (constant + rank)
    return sorted(fused, key=lambda item: (-fused[item], item))


def _best_first(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties in index order (a stable sort)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def fold(text: str) -> str:
    """NFKC and whitespace folded: how two texts are compared for being the same text."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def nearest_examples(
    queries: Sequence[str],
    pool_texts: Sequence[str],
    k: int,
    encoder: str | Path = DEFAULT_ENCODER,
    exclude_same: bool = True,
) -> list[list[int]]:
    """For each query, the indices of the `k` pool texts most similar to it by embedding
    cosine, best first (ties to the smaller index). With `exclude_same`, a pool text equal to
    the query after NFKC and whitespace folding is never chosen, so a test question is not
    its own example. Fewer than k when the pool is smaller; an empty pool gives empty lists."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not pool_texts or not queries:
        return [[] for _ in queries]
    vectors = embed(list(queries) + list(pool_texts), encoder)
    similarity = vectors[: len(queries)] @ vectors[len(queries) :].T  # (queries, pool)
    folded_pool = [fold(text) for text in pool_texts] if exclude_same else []
    chosen = []
    for query, row in zip(queries, similarity, strict=True):
        same = fold(query) if exclude_same else None
        order = (int(i) for i in _best_first(row) if not exclude_same or folded_pool[i] != same)
        chosen.append(list(islice(order, k)))
    return chosen
