"""Generative multiple choice (mode=generate): the model writes an answer, we read the option letter from it.

    python -m evaluation.evaluate model=<run> suite=table2                      # thinking model: generate by default
    python -m evaluation.evaluate model=<run> suite=medical bench.medqa.mode=generate      # any model, by hand

Which mode a benchmark runs in: `mode: auto` (MMLU, MedMCQA, MedQA, PubMedQA, CLUEWSC) is generation for a model
whose config says it thinks (`thinking: true`, the paper's medical model Qwen3-4B-Thinking-2507, which MedEvalKit
scores by generation) and lm-eval's log-likelihood otherwise; `mode=generate` / `mode=loglikelihood` force one
(`scoring_mode`).

The prompt is MedEvalKit's (alibaba-damo-academy/MedEvalKit, utils/question_formats.py
`get_multiple_choice_prompt`, and each benchmark's `construct_messages`), one user turn:

    [Context: <context lines joined by newlines>\\n]          (PubMedQA only)
    \\nQuestion: <question>\\nOptions: \\n<A. option>\\n<B. option>...\\n<instruction>

with MedEvalKit's instruction for its two settings: REASONING=False "Answer with the option's letter from the given
choices directly." for a model that answers at once, and REASONING=True 'Answer with the option's letter from the
given choices and put the letter in one "\\boxed{}".' for a thinking model (which of the two the paper used is [U];
the boxed one is MedEvalKit's for reasoning models). The option separator is MedEvalKit's per benchmark
(`option_sep`: "A. text" for MedQA and MedMCQA, "A.yes" for PubMedQA). CLUEWSC (Chinese) uses the `lang: zh` form
of the same prompt. Greedy decoding, as MedEvalKit's eval.sh (temperature 0); the budget is the model's own
(configs/model, `max_new_tokens`) for a thinking model, the benchmark's otherwise.

The letter is read by evaluation.grading.extract_choice (a boxed letter, "answer is X", ...), and when no letter
is found, by an exact match of the answer (or its last box) with one option's text ("\\boxed{yes}" on PubMedQA).
A thinking model's answer is the text after its last </think>; one that never closes its reasoning is wrong
(evaluation.generative). MedEvalKit's `judge_multi_choice` differs in two ways, both documented in
evaluation/README.md: it reads a box anywhere (reasoning included), and it maps an answer with no letter to the
most similar option, so it never records "no answer".

Same data files as the lm-eval path; the benchmark config's `generate:` block says which fields hold the question,
options, context and answer (a row whose fields sit under `data`, as openlifescienceai/pubmedqa's, is read
through it), and `generate.hub` names the Hub copy MedEvalKit reads when it differs from lm-eval's.
"""

from __future__ import annotations

import json

from common.files import repo_path
from evaluation.grading import extract_boxed, extract_choice
from evaluation.sources import DataFormatError, choose_source, read_rows, refuse_variant

LETTERS = "ABCDEFGHIJ"
MODES = ("auto", "generate", "loglikelihood")
# MedEvalKit's instructions (question_formats.get_multiple_choice_prompt), by language and REASONING setting
INSTRUCTIONS = {
    ("en", False): "Answer with the option's letter from the given choices directly.",
    ("en", True): 'Answer with the option\'s letter from the given choices and put the letter in one "\\boxed{}".',
    ("zh", False): "请直接使用给定选项中的选项字母来回答该问题。",
    ("zh", True): '请直接使用给定选项中的选项字母来回答该问题,并将答案包裹在"\\boxed{}"里',
}
INSTRUCTION = INSTRUCTIONS[("en", False)]
HEADS = {"en": ("Question: ", "Options: "), "zh": ("问题： ", "选项： ")}


def scoring_mode(bench: dict, thinking: bool) -> str:
    """'generate' or 'loglikelihood' for a benchmark with a `mode` (see the module docstring)."""
    mode = bench.get("mode", "loglikelihood")
    if mode not in MODES:
        raise ValueError(f"bench.{bench['name']}.mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        mode = "generate" if thinking else "loglikelihood"
    if mode == "generate" and not bench.get("generate"):
        raise ValueError(f"bench.{bench['name']}.mode=generate, but configs/benchmark/{bench['name']}.yaml has no "
                         "`generate:` block saying where its question, options and answer are")
    return mode


def prompt(question: str, options: list[str], *, context: str | None = None, thinking: bool = False,
           option_sep: str = ". ", lang: str = "en", instruction: str | None = None) -> str:
    """MedEvalKit's multiple-choice prompt (module docstring), character for character."""
    q_head, o_head = HEADS[lang]
    lines = "\n".join(f"{LETTERS[j]}{option_sep}{o}" for j, o in enumerate(options))
    text = f"\n{q_head}{question}\n{o_head}\n{lines}\n{instruction or INSTRUCTIONS[(lang, thinking)]}"
    return f"Context: {context}\n{text}" if context is not None else text


def _first(row: dict, candidates, where: str, role: str):
    for c in candidates:
        if isinstance(c, (list, tuple)):
            if all(k in row for k in c):
                return [row[k] for k in c]
        elif c in row and row[c] is not None:
            return row[c]
    raise DataFormatError(f"{where}: no {role} (looked for {list(candidates)}); keys present: {sorted(row)}")


def _has_any(row: dict, candidates) -> bool:
    return any(all(k in row for k in c) if isinstance(c, (list, tuple)) else row.get(c) is not None
               for c in candidates or [])


def hub_source(bench: dict) -> dict:
    """The Hub data set the generative path reads: `generate.hub` (MedEvalKit's copy) else the benchmark's `hub`,
    with the split `generate.hub_split` when given."""
    g = bench["generate"]
    hub = dict(g.get("hub") or bench["hub"])
    hub.setdefault("split", g.get("hub_split", "test"))
    return hub


def _rows(bench: dict) -> tuple[list[dict], str]:
    loc = bench.get("local") or {}
    if choose_source(bench) == "hub":
        from datasets import load_dataset

        hub = hub_source(bench)
        ds = load_dataset(hub["path"], hub.get("name"), split=hub["split"])
        where = hub["path"] + (f"/{hub['name']}" if hub.get("name") else "")
        return [dict(r, _where=f"{where}[{i}]") for i, r in enumerate(ds)], f"{where}:{hub['split']}"
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
            rows += [dict(v, id=k, _where=f"{p}:{k}") for k, v in json.loads(text).items()]
        else:
            rows += [dict(r, _where=f"{p}:{i}") for i, r in enumerate(read_rows(p), 1)]
    return rows, ",".join(str(p) for p in paths) if len(paths) < 3 else str(repo_path(loc["data_dir"]))


def _gold(ans, opts: list, answer_map: dict | None, where: str) -> int:
    if answer_map and str(ans).strip().lower() in answer_map:
        ans = answer_map[str(ans).strip().lower()]
    if isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip() in LETTERS[: len(opts)]:
        return LETTERS.index(ans.strip())
    if isinstance(ans, str) and ans.strip().lower() in [str(o).strip().lower() for o in opts]:
        return [str(o).strip().lower() for o in opts].index(ans.strip().lower())
    if isinstance(ans, (int, float)) and not isinstance(ans, bool) and 0 <= int(ans) < len(opts):
        return int(ans)
    raise DataFormatError(f"{where}: answer {ans!r} is neither an option index, a letter nor an option text")


def mcq_items(bench: dict, thinking: bool = False) -> tuple[list[dict], str]:
    """One conversation per row, in MedEvalKit's prompt; `thinking` picks its REASONING=True instruction."""
    g = bench["generate"]
    rows, source = _rows(bench)
    refuse_variant(bench, len(rows), source)
    items = []
    for i, raw in enumerate(rows):
        r = {**raw["data"], **raw} if isinstance(raw.get("data"), dict) else raw  # openlifescienceai's nesting
        where = r["_where"]
        if g.get("question_template"):
            try:
                q = g["question_template"].format_map(r)
            except (KeyError, IndexError, TypeError) as e:
                raise DataFormatError(f"{where}: generate.question_template needs {e}; keys present: {sorted(r)}") \
                    from None
        else:
            q = _first(r, g["question"], where, "question")
        opts = (_first(r, g["options"], where, "options") if _has_any(r, g.get("options"))
                else list(g["fixed_options"]) if g.get("fixed_options")
                else _first(r, g.get("options") or [], where, "options"))
        if isinstance(opts, dict):
            opts = [opts[k] for k in sorted(opts)]
        gold = _gold(_first(r, g["answer"], where, "answer"), opts, g.get("answer_map"), where)
        ctx = None
        if g.get("context"):
            c = _first(r, g["context"], where, "context")
            ctx = "\n".join(c) if isinstance(c, list) else str(c)
        text = prompt(str(q).strip(), [str(o) for o in opts], context=ctx, thinking=thinking,
                      option_sep=g.get("option_sep", ". "), lang=g.get("lang", "en"), instruction=g.get("instruction"))
        items.append({"id": str(r.get("id", i)) if g.get("use_id", False) else str(i), "tools": None,
                      "messages": [{"role": "user", "content": text}], "gold": LETTERS[gold],
                      "letters": LETTERS[: len(opts)], "options": [str(o) for o in opts]})
    return items, source


def option_text_choice(text: str | None, options: list[str], letters: str) -> str | None:
    """The letter of the option whose text IS the answer (its last box, or the whole answer, ignoring case,
    markdown and final punctuation), else None: "\\boxed{yes}" on PubMedQA is A. No partial or fuzzy match."""
    if not text or not options:
        return None
    norm = [str(o).strip().lower().strip("*.。 ") for o in options]
    for cand in [*reversed(extract_boxed(text)), text]:
        c = cand.strip().lower().strip("*.。 ").removeprefix("\\text{").removesuffix("}")
        if c in norm and norm.count(c) == 1:
            return letters[norm.index(c)]
    return None


def grade_mcq(item: dict, completion: str | None) -> dict:
    pred = extract_choice(completion, item["letters"])
    if pred is None:
        pred = option_text_choice(completion, item.get("options") or [], item["letters"])
    return {"pred": pred, "correct": pred == item["gold"]}
