"""Source adapters on fixtures in each source's real schema (tests/fixtures/data), read by the same loaders the
cluster uses; dedupe; seeded sampling; shard assignment."""

import hashlib
import json

import pytest

from data_pipeline.adapters import ADAPTERS, last_boxed
from data_pipeline.records import RejectLog
from data_pipeline.sampling import dedupe, seeded_sample, shard_of, split_heldout
from data_pipeline.sources import read_source
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "data"


def spec(name, adapter, file, loader="jsonl", **kw):
    if loader == "hf":  # the datasets code path of a Hub parquet source, on a local JSON file
        return {"name": name, "adapter": adapter, "loader": "hf", "path": "json", "split": "train",
                "data_files": str(FIX / file), **kw}
    return {"name": name, "adapter": adapter, "loader": "jsonl", "path": str(FIX / file), **kw}


def read(s):
    rejects = RejectLog()
    recs, info = read_source(s, ADAPTERS, rejects)
    return recs, {r["id"]: r["reason"] for r in rejects.rows}, info


def test_numinamath_1_5():
    recs, rej, info = read(spec("numinamath", "numinamath", "numinamath_1.5.jsonl", loader="hf"))
    assert [r["id"] for r in recs] == ["numinamath/0", "numinamath/1", "numinamath/5", "numinamath/6", "numinamath/7"]
    assert rej == {"numinamath/2": "proof_question", "numinamath/3": "no_checkable_answer",
                   "numinamath/4": "flagged_invalid"}
    assert recs[1]["answer"] == "\\frac{3}{4}" and recs[0]["source_ref"] == "olympiads"
    assert "\\boxed{4}" in recs[0]["solution"]
    assert info["rows_read"] == 8 and info["fingerprint"] and len(info["records_sha256"]) == 64


def test_numinamath_cot_takes_the_last_boxed_answer():
    recs, rej, _ = read(spec("numina-cot", "numinamath_cot", "numinamath_cot.jsonl", loader="hf"))
    assert [(r["id"], r["answer"]) for r in recs] == [("numina-cot/0", "1024"), ("numina-cot/1", "5\\sqrt{2}")]
    assert rej == {"numina-cot/2": "no_boxed_answer"}
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{unclosed") is None


def test_bigmath():
    recs, rej, _ = read(spec("bigmath", "bigmath", "bigmath.jsonl", loader="hf"))
    assert [r["id"] for r in recs] == ["bigmath/0", "bigmath/1", "bigmath/2", "bigmath/5"]
    assert rej == {"bigmath/3": "empty_answer", "bigmath/4": "missing_problem"}
    assert recs[3]["answer"] == "(-2, 2)" and "solution" not in recs[0]


def test_crossthink():
    recs, rej, _ = read(spec("crossthink", "crossthink", "crossthink_math.jsonl"))
    assert [r["id"] for r in recs] == ["crossthink/0", "crossthink/1", "crossthink/2"]
    assert recs[0]["problem"].startswith("A train travels") and recs[0]["answer"] == "40"
    assert recs[2]["problem"].endswith("Compute $6 \\times 7$.")  # no meta_data.question: the prompt's user turn
    assert rej == {"crossthink/3": "missing_answer", "crossthink/4": "malformed_json"}


def test_gsm8k_and_limit():
    recs, rej, info = read(spec("gsm8k", "gsm8k", "gsm8k_test.jsonl"))
    assert rej == {"gsm8k/2": "malformed_json", "gsm8k/3": "no_final_answer", "gsm8k/4": "empty_question"}
    assert recs[0]["answer"] == "7" and recs[0]["solution"].endswith("#### 7")
    assert [r["answer"] for r in recs if r["id"] == "gsm8k/6"] == ["2,400"]
    assert len(info["sha256"]) == 64
    recs, rej, info = read(spec("gsm8k", "gsm8k", "gsm8k_test.jsonl", limit=3))  # rows READ, bad ones included
    assert info["rows_read"] == 3 and len(recs) == 2 and list(rej) == ["gsm8k/2"]


def test_medical_o1():
    recs, rej, _ = read(spec("med", "medical_o1", "medical_o1_sft_en.json", loader="hf"))
    assert [r["id"] for r in recs] == ["med/0", "med/1", "med/2"]
    assert rej == {"med/3": "empty_complex_cot", "med/4": "missing_response"}
    user, asst = recs[0]["messages"]
    assert user["role"] == "user" and asst["content"].startswith("An electrocardiogram")
    assert asst["reasoning_content"].startswith("Chest pain")


def test_nemotron_agentic_non_thinking_selection_and_checks():
    recs, rej, _ = read(spec("tc", "nemotron_agentic", "nemotron_agentic_tool_calling.jsonl"))
    assert [r["id"] for r in recs] == ["tc/0"]
    assert rej == {"tc/1": "thinking_row", "tc/2": "undeclared_tool", "tc/3": "bad_tool_arguments",
                   "tc/4": "ends_without_assistant", "tc/5": "malformed_json"}
    msgs = recs[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]  # empty system dropped
    assert msgs[1]["content"] == "" and msgs[1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                                 "arguments": {"city": "Paris"}}
    assert msgs[2]["tool_call_id"] == "call_1" and all("reasoning_content" not in m for m in msgs)
    assert recs[0]["source_ref"] == "tc-1" and len(recs[0]["tools"]) == 2

    recs, rej, _ = read(spec("ia", "nemotron_agentic", "nemotron_agentic_interactive_agent.jsonl"))
    assert [r["id"] for r in recs] == ["ia/0"] and rej == {"ia/1": "thinking_row", "ia/2": "orphan_tool_message"}
    assert sum(m["role"] == "user" for m in recs[0]["messages"]) == 2  # multi-turn kept

    # strip: thinking rows are kept with their reasoning removed
    recs, rej, _ = read(spec("tc", "nemotron_agentic", "nemotron_agentic_tool_calling.jsonl",
                             options={"non_thinking": "strip"}))
    assert "tc/1" in {r["id"] for r in recs} and "tc/1" not in rej
    ia, _, _ = read(spec("ia", "nemotron_agentic", "nemotron_agentic_interactive_agent.jsonl",
                         options={"non_thinking": "strip"}))
    lima = next(r for r in ia if r["id"] == "ia/1")
    assert lima["messages"][1]["content"] == "Checking."


def test_adapter_errors_are_reported_not_raised(tmp_path):
    f = tmp_path / "odd.jsonl"
    f.write_text(json.dumps({"question": ["a list"], "answer": "#### 1"}) + "\n" + json.dumps([1, 2]) + "\n")
    recs, rej, _ = read({"name": "odd", "adapter": "gsm8k", "loader": "jsonl", "path": str(f)})
    assert recs == [] and rej == {"odd/0": "non_string_question", "odd/1": "malformed_json"}
    with pytest.raises(KeyError, match="unknown adapter"):
        read({"name": "x", "adapter": "nope", "loader": "jsonl", "path": str(f)})


def test_dedupe_keeps_the_first_and_names_it():
    recs = [{"id": "a/0", "source": "a", "problem": "Solve  2x = 4."},
            {"id": "b/0", "source": "b", "problem": "solve 2x = 4."},
            {"id": "b/1", "source": "b", "problem": "Solve 2x = 6."},
            {"id": "c/0", "source": "c", "problem": "ＳＯＬＶＥ 2x = 4."}]  # full-width letters: NFKC folds them
    rejects = RejectLog()
    kept = dedupe(recs, lambda r: r["problem"], rejects)
    assert [r["id"] for r in kept] == ["a/0", "b/1"]
    assert [(r["id"], r["reason"], r["detail"]) for r in rejects.rows] == [
        ("b/0", "duplicate", "same text as a/0"), ("c/0", "duplicate", "same text as a/0")]


def test_seeded_sampling_is_deterministic_and_order_free():
    recs = [{"id": f"s/{i}"} for i in range(100)]
    a = seeded_sample(recs, 10, seed=3)
    assert [r["id"] for r in a] == [r["id"] for r in seeded_sample(list(reversed(recs)), 10, seed=3)]
    assert [r["id"] for r in a] != [r["id"] for r in seeded_sample(recs, 10, seed=4)]
    assert len({r["id"] for r in a}) == 10
    assert sorted(r["id"] for r in seeded_sample(recs, None, 0)) == sorted(r["id"] for r in recs)
    train, held = split_heldout(recs, 20, seed=0)
    assert len(held) == 20 and len(train) == 80 and not {r["id"] for r in held} & {r["id"] for r in train}


def test_shard_assignment_is_stable_and_covers_everything():
    ids = [f"src/{i}" for i in range(1000)]
    shards = [shard_of(i, 8) for i in ids]
    assert shards == [shard_of(i, 8) for i in ids] and set(shards) == set(range(8))
    # sha1-based (not Python's salted hash): the same on every machine, process and Python version
    assert shard_of("gsm8k-test/0", 8) == int(hashlib.sha1(b"gsm8k-test/0").hexdigest()[:12], 16) % 8 == 7
