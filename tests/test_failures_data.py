"""Bad data found early and named by file and line: training data (training/data.py, training/models.py), the
data build (data_pipeline/), and the Masked-SFT precompute (training/precompute.py, train.method_inputs).

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_failures_data.py -q
"""

import json
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from training.data import DataError, build_examples, read_chat_jsonl
from training.models import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
GOOD = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def train_cfg(*overrides):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(train_cfg().model)


def write_rows(path: Path, *rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- item 8: errors that arrive late or name the wrong thing ---------------------------------------------------

def test_case8_missing_train_file_is_named_as_data_not_as_a_model_path(tmp_path):
    from training.train import main

    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(FileNotFoundError) as e:
        main(train_cfg(f"data.train_file={missing}", f"out_dir={tmp_path / 'runs'}"))
    msg = str(e.value)
    assert str(missing) in msg and "data path" in msg and "make data" in msg
    assert "model path" not in msg and "make assets" not in msg


def test_case8_missing_model_folder_still_says_make_assets():
    from training.models import resolve

    with pytest.raises(FileNotFoundError, match="model path .*make assets"):
        resolve("./data/assets/no-such-model")


def test_case8_non_utf8_byte_in_train_file_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(DataError, match=rf"{path}:2: byte 0xe9 .* not UTF-8"):
        read_chat_jsonl(path)


def test_case8_assistant_first_row_names_file_and_line(tmp_path):
    path = write_rows(tmp_path / "train.jsonl", GOOD, {"messages": [{"role": "assistant", "content": "hi"},
                                                                    {"role": "user", "content": "?"}]})
    with pytest.raises(DataError, match=rf"{path}:2: messages\[0\] is an assistant turn"):
        read_chat_jsonl(path)


def test_case8_chat_template_error_names_file_and_line(tmp_path, tok):
    # A row the reader accepts but the template refuses (here: a template that raises on system turns).
    path = write_rows(tmp_path / "train.jsonl", GOOD, {"messages": [{"role": "system", "content": "s"},
                                                                    {"role": "assistant", "content": "a"}]})
    tok = type(tok).from_pretrained(tok.name_or_path)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' and loop.index0 == loop.length - 1 %}"
                         "{{ raise_exception('no user query') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(DataError, match=rf"{path}:2: the chat template cannot render this row .*no user query"):
        build_examples(read_chat_jsonl(path), tok, 512)


# --- item 9: empty assistant turns -------------------------------------------------------------------------------

def test_case9_empty_assistant_turns_are_warned_with_counts(tmp_path, tok):
    empty = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}
    path = write_rows(tmp_path / "train.jsonl", GOOD, empty, GOOD, empty)
    with pytest.warns(UserWarning, match=rf"2 of 4 rows \(2 assistant turns\) have an empty assistant turn.*"
                                         rf"{path}:2, {path}:4"):
        _, counts = build_examples(read_chat_jsonl(path), tok, 512)
    assert counts["empty_assistant_turns"] == 2


def test_case9_tool_call_turns_with_empty_content_are_not_warned(tmp_path, tok):
    call = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
                         {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, counts = build_examples(read_chat_jsonl(write_rows(tmp_path / "t.jsonl", GOOD, call)), tok, 512)
    assert "empty_assistant_turns" not in counts
