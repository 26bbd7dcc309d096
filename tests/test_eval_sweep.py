"""The checkpoint sweep (evaluation/sweep.py, queued by slurm/submit.py): which checkpoints each rule evaluates,
their results where the tables and Fig. 2a read them, every table row naming the step it used, `select=final`
still available, and the sweep's cost in slurm/gpu_hours.py. A tiny run trained for 2 epochs here. Fast tier."""

import sys
from pathlib import Path

import pytest

from analysis import tables
from analysis.figures import general_by_step
from analysis.paper import layouts, load_paper
from analysis.results import load_metrics, select_checkpoints
from evaluation import sweep
from tests.test_eval_cli import FIXTURES
from tests.test_train import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, tiny_data) -> Path:
    """96 rows at batch 8: 12 steps an epoch; 2 epochs, a save every 5 steps -> checkpoint-5, 10, 15, 20, 24 = final."""
    out = tmp_path_factory.mktemp("runs")
    run_cli("training.train", "method=eaft", f"data.train_file={tiny_data}", f"out_dir={out}", "trainer.max_steps=-1",
            "trainer.num_train_epochs=2", "trainer.save_steps=5")
    return out / "tiny-tiny-eaft-s42"


def test_each_rule_picks_its_checkpoints(two_epochs):
    names = {rule: [p.name for p in sweep.pick(two_epochs, rule)] for rule in sweep.RULES}
    assert names == {"final": [], "epoch": ["checkpoint-10"],    # the final model ends epoch 2
                     "all": ["checkpoint-5", "checkpoint-10", "checkpoint-15", "checkpoint-20"]}
    with pytest.raises(ValueError, match="one of final, epoch, all"):
        sweep.pick(two_epochs, "best")


def test_the_sweep_feeds_the_tables_selection_and_fig2a(two_epochs, tmp_path):
    metrics = tmp_path / "metrics"
    sweep.main([f"model={two_epochs}", "checkpoints=epoch", "benchmarks=[gsm8k,cluewsc]", "limit=3",
                "max_new_tokens=4", f"out_dir={metrics}", "progress=false", *FIXTURES])
    run = two_epochs.name
    assert not (metrics / run / "checkpoint-20").exists()   # 4 steps before the final model, which ends epoch 2
    for where in ("checkpoint-10", ""):
        assert (metrics / run / where / "gsm8k.json").exists() and (metrics / run / where / "cluewsc.json").exists()
    df = load_metrics(metrics, [two_epochs.parent])
    assert sorted(df.loc[df["run"] == run, "step"].unique()) == [10, 24]
    best = select_checkpoints(df, "best")
    final = select_checkpoints(df, "final")
    assert set(final["step"]) == {24} and set(final["checkpoint"]) == {"step 24 (last of 2 evaluated)"}
    assert set(best["checkpoint"]) == {f"step {int(best['step'].iloc[0])} (best of 2 evaluated)"}
    # Fig. 2a: the general benchmark (CLUEWSC) at each evaluated step
    steps = general_by_step(df)
    assert sorted(steps.loc[steps["method"] == "eaft", "step"]) == [10, 24]
    # a table row of ours names the step it used (the tiny model is not a paper model: the all-runs table)
    ours = tables.ours_scores(best)
    assert ours.loc[ours["method"] == "eaft", "checkpoints"].iloc[0] == best["checkpoint"].iloc[0].join(["seed 42: ", ""])
    tables.build_table(layouts()["table1"], "table1", load_paper(), ours)  # renders with the new column


def test_submit_queues_the_sweep_for_every_run(tmp_path, monkeypatch):
    monkeypatch.setenv("EAFT_SITE", str(tmp_path / "no-site.sh"))
    sys.path.insert(0, str(REPO / "slurm"))
    from submit import main

    def eval_job(*extra):
        jobs = {j["name"]: j for j in main(["--experiments", "table1-sft,table1-eaft", "--gpus-per-node", "8",
                                            "--logs", str(tmp_path), "--dry-run", *extra])["jobs"]}
        return jobs["eval-qwen3-4b"], jobs["eval-qwen3-4b-base"]

    runs, base = eval_job()
    assert "slurm/sweep.sbatch" in runs["command"] and all("checkpoints=epoch" in t for t in runs["tasks"])
    assert "slurm/eval.sbatch" in base["command"]  # the base model has no checkpoints
    runs, _ = eval_job("--eval-checkpoints", "final")
    assert all("checkpoints=final" in t for t in runs["tasks"])


def test_gpu_hours_counts_the_sweep(capsys):
    sys.path.insert(0, str(REPO / "slurm"))
    import gpu_hours

    assert gpu_hours.evaluations_per_run(19_000, 10, "epoch") == 10
    assert gpu_hours.evaluations_per_run(19_000, 2.5, "epoch") == 3   # 2 epoch ends, then the final model
    assert gpu_hours.evaluations_per_run(19_000, 10, "all") == 30    # 2,970 steps, a save every 100
    assert gpu_hours.evaluations_per_run(19_000, 10, "final") == 1
    rows = gpu_hours.main([])
    out = capsys.readouterr().out
    assert "evaluations (final / epoch / all)" in out and "| Table 2 (medical) | qwen3-4b-thinking |" in out
    t2 = next(r for r in rows if r["model"] == "qwen3-4b-thinking")
    # the thinking model generates all six Table 2 benchmarks: thinking tokens on every item
    assert t2["eval_gpu_hours_per_evaluation"] == pytest.approx(
        2 * 4.02e9 * 8000 * (4183 + 1273 + 500 + 14042 + 541 + 304) / (0.05 * 312e12) / 3600)
