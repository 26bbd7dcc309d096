"""Evaluate a run's checkpoints, then its final model: the inputs of the paper's checkpoint selection (the best mean
over all evaluated benchmarks, `make tables`) and of Fig. 2a (general average vs step, `make figures`).

    python -m evaluation.sweep model=runs/<run> suite=table1                       # checkpoints=epoch (default)
    python -m evaluation.sweep model=runs/<run> suite=table1 checkpoints=all backend=vllm
    sbatch slurm/sweep.sbatch model=runs/<run> suite=table1 checkpoints=epoch      # what slurm/submit.py queues

`checkpoints` (every other argument goes to evaluation.evaluate unchanged, once per checkpoint):
  final  the final model only (what submit.py evaluated before; `make tables select=final` needs no more)
  epoch  per epoch but the last, the last complete checkpoint saved at or before the epoch's end (saves come every
         100 steps, so at most 99 steps early), and the final model, which ends the last epoch: 10 evaluations of
         a 10-epoch paper run (the last epoch's last save, up to 99 steps before the final model, would repeat it)
  all    every complete checkpoint, plus the final model: ~30 evaluations of a paper math run (Fig. 2a every 100
         steps, as the paper plots it)
The epoch length is the run's own (trainer_state.json of its newest checkpoint: global_step / epoch). Results go
where evaluation.evaluate puts them: results/metrics/<run>/checkpoint-N/ and, for the final model, results/metrics/
<run>/. Finished checkpoints are reused (evaluation resumes from its items), so a requeued sweep redoes only what
is missing. A checkpoint at the final step is not evaluated twice. The GPU-hours of each rule: slurm/gpu_hours.py.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from training.checkpoints import step_of, verify

RULES = ("final", "epoch", "all")


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint-N of the run that verifies (training.checkpoints), by step; incomplete ones are named."""
    out = []
    for ckpt in sorted((p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and step_of(p) is not None),
                       key=step_of):
        reason = verify(ckpt)
        if reason:
            print(f"[sweep] skipping {ckpt}: {reason}", file=sys.stderr)
        else:
            out.append(ckpt)
    return out


def steps_per_epoch(ckpts: list[Path]) -> float:
    """The run's optimizer steps per epoch, from the newest checkpoint's trainer_state.json (global_step / epoch)."""
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    if not state.get("epoch"):
        raise ValueError(f"{ckpts[-1]}/trainer_state.json has no epoch: cannot place the epoch ends")
    return state["global_step"] / state["epoch"]


def pick(run_dir: Path, rule: str) -> list[Path]:
    """The checkpoint folders a rule evaluates besides the final model (module docstring), by step."""
    if rule not in RULES:
        raise ValueError(f"checkpoints={rule!r}: one of {', '.join(RULES)}")
    run_dir = Path(run_dir)
    info = run_dir / "run_info.json"
    final_step = json.loads(info.read_text()).get("global_step") if info.exists() else None
    ckpts = [c for c in complete_checkpoints(run_dir) if step_of(c) != final_step]
    if rule == "final" or not ckpts:
        return []
    if rule == "all":
        return ckpts
    spe = steps_per_epoch(complete_checkpoints(run_dir))
    last_step = final_step or step_of(ckpts[-1])
    chosen = []
    for k in range(1, int(last_step / spe + 1e-9) + 1):
        if k * spe >= last_step - 1e-9:
            break  # the final model ends this epoch
        before = [c for c in ckpts if step_of(c) <= k * spe + 1e-9]
        if before and before[-1] not in chosen:
            chosen.append(before[-1])
    return chosen


def main(argv: list[str]) -> list[dict]:
    """argv: evaluation.evaluate's overrides with `model=<run dir>` and optionally `checkpoints=<rule>`."""
    from hydra import compose, initialize_config_dir

    from common.files import REPO, repo_path
    from evaluation.benchmarks import with_declared
    from evaluation.evaluate import main as evaluate

    args = [re.sub(r"^model=", "model_spec=", a) for a in argv]
    rule = next((a.split("=", 1)[1] for a in args if a.startswith("checkpoints=")), "epoch")
    args = [a for a in args if not a.startswith("checkpoints=")]
    spec = next((a.split("=", 1)[1] for a in args if a.startswith("model_spec=")), None)
    run_dir = repo_path(spec) if spec else None
    if run_dir is None or not (run_dir / "config.yaml").exists():
        raise SystemExit(f"evaluation.sweep evaluates a run: model=runs/<run> (a folder with config.yaml), got {spec!r}")
    rest = [a for a in args if not a.startswith("model_spec=")]
    targets = [*pick(run_dir, rule), run_dir]
    print(f"[sweep] {run_dir.name}: checkpoints={rule}: " + ", ".join(
        p.name if p != run_dir else "final" for p in targets))
    out = []
    for target in targets:
        with initialize_config_dir(str(REPO / "configs"), version_base=None):
            cfg = compose("eval", overrides=with_declared([f"model_spec={target}", *rest]))
        out.append(evaluate(cfg))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
