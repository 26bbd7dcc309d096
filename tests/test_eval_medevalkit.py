"""Table 2 scored as the paper did: the thinking model's every benchmark by generation with MedEvalKit's prompts,
the answer after the reasoning, the model's own budget; log-likelihood only when asked. Generations are stubbed
(the prompts and grading are what is checked); the expected prompts are MedEvalKit's, written out by hand from
alibaba-damo-academy/MedEvalKit (utils/question_formats.py, utils/<benchmark>/<benchmark>.py). Fast tier."""

import json

import pytest

from common.declarations import suite_benchmarks
from evaluation import evaluate as ev
from evaluation.mcq import grade_mcq, mcq_items, option_text_choice, prompt, scoring_mode
from tests.conftest import REPO
from tests.test_eval_thinking import BUDGET, main, stub_generate, thinking_tiny

MEK_DIRECT = "Answer with the option's letter from the given choices directly."
MEK_BOXED = 'Answer with the option\'s letter from the given choices and put the letter in one "\\boxed{}".'


def declared(name: str) -> dict:
    from omegaconf import OmegaConf

    return {**OmegaConf.to_container(OmegaConf.load(REPO / "configs/benchmark" / f"{name}.yaml")), "name": name}


def test_prompts_are_medevalkits_character_for_character():
    # MedQA_USMLE / MedMCQA: choices "A. text"; get_multiple_choice_prompt opens with a newline
    assert prompt("Which drug?", ["Aspirin", "Heparin"]) == (
        "\nQuestion: Which drug?\nOptions: \nA. Aspirin\nB. Heparin\n" + MEK_DIRECT)
    assert prompt("Which drug?", ["Aspirin", "Heparin"], thinking=True).endswith("\nB. Heparin\n" + MEK_BOXED)
    # PubMedQA: f"Context: {context}" + "\n" + the prompt, choices written "A.yes"
    assert prompt("Does it work?", ["yes", "no", "maybe"], context="Line one.\nLine two.", option_sep=".",
                  thinking=True) == ("Context: Line one.\nLine two.\n\nQuestion: Does it work?\nOptions: \n"
                                     "A.yes\nB.no\nC.maybe\n" + MEK_BOXED)


def test_openlifescienceai_pubmedqa_rows_are_read_by_both_scorers(tmp_path):
    """openlifescienceai/pubmedqa nests its fields under `data` and letters the answer; the generative path and the
    log-likelihood task both read it (the row shape is the one MedEvalKit's PubMedQA.construct_messages reads)."""
    row = {"data": {"Question": "Is X linked to Y?", "Context": ["First.", "Second."],
                    "Options": {"A": "yes", "B": "no", "C": "maybe"}, "Correct Option": "C"}, "id": "1"}
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(row) + "\n")
    bench = declared("pubmedqa") | {"source": "local", "local": {"data_files": {"test": str(f)}, "test_split": "test"}}
    (item,), _ = mcq_items(bench, thinking=True)
    assert item["gold"] == "C" and item["messages"][0]["content"] == (
        "Context: First.\nSecond.\n\nQuestion: Is X linked to Y?\nOptions: \nA.yes\nB.no\nC.maybe\n" + MEK_BOXED)
    import importlib.util

    spec = importlib.util.spec_from_file_location("task_utils", REPO / "evaluation/tasks/task_utils.py")
    tu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tu)
    assert tu.pubmedqa_doc_to_text(row) == "Abstract: First.\nSecond.\nQuestion: Is X linked to Y?\nAnswer:"
    assert tu.pubmedqa_doc_to_target(row) == 2
    assert tu.pubmedqa_doc_to_target({"QUESTION": "q", "CONTEXTS": ["c"], "final_decision": "no"}) == 1


@pytest.mark.parametrize("name", ["mmlu", "medmcqa", "medqa", "pubmedqa", "cluewsc"])
def test_thinking_models_generate_every_table2_multiple_choice_benchmark(name):
    bench = declared(name)
    assert name in suite_benchmarks({"paper": "table2"})
    assert scoring_mode(bench, thinking=True) == "generate"
    assert scoring_mode(bench, thinking=False) == "loglikelihood"        # Tables 1 and 3: lm-eval, as before
    assert scoring_mode(bench | {"mode": "loglikelihood"}, thinking=True) == "loglikelihood"  # the explicit option
    with pytest.raises(ValueError, match="no `generate:` block"):
        scoring_mode({"name": name, "mode": "generate"}, thinking=False)


def test_table2_default_run_generates_with_the_models_budget_and_grades_after_the_reasoning(tmp_path, monkeypatch):
    """A thinking model on Table 2's multiple-choice benchmarks with no override: every one is generated, with the
    model's budget, graded on the text after </think>; mode=loglikelihood still gives lm-eval's scoring."""
    thinking_tiny(monkeypatch)
    seen = []
    stub_generate(monkeypatch, {i: "Perhaps \\boxed{A}... no.</think>\n\n\\boxed{B}" for i in range(8)}, seen)
    res = main(tmp_path, "benchmarks=[mmlu,medmcqa,medqa,pubmedqa,cluewsc]", "limit=2")
    for name, r in res.items():
        assert r["settings"]["scoring"] == "generative multiple choice", name
        assert r["settings"]["max_new_tokens"] == BUDGET and r["settings"]["thinking"] is True
        assert r["settings"]["prompt"] in (MEK_BOXED, '请直接使用给定选项中的选项字母来回答该问题,并将答案包裹在"\\boxed{}"里')
        rows = [json.loads(x) for x in (tmp_path / "metrics/tiny/items" / f"{name}.jsonl").read_text().splitlines()]
        assert {p for r_ in rows for p in r_["preds"]} == {"B"}  # the box after </think>, never the one before
    assert set(seen) == {BUDGET}
    ll = main(tmp_path, "benchmarks=[medmcqa]", "limit=2", "bench.medmcqa.mode=loglikelihood")["medmcqa"]
    assert ll["settings"]["scoring"] == "log-likelihood"


def test_cluewsc_generates_in_medevalkits_chinese_prompt(tmp_path):
    bench = declared("cluewsc") | {"source": "local"}
    bench["local"] = {"data_files": {"validation": str(REPO / "tests/fixtures/eval/cluewsc/dev.json")},
                      "test_split": "validation"}
    items, _ = mcq_items(bench, thinking=False)
    text = items[0]["messages"][0]["content"]
    assert text.startswith("\n问题： ") and "指的是" in text and "\n选项： \nA. 是\nB. 否\n请直接使用" in text
    golds = [json.loads(x)["label"] for x in (REPO / "tests/fixtures/eval/cluewsc/dev.json").read_text().splitlines()]
    assert [it["gold"] for it in items] == ["A" if g == "true" else "B" for g in golds]


def test_an_answer_that_is_an_options_text_counts_and_nothing_fuzzy_does():
    item = {"letters": "ABC", "options": ["yes", "no", "maybe"], "gold": "A"}
    assert grade_mcq(item, "\\boxed{yes}") == {"pred": "A", "correct": True}
    assert option_text_choice("Maybe.", item["options"], "ABC") == "C"
    assert option_text_choice("yes, probably", item["options"], "ABC") is None     # no partial match
    assert grade_mcq(item, "\\boxed{B}")["pred"] == "B"                             # a letter still wins


def test_mmlu_generate_mode_names_the_all_config(monkeypatch):
    """cais/mmlu has one config per subject and `all`; load_dataset without a name raises "Config name is
    missing", so the generative path must pass `all` (MedEvalKit's MMLU does the same)."""
    import datasets

    from evaluation import mcq

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or [])
    monkeypatch.setattr(mcq, "choose_source", lambda bench: "hub")
    mcq._rows(declared("mmlu"))
    assert calls == [(("cais/mmlu", "all"), {"split": "test"})]
    calls.clear()
    mcq._rows(declared("medqa"))  # MedEvalKit's MedQA_USMLE copy, not lm-eval's -hf one
    assert calls == [(("GBaker/MedQA-USMLE-4-options", None), {"split": "test"})]


def test_evaluate_records_the_concrete_mode():
    assert ev.with_mode(declared("mmlu"), {"name": "m", "thinking": True})["mode"] == "generate"
    assert ev.with_mode(declared("mmlu"), {"name": "m"})["mode"] == "loglikelihood"
    assert "mode" not in ev.with_mode(declared("gsm8k"), {"name": "m", "thinking": True})
