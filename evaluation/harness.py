"""lm-eval benchmarks: task YAMLs for local data, one call of lm_eval.simple_evaluate, results in our terms.

    python -m evaluation.evaluate model=smollm2-135m benchmarks=[arc_easy] limit=50   # the usual way in
    .venv-vllm/bin/python -m evaluation.harness --spec spec.json --out out.json       # backend=vllm worker

Hub data: the built-in task by name (lm-eval downloads it). Local data: for each task we write a YAML into a
per-run folder that `include:`s the built-in (or evaluation/tasks/) YAML by absolute path and overrides only
dataset_path / data_files / splits, so prompts, choices and metrics stay lm-eval's. MMLU becomes one task per
subject folder plus a group that weights subjects by size, as lm-eval's own `mmlu` group does.

`limit` picks a seeded random subset of documents per task (lm-eval's `samples=`), the same every time, so the
same items are compared across models. Local data: the sizes are known when the task files are written
(lm_eval_bench.prepare). Hub data: once lm-eval has loaded the task (`hub_samples`); a limit at or above a task's
size keeps all of it.
Resume: lm-eval's response cache (`use_cache`, an sqlite file next to the items file) keeps every finished
request, so a rerun only computes the missing ones. Stderr is ours: sample std / sqrt(n) over the per-document
values of the headline metric (lm-eval's bootstrap is switched off for speed).

This module imports only the standard library, lm-eval and common.files (standard library only), so the vLLM
worker can run it inside .venv-vllm.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from common.files import atomic_write_text

OWN_TASKS = Path(__file__).resolve().parent / "tasks"


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks"


def task_yaml(rel: str) -> Path:
    """A task YAML by relative path: this repository's evaluation/tasks/ first, then lm-eval's tasks/."""
    for base in (OWN_TASKS, lm_eval_tasks_dir()):
        if (base / rel).exists():
            return base / rel
    raise FileNotFoundError(f"task YAML {rel!r} not found in {OWN_TASKS} or {lm_eval_tasks_dir()}")


def _yaml_dump(obj: dict) -> str:
    # JSON is valid YAML, and lm-eval's loader reads it; no PyYAML needed in the vLLM venv.
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _task_file(name: str, include: Path, files: dict[str, Path], test_split: str, fewshot_split: str | None) -> dict:
    fmt = "arrow" if all(str(f).endswith(".arrow") for f in files.values()) else "json"
    return {"task": name, "include": str(include), "tag": [], "dataset_path": fmt, "dataset_name": None,
            "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}},
            "training_split": None, "validation_split": None, "test_split": test_split,
            "fewshot_split": fewshot_split}


def write_local_tasks(bench: dict, files_by_task: dict[str, dict[str, Path]], workdir: Path) -> tuple[str, list[str]]:
    """Write YAMLs for local data into `workdir`. files_by_task: {subtask or "": {split: file}}.
    Returns (top-level task name, leaf task names)."""
    workdir.mkdir(parents=True, exist_ok=True)
    loc, name = bench["local"], f"eaft_{bench['name']}"
    if "subtask_yaml" in loc:  # one task per subject folder + a size-weighted group (MMLU)
        leaves = []
        for sub, files in sorted(files_by_task.items()):
            leaf = f"{name}_{sub}"
            cfg = _task_file(leaf, task_yaml(loc["subtask_yaml"].format(subtask=sub)), files, loc["test_split"],
                             loc.get("fewshot_split"))
            (workdir / f"{leaf}.yaml").write_text(_yaml_dump(cfg))
            leaves.append(leaf)
        group = {"group": name, "task": leaves, "metadata": {"version": 1},
                 "aggregate_metric_list": [{"metric": bench["metric"], "weight_by_size": True}]}
        (workdir / f"{name}.yaml").write_text(_yaml_dump(group))
        return name, leaves
    cfg = _task_file(name, task_yaml(bench["yaml"]), files_by_task[""], loc["test_split"], loc.get("fewshot_split"))
    (workdir / f"{name}.yaml").write_text(_yaml_dump(cfg))
    return name, [name]


def select_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """Sorted indices of a seeded random subset of size `limit` (everything when limit is None or >= n).
    The first `limit` of one fixed permutation: a larger limit keeps every item of a smaller one, so raising
    the limit later reuses all finished items."""
    if limit is None or limit >= n:
        return list(range(n))
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    return sorted(perm[:limit])


def hub_samples(task_dict: dict, limit: int, seed: int) -> dict[str, list[int]]:
    """{task name: select_subset(its size, limit, seed)} for every task of lm-eval's loaded task dict (groups
    are nested dicts), the seeded sample local data gets, where lm-eval's `limit` would take the first N."""
    out = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(hub_samples(value, limit, seed))
        else:
            out[getattr(value, "task_name", None) or str(key)] = select_subset(len(value.eval_docs), limit, seed)
    return out


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def run(lm, spec: dict) -> dict:
    """One simple_evaluate call described by a JSON-able spec; returns results, counts and per-doc rows."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=spec["include_paths"], include_defaults=spec["include_defaults"])
    kwargs = {}
    if spec.get("samples"):
        kwargs["samples"] = spec["samples"]
    elif spec.get("limit"):  # Hub data: the sizes are known once lm-eval has loaded the task
        kwargs["samples"] = hub_samples(get_task_dict([spec["task"]], tm), spec["limit"], spec["subset_seed"])
    out = simple_evaluate(
        model=lm, tasks=[spec["task"]], task_manager=tm, num_fewshot=spec.get("num_fewshot"),
        log_samples=True, bootstrap_iters=0, use_cache=spec.get("use_cache"),
        apply_chat_template=spec.get("apply_chat_template", False),
        fewshot_as_multiturn=spec.get("fewshot_as_multiturn", False) and spec.get("apply_chat_template", False),
        gen_kwargs=spec.get("gen_kwargs") or None, random_seed=spec.get("seed", 0),
        numpy_random_seed=spec.get("seed", 0), torch_random_seed=spec.get("seed", 0),
        fewshot_random_seed=spec.get("seed", 0), **kwargs)
    metric_keys = {m for rows in out["samples"].values() for r in rows[:1] for m in r.get("metrics", [])}
    samples = {}
    for task, rows in out["samples"].items():
        samples[task] = [{"task": task, "doc_id": r["doc_id"], "target": r.get("target"),
                          "response": r.get("filtered_resps"), "doc": r.get("doc"),
                          **({"raw_response": r.get("resps")} if spec.get("keep_raw_responses") else {}),
                          **{m: r[m] for m in metric_keys if m in r}} for r in rows]
    return _jsonable({"results": out["results"], "n_samples": out.get("n-samples", {}), "samples": samples,
                      "versions": out.get("versions", {}), "lm_eval_config": out.get("config", {})})


def summarize(res: dict, top: str, leaves: list[str], metric: str) -> dict:
    """value (0-100), stderr, n and every metric of the top-level task from `run`'s output."""
    top_res = res["results"].get(top) or res["results"][leaves[0]]
    metrics = {}
    for key, v in top_res.items():  # "acc,none": 0.61 -> "acc": 61.0 (every lm-eval metric we use is a rate)
        if "," in key and "_stderr" not in key and isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[key.split(",")[0]] = 100 * v
    if metric not in metrics:
        raise KeyError(f"lm-eval reported no {metric!r} for {top} (it reported {sorted(metrics)}); fix bench.*.metric")
    per_doc = [float(r[metric]) for leaf in leaves for r in res["samples"].get(leaf, []) if metric in r]
    n = len([r for leaf in leaves for r in res["samples"].get(leaf, [])])
    stderr = None
    if len(per_doc) >= 2:
        mu = sum(per_doc) / len(per_doc)
        stderr = 100 * math.sqrt(sum((x - mu) ** 2 for x in per_doc) / (len(per_doc) - 1) / len(per_doc))
    return {"value": metrics[metric], "stderr": stderr, "n": n, "metrics": metrics}


def make_vllm_lm(args: dict):
    from lm_eval.api.registry import get_model

    return get_model("vllm")(**args)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="run one lm-eval spec with lm-eval's vllm model (backend=vllm)")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    spec = json.loads(Path(a.spec).read_text())
    res = run(make_vllm_lm(spec["vllm_args"]), spec)
    atomic_write_text(a.out, json.dumps(res))


if __name__ == "__main__":  # vLLM spawns an engine process: the guard keeps it from re-running main
    from common.vllm_worker import exit_skipping_teardown

    main()
    exit_skipping_teardown()
