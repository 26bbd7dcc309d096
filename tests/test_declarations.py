"""The README's "Adding a benchmark, a method or a model", done step by step on a copy of configs/ and
paper/tables.yaml: after each paragraph's steps, and nothing else, the new piece is in every list that follows
from it (the evaluation config, the paper's suites, the named runs and their files, the tables' labels, the
GPU-hour plan), and common.declarations reports no gap. The paragraphs must name the files these steps touch."""

import re
import shutil
import sys

import pytest
from hydra import compose, initialize_config_dir

from common import declarations as dc
from evaluation.benchmarks import with_declared
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import experiment_configs

README = (REPO / "README.md").read_text()


def paragraph(what: str) -> str:
    m = re.search(rf"^\*\*A {what}:\*\*(.*?)(?=^\*\*|^## )", README, re.MULTILINE | re.DOTALL)
    assert m, f"README.md has no '**A {what}:**' paragraph"
    return " ".join(m.group(1).split())


@pytest.fixture
def copy(tmp_path):
    """configs/ and paper/tables.yaml copied; the declaration caches cleared before and after."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "paper").mkdir()
    shutil.copy(REPO / "paper" / "tables.yaml", tmp_path / "paper" / "tables.yaml")
    dc._group.cache_clear()
    dc.paper_tables.cache_clear()
    yield tmp_path / "configs", tmp_path / "paper" / "tables.yaml"
    dc._group.cache_clear()
    dc.paper_tables.cache_clear()


def add_to_table(tables, table: str, key: str, value) -> None:
    """Edit paper/tables.yaml as a person would: one entry more in a list or mapping of one table."""
    import yaml

    doc = yaml.safe_load(tables.read_text())
    target = doc if table == "" else doc["tables"][table]
    if isinstance(target[key], dict):
        target[key].update(value)
    else:
        target[key].append(value)
    tables.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    dc.paper_tables.cache_clear()


def test_adding_a_benchmark(copy):
    root, tables = copy
    text = paragraph("benchmark")
    assert "configs/benchmark/<name>.yaml" in text and "paper/tables.yaml" in text
    for key in ("`name`", "`title`", "`domain`", "`kind`"):
        assert key in text
    (root / "benchmark" / "trivia_nll.yaml").write_text(
        "name: trivia_nll\ntitle: TriviaNLL\ndomain: general\nkind: likelihood\nmeasure: response_nll\n"
        "source: local\nbundled: false\nlocal: {data_files: [tests/assets/tiny_chat.jsonl]}\n")
    dc._group.cache_clear()
    with initialize_config_dir(str(root), version_base=None):
        cfg = compose("eval", overrides=with_declared(["model_spec=tiny", "benchmarks=[trivia_nll]"], root))
    assert cfg.bench.trivia_nll.measure == "response_nll"  # in every evaluation's config
    assert dc.title("benchmark", "trivia_nll", root) == "TriviaNLL"
    add_to_table(tables, "", "general", "trivia_nll")
    assert "trivia_nll" in dc.suite_benchmarks({"name": "table1", "paper": "table1"}, tables)
    assert "trivia_nll" in dc.suite_benchmarks({"name": "general", "paper": "general"}, tables)
    assert dc.problems(root, tables) == []


def test_adding_a_method(copy):
    root, tables = copy
    text = paragraph("method")
    for needle in ("eaft_loss/losses.py", "GATES", "configs/method/my.yaml", "`title`", "paper/tables.yaml",
                   "python tools/experiment_configs.py", "equation map"):
        assert needle in text, needle
    (root / "method" / "my.yaml").write_text("name: my\ntitle: My gate\nloss: eaft\nhparams: {k: 20}\n")
    dc._group.cache_clear()
    assert dc.problems(root, tables) == [] and dc.title("method", "my", root) == "My gate"
    add_to_table(tables, "table1", "methods", "my")
    runs = dc.paper_runs(tables)
    assert {"table1-my", "table1-glm4-9b-my", "table1-qwen2.5-32b-my"} <= set(runs)
    assert set(experiment_configs.differences(root, tables).values()) == {"missing"}
    experiment_configs.write(root, tables)
    assert experiment_configs.differences(root, tables) == {}
    with initialize_config_dir(str(root), version_base=None):
        cfg = compose("train", overrides=["experiment=table1-glm4-9b-my"])
    assert (cfg.method.name, cfg.model.name, cfg.suite) == ("my", "glm4-9b", "table1")
    assert dc.problems(root, tables) == []


def test_adding_a_model(copy):
    root, tables = copy
    text = paragraph("model")
    for needle in ("configs/model/<name>.yaml", "`name`", "`name_or_path`", "`params`", "paper/tables.yaml",
                   "python tools/experiment_configs.py"):
        assert needle in text, needle
    (root / "model" / "llama3-8b.yaml").write_text("name: llama3-8b\nname_or_path: meta-llama/Meta-Llama-3-8B-Instruct\n"
                                                   "dtype: bfloat16\n")
    dc._group.cache_clear()
    assert dc.problems(root, tables) == []  # a model outside the paper's tables needs no params
    add_to_table(tables, "table1", "models", {"llama3-8b": "Llama-3-8B-Instruct"})
    assert any("configs/model/llama3-8b.yaml: no `params`" in p for p in dc.problems(root, tables))
    (root / "model" / "llama3-8b.yaml").write_text((root / "model" / "llama3-8b.yaml").read_text() + "params: 8.03e9\n")
    dc._group.cache_clear()
    assert dc.problems(root, tables) == []
    assert "table1-llama3-8b-eaft" in dc.paper_runs(tables)
    experiment_configs.write(root, tables)
    assert (root / "experiment" / "table1-llama3-8b-eaft.yaml").exists()
    assert dc.models(root)["llama3-8b"]["params"] == pytest.approx(8.03e9)
