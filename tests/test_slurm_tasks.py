"""slurm/common.sh reads an array task's overrides from its line of the task file (written by submit.py with
shlex.quote) as data: every argument comes back as written, and nothing in a line is executed or expanded.
Runs bash only, no SLURM (fast tier)."""

import shlex
import subprocess

import pytest

from tests.conftest import REPO

ARGS = ["model=tiny", "run_name=a b", "note=it's", "", 'x="q"', "p=$HOME", "star=*", r"bs=\n", "tab=\t|",
        "cmd=$(touch {marker})", "tick=`touch {marker}`", "semi=;touch {marker}"]


def task_args(tmp_path, lines: list[str], task: int) -> subprocess.CompletedProcess:
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("".join(line + "\n" for line in lines))
    script = 'source slurm/common.sh; printf "%s\\0" "${TASK_ARGS[@]}"'
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EAFT_SITE": str(tmp_path / "no-site.sh"),
           "EAFT_TASKS": str(tasks), "SLURM_ARRAY_TASK_ID": str(task)}
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=False)


def test_each_task_gets_its_own_line_back_argument_for_argument(tmp_path):
    marker = tmp_path / "executed"
    args = [a.format(marker=marker) for a in ARGS]
    proc = task_args(tmp_path, ["method=sft seed=0", shlex.join(args)], task=1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\0")[:-1] == args
    assert not marker.exists()  # $(...), backticks and ; stayed text
    first = task_args(tmp_path, ["method=sft seed=0", shlex.join(args)], task=0)
    assert first.stdout.split("\0")[:-1] == ["method=sft", "seed=0"]


@pytest.mark.parametrize("lines, task, message", [
    (["method=sft"], 3, "has no line for array task 3"),
    (["method='sft"], 0, "is not shell-quoted arguments"),
])
def test_a_missing_or_unparsable_line_stops_the_job(tmp_path, lines, task, message):
    proc = task_args(tmp_path, lines, task)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_hand_written_line_is_split_into_words_and_never_run(tmp_path):
    marker = tmp_path / "executed"
    proc = task_args(tmp_path, [f"seed=1 x=$(touch {marker}) y=$HOME"], task=0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\0")[:-1] == ["seed=1", "x=$(touch", f"{marker})", "y=$HOME"]
    assert not marker.exists()


@pytest.mark.parametrize("args, stops", [
    (["model=qwen3-4b", "method=eaft", "data=math"], True),
    (["model=qwen3-4b", "method=eaft", "data=math", "trainer=paper"], False),
    (["experiment=table1-eaft"], False),
])
def test_a_training_job_without_a_trainer_stops_before_it_starts(tmp_path, args, stops):
    """train.sbatch refuses to compose configs/train.yaml's CPU test trainer on a cluster by default."""
    env = {"PATH": str(tmp_path) + ":/usr/bin:/bin", "HOME": str(tmp_path), "EAFT_SITE": str(tmp_path / "none.sh")}
    (tmp_path / "scontrol").write_text("#!/bin/sh\nexit 42\n")  # reached only when the check let the job through
    (tmp_path / "scontrol").chmod(0o755)
    proc = subprocess.run(["bash", "slurm/train.sbatch", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    if stops:
        assert proc.returncode == 2 and "name the trainer" in proc.stderr, proc.stderr
    else:
        assert "name the trainer" not in proc.stderr
