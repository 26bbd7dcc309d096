"""The one results schema: results/metrics/<run>/<benchmark>.json, written by evaluation, read by analysis.

    python -m evaluation.schema results/metrics/<run>/<benchmark>.json ...   # validates files

Required fields (value and stderr in points, 0-100; stderr is the standard error of the mean over items,
pooled over the n_runs runs):
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from common.files import atomic_write_text

REQUIRED: dict[str, type | tuple[type, ...]] = {
    "run": str,                 # run name (runs/<run>) or a base model's config name
    "model": str,               # what was evaluated: a path or a Hub id
    "method": str,              # training method, "base" for an untrained model
    "benchmark": str,           # e.g. gsm8k, aime24, mmlu, ifeval, cluewsc, bfcl_v3, arc_easy
    "metric": str,              # e.g. exact_match, acc, acc_norm, prompt_level_strict_acc, ast_summary, nll_per_token
    "value": (int, float),      # 0-100 for accuracies; the metric's own unit otherwise (named by `metric`)
    "n": int,                   # items scored per run
    "stderr": (int, float, type(None)),
    "n_runs": int,
    "settings": dict,           # prompt, shots, sampling, max tokens, backend, ...
    "data_source": str,         # Hub id or local file the items came from
    "git_sha": (str, type(None)),
    "timestamp": str,           # ISO 8601, UTC
}
OPTIONAL = {
    "step": (int, type(None)),  # training step of the checkpoint, for curves over training (Fig. 2a)
    "domain": str,              # target domain of the run: math | medical | agent | general
    "metrics": dict,            # every other metric of the benchmark (IFEval's four accuracies, pass@k, ...)
    "items_file": str,          # per-item outputs, for audit and resume
}
__doc__ += "\n".join(f"    {k}: {v}" for k, v in REQUIRED.items())


class SchemaError(ValueError):
    pass


def _nonfinite(x, key: str):
    """The first `key[...]` whose number is NaN or infinite (nested dicts and lists searched), else None."""
    if isinstance(x, float) and not math.isfinite(x):
        return key
    children = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    return next((bad for k, v in children if (bad := _nonfinite(v, f"{key}[{k!r}]"))), None)


def run_failure(info: dict) -> str | None:
    """Why a run's run_info.json marks it as failed (it stopped on divergence or an error), else None. A run
    in progress has no run_info.json, and one written before runs could fail has no `finished`: both pass."""
    if info.get("error"):
        return f"training failed: {info['error']}"
    if info.get("finished") is False:
        return "training did not finish (run_info.json says finished: false)"
    return None


def validate(obj: dict, where: str = "<result>") -> dict:
    for key, typ in REQUIRED.items():
        if key not in obj:
            raise SchemaError(f"{where}: missing key {key!r}")
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            raise SchemaError(f"{where}: {key!r} should be {typ}, got {type(obj[key]).__name__}")
    for key, typ in OPTIONAL.items():
        if key in obj and not isinstance(obj[key], typ):
            raise SchemaError(f"{where}: {key!r} should be {typ}, got {type(obj[key]).__name__}")
    if obj["n"] < 0 or obj["n_runs"] < 1:
        raise SchemaError(f"{where}: n must be >= 0 and n_runs >= 1")
    # json writes and reads NaN and Infinity without complaint, and a NaN score averages into a table
    bad = next((b for key in ("value", "stderr", "metrics") if (b := _nonfinite(obj.get(key), key))), None)
    if bad:
        raise SchemaError(f"{where}: {bad} is not a finite number; a model with NaN/Inf weights or logits "
                          "(a diverged run) gives these, and no table may average them")
    return obj


def write_result(path: str | Path, obj: dict) -> Path:
    """Validate and write atomically."""
    path = Path(path)
    validate(obj, str(path))
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    return validate(obj, str(path))


if __name__ == "__main__":
    for p in sys.argv[1:]:
        read_result(p)
        print(f"ok {p}")
