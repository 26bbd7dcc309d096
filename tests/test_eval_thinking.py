"""Thinking models (`thinking: true` in the model config) on every generative benchmark: the answer is the text
after the last </think>, an output that never closes its reasoning is wrong and counted
(metrics.unterminated_reasoning), and the generation budget is the model's. Generations are stubbed, so these
check the plumbing and the scores on known outputs. Fast tier."""

import pytest
from hydra import compose, initialize_config_dir

from common.generation import generation_budget
from evaluation import evaluate as ev
from evaluation.benchmarks import with_declared
from tests.conftest import REPO
from tests.test_eval_cli import FIXTURES

BUDGET = 77


def thinking_tiny(monkeypatch, **extra):
    """configs/model/tiny.yaml, as if its card said it thinks."""
    real = ev._config_model
    monkeypatch.setattr(ev, "_config_model", lambda name: {**real(name), "thinking": True,
                                                           "max_new_tokens": BUDGET, **extra})


def main(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("eval", overrides=with_declared([f"out_dir={tmp_path / 'metrics'}", "progress=false", "model_spec=tiny",
                                         *FIXTURES, *overrides]))
    return ev.main(cfg)


def stub_generate(monkeypatch, outputs: dict[int, str], seen: list):
    """evaluation.generative's generate, answering item i with outputs[i] and recording the sampling budget."""
    import evaluation.generative as gen

    def fake(model, convs, **kw):
        seen.append(kw["max_new_tokens"])
        return [[outputs[len(seen) - 1, i] if (len(seen) - 1, i) in outputs else outputs[i]] for i in range(len(convs))]

    monkeypatch.setattr(gen, "generate", fake)


def test_thinking_mcq_grades_the_final_answer_and_counts_unterminated(tmp_path, monkeypatch):
    thinking_tiny(monkeypatch)
    seen = []
    stub_generate(monkeypatch, {
        0: "Options:\nA. no\nB. no\n</think>\n\nC",        # gold C: right, although reasoning lines start with A.
        1: "It is clearly B, the answer is B",             # gold B, but never closed: wrong, not scored on reasoning
        2: "Still weighing A against D",                   # never closed
    }, seen)
    r = main(tmp_path, "benchmarks=[medmcqa]", "bench.medmcqa.mode=generate")["medmcqa"]
    assert r["value"] == pytest.approx(100 / 3)
    assert r["metrics"]["unterminated_reasoning_n"] == 2
    assert r["metrics"]["unterminated_reasoning"] == pytest.approx(200 / 3)
    assert seen == [BUDGET] and r["settings"]["max_new_tokens"] == BUDGET  # the model's budget, not the bench's
    assert r["settings"]["thinking"] is True


def test_thinking_math_and_regrading_of_reused_completions(tmp_path, monkeypatch):
    """The same completions, first graded as a non-thinking model's, then reused (same fingerprint: the budget
    is pinned) and graded again under the thinking rule without generating anything."""
    outputs = {0: r"Maybe \boxed{8}? No: 12 - 5.</think>\boxed{7}", 1: r"Half is \boxed{600}",
               2: r"15 * 7 = 105</think>The answer is: **105**", 3: r"24 + 9 = \boxed{33}</think>"}
    seen = []
    stub_generate(monkeypatch, outputs, seen)
    plain = main(tmp_path, "benchmarks=[gsm8k]", "max_new_tokens=64")["gsm8k"]
    assert plain["metrics"]["unterminated_reasoning_n"] == 0
    assert plain["value"] == 100         # a lone </think> means nothing to a non-thinking model: last box / answer

    thinking_tiny(monkeypatch)
    again = main(tmp_path, "benchmarks=[gsm8k]", "max_new_tokens=64")["gsm8k"]
    assert len(seen) == 1                # nothing generated: every completion was reused
    assert again["metrics"]["unterminated_reasoning_n"] == 1   # item 1: a box, but no </think>
    assert again["value"] == 50          # items 0 and 2 right; 1 unterminated; 3 answered nothing after </think>


def test_thinking_budget_comes_from_the_model_config():
    think = {"name": "t", "thinking": True, "max_new_tokens": 32768}
    assert generation_budget(think, 1024) == 32768
    assert generation_budget(think, 1024, override=2048) == 2048
    assert generation_budget({"name": "plain"}, 1024) == 1024 and generation_budget({"name": "p"}, None) is None
    with pytest.raises(ValueError, match=r"model 't' has `thinking: true` but no `max_new_tokens`.*\(ifeval\)"):
        generation_budget({"name": "t", "thinking": True}, None, bench_name="ifeval")
    with pytest.raises(TypeError, match="`thinking` must be true or false"):
        generation_budget({"name": "t", "thinking": "yes"}, None)


def test_qwen3_thinking_config_says_it_thinks():
    import yaml

    cfg = yaml.safe_load((REPO / "configs/model/qwen3-4b-thinking.yaml").read_text())
    assert cfg["thinking"] is True and cfg["max_new_tokens"] >= 32768
    for name in ("qwen3-4b", "glm4-9b", "qwen2.5-32b", "smollm2-135m", "tiny"):
        assert not yaml.safe_load((REPO / f"configs/model/{name}.yaml").read_text()).get("thinking", False)


IFEVAL_OUT = {
    1000: "Commas, commas, everywhere, in my notes.\n</think>\n\nThe moon is bright and far away.",  # passes
    1001: "a cat is soft. a cat naps all day.",   # would pass, but the reasoning never closed: fails
    1002: "ok</think>Apples and pears and plums. Is there anything else I can help with?",      # passes
}


def test_ifeval_scores_the_final_answer_of_a_thinking_model(tmp_path, monkeypatch, nltk_punkt):
    from lm_eval.models.huggingface import HFLM

    thinking_tiny(monkeypatch)
    budgets = []

    def fake_generate_until(self, requests, disable_tqdm=False):
        budgets.extend(req.args[1].get("max_gen_toks") for req in requests)
        return [IFEVAL_OUT[req.doc["key"]] for req in requests]

    monkeypatch.setattr(HFLM, "generate_until", fake_generate_until)
    r = main(tmp_path, "benchmarks=[ifeval]")["ifeval"]
    assert r["value"] == pytest.approx(200 / 3)
    assert r["metrics"]["unterminated_reasoning_n"] == 1
    assert budgets == [BUDGET] * 3 and r["settings"]["max_new_tokens"] == BUDGET
    import json

    rows = [json.loads(x) for x in (tmp_path / "metrics/tiny/items/ifeval.jsonl").read_text().splitlines()]
    by_key = {row["doc"]["key"]: row for row in rows}
    assert by_key[1001]["response"] == [""] and "a cat naps" in str(by_key[1001]["raw_response"])


def test_chat_template_kwargs_reach_lm_eval(tmp_path):
    """eval.yaml's chat_template_kwargs reach lm-eval's generated tasks too, not only our generative ones."""
    from evaluation.context import EvalContext
    from evaluation.lm_eval_bench import _hf_lm, template_args

    assert template_args({}) == {"chat_template_args": None}
    assert template_args({"enable_thinking": False}) == {"chat_template_args": None, "enable_thinking": False}
    with pytest.raises(ValueError, match="say `thinking: true`"):
        template_args({"enable_thinking": True})
    ctx = EvalContext(model_cfg=ev._config_model("tiny"), items_dir=tmp_path,
                      chat_template_kwargs={"enable_thinking": False, "custom": 1})
    assert _hf_lm(ctx).chat_template_args == {"enable_thinking": False, "custom": 1}
