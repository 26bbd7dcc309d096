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
    """configs/experiment/ is what paper/tables.yaml declares, file for file (tools/experiment_configs.py)."""
    from common.declarations import paper_runs

    sys.path.insert(0, str(REPO / "tools"))
    import experiment_configs

    diff = experiment_configs.differences()
    assert not diff, f"run `python tools/experiment_configs.py`: {diff}"
    runs = paper_runs()
    assert set(EXPERIMENTS) == set(runs)
    # the paper's runs: 6 methods x 3 models for Table 1, SFT and EAFT for Tables 2 and 3, 4 gating variants
    assert len(runs) == 6 * 3 + 2 + 2 + 4 and {"table1-eaft", "table1-glm4-9b-sft_kl", "table2-eaft",
                                                "table3-sft", "fig5-eaft3"} <= set(runs)


def test_every_declaration_has_what_its_tables_and_suites_need():
    from common.declarations import problems

    assert problems() == []


def test_a_declaration_missing_something_a_table_needs_is_named(tmp_path):
    """A copy of configs/ and paper/tables.yaml with one hole of each kind: every hole is reported by file."""
    import shutil

    from common import declarations

    configs, paper = tmp_path / "configs", tmp_path / "paper" / "tables.yaml"
    shutil.copytree(CONFIGS, configs)
    paper.parent.mkdir()
    paper.write_text((REPO / "paper" / "tables.yaml").read_text().replace("[mmlu, ifeval, cluewsc]",
                                                                           "[mmlu, ifeval, cluewsc, newbench]"))
    (configs / "method" / "talr.yaml").write_text("name: talr\nloss: talr\nhparams: {}\n")  # no title
    model = configs / "model" / "glm4-9b.yaml"
    model.write_text("\n".join(x for x in model.read_text().splitlines() if not x.startswith("params")))
    declarations._group.cache_clear()
    declarations.paper_tables.cache_clear()
    try:
        found = declarations.problems(configs, paper)
    finally:
        declarations._group.cache_clear()
        declarations.paper_tables.cache_clear()
    assert any("newbench" in f and "configs/benchmark/newbench.yaml" in f for f in found), found
    assert any(f.startswith("configs/method/talr.yaml: no `title`") for f in found), found
    assert any(f.startswith("configs/model/glm4-9b.yaml: no `params`") for f in found), found


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_names_configs_that_exist(name):
    cfg = compose_train(f"experiment={name}")
    assert cfg.model.name in names("model") and cfg.method.name in names("method") and cfg.data.name in names("data")
    assert cfg.profile == "paper" and cfg.trainer.learning_rate == 1e-5 and not cfg.trainer.get("use_cpu")
    assert cfg.deepspeed.zero_optimization.stage == 3 and cfg.global_batch_size == 64
    assert cfg.run_name == f"{cfg.model.name}-{cfg.data.name}-{cfg.method.name}-s{cfg.seed}"
    from common.declarations import suite_benchmarks

    benches = suite_benchmarks(OmegaConf.to_container(OmegaConf.load(CONFIGS / "suite" / f"{cfg.suite}.yaml")))
    assert benches and all((CONFIGS / "benchmark" / f"{b}.yaml").exists() for b in benches)
    # the table the run belongs to scores its data's domain
    domains = {OmegaConf.load(CONFIGS / "benchmark" / f"{b}.yaml").domain for b in benches}
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
    assert jobs["eval-qwen3-4b-math"]["tasks"] == [  # each run's checkpoint sweep (evaluation/sweep.py)
        ["model=runs/qwen3-4b-math-sft-s42", "suite=table1", "checkpoints=epoch"],
        ["model=runs/qwen3-4b-math-eaft-s42", "suite=table1", "checkpoints=epoch"]]
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
