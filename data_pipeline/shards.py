"""Resumable, sharded generation results: data/<domain>/work/generate/.

    settings.json                          hash of everything that decides a response (prompts, teacher, prompt
                                           template, verification); a run with other settings refuses to resume
    shard-00003-of-00008/part-<ns>-<pid>.jsonl   finished records, one file per chunk, written atomically
    shard-00003-of-00008/DONE              written when the shard has nothing left to do

A chunk's records reach disk all at once (temporary file + rename) after the teacher answered and verification
ran, so a SIGKILL at any moment loses at most the chunk in flight and never leaves a partial part. On restart
the ids found in every part under generate/ (whatever num_shards wrote them) are skipped, so re-sharding is
safe too. Two processes running the SAME shard at the same time could both answer a prompt: finalize keeps the
first record per id in file-name order and counts the extra ones as `duplicate_generations`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from common.files import atomic_write_json, atomic_write_jsonl, read_jsonl


class ShardStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def shard_dir(self, shard: int, num_shards: int) -> Path:
        return self.root / f"shard-{shard:05d}-of-{num_shards:05d}"

    def check_settings(self, settings_hash: str, settings: dict) -> None:
        """First run records the settings; later runs must match them, or the old results would be mixed in."""
        path = self.root / "settings.json"
        if path.exists():
            import json

            old = json.loads(path.read_text())
            if old.get("hash") != settings_hash:
                raise RuntimeError(
                    f"{path} was written with other generation settings (hash {old.get('hash', '?')[:12]} vs "
                    f"{settings_hash[:12]}): resuming would mix responses from two set-ups. Delete {self.root} "
                    "(or pass overwrite=true) to start over, or use another out_dir.")
            return
        atomic_write_json(path, {"hash": settings_hash, "settings": settings})

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("shard-*/part-*.jsonl"))

    def records(self) -> tuple[list[dict], int]:
        """(first record per id over all parts, number of extra records for an id already seen)."""
        seen, out, dup = set(), [], 0
        for part in self.parts():
            for rec in read_jsonl(part):
                if rec["id"] in seen:
                    dup += 1
                    continue
                seen.add(rec["id"])
                out.append(rec)
        return out, dup

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self.records()[0]}

    def write_part(self, shard: int, num_shards: int, records: list[dict]) -> Path:
        d = self.shard_dir(shard, num_shards)
        d.mkdir(parents=True, exist_ok=True)
        # time + pid: unique without coordination, and sorts in write order within a shard
        return atomic_write_jsonl(d / f"part-{time.time_ns():020d}-{os.getpid()}.jsonl", records)

    def mark_done(self, shard: int, num_shards: int, info: dict) -> None:
        atomic_write_json(self.shard_dir(shard, num_shards) / "DONE", info)

    def done_shards(self, num_shards: int) -> list[int]:
        return [i for i in range(num_shards) if (self.shard_dir(i, num_shards) / "DONE").exists()]
