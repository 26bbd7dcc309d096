"""Expected GPU-hours of one training run at the paper's settings: 6 x params x training tokens / (MFU x peak);
and of its evaluations: the checkpoint sweep's evaluations per run (evaluation/sweep.py) x the suite's cost.

    python slurm/gpu_hours.py                       # the README table, from the assumptions printed with it
    python slurm/gpu_hours.py --manifest data/math/manifest.json --model qwen3-4b     # measured token counts
    python slurm/gpu_hours.py --mfu 0.25 --peak-tflops 989                          # another MFU, H100 bf16

6 x N x D counts a forward and a backward pass over D tokens of an N-parameter model (Kaplan et al. 2020); the
attention score FLOPs (~10% more at ~2.5k tokens for a 4B model) and gradient checkpointing's recomputed forward
(trainer=paper turns it on) are left to the MFU, which is why the default (35% of A100 bf16 dense peak, 312
TFLOPS) is a little under what a well-tuned ZeRO-3 run reaches. SFT-KL adds the frozen reference model's forward
(2 x N x D): x 4/3. FLOW and Masked-SFT add one base-model forward over one epoch (the precompute job).
Evaluation: one evaluation of a run's suite costs 2 x params x its tokens / (eval MFU x peak): per benchmark,
n_items (configs/benchmark/<b>.yaml) x ASSUMED tokens per item: --gen-tokens generated per item (prompt included),
--think-tokens for a thinking model's generations, --ll-tokens for a log-likelihood item (prompt + every option,
MMLU's 5 shots included); decoding is memory-bound, hence the low default eval MFU. A sweep evaluates, per run,
`final` 1, `epoch` ceil(epochs) (the last save of each epoch but the last, then the final model), `all` every save (every
save_steps=100 steps of configs/trainer/paper.yaml) + 1. Steps per run: ceil(rows / global batch 64) x epochs.
These are estimates to plan an allocation, not measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from common.declarations import benchmarks, models, paper_tables, suite_benchmarks

# Parameter counts: each paper model's `params` (configs/model/<m>.yaml, from its model card; embeddings included,
# the 6ND rule counts every weight that is used).
PARAMS = {m: float(d["params"]) for m, d in models().items() if "params" in d}
# Training rows and ASSUMED mean tokens per row (prompt + response). Row counts: the paper (math 19k, agent 20k)
# and the released medical set (medical-o1-reasoning-SFT, en: ~19.7k). Lengths are not published [U]: long
# verified CoT from Qwen3-235B-A22B-Instruct for math, R1-style CoT for medical, tool schemas + multi-turn for agent.
DOMAINS = {"math": (19_000, 2_500), "medical": (19_700, 1_000), "agent": (20_000, 3_000)}
# One run per (table, model) of paper/tables.yaml, in its order.
RUNS = [(t["title"].split(":")[0], m, t["domain"]) for t in paper_tables()["tables"].values() for m in t["models"]]


def gpu_hours(params: float, tokens: float, mfu: float, peak_tflops: float) -> float:
    return 6 * params * tokens / (mfu * peak_tflops * 1e12) / 3600


def evaluations_per_run(rows: int, epochs: float, rule: str, batch: int = 64, save_steps: int = 100) -> int:
    """How many evaluations the checkpoint sweep makes of one run (module docstring)."""
    steps = -(-rows // batch) * epochs
    return {"final": 1, "epoch": math.ceil(epochs), "all": int(steps // save_steps) + 1}[rule]


def eval_tokens(table: str, model: str, gen: float, think: float, ll: float) -> float:
    """Tokens one evaluation of the table's suite processes for this model (ASSUMED tokens per item)."""
    from evaluation.evaluate import with_mode

    mcfg, total = models()[model], 0.0
    for b in suite_benchmarks({"paper": table}):
        bench = with_mode({**benchmarks()[b], "name": b}, mcfg)
        generated = (bench["kind"] in ("math", "bfcl") or bench.get("output_type") == "generate_until"
                     or bench.get("mode") == "generate")
        per_item = (think if mcfg.get("thinking") else gen) if generated else ll
        total += bench["n_items"] * per_item
    return total


def manifest_tokens(path: Path) -> tuple[int, float]:
    """Rows and total tokens of the training split, as data_pipeline.build measured them."""
    stats = json.loads(path.read_text())["token_stats"]["train"]["total_tokens"]
    return stats["n"], stats["sum"]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=float, default=10, help="the paper's math setting (medical/agent: [U])")
    p.add_argument("--mfu", type=float, default=0.35)
    p.add_argument("--peak-tflops", type=float, default=312, help="A100 bf16 dense peak")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per run, for the wall-clock column")
    p.add_argument("--manifest", type=Path, help="data/<domain>/manifest.json: use its measured token count")
    p.add_argument("--model", choices=sorted(PARAMS), help="with --manifest")
    p.add_argument("--eval-mfu", type=float, default=0.05, help="evaluation (decoding is memory-bound)")
    p.add_argument("--gen-tokens", type=float, default=2000, help="ASSUMED tokens per generated item")
    p.add_argument("--think-tokens", type=float, default=8000, help="ASSUMED tokens per item of a thinking model")
    p.add_argument("--ll-tokens", type=float, default=2000, help="ASSUMED tokens per log-likelihood item")
    args = p.parse_args(argv)

    if args.manifest:
        if not args.model:
            p.error("--manifest needs --model")
        rows, total = manifest_tokens(args.manifest)
        plan = [(str(args.manifest), args.model, rows, total / rows)]
    else:
        plan = [(f"{table} ({domain})", model, *DOMAINS[domain]) for table, model, domain in RUNS]

    print(f"assumptions: {args.epochs:g} epochs, MFU {args.mfu:.0%} of {args.peak_tflops:g} TFLOPS, "
          f"{args.gpus} GPUs")
    print("| run | model | params | rows x mean tokens | train tokens | GPU-h (SFT, EAFT, DFT, TALR, FLOW) "
          f"| GPU-h (SFT-KL) | wall h on {args.gpus} GPUs |")
    print("|---|---|---|---|---|---|---|---|")
    out = []
    for what, model, rows, mean_len in plan:
        tokens = rows * mean_len * args.epochs
        h = gpu_hours(PARAMS[model], tokens, args.mfu, args.peak_tflops)
        row = {"run": what, "model": model, "params": PARAMS[model], "tokens": tokens, "gpu_hours": h,
               "gpu_hours_sft_kl": h * 4 / 3, "wall_hours": h / args.gpus}
        out.append(row)
        print(f"| {what} | {model} | {PARAMS[model] / 1e9:.1f}B | {rows:,} x {mean_len:,.0f} | {tokens / 1e6:,.1f}M "
              f"| {h:,.1f} | {h * 4 / 3:,.1f} | {h / args.gpus:,.1f} |")
    print()
    print(f"evaluation: MFU {args.eval_mfu:.0%}; assumed tokens per item: generated {args.gen_tokens:,.0f}, thinking "
          f"{args.think_tokens:,.0f}, log-likelihood {args.ll_tokens:,.0f}; evaluations per run by "
          "--eval-checkpoints (final / epoch / all)")
    print("| run | model | GPU-h per evaluation | evaluations (final / epoch / all) | eval GPU-h per run, epoch "
          "(default) | eval GPU-h per run, all |")
    print("|---|---|---|---|---|---|")
    for (table_name, model, domain), tid in zip(RUNS, [t for t, tab in paper_tables()["tables"].items()
                                                       for _ in tab["models"]]):
        if args.manifest:
            break
        rows = DOMAINS[domain][0]
        per = 2 * PARAMS[model] * eval_tokens(tid, model, args.gen_tokens, args.think_tokens, args.ll_tokens) / (
            args.eval_mfu * args.peak_tflops * 1e12) / 3600
        n = {r: evaluations_per_run(rows, args.epochs, r) for r in ("final", "epoch", "all")}
        for row in out:
            if row["run"].startswith(table_name) and row["model"] == model:
                row.update(eval_gpu_hours_per_evaluation=per, evaluations=n)
        print(f"| {table_name} ({domain}) | {model} | {per:,.1f} | {n['final']} / {n['epoch']} / {n['all']} "
              f"| {per * n['epoch']:,.1f} | {per * n['all']:,.1f} |")
    return out


if __name__ == "__main__":
    main()
