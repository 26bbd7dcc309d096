"""The demo pipeline end to end on the tiny random model (seconds), and on the real SmolLM2 files (slow tier)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
F = REPO / "tests/fixtures/eval"
TINY = REPO / "tests/assets/tiny_chat.jsonl"


def tiny_overrides(tmp: Path) -> list[str]:
    return ["model=tiny", "data=tiny", "demo_profile=tiny", f"out_dir={tmp / 'demo'}", f"runs_dir={tmp / 'runs'}",
            f"metrics_dir={tmp / 'metrics'}"]


def run_demo(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "experiments.demo", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_demo_pipeline_on_the_tiny_model(tmp_path):
    run_demo(*tiny_overrides(tmp_path))
    out = tmp_path / "demo"
    table = (out / "table.md").read_text()
    for needle in ("| base |", "| sft (1 seed) |", "| eaft (1 seed) |", "target NLL/token", "KL to base",
                   "eaft - sft", "confident-conflict tokens", "Time per stage"):
        assert needle in table, needle
    assert (out / "gain_vs_drift.png").stat().st_size > 10_000 and (out / "landscape.png").exists()
    timing = json.loads((out / "timing.json").read_text())
    assert timing["total (this invocation)"] > 0 and timing["train demo-tiny-eaft-s0"] > 0
    for run in ("demo-tiny-sft-s0", "demo-tiny-eaft-s0"):  # training logs kept beside the report, for Fig. 4
        log = (out / "runs" / run / "metrics.jsonl").read_text().splitlines()
        assert len(log) >= 2 and "ce_high_entropy" in log[0]
        info = json.loads((out / "runs" / run / "run_info.json").read_text())
        assert info["method"] == run.split("-")[2] and info["profile"] == "tiny"  # analysis groups by it
        # a finished run keeps its model, not its resume checkpoints (keep_checkpoints: false)
        assert (tmp_path / "runs" / run / "final").is_dir() and not list((tmp_path / "runs" / run).glob("checkpoint-*"))
    base_info = json.loads((out / "runs" / "demo-tiny-base" / "run_info.json").read_text())
    assert (base_info["method"], base_info["model"], base_info["profile"]) == ("base", "tiny", "tiny")
    for run in ("demo-tiny-base", "demo-tiny-sft-s0", "demo-tiny-eaft-s0"):
        names = {p.stem for p in (tmp_path / "metrics" / run).glob("*.json")}
        assert names == {"target_nll", "gsm8k_heldout", "arc_easy", "general_kl"}, (run, names)
    # the tuned models drifted from the base, which did not
    kl = {r: json.loads((tmp_path / "metrics" / r / "general_kl.json").read_text())["value"]
          for r in ("demo-tiny-base", "demo-tiny-sft-s0")}
    assert kl["demo-tiny-base"] == 0.0 and kl["demo-tiny-sft-s0"] > 0.0
    # the runs pair over the base evaluation's answers (any CPU), which the base generated greedily
    settings = {r: json.loads((tmp_path / "metrics" / r / "general_kl.json").read_text())["settings"]
                for r in ("demo-tiny-base", "demo-tiny-sft-s0")}
    assert settings["demo-tiny-base"]["base_answers"] == "greedy"
    assert settings["demo-tiny-sft-s0"]["base_answers"].endswith("demo-tiny-base/items/general_kl.jsonl")
    # a second run reuses everything: no training, no new generations, and timing.json keeps the times of the work
    first_timing = (out / "timing.json").read_bytes()
    again = run_demo(*tiny_overrides(tmp_path))
    assert again.stdout.count("already trained") == 2 and again.stdout.count("already evaluated") == 3
    assert "resuming from" not in again.stdout and "nothing trained or measured" in again.stdout
    assert (out / "timing.json").read_bytes() == first_timing
    # and the table shows them, not this invocation's ~0 s
    took = json.loads(first_timing)["train demo-tiny-eaft-s0"]
    assert f"| train demo-tiny-eaft-s0 | {took:.0f} |" in (out / "table.md").read_text()
    # the report re-renders from the committed files alone, as its header says
    (out / "table.md").unlink()
    rendered = run_demo(*tiny_overrides(tmp_path), "report_only=true")
    assert "[train]" not in rendered.stdout and "| eaft (1 seed) |" in (out / "table.md").read_text()
    # a fresh checkout holds the kept logs and metrics but no weights: it retrains, unless told to reuse them
    shutil.rmtree(tmp_path / "runs")
    reused = run_demo(*tiny_overrides(tmp_path), "reuse_kept=true")
    assert reused.stdout.count("trained and evaluated before") == 2 and "[train]" not in reused.stdout
    assert "| eaft (1 seed) |" in (out / "table.md").read_text()
    (tmp_path / "metrics" / "demo-tiny-eaft-s0" / "general_kl.json").unlink()  # one group missing: that run redone
    run_demo(*tiny_overrides(tmp_path), "report_only=true")  # a run in progress: the report of what is evaluated
    partial = (out / "table.md").read_text()
    assert "Partial: 1 of 2 runs evaluated so far.** Not yet: seed 0: eaft." in partial and "| eaft" not in partial
    partly = run_demo(*tiny_overrides(tmp_path), "reuse_kept=true")
    assert partly.stdout.count("trained and evaluated before") == 1
    assert (tmp_path / "runs" / "demo-tiny-eaft-s0" / "final").is_dir()
    assert (tmp_path / "metrics" / "demo-tiny-eaft-s0" / "general_kl.json").exists()


@pytest.mark.slow
def test_make_demo_with_a_reduced_budget_on_smollm2(tmp_path):
    from conftest import need

    from data_pipeline.assets import SMOLLM2_DIR
    need("smollm2", (SMOLLM2_DIR / "config.json").exists(), "run `make assets` to build the SmolLM2 folder")
    run_demo(f"out_dir={tmp_path / 'demo'}", f"runs_dir={tmp_path / 'runs'}", f"metrics_dir={tmp_path / 'm'}",
             "demo_profile.train.n_examples=16", "demo_profile.mechanism.limit=8",
             "demo_profile.train.trainer.num_train_epochs=1", *[
                 f"demo_profile.eval.groups.{i}.limit={n}" for i, n in enumerate(REDUCED_LIMITS.values())])
    table = (tmp_path / "demo" / "table.md").read_text()
    assert "| eaft (1 seed) |" in table and "Pearson correlation of top-20" in table
    assert "KL to base" in table and "GSM8K held-out acc" in table and "arc_easy (%)" in table


# Items per evaluation group of the quick profile, in its order, for the reduced slow-tier run.
REDUCED_LIMITS = {"target_nll": 16, "gsm8k_heldout": 4, "general_kl": 8, "arc_easy,piqa": 40}


def test_reduced_limits_follow_the_quick_profile():
    import yaml

    groups = yaml.safe_load((REPO / "configs/demo_profile/quick.yaml").read_text())["eval"]["groups"]
    assert [",".join(g["benchmarks"]) for g in groups] == list(REDUCED_LIMITS)


@pytest.mark.parametrize("full", [False, True])
def test_make_demo_passes_overrides_the_demo_config_accepts(full):
    """What `make demo [FULL=1]` hands to experiments.demo composes into the intended profile (FULL=1 once passed a
    key the config does not have, and failed before doing anything)."""
    from hydra import compose, initialize_config_dir

    dry = subprocess.run(["make", "--no-print-directory", "-n", "demo", *(["FULL=1"] if full else [])], cwd=REPO, capture_output=True,
                         text=True, check=True, env={**os.environ, "MAKEFLAGS": ""}).stdout
    line = next(x for x in dry.splitlines() if "experiments.demo" in x)
    overrides = line.split("experiments.demo", 1)[1].split()
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("demo", overrides)
    assert cfg.demo_profile.name == ("full" if full else "quick")
    assert len(cfg.methods) == (12 if full else 2) and len(cfg.seeds) == (3 if full else 1)


def test_every_method_against_sft_is_averaged_over_seeds():
    import pandas as pd

    from analysis.demo_report import against_sft

    comp = pd.DataFrame([
        {"column": "general_kl", "what": "eaft - sft", "seed": 0, "diff": 0.03, "stderr": 0.004, "n": 64},
        {"column": "general_kl", "what": "eaft - sft", "seed": 1, "diff": 0.01, "stderr": 0.003, "n": 64},
        {"column": "general_kl", "what": "dft - sft", "seed": 0, "diff": -0.002, "stderr": 0.004, "n": 64},
        {"column": "general_kl", "what": "dft - base", "seed": 0, "diff": 0.1, "stderr": 0.01, "n": 64},
        {"column": "target_nll", "what": "eaft - sft", "seed": 0, "diff": 0.01, "stderr": 0.02, "n": 100},
    ])
    lines = against_sft(comp)
    assert lines[0].startswith("| method − SFT | seeds | target NLL ↓ | KL to base ↓ |")
    eaft, dft = lines[2], lines[3]
    assert eaft.startswith("| eaft | 2 |") and "+0.020 ± 0.003*" in eaft  # mean 0.02, SE sqrt(16+9)e-3/2 = 0.0025
    assert "+0.010 ± 0.020 |" in eaft  # one seed, within 2 SE: no star
    assert dft.startswith("| dft | 1 | – |") and "-0.002 ± 0.004 |" in dft
    assert not any("| sft |" in line for line in lines)


def test_a_method_that_failed_to_learn_is_named_under_the_figure_not_drawn():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from analysis.demo_report import gain_drift_figure

    df = pd.DataFrame([
        {"method": "base", "seed": None, "target_nll": 1.3, "general_kl": 0.0, "mini_avg": 54.0},
        {"method": "sft", "seed": 0, "target_nll": 0.86, "general_kl": 0.13, "mini_avg": 55.0},
        {"method": "eaft", "seed": 0, "target_nll": 0.85, "general_kl": 0.16, "mini_avg": 54.5},
        {"method": "talr", "seed": 0, "target_nll": 5.2, "general_kl": 0.35, "mini_avg": 51.0},
    ])
    fig = gain_drift_figure(df, "t")
    xs = [x for line in fig.axes[0].get_lines() for x in line.get_xdata()]
    assert min(xs) > 0.4  # only sft and eaft are drawn: gains 0.44 and 0.45, not talr's -3.9
    notes = [t.get_text() for t in fig.texts]
    assert any("TALR (gain -3.90, KL 0.350, mini -3.0 pts)" in t for t in notes), notes

    learned = gain_drift_figure(df[df.method != "talr"], "t")  # nothing failed: no note
    assert not any(t.get_text().startswith("Not drawn") for t in learned.texts)


def test_runs_paired_over_other_base_answers_are_refused_not_re_evaluated(tmp_path):
    """Runs (demo and study) read the base evaluation's general_kl answers, so a run whose answers differ was
    evaluated before the base was evaluated again: refused with the runs named, the base answers left alone."""
    from experiments.runner import Runner

    def items(name, answers):
        d = tmp_path / "m" / name / "items"
        d.mkdir(parents=True)
        (d / "general_kl.jsonl").write_text("".join(json.dumps({"id": k, "base_answer": v}) + "\n"
                                                    for k, v in answers.items()))

    items("x-base", {"1": "Paris.", "2": "Four."})
    items("same", {"1": "Paris.", "2": "Four."})
    items("other", {"1": "Paris.", "2": "Four, I think."})
    cfg = OmegaConf.create({"metrics_dir": str(tmp_path / "m"), "out_dir": str(tmp_path / "o"),
                            "runs_dir": str(tmp_path / "r")})
    runner = Runner(cfg, OmegaConf.create({"name": "t"}), tag="demo", prefix="x")
    runner.refuse_other_base_answers(["same", "not-evaluated"])
    before = (tmp_path / "m" / "x-base" / "items" / "general_kl.jsonl").read_text()
    with pytest.raises(RuntimeError, match=r"\['other'\] were evaluated over other base answers than x-base's"):
        runner.refuse_other_base_answers(["same", "other"])
    assert (tmp_path / "m" / "x-base" / "items" / "general_kl.jsonl").read_text() == before
    assert runner.general_kl_items("x-base").parts[-3:] == ("x-base", "items", "general_kl.jsonl")


def test_the_paired_report_refuses_result_files_it_cannot_pair(tmp_path):
    from analysis.demo_report import item_pairs, load_run

    run = tmp_path / "r"
    (run / "items").mkdir(parents=True)
    good = {"run": "r", "benchmark": "b", "metric": "acc", "value": 0.5, "stderr": 0.1}
    (run / "b.json").write_text(json.dumps(good))
    (run / "items" / "b.jsonl").write_text('{"id": "1", "acc": 1}\n{"id": "2", "acc": 0}\n')
    assert item_pairs(load_run(tmp_path, "r")["b"]) == {"1": (100.0, 1.0), "2": (0.0, 1.0)}
    (run / "items" / "b.jsonl").write_text('{"id": "1", "acc": 1}\n{"id": "2", "score": 0}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: .*'acc'"):  # not silently paired over fewer items
        item_pairs(load_run(tmp_path, "r")["b"])
    (run / "items" / "b.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"items/b\.jsonl: missing"):
        load_run(tmp_path, "r")
    (run / "b.json").write_text(json.dumps({k: v for k, v in good.items() if k != "value"}))
    with pytest.raises(ValueError, match=r"b\.json: not a result of evaluation/ \(missing \['value'\]\)"):
        load_run(tmp_path, "r")
    (run / "b.json").write_text('{"run": "r", "benchm')
    with pytest.raises(ValueError, match=r"b\.json: not JSON"):
        load_run(tmp_path, "r")
