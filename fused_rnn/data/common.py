"""Shared helpers for the dataset loaders."""

from __future__ import annotations

import csv
import os


class DataFormatError(ValueError):
    """A dataset file exists but does not have the expected format."""


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file at {path!r}")
    return path


def read_csv_columns(path: str, columns: list[str], what: str, limit: int | None = None):
    """Rows of the named columns of a CSV with a header (quoted multi-line fields allowed)."""
    require_file(path, what)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataFormatError(
                f"{what}: {path!r} lacks the column(s) {missing}; it has {reader.fieldnames}")
        rows = []
        for row in reader:
            if limit is not None and len(rows) >= limit:
                break
            if any(row[c] is None for c in columns):
                raise DataFormatError(f"{what}: {path!r} line {reader.line_num} is short")
            rows.append([row[c] for c in columns])
    return rows
