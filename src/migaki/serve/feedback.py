"""Feedback on served answers: a thumbs up or down and an optional correction per response,
kept in `feedback.sqlite` beside the request log. SQLite (WAL, a busy timeout) because the
store must survive a restart and several writers at once — server workers, a second server
on the same folder — which an appended text file does not promise."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from migaki.errors import UserError

FEEDBACK = "feedback.sqlite"
RATINGS = ("up", "down")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    response_id TEXT NOT NULL,
    rating TEXT CHECK (rating IN ('up', 'down')),
    correction TEXT,
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_response ON feedback (response_id);
"""


@dataclass(frozen=True)
class Feedback:
    id: int
    response_id: str
    rating: str | None  # "up", "down", or None when only a correction was given
    # kept as written: a correction is a training answer the team wrote, and a support
    # line's phone number in it is a fact to learn, not a client's personal data (masking it
    # taught the model to answer "<PHONE>"; benchmarks/feedback_loop.py)
    correction: str | None
    time: str


class FeedbackStore:
    """The feedback of one log folder. Every call opens its own connection, so one store may
    be shared by threads; SQLite serializes the writers."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / FEEDBACK
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def add(self, response_id: str, rating: str | None, correction: str | None = None) -> int:
        """Store one piece of feedback; returns its id. Raises ValueError for a rating that is
        not up/down, or for neither a rating nor a correction."""
        if rating is not None and rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}, not {rating!r}")
        if rating is None and not (correction and correction.strip()):
            raise ValueError("give a rating, a correction, or both")
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._connection() as db:
            cursor = db.execute(
                "INSERT INTO feedback (response_id, rating, correction, time) VALUES (?, ?, ?, ?)",
                (response_id, rating, correction, now),
            )
            return int(cursor.lastrowid)

    def all(self) -> list[Feedback]:
        """Every piece of feedback, oldest first."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT id, response_id, rating, correction, time FROM feedback ORDER BY id"
            ).fetchall()
        return [Feedback(*row) for row in rows]

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            raise UserError(f"{self.path}: cannot open the feedback store ({exc})") from None
        try:
            with db:  # commits, or rolls back on an exception
                yield db
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: not a readable feedback store ({exc})") from None
        finally:
            db.close()


def read_feedback(directory: str | Path) -> list[Feedback]:
    """The feedback of a log folder that must already hold a store (UserError otherwise)."""
    path = Path(directory) / FEEDBACK
    if not path.is_file():
        raise UserError(f"{path}: no feedback here yet (POST /v1/feedback to migaki serve)")
    return FeedbackStore(directory).all()
