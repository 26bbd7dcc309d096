"""slurm/submit.py refuses or fixes cluster settings that would run a test-sized job: --dry-run, no SLURM needed.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_failures_slurm_submit.py -q
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slurm"))

from submit import main


def dry_run(tmp_path, *extra: str) -> dict[str, dict]:
    manifest = main(["--data", "math", "--no-build-data", "--models", "qwen3-4b", "--methods", "sft,eaft",
                     "--logs", str(tmp_path), "--dry-run", *extra])
    return {j["name"]: j for j in manifest["jobs"]}


@pytest.fixture(autouse=True)
def no_site(tmp_path, monkeypatch):
    monkeypatch.setenv("EAFT_SITE", str(tmp_path / "no-site.sh"))


def test_case2_grid_without_train_args_trains_with_the_paper_trainer(tmp_path, capsys):
    jobs = dry_run(tmp_path, "--gpus-per-node", "8")
    command = jobs["train-qwen3-4b"]["command"]
    assert "trainer=paper" in command and "trainer=tiny" not in command
    assert "training uses trainer=paper" in capsys.readouterr().err


def test_case2_explicit_trainer_is_kept_and_default_not_added(tmp_path):
    command = dry_run(tmp_path, "--gpus-per-node", "8", "--train-args", "trainer=cpu trainer.use_cpu=false",
                      )["train-qwen3-4b"]["command"]
    assert "trainer=cpu" in command and "trainer=paper" not in command


@pytest.mark.parametrize("train_args", ["trainer=tiny", "trainer=cpu", "trainer=paper trainer.use_cpu=true"])
def test_case2_gpu_grid_with_a_use_cpu_trainer_is_refused(tmp_path, train_args):
    with pytest.raises(SystemExit, match=r"use_cpu: true .* 8 GPU\(s\) per node"):
        dry_run(tmp_path, "--gpus-per-node", "8", "--train-args", train_args)
    assert not list(tmp_path.glob("submit-*.json"))


def test_case2_use_cpu_trainer_given_for_one_model_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="for qwen3-4b: trainer=tiny"):
        dry_run(tmp_path, "--gpus-per-node", "8", "--model-args", "qwen3-4b=trainer=tiny")


def test_case2_cpu_trainer_is_fine_on_a_cpu_only_cluster(tmp_path):
    jobs = dry_run(tmp_path, "--gpus-per-node", "0", "--train-args", "trainer=tiny trainer.max_steps=4")
    assert "trainer=tiny" in jobs["train-qwen3-4b"]["command"]


def test_case2_unknown_trainer_is_named(tmp_path):
    with pytest.raises(SystemExit, match="configs/trainer/nope.yaml"):
        dry_run(tmp_path, "--train-args", "trainer=nope")


def test_case6_precompute_job_gets_the_masked_sft_method_of_the_grid(tmp_path):
    jobs = dry_run(tmp_path, "--methods", "flow,masked_sft_pilot,masked_sft")
    assert "method=masked_sft_pilot" in jobs["precompute-qwen3-4b"]["command"]
    assert "method=" not in dry_run(tmp_path, "--methods", "flow")["precompute-qwen3-4b"]["command"]


def test_case6_masked_sft_methods_with_different_q_are_refused(tmp_path, monkeypatch):
    import submit
    from omegaconf import OmegaConf

    real = submit.method_config

    def with_q20(method):
        if method == "masked_sft_q20":
            return OmegaConf.merge(real("masked_sft"), {"name": method, "hparams": {"q": 0.2}})
        return real(method)

    monkeypatch.setattr(submit, "method_config", with_q20)
    with pytest.raises(SystemExit, match=r"different q, k .*masked_sft_q20': \(0.2, 20\)"):
        dry_run(tmp_path, "--methods", "masked_sft,masked_sft_q20")
