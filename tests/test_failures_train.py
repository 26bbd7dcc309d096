"""Training fails loudly, resumes safely and never labels a broken model finished (the README's "Failure modes").

Each test is named after the case it reproduces: case1 divergence, case3 a run directory's owner and config,
case4 re-running a finished run, case7 corrupt checkpoints, case8 late errors, case9 degenerate training signal,
case10 the whole run's train_loss. All on the tiny random model through the real CLI.
"""

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.test_train import metrics, run_cli
from training import checkpoints

COMMON = ["trainer.max_steps=8", "trainer.save_steps=4", "run_name=r"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data) -> Path:
    """One finished 8-step EAFT run, copied by each test that changes it."""
    out = tmp_path_factory.mktemp("finished")
    train(tiny_data, out)
    return out / "r"


def copy_run(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "r")
    (tmp_path / "r" / ".lock").unlink(missing_ok=True)
    return tmp_path / "r"


def train(tiny_data, out, *extra, method="eaft", check=True):
    return run_cli("training.train", *COMMON, f"method={method}", f"data.train_file={tiny_data}", f"out_dir={out}",
                   *extra, check=check)


def steps_of(run_dir: Path) -> list[int]:
    return sorted(checkpoints.step_of(p) for p in run_dir.glob("checkpoint-*"))


# ---- case 1: divergence -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("patience", [1, 3])
def test_case1_a_diverging_run_stops_and_is_not_marked_finished(tmp_path, tiny_data, patience):
    proc = train(tiny_data, tmp_path, "trainer.learning_rate=1e6", f"divergence_patience={patience}", check=False)
    assert proc.returncode != 0
    assert "training diverged" in proc.stderr and "at step" in proc.stderr
    run_dir = tmp_path / "r"
    bad = [m for m in metrics(run_dir) if "loss" in m and not all(
        abs(m[k]) < float("inf") for k in ("loss", "grad_norm"))]  # NaN fails `< inf` too
    assert bad, "the logged loss or grad norm must show the NaN, not hide it"
    first_bad = bad[0]["step"]
    assert max(m["step"] for m in metrics(run_dir)) == first_bad + patience - 1  # stopped after `patience` steps
    assert all(s < first_bad for s in steps_of(run_dir)), "a checkpoint was saved from a non-finite step"
    assert not (run_dir / "final").exists()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["finished"] is False and "diverged" in info["error"]


# ---- case 3: one owner, one config ------------------------------------------------------------------------------

def test_case3_a_changed_config_is_refused_and_config_yaml_kept(finished, tmp_path, tiny_data):
    run_dir = copy_run(finished, tmp_path)
    before = (run_dir / "config.yaml").read_text()
    proc = train(tiny_data, tmp_path, "trainer.learning_rate=1", method="sft", check=False)
    assert proc.returncode != 0
    assert "method.name: 'eaft' -> 'sft'" in proc.stderr and "trainer.learning_rate" in proc.stderr
    assert (run_dir / "config.yaml").read_text() == before


def test_case3_a_key_that_may_change_on_resume_is_accepted(finished, tmp_path, tiny_data):
    run_dir = copy_run(finished, tmp_path)
    proc = train(tiny_data, tmp_path, "trainer.logging_steps=2", "trainer.disable_tqdm=true")
    assert "already finished" in proc.stdout and steps_of(run_dir) == [4, 8]


def test_case3_a_second_process_on_the_same_run_is_refused(finished, tmp_path, tiny_data):
    run_dir = copy_run(finished, tmp_path)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # stands for another training holding the run
        proc = train(tiny_data, tmp_path, check=False)
    finally:
        os.close(fd)
    assert proc.returncode != 0 and "is being trained by another process" in proc.stderr


# ---- case 4: re-running a finished run --------------------------------------------------------------------------

def test_case4_rerunning_a_finished_run_does_nothing(finished, tmp_path, tiny_data):
    run_dir = copy_run(finished, tmp_path)
    info = (run_dir / "run_info.json").read_text()
    lines = (run_dir / "metrics.jsonl").read_text()
    proc = train(tiny_data, tmp_path)
    assert "already finished at step 8" in proc.stdout
    assert (run_dir / "run_info.json").read_text() == info and (run_dir / "metrics.jsonl").read_text() == lines
    assert steps_of(run_dir) == [4, 8] and json.loads(info)["global_step"] == 8


# ---- case 7: corrupt checkpoints --------------------------------------------------------------------------------

def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


CORRUPTIONS = {
    "truncated_safetensors": lambda c: _truncate(c / "model.safetensors"),
    "empty_trainer_state": lambda c: (c / "trainer_state.json").write_text(""),
    "truncated_optimizer": lambda c: _truncate(c / "optimizer.pt"),
    "no_marker_truncated_optimizer": lambda c: ((c / checkpoints.MARKER).unlink(), _truncate(c / "optimizer.pt")),
    "no_marker_empty_trainer_state": lambda c: ((c / checkpoints.MARKER).unlink(),
                                                (c / "trainer_state.json").write_text("")),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_case7_a_corrupt_newest_checkpoint_is_skipped_and_named(finished, tmp_path, tiny_data, corruption):
    run_dir = copy_run(finished, tmp_path)
    ref_info = json.loads((run_dir / "run_info.json").read_text())
    # What a job killed after step 8's checkpoint, while that checkpoint was being damaged, leaves behind.
    shutil.rmtree(run_dir / "final")
    (run_dir / "run_info.json").unlink()
    CORRUPTIONS[corruption](run_dir / "checkpoint-8")
    assert checkpoints.verify(run_dir / "checkpoint-8") is not None
    proc = train(tiny_data, tmp_path)
    assert f"skipping {run_dir / 'checkpoint-8'}" in proc.stdout and "resuming from" in proc.stdout
    assert (run_dir / "rejected-checkpoint-8" / "REJECTED.txt").exists()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["finished"] and info["global_step"] == 8 and info["resumed_from"].endswith("checkpoint-4")
    assert checkpoints.verify(run_dir / "checkpoint-8") is None  # saved again, complete this time
    # case 10: the whole run's mean loss, the same as the uninterrupted run's, not the mean of steps 5-8 only
    assert info["train_loss"] == pytest.approx(ref_info["train_loss"], rel=1e-5)


def test_case10_train_loss_is_the_mean_over_every_step(finished):
    logged = [m["loss"] for m in metrics(finished) if "loss" in m]
    info = json.loads((finished / "run_info.json").read_text())
    assert len(logged) == 8 and info["train_loss"] == pytest.approx(sum(logged) / 8, rel=1e-6)


def test_case7_every_checkpoint_of_a_finished_run_verifies(finished, tmp_path):
    assert [checkpoints.verify(finished / f"checkpoint-{s}") for s in (4, 8)] == [None, None]
    # A whole checkpoint saved before markers existed still counts, by its content.
    legacy = shutil.copytree(finished / "checkpoint-8", tmp_path / "checkpoint-8")
    (legacy / checkpoints.MARKER).unlink()
    assert checkpoints.content_check(legacy) is None and checkpoints.verify(legacy) is None
    last, skipped = checkpoints.newest_verified(finished)
    assert last == finished / "checkpoint-8" and skipped == []


# ---- case 8: errors before any heavy work -----------------------------------------------------------------------

@pytest.mark.parametrize("override,says", [("trainer.learning_rate=abc", "trainer.learning_rate='abc' must be"),
                                           ("+trainer.max_step=3", "trainer.max_step is not a TrainingArguments")])
def test_case8_a_bad_trainer_key_fails_before_tokenising(tmp_path, tiny_data, override, says):
    proc = train(tiny_data, tmp_path, override, check=False)
    assert proc.returncode != 0 and says in proc.stderr
    assert "[train] r:" not in proc.stdout and not (tmp_path / "r" / "config.yaml").exists()


# ---- case 9: degenerate training signal -------------------------------------------------------------------------

def test_case9_a_zero_step_run_is_an_error(tmp_path, tiny_data):
    proc = train(tiny_data, tmp_path, "trainer.max_steps=-1", "trainer.num_train_epochs=0", check=False)
    assert proc.returncode != 0 and "zero optimizer steps" in proc.stderr
    assert not (tmp_path / "r" / "final").exists() and not (tmp_path / "r" / "run_info.json").exists()


def test_case9_an_all_masked_run_is_an_error(tmp_path, tiny_data):
    proc = train(tiny_data, tmp_path, "method.precomputed=null", "+method.hparams.entropy_threshold=1e9",
                 method="masked_sft", check=False)
    assert proc.returncode != 0 and "zero gradient norm" in proc.stderr
    assert not (tmp_path / "r" / "final").exists() and not (tmp_path / "r" / "run_info.json").exists()


def test_case7_evaluation_takes_the_newest_complete_checkpoint(finished, tmp_path, capsys):
    from evaluation.evaluate import resolve_model

    run_dir = copy_run(finished, tmp_path)
    shutil.rmtree(run_dir / "final")
    _truncate(run_dir / "checkpoint-8" / "model.safetensors")
    picked = resolve_model(str(run_dir))
    assert picked["step"] == 4 and picked["model_cfg"]["name_or_path"].endswith("checkpoint-4")
    assert f"skipping {run_dir / 'checkpoint-8'}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="checkpoint-8 is not a complete checkpoint: model.safetensors has"):
        resolve_model(str(run_dir / "checkpoint-8"))


def test_case3_a_run_saved_before_the_naming_metadata_existed_still_resumes():
    """Runs started before run_prefix / profile / suite / data.domain were composed must resume: those keys only
    name or label a run. A changed training key is still a difference."""
    from training.guards import config_differences

    old = {"seed": 1, "data": {"name": "math"}, "trainer": {"learning_rate": 1e-5}}
    new = {"seed": 1, "data": {"name": "math", "domain": "math"}, "trainer": {"learning_rate": 1e-5},
           "run_prefix": "qwen3-4b-math", "profile": "paper", "suite": "table1"}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "seed": 2}) == ["seed: 1 -> 2"]
