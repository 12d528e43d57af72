"""DSAL scores: each case's uncertainty and route under one model version (the ``scores`` table)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from activeseg.store.commit import StoreCommit
from activeseg.store.database import Database

__all__ = ["ScoreRecord", "ScoreTable", "score_from_row"]


@dataclass(frozen=True)
class ScoreRecord:
    """DSAL scores of one case under one model version.

    Attributes:
        mdsc: mean Dice between the main head and each auxiliary head, [0, 1]; low = uncertain.
        confidence: mean over voxels of the max softmax probability, [1/C, 1].
        foreground_ml: predicted foreground volume, millilitres.
        route: "strong" (queued for the radiologist), "weak" (pseudo-labelled) or "none".
    """

    case_id: str
    model_version: int
    mdsc: float
    confidence: float
    foreground_ml: float
    route: str


def score_from_row(row: sqlite3.Row, version: int | None) -> ScoreRecord | None:
    """The score columns of ``row`` (a ``scores`` row or a case row joined with one) under ``version``;
    ``None`` when the row has no score or there is no version."""
    if row["mdsc"] is None or version is None:
        return None
    return ScoreRecord(row["case_id"], version, row["mdsc"], row["confidence"], row["foreground_ml"], row["route"])


def _insert_scores(connection: sqlite3.Connection, scores: list[ScoreRecord]) -> None:
    connection.executemany(
        "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)",
        [(s.model_version, s.case_id, s.mdsc, s.confidence, s.foreground_ml, s.route) for s in scores],
    )


class ScoreTable:
    """Storing and reading rankings."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def store_scores(self, scores: list[ScoreRecord]) -> None:
        """Insert or replace scores (one model version's ranking)."""
        with self.database.connect(write=True) as connection:
            _insert_scores(connection, scores)

    def stage_scores(self, commit: StoreCommit, scores: list[ScoreRecord]) -> None:
        """Insert or replace scores when ``commit`` commits."""
        commit.stage(lambda connection: _insert_scores(connection, scores))

    def scores(self, version: int | None) -> dict[str, ScoreRecord]:
        """Scores under model ``version`` by case id; empty when ``version`` is ``None``."""
        if version is None:
            return {}
        with self.database.connect() as connection:
            rows = connection.execute("SELECT * FROM scores WHERE model_version = ?", (version,)).fetchall()
        return {row["case_id"]: record for row in rows if (record := score_from_row(row, version)) is not None}
