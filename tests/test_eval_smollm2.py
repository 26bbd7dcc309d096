"""The `mini` suite on the real SmolLM2-135M-Instruct through the CLI, on the offline bundle (make eval-data).
Integration tier (~5 min on 2 idle cores; 25 min measured on a crowded machine at limit=40):  .venv/bin/python -m pytest -m integration tests/test_eval_smollm2.py
"""

import subprocess
import sys

import pytest

from evaluation.schema import read_result
from tests.conftest import REPO

pytestmark = pytest.mark.integration
MINI = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "winogrande", "boolq"]


@pytest.fixture(scope="module")
def assets():
    from data_pipeline.assets import smollm2
    from evaluation import data_bundle

    smollm2()
    data_bundle.main(["--only", *MINI, "general_chat", "gsm8k"])  # no-op where already built


def test_mini_suite_on_smollm2(assets, tmp_path):
    cmd = [sys.executable, "-m", "evaluation.evaluate", "model=smollm2-135m", "suite=mini", "limit=20",
           f"out_dir={tmp_path}", "progress=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = {b: read_result(tmp_path / "smollm2-135m" / f"{b}.json") for b in MINI}
    for b, r in res.items():
        assert r["n"] == 20 and r["settings"]["split"] == "validation" and r["data_source"].endswith(".jsonl"), b
        assert 0 <= r["value"] <= 100 and r["stderr"] > 0, b
    # a real pretrained model is clearly above chance (25%) on the four-option tasks, pooled over their 80 items
    # (measured at limit=40: ARC-E 40, ARC-C 35, HellaSwag 42.5, SciQ 67.5; a random model sits at ~25)
    four = [res[b]["value"] for b in ("arc_easy", "arc_challenge", "hellaswag", "sciq")]
    assert sum(four) / 4 > 32, {b: r["value"] for b, r in res.items()}


def test_base_model_drift_is_zero_and_gsm8k_runs(assets, tmp_path):
    cmd = [sys.executable, "-m", "evaluation.evaluate", "model=smollm2-135m", "benchmarks=[general_kl,gsm8k]",
           "limit=3", "max_new_tokens=64", f"out_dir={tmp_path}", "progress=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kl = read_result(tmp_path / "smollm2-135m" / "general_kl.json")
    assert kl["value"] == pytest.approx(0, abs=1e-5) and kl["metrics"]["base_answer_nll"] < 2  # its own answers
    gsm = read_result(tmp_path / "smollm2-135m" / "gsm8k.json")
    assert gsm["n"] == 3 and gsm["metrics"]["no_answer_rate"] < 100
