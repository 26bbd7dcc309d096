"""BFCL: decoding generated calls (BFCL's Qwen prompt/FC handlers), the AST checker, the aggregate. Fast tier.

The `bfcl` tier (tests/test_bfcl_official.py) diffs the same grade() against the official package."""

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


def grade(category, text, mode="prompt", **kw):
    return bfcl.grade(entry(category, **kw), text, mode)


@pytest.mark.parametrize("text", [
    "[calculate_triangle_area(base=10, height=5)]",
    "calculate_triangle_area(base=10, height=5, unit='units')",                       # no brackets
    "```\n[calculate_triangle_area(height=5, base=10, unit='CM')]\n```",                 # bare fence, any case
    "[calculate_triangle_area(base=10, height=5, scale=1)]",                            # int accepted for float
    "[calculate_triangle_area(base=10, height=5, tags=['red apple', 'PEAR'])]",          # strings normalised
    "[calculate_triangle_area(base=10, height=5, opts={'round': True})]",
    "[calculate_triangle_area(base=10, height=5, unit='')]",                            # "" for an optional one
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
    ("[calculate_triangle_area(10, 5)]", "missing required parameter 'base'"),          # positional args dropped
])
def test_wrong_calls(text, why):
    g = grade("simple", text)
    assert not g["correct"] and why in g["error"], g


def test_optional_parameter_must_be_marked_optional():
    strict = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["cm"]}}]  # no "" -> required
    assert "omitted" in grade("simple", "[calculate_triangle_area(base=10, height=5)]", answers=strict)["error"]


def test_fenced_python_block_is_not_decoded():
    # BFCL strips backticks and newlines only, so a ```python fence leaves `python` in front of the call
    g = grade("simple", "```python\n[calculate_triangle_area(base=10, height=5)]\n```")
    assert not g["correct"] and g["decode_error"], g


def test_positional_call_is_a_call_for_irrelevance():
    # BFCL drops positional arguments and still counts the call, so an irrelevance item is failed
    assert not grade("irrelevance", "[calculate_triangle_area(10, 5)]", answers=[])["correct"]


def test_empty_string_for_optional_parameter_is_accepted():
    assert grade("simple", "[calculate_triangle_area(base=10, height=5, unit='')]")["correct"]


FC = '<tool_call>\n{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}\n</tool_call>'


def test_fc_mode_decodes_only_closed_tool_call_blocks():
    assert grade("simple", FC, "fc")["correct"]
    assert grade("simple", "<think>\nok\n</think>\n\n" + FC, "fc")["correct"]
    unclosed = FC.removesuffix("\n</tool_call>")
    bare = '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}'
    for text in (unclosed, bare, FC.replace("\n", "")):  # unclosed final tag, bare JSON, no newlines
        assert not grade("simple", text, "fc")["correct"], text
        assert grade("irrelevance", text, "fc", answers=[])["correct"], text  # nothing decodes: no call


def test_fc_mode_python_call_in_text_is_no_call():
    text = "I will call [calculate_triangle_area(base=10, height=5)]"
    assert grade("irrelevance", text, "fc", answers=[])["correct"]
    assert not grade("simple", "[calculate_triangle_area(base=10, height=5)]", "fc")["correct"]


def test_fc_mode_json_string_arguments_are_rejected():
    text = FC.replace('{"base": 10, "height": 5}', '"{\\"base\\": 10, \\"height\\": 5}"')
    assert not grade("simple", text, "fc")["correct"]


def test_prompt_mode_tool_call_block_is_not_decoded():
    assert not grade("simple", FC, "prompt")["correct"]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be"):
        grade("simple", FC, "json")


def test_dotted_names_must_match_exactly():
    fn = {"name": "math.factorial", "parameters": {"type": "dict", "properties": {"number": {"type": "integer"}},
                                                   "required": ["number"]}}
    ans = [{"math.factorial": {"number": [5]}}]
    assert grade("simple", "[math.factorial(number=5)]", answers=ans, functions=[fn])["correct"]
    fc = '<tool_call>\n{"name": "math_factorial", "arguments": {"number": 5}}\n</tool_call>'
    assert not grade("simple", fc, "fc", answers=ans, functions=[fn])["correct"]  # Qwen handlers: no '_' -> '.'
    assert not grade("simple", "[math_factorial(number=5)]", answers=ans, functions=[fn])["correct"]


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
            assert bfcl.grade(e, "[" + ", ".join(calls) + "]", "prompt")["correct"], e["id"]
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
    m = agg["metrics"]
    assert m["acc_simple"] == 50 and m["non_live_ast"] == 75                 # unweighted over categories
    assert m["live_ast"] == pytest.approx(100 / 3)                           # weighted by entries
    assert m["hallucination"] == 100 and m["n_live_multiple"] == 2
    assert agg["metric"] == "ast_summary" and agg["value"] == pytest.approx((75 + 100 / 3) / 2)
    assert m["ast_missing"] == ["parallel", "parallel_multiple", "live_parallel", "live_parallel_multiple"]


def test_aggregate_headline_ignores_irrelevance_and_relevance():
    # a model that never calls a tool: all AST items wrong, all irrelevance right, relevance wrong
    rows = [{"category": c, "correct": 0.0} for c in bfcl.NON_LIVE_AST + bfcl.LIVE_AST + ["live_relevance"]]
    rows += [{"category": c, "correct": 1.0} for c in ("irrelevance", "live_irrelevance") for _ in range(50)]
    agg = bfcl.aggregate(rows)
    assert agg["value"] == 0 and agg["metrics"]["hallucination"] == 100 and agg["metrics"]["relevance"] == 0
    assert agg["metrics"]["ast_missing"] == []


def test_aggregate_stderr():
    rows = [{"category": "simple", "correct": float(i % 2)} for i in range(4)]
    rows += [{"category": "live_simple", "correct": 1.0} for _ in range(4)]
    agg = bfcl.aggregate(rows)
    # value = (50 + 100) / 2; var = (1/2)^2 * (1/3) / 4 from simple only (live_simple has none)
    assert agg["value"] == 75 and agg["stderr"] == pytest.approx(100 * (0.25 * (1 / 3) / 4) ** 0.5)


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
