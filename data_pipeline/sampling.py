"""Deduplication, seeded sampling and shard assignment: the three places where a build could become
order-dependent, each made a pure function of (ids, content, seed).

- dedupe: on normalised problem text (Unicode NFKC, case-folded, whitespace collapsed); the first occurrence
  in source order (the order of `domain.sources`, then row order) is kept, later ones are rejected as
  `duplicate` naming the kept id.
- seeded_sample: sorts by id first, so the result does not depend on the order records arrived in (shard
  files are read in any order), then `random.Random(seed).sample`.
- shard_of: a stable hash of the id (not Python's salted hash()), so array task i always gets the same prompts.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Callable

from data_pipeline.records import RejectLog

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def dedupe(records: list[dict], key: Callable[[dict], str], rejects: RejectLog, stage: str = "dedupe") -> list[dict]:
    seen: dict[str, str] = {}
    kept = []
    for rec in records:
        k = hashlib.sha1(normalize_text(key(rec)).encode()).hexdigest()
        if k in seen:
            rejects.add(rec["id"], rec["source"], stage, "duplicate", f"same text as {seen[k]}")
            continue
        seen[k] = rec["id"]
        kept.append(rec)
    return kept


def seeded_sample(records: list[dict], k: int | None, seed: int) -> list[dict]:
    """k records chosen uniformly at random (all of them, shuffled, when k is None or >= len)."""
    ordered = sorted(records, key=lambda r: r["id"])
    rng = random.Random(seed)
    if k is None or k >= len(ordered):
        rng.shuffle(ordered)
        return ordered
    return rng.sample(ordered, k)


def split_heldout(records: list[dict], n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train candidates, held-out): the held-out set is a seeded sample, disjoint from everything else."""
    if n_heldout <= 0:
        return records, []
    held = seeded_sample(records, n_heldout, seed)
    held_ids = {r["id"] for r in held}
    return [r for r in records if r["id"] not in held_ids], held


def shard_of(id: str, num_shards: int) -> int:
    return int(hashlib.sha1(id.encode()).hexdigest()[:12], 16) % num_shards
