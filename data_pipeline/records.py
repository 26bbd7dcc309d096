"""Rejections: every row that does not reach the output is recorded with its source id, stage and reason.

A source adapter raises `Rejected(reason, detail)` for a row it cannot use; the stages add their own reasons
(duplicate, gold_unparseable, incorrect, overlong, ...). `RejectLog` collects them; the manifest reports the
counts per stage, reason and source, and data/<domain>/rejected.jsonl lists every one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from common.files import atomic_write_jsonl, read_jsonl


class Rejected(Exception):
    """Raised by an adapter or a check: the row is dropped and counted, the run goes on."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RejectLog:
    def __init__(self, rows: list[dict] | None = None):
        self.rows: list[dict] = list(rows or [])

    def add(self, id: str, source: str, stage: str, reason: str, detail: str = "") -> None:
        self.rows.append({"id": id, "source": source, "stage": stage, "reason": reason, "detail": detail[:500]})

    def extend(self, other: RejectLog) -> None:
        self.rows.extend(other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self) -> dict:
        """{stage: {reason: n}}"""
        out: dict[str, Counter] = defaultdict(Counter)
        for r in self.rows:
            out[r["stage"]][r["reason"]] += 1
        return {stage: dict(sorted(c.items())) for stage, c in sorted(out.items())}

    def counts_by_source(self) -> dict:
        """{source: {stage/reason: n}}"""
        out: dict[str, Counter] = defaultdict(Counter)
        for r in self.rows:
            out[r["source"]][f"{r['stage']}/{r['reason']}"] += 1
        return {src: dict(sorted(c.items())) for src, c in sorted(out.items())}

    def save(self, path: str | Path) -> None:
        atomic_write_jsonl(path, self.rows)

    @classmethod
    def load(cls, path: str | Path) -> RejectLog:
        return cls(read_jsonl(path) if Path(path).exists() else [])
