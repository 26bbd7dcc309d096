"""Differential test: evaluation.bfcl.grade against the official bfcl-eval checker and Qwen decoders. `bfcl` tier.

    make bfcl-venv && HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -m bfcl tests/test_bfcl_official.py

From a seeded sample of the package's own entries (every single-turn Python category), each ground truth is
rendered as a completion and perturbed: Python and <tool_call> renderings, fences, think blocks, brackets,
parameter and call order, optional parameters dropped, given alternative values or "", extra parameters, type
coercions (int/float/str/bool, list/tuple), string case and punctuation, dotted names written with underscores,
wrong names, positional calls, unclosed/unspaced/bare-JSON tool calls, JSON-string arguments, prose around a
call, refusals and empty lists. Every completion is graded in both modes by ours and by the official code
(evaluation/bfcl_official.py in .venv-bfcl); the verdicts must agree on every pair.

Where the official code raises (its runner would stop), ours must grade the completion wrong; that is the one
allowed difference in kind. Differences by construction, never produced by these perturbations: an arithmetic
argument (a BinOp) is computed by ours from literals only, where BFCL eval()s its source text (so BFCL also
accepts names and calls that its module's globals resolve, and would run any code in it); a power with an
exponent over 4096 is a decode failure in ours (BFCL computes it, possibly for ever).
"""

import copy
import json
import random
import subprocess

import pytest

from evaluation import bfcl
from tests.conftest import REPO

pytestmark = pytest.mark.bfcl
PER_CATEGORY = 60  # entries sampled per category (all of the smaller ones); ~25k graded pairs in ~1 min
SEED = 20260323


def _first(allowed):
    return bfcl._pick(bfcl._first(allowed))


def _gt_calls(entry):
    """The ground truth as [(name, {param: first allowed value})], optional parameters left out."""
    return [(n, {p: _first(v) for p, v in a.items() if bfcl._first(v) != ""}) for gt in entry["ground_truth"]
            for n, a in gt.items()]


def _fake_calls(entry):
    """A plausible call of the entry's first function (for the no-answer categories)."""
    f = entry["function"][0]
    fill = {"string": "x", "integer": 1, "float": 1.5, "boolean": True, "array": [], "tuple": [], "dict": {}}
    props = f["parameters"].get("properties", {})
    return [(f["name"], {p: fill.get(props.get(p, {}).get("type"), "x") for p in f["parameters"].get("required", [])})]


def py(calls, brackets=True):
    body = ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for n, a in calls)
    return f"[{body}]" if brackets else body


def fc(calls, fmt="<tool_call>\n{}\n</tool_call>", as_string=False):
    blocks = [json.dumps({"name": n, "arguments": json.dumps(a) if as_string else a}) for n, a in calls]
    return "\n".join(fmt.format(b) for b in blocks)


def _coerce(v):
    """Type variants of a value: the checker's int/float/str/bool/list/tuple rules."""
    if isinstance(v, bool):
        return ["true", int(v)]
    if isinstance(v, int):
        return [float(v), str(v), v + 1]
    if isinstance(v, float):
        return [int(v), str(v)] + ([] if v != int(v) else [int(v) + 1])
    if isinstance(v, str):
        out = [v.upper(), v.replace(" ", "_"), v + " extra"]
        try:
            out.append(float(v))
        except ValueError:
            pass
        return out
    if isinstance(v, list):
        return [tuple(v), v[::-1], v[:-1]] if v else [(), ["x"]]
    if isinstance(v, dict):
        return [{k: str(x) for k, x in v.items()}, {**v, "extra": 1}] if v else [{"a": 1}]
    return []


def _value_variants(entry, calls, rng):
    """Calls with one parameter changed: coerced, another allowed value, "" or dropped when optional, extra."""
    out = []
    answers = {n: a for gt in entry.get("ground_truth", []) for n, a in gt.items()}
    for ci, (name, args) in enumerate(calls):
        allowed = answers.get(name, {})
        for p in list(args)[:3]:
            for alt in _coerce(args[p])[:3]:
                out.append((ci, {**args, p: alt}))
            others = [a for a in allowed.get(p, []) if a != "" and a != args[p]]
            if others:
                out.append((ci, {**args, p: bfcl._pick(others[0])}))
        for p, vals in allowed.items():
            if "" in vals:
                out.append((ci, {k: v for k, v in args.items() if k != p}))
                out.append((ci, {**args, p: ""}))
        if args:
            out.append((ci, {k: v for k, v in args.items() if k != rng.choice(list(args))}))
        out.append((ci, {**args, "extra_param": 1}))
    return [[*calls[:ci], (calls[ci][0], a), *calls[ci + 1:]] for ci, a in out]


def completions(entry, rng):
    """Completion texts built from the entry's ground truth (or a fake call) and their perturbations."""
    calls = _gt_calls(entry) if "ground_truth" in entry else _fake_calls(entry)
    texts = []
    for cs in [calls, calls[::-1], [(n, dict(reversed(list(a.items())))) for n, a in calls],
               [(n.replace(".", "_"), a) for n, a in calls], [(n + "_v2", a) for n, a in calls], calls + calls[:1],
               *_value_variants(entry, calls, rng)]:
        texts += [py(cs), fc(cs)]
    p, j = py(calls), fc(calls)
    texts += [py(calls, brackets=False), f"```python\n{p}\n```", f"```\n{p}\n```", f"```json\n{j}\n```",
              f"<think>\nLet me think.\n</think>\n\n{p}", f"<think>\nhmm\n</think>\n\n{j}", f"</think>{p}",
              f"'{p}'", p + "\nDone.", "Sure! " + p,
              "Sure, calling " + py(calls, brackets=False) + " now.",
              ", ".join(f"{n}({', '.join(repr(v) for v in a.values())})" for n, a in calls),  # positional
              "[" + ", ".join(f"{n}()" for n, _ in calls) + "]",
              fc(calls, fmt="<tool_call>{}</tool_call>"), fc(calls, fmt="<tool_call>\n{}\n"),
              j.rsplit("\n</tool_call>", 1)[0], fc(calls, as_string=True), fc(calls, fmt="{}"),
              json.dumps([{"name": n, "arguments": a} for n, a in calls]),
              "<tool_call>\nnot json\n</tool_call>\n" + j, '<tool_call>\n["a"]\n</tool_call>',
              '<tool_call>\n{"name": "f"}\n</tool_call>',
              "I cannot help with that: none of the functions applies.", "[]", "", "None", "[None]", "[1, 2]",
              "[f(x=-y)]", "[f(x=2*3, y='a' + 'b')]", "[f(x=lambda: 1)]", "[f(x=a.b)]", "[f(x=g(1), y=h(z=2))]",
              "[f(x=d['k'])]", "[f(x={1, 2})]", "[f(x=+5)]", "[f(**kw)]"]
    return texts


def _sample(data_dir):
    rng = random.Random(SEED)
    entries = []
    for cat in bfcl.CATEGORIES:
        es = bfcl.load_category(data_dir, cat)
        entries += rng.sample(es, min(PER_CATEGORY, len(es)))
    return entries, rng


def _official(bfcl_python, rows):
    proc = subprocess.run([str(bfcl_python), str(REPO / "evaluation" / "bfcl_official.py")], check=False, cwd="/",
                          input="".join(json.dumps(r) + "\n" for r in rows), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line)["verdicts"] for line in proc.stdout.splitlines()]


def test_grade_agrees_with_official_checker(bfcl_python):
    site = subprocess.run([str(bfcl_python), "-c", "import bfcl_eval, os; print(os.path.dirname(bfcl_eval.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    entries, rng = _sample(f"{site}/data")
    rows = [{"entry": {k: e[k] for k in ("id", "category", "function", "ground_truth") if k in e},
             "cases": [[m, t] for t in completions(e, rng) for m in ("prompt", "fc")]} for e in entries]
    official = _official(bfcl_python, rows)
    assert len(official) == len(rows)
    total, disagree, crashed, right = 0, [], 0, 0
    for row, verdicts in zip(rows, official):
        for (mode, text), theirs in zip(row["cases"], verdicts):
            ours = bfcl.grade(copy.deepcopy(row["entry"]), text, mode)
            total += 1
            crashed += theirs["correct"] is None
            expected = bool(theirs["correct"])  # an official crash counts as wrong
            right += expected
            if ours["correct"] != expected:
                disagree.append((row["entry"]["id"], mode, text[:200], ours["error"], theirs["error"]))
    print(f"[bfcl-diff] {total} graded pairs, {len(disagree)} disagreements, {crashed} official crashes, {right} right")
    assert total > 10000 and 0.1 < right / total < 0.9, (right, total)  # both verdicts well represented
    assert not disagree, f"{len(disagree)} of {total} disagree; first: " + "\n".join(map(repr, disagree[:15]))
