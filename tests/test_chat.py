"""common.chat.render_ids, the one chat render of the data pipeline and the trainer: the token ids are the ones
the two former copies (data_pipeline/output.py `_ids`, training/data.py `_render`, before commit eb1a1f6) gave,
pinned by hashes those copies produced; and both stages count the same tokens through it."""

import hashlib
import json

import pytest
from transformers import AutoTokenizer

from common.chat import render_ids
from common.files import read_jsonl
from data_pipeline.output import measure
from tests.conftest import REPO
from training.data import tokenize_chat

TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]
# sha256 of json.dumps([[ids of the conversation, ids of its prompt with the generation prompt], ...]) over the
# first three rows of tests/assets/tiny_chat.jsonl (with and without TOOLS under the Qwen3 templates), computed
# with the two copies that common.chat replaced
BEFORE = {
    None: "d8ced0f352a06660b559c8ce5c7739d5a24990f307ef7ab4b3be3572d9f8a5df",
    "qwen3_instruct_2507.jinja": "381f518cf37f3967e8cfa4ab0a9544830589f3bacf26e2e6ab69520f7598436b",
    "qwen3_thinking_2507.jinja": "3539c8364e2751392fdd7a587922fe6455db18e7b678acfe9b95c61b9c40dc41",
}


def tokenizer(template: str | None):
    tok = AutoTokenizer.from_pretrained(REPO / "tests" / "assets" / "tiny-tokenizer")
    if template:
        tok.chat_template = (REPO / "tests" / "fixtures" / "data" / template).read_text()
    return tok


def rows():
    return read_jsonl(REPO / "tests" / "assets" / "tiny_chat.jsonl")[:3]


@pytest.mark.parametrize("template", list(BEFORE))
def test_render_gives_the_ids_the_two_former_copies_gave(template):
    tok = tokenizer(template)
    out = [[render_ids(tok, r["messages"], tools), render_ids(tok, r["messages"][:1], tools, add_generation_prompt=True)]
           for r in rows() for tools in ((None, TOOLS) if template else (None,))]
    assert all(len(ids) > len(prompt) > 0 for ids, prompt in out)
    assert hashlib.sha256(json.dumps(out).encode()).hexdigest() == BEFORE[template]


def test_the_data_pipeline_and_the_trainer_count_the_same_tokens():
    tok = tokenizer("qwen3_instruct_2507.jinja")
    for r in rows():
        ids, labels, skipped = tokenize_chat(tok, r["messages"])
        n = measure(tok, r)
        assert skipped == 0 and n["total_tokens"] == len(ids)
        assert n["response_tokens"] == sum(lab != -100 for lab in labels)  # the response is what is supervised
