"""Experiments: the stage above analysis that trains and evaluates cells and reports them.

    python -m experiments.demo [demo_profile=quick|quick3|full] [reuse_kept=true] [report_only=true]   # make demo
    python -m experiments.study [study_profile=quick|full] [reuse_kept=true] [report_only=true]        # make study

runner.py is the one runner: it trains a cell if needed (training.train), evaluates it (evaluation.evaluate, the
one writer of result files), reuses kept results, times stages, names runs by configs/train.yaml's run_name,
refuses to pool cells made under other precisions or library versions (environment.py), and compares a re-run
with the committed reference (agreement.py). demo.py and study.py are declarations on it: their stages, cells
and report (analysis/demo_report.py, analysis/study_report.py). study_data.py and study_setup.py build the
study's arms, probe and held-out rows. The cluster's runs go through slurm/submit.py, which names runs by the same
rule.
"""
