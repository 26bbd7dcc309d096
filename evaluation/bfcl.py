"""BFCL single-turn AST evaluation: data, prompts, decoding of generated calls, and our matcher.

    python -m evaluation.bfcl data/eval/bfcl     # grades every ground truth against itself (2,344 of 2,351 pass)

Data. The `bfcl-eval` wheel (2026.3.23) carries BFCL's files named BFCL_v4_<category>.json (one JSON object a
line: id, question = [[messages of the single turn]], function = [schemas]) and possible_answer/ with the same
ids (ground_truth = [{func_name: {param: [allowed values]}}]). BFCL v4 kept v3's single-turn categories and
their files and added agentic ones (web search, memory, format sensitivity); the single-turn items and answers
are v3's with the maintainers' later fixes. We evaluate the v3 single-turn categories, so the result is named
bfcl_v3 and the data file names say v4.

Categories (Python): simple, multiple, parallel, parallel_multiple, irrelevance, live_simple, live_multiple,
live_parallel, live_parallel_multiple, live_irrelevance, live_relevance. Java/JavaScript (string-typed values
checked by BFCL's own converters) and the multi-turn categories (state-based execution) are not covered.

Grading is BFCL's own for its local Qwen handlers (the paper's model family), kept line for line:
mode='prompt' decodes as QwenHandler (text after the last </think>; backticks, newlines and spaces stripped, so a
```python fence fails; `[f(a=1), g(b='x')]`, brackets optional; positional arguments dropped, the call kept);
mode='fc' as QwenFCHandler (only `<tool_call>\n{json}\n</tool_call>` blocks; none means no call). The checker is
bfcl_eval/eval_checker/ast_eval/ast_checker.py for Python: exact function names (underscore_to_dot is off for
the Qwen handlers), required parameters, no parameter outside the schema and the answer, Python types per the
schema with its variable-name and nested-array rules, strings compared after removing spaces and ,./-_*^ and
lower-casing, "" in the allowed values marks a parameter optional. (ir)relevance: correct when a non-empty call
list does (not) decode. It is re-implemented, not imported, because bfcl-eval imports every vendor's API client
and pins numpy; tests/test_bfcl_official.py diffs grade() against the official package in .venv-bfcl
(`make bfcl-venv`) on ~86k (entry, completion, mode) triples and lists the differences by construction.

Aggregate (`aggregate(rows)`): headline `ast_summary` = mean of BFCL's non-live AST summary (unweighted mean of
simple, multiple, parallel, parallel_multiple; BFCL's simple also averages Java and JavaScript, which are not
covered) and live AST summary (entry-weighted over live_simple, live_multiple, live_parallel,
live_parallel_multiple), weighted equally as BFCL's overall score weights its non-live and live parts. These 8
categories hold 2,351 entries, the "~2K entries, AST" of the paper. irrelevance, live_irrelevance and
live_relevance stay out of it: `metrics` holds hallucination (their unweighted mean, BFCL's) and relevance.
"""

from __future__ import annotations

import ast
import copy
import json
import operator
import re
import sys
from pathlib import Path

from common.files import read_jsonl

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
    try:
        return read_jsonl(path)
    except ValueError as e:  # names file:line
        raise BFCLDataError(str(e)) from None


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


# ---- decoding (BFCL's local Qwen handlers) ----------------------------------------------------------------------

class DecodeError(ValueError):
    pass


def strip_think(text: str) -> str:
    """What the Qwen handlers keep of a completion: the text after the last </think>."""
    if "</think>" in text:
        return text.split("</think>")[-1].lstrip("\n")
    return text


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
           ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift}


def _arith(node):
    """BFCL eval()s an arithmetic argument; we compute it only from literals, never running model output."""
    if not isinstance(node, ast.BinOp):
        return ast.literal_eval(node)
    left, right = _arith(node.left), _arith(node.right)
    if isinstance(node.op, (ast.Pow, ast.LShift)) and isinstance(right, int) and right > 4096:
        raise DecodeError("arithmetic too large to evaluate")
    if type(node.op) not in _BINOPS:
        raise DecodeError(f"unsupported operator {type(node.op).__name__}")
    return _BINOPS[type(node.op)](left, right)


def _value(node):
    """An argument's value, as BFCL's resolve_ast_by_type gives it (quirks included: a unary operator negates
    its operand; a call without keywords stays source text; a name is its identifier)."""
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp):
        return -node.operand.value  # AttributeError/TypeError on non-constants: a decode failure, as in BFCL
    if isinstance(node, ast.List):
        return [_value(v) for v in node.elts]
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BinOp):
        return _arith(node)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return _call(node) if node.keywords else ast.unparse(node)
    if isinstance(node, ast.Tuple):
        return tuple(_value(v) for v in node.elts)
    if isinstance(node, ast.Subscript):
        return ast.unparse(node.value) + "[" + ast.unparse(node.slice) + "]"
    raise DecodeError(f"unsupported argument syntax {type(node).__name__}")


def _call(node: ast.Call) -> dict:
    """{name: {keyword: value}}; positional arguments are dropped, as BFCL does."""
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return {".".join(reversed(parts)): {k.arg: _value(k.value) for k in node.keywords}}


def decode_prompt(text: str) -> list[dict]:
    """BFCL's default_decode_ast_prompting (Python): `[f(a=1), g(b='x')]`, brackets optional."""
    text = text.strip("`\n ")
    text = ("" if text.startswith("[") else "[") + text + ("" if text.endswith("]") else "]")
    try:
        body = ast.parse(text.strip().strip("'"), mode="eval").body
    except SyntaxError as e:
        raise DecodeError(f"not Python call syntax: {e.msg}") from None
    elts = [body] if isinstance(body, ast.Call) else getattr(body, "elts", None)
    if elts is None or not all(isinstance(c, ast.Call) for c in elts):
        raise DecodeError("expected a list of function calls")
    return [_call(c) for c in elts]


def decode_fc(text: str) -> list[dict]:
    """QwenFCHandler.decode_ast: every `<tool_call>\\n{json}\\n</tool_call>` block (newlines required; a block
    that is not JSON is skipped); no block means no call."""
    calls = []
    for block in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.DOTALL):
        try:
            calls.append(json.loads(block))
        except (ValueError, RecursionError):
            continue
    if not all(isinstance(c, dict) for c in calls):
        raise DecodeError("a tool call is not a JSON object")
    try:
        return [{c["name"]: dict(c["arguments"].items())} for c in calls]
    except (KeyError, AttributeError, TypeError) as e:
        raise DecodeError(f"a tool call needs `name` and an object `arguments` ({e!r})") from None


def decode_calls(text: str, mode: str) -> list[dict]:
    """Function calls in a completion, as [{name: {param: value}}], decoded as BFCL's Qwen handler for `mode`
    does. Raises DecodeError where BFCL's decoder raises."""
    if mode not in ("prompt", "fc"):
        raise ValueError(f"bfcl mode must be 'prompt' or 'fc', got {mode!r}")
    text = strip_think(text)
    try:
        return decode_prompt(text) if mode == "prompt" else decode_fc(text)
    except DecodeError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, ArithmeticError, RecursionError, MemoryError) as e:
        raise DecodeError(f"{type(e).__name__}: {e}") from None


# ---- matching (BFCL's ast_checker, Python) ----------------------------------------------------------------------

def _norm(s: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _norm_any(v):
    return _norm(v) if type(v) is str else v


def _answer_type(allowed: list):
    return next((type(a) for a in allowed if a != ""), None)


def _type_ok(value, allowed: list, expected: type, nested: type | None) -> tuple[bool, bool]:
    """(valid, is_variable) as BFCL's type_checker: a value of the answer's own type where the answer's type
    differs from the schema's is a variable name; arrays check their items against each list answer."""
    ans_type = _answer_type(allowed)
    is_variable = ans_type is not None and ans_type is not expected
    if type(value) is expected:
        if nested is None:
            return True, is_variable
        for cand in allowed:
            if type(cand) is not list or all(_type_ok(v, cand, nested, None)[0] for v in value):
                return True, is_variable
    if ans_type is not None and type(value) is ans_type:
        return True, True
    return False, False


def _dict_ok(value: dict, allowed: list) -> bool:
    for cand in allowed:
        if cand == "":
            continue
        if all(k in cand and _norm_any(v) in [_norm_any(a) for a in cand[k]] for k, v in value.items()) and \
                all(k in value or "" in vals for k, vals in cand.items()):
            return True
    return False


def _list_dict_ok(value: list, allowed: list) -> bool:
    return any(len(value) == len(cand) and all(_dict_ok(v, [c]) for v, c in zip(value, cand)) for cand in allowed)


def _value_error(param: str, value, allowed: list, schema: dict) -> str | None:
    typ = schema["type"]
    if typ not in PY_TYPES:
        raise BFCLDataError(f"parameter {param!r}: unknown type {typ!r}; BFCL knows {', '.join(PY_TYPES)}")
    expected = PY_TYPES[typ]
    nested = PY_TYPES[schema["items"]["type"]] if typ in ("array", "tuple") else None
    if typ == "tuple" and type(value) is tuple:
        value = list(value)
    if typ == "float" and type(value) is int:
        value = float(value)  # Python would convert it
    ok, is_variable = _type_ok(value, allowed, expected, nested)
    if not ok:
        return f"{param!r}: expected {typ}, got {type(value).__name__} ({value!r})"
    if not is_variable:
        if expected is dict:
            return None if _dict_ok(value, allowed) else f"{param!r}: no allowed dict matches {value!r}"
        if expected is list and nested is dict:
            return None if _list_dict_ok(value, allowed) else f"{param!r}: {value!r} not among {allowed!r}"
        if expected is str:
            ok = _norm(value) in [_norm(a) for a in allowed if type(a) is str]
            return None if ok else f"{param!r}: {value!r} not among {allowed!r}"
        if expected is list:
            ok = [_norm_any(v) for v in value] in [[_norm_any(a) for a in cand] for cand in allowed]
            return None if ok else f"{param!r}: {value!r} not among {allowed!r}"
    return None if value in allowed else f"{param!r}: {value!r} not among {allowed!r}"


def check_call(schema: dict, call: dict, answer: dict) -> str | None:
    """None when `call` ({name: args}) matches `answer` ({name: {param: [allowed]}}) under `schema`, else the
    reason (BFCL's simple_function_checker; names must match exactly, as for the local Qwen handlers)."""
    allowed = next(iter(answer.values()))
    name, params = schema["name"], schema["parameters"]
    if name not in call:
        return f"wrong function {next(iter(call), None)!r}, expected {name!r}"
    args = call[name]
    for p in params["required"]:
        if p not in args:
            return f"missing required parameter {p!r}"
    for p, v in args.items():
        if p not in params["properties"] or p not in allowed:
            return f"unexpected parameter {p!r}"
        err = _value_error(p, v, allowed[p], params["properties"][p])
        if err:
            return err
    for p, vals in allowed.items():
        if p not in args and "" not in vals:
            return f"parameter {p!r} omitted but not optional"
    return None


def _schema(entry: dict, name: str) -> dict:
    schema = next((f for f in entry["function"] if f["name"] == name), None)
    if schema is None:
        raise BFCLDataError(f"{entry['id']}: ground truth names {name!r}, absent from `function`")
    return schema


def check(entry: dict, calls: list[dict] | None) -> str | None:
    """None when the decoded calls (None: decoding failed) are right for the entry, else the reason."""
    cat = entry["category"]
    if "relevance" in cat:  # judged on whether a non-empty call list decodes
        has_call = bool(calls)
        if cat.endswith("irrelevance"):
            return "made a call where none applies" if has_call else None
        return None if has_call else "no function call decoded"
    if calls is None:
        return "no function call decoded"
    answers = entry["ground_truth"]
    if len(calls) != len(answers):
        return f"{len(calls)} calls, expected {len(answers)}"
    if "parallel" not in cat:  # simple checks the first function, multiple the answer's; one call each
        schema = entry["function"][0] if "multiple" not in cat else _schema(entry, next(iter(answers[0])))
        return check_call(schema, calls[0], answers[0])
    free = list(range(len(calls)))
    for ans in answers:  # any order: each answer takes the first unmatched call that fits (as BFCL does)
        schema = _schema(entry, next(iter(ans)))
        errs = [(i, check_call(schema, calls[i], ans)) for i in free]
        hit = next((i for i, e in errs if e is None), None)
        if hit is None:
            return f"no call matches {next(iter(ans))!r} ({errs[-1][1] if errs else 'none left'})"
        free.remove(hit)
    return None


def grade(entry: dict, completion: str, mode: str) -> dict:
    """Grade one completion as BFCL does for the local Qwen handler of `mode` ('prompt' or 'fc')."""
    try:
        calls, decode_error = decode_calls(completion, mode), None
    except DecodeError as e:
        calls, decode_error = None, str(e)
    try:
        err = check(entry, calls)
    except (TypeError, AttributeError) as e:  # a value BFCL's checker cannot handle either (it raises there)
        err = f"checker failed on this output: {type(e).__name__}: {e}"
    return {"calls": calls, "correct": err is None, "error": err, "decode_error": decode_error}


# ---- aggregate (BFCL's score script) ----------------------------------------------------------------------------

NON_LIVE_AST = ["simple", "multiple", "parallel", "parallel_multiple"]
LIVE_AST = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]


def _coefficients(n: dict[str, int]) -> dict[str, float]:
    """Each AST category's weight in the headline: half the unweighted non-live mean, half the entry-weighted
    live mean (over the categories present)."""
    non_live = [c for c in NON_LIVE_AST if c in n]
    live = [c for c in LIVE_AST if c in n]
    halves = [h for h in (non_live, live) if h]
    coef = {c: 1 / len(non_live) / len(halves) for c in non_live}
    coef |= {c: n[c] / sum(n[x] for x in live) / len(halves) for c in live}
    return coef


def aggregate(rows: list[dict]) -> dict:
    """Headline and BFCL's summaries from graded rows ({category, correct}; correct in [0, 1], the mean over runs).

    value = ast_summary = mean of BFCL's non-live AST summary (unweighted mean of simple, multiple, parallel,
    parallel_multiple) and live AST summary (entry-weighted over the four live AST categories), in %;
    stderr from the per-category sample variances. Irrelevance, live_irrelevance and live_relevance never enter
    it: `metrics` holds them, BFCL's hallucination (unweighted mean of the two irrelevance categories) and
    relevance, each category's accuracy and count, and ast_missing (AST categories without rows)."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["category"], []).append(float(r["correct"]))
    acc = {c: 100 * sum(v) / len(v) for c, v in by.items()}
    n = {c: len(v) for c, v in by.items()}
    metrics = {f"acc_{c}": a for c, a in acc.items()} | {f"n_{c}": k for c, k in n.items()}
    ast_n = {c: k for c, k in n.items() if c in NON_LIVE_AST + LIVE_AST}
    if any(c in ast_n for c in NON_LIVE_AST):
        metrics["non_live_ast"] = sum(acc[c] for c in NON_LIVE_AST if c in acc) / sum(c in acc for c in NON_LIVE_AST)
    if any(c in ast_n for c in LIVE_AST):
        metrics["live_ast"] = sum(acc[c] * n[c] for c in LIVE_AST if c in acc) / sum(n.get(c, 0) for c in LIVE_AST)
    halluc = [acc[c] for c in ("irrelevance", "live_irrelevance") if c in acc]
    if halluc:
        metrics["hallucination"] = sum(halluc) / len(halluc)
    if "live_relevance" in acc:
        metrics["relevance"] = acc["live_relevance"]
    metrics["ast_missing"] = [c for c in NON_LIVE_AST + LIVE_AST if c not in ast_n]
    value = stderr = None
    if ast_n:
        coef = _coefficients(ast_n)
        value = sum(coef[c] * acc[c] for c in coef)
        var = sum(coef[c] ** 2 * _var(by[c]) / n[c] for c in coef)
        stderr = 100 * var ** 0.5 if all(n[c] > 1 for c in coef) else None
    metrics["ast_summary"] = value
    return {"metric": "ast_summary", "value": value, "stderr": stderr, "metrics": metrics}


def _var(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


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
            ok += grade(e, "[" + ", ".join(calls) + "]", "prompt")["correct"]
        res[cat] = f"{ok}/{len(entries)}"
    return res


if __name__ == "__main__":
    print(self_check(sys.argv[1] if len(sys.argv) > 1 else "data/eval/bfcl"))
