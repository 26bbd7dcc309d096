"""slurm/submit.py --dry-run: the job graph and the resources each job asks for (no SLURM needed)."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slurm"))

from submit import main


def grid(tmp_path, data: str, *extra: str) -> dict[str, dict]:
    manifest = main(["--data", data, "--models", "qwen3-4b", "--methods", "sft,eaft,masked_sft", "--seeds", "1,2",
                     "--suite", "table1", "--gpus-per-node", "8", "--data-shards", "4", "--logs", str(tmp_path),
                     "--dry-run", *extra])
    return {j["name"]: j for j in manifest["jobs"]}


def test_the_grid_is_chained_and_only_gpu_work_asks_for_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("EAFT_SITE", str(tmp_path / "no-site.sh"))
    jobs = grid(tmp_path, "math")
    assert list(jobs) == ["data-math", "data-math-finalize", "precompute-qwen3-4b", "train-qwen3-4b",
                          "eval-qwen3-4b", "eval-qwen3-4b-base", "tables"]
    assert "--array=0-3" in jobs["data-math"]["command"] and "--gpus-per-node=8" in jobs["data-math"]["command"]
    assert "--gpus-per-node" not in jobs["data-math-finalize"]["command"]
    assert jobs["train-qwen3-4b"]["dependency"] == (f"afterok:{jobs['data-math-finalize']['job_id']}:"
                                                   f"{jobs['precompute-qwen3-4b']['job_id']}")
    assert len(jobs["train-qwen3-4b"]["tasks"]) == 6 and jobs["eval-qwen3-4b"]["dependency"].startswith("aftercorr")
    # The medical set is prepared from released responses: its data array needs no GPU, nor does math with the
    # teacher switched to the reference answers.
    assert "--gpus-per-node" not in grid(tmp_path, "medical")["data-medical"]["command"]
    no_teacher = grid(tmp_path, "math", "--data-args", "domain.teacher.backend=reference")
    assert "--gpus-per-node" not in no_teacher["data-math"]["command"]
    assert "--gpus-per-node=8" in no_teacher["train-qwen3-4b"]["command"]


def test_an_unknown_domain_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("EAFT_SITE", str(tmp_path / "no-site.sh"))
    with pytest.raises(SystemExit, match="configs/domain/nope.yaml"):
        grid(tmp_path, "nope")


def test_the_base_row_evaluates_the_weights_the_runs_train_from(tmp_path, monkeypatch):
    """Runs that train from a local copy of the weights (model.name_or_path in --train-args or --model-args: a
    mirror, the rehearsal's miniature) get their base row from that copy (evaluation's model_path=), not from the
    Hub id configs/model names; runs that train from the declared weights get no model_path."""
    monkeypatch.setenv("EAFT_SITE", str(tmp_path / "no-site.sh"))
    base = grid(tmp_path, "math")["eval-qwen3-4b-base"]["command"]
    assert "model=qwen3-4b" in base and "model_path=" not in base
    for how in (["--train-args", "trainer=paper model.name_or_path=/mirror/qwen3"],
                ["--model-args", "qwen3-4b=model.name_or_path=/mirror/qwen3"]):
        assert "model=qwen3-4b model_path=/mirror/qwen3 " in grid(tmp_path, "math", *how)["eval-qwen3-4b-base"]["command"]
