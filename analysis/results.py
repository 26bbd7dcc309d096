"""Read results/metrics into one table, tell which model/data/method each run is, pick checkpoints, average.

    python -m analysis.results [results/metrics]      # prints what is there, one line per run and step

Every result file is `evaluation.schema`'s `results/metrics/<run>/<benchmark>.json`. A run is identified by
runs/<run>/run_info.json when that exists, else by its name `<model>-<data>-<method>-s<seed>` matched against
the config names in configs/{model,data,method}; a result with method "base" is the untrained model named by
`run` (a model config name). Benchmarks belong to a domain (`BENCHMARK_DOMAIN`); the domain average is the
unweighted mean of the domain's benchmarks, as in the paper.

Refused (`load_metrics` raises one error listing them all): result files that do not validate (a missing key,
a NaN or infinite score), and results of a run whose run_info.json says it failed (stopped on divergence):
such a model scores finite accuracies, which would otherwise be averaged with its healthy seeds.

Checkpoint selection (`select_checkpoints`): "final" keeps each run's last evaluated step; "best" keeps the step
with the best mean over all evaluated benchmarks, the paper's protocol (App. F), which selects on the test sets.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

from common.files import REPO, repo_path  # noqa: F401 - analysis.tables imports repo_path from here
from evaluation.schema import SchemaError, read_result, run_failure

BENCHMARK_DOMAIN = {
    # the paper's benchmarks (PAPER.md Sec. 6)
    "aime24": "math", "aime25": "math", "gsm8k": "math", "math500": "math", "minerva_math": "math",
    "medmcqa": "medical", "medqa": "medical", "pubmedqa": "medical",
    "bfcl_v3": "agent",
    "mmlu": "general", "ifeval": "general", "cluewsc": "general",
    # the CPU default's general suite (issue 4's `mini` suite)
    "arc_easy": "general", "arc_challenge": "general", "hellaswag": "general", "sciq": "general",
    "general_kl": "general", "target_nll": "target (NLL)", "gsm8k_heldout": "math",
    "piqa": "general", "winogrande": "general", "boolq": "general", "openbookqa": "general",
}
# Data config name -> the target domain it trains.
DATA_DOMAIN = {"math": "math", "math-mini": "math", "tiny": "math", "medical": "medical", "agent": "agent"}
# Metrics that are not "higher is better, in points": kept in the tables, left out of averages and selection.
NOT_AVERAGED = re.compile(r"nll|loss|kl|perplexity|ppl", re.IGNORECASE)


def config_names(group: str, configs_dir: Path = REPO / "configs") -> list[str]:
    """The `name:` of every config in a group, longest first (so 'qwen3-4b-thinking' wins over 'qwen3-4b')."""
    names = []
    for p in (configs_dir / group).glob("*.yaml"):
        m = re.search(r"^name:\s*(\S+)", p.read_text(), re.MULTILINE)
        names.append(m.group(1) if m else p.stem)
    return sorted(names, key=len, reverse=True)


def _norm(path: str) -> str:
    return str(path).removeprefix("./").rstrip("/")


def model_config_by_path(configs_dir: Path = REPO / "configs") -> dict[str, str]:
    """{name_or_path as written in configs/model/*.yaml: the config's name}."""
    out = {}
    for p in (configs_dir / "model").glob("*.yaml"):
        text = p.read_text()
        name, path = re.search(r"^name:\s*(\S+)", text, re.MULTILINE), re.search(r"^name_or_path:\s*(\S+)", text, re.MULTILINE)
        if name and path:
            out[_norm(path.group(1))] = name.group(1)
    return out


def run_info(run: str, runs_dir: Path | list[Path] = REPO / "runs") -> tuple[Path, dict] | None:
    """(path, content) of run_info.json in the first of `runs_dir` (one folder or several, e.g. runs/ and
    results/demo/runs/) that holds the run, else None."""
    for d in [runs_dir] if isinstance(runs_dir, (str, Path)) else runs_dir:
        info = Path(d) / run / "run_info.json"
        if info.exists():
            return info, json.loads(info.read_text())
    return None


def identify_run(run: str, method: str, runs_dir: Path | list[Path] = REPO / "runs",
                 configs_dir: Path = REPO / "configs") -> dict:
    """{base_model, data, method, seed} of a run name (None where unknown): from its run_info.json
    (`run_info`), else from the name."""
    if method == "base":
        return {"base_model": run, "data": None, "method": "base", "seed": None}
    found = run_info(run, runs_dir)
    if found:
        i = found[1]
        return {"base_model": i["model"], "data": i["data"], "method": i["method"], "seed": i.get("seed")}
    alt = {g: "|".join(map(re.escape, config_names(g, configs_dir))) for g in ("model", "data", "method")}
    m = re.fullmatch(rf"({alt['model']})-({alt['data']})-({alt['method']})(?:-s(\d+))?", run)
    if not m:
        return {"base_model": None, "data": None, "method": method, "seed": None}
    return {"base_model": m.group(1), "data": m.group(2), "method": m.group(3),
            "seed": int(m.group(4)) if m.group(4) else None}


def run_failed(result: dict, runs_dir: Path | list[Path] = REPO / "runs") -> str | None:
    """Why the run a result comes from failed (its run_info.json, by evaluation.schema.run_failure), or None."""
    found = None if result["method"] == "base" else run_info(result["run"], runs_dir)
    why = found and run_failure(found[1])
    return f"run {result['run']} failed ({found[0]}: {why})" if why else None


def load_metrics(metrics_dir: str | Path = REPO / "results/metrics",
                 runs_dir: Path | list[Path] = REPO / "runs") -> pd.DataFrame:
    """One row per result file, with the run's identity and the benchmark's domain. Empty frame if none.
    Raises SchemaError listing every file that does not validate or comes from a failed run."""
    metrics_dir = Path(metrics_dir)
    rows, refused = [], []
    # <run>/<benchmark>.json (final model) and <run>/checkpoint-N/<benchmark>.json (evaluation.evaluate's layout
    # for an intermediate checkpoint: Fig. 2a and best-checkpoint selection need them)
    for path in sorted([*metrics_dir.glob("*/*.json"), *metrics_dir.glob("*/checkpoint-*/*.json")]):
        try:
            r = read_result(path)
        except SchemaError as e:
            refused.append(str(e))
            continue
        failed = run_failed(r, runs_dir)
        if failed:
            refused.append(f"{path}: {failed}; delete {metrics_dir / path.relative_to(metrics_dir).parts[0]}")
            continue
        ident = identify_run(r["run"], r["method"], runs_dir)
        if r["method"] == "base" and ident["base_model"] not in config_names("model"):
            # a base model evaluated under another run name (the demo's demo-quick-base): its config by path
            ident["base_model"] = model_config_by_path().get(_norm(r["model"]), ident["base_model"])
        data = ident["data"]
        rows.append({
            "run": r["run"], "benchmark": r["benchmark"], "metric": r["metric"], "value": float(r["value"]),
            "stderr": r["stderr"], "n": r["n"], "step": r.get("step"), "method": ident["method"] or r["method"],
            "base_model": ident["base_model"], "data": data, "seed": ident["seed"],
            "target_domain": r.get("domain") or DATA_DOMAIN.get(data or ""),
            "bench_domain": BENCHMARK_DOMAIN.get(r["benchmark"], "other"), "file": str(path),
        })
    if refused:
        raise SchemaError(f"{len(refused)} result file(s) refused, so none was read:\n  - "
                          + "\n  - ".join(refused))
    cols = ["run", "benchmark", "metric", "value", "stderr", "n", "step", "method", "base_model", "data", "seed",
            "target_domain", "bench_domain", "file"]
    df = pd.DataFrame(rows, columns=cols)
    df["step"] = df["step"].astype("Int64")
    return df


def averaged(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose metric is a higher-is-better score in points (see NOT_AVERAGED)."""
    return df[~df["metric"].str.contains(NOT_AVERAGED)]


def select_checkpoints(df: pd.DataFrame, how: str = "best") -> pd.DataFrame:
    """One step per run. how="final": the last step (or the step-less final result); how="best": the step with
    the best mean over all evaluated benchmarks, among steps that have the run's full set of benchmarks."""
    if how not in ("best", "final"):
        raise ValueError(f"select must be 'best' or 'final', got {how!r}")
    if df.empty:
        return df.assign(selection=pd.Series(dtype=str))
    # A result without a step is the final model: order it after every numbered step.
    order = df["step"].astype("float").fillna(float("inf"))
    keep = []
    for run, g in df.assign(_order=order).groupby("run", sort=False):
        if how == "final":
            keep.append(g[g["_order"] == g["_order"].max()])
            continue
        scores = averaged(g).groupby("_order")["value"].agg(["mean", "count"])
        full = scores[scores["count"] == scores["count"].max()] if not scores.empty else scores
        best = full["mean"].idxmax() if not full.empty else g["_order"].max()
        keep.append(g[g["_order"] == best])
    label = {"best": "best mean over all evaluated benchmarks (the paper's selection, made on the test sets)",
             "final": "final checkpoint"}[how]
    return pd.concat(keep).drop(columns="_order").assign(selection=label)


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each (base model, target domain, method, benchmark); n_seeds says how many."""
    keys = ["base_model", "target_domain", "method", "benchmark", "bench_domain", "metric"]
    base = df["method"] == "base"
    # A base model belongs to no target domain: it is the row every domain's table compares against.
    d = df.assign(target_domain=df["target_domain"].where(~base, "*"))
    return (d.groupby(keys, dropna=False)
             .agg(value=("value", "mean"), n_seeds=("run", "nunique"), runs=("run", lambda r: ",".join(sorted(set(r)))))
             .reset_index())


def domain_means(df: pd.DataFrame) -> pd.DataFrame:
    """Per (base model, target domain, method): target mean (benchmarks of the run's domain) and general mean.
    `df` is `seed_means` output; base rows (target_domain '*') are expanded to every domain present."""
    scored = averaged(df)
    domains = sorted(d for d in scored["target_domain"].dropna().unique() if d != "*")
    parts = [scored[scored["target_domain"] != "*"]]
    for dom in domains:
        parts.append(scored[scored["target_domain"] == "*"].assign(target_domain=dom))
    d = pd.concat(parts)
    rows = []
    for (model, dom, method), g in d.groupby(["base_model", "target_domain", "method"], dropna=False):
        tgt, gen = g[g["bench_domain"] == dom], g[g["bench_domain"] == "general"]
        rows.append({"base_model": model, "target_domain": dom, "method": method,
                     "target": tgt["value"].mean() if len(tgt) else float("nan"),
                     "general": gen["value"].mean() if len(gen) else float("nan"),
                     "target_benchmarks": ",".join(sorted(tgt["benchmark"])),
                     "general_benchmarks": ",".join(sorted(gen["benchmark"]))})
    return pd.DataFrame(rows, columns=["base_model", "target_domain", "method", "target", "general",
                                       "target_benchmarks", "general_benchmarks"])


if __name__ == "__main__":
    df = load_metrics(sys.argv[1] if len(sys.argv) > 1 else REPO / "results/metrics")
    if df.empty:
        sys.exit("no results under results/metrics: run `make eval RUN=<run>` first")
    print(df.groupby(["run", "step"], dropna=False)["benchmark"].apply(",".join).to_string())
