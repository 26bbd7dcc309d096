"""On a fresh clone, `make tables figures` and the demo's and study's reports (report_only=true) reproduce the
committed results/tables, results/figures, results/demo and results/study files byte for byte (PNG and PDF included: analysis.plotting
writes them without dates or version strings). Each command runs on a copy of the repository's results/ in a
temporary folder, so the test writes nothing into the checkout."""

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from analysis import figures, tables

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """results/ copied as committed; the commands read their inputs from here and write their outputs here."""
    dest = tmp_path_factory.mktemp("fresh") / "results"
    shutil.copytree(RESULTS, dest, ignore=shutil.ignore_patterns("_hydra"))
    return dest


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose(name, overrides=overrides)


def rewritten(copy: Path, sub: str, run) -> list[str]:
    """Delete `copy/sub`'s generated files, run the command, and list what differs from the committed folder."""
    out = copy / sub
    for p in out.iterdir():
        if p.suffix in {".md", ".tex", ".png", ".pdf"} and p.name != "README.md":
            p.unlink()
    run()
    made = sorted(p for p in out.iterdir() if p.is_file())
    committed = sorted(p.name for p in (RESULTS / sub).iterdir() if p.is_file())
    assert [p.name for p in made] == committed, "the command writes other files than the committed ones"
    return [f"results/{sub}/{p.name}" for p in made if p.read_bytes() != (RESULTS / sub / p.name).read_bytes()]


def test_make_tables_reproduces_the_committed_tables(copy):
    cfg = compose_cfg("analysis_tables", [f"metrics_dir={copy / 'metrics'}", f"runs_dir=[{copy / 'demo'}]",
                                          f"out_dir={copy / 'tables'}"])
    assert rewritten(copy, "tables", lambda: tables.main(cfg)) == []
    ours = (RESULTS / "tables/ours.md").read_text()
    assert "| nan |" not in ours and "| smollm2-135m | full | math | base |" in ours


def test_make_figures_reproduces_the_committed_figures(copy):
    cfg = compose_cfg("analysis_figures", [f"metrics_dir={copy / 'metrics'}", f"runs_dirs=[{copy / 'demo'}]",
                                           f"token_stats_dir={copy / 'token_stats'}", f"out_dir={copy / 'figures'}"])
    assert rewritten(copy, "figures", lambda: figures.main(cfg)) == []


@pytest.mark.parametrize("profile, sub", [("quick", "demo"), ("quick3", "demo/quick3"), ("full", "demo/full")])
def test_the_demo_report_reproduces_the_committed_demo_files(copy, profile, sub):
    """`report_only=true` renders the committed metrics alone (no model, no data): every file as committed."""
    from experiments import demo

    cfg = compose_cfg("demo", [f"demo_profile={profile}", f"metrics_dir={copy / 'metrics'}", f"out_dir={copy / sub}",
                               "report_only=true"])
    demo.main(cfg)
    for name in ("table.md", "summary.json", "paired_differences.csv", "mechanism.json", "timing.json",
                 "gain_vs_drift.png"):
        assert (copy / sub / name).read_bytes() == (RESULTS / sub / name).read_bytes(), f"results/{sub}/{name}"


@pytest.mark.parametrize("profile, sub", [("quick", "study/quick"), ("full", "study")])
def test_the_study_report_reproduces_the_committed_study_files(copy, profile, sub):
    from experiments import study

    cfg = compose_cfg("study", [f"study_profile={profile}", f"metrics_dir={copy / 'study' / 'metrics'}",
                                f"out_dir={copy / sub}", "report_only=true"])
    study.main(cfg)
    for name in ("table.md", "summary.json", "timing.json", "dose_response.png", "pareto.png", "open_questions.png"):
        assert (copy / sub / name).read_bytes() == (RESULTS / sub / name).read_bytes(), f"results/{sub}/{name}"
