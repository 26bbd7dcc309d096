"""Bad data found early and named by file and line: training data (training/data.py, common/models.py), the
data build (data_pipeline/), and the Masked-SFT precompute (training/precompute.py, train.method_inputs).

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_failures_data.py -q
"""

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from common.models import load_tokenizer
from training.data import DataError, build_examples, read_chat_jsonl

REPO = Path(__file__).resolve().parents[1]
GOOD = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def train_cfg(*overrides, name="train"):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose(name, overrides=list(overrides))


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
    from common.models import resolve

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


# --- item 5: the data build must not shrink or go stale silently ------------------------------------------------

GSM8K_FIX = REPO / "tests" / "fixtures" / "data" / "gsm8k_test.jsonl"
TINY_TOK = str(REPO / "tests" / "assets" / "tiny-tokenizer")


def gsm8k_source(tmp_path: Path) -> Path:
    """Six clean GSM8K rows (every one verifies under the reference teacher), as a local source file."""
    lines = GSM8K_FIX.read_bytes().splitlines(keepends=True)
    path = tmp_path / "src" / "gsm8k.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"".join(lines[i] for i in (0, 1, 6, 7, 8, 9)))
    return path


def build(source: Path, out_dir: Path, *overrides: str, n_train: int = 6):
    from omegaconf import OmegaConf

    from data_pipeline.build import main

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("data_build", overrides=["domain=math", f"out_dir={out_dir}", *overrides])
    updates = {"sources": [{"name": "gsm8k", "adapter": "gsm8k", "loader": "jsonl", "path": str(source)}],
               "pool": {"size": None}, "heldout": {"n": 0}, "tokenizer": TINY_TOK, "max_length": 4096,
               "teacher": {"backend": "reference", "reference_format": "boxed", "chunk_size": 3},
               "select.n_train": n_train}
    for key, value in updates.items():
        OmegaConf.update(cfg, f"domain.{key}", value, force_add=True)
    return main(cfg)


def test_case5_clean_source_builds_the_rows_asked_for(tmp_path):
    assert build(gsm8k_source(tmp_path), tmp_path / "out")["train"] == 6


def test_case5_truncated_source_is_an_error(tmp_path):
    src = gsm8k_source(tmp_path)
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])  # cut in the middle of a line
    with pytest.raises(RuntimeError, match=r"only \d of the 6 training rows asked for .*malformed_json.*"
                                           r"allow_short=true"):
        build(src, tmp_path / "out")
    assert not (tmp_path / "out" / "train.jsonl").exists() and not (tmp_path / "out" / "manifest.json").exists()


def test_case5_bad_json_line_is_an_error(tmp_path):
    src = gsm8k_source(tmp_path)
    lines = src.read_text().splitlines(keepends=True)
    src.write_text("".join(lines[:2]) + '{"question": "broken\n' + "".join(lines[3:]))
    with pytest.raises(RuntimeError, match=r"only 5 of the 6 training rows"):
        build(src, tmp_path / "out")


def test_case5_short_build_with_allow_short_writes_and_records_the_shortfall(tmp_path):
    out = build(gsm8k_source(tmp_path), tmp_path / "out", "allow_short=true", n_train=10)
    assert out["train"] == 6 and out["short_by"] == 4
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["short_by"] == 4


def test_case5_short_chat_build_is_an_error(tmp_path):
    from omegaconf import OmegaConf

    from data_pipeline.build import main

    fix = REPO / "tests" / "fixtures" / "data"
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("data_build", overrides=["domain=agent", f"out_dir={tmp_path}"])
    for key, value in {"sources": [{"name": "tc", "adapter": "nemotron_agentic", "loader": "jsonl",
                                    "path": str(fix / "nemotron_agentic_tool_calling.jsonl"),
                                    "options": {"non_thinking": "select"}}],
                       "tokenizer": TINY_TOK, "max_length": 4096,
                       "chat_template": str(fix / "qwen3_instruct_2507.jinja")}.items():
        OmegaConf.update(cfg, f"domain.{key}", value, force_add=True)
    with pytest.raises(RuntimeError, match=r"only 1 of the 20000 training rows"):
        main(cfg)
    assert not (tmp_path / "train.jsonl").exists()


def test_case5_non_utf8_byte_in_a_source_is_an_error_with_file_and_line(tmp_path):
    src = gsm8k_source(tmp_path)
    lines = src.read_bytes().splitlines(keepends=True)
    src.write_bytes(b"".join(lines[:3]) + lines[3].replace(b"reads", b"r\xffads") + b"".join(lines[4:]))
    with pytest.raises(ValueError, match=rf"{src}:4: byte 0xff at byte \d+ of the line is not UTF-8"):
        build(src, tmp_path / "out")


def test_case5_changed_source_invalidates_the_prepare_cache(tmp_path):
    src, out = gsm8k_source(tmp_path), tmp_path / "out"
    build(src, out, "stage=prepare")
    src.write_text("".join(src.read_text().splitlines(keepends=True)[:5]))  # same path, other contents
    for stage in ("generate", "finalize"):
        with pytest.raises(RuntimeError, match=rf"prepared from other contents of gsm8k \({src}\).*overwrite=true"):
            build(src, out, f"stage={stage}")
    assert build(src, out, "overwrite=true", n_train=5)["train"] == 5


# --- item 6: Masked-SFT precompute at paper scale, q and k from the method ---------------------------------------

class TableModel(torch.nn.Module):
    """A stand-in for the base model, cheap at any length: logits are a fixed random table row of the input id,
    scaled by the position so that entropies and probabilities take many distinct values (a quantile that
    interpolates differs from one that picks an element)."""

    def __init__(self, vocab: int = 8):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, vocab)
        torch.nn.init.normal_(self.table.weight, std=3.0, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids, attention_mask=None):
        scale = 1 + torch.arange(input_ids.shape[1]) / input_ids.shape[1]
        return SimpleNamespace(logits=self.table(input_ids) * scale[None, :, None])


def synthetic_examples(monkeypatch, n_rows: int, length: int, vocab: int = 8) -> tuple[list[dict], list[dict]]:
    """(rows, examples): n_rows rows of `length` tokens, every token after the first supervised, which precompute
    gets in place of tokenizing the rows."""
    import training.precompute as pc

    g = torch.Generator().manual_seed(1)
    examples = [{"input_ids": ids, "labels": ids, "row": i}
                for i, ids in enumerate(torch.randint(0, vocab, (n_rows, length), generator=g).tolist())]
    monkeypatch.setattr(pc, "build_examples", lambda rows, *a, **k: (examples, {}))
    return [{}] * n_rows, examples


def test_case6_precompute_thresholds_beyond_2_24_tokens(monkeypatch):
    from training.precompute import compute

    rows, _ = synthetic_examples(monkeypatch, n_rows=5, length=2 ** 22)
    out = compute(TableModel(), SimpleNamespace(pad_token_id=0), rows, max_length=2 ** 22, batch_size=1)
    ms = out["masked_sft"]
    assert ms["n_tokens"] == 5 * (2 ** 22 - 1) > 2 ** 24
    assert 0 < ms["entropy_threshold"] < math.log(8) and 0 < ms["prob_threshold"] < 1


def test_case6_precompute_and_the_loss_use_one_quantile(monkeypatch):
    from eaft_loss.losses import _quantile, masked_sft_gate, supervised_tokens, topk_entropy

    from training.precompute import ChatCollator, compute

    rows, examples = synthetic_examples(monkeypatch, n_rows=6, length=50)
    model = TableModel()
    ms = compute(model, SimpleNamespace(pad_token_id=0), rows, max_length=50, batch_size=4, q=0.15, k=5)["masked_sft"]
    batch = ChatCollator(0)(examples)
    tok = supervised_tokens(model(batch["input_ids"]).logits, batch["labels"])
    h, p = topk_entropy(tok.logits, 5), tok.prob
    assert ms["entropy_threshold"] == _quantile(h, 0.15).item() and ms["prob_threshold"] == _quantile(p, 0.15).item()
    # One definition: the lower empirical quantile (numpy's inverted_cdf), not torch.quantile's interpolation.
    assert ms["entropy_threshold"] == pytest.approx(float(np.quantile(h.numpy(), 0.15, method="inverted_cdf")))
    # Per-batch thresholds on the whole set and the precomputed ones give the same mask.
    for mode in ("entropy", "entropy_and_prob"):
        batch_gate = masked_sft_gate(tok, mode=mode, q=0.15, k=5)
        pre_gate = masked_sft_gate(tok, mode=mode, q=0.15, k=5, entropy_threshold=ms["entropy_threshold"],
                                   prob_threshold=ms["prob_threshold"])
        assert torch.equal(batch_gate, pre_gate)


@pytest.fixture
def tiny_copy(tmp_path) -> Path:
    path = tmp_path / "data" / "train.jsonl"
    path.parent.mkdir()
    path.write_bytes((REPO / "tests" / "assets" / "tiny_chat.jsonl").read_bytes())
    return path


def test_case6_precompute_reads_q_and_k_from_the_method_and_records_them(tiny_copy):
    from training.precompute import main

    out = main(train_cfg(f"data.train_file={tiny_copy}", "method=masked_sft_pilot", "method.hparams.q=0.3",
                         "method.hparams.k=5", name="precompute"))
    ms = json.loads(Path(out["path"]).read_text())["masked_sft"]
    assert {k: ms[k] for k in ("q", "k", "mode", "method")} == {"q": 0.3, "k": 5, "mode": "entropy_and_prob",
                                                                 "method": "masked_sft_pilot"}


def test_case6_precompute_for_a_method_without_q_and_k_is_refused_before_loading(tiny_copy):
    from training.precompute import main

    with pytest.raises(ValueError, match="method=eaft is not a Masked-SFT method"):
        main(train_cfg(f"data.train_file={tiny_copy}", "method=eaft", name="precompute"))


def test_case6_training_refuses_thresholds_made_for_another_q(tiny_copy):
    from training.precompute import main as precompute
    from training.train import method_inputs

    precompute(train_cfg(f"data.train_file={tiny_copy}", name="precompute"))  # masked_sft: q 0.15, k 20
    hp, _ = method_inputs(train_cfg("method=masked_sft").method, str(tiny_copy), "tiny")
    assert hp["entropy_threshold"] > 0
    other = train_cfg("method=masked_sft_pilot", "method.hparams.q=0.25").method
    with pytest.raises(ValueError, match=r"thresholds for q=0.15, k=20 \(made for method=masked_sft\), but "
                                         r"method=masked_sft_pilot has q=0.25, k=20; rebuild them: "
                                         r"python -m training.precompute model=tiny .*method=masked_sft_pilot"):
        method_inputs(other, str(tiny_copy), "tiny")
    with pytest.raises(ValueError, match="k=20 .* has q=0.15, k=10"):
        method_inputs(train_cfg("method=masked_sft", "method.hparams.k=10").method, str(tiny_copy), "tiny")
