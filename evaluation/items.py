"""Per-item outputs of a benchmark: results/metrics/<run>/items/<benchmark>.jsonl, for audit and resume.

    python -m evaluation.items results/metrics/<run>/items/gsm8k.jsonl      # counts per fingerprint

One JSON row per item: {"id", "fp", ...outputs and grades}. `fp` fingerprints everything that decides an item's
output (model, prompt, sampling, max tokens, backend, data file); rows whose fp differs from the current
evaluation's are stale and ignored, so changing a setting never reuses old generations. Rows are appended and
flushed as each chunk of items finishes: an interrupted evaluation loses at most one chunk, and a truncated last
line (killed mid-write) is skipped. `finalize` rewrites the file atomically with the current rows in item order.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

from common.files import atomic_write_text


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ItemStore:
    def __init__(self, path: str | Path, fp: str):
        self.path, self.fp = Path(path), fp
        self.done: dict[str, dict] = {}
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            for i, line in enumerate(lines):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:
                        continue  # the write of the last row was interrupted
                    raise ValueError(f"{self.path}:{i + 1}: corrupt row; delete the file to start this "
                                     "benchmark over") from None
                if row.get("fp") == fp:
                    self.done[str(row["id"])] = row

    def todo(self, ids: list[str]) -> list[str]:
        return [i for i in ids if str(i) not in self.done]

    def add(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for row in rows:
                row = {"id": str(row["id"]), "fp": self.fp, **{k: v for k, v in row.items() if k != "id"}}
                self.done[row["id"]] = row
                f.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finalize(self, ids: list[str]) -> list[dict]:
        """Rows of `ids` in order; rewrites the file with exactly those (stale rows of other settings dropped)."""
        missing = [i for i in ids if str(i) not in self.done]
        if missing:
            raise RuntimeError(f"{self.path}: {len(missing)} items have no output (first: {missing[0]})")
        rows = [self.done[str(i)] for i in ids]
        atomic_write_text(self.path, "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in rows))
        return rows


if __name__ == "__main__":
    for p in sys.argv[1:]:
        c = Counter(json.loads(line).get("fp") for line in Path(p).read_text().splitlines() if line.strip())
        print(p, dict(c))
