"""Which checkpoints of a run are complete: a marker written last, and a check of it before any resume or evaluation.

A job killed while saving (preemption, a SLURM requeue, a full disk) can leave checkpoint-N with some files
truncated or missing, trainer_state.json included or not. Resuming from such a folder crashes, and so does every
requeue after it. So the Trainer's save is followed by `checkpoint_complete.json`, written last (after a barrier,
by rank 0), which lists every file of the checkpoint with its size. A checkpoint counts as complete only when that
marker parses and every file it lists is there with its recorded size (a checkpoint without a marker, from an
older version of this code, counts when its files read back whole: `content_check`); resume (training/train.py) and evaluation
(evaluation/evaluate.py) take the newest complete one and say which newer ones they skipped and why.

    python -m training.checkpoints runs/<run>       # lists each checkpoint and whether it verifies
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

from transformers import TrainerCallback

from common.files import atomic_write_json

MARKER = "checkpoint_complete.json"


def step_of(path: Path) -> int | None:
    """N for a folder named checkpoint-N, else None."""
    name = Path(path).name
    prefix, _, number = name.partition("-")
    return int(number) if prefix == "checkpoint" and number.isdigit() else None


def write_marker(ckpt: Path) -> Path:
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
             if p.is_file() and p.name != MARKER}
    return atomic_write_json(ckpt / MARKER, {"step": step_of(ckpt), "files": files})


def verify(ckpt: Path) -> str | None:
    """None when `ckpt` is complete, else the reason it is not."""
    marker = ckpt / MARKER
    if not marker.exists():
        reason = content_check(ckpt)
        return None if reason is None else f"no {MARKER} (the save did not finish), and {reason}"
    try:
        files = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"{MARKER} is unreadable ({e})"
    if "trainer_state.json" not in files:
        return f"{MARKER} lists no trainer_state.json"
    for rel, size in files.items():
        p = ckpt / rel
        if not p.exists():
            return f"{rel} is missing"
        if p.stat().st_size != size:
            return f"{rel} has {p.stat().st_size} bytes, {size} when saved (truncated or overwritten)"
    return None


def content_check(ckpt: Path) -> str | None:
    """For a checkpoint without a marker (saved by an older version of this code, or killed just before the
    marker): None when every file it needs to resume reads back whole, else what does not. Reads headers only:
    a safetensors file's declared size, the zip directory at the end of each torch.save file."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"trainer_state.json is unreadable ({type(e).__name__})"
    if state.get("global_step") != step_of(ckpt):
        return f"trainer_state.json says step {state.get('global_step')}"
    weights = sorted(ckpt.glob("*.safetensors"))
    if not weights:
        return "it holds no *.safetensors weights"
    for f in weights:
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            try:
                header = json.loads(fh.read(n)) if 0 < n < 100_000_000 else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                header = None
        if not header:
            return f"{f.name} has no readable header"
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if f.stat().st_size != 8 + n + end:
            return f"{f.name} has {f.stat().st_size} bytes, its header says {8 + n + end}"
    latest = ckpt / "latest"  # DeepSpeed keeps optimizer state in global_stepN/ and names it in `latest`
    pt_files = sorted((ckpt / latest.read_text().strip()).glob("*.pt")) if latest.exists() else \
        [ckpt / "optimizer.pt"]
    for f in pt_files + sorted(ckpt.glob("*.pth")) + sorted(ckpt.glob("scheduler.pt")):
        if not f.exists():
            return f"{f.relative_to(ckpt)} is missing"
        if not zipfile.is_zipfile(f):
            return f"{f.relative_to(ckpt)} is not a whole torch.save file (truncated?)"
    return None


def newest_verified(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint-N or None, [(newer incomplete checkpoint, reason), ...] newest first)."""
    ckpts = sorted((p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and step_of(p) is not None),
                   key=step_of, reverse=True)
    skipped = []
    for ckpt in ckpts:
        reason = verify(ckpt)
        if reason is None:
            return ckpt, skipped
        skipped.append((ckpt, reason))
    return None, skipped


def set_aside(ckpt: Path, reason: str) -> Path:
    """Rename an incomplete checkpoint to rejected-checkpoint-N, so that neither the Trainer's own checkpoint
    handling (rotation, `checkpoint-*` globs) nor a later resume trips over it; its files stay for inspection."""
    target = ckpt.with_name(f"rejected-{ckpt.name}")
    n = 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"rejected-{ckpt.name}.{n}")
    ckpt.rename(target)
    (target / "REJECTED.txt").write_text(f"skipped on resume: {reason}\n")
    return target


class CheckpointMarker(TrainerCallback):
    """Writes the marker once every rank has finished the Trainer's save of this step."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # each rank writes its own shards (DeepSpeed): all must be done before the marker
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            write_marker(ckpt)
        return control


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    run_dir = Path(argv[0])
    for ckpt in sorted(run_dir.glob("checkpoint-*"), key=lambda p: step_of(p) or -1):
        reason = verify(ckpt)
        print(f"{ckpt.name}: {'complete' if reason is None else 'INCOMPLETE: ' + reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
