"""The paper's named runs (configs/experiment/): each composes with configs/train.yaml (no training), names a
model, method, data set and evaluation suite that exist, and reaches `make train EXP=...` and
`slurm/submit.py --experiments ...` (dry run, no SLURM needed)."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
sys.path.insert(0, str(REPO / "slurm"))

import submit


def compose_train(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("train", overrides=list(overrides))


def names(group: str) -> set[str]:
    return {OmegaConf.load(p).name for p in (CONFIGS / group).glob("*.yaml")}


def test_every_table_and_figure_run_of_the_paper_is_named():
    table1 = {f"table1-{m}" for m in ("sft", "sft_kl", "flow", "dft", "talr", "eaft")}
    table1 |= {f"table1-{x}-{m}" for x in ("qwen2.5-32b", "glm4-9b") for m in ("sft", "sft_kl", "flow", "dft",
                                                                                 "talr", "eaft")}
    others = {"table2-sft", "table2-eaft", "table3-sft", "table3-eaft"}
    fig5 = {f"fig5-{m}" for m in ("eaft_sig", "eaft2", "eaft3", "masked_sft")}
    assert set(EXPERIMENTS) == table1 | others | fig5


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_names_configs_that_exist(name):
    cfg = compose_train(f"experiment={name}")
    assert cfg.model.name in names("model") and cfg.method.name in names("method") and cfg.data.name in names("data")
    assert cfg.profile == "paper" and cfg.trainer.learning_rate == 1e-5 and not cfg.trainer.get("use_cpu")
    assert cfg.deepspeed.zero_optimization.stage == 3 and cfg.global_batch_size == 64
    assert cfg.run_name == f"{cfg.model.name}-{cfg.data.name}-{cfg.method.name}-s{cfg.seed}"
    suite = OmegaConf.load(CONFIGS / "suite" / f"{cfg.suite}.yaml")
    assert all((CONFIGS / "benchmark" / f"{b}.yaml").exists() for b in suite.benchmarks)
    # the table the run belongs to scores its data's domain
    domains = {OmegaConf.load(CONFIGS / "benchmark" / f"{b}.yaml").domain for b in suite.benchmarks}
    assert cfg.data.domain in domains and "general" in domains


def test_an_override_on_the_command_line_wins_over_the_experiment():
    cfg = compose_train("experiment=table1-eaft", "seed=7", "trainer.learning_rate=2e-5")
    assert (cfg.run_name, cfg.trainer.learning_rate) == ("qwen3-4b-math-eaft-s7", 2e-5)
    assert compose_train().get("suite") is None and compose_train().profile is None  # no experiment: as before


def test_make_train_takes_an_experiment():
    out = subprocess.run(["make", "--no-print-directory", "-n", "train", "EXP=table1-eaft"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.splitlines()[-1].rstrip()
    assert out.endswith("-m training.train experiment=table1-eaft")
    out = subprocess.run(["make", "--no-print-directory", "-n", "train", "MODEL=m", "METHOD=e", "DATA=d"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.splitlines()[-1].rstrip()
    assert out.endswith("-m training.train model=m method=e data=d")


def test_submit_lists_and_submits_experiments(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EAFT_SITE", str(tmp_path / "no-site.sh"))
    assert sorted(submit.main(["--list-experiments"])["experiments"]) == EXPERIMENTS
    assert "table1-eaft" in capsys.readouterr().out
    jobs = {j["name"]: j for j in submit.main(["--experiments", "table1-sft,table1-eaft,table2-eaft",
                                               "--no-build-data", "--logs", str(tmp_path), "--dry-run"])["jobs"]}
    # grouped by data set, then model: one training array per group, each run evaluated on its own suite
    assert list(jobs) == ["train-qwen3-4b-math", "eval-qwen3-4b-math", "eval-qwen3-4b-math-base",
                          "train-qwen3-4b-thinking-medical", "eval-qwen3-4b-thinking-medical",
                          "eval-qwen3-4b-thinking-medical-base", "tables"]
    assert jobs["train-qwen3-4b-math"]["tasks"] == [["experiment=table1-sft"], ["experiment=table1-eaft"]]
    assert jobs["eval-qwen3-4b-math"]["tasks"] == [["model=runs/qwen3-4b-math-sft-s42", "suite=table1"],
                                                   ["model=runs/qwen3-4b-math-eaft-s42", "suite=table1"]]
    assert "data=medical" in jobs["train-qwen3-4b-thinking-medical"]["command"]
    with pytest.raises(SystemExit, match="no configs/experiment/table9-eaft.yaml"):
        submit.main(["--experiments", "table9-eaft", "--logs", str(tmp_path), "--dry-run"])
    with pytest.raises(SystemExit, match="--data, --models, --methods required"):
        submit.main(["--logs", str(tmp_path), "--dry-run"])


def test_submit_help_ends_with_a_full_sentence():
    out = subprocess.run([sys.executable, "slurm/submit.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.rstrip()
    assert out.endswith("<logs>/submit-<time>.json.") and "--experiments" in out


def test_evaluation_takes_a_runs_domain_from_its_config_never_from_its_name(tmp_path):
    from evaluation.evaluate import data_domain

    assert data_domain({"name": "medical-v2", "domain": "math"}) == "math"  # declared wins over the name
    assert data_domain({"name": "math-mini"}) == "math"  # an older config.yaml: configs/data/math-mini.yaml's
    with pytest.raises(ValueError, match="no .*configs/data/mathematics.yaml to declare it"):
        data_domain({"name": "mathematics"})
    with pytest.raises(ValueError, match="domain 'maths' is not one of"):
        data_domain({"name": "x", "domain": "maths"})
