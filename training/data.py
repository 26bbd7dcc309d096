"""Chat JSONL -> token ids and labels in which only assistant tokens are supervised.

Format: one JSON object per line with `messages` (a list of {role, content} dicts, roles system/user/assistant/
tool) and optionally `tools` (function schemas handed to the chat template) and `id`.

Supervision: for each assistant turn i, the tokens that the chat template adds between
render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) are labelled: the answer, its
end-of-turn token and the template's trailing newline. Everything else is -100. A template that rewrites
history (Qwen3-Thinking drops earlier turns' reasoning) makes an earlier turn's rendering disagree with the
full conversation: that turn is left unsupervised and counted (`unsupervised_turns`), the last turn always is.

Rows are checked when read (file:line in every error): valid UTF-8 JSON, known roles, an assistant turn, and
not an assistant turn first (its prompt would be empty). A row the chat template cannot render is an error naming
its line too. An assistant turn with no content (and no tool call) trains on its end-of-turn tokens only: counted
(`empty_assistant_turns`) and warned about with the lines.

Over-long examples (more than `max_length` tokens): `overlong="drop"` (default) removes them;
`overlong="truncate"` keeps the first `max_length` tokens if any supervised token survives. Both are counted.

    python -m training.data tests/assets/tiny_chat.jsonl tests/assets/tiny-tokenizer   # prints the counts
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from common.chat import render_ids
from common.files import NotUtf8Error, iter_jsonl

IGNORE_INDEX = -100
ROLES = {"system", "user", "assistant", "tool"}


class DataError(ValueError):
    """Bad training data; the message names the file and line."""


class ChatRow(dict):
    """A row of the file, plus `where` ("file:line"), so that errors found later (tokenizing) still name the
    line. A plain dict everywhere else: it compares, copies and serialises as one."""

    where: str | None = None


def _where(row: dict, idx: int) -> str:
    return getattr(row, "where", None) or f"row {idx}"


def _check_row(row, where: str) -> None:
    msgs = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: expected an object with a non-empty 'messages' list")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise DataError(f"{where}: messages[{j}] needs a 'role' in {sorted(ROLES)}")
        if not isinstance(m.get("content", ""), str):
            raise DataError(f"{where}: messages[{j}].content must be a string")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: no assistant message, so nothing to supervise")
    if msgs[0]["role"] == "assistant":
        # Its prompt would be the empty conversation, which no chat template renders.
        raise DataError(f"{where}: messages[0] is an assistant turn; a conversation must open with a system or "
                        "user message (the prompt the answer is conditioned on)")


def read_chat_jsonl(path: str | Path) -> list[dict]:
    """Read and validate chat JSONL. Raises DataError naming the file and line of the first bad row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file (build it with `make data`, or point data.train_file at it)")
    rows = []
    try:
        for lineno, obj, err in iter_jsonl(path):
            where = f"{path}:{lineno}"
            if err:
                raise DataError(f"{where}: {err}")
            _check_row(obj, where)
            row = ChatRow(obj)
            row.where = where
            rows.append(row)
    except NotUtf8Error as e:
        raise DataError(str(e)) from None
    if not rows:
        raise DataError(f"{path}: empty file")
    return rows


def tokenize_chat(tokenizer, messages: list[dict], tools=None) -> tuple[list[int], list[int], int]:
    """Returns (input_ids, labels, number of assistant turns left unsupervised)."""
    ids = render_ids(tokenizer, messages, tools)
    labels = [IGNORE_INDEX] * len(ids)
    skipped = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render_ids(tokenizer, messages[:i], tools, add_generation_prompt=True))
        upto = ids if i == len(messages) - 1 else render_ids(tokenizer, messages[: i + 1], tools)
        if ids[: len(upto)] != upto or start > len(upto):
            skipped += 1
            continue
        labels[start: len(upto)] = upto[start:]
    return ids, labels, skipped


def is_empty_turn(message: dict) -> bool:
    """An assistant turn with nothing to learn but its end-of-turn tokens (tool calls are content)."""
    return (message["role"] == "assistant" and not str(message.get("content") or "").strip()
            and not message.get("tool_calls") and not str(message.get("reasoning_content") or "").strip())


def warn_empty_turns(where: list[str], n_turns: int, n_rows: int) -> None:
    # A warning, not an error: a few empty turns are harmless, many teach the model to stop at once.
    shown = ", ".join(where[:5]) + (", ..." if len(where) > 5 else "")
    warnings.warn(f"{len(where)} of {n_rows} rows ({n_turns} assistant turns) have an empty assistant turn, "
                  f"which trains on its end-of-turn tokens only: {shown}. Drop or fill those rows.", stacklevel=3)


def build_examples(rows: list[dict], tokenizer, max_length: int, overlong: str = "drop",
                   sample_weights: list[float] | None = None) -> tuple[list[dict], dict]:
    """Tokenize rows; returns (examples, counts). Each example: input_ids, labels, row (index in the file)."""
    if overlong not in ("drop", "truncate"):
        raise ValueError(f"data.overlong must be 'drop' or 'truncate', got {overlong!r}")
    counts = Counter(rows=len(rows))
    examples = []
    empty_at = []
    for idx, row in enumerate(tqdm(rows, desc="tokenize", unit="ex", leave=False)):
        try:
            ids, labels, skipped = tokenize_chat(tokenizer, row["messages"], row.get("tools"))
        except Exception as e:  # template errors (jinja2, ValueError) name neither the row nor the file
            raise DataError(f"{_where(row, idx)}: the chat template cannot render this row "
                            f"({type(e).__name__}: {e})") from e
        counts["unsupervised_turns"] += skipped
        n_empty = sum(is_empty_turn(m) for m in row["messages"])
        if n_empty:
            counts["empty_assistant_turns"] += n_empty
            empty_at.append(_where(row, idx))
        if len(ids) > max_length:
            if overlong == "drop":
                counts["dropped_overlong"] += 1
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            counts["truncated"] += 1
        if all(x == IGNORE_INDEX for x in labels[1:]):
            counts["dropped_no_supervised_tokens"] += 1
            continue
        ex = {"input_ids": ids, "labels": labels, "row": idx}
        if sample_weights is not None:
            ex["sample_weight"] = float(sample_weights[idx])
        examples.append(ex)
    if empty_at:
        warn_empty_turns(empty_at, counts["empty_assistant_turns"], len(rows))
    counts["kept"] = len(examples)
    counts["supervised_tokens"] = sum(sum(x != IGNORE_INDEX for x in e["labels"][1:]) for e in examples)
    counts["tokens"] = sum(len(e["input_ids"]) for e in examples)
    if not examples:
        raise DataError(f"no example survived tokenization ({dict(counts)}); raise data.max_length or "
                        "use data.overlong=truncate")
    return examples, dict(counts)


class ChatCollator:
    """Right-pads a list of examples into a batch; labels are -100 on padding."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for e in examples:
            pad = width - len(e["input_ids"])
            batch["input_ids"].append(e["input_ids"] + [self.pad_token_id] * pad)
            batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)
            batch["labels"].append(e["labels"] + [IGNORE_INDEX] * pad)
        out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        if "sample_weight" in examples[0]:
            out["sample_weight"] = torch.tensor([e["sample_weight"] for e in examples], dtype=torch.float32)
        return out


if __name__ == "__main__":
    from transformers import AutoTokenizer

    if len(sys.argv) != 3:
        sys.exit("usage: python -m training.data <chat.jsonl> <tokenizer path or Hub id>")
    tok = AutoTokenizer.from_pretrained(sys.argv[2])
    print(build_examples(read_chat_jsonl(sys.argv[1]), tok, max_length=4096)[1])
