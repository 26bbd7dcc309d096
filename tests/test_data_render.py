"""Where the data lands under the paper models' chat templates (fixture copies of Qwen3-4B-Thinking-2507's and
Qwen3-4B-Instruct-2507's templates, tests/fixtures/data/README.md), and what the trainer then supervises
(training.data.tokenize_chat, unchanged)."""

import pytest
from transformers import AutoTokenizer

from common.files import iter_jsonl
from data_pipeline.adapters import ADAPTERS
from data_pipeline.chat_build import place_reasoning
from tests.conftest import REPO
from training.data import IGNORE_INDEX, tokenize_chat

FIX = REPO / "tests" / "fixtures" / "data"


def tokenizer(template: str):
    tok = AutoTokenizer.from_pretrained(REPO / "tests" / "assets" / "tiny-tokenizer")
    tok.chat_template = (FIX / template).read_text()
    return tok


def supervised_text(tok, messages, tools=None) -> list[str]:
    """The supervised spans, decoded, one string per contiguous run of labels."""
    ids, labels, skipped = tokenize_chat(tok, messages, tools)
    assert skipped == 0
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


MED = {"Question": "Which vitamin deficiency causes scurvy?", "Complex_CoT": "Collagen synthesis needs vitamin C.",
       "Response": "Vitamin C deficiency."}


def test_medical_reasoning_lands_inside_think_and_is_supervised():
    tok = tokenizer("qwen3_thinking_2507.jinja")
    rec = ADAPTERS["medical_o1"](MED)
    tags = place_reasoning(rec["messages"], "think_tags")
    field = place_reasoning(rec["messages"], "reasoning_content")
    text = tok.apply_chat_template(tags, tokenize=False)
    assert text == ("<|im_start|>user\nWhich vitamin deficiency causes scurvy?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\nCollagen synthesis needs vitamin C.\n</think>\n\n"
                    "Vitamin C deficiency.<|im_end|>\n")
    assert tok.apply_chat_template(field, tokenize=False) == text  # both formats render the same tokens
    prompt = tok.apply_chat_template(tags[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n") and text.startswith(prompt)
    # the trainer supervises reasoning, the closing tag, the answer and the end of turn; not <think> itself,
    # which the template's generation prompt supplies at inference too
    assert supervised_text(tok, tags) == [("Collagen synthesis needs vitamin C.\n</think>\n\n"
                                           "Vitamin C deficiency.<|im_end|>\n")]


def test_medical_rows_on_a_plain_chatml_template_keep_the_tags_as_text():
    tok = AutoTokenizer.from_pretrained(REPO / "tests" / "assets" / "tiny-tokenizer")
    rec = ADAPTERS["medical_o1"](MED)
    assert "<think>\nCollagen" in tok.apply_chat_template(place_reasoning(rec["messages"], "think_tags"), tokenize=False)
    with pytest.raises(ValueError, match="reasoning_format"):
        place_reasoning(rec["messages"], "inline")


def agent_row(uuid: str):
    for _, row, _ in iter_jsonl(FIX / "nemotron_agentic_interactive_agent.jsonl"):
        if row["uuid"] == uuid:
            return ADAPTERS["nemotron_agentic"](row)
    for _, row, _ in iter_jsonl(FIX / "nemotron_agentic_tool_calling.jsonl"):
        if row and row["uuid"] == uuid:
            return ADAPTERS["nemotron_agentic"](row)
    raise KeyError(uuid)


def test_agent_tools_calls_and_results_render_through_the_template():
    tok = tokenizer("qwen3_instruct_2507.jinja")
    rec = agent_row("ia-1")
    text = tok.apply_chat_template(rec["messages"], tools=rec["tools"], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a travel assistant. Follow the policy.\n\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert ('<|im_start|>assistant\nLet me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Rome"}}\n</tool_call><|im_end|>\n') in text
    assert '<|im_start|>user\n<tool_response>\n{"rain": false}\n</tool_response><|im_end|>\n' in text
    assert text.count("<|im_start|>assistant\n") == 4 and "Thanks! And in Milan?" in text
    spans = supervised_text(tok, rec["messages"], rec["tools"])
    assert len(spans) == 4  # every assistant turn of the multi-turn trajectory, tool calls included
    assert spans[0].startswith("Let me check.\n<tool_call>") and spans[-1] == "Yes, it is raining in Milan.<|im_end|>\n"
    assert not any("tool_response" in s or "rain\": true" in s or "Milan?" in s for s in spans)  # inputs stay inputs


def test_agent_tool_only_turns_and_consecutive_results():
    tok = tokenizer("qwen3_instruct_2507.jinja")
    rec = agent_row("tc-1")
    text = tok.apply_chat_template(rec["messages"], tools=rec["tools"], tokenize=False)
    assert text.startswith("<|im_start|>system\n# Tools\n")  # the dropped empty system message leaves no blank block
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "convert_units", "arguments": {"value": 20, "to": "F"}}'
            '\n</tool_call><|im_end|>') in text
    spans = supervised_text(tok, rec["messages"], rec["tools"])
    assert spans[0].startswith("<tool_call>\n{\"name\": \"get_weather\"") and spans[-1].startswith("It is 68°F")
