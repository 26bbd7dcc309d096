"""Every figure function on small synthetic inputs: it writes PNG and PDF, and its axes carry the paper's terms.
Also `make figures` (analysis.figures.main) with nothing available (it says what is missing) and with inputs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from analysis import fig_tokens, fig_training, figures
from analysis.plotting import save
from analysis.summaries import region_shares, region_top_tokens, topk_correlation
from analysis.token_stats import write_token_stats

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests/fixtures/analysis/metrics"
RUNS = REPO / "tests/fixtures/analysis/runs"


def synthetic_tokens(n=600, seed=0, conflicts=0.1) -> pd.DataFrame:
    """Tokens spread over the p-H plane, `conflicts` of them in the confident-conflict corner."""
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0, 1, n)
    entropy = rng.uniform(0, 4, n)
    c = rng.random(n) < conflicts
    prob[c], entropy[c] = rng.uniform(0, 0.09, c.sum()), rng.uniform(0, 0.45, c.sum())
    df = pd.DataFrame({"example": np.arange(n) // 30, "position": np.arange(n) % 30 + 5, "prob": prob,
                       "entropy": entropy, "token_id": rng.integers(0, 12, n), "pred_id": rng.integers(0, 12, n),
                       "pred_prob": rng.uniform(0.5, 1, n)})
    df["token"] = df["token_id"].map(lambda i: [" the", "\n", "=", "\ufffd", "x", "42", ".", " a", "<<", ">>",
                                                ",", " is"][i])
    for k in (5, 20, 100):
        df[f"entropy_top{k}"] = np.minimum(entropy, np.log(k)) + rng.normal(0, 0.02, n)
    df["gate"] = df["entropy_top20"].clip(lower=0) / 3.0
    df["grad_norm"] = np.sqrt((1 - prob) ** 2 + (1 - prob) ** 2 / 2)
    return df


def titles(fig):
    return [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]


def saved(fig, tmp_path, name):
    paths = save(fig, tmp_path / name)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
    return paths


def test_fig1b_landscape(tmp_path):
    sft, roll = synthetic_tokens(), synthetic_tokens(seed=1, conflicts=0.0)
    fig = fig_tokens.landscape({"SFT data": sft, "Rollouts": roll})
    ax0, ax1 = fig.axes[:2]
    assert "probability" in ax0.get_xlabel() and "entropy" in ax0.get_ylabel().lower()
    assert "landscape" in titles(fig)[-1].lower()
    texts = [t.get_text() for ax in (ax0, ax1) for t in ax.texts]
    for df in (sft, roll):
        share = ((df["entropy"] < 0.5) & (df["prob"] < 0.1)).mean()
        assert f"confident conflicts: {100 * share:.1f}% of tokens" in texts
    assert any(p.get_width() == pytest.approx(0.1) and p.get_height() == pytest.approx(0.5) for p in ax0.patches)
    saved(fig, tmp_path, "fig1b")
    with pytest.raises(ValueError, match="non-empty"):
        fig_tokens.landscape({"SFT data": sft.iloc[:0]})


def test_fig3_gradient_map(tmp_path):
    df = synthetic_tokens()
    fig = fig_tokens.gradient_map(df)
    sft_ax, eaft_ax = fig.axes[:2]
    assert sft_ax.get_title().startswith("SFT") and eaft_ax.get_title().startswith("EAFT")
    assert "gradient" in titles(fig)[-1].lower() and "probability" in eaft_ax.get_xlabel()
    c = (df["entropy"] < 0.5) & (df["prob"] < 0.1)
    expect = df.loc[c, "grad_norm"].sum() / df["grad_norm"].sum()
    assert any(f"{100 * expect:.1f}% of the summed gradient norm" in t.get_text() for t in sft_ax.texts)
    saved(fig, tmp_path, "fig3")


def test_fig6_topk(tmp_path):
    df = synthetic_tokens()
    corr = topk_correlation(df, vocab_size=50)
    assert list(corr["k"]) == [5, 20, 100] and corr["k_ge_vocab"].tolist() == [False, False, True]
    assert corr.loc[corr["k"] == 20, "memory_kb"].iloc[0] == pytest.approx(20 * 12 / 1024)
    assert corr.loc[corr["k"] == 100, "memory_kb"].iloc[0] == pytest.approx(50 * 12 / 1024)  # capped at V
    assert corr["pearson"].iloc[-1] > corr["pearson"].iloc[0]
    paper = pd.DataFrame({"k": [5, 20], "pearson": [0.979, 0.999], "memory_kb": [0.1, 0.4]})
    fig = fig_tokens.topk_figure(corr, paper)
    ax, ax2 = fig.axes
    assert ax.get_xscale() == "log" and "Pearson" in ax.get_ylabel() and "memory" in ax2.get_ylabel()
    assert len(ax.get_lines()) == 2 and len(ax2.get_lines()) == 2
    saved(fig, tmp_path, "fig6")


def test_fig7_region_tokens(tmp_path):
    df = synthetic_tokens()
    tops = region_top_tokens(df, 5)
    assert set(tops) == {"high_entropy", "low_entropy_confident", "confident_conflict"}
    assert tops["confident_conflict"]["count"].sum() <= ((df["entropy"] < 0.5) & (df["prob"] < 0.1)).sum()
    fig = fig_tokens.region_tokens(tops, region_shares(df))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "␣the" in labels or "\\n" in labels or "[id 3]" in labels
    assert any("Confident conflicts" in t for t in titles(fig))
    saved(fig, tmp_path, "fig7")


def test_fig4_entropy_group_ce(tmp_path):
    steps = np.arange(1, 41)
    curves = {m: pd.DataFrame({"step": steps, "ce_high_entropy": 3 - s * steps / 40,
                               "ce_low_entropy": np.where(steps % 7 == 0, np.nan, 0.5 - s * steps / 100)})
              for m, s in (("sft", 1.0), ("eaft", 0.6))}
    fig = fig_training.entropy_group_ce(curves)
    hi, lo = fig.axes
    assert "High-entropy" in hi.get_title() and "Low-entropy" in lo.get_title()
    assert hi.get_xlabel() == "Training step" and "Cross-entropy" in hi.get_ylabel()
    assert [t.get_text() for t in hi.get_legend().get_texts()] == ["SFT", "EAFT"]
    saved(fig, tmp_path, "fig4")


def test_fig2a_general_vs_step(tmp_path):
    df = pd.DataFrame({"method": ["sft"] * 3 + ["masked_sft"] * 3, "step": [100, 200, 300] * 2,
                       "general": [80, 78, 76, 80.5, 80, 79.5]})
    fig = fig_training.general_vs_step(df, base_general=81.1)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Training step" and "General" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SFT", "Masked SFT", "base model"]
    saved(fig, tmp_path, "fig2a")


def test_fig2b_gain_drop(tmp_path):
    df = pd.DataFrame({"domain": ["math", "math", "medical", "medical"], "method": ["sft", "eaft"] * 2,
                       "target_gain": [1.1, 1.0, 1.0, 1.1], "general_change": [-4.6, -1.0, -4.8, -1.6]})
    fig = fig_training.gain_drop(df.assign(source="ours"))
    top, bottom = fig.axes
    assert "gain" in top.get_ylabel() and "general" in bottom.get_ylabel()
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["math", "medical"]
    heights = sorted(round(p.get_height(), 2) for p in bottom.patches)
    assert heights == sorted([-4.6, -1.0, -4.8, -1.6])
    saved(fig, tmp_path, "fig2b")


def test_fig5_pareto_and_front(tmp_path):
    df = pd.DataFrame({"method": ["sft", "eaft", "dft", "base"], "general": [76.5, 80.1, 78.1, 81.1],
                       "target": [69.4, 69.3, 63.5, 68.3]})
    front = fig_training.pareto_front(df[df["method"] != "base"])
    assert list(front["method"]) == ["sft", "eaft"]  # DFT is dominated by EAFT
    fig = fig_training.pareto(df, "Math")
    ax = fig.axes[0]
    assert "General" in ax.get_xlabel() and "Math" in ax.get_ylabel()
    assert {t.get_text() for t in ax.texts} == {"SFT", "EAFT", "DFT", "base model"}
    saved(fig, tmp_path, "fig5")


def cfg_for(tmp_path, **paths):
    overrides = [f"{k}={v}" for k, v in {"token_stats_dir": tmp_path / "no_stats", "metrics_dir": tmp_path / "no_metrics",
                                         "runs_dirs": f"[{tmp_path / 'no_runs'}]", "out_dir": tmp_path / "figs",
                                         **paths}.items()]
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("analysis_figures", overrides=overrides)


def test_make_figures_with_nothing_says_what_is_missing(tmp_path):
    out = figures.main(cfg_for(tmp_path))
    assert out["made"] == []
    joined = "\n".join(out["missing"])
    for needle in ("figs 1b, 3, 6, 7", "fig 4", "figs 2a, 2b, 5", "analysis.token_stats", "make eval"):
        assert needle in joined


def test_make_figures_from_files(tmp_path):
    stats = tmp_path / "stats"
    meta = {"model": "m", "data": "d", "vocab_size": 50}
    write_token_stats(synthetic_tokens(), stats / "m-d.parquet", meta)
    write_token_stats(synthetic_tokens(seed=2, conflicts=0), stats / "m-d-rollouts.parquet", {**meta, "rollouts": True})
    for method in ("sft", "dft"):  # Fig. 4 draws the paper's pair (fig4_methods: sft, eaft) only
        run = tmp_path / "runs" / f"tiny-tiny-{method}-s1"
        run.mkdir(parents=True)
        (run / "run_info.json").write_text(json.dumps({"model": "tiny", "data": "tiny", "method": method, "seed": 1,
                                                       "profile": "quick", "finished": True}))
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(
            {"step": s, "loss": 1.0, "ce_high_entropy": 3 - s / 10, "ce_low_entropy": float("nan")})
            for s in range(1, 6)))
    assert list(figures.training_curves([tmp_path / "runs"])["tiny-tiny-quick"]) == ["sft"]
    out = figures.main(cfg_for(tmp_path, token_stats_dir=stats, runs_dirs=f"[{tmp_path / 'runs'},{RUNS}]",
                               metrics_dir=FIX, formats="[png]"))  # PDF writing is tested per figure above
    names = {Path(p).name for p in out["made"]}
    # the profile is part of every name drawn from runs: profiles are never pooled
    for stem in ("fig1b_landscape_m-d", "fig3_gradient_m-d", "fig6_topk_m-d", "fig7_region_tokens_m-d",
                 "fig4_entropy_groups_tiny-tiny-quick", "fig2a_general_vs_step_qwen3-4b-math-paper",
                 "fig2b_gain_drop", "fig5_pareto_qwen3-4b-math-paper"):
        assert f"{stem}.png" in names, stem
    assert out["missing"] == []


def test_notebook_is_small_has_no_outputs_and_calls_real_functions():
    import ast

    nb = json.loads((REPO / "analysis/paper_figures.ipynb").read_text())
    assert nb["nbformat"] == 4 and (REPO / "analysis/paper_figures.ipynb").stat().st_size < 20_000
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    modules = {"fig_tokens": fig_tokens, "fig_training": fig_training, "figures": figures}
    for c in code:
        src = "".join(line for line in c["source"] if not line.lstrip().startswith("%"))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                assert hasattr(modules[node.value.id], node.attr), f"{node.value.id}.{node.attr}"
