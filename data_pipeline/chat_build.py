"""Medical and agent domains: the responses already exist in the source (DeepSeek-R1 distillations for
Huatuo-o1, NVIDIA's synthetic trajectories for Nemotron-Agentic), so there is no generate stage: read -> check
(each adapter rejects malformed rows) -> dedupe -> render -> drop over-long -> seeded sample -> write.

Medical reasoning placement (domain.reasoning_format), for Qwen3-4B-Thinking-2507's template:
- think_tags (default): assistant content = "<think>\\n{Complex_CoT}\\n</think>\\n\\n{Response}". The Qwen3
  template splits content at </think> and re-renders the reasoning inside <think>...</think> of the final
  turn, and its generation prompt already ends in "<think>\\n", so the trainer supervises the reasoning, the
  closing </think>, the answer and <|im_end|> (tests/test_data_render.py checks this on a copy of the template).
  Plain-ChatML templates (SmolLM2, the tiny test tokenizer) show the same tags verbatim: still one string.
- reasoning_content: the reasoning in the message's `reasoning_content` field and the answer in `content`. The
  Qwen3 templates read it and render the same tokens; templates without that field drop the reasoning silently,
  which is why it is not the default.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.adapters import ADAPTERS
from data_pipeline.output import (
    check_not_short,
    drop_overlong,
    split_stats,
    student_tokenizer,
    write_manifest,
    write_rejects,
    write_split,
)
from data_pipeline.records import RejectLog
from data_pipeline.sampling import dedupe, seeded_sample
from data_pipeline.sources import read_source


def place_reasoning(messages: list[dict], fmt: str) -> list[dict]:
    if fmt not in ("think_tags", "reasoning_content"):
        raise ValueError(f"domain.reasoning_format must be think_tags or reasoning_content, got {fmt!r}")
    out = []
    for m in messages:
        m = dict(m)
        if fmt == "think_tags" and m.get("reasoning_content"):
            m["content"] = f"<think>\n{m.pop('reasoning_content').strip()}\n</think>\n\n{m['content'].strip()}"
        out.append(m)
    return out


def dedupe_key(kind: str):
    if kind == "medical":  # the question: one reasoning chain per question
        return lambda r: next(m["content"] for m in r["messages"] if m["role"] == "user")
    return lambda r: json.dumps([r["messages"], r.get("tools")], sort_keys=True)  # exact trajectory


def build(d: dict, seed: int, out_dir: Path, manifest_limit: int, extra: dict, allow_short: bool = False) -> dict:
    rejects, infos, records = RejectLog(), [], []
    for spec in d["sources"]:
        recs, info = read_source(spec, ADAPTERS, rejects)
        records += recs
        infos.append(info)
    n_read = len(records)
    records = dedupe(records, dedupe_key(d["kind"]), rejects)
    if d["kind"] == "medical":
        records = [{**r, "messages": place_reasoning(r["messages"], d.get("reasoning_format", "think_tags"))}
                   for r in records]
    tok = student_tokenizer(d["tokenizer"], d.get("chat_template"))
    candidates = drop_overlong(records, tok, int(d["max_length"]), rejects, "train")
    n_train = (d.get("select") or {}).get("n_train")
    train = seeded_sample(candidates, n_train, seed + 1)
    if not allow_short:
        check_not_short(train, n_train, rejects, out_dir)
    if not train:
        raise RuntimeError(f"no row survived (rejections: {rejects.counts()})")
    outputs = {"train": write_split(out_dir, "train", train)}
    sources = {i["name"]: {**i, "after_dedupe": sum(r["source"] == i["name"] for r in records),
                           "train_rows": sum(r["source"] == i["name"] for r in train)} for i in infos}
    manifest = {**extra, "sources": sources, "outputs": outputs,
                "counts": {"adapted": n_read, "after_dedupe": len(records), "candidates": len(candidates),
                           "train": len(train), "requested_train": n_train,
                           "short_by": max(0, n_train - len(train)) if n_train else 0},
                "teacher": {"backend": "dataset", "note": d.get("teacher_note")},
                "token_stats": {"tokenizer": d["tokenizer"], "train": split_stats(train)},
                "inputs": {"sources": {i["name"]: {k: i.get(k) for k in ("sha256", "fingerprint", "records_sha256",
                                                                          "revision")} for i in infos}},
                "rejected": write_rejects(out_dir, rejects, manifest_limit)}
    write_manifest(out_dir, manifest)
    return manifest
