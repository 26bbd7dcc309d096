"""The slurm/ scripts on a real one-node SLURM cluster (tests/slurm_cluster.sh starts it; Debian's slurm-wlm + munge).

1. slurm/submit.py runs the tiny pipeline as job arrays chained by dependencies: data (an array over 2 shards of
   a small math-mini build) -> finalize -> train (an array: tiny model x sft, eaft) -> eval (an array, task N after
   training task N) and a base-model eval -> tables. Every job must complete, in dependency order, and every
   stage's files must appear.
2. A training job killed mid-run resumes and ends where an uninterrupted one does: `scontrol requeue` after
   checkpoint-8 (preemption), then USR1 to the batch shell after checkpoint-16 (the time-limit signal, on which
   train.sbatch requeues itself), with a half-written checkpoint folder left behind like a kill during a save.

    .venv/bin/python -m pytest -m slurm tests/test_slurm.py        (~5 min on 2 busy cores)

Skipped with the reason where slurm-wlm/munge are not installed; CI installs them and sets EAFT_REQUIRE=slurm.
The cluster is stopped afterwards when this module started it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import need

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "slurm_cluster.sh"
FIX = REPO / "tests" / "fixtures" / "eval"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
pytestmark = pytest.mark.slurm


def have(binary: str) -> bool:
    return shutil.which(binary) is not None or Path("/usr/sbin", binary).exists()


@contextmanager
def running_cluster(site: Path):
    """The one-node cluster (started here unless it was already up, and then stopped afterwards) and the
    environment of a user's shell on it, with `site` as the site file (slurm/site.example.sh)."""
    need("slurm", all(have(b) for b in DAEMONS), "slurm-wlm and munge are not installed "
                                                  "(apt-get install -y slurm-wlm munge)")
    was_up = subprocess.run([str(CLUSTER), "status"], capture_output=True, check=False).returncode == 0
    proc = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    conf = re.search(r"SLURM_CONF=(\S+)", proc.stdout).group(1)
    try:
        yield {**os.environ, "SLURM_CONF": conf, "EAFT_SITE": str(site), "HF_HUB_OFFLINE": "1",
               "WANDB_MODE": "disabled"}
    finally:
        if not was_up:
            subprocess.run([str(CLUSTER), "stop"], capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The site file a user would write (slurm/site.example.sh): here, one core per job and the offline switches.
    site = tmp_path_factory.mktemp("site") / "site.sh"
    site.write_text(f'EAFT_PYTHON="{sys.executable}"\n'
                    + "".join(f'EAFT_{k}_SBATCH="--cpus-per-task=1"\n' for k in ("DATA", "TRAIN", "EVAL", "CPU"))
                    + "eaft_site_setup() { export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled; }\n")
    with running_cluster(site) as env:
        yield env


def slurm(env, *cmd) -> str:
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def jobs(env, job_id: str) -> list[dict]:
    """Every record of a job (one per array task) from `scontrol show job`, as dicts of its Key=Value fields."""
    out = slurm(env, "scontrol", "show", "job", job_id)
    return [dict(re.findall(r"(\w+)=(\S*)", block)) for block in out.strip().split("\n\n") if block.strip()]


def wait(env, job_ids: list[str], logs: Path, timeout: float) -> None:
    """Until none of the jobs is pending or running; on a timeout, the queue and the logs' tails."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not slurm(env, "squeue", "-h", "-j", ",".join(job_ids)).strip():
            return
        time.sleep(2)
    tails = "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("*.out")))
    pytest.fail(f"jobs {job_ids} not done in {timeout} s:\n{slurm(env, 'squeue')}\n{tails}")


def assert_completed(env, job_id: str, logs: Path) -> list[dict]:
    records = jobs(env, job_id)
    bad = [r for r in records if r["JobState"] != "COMPLETED"]
    if bad:
        tails = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.out")))
        pytest.fail(f"job {job_id}: {[(r['JobId'], r['JobState'], r.get('Reason')) for r in bad]}\n{tails}")
    return records


def when(record: dict, key: str) -> datetime:
    return datetime.fromisoformat(record[key])


def test_tiny_pipeline_runs_as_a_dependency_chain_of_arrays(cluster, tmp_path):
    env, logs = cluster, tmp_path / "logs"
    cmd = [sys.executable, "slurm/submit.py", "--data", "math-mini", "--models", "tiny", "--methods", "sft,eaft",
           "--seeds", "1", "--suite", "mini", "--data-shards", "2", "--data-dir", str(tmp_path / "data"),
           "--runs-dir", str(tmp_path / "runs"), "--metrics-dir", str(tmp_path / "metrics"),
           "--tables-dir", str(tmp_path / "tables"), "--logs", str(logs),
           # A small math-mini build (the real prepare -> generate -> finalize path, from the PyPI-carried GSM8K)
           "--data-args", "domain.pool.size=96 domain.heldout.n=8 domain.select.n_train=48",
           "--train-args", "trainer=tiny trainer.max_steps=4",
           "--eval-args", (f"benchmarks=[gsm8k] limit=4 bench.gsm8k.local.data_files=[{FIX}/gsm8k.jsonl] "
                           "max_new_tokens=8 progress=false")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(next(logs.glob("submit-*.json")).read_text())
    ids = {j["name"]: j["job_id"] for j in manifest["jobs"]}
    assert list(ids) == ["data-math-mini", "data-math-mini-finalize", "train-tiny", "eval-tiny", "eval-tiny-base",
                         "tables"]
    wait(env, list(ids.values()), logs, timeout=900)
    rec = {name: assert_completed(env, job_id, logs) for name, job_id in ids.items()}

    # Arrays of the right size, and every dependency honoured (SLURM's times have one-second resolution).
    assert len(rec["data-math-mini"]) == 2 and len(rec["train-tiny"]) == 2 and len(rec["eval-tiny"]) == 2
    finalize = rec["data-math-mini-finalize"][0]
    assert when(finalize, "StartTime") >= max(when(r, "EndTime") for r in rec["data-math-mini"])
    assert all(when(r, "StartTime") >= when(finalize, "EndTime") for r in rec["train-tiny"])
    train_end = {r["ArrayTaskId"]: when(r, "EndTime") for r in rec["train-tiny"]}
    assert all(when(r, "StartTime") >= train_end[r["ArrayTaskId"]] for r in rec["eval-tiny"])  # aftercorr
    evals = rec["eval-tiny"] + rec["eval-tiny-base"]
    assert when(rec["tables"][0], "StartTime") >= max(when(r, "EndTime") for r in evals)
    for shard in ("0", "1"):  # one log per array task, named logs/%x-%A_%a.out
        assert f"shard={shard} num_shards=2" in (logs / f"eaft-data-math-mini-{ids['data-math-mini']}_{shard}.out"
                                                 ).read_text()

    # Each stage's files.
    data = tmp_path / "data"
    assert len((data / "train.jsonl").read_text().splitlines()) == 48
    assert json.loads((data / "manifest.json").read_text())["counts"]["train"] == 48
    for method in ("sft", "eaft"):
        run = f"tiny-math-mini-{method}-s1"
        info = json.loads((tmp_path / "runs" / run / "run_info.json").read_text())
        assert info["finished"] and info["method"] == method and info["global_step"] == 4
        assert info["data_file"] == str(data / "train.jsonl")
        result = json.loads((tmp_path / "metrics" / run / "gsm8k.json").read_text())
        assert result["run"] == run and result["method"] == method and result["n"] == 4
    assert json.loads((tmp_path / "metrics" / "tiny" / "gsm8k.json").read_text())["method"] == "base"
    ours = (tmp_path / "tables" / "ours.md").read_text()
    rows = [line for line in ours.splitlines() if line.startswith("| tiny |")]
    assert {line.split("|")[4].strip() for line in rows} == {"base", "SFT", "EAFT"}  # model | profile | domain | method


def train_job(env, tmp_path, name: str, logs: Path) -> str:
    """The tiny model for 32 steps, a checkpoint every 4, through slurm/train.sbatch (torchrun, 1 CPU process)."""
    cmd = ["sbatch", "--parsable", f"--chdir={REPO}", f"--output={logs}/%x-%A_%a.out", f"--job-name={name}",
           "--cpus-per-task=1", "slurm/train.sbatch", "model=tiny", "data=tiny", "method=eaft", "trainer=tiny",
           "trainer.max_steps=32", "trainer.save_steps=4", f"out_dir={tmp_path / name}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]


def wait_until(done, what: str, env, job_id: str, logs: Path, timeout: float = 600) -> None:
    """Poll done() until true; fail with the job's state and the logs' tails on a timeout or if the job ended."""
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline or jobs(env, job_id)[0]["JobState"] in DONE:
            pytest.fail(f"{what}; job {jobs(env, job_id)[0]['JobState']}\n"
                        + "\n".join(p.read_text()[-3000:] for p in logs.glob("*.out")))
        time.sleep(0.05)


def wait_for(path: Path, env, job_id: str, logs: Path, timeout: float = 600) -> None:
    wait_until(path.exists, f"{path} did not appear", env, job_id, logs, timeout)


def freeze_training(out_dir: Path) -> None:
    """SIGSTOP the training process of the job writing to out_dir, so that the kill that follows lands at a known
    step: the tiny model runs several steps in the second SLURM takes to deliver a kill, and a kill that arrives
    after the next checkpoint (or the last step) tests nothing. Slurm's SIGKILL after KillWait ends it."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        # The worker (python -u -m training.train ...), not torchrun or srun, whose command lines name it too.
        if f"out_dir={out_dir}" in cmd and "training.train" in cmd and "torch.distributed.run" not in " ".join(cmd):
            proc.send_signal(signal.SIGSTOP)
            found.append(proc.pid)
    assert found, f"no training process writing to {out_dir}"


def attempts_resumed(log: Path) -> list[int]:
    """The checkpoint step each attempt resumed from, from the job's log (--open-mode=append: every attempt)."""
    return [int(n) for n in re.findall(r"resuming from \S+/checkpoint-(\d+)", log.read_text())] \
        if log.exists() else []


def test_killed_and_requeued_training_resumes_to_the_same_loss(cluster, tmp_path):
    env, logs = cluster, tmp_path / "logs"
    logs.mkdir()
    ref = train_job(env, tmp_path, "uninterrupted", logs)  # the second core runs it alongside
    job = train_job(env, tmp_path, "requeued", logs)
    out = tmp_path / "requeued"
    run = out / "tiny-tiny-eaft-s42"

    # 1. Preemption: the job is killed and put back in the queue right after checkpoint-8 is complete.
    wait_for(run / "checkpoint-8" / "trainer_state.json", env, job, logs)
    freeze_training(out)
    slurm(env, "scontrol", "requeue", job)
    # What a kill in the middle of a save leaves: a checkpoint folder without trainer_state.json (written last).
    deadline = time.time() + 120
    while jobs(env, job)[0]["Restarts"] == "0" and time.time() < deadline:
        time.sleep(0.1)
    partial = run / "checkpoint-30"
    partial.mkdir()
    (partial / "config.json").write_text("{}")

    # 2. The time-limit path: USR1 to the batch shell (what --signal=B:USR1@300 sends), which requeues the job,
    # once the second attempt has resumed and written a checkpoint of its own.
    def log() -> Path:  # logs/%x-%A_%a.out; %a of a job that is not an array depends on the SLURM version
        return next(logs.glob(f"requeued-{job}_*.out"), logs / "none")

    wait_until(lambda: attempts_resumed(log()), "the requeued job did not resume", env, job, logs)
    first = attempts_resumed(log())[0]
    wait_for(run / f"checkpoint-{first + 4}" / "trainer_state.json", env, job, logs)
    freeze_training(out)
    slurm(env, "scancel", "--batch", "--signal=USR1", job)
    wait(env, [ref, job], logs, timeout=900)
    assert_completed(env, ref, logs)
    record = assert_completed(env, job, logs)[0]
    assert record["Restarts"] == "2"

    assert "time limit near: requeueing" in log().read_text()  # --open-mode=append: every attempt in one log
    resumed = attempts_resumed(log())
    assert len(resumed) == 2 and 8 <= resumed[0] < resumed[1] < 32, resumed  # both kills landed mid-run
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_run = tmp_path / "uninterrupted" / "tiny-tiny-eaft-s42"
    ref_metrics = [json.loads(line) for line in (ref_run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 33))  # no step lost or repeated in metrics.jsonl
    ref_steps = [m for m in ref_metrics if "loss" in m]
    for a, b in zip(steps, ref_steps):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    info = json.loads((run / "run_info.json").read_text())
    assert info["finished"] and info["global_step"] == 32 and info["resumed_from"].endswith(f"-{resumed[1]}")
    wa, wb = load_file(run / "final" / "model.safetensors"), load_file(ref_run / "final" / "model.safetensors")
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_case7_requeue_after_a_corrupt_checkpoint_resumes_from_the_last_complete_one(cluster, tmp_path):
    """A job whose newest checkpoint was damaged (a truncated safetensors file, as a full disk or a kill during the
    save leaves it) is requeued: it must skip that checkpoint, name it, resume from the one before and finish,
    not crash on every requeue. Requeued once more after finishing, it must do nothing."""
    env, logs = cluster, tmp_path / "logs"
    logs.mkdir()
    cmd = ["sbatch", "--parsable", f"--chdir={REPO}", f"--output={logs}/%x-%A_%a.out", "--job-name=corrupt",
           "--cpus-per-task=1", "slurm/train.sbatch", "model=tiny", "data=tiny", "method=eaft", "trainer=tiny",
           "trainer.max_steps=12", "trainer.save_steps=4", f"out_dir={tmp_path / 'out'}"]
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    wait(env, [job], logs, timeout=600)
    assert_completed(env, job, logs)
    run = tmp_path / "out" / "tiny-tiny-eaft-s42"
    shutil.rmtree(run / "final")
    (run / "run_info.json").unlink()
    weights = run / "checkpoint-12" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    def requeue_and_wait() -> str:
        slurm(env, "scontrol", "requeue", job)
        time.sleep(1)
        wait(env, [job], logs, timeout=600)
        assert_completed(env, job, logs)
        return next(logs.glob(f"corrupt-{job}_*.out")).read_text()

    log = requeue_and_wait()
    assert f"skipping {run / 'checkpoint-12'}: " in log and "model.safetensors has" in log
    assert attempts_resumed_in(log) == [8]
    info = json.loads((run / "run_info.json").read_text())
    assert info["finished"] and info["global_step"] == 12 and (run / "rejected-checkpoint-12").is_dir()
    log = requeue_and_wait()
    assert "already finished at step 12" in log and attempts_resumed_in(log) == [8]
    assert json.loads((run / "run_info.json").read_text()) == info


def attempts_resumed_in(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"resuming from \S+/checkpoint-(\d+)", text)]
