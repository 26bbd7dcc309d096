"""BFCL: decoding generated calls and our AST matcher against bfcl-eval's ground-truth format. Fast tier."""

import json

import pytest

from evaluation import bfcl
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval" / "bfcl"
TRI = {"name": "calculate_triangle_area", "description": "Area.", "parameters": {"type": "dict", "properties": {
    "base": {"type": "integer"}, "height": {"type": "integer"}, "unit": {"type": "string"},
    "scale": {"type": "float"}, "tags": {"type": "array", "items": {"type": "string"}},
    "opts": {"type": "dict", "properties": {"round": {"type": "boolean"}}}}, "required": ["base", "height"]}}
ANSWER = {"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", "cm", ""], "scale": ["", 1.0],
                                      "tags": ["", ["Red Apple", "pear"]], "opts": ["", {"round": [True]}]}}


def entry(category, answers=None, functions=(TRI,)):
    return {"id": "x", "category": category, "function": list(functions),
            "ground_truth": answers if answers is not None else [ANSWER]}


def grade(category, text, **kw):
    return bfcl.grade(entry(category, **kw), text)


@pytest.mark.parametrize("text", [
    "[calculate_triangle_area(base=10, height=5)]",
    "calculate_triangle_area(base=10, height=5, unit='units')",                       # no brackets
    "```python\n[calculate_triangle_area(height=5, base=10, unit='CM')]\n```",           # fenced, case-insensitive
    "[calculate_triangle_area(base=10, height=5, scale=1)]",                            # int accepted for float
    "[calculate_triangle_area(base=10, height=5, tags=['red apple', 'PEAR'])]",          # strings normalised
    "[calculate_triangle_area(base=10, height=5, opts={'round': True})]",
    '<tool_call>\n{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}\n</tool_call>',
    '{"name": "calculate_triangle_area", "arguments": "{\\"base\\": 10, \\"height\\": 5}"}',  # args as a string
    '<think>base is 10</think>[calculate_triangle_area(base=10, height=5)]',
])
def test_right_calls(text):
    g = grade("simple", text)
    assert g["correct"], g


@pytest.mark.parametrize("text, why", [
    ("[calculate_triangle_area(base=10, height=6)]", "'height'"),                       # wrong value
    ("[calculate_triangle_area(base=10)]", "missing required parameter 'height'"),       # missing
    ("[calculate_triangle_area(base=10, height=5, colour='red')]", "unexpected parameter 'colour'"),  # extra
    ("[calculate_triangle_area(base='10', height=5)]", "expected integer, got str"),    # mistyped
    ("[calculate_triangle_area(base=10.0, height=5)]", "expected integer, got float"),  # float for integer
    ("[calculate_triangle_area(base=True, height=5)]", "expected integer, got bool"),   # bool is not an int here
    ("[calculate_triangle_area(base=10, height=5, unit='inches')]", "'unit'"),
    ("[calculate_triangle_area(base=10, height=5, tags=['pear'])]", "'tags'"),
    ("[calculate_triangle_area(base=10, height=5, opts={'round': False})]", "'opts'"),
    ("[area(base=10, height=5)]", "wrong function"),
    ("[calculate_triangle_area(base=10, height=5), calculate_triangle_area(base=10, height=5)]", "2 calls"),
    ("The area is 25.", "no function call"),
    ("[calculate_triangle_area(10, 5)]", "no function call"),                           # positional: not decodable
])
def test_wrong_calls(text, why):
    g = grade("simple", text)
    assert not g["correct"] and why in g["error"], g


def test_optional_parameter_must_be_marked_optional():
    strict = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["cm"]}}]  # no "" -> required
    assert "omitted" in grade("simple", "[calculate_triangle_area(base=10, height=5)]", answers=strict)["error"]


def test_dotted_names_and_fc_underscores():
    fn = {"name": "math.factorial", "parameters": {"type": "dict", "properties": {"number": {"type": "integer"}},
                                                   "required": ["number"]}}
    ans = [{"math.factorial": {"number": [5]}}]
    assert grade("simple", "[math.factorial(number=5)]", answers=ans, functions=[fn])["correct"]
    assert grade("simple", '{"name": "math_factorial", "arguments": {"number": 5}}', answers=ans, functions=[fn])[
        "correct"]  # FC models replace '.' by '_' (tool names forbid dots)


def test_parallel_any_order_and_counts():
    fn = {"name": "play", "parameters": {"type": "dict", "properties": {"artist": {"type": "string"},
                                                                        "minutes": {"type": "integer"}}, "required": []}}
    ans = [{"play": {"artist": ["taylor swift"], "minutes": [20]}}, {"play": {"artist": ["maroon 5"], "minutes": [15]}}]
    kw = {"answers": ans, "functions": [fn]}
    assert grade("parallel", "[play(artist='Maroon 5', minutes=15), play(artist='Taylor Swift', minutes=20)]", **kw)[
        "correct"]
    assert not grade("parallel", "[play(artist='Maroon 5', minutes=15)]", **kw)["correct"]                 # missing one
    assert not grade("parallel", "[play(artist='Maroon 5', minutes=15), play(artist='Maroon 5', minutes=15)]",
                     **kw)["correct"]                                                                      # duplicate


def test_irrelevance_and_relevance():
    assert grade("irrelevance", "None of the functions can compute this.", answers=[])["correct"]
    assert grade("irrelevance", "[]", answers=[])["correct"]                          # an empty call list is no call
    assert not grade("irrelevance", "[calculate_triangle_area(base=1, height=2)]", answers=[])["correct"]
    assert grade("live_relevance", "[calculate_triangle_area(base=1, height=2)]", answers=[])["correct"]
    assert not grade("live_relevance", "I cannot do that.", answers=[])["correct"]


def test_fixtures_load_and_ground_truth_passes():
    for cat in ["simple", "multiple", "parallel", "parallel_multiple", "live_simple"]:
        for e in bfcl.load_category(FIX, cat):
            calls = [f"{n}({', '.join(f'{p}={bfcl._pick(bfcl._first(v))!r}' for p, v in a.items() if bfcl._first(v) != '')})"
                     for gt in e["ground_truth"] for n, a in gt.items()]
            assert bfcl.grade(e, "[" + ", ".join(calls) + "]")["correct"], e["id"]
    assert [e["category"] for e in bfcl.load_category(FIX, "irrelevance")] == ["irrelevance"]


def test_prompt_modes():
    (e,) = [x for x in bfcl.load_category(FIX, "live_simple")]
    msgs, tools = bfcl.build_prompt(e, "prompt")
    assert tools is None and msgs[0]["role"] == "system" and "ChaDri.change_drink" in msgs[0]["content"]
    assert "[func_name1(params_name1=params_value1" in msgs[0]["content"] and msgs[-1]["role"] == "user"
    msgs, tools = bfcl.build_prompt(e, "fc")
    assert msgs == e["question"][0] and tools[0]["type"] == "function"
    params = tools[0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["new_preferences"]["type"] == "object"  # dict->object
    assert e["function"][0]["parameters"]["type"] == "dict"  # the entry itself is left untouched


def test_bad_data_files(tmp_path):
    (tmp_path / "BFCL_v4_simple_python.json").write_text('{"id": "a", "question": "not nested"}\n')
    with pytest.raises(bfcl.BFCLDataError, match=r"BFCL_v4_simple_python.json:1: expected"):
        bfcl.load_category(tmp_path, "simple")
    good = (FIX / "BFCL_v4_multiple.json").read_text()
    (tmp_path / "BFCL_v4_multiple.json").write_text(good)
    with pytest.raises(bfcl.BFCLDataError, match="possible_answer"):
        bfcl.load_category(tmp_path, "multiple")  # no ground-truth file
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "possible_answer" / "BFCL_v4_multiple.json").write_text(json.dumps({"id": "multiple_0"}) + "\n")
    with pytest.raises(bfcl.BFCLDataError, match="ground_truth must be"):
        bfcl.load_category(tmp_path, "multiple")
    with pytest.raises(bfcl.BFCLDataError, match="unknown BFCL category"):
        bfcl.load_category(tmp_path, "multi_turn_base")


def test_aggregate():
    rows = [{"category": "simple", "correct": 1.0}, {"category": "simple", "correct": 0.0},
            {"category": "multiple", "correct": 1.0}, {"category": "live_simple", "correct": 1.0},
            {"category": "live_multiple", "correct": 0.0}, {"category": "live_multiple", "correct": 0.0},
            {"category": "irrelevance", "correct": 1.0}]
    agg = bfcl.aggregate(rows)
    assert agg["acc_simple"] == 50 and agg["non_live_ast"] == 75             # unweighted over categories
    assert agg["live_ast"] == pytest.approx(100 / 3)                         # weighted by entries
    assert agg["hallucination"] == 100 and agg["n_live_multiple"] == 2


@pytest.mark.integration
def test_real_ground_truth_matches_itself():
    """Every ground truth of the shipped data, rendered as a call, must pass (a few data quirks excepted)."""
    from conftest import need

    data = REPO / "data" / "eval" / "bfcl"
    need("eval_data", (data / "BFCL_v4_simple_python.json").exists(), "run `make eval-data` for the real BFCL data")
    res = bfcl.self_check(data)
    passed = sum(int(v.split("/")[0]) for v in res.values())
    total = sum(int(v.split("/")[1]) for v in res.values())
    assert total > 2000 and passed / total > 0.99, res
