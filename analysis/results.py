"""Read results/metrics into one table, tell which model/data/method each run is, pick checkpoints, average.

    python -m analysis.results [results/metrics]      # prints what is there, one line per run and step

Every result file is `evaluation.schema`'s `results/metrics/<run>/<benchmark>.json`. A run is identified by the
files training writes, never by its name: its run_info.json (model, data, method, seed, profile) and the composed
config.yaml beside it (data.domain), found under any of the runs folders (runs/, and results/demo/, which keeps
the demo's logs). A result with method "base" is an untrained model: its run_info.json when one exists (the demo
writes one per profile), else the configs/model/ config named by the run or by the model path, in no profile.
Benchmarks and data configs declare their domain (`domain:` in configs/benchmark/*.yaml, configs/data/*.yaml);
the domain average is the unweighted mean of the domain's benchmarks, as in the paper.

Profiles (`profile` in run_info.json: a demo profile such as quick / quick3 / full, or `paper` for the named
experiments of configs/experiment/) are never pooled: they are a grouping key of every mean. A run_info.json
written before training recorded `profile` has none (NaN): such runs form their own group. A base model without
run_info.json is the reference of every profile of that model (`seed_means`).

Refused (`load_metrics` raises one error listing them all): result files that do not validate (a missing key,
a NaN or infinite score), results of a benchmark with no declared domain, results of a trained run without a
run_info.json, and results of a run whose run_info.json says it failed (stopped on divergence): such a model
scores finite accuracies, which would otherwise be averaged with its healthy seeds.

Checkpoint selection (`select_checkpoints`): "final" keeps each run's last evaluated step; "best" keeps the step
with the best mean over all evaluated benchmarks, the paper's protocol (docs/paper.md, "Published settings"), which
selects on the test sets. The step each run kept is its `checkpoint` ("step N (best of M evaluated)"), carried by
`seed_means` into every table row (`checkpoints`). The steps come from the checkpoint sweep (evaluation/sweep.py,
what slurm/submit.py queues): results/metrics/<run>/checkpoint-N/ and the final model's results/metrics/<run>/.
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from common.files import REPO, repo_path  # noqa: F401 - analysis.tables imports repo_path from here
from evaluation.schema import SchemaError, read_result, run_failure

# What a configs/benchmark/*.yaml may declare as its `domain:`; "target" is the run's own training domain (the
# held-out NLL of its data), "general" the forgetting side.
DOMAINS = ("math", "medical", "agent", "general", "target")
# Metrics that are not "higher is better, in points": kept in the tables, left out of averages and selection.
NOT_AVERAGED = re.compile(r"nll|loss|kl|perplexity|ppl", re.IGNORECASE)
RUNS_DIRS = [REPO / "runs", REPO / "results/demo"]


def declared_domain(path: Path) -> str:
    """The `domain:` a benchmark or data config declares; an error naming the file when it is missing or unknown."""
    if not Path(path).exists():
        raise SchemaError(f"no {path} to declare the domain")
    domain = OmegaConf.load(path).get("domain")
    if domain not in DOMAINS:
        raise SchemaError(f"{path}: domain {domain!r} is not one of {DOMAINS}; declare it (`domain: <one of them>`)")
    return domain


@cache
def benchmark_domains(configs_dir: Path = REPO / "configs") -> dict[str, str]:
    """{benchmark config name: its declared domain} for every configs/benchmark/*.yaml."""
    return {p.stem: declared_domain(p) for p in sorted((configs_dir / "benchmark").glob("*.yaml"))}


def model_config_by_path(configs_dir: Path = REPO / "configs") -> dict[str, str]:
    """{name_or_path as written in configs/model/*.yaml: the config's name}."""
    out = {}
    for p in sorted((configs_dir / "model").glob("*.yaml")):
        c = OmegaConf.load(p)
        out[_norm(c.get("name_or_path", ""))] = c.get("name", p.stem)
    return out


def _norm(path: str) -> str:
    return str(path).removeprefix("./").rstrip("/")


def find_runs(runs_dirs: Path | str | list) -> dict[str, Path]:
    """{run name: its folder} for every folder holding a run_info.json under the given roots (missing roots are
    skipped; the first root wins). A run found twice with identical run_info.json is one run (the demo trains in
    runs/ and keeps a copy of the log under results/demo/); with different ones it is an error, since which one
    a result belongs to would be a guess."""
    found: dict[str, Path] = {}
    for root in [runs_dirs] if isinstance(runs_dirs, (str, Path)) else runs_dirs:
        for info in sorted(Path(root).rglob("run_info.json")):
            run = info.parent.name
            if run not in found:
                found[run] = info.parent
            elif (found[run] / "run_info.json").read_bytes() != info.read_bytes():
                raise SchemaError(f"run {run} has two different run_info.json: {found[run]} and {info.parent}; "
                                  "delete the stale one")
    return found


def run_info(run: str, runs_dir: Path | list[Path] = RUNS_DIRS) -> tuple[Path, dict] | None:
    """(path, content) of the run's run_info.json under `runs_dir` (one folder or several), else None."""
    folder = find_runs(runs_dir).get(run)
    return (folder / "run_info.json", json.loads((folder / "run_info.json").read_text())) if folder else None


def identify(run_dir: Path) -> dict:
    """{base_model, data, method, seed, profile, target_domain} of a run folder, from its run_info.json and its
    config.yaml (data.domain); a config.yaml composed before data configs declared their domain (or none, for
    a base model) falls back to configs/data/<data>.yaml's declaration. Missing keys are an error naming the file."""
    path = run_dir / "run_info.json"
    info = json.loads(path.read_text())
    missing = [k for k in ("model", "method", "data") if k not in info]
    if missing:
        raise SchemaError(f"{path}: no {', '.join(missing)}: analysis identifies a run by its run_info.json")
    domain = None
    if info["data"] is not None:
        config = run_dir / "config.yaml"
        domain = OmegaConf.load(config).get("data", {}).get("domain") if config.exists() else None
        domain = domain or declared_domain(REPO / "configs" / "data" / f"{info['data']}.yaml")
    return {"base_model": info["model"], "data": info["data"], "method": info["method"], "seed": info.get("seed"),
            "profile": info.get("profile"), "target_domain": domain}


def identify_base(result: dict) -> dict:
    """A base model's result without a run folder: the model config named by the run, or else by the path."""
    by_path = model_config_by_path()
    model = result["run"] if result["run"] in by_path.values() else by_path.get(_norm(result["model"]))
    if model is None:
        raise SchemaError(f"base result of run {result['run']}: neither the run nor the model path "
                          f"{result['model']!r} is a configs/model/ config")
    return {"base_model": model, "data": None, "method": "base", "seed": None, "profile": None,
            "target_domain": None}


def run_failed(result: dict, run_dir: Path | None) -> str | None:
    """Why the run a result comes from failed (its run_info.json, by evaluation.schema.run_failure), or None."""
    info = run_dir / "run_info.json" if run_dir else None
    why = info and run_failure(json.loads(info.read_text()))
    return f"run {result['run']} failed ({info}: {why})" if why else None


def load_metrics(metrics_dir: str | Path = REPO / "results/metrics",
                 runs_dir: Path | str | list = RUNS_DIRS) -> pd.DataFrame:
    """One row per result file, with the run's identity (`identify`), profile and the benchmark's declared domain.
    Empty frame if none. Raises SchemaError listing every file refused (see the module docstring)."""
    metrics_dir = Path(metrics_dir)
    runs = find_runs(runs_dir)
    rows, refused = [], []
    # <run>/<benchmark>.json (final model) and <run>/checkpoint-N/<benchmark>.json (evaluation.evaluate's layout
    # for an intermediate checkpoint: Fig. 2a and best-checkpoint selection need them)
    for path in sorted([*metrics_dir.glob("*/*.json"), *metrics_dir.glob("*/checkpoint-*/*.json")]):
        try:
            r = read_result(path)
            failed = run_failed(r, runs.get(r["run"]))
            if failed:
                raise SchemaError(f"{path}: {failed}; delete {metrics_dir / path.relative_to(metrics_dir).parts[0]}")
            if r["run"] in runs:
                ident = identify(runs[r["run"]])
            elif r["method"] == "base":
                ident = identify_base(r)
            else:
                raise SchemaError(f"{path}: no run_info.json of run {r['run']} under {runs_dir}: analysis "
                                  "identifies a trained run by the files training wrote (pass runs_dir=...)")
            domains = benchmark_domains()
            if r["benchmark"] not in domains:
                raise SchemaError(f"{path}: benchmark {r['benchmark']!r} has no configs/benchmark/"
                                  f"{r['benchmark']}.yaml to declare its domain")
        except SchemaError as e:
            refused.append(str(e))
            continue
        rows.append({
            "run": r["run"], "benchmark": r["benchmark"], "metric": r["metric"], "value": float(r["value"]),
            "stderr": r["stderr"], "n": r["n"], "step": r.get("step"), **ident,
            "bench_domain": domains[r["benchmark"]], "file": str(path),
        })
    if refused:
        raise SchemaError(f"{len(refused)} result file(s) refused, so none was read:\n  - "
                          + "\n  - ".join(refused))
    cols = ["run", "benchmark", "metric", "value", "stderr", "n", "step", "method", "base_model", "data", "seed",
            "profile", "target_domain", "bench_domain", "file"]
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
        return df.assign(selection=pd.Series(dtype=str), checkpoint=pd.Series(dtype=str))
    # A result without a step is the final model: order it after every numbered step.
    order = df["step"].astype("float").fillna(float("inf"))
    keep = []
    for run, g in df.assign(_order=order).groupby("run", sort=False):
        n = g["_order"].nunique()
        if how == "final":
            chosen = g["_order"].max()
        else:
            scores = averaged(g).groupby("_order")["value"].agg(["mean", "count"])
            full = scores[scores["count"] == scores["count"].max()] if not scores.empty else scores
            chosen = full["mean"].idxmax() if not full.empty else g["_order"].max()
        step = "final" if chosen == float("inf") else f"step {int(chosen)}"
        rank = "best" if how == "best" else "last"
        keep.append(g[g["_order"] == chosen].assign(checkpoint=f"{step} ({rank} of {n} evaluated)"))
    label = {"best": "best mean over all evaluated benchmarks (the paper's selection, made on the test sets)",
             "final": "final checkpoint"}[how]
    return pd.concat(keep).drop(columns="_order").assign(selection=label)


def with_base_in_every_profile(df: pd.DataFrame) -> pd.DataFrame:
    """A base result in no profile (a configs/model/ model evaluated on its own) copied into every profile that
    trained that model, so each profile's rows compare against it; kept as it is where no profile trained it."""
    loose = (df["method"] == "base") & df["profile"].isna()
    parts = [df[~loose]]
    for model, g in df[loose].groupby("base_model"):
        profiles = df.loc[(df["base_model"] == model) & (df["method"] != "base"), "profile"].unique()
        parts += [g.assign(profile=p) for p in profiles] if len(profiles) else [g]
    return pd.concat(parts, ignore_index=True)


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each (base model, profile, target domain, method, benchmark); n_seeds says how many.
    Profiles are never pooled."""
    keys = ["base_model", "profile", "target_domain", "method", "benchmark", "bench_domain", "metric"]
    d = with_base_in_every_profile(df) if len(df) else df
    # A base model belongs to no target domain: it is the row every domain's table compares against.
    d = d.assign(target_domain=d["target_domain"].where(d["method"] != "base", "*"))
    if "checkpoint" not in d:
        d = d.assign(checkpoint=None)
    d = d.assign(_ckpt=[(f"seed {int(s) if float(s).is_integer() else s}: {c}" if pd.notna(s) else c)
                        if isinstance(c, str) else None for s, c in zip(d["seed"], d["checkpoint"])])
    return (d.groupby(keys, dropna=False)
             .agg(value=("value", "mean"), n_seeds=("run", "nunique"), runs=("run", lambda r: ",".join(sorted(set(r)))),
                  checkpoints=("_ckpt", lambda c: "; ".join(sorted({x for x in c if isinstance(x, str)}))))
             .reset_index())


def domain_means(df: pd.DataFrame) -> pd.DataFrame:
    """Per (base model, profile, target domain, method): target mean (benchmarks of the run's domain) and general
    mean. `df` is `seed_means` output; base rows (target_domain '*') are expanded to every domain present."""
    scored = averaged(df)
    domains = sorted(d for d in scored["target_domain"].dropna().unique() if d != "*")
    parts = [scored[scored["target_domain"] != "*"]]
    for dom in domains:
        parts.append(scored[scored["target_domain"] == "*"].assign(target_domain=dom))
    d = pd.concat(parts)
    rows = []
    for (model, profile, dom, method), g in d.groupby(["base_model", "profile", "target_domain", "method"],
                                                      dropna=False):
        tgt, gen = g[g["bench_domain"] == dom], g[g["bench_domain"] == "general"]
        rows.append({"base_model": model, "profile": profile, "target_domain": dom, "method": method,
                     "target": tgt["value"].mean() if len(tgt) else float("nan"),
                     "general": gen["value"].mean() if len(gen) else float("nan"),
                     "target_benchmarks": ",".join(sorted(tgt["benchmark"])),
                     "general_benchmarks": ",".join(sorted(gen["benchmark"]))})
    return pd.DataFrame(rows, columns=["base_model", "profile", "target_domain", "method", "target", "general",
                                       "target_benchmarks", "general_benchmarks"])

if __name__ == "__main__":
    df = load_metrics(sys.argv[1] if len(sys.argv) > 1 else REPO / "results/metrics")
    if df.empty:
        sys.exit("no results under results/metrics: run `make eval RUN=<run>` first")
    print(df.groupby(["run", "step"], dropna=False)["benchmark"].apply(",".join).to_string())
