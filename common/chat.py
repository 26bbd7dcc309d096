"""The chat render shared by the data pipeline (token lengths, data_pipeline/output.py) and training (labels,
training/data.py): both must count the same tokens, so both call this one function."""

from __future__ import annotations


def render_ids(tokenizer, messages: list[dict], tools=None, add_generation_prompt: bool = False) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template. The template is rendered to text first and
    tokenised with add_special_tokens=False: the template already holds any BOS, which must not be doubled."""
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
