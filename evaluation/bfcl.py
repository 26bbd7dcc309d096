"""BFCL single-turn AST evaluation: data, prompts, decoding of generated calls, and our matcher.

    python -m evaluation.bfcl data/eval/bfcl     # grades every ground truth against itself (~99.5% pass)

Data. The `bfcl-eval` wheel (2026.3.23) carries BFCL's files named BFCL_v4_<category>.json (one JSON object a
line: id, question = [[messages of the single turn]], function = [schemas]) and possible_answer/ with the same
ids (ground_truth = [{func_name: {param: [allowed values]}}]). BFCL v4 kept v3's single-turn categories and
their files and added agentic ones (web search, memory, format sensitivity); the single-turn items and answers
are v3's with the maintainers' later fixes. We evaluate the v3 single-turn categories, so the result is named
bfcl_v3 and the data file names say v4.

Categories (Python): simple, multiple, parallel, parallel_multiple, irrelevance, live_simple, live_multiple,
live_parallel, live_parallel_multiple, live_irrelevance, live_relevance. Java/JavaScript (string-typed values
checked by BFCL's own converters) and the multi-turn categories (state-based execution) are not covered.

Matching follows BFCL's AST checker (bfcl_eval/eval_checker/ast_eval/ast_checker.py), re-implemented here
because its checker imports every API client: right function; every required parameter present; no parameter
outside the schema and the ground truth; Python types per the schema (int accepted for float; a value of the
ground truth's own type accepted where the ground truth is a variable name); strings compared after removing
spaces and ,./-_*^ and lower-casing; lists and dicts element-wise the same way; a ground-truth parameter missing
from the call only if "" is among its allowed values. parallel*: as many calls as answers, matched in any order.
irrelevance: correct when nothing decodes to a call; relevance: correct when something does.

Aggregate (documented choice; the paper says "BFCL v3, ~2K entries, AST"): `value` = accuracy over all entries
(micro average). `metrics` also holds each category, and BFCL's own summaries: non_live_ast (unweighted mean of
simple, multiple, parallel, parallel_multiple), live_ast (entry-weighted over the four live AST categories),
hallucination (mean of irrelevance and live_irrelevance).
"""

from __future__ import annotations

import ast
import copy
import json
import re
import sys
from pathlib import Path

CATEGORIES = ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple", "live_multiple",
              "live_parallel", "live_parallel_multiple", "live_irrelevance", "live_relevance"]
NO_ANSWER = {"irrelevance", "live_irrelevance", "live_relevance"}  # judged on whether a call decodes at all
PY_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
            "dict": dict, "any": str}
JSON_SCHEMA_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}

# BFCL's default prompting-mode system prompt (ret_fmt=python, func_doc_fmt=json, plaintext, classic style).
SYSTEM_PROMPT = (
    "You are an expert in composing functions.You are given a question and a set of possible functions. Based on "
    "the question, you will need to make one or more function/tool calls to achieve the purpose. If none of the "
    "functions can be used, point it out. If the given question lacks the parameters required by the function, "
    "also point it out.\n\nYou should only return the function calls in your response.\n\nIf you decide to invoke "
    "any of the function(s), you MUST put it in the format of [func_name1(params_name1=params_value1, "
    "params_name2=params_value2...), func_name2(params)].  You SHOULD NOT include any other text in the response."
    "\n\nAt each turn, you should try your best to complete the tasks requested by the user within the current "
    "turn. Continue to output functions to call until you have fulfilled the user's request to the best of your "
    "ability. Once you have no more functions to call, the system will consider the current turn complete and "
    "proceed to the next turn or task.\n\nHere is a list of functions in json format that you can invoke.\n"
    "{functions}\n")


class BFCLDataError(ValueError):
    pass


def data_file(data_dir: Path, category: str, answers: bool = False) -> Path:
    stem = "simple_python" if category == "simple" else category
    return Path(data_dir) / ("possible_answer" if answers else "") / f"BFCL_v4_{stem}.json"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise BFCLDataError(f"{path}: no such file (run `make eval-data`, or point bench.bfcl_v3.local.data_dir "
                            "at a folder holding BFCL_v4_<category>.json and possible_answer/)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BFCLDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def load_category(data_dir: str | Path, category: str) -> list[dict]:
    """Entries of one category, each with `category` and (where the category has one) `ground_truth`."""
    if category not in CATEGORIES:
        raise BFCLDataError(f"unknown BFCL category {category!r}; known: {', '.join(CATEGORIES)}")
    path = data_file(Path(data_dir), category)
    entries = _read_jsonl(path)
    for n, e in enumerate(entries, 1):
        q, f = e.get("question"), e.get("function")
        if not (isinstance(e.get("id"), str) and isinstance(q, list) and q and isinstance(q[0], list)
                and isinstance(f, list) and all(isinstance(x, dict) and "name" in x and "parameters" in x for x in f)):
            raise BFCLDataError(f"{path}:{n}: expected {{id, question: [[messages]], function: [{{name, "
                                "parameters}}]}} (BFCL's format)")
        e["category"] = category
    if category in NO_ANSWER:
        return entries
    apath = data_file(Path(data_dir), category, answers=True)
    answers = {}
    for n, a in enumerate(_read_jsonl(apath), 1):
        gt = a.get("ground_truth")
        if not (isinstance(gt, list) and all(isinstance(c, dict) and len(c) == 1 for c in gt)):
            raise BFCLDataError(f"{apath}:{n}: ground_truth must be a list of {{function_name: {{param: "
                                "[allowed values]}}}}")
        answers[a["id"]] = gt
    for e in entries:
        if e["id"] not in answers:
            raise BFCLDataError(f"{apath}: no ground truth for {e['id']!r}")
        e["ground_truth"] = answers[e["id"]]
    return entries


# ---- prompts ----------------------------------------------------------------------------------------------------

def _with_hint(functions: list[dict]) -> list[dict]:
    out = copy.deepcopy(functions)
    for f in out:  # BFCL appends the language to every description
        f["description"] = f.get("description", "") + " Note that the provided function is in Python 3 syntax."
    return out


def _json_schema(node):
    if isinstance(node, dict):
        node = {k: _json_schema(v) for k, v in node.items()}
        if isinstance(node.get("type"), str):
            node["type"] = JSON_SCHEMA_TYPES.get(node["type"], node["type"])
        return node
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    return node


def build_prompt(entry: dict, mode: str) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools). mode='prompt': BFCL's system prompt lists the functions and asks for Python-call syntax;
    mode='fc': the functions go to the chat template as tools (JSON-schema types) and the model's native
    tool-call format is decoded."""
    messages = [dict(m) for m in entry["question"][0]]
    functions = _with_hint(entry["function"])
    if mode == "prompt":
        system = SYSTEM_PROMPT.format(functions=json.dumps(functions, indent=4))
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = system + "\n\n" + messages[0]["content"]
        else:
            messages.insert(0, {"role": "system", "content": system})
        return messages, None
    if mode == "fc":
        return messages, [{"type": "function", "function": _json_schema(f)} for f in functions]
    raise ValueError(f"bfcl mode must be 'prompt' or 'fc', got {mode!r}")


# ---- decoding ---------------------------------------------------------------------------------------------------

class DecodeError(ValueError):
    pass


def _ast_value(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _ast_value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.List):
        return [_ast_value(v) for v in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_ast_value(v) for v in node.elts)
    if isinstance(node, ast.Dict):
        return {_ast_value(k): _ast_value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name):  # a bare name is a variable reference; BFCL keeps it as a string
        return node.id
    return ast.unparse(node)  # expressions (calls, arithmetic) are kept as source text, never evaluated


def _call_name(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        raise DecodeError(f"not a function name: {ast.unparse(func)}")
    return ".".join([func.id, *reversed(parts)])


def _decode_python(text: str) -> list[dict]:
    text = text.strip("`\n ").strip("'")
    text = text.removeprefix("python\n")
    if not text.startswith("["):
        text = "[" + text
    if not text.endswith("]"):
        text += "]"
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise DecodeError(f"not Python call syntax: {e.msg}") from None
    calls = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    out = []
    for c in calls:
        if not isinstance(c, ast.Call) or c.args:
            raise DecodeError("expected name(param=value, ...) calls with keyword arguments only")
        out.append({_call_name(c.func): {k.arg: _ast_value(k.value) for k in c.keywords}})
    return out


def _json_call(obj) -> dict:
    if not isinstance(obj, dict):
        raise DecodeError("a JSON tool call must be an object")
    name = obj.get("name", obj.get("function"))
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(name, dict):  # OpenAI style {"function": {"name", "arguments"}}
        name, args = name.get("name"), name.get("arguments", {})
    if isinstance(args, str):
        args = json.loads(args)
    if not isinstance(name, str) or not isinstance(args, dict):
        raise DecodeError("a JSON tool call needs a string `name` and an object `arguments`")
    return {name: args}


def decode_calls(text: str) -> list[dict]:
    """Function calls in a completion, as [{name: {param: value}}]. Accepts Hermes/Qwen `<tool_call>{json}
    </tool_call>` blocks, a bare JSON call or list of calls, and BFCL's `[f(a=1), g(b='x')]`. Raises DecodeError
    when nothing decodes (which is what an irrelevance item wants)."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).strip()
    blocks = re.findall(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text, flags=re.DOTALL)
    try:
        if blocks:
            return [_json_call(json.loads(b)) for b in blocks if b.strip()]
        stripped = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
        if stripped[:1] in "[{":
            try:
                obj = json.loads(stripped)
                return [_json_call(o) for o in (obj if isinstance(obj, list) else [obj])]
            except json.JSONDecodeError:
                pass
    except (json.JSONDecodeError, DecodeError) as e:
        raise DecodeError(f"bad JSON tool call: {e}") from None
    if not text:
        raise DecodeError("empty output")
    return _decode_python(text)


# ---- matching ---------------------------------------------------------------------------------------------------

def _norm(v):
    if isinstance(v, str):
        return re.sub(r"[ ,./\-_*^]", "", v).lower().replace("'", '"')
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


def _dict_ok(value: dict, allowed: list) -> str | None:
    err = f"no allowed dict matches {value!r}"
    for cand in allowed:
        if not isinstance(cand, dict):
            continue
        bad = [k for k in value if k not in cand or _norm(value[k]) not in [_norm(a) for a in cand[k]]]
        missing = [k for k, vals in cand.items() if k not in value and "" not in vals]
        if not bad and not missing:
            return None
        err = f"dict key {bad[0]!r} not allowed or wrong" if bad else f"dict key {missing[0]!r} missing"
    return err


def _check_value(param: str, value, allowed: list, schema: dict) -> str | None:
    typ = schema.get("type", "any")
    expected = PY_TYPES.get(typ, str)
    if typ == "tuple" and isinstance(value, tuple):
        value = list(value)
    if typ == "float" and type(value) is int:
        value = float(value)  # Python would convert it
    gt_type = next((type(a) for a in allowed if a != ""), None)
    is_variable = gt_type is not None and gt_type is not expected  # the answer names a variable, not a value
    if type(value) is not expected:
        if gt_type is not None and type(value) is gt_type:
            is_variable = True
        else:
            return f"{param!r}: expected {typ}, got {type(value).__name__} ({value!r})"
    elif expected is list and isinstance(schema.get("items"), dict) and not is_variable:
        inner = PY_TYPES.get(schema["items"].get("type", "any"), str)
        ref = next((a for a in allowed if isinstance(a, list) and a), [])
        ref_types = {type(x) for x in ref}
        if any(type(x) is not inner and type(x) not in ref_types for x in value):
            return f"{param!r}: array items should be {schema['items'].get('type')}"
    if not is_variable:
        if expected is dict:
            err = _dict_ok(value, allowed)
            return f"{param!r}: {err}" if err else None
        if expected is list and schema.get("items", {}).get("type") == "dict":
            for cand in allowed:
                if isinstance(cand, list) and len(cand) == len(value) and all(
                        isinstance(v, dict) and _dict_ok(v, [c]) is None for v, c in zip(value, cand)):
                    return None
            return f"{param!r}: list of dicts {value!r} not among {allowed!r}"
        if expected in (str, list):
            ok = _norm(value) in [_norm(a) for a in allowed if isinstance(a, (str, list)) and a != ""]
            return None if ok else f"{param!r}: {value!r} not among {allowed!r}"
    return None if value in allowed else f"{param!r}: {value!r} not among {allowed!r}"


def _same_name(called: str, expected: str) -> bool:
    # Tool-calling APIs forbid '.' in names, so FC models often write math_factorial for math.factorial.
    return called == expected or called == expected.replace(".", "_")


def check_call(schema: dict, call: dict, answer: dict) -> str | None:
    """None when `call` ({name: args}) matches `answer` ({name: {param: [allowed]}}), else the reason."""
    (exp_name, allowed), ((name, args),) = next(iter(answer.items())), call.items()
    if not _same_name(name, exp_name):
        return f"wrong function {name!r}, expected {exp_name!r}"
    props = schema["parameters"].get("properties", {})
    for p in schema["parameters"].get("required", []):
        if p not in args:
            return f"missing required parameter {p!r}"
    for p, v in args.items():
        if p not in props or p not in allowed:
            return f"unexpected parameter {p!r}"
        err = _check_value(p, v, allowed[p], props[p])
        if err:
            return err
    for p, vals in allowed.items():
        if p not in args and "" not in vals:
            return f"parameter {p!r} omitted but not optional"
    return None


def check(entry: dict, calls: list[dict] | None) -> str | None:
    """None when the decoded calls (None: nothing decoded) are right for the entry, else the reason."""
    cat = entry["category"]
    has_call = bool(calls) and any(call for call in calls)
    if cat.endswith("irrelevance"):
        return "made a call where none applies" if has_call else None
    if cat == "live_relevance":
        return None if has_call else "no function call decoded"
    if not has_call:
        return "no function call decoded"
    answers = entry["ground_truth"]
    if len(calls) != len(answers):
        return f"{len(calls)} calls, expected {len(answers)}"
    schemas = {f["name"]: f for f in entry["function"]}
    free = list(range(len(calls)))
    for ans in answers:  # any order: each answer takes the first unmatched call that fits (as BFCL does)
        schema = schemas.get(next(iter(ans)))
        if schema is None:
            raise BFCLDataError(f"{entry['id']}: ground truth names {next(iter(ans))!r}, absent from `function`")
        errs = [(i, check_call(schema, calls[i], ans)) for i in free]
        hit = next((i for i, e in errs if e is None), None)
        if hit is None:
            return errs[0][1] if len(answers) == 1 else f"no call matches {next(iter(ans))!r} ({errs[0][1]})"
        free.remove(hit)
    return None


def grade(entry: dict, completion: str) -> dict:
    try:
        calls, decode_error = decode_calls(completion), None
    except (DecodeError, RecursionError, ValueError) as e:
        calls, decode_error = None, str(e)
    err = check(entry, calls)
    return {"calls": calls, "correct": err is None, "error": err, "decode_error": decode_error}


def aggregate(rows: list[dict]) -> dict:
    """Per-category accuracy (%) and BFCL's summaries from graded rows ({category, correct})."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["category"], []).append(float(r["correct"]))
    acc = {c: 100 * sum(v) / len(v) for c, v in by.items()}
    out = {f"acc_{c}": a for c, a in acc.items()} | {f"n_{c}": len(v) for c, v in by.items()}
    non_live = [acc[c] for c in ("simple", "multiple", "parallel", "parallel_multiple") if c in acc]
    live = [c for c in ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple") if c in acc]
    halluc = [acc[c] for c in ("irrelevance", "live_irrelevance") if c in acc]
    if non_live:
        out["non_live_ast"] = sum(non_live) / len(non_live)
    if live:
        out["live_ast"] = sum(acc[c] * len(by[c]) for c in live) / sum(len(by[c]) for c in live)
    if halluc:
        out["hallucination"] = sum(halluc) / len(halluc)
    return out


def _first(allowed):
    if not isinstance(allowed, list):
        return allowed
    return next((a for a in allowed if a != ""), "")


def _pick(v):
    """A concrete value from an allowed value: nested dicts hold lists of allowed values themselves."""
    if isinstance(v, dict):
        return {k: _pick(_first(a)) for k, a in v.items() if _first(a) != ""}
    if isinstance(v, list):
        return [_pick(x) for x in v]
    return v


def self_check(data_dir: str | Path) -> dict:
    """Render every ground truth's first allowed values as a Python call and grade it. A handful fail for
    quirks of the data that BFCL's checker fails as well (a required parameter whose allowed list is empty,
    a ground-truth parameter absent from the schema)."""
    res = {}
    for cat in CATEGORIES:
        if cat in NO_ANSWER:
            continue
        entries = load_category(data_dir, cat)
        ok = 0
        for e in entries:
            calls = [f"{n}({', '.join(f'{p}={_pick(_first(v))!r}' for p, v in a.items() if _first(v) != '')})"
                     for gt in e["ground_truth"] for n, a in gt.items()]
            ok += grade(e, "[" + ", ".join(calls) + "]")["correct"]
        res[cat] = f"{ok}/{len(entries)}"
    return res


if __name__ == "__main__":
    print(self_check(sys.argv[1] if len(sys.argv) > 1 else "data/eval/bfcl"))
