"""Tables 1-3 and the results reader on the fixture tree tests/fixtures/analysis/{metrics,runs} (see
make_fixtures.py): runs identified by their run_info.json, declared domains, profiles never pooled, known averages
and deltas, the paper's two inconsistent printed averages found from the data, checkpoint selection, seed means,
NLL kept out of averages, Markdown and LaTeX written."""

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from analysis import tables
from analysis.paper import consistency, layouts, load_paper, paper_cells
from analysis.results import (
    benchmark_domains,
    declared_domain,
    domain_means,
    load_metrics,
    seed_means,
    select_checkpoints,
)
from evaluation.schema import SchemaError

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests/fixtures/analysis/metrics"
RUNS = REPO / "tests/fixtures/analysis/runs"
NO_RUNS = REPO / "tests/fixtures/analysis/no_runs"  # does not exist


@pytest.fixture(scope="module")
def metrics():
    return load_metrics(FIX, RUNS)


def test_runs_are_identified_by_their_run_info(metrics):
    ident = metrics.drop_duplicates("run").set_index("run")
    assert ident.loc["qwen3-4b-math-eaft-s2", ["base_model", "data", "method", "seed", "profile", "target_domain"]
                     ].tolist() == ["qwen3-4b", "math", "eaft", 2, "paper", "math"]
    # data.domain from configs/data/math-mini.yaml's declaration (the fixture run has no config.yaml)
    assert ident.loc["smollm2-135m-math-mini-sft-s42", "target_domain"] == "math"
    assert pd.isna(ident.loc["smollm2-135m-math-mini-sft-s42", "profile"])  # recorded none
    assert ident.loc["qwen3-4b", "method"] == "base" and pd.isna(ident.loc["qwen3-4b", "profile"])


def test_a_trained_run_without_run_info_is_refused_not_guessed_from_its_name():
    with pytest.raises(SchemaError, match=r"no run_info.json of run qwen3-4b-math-sft-s1"):
        load_metrics(FIX, NO_RUNS)


def test_every_benchmark_config_declares_a_known_domain():
    domains = benchmark_domains()
    assert domains == {p.stem: declared_domain(p) for p in (REPO / "configs/benchmark").glob("*.yaml")}
    assert domains["gsm8k"] == "math" and domains["medqa"] == "medical" and domains["bfcl_v3"] == "agent"
    assert domains["mmlu"] == "general" and domains["target_nll"] == "target"
    for p in (REPO / "configs/data").glob("*.yaml"):
        assert declared_domain(p) in ("math", "medical", "agent", "general"), p


def test_a_missing_or_unknown_domain_is_an_error_naming_the_config(tmp_path):
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "benchmark" / "newbench.yaml").write_text("name: newbench\nkind: math\n")
    with pytest.raises(SchemaError, match=r"newbench.yaml: domain None is not one of"):
        benchmark_domains(tmp_path)
    (tmp_path / "benchmark" / "newbench.yaml").write_text("name: newbench\ndomain: maths\n")
    with pytest.raises(SchemaError, match=r"newbench.yaml: domain 'maths'"):
        benchmark_domains(tmp_path)


def test_a_result_of_an_undeclared_benchmark_is_refused(tmp_path):
    import json

    r = json.loads((FIX / "qwen3-4b" / "gsm8k.json").read_text()) | {"benchmark": "gsm8k_nll"}
    (tmp_path / "qwen3-4b").mkdir()
    (tmp_path / "qwen3-4b" / "gsm8k_nll.json").write_text(json.dumps(r))
    with pytest.raises(SchemaError, match=r"benchmark 'gsm8k_nll' has no configs/benchmark/gsm8k_nll.yaml"):
        load_metrics(tmp_path, NO_RUNS)


def test_profiles_are_never_pooled(tmp_path):
    """The same method in two profiles gives two rows; each compares against its own profile's base model, and a
    base model with no profile is the reference of every profile."""
    import json
    import shutil

    metrics, runs = tmp_path / "metrics", tmp_path / "runs"
    shutil.copytree(FIX, metrics)
    shutil.copytree(RUNS, runs)
    shutil.copytree(metrics / "qwen3-4b-math-eaft-s1", metrics / "quick-eaft-s0")
    for p in (metrics / "quick-eaft-s0").rglob("*.json"):
        p.write_text(json.dumps(json.loads(p.read_text()) | {"run": "quick-eaft-s0", "value": 1.0}))
    (runs / "quick-eaft-s0").mkdir()
    (runs / "quick-eaft-s0" / "run_info.json").write_text(json.dumps(
        {"run": "quick-eaft-s0", "model": "qwen3-4b", "data": "math", "method": "eaft", "seed": 0,
         "profile": "quick", "finished": True}))
    means = domain_means(seed_means(select_checkpoints(load_metrics(metrics, runs), "best")))
    eaft = means[means["method"] == "eaft"].set_index("profile")
    assert eaft.loc["paper", "target"] == pytest.approx((60.0 + 53.3 + 94.5) / 3)  # not averaged with 1.0
    assert eaft.loc["quick", "target"] == pytest.approx(1.0)
    base = means[(means["method"] == "base") & (means["base_model"] == "qwen3-4b")]
    assert sorted(base["profile"]) == ["paper", "quick"] and base["general"].tolist() == pytest.approx([81.1, 81.1])
    t = tables.build_table(layouts()["table1"], "table1", load_paper(),
                           tables.ours_scores(select_checkpoints(load_metrics(metrics, runs), "best")))
    assert sorted(t.loc[(t["method"] == "eaft") & (t["model"] == "qwen3-4b"), "profile"].dropna()) == ["paper", "quick"]


def test_checkpoint_selection_best_and_final(metrics):
    sft = metrics[metrics["run"] == "qwen3-4b-math-sft-s1"]
    assert sorted(sft["step"].unique()) == [100, 200, 300]
    best = select_checkpoints(sft, "best")
    final = select_checkpoints(sft, "final")
    assert set(best["step"]) == {200} and set(final["step"]) == {300}
    assert "test sets" in best["selection"].iloc[0]
    with pytest.raises(ValueError, match="select"):
        select_checkpoints(sft, "last")


def test_known_averages_deltas_and_seed_means(metrics):
    ours = seed_means(select_checkpoints(metrics, "best"))
    eaft = ours[(ours["method"] == "eaft") & (ours["benchmark"] == "aime24")]
    assert eaft["value"].iloc[0] == pytest.approx(60.0) and eaft["n_seeds"].iloc[0] == 2
    means = domain_means(ours).set_index(["base_model", "target_domain", "method"])
    assert means.loc[("qwen3-4b", "math", "base"), "general"] == pytest.approx(81.1)
    assert means.loc[("qwen3-4b", "math", "sft"), "general"] == pytest.approx((76.5 + 79.5 + 74.5) / 3)
    assert means.loc[("qwen3-4b", "math", "sft"), "target"] == pytest.approx((63.3 + 50.0 + 94.8) / 3)
    # the NLL result (0.7) must not enter EAFT's target average
    assert means.loc[("qwen3-4b", "math", "eaft"), "target"] == pytest.approx((60.0 + 53.3 + 94.5) / 3)
    assert means.loc[("smollm2-135m", "math", "sft"), "general"] == pytest.approx(64.0)


def test_table1_rows_ours_beside_paper(metrics):
    ours = tables.ours_scores(select_checkpoints(metrics, "best"))
    t = tables.build_table(layouts()["table1"], "table1", load_paper(), ours)
    assert t.loc[t["source"] == "paper", "profile"].isna().all()
    row = t.assign(source=t["source"] + t["profile"].map(lambda p: f" ({p})" if isinstance(p, str) else "")).set_index(
        ["model", "method", "source"])
    sft_ours, sft_paper = row.loc[("qwen3-4b", "sft", "ours (paper)")], row.loc[("qwen3-4b", "sft", "paper")]
    assert sft_ours["general_avg"] == pytest.approx(76.8333, abs=1e-3)
    assert sft_ours["delta"] == pytest.approx(76.8333 - 81.1, abs=1e-3)
    assert sft_paper["target_avg"] == pytest.approx(69.3667, abs=1e-3)
    assert "76.5" in sft_paper["note"]  # printed avg disagrees with the cells
    assert pd.isna(row.loc[("glm4-9b", "eaft", "ours"), "general_avg"])  # nothing of ours there
    # every row of ours names the checkpoint each seed used (the sweep's steps; a result without one is final)
    assert row.loc[("qwen3-4b", "eaft", "ours (paper)"), "note"] == (
        "2 seed(s); seed 1: final (best of 1 evaluated); seed 2: final (best of 1 evaluated)")
    assert row.loc[("qwen3-4b", "sft", "ours (paper)"), "note"] == "1 seed(s); seed 1: step 200 (best of 3 evaluated)"
    final = tables.build_table(layouts()["table1"], "table1", load_paper(),
                               tables.ours_scores(select_checkpoints(metrics, "final"))).set_index(
        ["model", "method", "source", "profile"])
    assert final.loc[("qwen3-4b", "sft", "ours", "paper"), "note"] == "1 seed(s); seed 1: step 300 (last of 3 evaluated)"


def test_the_papers_two_inconsistent_averages_are_found():
    flagged = consistency(load_paper(), layouts())
    flagged = flagged[flagged["flag"]]
    assert sorted(zip(flagged["model"], flagged["method"])) == [("glm4-9b", "talr"), ("qwen3-4b", "sft")]
    cells = dict(zip(flagged["method"], flagged["from_cells"]))
    assert cells["sft"] == pytest.approx(76.83, abs=0.01) and cells["talr"] == pytest.approx(71.07, abs=0.01)


def test_a_corrupted_cell_is_flagged_too():
    paper = load_paper()
    i = paper.index[(paper["artifact"] == "table2") & (paper["method"] == "eaft") & (paper["column"] == "mmlu")]
    paper.loc[i, "value"] += 3.0
    flagged = consistency(paper, layouts())
    assert ("table2", "eaft") in set(zip(flagged.loc[flagged["flag"], "artifact"], flagged.loc[flagged["flag"], "method"]))


def test_paper_numbers_are_complete():
    paper = load_paper()
    for art, lay in layouts().items():
        cells = paper_cells(paper, art)
        for model in lay.models:
            for method in lay.methods:
                assert cells.loc[(model, method), lay.target + lay.general].notna().all(), (art, model, method)
    fig5 = paper_cells(paper, "fig5")
    assert len(fig5) == 10 and fig5.loc[("qwen3-4b", "eaft3"), "general"] == pytest.approx(80.14)


def test_cli_writes_markdown_and_latex(tmp_path):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("analysis_tables", overrides=[f"metrics_dir={FIX}", f"runs_dir={RUNS}",
                                                    f"out_dir={tmp_path}"])
    out = tables.main(cfg)
    assert len(out["flagged"]) == 2
    md = (tmp_path / "table1_math.md").read_text()
    assert "| + SFT | paper |" in md and "|  | ours (paper) |" in md and "76.83 (-4.27)" in md and "test sets" in md
    tex = (tmp_path / "table2_medical.tex").read_text()
    assert r"\begin{tabular}" in tex and "MedMCQA" in tex and "_" not in tex.replace(r"\_", "")
    ours = (tmp_path / "ours.md").read_text()
    assert "smollm2-135m" in ours and "+1.50" in ours  # SmolLM2 SFT general 64.0 vs base 62.5
    assert "| qwen3-4b | paper | math | EAFT |" in ours and "nan" not in ours


def test_cli_without_results_still_writes_paper_tables(tmp_path):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("analysis_tables", overrides=[f"metrics_dir={tmp_path / 'none'}", f"out_dir={tmp_path}"])
    out = tables.main(cfg)
    assert out["n_results"] == 0 and (tmp_path / "table3_agent.md").exists()
    assert not (tmp_path / "ours.md").exists()


def test_checkpoint_results_are_read_with_their_step(tmp_path):
    """evaluation.evaluate writes an intermediate checkpoint's results to <run>/checkpoint-N/<benchmark>.json."""
    import json
    import shutil

    src = FIX / "qwen3-4b-math-eaft-s1" / "gsm8k.json"
    run = tmp_path / "qwen3-4b-math-eaft-s1"
    (run / "checkpoint-7").mkdir(parents=True)
    shutil.copy(src, run / "gsm8k.json")
    r = json.loads(src.read_text())
    r["step"], r["value"] = 7, 12.5
    (run / "checkpoint-7" / "gsm8k.json").write_text(json.dumps(r))
    df = load_metrics(tmp_path, RUNS)
    assert len(df) == 2 and 12.5 in df["value"].tolist()
    assert df.loc[df["value"] == 12.5, "step"].item() == 7
    assert (df["bench_domain"] == "math").all()


def test_a_base_model_under_another_run_name_is_found_by_its_path(tmp_path):
    """The demo evaluates its base model as run `demo-quick-base`: the config is found from the model path."""
    import json

    r = json.loads((FIX / "qwen3-4b-math-eaft-s1" / "gsm8k.json").read_text())
    r.update(run="demo-x-base", method="base", model="./data/assets/smollm2-135m-instruct", step=None)
    r.pop("domain", None)
    (tmp_path / "demo-x-base").mkdir()
    (tmp_path / "demo-x-base" / "gsm8k.json").write_text(json.dumps(r))
    assert load_metrics(tmp_path, NO_RUNS)["base_model"].tolist() == ["smollm2-135m"]


def test_a_run_kept_in_two_places_is_one_run_unless_they_disagree(tmp_path):
    import shutil

    from analysis.results import find_runs

    a, b = tmp_path / "runs", tmp_path / "results/demo/runs"
    shutil.copytree(RUNS / "qwen3-4b-math-sft-s1", a / "qwen3-4b-math-sft-s1")
    shutil.copytree(RUNS / "qwen3-4b-math-sft-s1", b / "qwen3-4b-math-sft-s1")  # the demo's kept copy
    assert find_runs([a, tmp_path / "results"]) == {"qwen3-4b-math-sft-s1": a / "qwen3-4b-math-sft-s1"}
    (b / "qwen3-4b-math-sft-s1" / "run_info.json").write_text('{"model": "other"}')
    with pytest.raises(SchemaError, match="qwen3-4b-math-sft-s1 has two different run_info.json"):
        find_runs([a, tmp_path / "results"])
