"""Generative multiple choice (mode=generate): the model writes an answer, we extract the option letter.

    python -m evaluation.evaluate model=<run> suite=medical bench.medqa.mode=generate bench.medmcqa.mode=generate

The default for MMLU, MedMCQA, MedQA and PubMedQA is lm-eval's log-likelihood scoring. Thinking models (the
paper's medical model is Qwen3-4B-Thinking-2507) are evaluated generatively instead by MedEvalKit, which the paper
follows for the medical set: question and lettered options in one user turn, the instruction below, greedy
decoding, and the answer letter read from the completion (evaluation.grading.extract_choice: a boxed letter,
"answer is X", a line that is a letter, "(X)", a completion ending in the letter; capitals only). A thinking
model's answer is the text after its last </think>, and one that never closes its reasoning is wrong
(evaluation.generative). Same data files as the lm-eval path; the benchmark config's `generate:` block says
which fields hold the question, options and answer.
"""

from __future__ import annotations

from common.files import repo_path
from evaluation.grading import extract_choice
from evaluation.sources import DataFormatError, choose_source, read_rows, refuse_variant

LETTERS = "ABCDEFGHIJ"
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _first(row: dict, candidates, where: str, role: str):
    for c in candidates:
        if isinstance(c, (list, tuple)):
            if all(k in row for k in c):
                return [row[k] for k in c]
        elif c in row and row[c] is not None:
            return row[c]
    raise DataFormatError(f"{where}: no {role} (looked for {list(candidates)}); keys present: {sorted(row)}")


def _rows(bench: dict) -> tuple[list[dict], str]:
    g = bench["generate"]
    if choose_source(bench) == "hub":
        from datasets import load_dataset

        hub = bench["hub"]
        ds = load_dataset(hub["path"], hub.get("name"), split=g.get("hub_split", "test"))
        return [dict(r, _where=f"{hub['path']}[{i}]") for i, r in enumerate(ds)], f"{hub['path']}:{g.get('hub_split')}"
    loc = bench["local"]
    split_file = loc["data_files"][loc["test_split"]]
    if "subtask_yaml" in loc:  # MMLU: one folder per subject
        root = repo_path(loc["data_dir"])
        paths = [p / split_file for p in sorted(root.iterdir()) if p.is_dir()]
    else:
        paths = [repo_path(split_file)]
    rows = []
    for p in paths:
        text = p.read_text() if p.suffix == ".json" else ""
        if text.lstrip().startswith("{") and "\n{" not in text.strip():  # a dict keyed by id (PubMedQA)
            import json

            rows += [dict(v, id=k, _where=f"{p}:{k}") for k, v in json.loads(text).items()]
        else:
            rows += [dict(r, _where=f"{p}:{i}") for i, r in enumerate(read_rows(p), 1)]
    return rows, ",".join(str(p) for p in paths) if len(paths) < 3 else str(repo_path(loc["data_dir"]))


def mcq_items(bench: dict) -> tuple[list[dict], str]:
    g = bench["generate"]
    rows, source = _rows(bench)
    refuse_variant(bench, len(rows), source)
    items = []
    for i, r in enumerate(rows):
        where = r["_where"]
        q = _first(r, g["question"], where, "question")
        opts = list(g["fixed_options"]) if g.get("fixed_options") else _first(r, g["options"], where, "options")
        if isinstance(opts, dict):
            opts = [opts[k] for k in sorted(opts)]
        ans = _first(r, g["answer"], where, "answer")
        if isinstance(ans, str) and len(ans) == 1 and ans in LETTERS[: len(opts)]:
            gold = LETTERS.index(ans)
        elif isinstance(ans, str) and ans.strip().lower() in [str(o).strip().lower() for o in opts]:
            gold = [str(o).strip().lower() for o in opts].index(ans.strip().lower())
        elif isinstance(ans, (int, float)) and not isinstance(ans, bool) and 0 <= int(ans) < len(opts):
            gold = int(ans)
        else:
            raise DataFormatError(f"{where}: answer {ans!r} is neither an option index, a letter nor an option text")
        parts = []
        if g.get("context"):
            ctx = _first(r, g["context"], where, "context")
            parts.append("\n".join(ctx) if isinstance(ctx, list) else str(ctx))
        parts.append(str(q).strip())
        parts.append("\n".join(f"{LETTERS[j]}. {o}" for j, o in enumerate(opts)))
        parts.append(g.get("instruction", INSTRUCTION))
        items.append({"id": str(r.get("id", i)) if g.get("use_id", False) else str(i), "tools": None,
                      "messages": [{"role": "user", "content": "\n\n".join(parts)}],
                      "gold": LETTERS[gold], "letters": LETTERS[: len(opts)]})
    return items, source


def grade_mcq(item: dict, completion: str | None) -> dict:
    pred = extract_choice(completion, item["letters"])
    return {"pred": pred, "correct": pred == item["gold"]}
