"""Analysis: everything drawn from result files, with no model to train or evaluate: the paper's figures and
tables, the demo's and the study's reports, token statistics and the data audit.

    python -m analysis.token_stats model=<m> data=<d> [limit=N] [rollouts=true]   # per-token parquet
    python -m analysis.audit model=<m> data=<d>                                   # make audit
    python -m analysis.figures                                                    # make figures (CPU)
    python -m analysis.tables                                                     # make tables (CPU)

token_stats.py (one model pass over data) -> summaries.py (pure pandas) -> fig_tokens.py / fig_training.py (one
function per figure) -> figures.py (entry point); results.py reads results/metrics; paper.py holds the paper's
numbers and table layouts (paper/results.csv, paper/tables.yaml); tables.py renders Tables 1-3; plotting.py is the
shared style and saving; demo_report.py and study_report.py draw the experiments' reports (experiments/ calls them).
"""
