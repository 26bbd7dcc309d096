"""Grading units: thinking outputs (the answer after the last </think>), \\boxed{} extraction, math-verify
equivalence, multiple-choice extraction, pass@k, the IFEval checker (lm-eval's, on responses that do and do not
follow), and the seeded subset. Fast tier."""

import json
import math
from types import SimpleNamespace

import pytest

from evaluation.grading import (
    extract_boxed,
    extract_choice,
    extract_math_answer,
    final_answer,
    final_answers,
    gold_math_answer,
    grade_math,
    math_equal,
    mean_stderr,
    pass_at_k,
)
from evaluation.harness import hub_samples, select_subset
from evaluation.lm_eval_bench import prepare
from tests.conftest import REPO


@pytest.mark.parametrize("text, boxes", [
    (r"so \boxed{42}.", ["42"]),
    (r"\boxed{\frac{1}{2}}", [r"\frac{1}{2}"]),                        # nested braces
    (r"\boxed{\left\{1, 2\right\}} and \boxed{x^{2}}", [r"\left\{1, 2\right\}", "x^{2}"]),
    (r"first \boxed{3} then \fbox{4}", ["3", "4"]),                     # several boxes, \fbox too
    (r"\boxed 7", ["7"]),                                                # no braces
    (r"\boxed{unclosed {", []),                                          # never closed: nothing
    ("no box at all: 12", []),
])
def test_extract_boxed(text, boxes):
    assert extract_boxed(text) == boxes


@pytest.mark.parametrize("text, answer", [
    (r"First \boxed{3}, on reflection \boxed{5}.", "5"),                # the LAST box is the answer
    ("So the answer is 18.", "18"),                                      # no box: after 'answer is'
    ("We get 3 + 4 = 7 apples, then 7 * 2 = 14", "14"),                  # else the last number
    ("It costs 1,200 dollars", "1200"),
    ("I do not know.", None),
])
def test_extract_math_answer(text, answer):
    assert extract_math_answer(text) == answer


@pytest.mark.parametrize("gold, pred", [
    ("0.5", r"\frac{1}{2}"), ("72", "72.0"), ("(x+1)^2", "x^2+2x+1"), (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
    ("1000", "1,000"), ("18", r"\$18"), ("70", r"70^\circ"), ("2", "x=2"), ("1", "001"),
])
def test_math_equal_equivalent(gold, pred):
    assert math_equal(gold, pred)


@pytest.mark.parametrize("gold, pred", [("72", "73"), ("3", "3.5"), ("0.5", "5"), ("12", None), ("12", ""),
                                        ("2", "x=3")])
def test_math_equal_wrong(gold, pred):
    assert not math_equal(gold, pred)


def test_gold_and_grade():
    assert gold_math_answer("He has 3 * 4 = 12.\n#### 1,200") == "1200"    # GSM8K
    assert gold_math_answer("588") == "588"                               # AIME
    assert gold_math_answer(r"so $\boxed{\frac{3}{4}}$") == r"\frac{3}{4}"
    g = grade_math("#### 7", r"3 * 4 = 12, minus 5 is \boxed{7}")
    assert g == {"pred": "7", "correct": True}
    assert not grade_math("#### 7", r"\boxed{8}")["correct"]
    with pytest.raises(ValueError, match="gold"):
        math_equal("", "1")  # an empty gold is a data error, not a wrong answer


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(C)", "C"), ("D. Protamine", "D"), (r"The answer is \boxed{A}", "A"),
    ("After thinking, the answer is (B).", "B"), ("Answer: c", "C"),
    ("<think>Maybe A? No.</think>The correct option is D", "D"),     # letters inside <think> do not count
    ("I think A is wrong and B is right, so B", "B"), ("none of these", None), ("E", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text, "ABCD") == letter


def test_pass_at_k_and_stats():
    assert pass_at_k(4, 0, 1) == 0 and pass_at_k(4, 4, 2) == 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 4)
    mu, se = mean_stderr([1, 0, 1, 1])
    assert mu == 0.75 and se == pytest.approx(math.sqrt(0.25 / 4))
    assert mean_stderr([1.0])[1] is None


def test_select_subset_is_seeded_and_nested():
    a, b = select_subset(100, 10, 1), select_subset(100, 10, 1)
    assert a == b and len(a) == 10 and a == sorted(a) and a != list(range(10))
    assert set(a) <= set(select_subset(100, 30, 1))   # a larger limit keeps every item of a smaller one
    assert select_subset(5, 10, 1) == list(range(5)) and select_subset(5, None, 1) == list(range(5))


def test_hub_tasks_get_the_seeded_sample_of_their_size_not_the_first_n():
    task = lambda name, n: SimpleNamespace(task_name=name, eval_docs=[{}] * n)
    loaded = {"arc_easy": task("arc_easy", 570), "mmlu": {"mmlu_stem": {"mmlu_anatomy": task("mmlu_anatomy", 135),
                                                                          "mmlu_tiny": task("mmlu_tiny", 7)}}}
    got = hub_samples(loaded, 20, 1234)
    assert got == {"arc_easy": select_subset(570, 20, 1234), "mmlu_anatomy": select_subset(135, 20, 1234),
                   "mmlu_tiny": list(range(7))}  # a limit above a task's size keeps all of it
    assert got["arc_easy"] != list(range(20))
    hub = {"name": "arc_easy", "task": "arc_easy", "source": "hub", "hub": {"path": "allenai/ai2_arc"}}
    spec = prepare(hub, REPO, limit=20, seed=1234)
    assert (spec["limit"], spec["subset_seed"], spec["subset"]) == (20, 1234, "seeded random (seed 1234)")
    assert prepare(hub, REPO, limit=None, seed=1234)["subset"] == "all"


# Local data, the mini suite of the committed demo: the selections its tables were made from (data sizes from
# configs/benchmark/*.yaml; checked against the data files where `make eval-data` has built them).
DEMO_SIZES = {"data/eval/arc_easy/validation.jsonl": 570, "data/eval/piqa/validation.jsonl": 1838}


def test_local_selections_are_the_ones_the_committed_demo_results_used():
    checked = 0
    for path in sorted((REPO / "results" / "metrics").glob("demo-*/*.json")):
        res = json.loads(path.read_text())
        if res.get("data_source") not in DEMO_SIZES:
            continue
        size = DEMO_SIZES[res["data_source"]]
        if (REPO / res["data_source"]).exists():
            assert sum(1 for line in (REPO / res["data_source"]).open() if line.strip()) == size
        rows = [json.loads(line) for line in (REPO / res["items_file"]).read_text().splitlines() if line.strip()]
        seed = int(res["settings"]["subset"].removeprefix("seeded random (seed ").rstrip(")"))
        assert sorted(r["doc_id"] for r in rows) == select_subset(size, res["settings"]["limit"], seed), path
        checked += 1
    assert checked >= 20  # every demo run's arc_easy and piqa


@pytest.fixture(scope="module")
def ifeval_utils(nltk_punkt):
    """lm-eval's IFEval checker with punkt tables written from the PyPI carrier (as make eval-data does)."""
    from evaluation.lm_eval_bench import _need_punkt

    _need_punkt()
    from lm_eval.tasks.ifeval import utils

    return utils


def test_ifeval_checker(ifeval_utils):
    doc = {"key": 1, "prompt": "Describe a cat in lowercase, at least 2 sentences, no commas.",
           "instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_sentences",
                                   "punctuation:no_comma"],
           "kwargs": [{}, {"relation": "at least", "num_sentences": 2}, {}]}
    good = ifeval_utils.process_results(doc, ["a cat is small and soft. it likes to sleep in the sun."])
    assert good["prompt_level_strict_acc"] is True and good["inst_level_strict_acc"] == [True, True, True]
    bad = ifeval_utils.process_results(doc, ["A Cat, which is small."])  # uppercase, one sentence, a comma
    assert bad["prompt_level_strict_acc"] is False and bad["inst_level_strict_acc"] == [False, False, False]
    half = ifeval_utils.process_results(doc, ["a cat sleeps. it purrs, loudly."])  # only the comma fails
    assert half["inst_level_strict_acc"] == [True, True, False] and half["prompt_level_loose_acc"] is False


# ---- thinking outputs ---------------------------------------------------------------------------------------

def test_final_answer_of_a_thinking_model_is_after_the_last_close_tag():
    # Qwen3-Thinking-2507 prompts end in "<think>\n": the completion holds only the closing tag
    assert final_answer("A looks right... no, B.\n</think>\n\nThe answer is B", thinking=True) == "The answer is B"
    assert final_answer("x</think>draft</think> final", thinking=True) == "final"


def test_unterminated_reasoning_has_no_answer():
    assert final_answer("Let me think. The answer is probably A, but", thinking=True) is None
    assert final_answer("reasoning</think>", thinking=True) == ""          # closed, but answered nothing


def test_non_thinking_output_drops_only_paired_blocks():
    assert final_answer("<think>A?</think>B", thinking=False) == "B"
    assert final_answer("no tags: C", thinking=False) == "no tags: C"


def test_thinking_mcq_completion_ending_in_B_is_B():
    """The reported bug: no opening tag in the output, so the old paired-tag removal kept the reasoning and
    returned a letter from it."""
    out = "Checking each option.\nA. Warfarin: crosses the placenta, so no.\nB. Heparin: safe.\n</think>\n\nB"
    assert extract_choice(final_answer(out, thinking=True), "ABCD") == "B"


def test_lm_eval_filter_blanks_unterminated_responses():
    assert final_answers([["plan</think>\nhello world", "still thinking"]], [{}]) == [["hello world", ""]]


def test_unterminated_math_is_wrong_not_scored_on_reasoning():
    assert grade_math("#### 7", None) == {"pred": None, "correct": False}


# ---- multiple choice: the extraction conventions ------------------------------------------------------------

@pytest.mark.parametrize("text, letter", [
    ("The answer is a tricky one, but I pick C", "C"),        # 'a' is an article, not option A
    ("a patient with these signs most likely has D", "D"),    # a line starting 'a ...' is not option A
    ("A patient presents with fever; I would choose (C).", "C"),  # nor is a sentence starting 'A patient'
    ("Answer: **B**", "B"), ("The answer is option B because it binds heparin", "B"),
    ("Answer: a.", "A"),                                       # lower case only when it stands alone
    ("Heparin is the drug of choice in pregnancy.", None),     # no committed letter: no answer
    ("Of the options, A and C are wrong; the explanation continues at length.", None),
    ("**C**", "C"), ("C: Warfarin", "C"),
])
def test_extract_choice_conventions(text, letter):
    assert extract_choice(text, "ABCD") == letter


# ---- math extraction ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("gold, completion", [
    ("42", "The answer is: **42**"),
    ("60", "The answer is 60 minutes, i.e. 1 hour."),
    ("0.5", r"So half of them: $\frac{1}{2}$"),                 # unboxed LaTeX, not the last number (2)
    ("18", "So the answer is 18."),
])
def test_math_answer_without_a_box(gold, completion):
    assert grade_math(gold, completion)["correct"], extract_math_answer(completion)
