"""Evaluation and analysis refuse broken models and results, and missing benchmark data is reported up front.

Case 1 (a diverged run): NaN weights, a run_info.json that says the run failed, and NaN scores are refused by
evaluation; `make tables` / `make figures` refuse or leave out what such a run left behind.
Case 8 (`make eval` before `make eval-data`): every benchmark without data is listed, with the command that
fetches it, before any model loads, and an unreachable Hub is reported instead of retried.
"""

import json
import math
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir

from analysis import figures, tables
from analysis.results import load_metrics
from evaluation import evaluate as ev
from evaluation import sources
from evaluation.benchmarks import with_declared
from evaluation.schema import SchemaError, read_result, validate, write_result
from evaluation.sources import DataFormatError
from tests.conftest import REPO
from tests.test_eval_cli import cfg_for, fake_run

FIX = REPO / "tests/fixtures/analysis/metrics"
MINI = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "winogrande", "boolq"]


def poison(run, folder="final"):
    """Write NaN into one weight of a saved model, as a diverged run's saved weights are."""
    from safetensors.torch import load_file, save_file

    f = run / folder / "model.safetensors"
    weights = load_file(f)
    name = sorted(weights)[3]
    weights[name][0] = float("nan")
    save_file(weights, f, metadata={"format": "pt"})
    return name


def no_model_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("common.generation.load_for_generation", boom)


def test_case1_nan_model_is_refused_by_evaluation(tmp_path, monkeypatch):
    run = fake_run(tmp_path)
    (run / "run_info.json").write_text(json.dumps({"global_step": 6, "finished": True}))  # as it once claimed
    bad = poison(run)
    no_model_load(monkeypatch)
    with pytest.raises(ValueError, match=rf"{run / 'final'}: weight model.safetensors: {bad} holds NaN or Inf"):
        ev.main(cfg_for(tmp_path, f"model_spec={run}", "benchmarks=[target_nll]"))
    assert not (tmp_path / "metrics" / run.name / "target_nll.json").exists()


def test_case1_nan_checkpoint_is_refused_and_a_healthy_one_is_not(tmp_path):
    run = fake_run(tmp_path)
    poison(run, "checkpoint-3")
    with pytest.raises(ValueError, match="checkpoint-3: weight model.safetensors: .* holds NaN"):
        ev.main(cfg_for(tmp_path, f"model_spec={run / 'checkpoint-3'}", "benchmarks=[target_nll]"))
    r = ev.main(cfg_for(tmp_path, f"model_spec={run}", "benchmarks=[target_nll]"))["target_nll"]
    assert math.isfinite(r["value"])


def test_case1_failed_run_is_refused_by_evaluation(tmp_path, monkeypatch):
    run = fake_run(tmp_path)
    (run / "run_info.json").write_text(json.dumps({"global_step": 3, "finished": False,
                                                   "error": "loss is NaN at step 3"}))
    no_model_load(monkeypatch)
    with pytest.raises(ValueError, match=r"run_info.json: training failed: loss is NaN at step 3\. Not evaluating"):
        ev.main(cfg_for(tmp_path, f"model_spec={run}", "benchmarks=[target_nll]"))
    (run / "run_info.json").write_text(json.dumps({"global_step": 3, "finished": False}))
    with pytest.raises(ValueError, match="finished: false"):
        ev.main(cfg_for(tmp_path, f"model_spec={run / 'checkpoint-3'}", "benchmarks=[target_nll]"))


def good_result() -> dict:
    return read_result(FIX / "qwen3-4b-math-eaft-s1" / "gsm8k.json")


@pytest.mark.parametrize("key, bad", [("value", float("nan")), ("stderr", float("inf")),
                                      ("metrics", {"pass@1": 3.0, "by_category": {"simple": float("nan")}})])
def test_case1_nan_metric_is_refused_by_the_schema(tmp_path, key, bad):
    r = good_result() | {key: bad}
    with pytest.raises(SchemaError, match=rf"{key}.* is not a finite number"):
        validate(r)
    with pytest.raises(SchemaError, match="not a finite number"):
        write_result(tmp_path / "r.json", r)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file
    (tmp_path / "r.json").write_text(json.dumps(r))  # as the old evaluation wrote it: NaN is valid to json
    with pytest.raises(SchemaError, match=r"r.json: .* is not a finite number"):
        read_result(tmp_path / "r.json")


def two_seeds(tmp_path):
    """results/metrics with two seeds of one method (the second copied from the first), and their runs/."""
    metrics, runs = tmp_path / "metrics", tmp_path / "runs"
    for seed in ("s1", "s2"):
        shutil.copytree(FIX / "qwen3-4b-math-eaft-s1", metrics / f"qwen3-4b-math-eaft-{seed}")
        for p in (metrics / f"qwen3-4b-math-eaft-{seed}").rglob("*.json"):
            p.write_text(p.read_text().replace("qwen3-4b-math-eaft-s1", f"qwen3-4b-math-eaft-{seed}"))
        (runs / f"qwen3-4b-math-eaft-{seed}").mkdir(parents=True)
        (runs / f"qwen3-4b-math-eaft-{seed}" / "run_info.json").write_text(json.dumps(
            {"model": "qwen3-4b", "data": "math", "method": "eaft", "seed": int(seed[1]), "finished": True}))
    assert load_metrics(metrics, runs)["seed"].nunique() == 2
    return metrics, runs


def tables_cfg(metrics, runs, out):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("analysis_tables", overrides=[f"metrics_dir={metrics}", f"runs_dir={runs}", f"out_dir={out}"])


def test_case1_tables_refuse_a_nan_result(tmp_path):
    metrics, runs = two_seeds(tmp_path)
    f = metrics / "qwen3-4b-math-eaft-s2" / "gsm8k.json"
    f.write_text(json.dumps(json.loads(f.read_text()) | {"value": float("nan")}))
    with pytest.raises(SchemaError, match=rf"1 result file\(s\) refused(.|\n)*{f}: value is not a finite number"):
        tables.main(tables_cfg(metrics, runs, tmp_path / "tables"))
    assert not (tmp_path / "tables").exists()


def test_case1_tables_refuse_results_of_a_failed_run(tmp_path):
    """A diverged model still scores finite accuracies; its seed must not be averaged with a healthy one."""
    metrics, runs = two_seeds(tmp_path)
    info = runs / "qwen3-4b-math-eaft-s2" / "run_info.json"
    info.write_text(json.dumps(json.loads(info.read_text()) | {"finished": False, "error": "loss is NaN"}))
    n_files = len(list((metrics / "qwen3-4b-math-eaft-s2").rglob("*.json")))
    with pytest.raises(SchemaError, match=rf"{n_files} result file\(s\) refused(.|\n)*run qwen3-4b-math-eaft-s2 "
                                          rf"failed \({info}: training failed: loss is NaN\); delete "
                                          rf"{metrics / 'qwen3-4b-math-eaft-s2'}"):
        tables.main(tables_cfg(metrics, runs, tmp_path / "tables"))


def test_case1_figures_leave_out_the_training_log_of_a_failed_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, info in (("tiny-tiny-sft-s1", {"finished": True}), ("tiny-tiny-sft-s2", {"finished": False})):
        (runs / name).mkdir(parents=True)
        ce = float("nan") if info["finished"] is False else 1.0
        (runs / name / "metrics.jsonl").write_text("\n".join(json.dumps(
            {"step": s, "ce_high_entropy": ce, "ce_low_entropy": ce}) for s in range(1, 4)))
        (runs / name / "run_info.json").write_text(json.dumps(
            {"model": "tiny", "data": "tiny", "method": "sft", **info}))
    curves = figures.training_curves([runs])
    assert curves["tiny-tiny"]["sft"]["ce_high_entropy"].tolist() == [1.0, 1.0, 1.0]
    assert f"fig 4 leaves out {runs / 'tiny-tiny-sft-s2'}: training did not finish" in capsys.readouterr().out


def without_fixtures(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose("eval", overrides=with_declared(["progress=false", *overrides]))


@pytest.fixture
def no_eval_data(tmp_path, monkeypatch):
    """A checkout where `make eval-data` has not run: the benchmarks' relative paths resolve under tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("common.files.REPO", tmp_path)  # where repo_path reads relative paths
    no_model_load(monkeypatch)
    return tmp_path


def test_case8_missing_eval_data_lists_every_benchmark_before_the_model_loads(no_eval_data):
    with pytest.raises(DataFormatError) as e:
        ev.main(without_fixtures("model_spec=tiny", "suite=mini", f"out_dir={no_eval_data / 'metrics'}"))
    msg = str(e.value)
    assert "7 data problem(s) for 7 benchmarks (nothing was evaluated)" in msg
    for name in MINI:
        assert f"benchmark {name!r}: {no_eval_data}/data/eval/{name}/validation.jsonl does not exist. Either run " \
               "`make eval-data`" in msg
    assert not (no_eval_data / "metrics").exists()


def test_case8_unreachable_hub_is_reported_once_not_retried(no_eval_data, monkeypatch):
    """Without HF_HUB_OFFLINE and without network, auto benchmarks would go to the Hub and retry there."""
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probes = []
    monkeypatch.setattr(sources, "hub_reachable", lambda: probes.append(1) or False, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub was asked for data"))
    with pytest.raises(DataFormatError) as e:
        ev.main(without_fixtures("model_spec=tiny", "benchmarks=[gsm8k,aime24,cluewsc]", f"out_dir={no_eval_data}"))
    msg = str(e.value)
    assert "3 data problem(s) for 3 benchmarks" in msg and probes == [1]
    assert "benchmark 'gsm8k': " in msg and "run `make eval-data`" in msg
    for name in ("aime24", "cluewsc"):
        assert f"benchmark {name!r}: " in msg
    assert msg.count("does not ship offline") == 2 and msg.count("the Hub is unreachable from here") == 3


def test_case8_preflight_uses_the_hub_only_when_it_answers(no_eval_data, monkeypatch):
    bench = {"name": "gsm8k", "source": "auto", "bundled": True, "hub": {"path": "openai/gsm8k"},
             "local": {"data_files": ["data/eval/gsm8k/test.jsonl"]}}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    sources.preflight([bench])  # the Hub answers: no local copy needed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataFormatError, match=r"bench.gsm8k.source=hub, but HF_HUB_OFFLINE=1"):
        sources.preflight([bench | {"source": "hub"}])
    (no_eval_data / "data/eval/gsm8k").mkdir(parents=True)
    (no_eval_data / "data/eval/gsm8k/test.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    sources.preflight([bench])  # offline, and the local copy is there


def test_case1_nonfinite_weight_reads_bin_files_and_ignores_training_args(tmp_path):
    torch.save({"w": torch.ones(2), "b": torch.tensor([0.0, float("inf")])}, tmp_path / "pytorch_model.bin")
    torch.save({"not": "weights"}, tmp_path / "training_args.bin")
    assert ev.nonfinite_weight(tmp_path) == "pytorch_model.bin: b"
