"""Committed results name no machine: nothing under results/ holds an absolute path, the writers record paths
relative to the repository root, loaders read them back against it from any working directory, and the kept demo
runs are recognised in a checkout at another path. Fast tier (seconds; the evaluation and audit use the tiny model).
"""

import json
import sys

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from common import files
from common.files import REPO, repo_path, repo_relative

sys.path.insert(0, str(REPO / "tools"))
import relocate_results as rr

TINY_DATA = "tests/assets/tiny_chat.jsonl"


def test_no_file_under_results_holds_an_absolute_path():
    found = {str(p.relative_to(REPO)): hits[:2] for p in rr.results_files() if (hits := rr.absolute_paths(p))}
    assert not found, f"rewrite with `python tools/relocate_results.py --old-root <root>`: {found}"
    assert len(rr.results_files()) > 100  # the check did look at the committed results


@pytest.mark.parametrize("text", ['"model": "/work/main/runs/x/final"', "out_dir: /tmp/pytest-1/runs",
                                  "at `/home/u/eaft/data/x.jsonl`", "cache ~/.cache/huggingface", "/Users/me/r"])
def test_the_check_flags_absolute_paths(text):
    assert rr.ABSOLUTE.search(text)


@pytest.mark.parametrize("text", ["https://huggingface.co/HuggingFaceTB/SmolLM2-135M/tree/main", "tokens/s",
                                  "./data/assets/smollm2-135m-instruct", "runs/demo-quick-sft-s0/final", "1/2/3",
                                  "allenai/ai2_arc/ARC-Easy", "p < 0.1 / H", "2026/11/23", "../results/x"])
def test_the_check_leaves_urls_and_relative_paths_alone(text):
    assert not rr.ABSOLUTE.search(text)


def test_repo_relative_records_paths_inside_the_repository_relative_to_it(tmp_path):
    assert repo_relative(REPO / "runs" / "x" / "final") == "runs/x/final"
    assert repo_relative(f"{REPO}/runs/../data/eval/a.jsonl") == "data/eval/a.jsonl"
    assert repo_relative(REPO) == "."
    assert repo_relative(tmp_path / "x") == str(tmp_path / "x")  # outside: nothing to be relative to
    # relative specs as written: a config's ./ path and a Hub id are not turned into anything else
    assert repo_relative("./data/assets/smollm2-135m-instruct") == "./data/assets/smollm2-135m-instruct"
    assert repo_relative("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_repo_relative_reads_an_existing_relative_path_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_text("x")
    assert repo_relative("here.txt") == str(tmp_path / "here.txt")
    monkeypatch.chdir(REPO / "tests")
    assert repo_relative("assets/tiny_chat.jsonl") == TINY_DATA


def test_repo_path_reads_a_recorded_path_against_the_repository_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert repo_path(TINY_DATA) == REPO / TINY_DATA and repo_path(TINY_DATA).exists()
    assert repo_path(tmp_path / "a") == tmp_path / "a"


def test_repo_path_prefers_a_path_that_exists_in_the_working_directory(tmp_path, monkeypatch):
    """The rule of repo_relative read back: what exists where the command runs, else the repository's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests" / "assets").mkdir(parents=True)
    (tmp_path / TINY_DATA).write_text("{}\n")
    assert repo_path(TINY_DATA) == tmp_path / TINY_DATA
    assert repo_path(repo_relative(tmp_path / TINY_DATA)) == tmp_path / TINY_DATA
    assert repo_path("no/such.jsonl") == REPO / "no/such.jsonl"
    with pytest.raises(FileNotFoundError, match=r"'no/such.jsonl' not found \(looked in .* and "):
        repo_path("no/such.jsonl", must_exist=True)


def test_atomic_path_renames_on_success_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with files.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def write_parquet(path, meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": [1, 2]})
    pq.write_table(table.replace_schema_metadata({b"eaft_token_stats": json.dumps(meta).encode()}), path)


def test_relocate_rewrites_paths_under_the_old_root_once(tmp_path, capsys):
    res = tmp_path / "results"
    (res / "runs" / "r").mkdir(parents=True)
    metric = {"model": "/old/clone/runs/r/final", "data_source": "/old/clone/data/eval/a.jsonl",
              "note": "see https://example.org/a/b", "other": "/old/clone2/x", "root": "/old/clone"}
    (res / "m.json").write_text(json.dumps(metric, indent=2) + "\n")
    (res / "runs" / "r" / "config.yaml").write_text("data:\n  train_file: /old/clone/results/d/train.jsonl\n"
                                                     "out_dir: /old/clone/runs\n")
    write_parquet(res / "s.parquet", {"data_file": "/old/clone/data/math/train.jsonl", "model_path": "./data/m"})
    assert rr.main(["--results", str(res), "--check"]) == 1  # nothing rewritten, all three reported

    assert rr.main(["--results", str(res), "--old-root", "/old/clone"]) == 1  # /old/clone2 is another root
    m = json.loads((res / "m.json").read_text())
    assert m == {**metric, "model": "runs/r/final", "data_source": "data/eval/a.jsonl", "root": "."}
    assert (res / "m.json").read_text() == json.dumps(m, indent=2) + "\n"  # only the paths changed, not the layout
    cfg = yaml.safe_load((res / "runs" / "r" / "config.yaml").read_text())
    assert cfg == {"data": {"train_file": "results/d/train.jsonl"}, "out_dir": "runs"}
    assert rr.parquet_metadata(res / "s.parquet")[b"eaft_token_stats"] == json.dumps(
        {"data_file": "data/math/train.jsonl", "model_path": "./data/m"}).encode()
    assert pd.read_parquet(res / "s.parquet")["x"].tolist() == [1, 2]
    assert "/old/clone2/x" in capsys.readouterr().err

    before = {p: p.read_bytes() for p in res.rglob("*") if p.is_file()}
    assert rr.main(["--results", str(res), "--old-root", "/old/clone", "--old-root", "/old/clone2"]) == 0
    assert rr.main(["--results", str(res), "--old-root", "/old/clone", "--old-root", "/old/clone2"]) == 0
    assert json.loads((res / "m.json").read_text())["other"] == "x"
    assert all(p.read_bytes() == b for p, b in before.items() if p.name != "m.json")  # idempotent


def test_relocate_refuses_a_relative_old_root(tmp_path):
    with pytest.raises(SystemExit, match="absolute path of the checkout"):
        rr.main(["--results", str(tmp_path), "--old-root", "work/main"])


def test_evaluation_records_relative_paths_and_its_model_path_evaluates_from_another_cwd(tmp_path, monkeypatch):
    """A clone at tmp_path: the run, the data and the results inside it; the records name none of tmp_path."""
    from evaluation import evaluate as ev
    from tests.test_eval_cli import cfg_for, fake_run

    monkeypatch.setattr(files, "REPO", tmp_path)
    run = fake_run(tmp_path)
    data = tmp_path / "data" / "chat_heldout.jsonl"
    data.parent.mkdir()
    data.write_text((REPO / "tests/fixtures/eval/chat_heldout.jsonl").read_text())
    bench = [f"bench.target_nll.local.data_files=[{data}]", "benchmarks=[target_nll]", "limit=2"]
    first = ev.main(cfg_for(tmp_path, f"model_spec={run}", *bench))["target_nll"]
    written = json.loads((tmp_path / "metrics" / run.name / "target_nll.json").read_text())
    assert written["model"] == f"runs/{run.name}/final" and written["data_source"] == "data/chat_heldout.jsonl"
    assert written["items_file"] == f"metrics/{run.name}/items/target_nll.jsonl"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = ev.main(cfg_for(tmp_path, f"model_spec={written['model']}", "run_name=again", *bench))["target_nll"]
    assert again["model"] == written["model"] and again["value"] == first["value"]


def demo_cfg(profile: str, *overrides: str):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("demo", overrides=[f"demo_profile={profile}", *overrides])


@pytest.mark.parametrize("profile", ["quick", "quick3", "full"])
def test_committed_demo_runs_are_reused_in_a_checkout_at_another_path(profile):
    """reuse_kept and the mechanism cache compare what this checkout would write with what another one committed,
    whatever CPU this is: the precision is the kept runs' (experiments/environment.py), not the machine's."""
    from experiments import demo
    from experiments.runner import Runner, same_config

    cfg = demo_cfg(profile, "reuse_kept=true")
    runner = Runner(cfg, cfg.demo_profile, tag="demo", prefix=f"demo-{profile}")
    cells = demo.cells(cfg, runner)
    runner.resolve(cells)
    assert runner.precision == "bf16"  # as the committed runs were trained, on a CPU with AVX512-BF16
    for cell in cells:
        kept = repo_path(cfg.out_dir) / "runs" / cell.name
        info = json.loads((kept / "run_info.json").read_text())
        assert info["data_file"] == repo_relative(cell.train_file)
        assert same_config(kept, runner.train_cfg(cell)) and runner.evaluated(cell.name), cell.name
    mech = json.loads((repo_path(cfg.out_dir) / "mechanism.json").read_text())
    assert mech["key"] == demo.mechanism_key(cfg, cells[0].train_file)


def test_run_info_records_the_training_file_relative(tmp_path):
    from tests.test_train import _train_in_process

    _train_in_process(tmp_path, "r", "model=tiny", "data=tiny")
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert info["data_file"] == TINY_DATA


def test_token_stats_record_the_data_relative_and_the_audit_reads_it_from_another_cwd(tmp_path, monkeypatch):
    from analysis import audit, token_stats
    from tests.test_analysis_token_stats import cfg_for

    common = ["model=tiny", "data=tiny", "limit=4"]
    path = token_stats.main(cfg_for(*common, f"out_dir={tmp_path}"))["path"]
    assert token_stats.read_token_stats(path)[1]["data_file"] == TINY_DATA
    monkeypatch.chdir(tmp_path)
    rep = audit.main(cfg_for(*common, f"audit.from_stats={path}", f"audit.out_dir={tmp_path}"))
    assert rep["data_file"] == TINY_DATA and rep["examples"] == 4
    assert f"Data: `{TINY_DATA}`" in (tmp_path / "tiny-tiny.md").read_text()


def test_audit_names_a_recorded_data_file_that_is_missing(tmp_path):
    from analysis import audit, token_stats
    from tests.test_analysis_token_stats import cfg_for

    df = pd.DataFrame({"example": [0]})
    path = token_stats.write_token_stats(df, tmp_path / "s.parquet", {"data_file": "data/nowhere/train.jsonl",
                                                                      "data": "nowhere", "rollouts": False})
    with pytest.raises(FileNotFoundError, match=r"data/nowhere/train.jsonl.*make data DOMAIN=nowhere"):
        audit.from_stats(cfg_for("model=tiny", "data=tiny"), path)
