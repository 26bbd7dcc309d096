"""Answer verification (math-verify, gold first) and the reference teacher's formatting."""

import pytest

from data_pipeline.teacher import conversation, reference_response
from data_pipeline.verify import check, parse_gold


@pytest.mark.parametrize("gold,response", [
    ("18", "She makes 9 * 2 = $18.\nThe final answer is $\\boxed{18}$."),
    ("1,600", "so \\boxed{1600}"),
    ("\\frac{1}{2}", "We get \\boxed{0.5}."),
    ("x^2+1", "Expanding, \\boxed{1 + x^{2}}"),
    ("(-2, 2)", "The set is \\boxed{(-2,2)}"),
    ("10%", "the rate is \\boxed{10}"),  # a percent gold compares by its number
    ("$\\frac{3}{4}$", "\\boxed{\\frac{3}{4}}"),
])
def test_correct(gold, response):
    g = parse_gold(gold)
    assert g, f"gold {gold!r} should parse"
    assert check(g, response)[0] == "correct"


@pytest.mark.parametrize("gold,response", [
    ("18", "The final answer is $\\boxed{19}$."),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
    ("(-2, 2)", "\\boxed{[-2, 2]}"),
    ("12", "A cube has $\\boxed{8}$ edges."),
])
def test_incorrect(gold, response):
    assert check(parse_gold(gold), response)[0] == "incorrect"


def test_unparseable_and_empty_responses():
    g = parse_gold("7")
    assert check(g, "I am not sure what the question means.")[0] == "unparseable"
    assert check(g, "")[0] == "empty" and check(g, "  \n")[0] == "empty"


@pytest.mark.parametrize("gold", ["\\text{ }", "\\quad", "", "?"])
def test_unparseable_gold(gold):
    assert parse_gold(gold) == []


def test_reference_response_formats():
    rec = {"answer": "7", "solution": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"}
    assert reference_response(rec, "boxed") == "Tom has 3 + 4 = <<3+4=7>>7 apples.\nThe final answer is $\\boxed{7}$."
    assert reference_response(rec, "verbatim") == rec["solution"]
    assert reference_response({"answer": "81", "solution": "$3^4 = 81$."}) == \
        "$3^4 = 81$.\nThe final answer is $\\boxed{81}$."
    boxed = {"answer": "4", "solution": "so $x = \\boxed{4}$."}
    assert reference_response(boxed) == boxed["solution"]
    assert reference_response({"answer": "4"}) == ""  # no reference solution: the verdict will be `empty`
    with pytest.raises(ValueError, match="reference_format"):
        reference_response(rec, "latex")
    # GSM8K's '#### 2,400' survives the conversion and still verifies against its own gold
    gsm = {"answer": "2,400", "solution": "1200 * 2 = 2400 eggs.\n#### 2,400"}
    assert check(parse_gold(gsm["answer"]), reference_response(gsm))[0] == "correct"


def test_prompt_template_keeps_braces():
    msgs = conversation("What is {x}?", {"system": None, "template": "{problem}\nPut it in \\boxed{}."})
    assert msgs == [{"role": "user", "content": "What is {x}?\nPut it in \\boxed{}."}]
    assert conversation("q", {"system": "Be brief.", "template": "{problem}"})[0] == {"role": "system",
                                                                                     "content": "Be brief."}
