"""Generate-and-grade benchmarks: math (AIME24, AIME25, GSM8K), BFCL, and multiple choice with mode=generate
(evaluation/mcq.py), with resumable per-item outputs.

    python -m evaluation.evaluate model=tiny benchmarks=[gsm8k] limit=4      # the usual way in

Each item becomes one conversation; common.generation renders it with the chat template and samples n_runs
completions (greedy by default; n_runs > 1 with temperature > 0 gives the mean accuracy and pass@k). Completions
are graded as they arrive and appended to results/metrics/<run>/items/<benchmark>.jsonl, so an interrupted
evaluation redoes only unfinished items (HF: at most one chunk of `chunk_size` items is lost; vLLM generates all
remaining items in one call); reused completions are graded again, so a grading fix applies to them. value = mean
over items of the per-item mean correctness, in %; stderr = sample std of those per-item means / sqrt(n).

Thinking models (`thinking: true` in the model config): generation gets the model's own budget (its
`max_new_tokens`), the answer graded is the text after the last </think> (evaluation.grading.final_answer), and a
completion that never closes its reasoning is wrong; metrics.unterminated_reasoning gives their share (%) and
metrics.unterminated_reasoning_n their number.
"""

from __future__ import annotations

from common.generation import generate, generation_budget, is_thinking
from evaluation import bfcl
from evaluation.grading import final_answer, gold_math_answer, grade_math, mean_stderr, pass_at_k
from evaluation.harness import select_subset
from evaluation.items import ItemStore, fingerprint
from evaluation.sources import DataFormatError, choose_source, data_note, load_items, local_files, pick_field


def math_items(bench: dict) -> tuple[list[dict], str]:
    rows, source = load_items(bench)
    hub = bench.get("hub") or {}
    if hub.get("filter_contains") and source.startswith(hub["path"]):  # e.g. AIME 2024 out of AIME 2022-24
        rows = [r for r in rows if all(v in str(r.get(k, "")) for k, v in hub["filter_contains"].items())]
        source += " where " + ", ".join(f"{k} contains {v!r}" for k, v in hub["filter_contains"].items())
    f, items = bench["fields"], []
    for i, r in enumerate(rows):
        q = pick_field(r, f["question"], r["_where"], "question")
        gold = gold_math_answer(str(pick_field(r, f["answer"], r["_where"], "answer")))
        if not gold:
            raise DataFormatError(f"{r['_where']}: empty answer")
        messages = [{"role": "user", "content": q}]
        if bench.get("prompt"):
            if bench.get("prompt_role", "system") == "system":
                messages.insert(0, {"role": "system", "content": bench["prompt"]})
            else:
                messages[0]["content"] = f"{q}\n{bench['prompt']}"
        rid = next((r[k] for k in f.get("id", []) if r.get(k) is not None), i)
        items.append({"id": str(rid), "messages": messages, "tools": None, "gold": gold, "question": q})
    if len({it["id"] for it in items}) != len(items):
        for i, it in enumerate(items):
            it["id"] = str(i)  # ids must be unique for resume; fall back to the row index
    return items, source


def bfcl_items(bench: dict, mode: str) -> tuple[list[dict], str]:
    if not set(bench["categories"]) & set(bfcl.NON_LIVE_AST + bfcl.LIVE_AST):
        raise ValueError(f"bench.{bench['name']}.categories={list(bench['categories'])} has no AST category; the "
                         f"headline needs some of {bfcl.NON_LIVE_AST + bfcl.LIVE_AST}")
    choose_source(bench)
    data_dir = local_files(bench)[0]
    items = []
    for cat in bench["categories"]:
        for e in bfcl.load_category(data_dir, cat):
            messages, tools = bfcl.build_prompt(e, mode)
            items.append({"id": e["id"], "messages": messages, "tools": tools, "entry": e, "category": cat,
                          "mode": mode})
    return items, str(data_dir)


def bfcl_mode(bench: dict, tokenizer) -> str:
    mode = bench.get("mode", "auto")
    if mode == "auto":
        template = tokenizer.chat_template or ""
        return "fc" if "tools" in template else "prompt"
    return mode


def run_generative(bench: dict, ctx) -> dict:
    kind = bench["kind"]
    if kind == "math":
        items, source = math_items(bench)
        extra = {"prompt": bench.get("prompt"), "prompt_role": bench.get("prompt_role", "system"),
                 "grader": "math-verify: verify(parse(gold), parse(last \\boxed{} answer))"}
    elif kind == "lm_eval" and bench.get("mode") == "generate":
        from evaluation.mcq import INSTRUCTIONS, mcq_items

        g = bench["generate"]
        items, source = mcq_items(bench, thinking=is_thinking(ctx.model_cfg))
        extra = {"prompt": g.get("instruction") or INSTRUCTIONS[(g.get("lang", "en"), is_thinking(ctx.model_cfg))],
                 "prompt_format": "MedEvalKit get_multiple_choice_prompt", "scoring": "generative multiple choice",
                 "grader": "evaluation.grading.extract_choice == gold letter, else exact option text "
                           "(evaluation.mcq.option_text_choice)"}
        n_options = len(items[0]["letters"]) if items else None
        extra["variant"] = f"{n_options} options"
        if data_note(bench, len(items), n_options):
            extra["data_note"] = data_note(bench, len(items), n_options)
    elif kind == "bfcl":
        mode = bfcl_mode(bench, ctx.tokenizer())
        items, source = bfcl_items(bench, mode)
        extra = {"mode": mode, "categories": list(bench["categories"]),
                 "grader": "evaluation.bfcl: BFCL's Qwen decoders and AST checker",
                 "headline": "ast_summary: mean of BFCL's non-live and live AST summaries"}
    else:
        raise ValueError(f"run_generative handles kind math, bfcl and lm_eval with mode=generate, not {kind!r}")
    items = [items[i] for i in select_subset(len(items), ctx.limit, ctx.subset_seed)]

    n_runs = int(ctx.setting(bench, "n_runs", 1))
    temperature = float(ctx.setting(bench, "temperature", 0.0))
    if n_runs > 1 and temperature == 0 and ctx.backend == "hf":
        print(f"[eval] {bench['name']}: n_runs={n_runs} with greedy decoding repeats one completion")
    thinking = is_thinking(ctx.model_cfg)
    budget = generation_budget(ctx.model_cfg, bench.get("max_new_tokens", 1024), ctx.overrides.get("max_new_tokens"),
                               bench["name"])
    sampling = {"max_new_tokens": budget, "temperature": temperature,
                "top_p": float(ctx.setting(bench, "top_p", 1.0)), "n": n_runs, "seed": ctx.seed}
    settings = {**extra, **sampling, "backend": ctx.backend, "chat_template": True,
                "chat_template_kwargs": ctx.chat_template_kwargs, "limit": ctx.limit, "subset_seed": ctx.subset_seed,
                "shots": 0, "thinking": thinking,
                "answer": "text after the last </think>; none if unterminated" if thinking else "whole completion"}
    # limit/subset_seed only choose WHICH items run, thinking/answer only how a completion is graded (reused
    # completions are graded again below), variant/data_note describe the data (in `data` already): not what an
    # item produces, so they stay out of the fingerprint
    fp = fingerprint({"model": ctx.model_fp(), "data": source,
                      "settings": {k: v for k, v in settings.items()
                                   if k not in ("limit", "subset_seed", "thinking", "answer", "variant", "data_note")}})
    store = ItemStore(ctx.items_dir / f"{bench['name']}.jsonl", fp)
    if not ctx.resume:
        store.done.clear()
    for it in items:
        if it["id"] in store.done:
            store.done[it["id"]] = {"id": it["id"], "fp": fp,
                                    **_grade(kind, it, store.done[it["id"]]["completions"], thinking)}
    todo = [it for it in items if it["id"] not in store.done]
    print(f"[eval] {bench['name']}: {len(items)} items, {len(items) - len(todo)} already done")
    chunk = ctx.chunk_size if ctx.backend == "hf" else max(len(todo), 1)
    for start in range(0, len(todo), chunk):
        part = todo[start: start + chunk]
        outs = generate(ctx.generation_model(), [it["messages"] for it in part], backend=ctx.backend,
                        tools=[it["tools"] for it in part], chat_template_kwargs=ctx.chat_template_kwargs,
                        batch_size=ctx.batch_size, progress=ctx.progress, vllm_python=ctx.vllm.get("python"),
                        tensor_parallel_size=ctx.vllm.get("tensor_parallel_size", 1),
                        max_model_len=ctx.vllm.get("max_model_len"), **sampling)
        store.add([_grade(kind, it, completions, thinking) for it, completions in zip(part, outs)])
    rows = store.finalize([it["id"] for it in items])

    per_item = [sum(r["correct"]) / len(r["correct"]) for r in rows]
    value, stderr = mean_stderr(per_item)
    metrics = {"accuracy": 100 * value}
    if kind == "bfcl":  # BFCL's own AST summary; the (ir)relevance categories go beside it, never into it
        agg = bfcl.aggregate([{"category": r["category"], "correct": c} for r, c in zip(rows, per_item)])
        if agg["value"] is None:
            raise ValueError(f"{bench['name']}: no AST item among the {len(rows)} graded (limit={ctx.limit}); "
                             f"raise limit or add AST categories to bench.{bench['name']}.categories")
        value, stderr = agg["value"] / 100, None if agg["stderr"] is None else agg["stderr"] / 100
    for k in bench.get("pass_k") or []:
        if 1 < k <= n_runs:
            metrics[f"pass@{k}"] = 100 * sum(pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in rows) / len(rows)
    unterminated = sum(u for r in rows for u in r["unterminated"])
    metrics["unterminated_reasoning"] = 100 * unterminated / sum(len(r["unterminated"]) for r in rows)
    metrics["unterminated_reasoning_n"] = unterminated
    if kind != "bfcl":
        metrics["no_answer_rate"] = 100 * sum(p is None for r in rows for p in r["preds"]) / sum(len(r["preds"]) for r in rows)
    else:
        metrics.update(agg["metrics"])
        metrics["decode_failure_rate"] = 100 * sum(e is not None for r in rows for e in r["decode_errors"]) / (
            sum(len(r["decode_errors"]) for r in rows))
    return {"metric": "ast_summary" if kind == "bfcl" else "accuracy", "value": 100 * value,
            "stderr": None if stderr is None else 100 * stderr, "n": len(rows), "n_runs": n_runs,
            "settings": settings, "data_source": source, "metrics": metrics}


def _grade(kind: str, item: dict, completions: list[str], thinking: bool) -> dict:
    answers = [final_answer(c, thinking) for c in completions]  # None: the reasoning never closed
    common = {"id": item["id"], "completions": completions, "unterminated": [a is None for a in answers]}
    if kind == "lm_eval":
        from evaluation.mcq import grade_mcq

        graded = [grade_mcq(item, a) for a in answers]
        return {**common, "gold": item["gold"], "preds": [g["pred"] for g in graded],
                "correct": [g["correct"] for g in graded]}
    if kind == "math":
        graded = [grade_math(item["gold"], a) for a in answers]
        return {**common, "question": item["question"], "gold": item["gold"], "preds": [g["pred"] for g in graded],
                "correct": [g["correct"] for g in graded]}
    # an unterminated output made no call: wrong, also where "no call" would be right (irrelevance)
    graded = [bfcl.grade(item["entry"], a, item["mode"]) if a is not None else
              {"calls": None, "error": "unterminated reasoning", "decode_error": None, "correct": False}
              for a in answers]
    return {**common, "category": item["category"],
            "calls": [g["calls"] for g in graded], "errors": [g["error"] for g in graded],
            "decode_errors": [g["decode_error"] for g in graded], "correct": [g["correct"] for g in graded]}
