"""Tables 1-3 and the results reader on the fixture tree tests/fixtures/analysis/metrics (see make_fixtures.py):
known averages and deltas, the paper's two inconsistent printed averages found from the data, checkpoint
selection, seed means, NLL kept out of averages, Markdown and LaTeX written."""

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from analysis import tables
from analysis.paper import consistency, load_paper, paper_cells
from analysis.results import domain_means, identify_run, load_metrics, seed_means, select_checkpoints

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests/fixtures/analysis/metrics"
NO_RUNS = REPO / "tests/fixtures/analysis/no_runs"  # does not exist: runs are identified by their names


@pytest.fixture(scope="module")
def metrics():
    return load_metrics(FIX, NO_RUNS)


def test_runs_are_identified_from_their_names():
    assert identify_run("qwen3-4b-thinking-medical-eaft_sig-s3", "eaft_sig", NO_RUNS) == {
        "base_model": "qwen3-4b-thinking", "data": "medical", "method": "eaft_sig", "seed": 3}
    assert identify_run("smollm2-135m-math-mini-masked_sft_pilot-s42", "x", NO_RUNS)["data"] == "math-mini"
    assert identify_run("qwen3-4b", "base", NO_RUNS)["base_model"] == "qwen3-4b"
    assert identify_run("not-a-known-run", "sft", NO_RUNS)["base_model"] is None


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
    t = tables.build_table(tables.LAYOUTS["table1"], "table1", load_paper(), ours)
    row = t.set_index(["model", "method", "source"])
    sft_ours, sft_paper = row.loc[("qwen3-4b", "sft", "ours")], row.loc[("qwen3-4b", "sft", "paper")]
    assert sft_ours["general_avg"] == pytest.approx(76.8333, abs=1e-3)
    assert sft_ours["delta"] == pytest.approx(76.8333 - 81.1, abs=1e-3)
    assert sft_paper["target_avg"] == pytest.approx(69.3667, abs=1e-3)
    assert "76.5" in sft_paper["note"]  # printed avg disagrees with the cells
    assert pd.isna(row.loc[("glm4-9b", "eaft", "ours"), "general_avg"])  # nothing of ours there
    assert row.loc[("qwen3-4b", "eaft", "ours"), "note"] == "2 seed(s)"


def test_the_papers_two_inconsistent_averages_are_found():
    flagged = consistency(load_paper(), tables.LAYOUTS)
    flagged = flagged[flagged["flag"]]
    assert sorted(zip(flagged["model"], flagged["method"])) == [("glm4-9b", "talr"), ("qwen3-4b", "sft")]
    cells = dict(zip(flagged["method"], flagged["from_cells"]))
    assert cells["sft"] == pytest.approx(76.83, abs=0.01) and cells["talr"] == pytest.approx(71.07, abs=0.01)


def test_a_corrupted_cell_is_flagged_too():
    paper = load_paper()
    i = paper.index[(paper["artifact"] == "table2") & (paper["method"] == "eaft") & (paper["column"] == "mmlu")]
    paper.loc[i, "value"] += 3.0
    flagged = consistency(paper, tables.LAYOUTS)
    assert ("table2", "eaft") in set(zip(flagged.loc[flagged["flag"], "artifact"], flagged.loc[flagged["flag"], "method"]))


def test_paper_numbers_are_complete():
    paper = load_paper()
    for art, lay in tables.LAYOUTS.items():
        cells = paper_cells(paper, art)
        for model in lay.models:
            for method in lay.methods:
                assert cells.loc[(model, method), lay.target + lay.general].notna().all(), (art, model, method)
    fig5 = paper_cells(paper, "fig5")
    assert len(fig5) == 10 and fig5.loc[("qwen3-4b", "eaft3"), "general"] == pytest.approx(80.14)


def test_cli_writes_markdown_and_latex(tmp_path):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("analysis_tables", overrides=[f"metrics_dir={FIX}", f"runs_dir={NO_RUNS}",
                                                    f"out_dir={tmp_path}"])
    out = tables.main(cfg)
    assert len(out["flagged"]) == 2
    md = (tmp_path / "table1_math.md").read_text()
    assert "| + SFT | paper |" in md and "76.83 (-4.27)" in md and "test sets" in md
    tex = (tmp_path / "table2_medical.tex").read_text()
    assert r"\begin{tabular}" in tex and "MedMCQA" in tex and "_" not in tex.replace(r"\_", "")
    ours = (tmp_path / "ours.md").read_text()
    assert "smollm2-135m" in ours and "+1.50" in ours  # SmolLM2 SFT general 64.0 vs base 62.5


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
    df = load_metrics(tmp_path, NO_RUNS)
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
