"""Run one lm-eval benchmark (MMLU, IFEval, CLUEWSC, MedMCQA, MedQA, PubMedQA, the mini suite) for evaluate.py.

    python -m evaluation.evaluate model=smollm2-135m benchmarks=[arc_easy,boolq] limit=50   # the usual way in

Main-process side: checks local data (every row has the fields the task reads; errors name file:line:key),
writes the task YAMLs (evaluation/harness.py), then runs lm-eval with the HF model in-process, or hands a JSON
spec to `python -m evaluation.harness` under the vLLM interpreter for backend=vllm. Per-document outputs go to
results/metrics/<run>/items/<benchmark>.jsonl; lm-eval's response cache sits next to it for resume.

Thinking models (`thinking: true` in the model config) on generated tasks (IFEval): the generation budget is the
model's (`max_new_tokens` in its config, not lm-eval's 1,280), and the task is wrapped with an lm-eval `custom`
filter (evaluation.grading.final_answers) so the checker sees only the text after the last </think>, and an
output that never closes its reasoning as empty (IFEval fails every instruction of an empty response). lm-eval's
own `think_end_token` is not used: it keeps the whole output when the tag is missing, scoring the reasoning.
The raw outputs stay in the items file (`raw_response`); metrics.unterminated_reasoning(_n) counts them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from common.files import REPO, atomic_write_jsonl, repo_path
from common.generation import (
    default_vllm_python,
    generation_budget,
    is_thinking,
    run_vllm_subprocess,
)
from evaluation.grading import final_answer
from evaluation.harness import OWN_TASKS, run, select_subset, summarize, task_yaml, write_local_tasks
from evaluation.items import fingerprint
from evaluation.sources import DataFormatError, choose_source, data_note, read_rows, refuse_variant

NLTK_DATA = REPO / "data" / "eval" / "nltk_data"


def _check_rows(path: Path, rows: list[dict], required: list[str]) -> None:
    for i, r in enumerate(rows, 1):
        missing = [k for k in required if k not in r]
        if missing:
            raise DataFormatError(f"{path}:{i}: missing field {missing[0]!r} (this task reads {required}); "
                                  f"keys present: {sorted(r)}")


def _normalise(path: Path, workdir: Path, required: list[str]) -> tuple[Path, int, list[dict]]:
    """Validate a local file; return (file lm-eval should read, row count, rows). Formats lm-eval's json
    loader cannot read directly (a dict keyed by id, as PubMedQA ships; parquet) are rewritten as JSONL."""
    if path.suffix == ".arrow":
        import pyarrow as pa

        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_stream(src).read_all()
        rows = table.slice(0, 5).to_pylist()
        _check_rows(path, rows, required)
        return path, table.num_rows, rows
    text = path.read_text() if path.exists() and path.suffix == ".json" else ""
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None  # JSON lines (CLUE's .json files are)
        if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
            rows = [dict(v, id=k) for k, v in obj.items()]
            _check_rows(path, rows, required)
            out = atomic_write_jsonl(workdir / "data" / (path.stem + ".jsonl"), rows)
            return out, len(rows), rows
    rows = read_rows(path)
    _check_rows(path, rows, required)
    if path.suffix == ".parquet":
        out = workdir / "data" / (path.stem + ".jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        return out, len(rows), rows
    return path, len(rows), rows


def prepare(bench: dict, workdir: Path, limit: int | None, seed: int, num_fewshot: int = 0) -> dict:
    """Everything harness.run needs except the model: task names, include paths, subset, data source."""
    if choose_source(bench) == "hub":
        return {"task": bench["task"], "leaves": [bench["task"]], "include_paths": [str(OWN_TASKS)],
                "include_defaults": True, "limit": limit, "subset_seed": seed,
                "subset": f"seeded random (seed {seed})" if limit else "all",
                "data_source": f"{bench['hub']['path']}" + (f"/{bench['hub']['name']}" if bench["hub"].get("name") else "")
                + f" (lm-eval task {bench['task']})", "variant": bench.get("hub_variant"), "note": data_note(bench)}
    loc, required = bench["local"], list(bench.get("required_fields") or [])
    test_split = loc["test_split"]
    if "subtask_yaml" in loc:
        root = repo_path(loc["data_dir"])
        subs = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not subs:
            raise DataFormatError(f"{root}: no subject folders (expected <subject>/{loc['data_files'][test_split]})")
        raw = {s: {split: root / s / f for split, f in loc["data_files"].items()} for s in subs}
        source = str(root)
    else:
        raw = {"": {split: repo_path(f) for split, f in loc["data_files"].items()}}
        source = ",".join(str(p) for p in raw[""].values())
    files, sizes, first_rows = {}, {}, []
    for sub, split_files in raw.items():
        files[sub] = {}
        for split, p in split_files.items():
            files[sub][split], n, rows = _normalise(p, workdir, required)
            if split == loc.get("fewshot_split") and n < num_fewshot:
                raise DataFormatError(f"{p}: {n} few-shot examples for num_fewshot={num_fewshot}; add rows or set "
                                      f"bench.{bench['name']}.num_fewshot")
            if split == test_split:
                sizes[sub], first_rows = n, first_rows or rows
    refuse_variant(bench, sum(sizes.values()), source)
    top, leaves = write_local_tasks(bench, files, workdir)
    samples = {leaf: select_subset(sizes[sub], limit, seed) for leaf, sub in zip(leaves, files)} if limit else None
    variant, n_opt = None, None
    if (bench.get("reference_variant") or {}).get("n_options") and first_rows:
        r = first_rows[0]
        n_opt = len(r.get("choices") or r.get("options") or [k for k in r if k.startswith("ending")])
        variant = f"{n_opt} options"
    return {"note": data_note(bench, sum(sizes.values()), n_opt), "task": top, "leaves": leaves, "include_paths": [str(workdir), str(OWN_TASKS)],
            "include_defaults": False, "samples": samples, "subset": f"seeded random (seed {seed})" if limit else "all",
            "data_source": source, "variant": variant, "split": test_split}


def _hf_lm(ctx):
    from lm_eval.models.huggingface import HFLM

    model, tok = ctx.pair()
    return HFLM(pretrained=model, tokenizer=tok, batch_size=ctx.batch_size, **template_args(ctx.chat_template_kwargs))


def template_args(chat_template_kwargs: dict) -> dict:
    """The eval-wide chat_template_kwargs as lm-eval's model arguments, so generated lm-eval tasks (IFEval) see the
    same chat template as our generative benchmarks. enable_thinking goes as lm-eval's own argument: its vLLM
    model drops it from chat_template_args."""
    kw = dict(chat_template_kwargs or {})
    if kw.get("enable_thinking"):
        raise ValueError("chat_template_kwargs.enable_thinking=true: thinking is the Qwen3 templates' default, so "
                         "leave it out, and say `thinking: true` (with max_new_tokens) in the model's config")
    out = {"enable_thinking": kw.pop("enable_thinking")} if "enable_thinking" in kw else {}
    return {"chat_template_args": kw or None, **out}


def _vllm_args(ctx) -> dict:
    from common.models import resolve

    cfg = ctx.model_cfg
    if cfg.get("from_config"):
        raise ValueError("backend=vllm needs weights on disk or a Hub id; a from_config model only runs with backend=hf")
    args = {"pretrained": resolve(cfg["name_or_path"]), "tokenizer": resolve(cfg.get("tokenizer") or cfg["name_or_path"]),
            "dtype": cfg.get("dtype") or "auto", "tensor_parallel_size": ctx.vllm.get("tensor_parallel_size", 1),
            "max_model_len": ctx.vllm.get("max_model_len"), "seed": ctx.seed, "batch_size": "auto",
            "gpu_memory_utilization": ctx.vllm.get("gpu_memory_utilization", 0.9), "enforce_eager": True,
            **template_args(ctx.chat_template_kwargs)}
    return args


def run_lm_eval(bench: dict, ctx) -> dict:
    name = bench["name"]
    if name == "ifeval":
        _need_punkt()
    num_fewshot = bench.get("num_fewshot", 0)
    generative = bench.get("output_type") == "generate_until"  # IFEval; the rest score options by log-likelihood
    max_new = generation_budget(ctx.model_cfg, bench.get("max_new_tokens"), ctx.overrides.get("max_new_tokens"),
                                name) if generative else None
    thinking = generative and is_thinking(ctx.model_cfg)
    fp = fingerprint({"model": ctx.model_fp(), "backend": ctx.backend, "bench": {k: v for k, v in bench.items()
                                                                                  if k not in ("source",)}})
    ctx.items_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"eaft-{name}-") as tmp:
        prep = prepare(bench, Path(tmp), ctx.limit, ctx.subset_seed, num_fewshot)
        if thinking:
            prep = final_answer_task(prep, bench, Path(tmp))
        spec = {**prep, "num_fewshot": num_fewshot, "apply_chat_template": bench.get("apply_chat_template", False),
                "fewshot_as_multiturn": bench.get("fewshot_as_multiturn", False), "seed": ctx.seed,
                "gen_kwargs": {"max_gen_toks": int(max_new)} if max_new else None,
                "use_cache": str(ctx.items_dir / f"{name}.{fp}.lmcache") if ctx.resume else None,
                "keep_raw_responses": thinking}
        if ctx.backend == "hf":
            res = run(_hf_lm(ctx), spec)
        else:
            res = _run_vllm(spec | {"vllm_args": _vllm_args(ctx)}, Path(tmp), ctx)
    summary = summarize(res, prep["task"], prep["leaves"], bench["metric"])
    rows = [r for leaf in prep["leaves"] for r in res["samples"].get(leaf, [])]
    items = ctx.items_dir / f"{name}.jsonl"
    atomic_write_jsonl(items, rows)
    settings = {"task": bench["task"] if prep["include_defaults"] else f"{bench['task']} (local data)",
                "num_fewshot": num_fewshot, "apply_chat_template": spec["apply_chat_template"],
                "backend": ctx.backend, "limit": ctx.limit, "subset": prep["subset"], "split": prep.get("split"),
                "scoring": "greedy generation" if generative else "log-likelihood",
                "max_new_tokens": max_new, "chat_template_kwargs": ctx.chat_template_kwargs,
                "lm_eval_versions": res.get("versions", {}).get(prep["leaves"][0])}
    if generative:
        settings["thinking"] = thinking
        settings["answer"] = "text after the last </think>; empty if unterminated" if thinking else "whole output"
    if thinking:
        raw = [x for r in rows for x in _flat(r["raw_response"])]
        n_open = sum(final_answer(x, thinking=True) is None for x in raw)
        summary["metrics"]["unterminated_reasoning"] = 100 * n_open / max(len(raw), 1)
        summary["metrics"]["unterminated_reasoning_n"] = n_open
    if prep.get("variant"):
        settings["variant"] = prep["variant"]
        if prep["variant"].endswith(" options"):
            summary["metrics"]["n_options"] = int(prep["variant"].split()[0])
    if prep.get("note"):
        settings["data_note"] = prep["note"]
    return {"metric": bench["metric"], "value": summary["value"], "stderr": summary["stderr"], "n": summary["n"],
            "n_runs": 1, "settings": settings, "data_source": prep["data_source"], "metrics": summary["metrics"]}


FILTER_FN = "evaluation.grading.final_answers"


def final_answer_task(prep: dict, bench: dict, workdir: Path) -> dict:
    """Wrap the (single) task of `prep` in a task that scores each response's final answer (module docstring)."""
    if len(prep["leaves"]) != 1:
        raise ValueError(f"bench.{bench['name']}: final-answer filtering handles single tasks, not groups")
    leaf = prep["leaves"][0]
    include = workdir / f"{leaf}.yaml" if not prep["include_defaults"] else task_yaml(bench["yaml"])
    name = f"eaft_{bench['name']}_final_answer"
    cfg = {"task": name, "include": str(include), "tag": [],
           "filter_list": [{"name": "final_answer", "filter": [{"function": "custom", "filter_fn": "@FN@"},
                                                               {"function": "take_first"}]}]}
    # JSON is YAML; the one YAML-only part is the tag that makes lm-eval import the filter function
    (workdir / f"{name}.yaml").write_text(json.dumps(cfg, indent=2).replace('"@FN@"', f"!function {FILTER_FN}"))
    return {**prep, "task": name, "leaves": [name], "include_paths": list(dict.fromkeys([str(workdir), *prep["include_paths"]]))}


def _flat(x) -> list[str]:
    return [s for y in x for s in _flat(y)] if isinstance(x, list) else [x]


def _run_vllm(spec: dict, tmp: Path, ctx) -> dict:
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if NLTK_DATA.exists():
        env.setdefault("NLTK_DATA", str(NLTK_DATA))
    cmd = [ctx.vllm.get("python") or default_vllm_python(), "-m", "evaluation.harness", "--spec",
           str(tmp / "spec.json"), "--out", str(tmp / "out.json")]
    run_vllm_subprocess(cmd, env, tmp / "out.json")
    return json.loads((tmp / "out.json").read_text())


def _need_punkt() -> None:
    """lm-eval's IFEval checker needs NLTK's punkt_tab and would otherwise try to download it."""
    if NLTK_DATA.exists():
        os.environ.setdefault("NLTK_DATA", str(NLTK_DATA))
    import nltk

    if str(NLTK_DATA) not in nltk.data.path and NLTK_DATA.exists():
        nltk.data.path.insert(0, str(NLTK_DATA))
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise FileNotFoundError("IFEval's checker needs NLTK's punkt_tab tables: run `make eval-data` (writes "
                                f"{NLTK_DATA}) or set NLTK_DATA to a folder holding tokenizers/punkt_tab") from None
