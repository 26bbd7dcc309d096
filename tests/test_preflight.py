"""The preflight (slurm/preflight.py, `slurm/submit.py --check`): before any job is queued, every model, data set,
config, split and field a planned grid reads is resolved, the agent filter's yield counted, each problem named
with its fix. Answers come from the recorded metadata in tests/fixtures/hub (transcribed from public loaders, see
each file's `source`); without the Hub the check fails cleanly and submits nothing. Fast tier, no network."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slurm"))

import preflight as pf
from submit import main

RECORDED = REPO / "tests" / "fixtures" / "hub"
# the one benchmark that is local-only; and the Hub copies of the bundled ones, which a clone that ran
# `make eval-data` would otherwise prefer (a cluster node without the bundle reads the Hub)
BFCL = "bench.bfcl_v3.local.data_dir=tests/fixtures/eval/bfcl " + " ".join(
    f"bench.{b}.prefer_local=false" for b in ("aime25", "gsm8k", "mmlu", "medmcqa", "medqa"))
ALL = ",".join(sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")))


def check(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(["--check", "--recorded", str(RECORDED), *argv])
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


@pytest.fixture(autouse=True)
def no_site(tmp_path, monkeypatch):
    monkeypatch.setenv("EAFT_SITE", str(tmp_path / "no-site.sh"))


def test_every_paper_experiment_loads_what_it_reads(capsys):
    status, report = check(capsys, "--experiments", ALL, "--eval-args", BFCL)
    assert status == 0, report
    for item in ("model   zai-org/GLM-4-9B-0414", "dataset openlifescienceai/pubmedqa [-:test]",
                 "dataset cais/mmlu [all:test]", "dataset cais/mmlu [anatomy:test]",   # Table 2 generates MMLU
                 "dataset GBaker/MedQA-USMLE-4-options [-:test]", "file    nvidia/Nemotron-Agentic-v1"):
        assert item in report, item
    assert "yield: 2 of 2 sampled rows kept, ~316,094 of 316,094" in report  # strip keeps every trajectory


@pytest.mark.parametrize("args, problem", [
    # the configs as they were: lm-eval's pubmedqa task on bigbio's loading script ...
    (["--experiments", "table2-eaft", "--eval-args",
      f"{BFCL} bench.pubmedqa.yaml=pubmedqa/pubmedqa.yaml bench.pubmedqa.mode=loglikelihood"],
     "bigbio/pubmed_qa is a loading-script data set (pubmed_qa.py); datasets >= 4 refuses it"),
    # ... MMLU generated without a config name ...
    (["--experiments", "table2-eaft", "--eval-args", f"{BFCL} bench.mmlu.hub.name=null"],
     "cais/mmlu has 58 configs and none is named (datasets: \"Config name is missing\")"),
    # ... and GLM-4 under its old organisation
    (["--experiments", "table1-glm4-9b-eaft", "--no-build-data", "--eval-args", BFCL,
      "--train-args", "trainer=paper model.name_or_path=THUDM/GLM-4-9B-0414"],
     "THUDM/GLM-4-9B-0414 is now zai-org/GLM-4-9B-0414 (the old name only redirects)"),
    (["--experiments", "table2-eaft", "--no-build-data", "--eval-args", f"{BFCL} bench.medmcqa.hub.split=dev"],
     "openlifescienceai/medmcqa/default has no split 'dev'"),
    (["--experiments", "table3-eaft", "--no-build-data", "--eval-args", f"{BFCL} bench.cluewsc.hub.fields=[sentence]"],
     "clue/clue/cluewsc2020:validation has no field sentence"),
    # Fig. 5 trains on the set Table 1 built (--no-build-data): a missing training file is named before any job
    (["--experiments", "fig5-eaft2", "--no-build-data", "--data-dir", "/nonexistent/math", "--eval-args", BFCL],
     "/nonexistent/math/train.jsonl does not exist here (training data); build it first"),
])
def test_each_kind_of_problem_is_named_with_the_file_to_fix(capsys, args, problem):
    status, report = check(capsys, *args)
    assert status == 1 and problem in report, report
    assert "nothing was submitted" in report


def test_the_agent_filter_yield_is_counted_before_the_build(capsys):
    """non_thinking: select keeps no sampled tool_calling row (their assistant turns carry reasoning_content), and
    the 19,028 interactive_agent rows cannot reach 20,000 even if all passed: named before the 20k build starts."""
    from omegaconf import OmegaConf

    dom = OmegaConf.to_container(OmegaConf.load(REPO / "configs/domain/agent.yaml"))
    dom["max_length"] = 16384
    for s in dom["sources"]:
        s["options"] = {"non_thinking": "select"}
    problems, lines = pf.check(pf.source_needs(dom, "configs/domain/agent.yaml"), pf.Recorded(RECORDED))
    assert "yield: 0 of 2 sampled rows kept, ~0 of 316,094; rejected: {'thinking_row': 2}" in "\n".join(lines)
    assert len(problems) == 2, problems
    assert "keeps 0 of 2 sampled rows (thinking_row 2)" in problems[0]
    assert "about 19,028 rows" in problems[1] and "fewer than select.n_train=20,000" in problems[1]
    assert "non_thinking: strip" in problems[1]


def test_without_the_hub_it_fails_cleanly_and_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        main(["--check", "--experiments", "table2-sft"])
    report = capsys.readouterr().err
    assert e.value.code == 2 and "cannot ask the Hub (HF_HUB_OFFLINE=1)" in report
    assert "  - dataset openlifescienceai/pubmedqa [-:test]" in report and "Traceback" not in report
    # a real submission (no --dry-run) stops at the preflight: no sbatch, no manifest
    import submit

    monkeypatch.setattr(submit.subprocess, "run", lambda *a, **k: pytest.fail(f"submitted {a}"))
    with pytest.raises(SystemExit, match="nothing was submitted"):
        main(["--experiments", "table2-sft", "--logs", str(tmp_path / "logs")])
    assert not list(tmp_path.rglob("submit-*.json"))


def test_a_grid_of_local_files_passes_offline(capsys, monkeypatch):
    """The CPU grid of tests/test_slurm.py reads only local paths and PyPI: nothing for the Hub to answer."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        main(["--check", "--data", "math-mini", "--models", "tiny", "--methods", "sft", "--suite", "mini",
              "--train-args", "trainer=tiny", "--eval-args",
              f"benchmarks=[gsm8k] bench.gsm8k.local.data_files=[{REPO}/tests/fixtures/eval/gsm8k.jsonl]"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "ok   local" in out and "no problem found" in out


@pytest.mark.parametrize("name", ["mmlu", "medmcqa", "ifeval", "cluewsc", "pubmedqa"])
def test_benchmark_hub_declarations_are_what_lm_eval_reads(name):
    """configs/benchmark/<b>.yaml's `hub` (what the preflight checks fields against) names the repository, config
    and split of the lm-eval task that runs it (MMLU: the same repository, one config per subject)."""
    from omegaconf import OmegaConf

    bench = {**OmegaConf.to_container(OmegaConf.load(REPO / "configs/benchmark" / f"{name}.yaml")), "name": name}
    reads = pf._lm_eval_reads(bench)
    assert {r[0] for r in reads} == {bench["hub"]["path"]}
    if name == "mmlu":
        configs = set(json.loads((RECORDED / "datasets--cais--mmlu.json").read_text())["configs"])
        assert len(reads) == 57 and {r[1] for r in reads} <= configs and {r[2] for r in reads} == {"test"}
    else:
        assert reads == [(bench["hub"]["path"], bench["hub"].get("name"), bench["hub"]["split"])]


def test_recorded_metadata_says_where_it_came_from():
    for p in RECORDED.glob("*.json"):
        d = json.loads(p.read_text())
        assert p.name == pf._record_name(d["kind"], d["id"]) and d["source"], p
