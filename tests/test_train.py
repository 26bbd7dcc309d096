"""The training entry point on the tiny random model: every method through the real CLI, run-directory
contents, gradient-accumulation invariance, resume, and config composition."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ALL_METHODS = sorted(p.stem for p in (CONFIGS / "method").glob("*.yaml"))


def cfg_for(*overrides, name="train"):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose(name, overrides=list(overrides))


def run_cli(module, *overrides, cwd=REPO, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {overrides} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def all_methods_runs(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("runs")
    run_cli("training.precompute", "model=tiny", f"data.train_file={tiny_data}")
    # One multirun process: every method, 12 steps (one epoch of 96 rows at batch 8).
    run_cli("training.train", "-m", f"method={','.join(ALL_METHODS)}", f"data.train_file={tiny_data}",
            f"out_dir={out}", "trainer.max_steps=12", "trainer.save_steps=6")
    return out


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_trains_and_the_loss_goes_down(all_methods_runs, method):
    run_dir = all_methods_runs / f"tiny-tiny-{method}-s42"
    steps = [m for m in metrics(run_dir) if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 13))
    # token_ce is the plain CE of the supervised tokens under the current weights, comparable across methods
    first, last = steps[0]["token_ce"], steps[-1]["token_ce"]
    assert last < first - 0.2, f"{method}: token CE {first:.3f} -> {last:.3f}"
    for key in ("loss", "learning_rate", "grad_norm", "gate_mean", "conflict_share", "ce_high_entropy"):
        assert key in steps[-1], key
    assert (run_dir / "config.yaml").exists() and (run_dir / "final" / "config.json").exists()
    assert (run_dir / "final" / "tokenizer_config.json").exists()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["method"] == method and info["global_step"] == 12 and info["finished"]
    assert info["data_sha256"] and info["packages"]["transformers"] and info["data_counts"]["kept"] == 96


def test_gate_statistics_differ_by_method(all_methods_runs):
    gate = {m: metrics(all_methods_runs / f"tiny-tiny-{m}-s42")[-2]["gate_mean"] for m in ("sft", "eaft", "dft")}
    assert gate["sft"] == 1.0
    assert 0 < gate["eaft"] < 1 and 0 < gate["dft"] < 1


def test_masked_sft_reads_the_precomputed_threshold(all_methods_runs, tiny_data):
    pre = json.loads((tiny_data.parent / "precomputed" / "tiny.json").read_text())
    cfg = (all_methods_runs / "tiny-tiny-masked_sft-s42" / "config.yaml").read_text()
    assert pre["masked_sft"]["entropy_threshold"] > 0 and "precomputed: masked_sft" in cfg
    assert len(pre["flow"]["weights"]) == 96
    assert sum(pre["flow"]["weights"]) / 96 == pytest.approx(1.0)


def test_flow_without_precompute_is_a_clear_error(tmp_path):
    data = tmp_path / "train.jsonl"
    shutil.copy(REPO / "tests/assets/tiny_chat.jsonl", data)
    proc = run_cli("training.train", "method=flow", f"data.train_file={data}", f"out_dir={tmp_path}",
                   check=False)
    assert proc.returncode != 0 and "training.precompute" in proc.stderr


def _train_in_process(tmp_path, name, *overrides):
    from training.train import main
    cfg = cfg_for("method=eaft", f"out_dir={tmp_path}", f"run_name={name}", "trainer.max_steps=1",
                  "trainer.save_strategy=no", "trainer.learning_rate=1.0", "trainer.optim=sgd", "trainer.warmup_steps=0",
                  "trainer.lr_scheduler_type=constant", "trainer.max_grad_norm=0", *overrides)
    main(cfg)
    return metrics(tmp_path / name)[0], load_file(tmp_path / name / "final" / "model.safetensors")


@pytest.mark.parametrize("method", ["sft", "eaft"])
def test_batch_8_ga_1_equals_batch_2_ga_4(tmp_path, method):
    m1, w1 = _train_in_process(tmp_path, "b8", f"method={method}", "trainer.per_device_train_batch_size=8",
                               "trainer.gradient_accumulation_steps=1")
    m2, w2 = _train_in_process(tmp_path, "b2", f"method={method}", "trainer.per_device_train_batch_size=2",
                               "trainer.gradient_accumulation_steps=4")
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)
    assert m1["gate_mean"] == pytest.approx(m2["gate_mean"], rel=1e-5)
    from common.models import load_model, load_tokenizer
    torch.manual_seed(42)  # the seed the runs used; from_config initialises from the global RNG
    init = load_model(cfg_for().model, load_tokenizer(cfg_for().model)).state_dict()
    # Plain SGD, so the update is lr x gradient and compares the gradients themselves (Adam's first step is
    # ~lr x sign(g), which hides scale errors and amplifies rounding noise).
    moved = 0
    for k in w1:
        torch.testing.assert_close(w1[k] - init[k], w2[k] - init[k], rtol=1e-4, atol=1e-7)
        moved += int((w1[k] - init[k]).abs().max() > 1e-4)
    assert moved > 0  # the update is real, not two untouched copies


def test_interrupted_run_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path, tiny_data):
    common = [f"data.train_file={tiny_data}", "trainer.max_steps=8", "trainer.save_steps=4", "method=eaft"]
    run_cli("training.train", *common, f"out_dir={tmp_path / 'a'}")
    ref = metrics(tmp_path / "a" / "tiny-tiny-eaft-s42")
    run_cli("training.train", *common, f"out_dir={tmp_path / 'b'}")
    run_dir = tmp_path / "b" / "tiny-tiny-eaft-s42"
    # Put the run directory back in the state a kill after step 4's checkpoint leaves behind.
    shutil.rmtree(run_dir / "checkpoint-8")
    shutil.rmtree(run_dir / "final")
    (run_dir / "run_info.json").unlink()
    proc = run_cli("training.train", *common, f"out_dir={tmp_path / 'b'}")
    assert "resuming from" in proc.stdout and "checkpoint-4" in proc.stdout
    resumed = metrics(run_dir)
    steps = [m["step"] for m in resumed if "loss" in m]
    assert steps == list(range(1, 9))  # no step lost, none duplicated
    last_ref = [m for m in ref if "loss" in m][-1]
    last = [m for m in resumed if "loss" in m][-1]
    assert last["loss"] == pytest.approx(last_ref["loss"], rel=1e-5)
    assert json.loads((run_dir / "run_info.json").read_text())["resumed_from"].endswith("checkpoint-4")


def test_bad_data_names_the_file_and_line(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "wizard", "content": "x"}]}\n')
    proc = run_cli("training.train", f"data.train_file={bad}", f"out_dir={tmp_path}", check=False)
    assert proc.returncode != 0 and f"{bad}:2" in proc.stderr and "role" in proc.stderr


def test_unknown_method_lists_valid_ones(tmp_path):
    proc = run_cli("training.train", "method=sft", "method.loss=eaft_v2", f"out_dir={tmp_path}", check=False)
    assert proc.returncode != 0 and "valid methods" in proc.stderr and "eaft_sig" in proc.stderr


GROUPS = {g: sorted(p.stem for p in (CONFIGS / g).glob("*.yaml"))
          for g in ("model", "method", "data", "trainer", "deepspeed")}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_composes(group, option):
    cfg = cfg_for(f"{group}={option}")
    from omegaconf import OmegaConf
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved[group] is not None
    if group == "method":
        from eaft_loss.losses import LOSSES
        assert cfg.method.loss in LOSSES
    assert cfg_for(f"{group}={option}", name="precompute")[group] is not None


def test_precompute_never_writes_beside_data_committed_under_tests(tmp_path):
    from training.precompute import precomputed_path

    assert precomputed_path(tmp_path / "d" / "train.jsonl", "m") == tmp_path / "d" / "precomputed" / "m.json"
    assert precomputed_path("./data/math/train.jsonl", "m") == Path("./data/math/precomputed/m.json")
    tiny = precomputed_path(REPO / "tests" / "assets" / "tiny_chat.jsonl", "tiny")
    assert tiny == REPO / "runs" / "precomputed" / "tests" / "assets" / "precomputed" / "tiny.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(tiny)], cwd=REPO, check=False)
    assert ignored.returncode == 0, f"{tiny} is not ignored by git"
