"""The embedded default: SFT vs EAFT on a real pretrained model (SmolLM2-135M-Instruct), CPU only, offline.

    make demo                                   # quick profile: base, SFT, EAFT; ~15 min after set-up
    make demo FULL=1                            # every method x 3 seeds, longer schedule, larger evaluations
    python -m experiments.demo methods=[sft,eaft,dft] demo_profile.train.n_examples=64
    make demo ARGS=reuse_kept=true              # re-render from the committed runs and metrics, training nothing

A declaration on the experiment runner (experiments/runner.py), which trains, evaluates, reuses, times and
compares with the committed reference. Stages:
  1. set-up     the SmolLM2 HF folder (data_pipeline.assets), data/math-mini (data_pipeline.build), the offline
                benchmark bundle (evaluation.data_bundle), the demo's training file (the first n rows)
  2. mechanism  token statistics of the training data under the base model (analysis.token_stats): the share
                of confident conflicts and the Pearson correlation of top-20 with full entropy; the landscape
  3. cells      base and one run per method x seed (runs/demo-<profile>-<method>-s<seed>), each evaluated on
                held-out target NLL, greedy accuracy on held-out GSM8K items, the `mini` multiple-choice suite,
                and drift from the base model on general chat prompts (results/metrics/<run>/)
  4. report     <out_dir>/table.md (also printed), summary.json, figures, timing.json (analysis/demo_report.py);
                after a run that trained or evaluated anything, agreement.md: its headline differences against
                the committed reference's (experiments/agreement.py)
"""

from __future__ import annotations

import json
from pathlib import Path

from common.files import atomic_write_text, repo_path, repo_relative
from experiments.runner import Runner, compose_cfg, write_json_if_changed
from experiments.study_setup import cached


def setup(cfg) -> Path:
    """The model folder, the math data and the offline benchmark files; returns the demo's training file."""
    from data_pipeline.assets import SMOLLM2_DIR, smollm2

    tcfg = compose_cfg("train", [f"model={cfg.model.name}", f"data={cfg.data.name}"])
    if repo_path(tcfg.model.name_or_path).resolve() == SMOLLM2_DIR.resolve():
        smollm2()
    full_train = repo_path(tcfg.data.train_file)
    if not full_train.exists():
        from data_pipeline.build import main as build_data
        build_data(compose_cfg("data_build", [f"domain={cfg.data.name}"]))
    if cfg.demo_profile.eval_bundle:
        from evaluation.data_bundle import main as build_eval_data
        build_eval_data(["--only", *cfg.demo_profile.eval_bundle])
    # The demo trains on the first n rows; its own file so that FLOW / Masked-SFT precompute only those.
    n = cfg.demo_profile.train.n_examples
    train_file = repo_path(cfg.out_dir) / "data" / "train.jsonl"
    rows = full_train.read_text().splitlines()[:n]
    if not train_file.exists() or train_file.read_text().splitlines() != rows:
        atomic_write_text(train_file, "".join(r + "\n" for r in rows))
    return train_file


def mechanism_key(cfg, train_file: Path) -> dict:
    """What mechanism.json was computed from; the file is reused while this matches (in any checkout)."""
    return {"model": cfg.model.name, "train_file": repo_relative(train_file), "limit": cfg.demo_profile.mechanism.limit}


def cells(cfg, runner: Runner) -> list:
    """One cell per method x seed, all on the demo's training file (the first n rows of the data)."""
    train_file = repo_path(cfg.out_dir) / "data" / "train.jsonl"
    return [runner.cell({"method": m, "seed": s}, train_file) for s in cfg.seeds for m in cfg.methods]


def mechanism(cfg, runner: Runner, train_file: Path) -> dict:
    """Confident-conflict share and top-20/full entropy correlation of the training data under the base model,
    cached in <out_dir>/mechanism.json under a key of what it was computed from (reused in any checkout)."""
    from analysis.fig_tokens import landscape
    from analysis.plotting import save
    from analysis.summaries import conflict_summary, topk_correlation
    from analysis.token_stats import compute

    out = repo_path(cfg.out_dir)
    cache = out / "mechanism.json"
    limit = cfg.demo_profile.mechanism.limit
    key = mechanism_key(cfg, train_file)
    if cache.exists() and json.loads(cache.read_text()).get("key") == key:
        return json.loads(cache.read_text())
    runner.worked()
    acfg = compose_cfg("analysis", [f"model={cfg.model.name}", f"data={cfg.data.name}", f"limit={limit}",
                                    f"data.train_file={train_file}"])
    df, _, _ = compute(acfg, rollouts=False)
    corr = topk_correlation(df).set_index("k")
    fig = landscape({"SFT data (teacher-forced, base model)": df},
                    title=f"{cfg.model.name} on {cfg.data.name}: entropy-probability landscape")
    save(fig, out / "landscape")
    result = {"key": key, **conflict_summary(df),
              "pearson_top20_full": float(corr.loc[20, "pearson"]),
              "spearman_top20_full": float(corr.loc[20, "spearman"]) if "spearman" in corr else None}
    atomic_write_text(cache, json.dumps(result, indent=2) + "\n")
    return result


def main(cfg) -> dict:
    from analysis.demo_report import report

    p = cfg.demo_profile
    runner = Runner(cfg, p, tag="demo", prefix=f"demo-{p.name}")
    print(f"[demo] profile={p.name} methods={list(cfg.methods)} seeds={list(cfg.seeds)}", flush=True)
    todo = cells(cfg, runner)
    train_file = todo[0].train_file
    if cfg.report_only:  # what the committed files say, no model, no data
        mech = cached(runner.out / "mechanism.json", p.command)
    else:
        runner.resolve(todo)
        with runner.timer("set-up (model folder, data, benchmark files)"):
            setup(cfg)
        with runner.stage("mechanism: token statistics of the training data under the base model"):
            mech = mechanism(cfg, runner, train_file)
        runner.evaluate_base()
        write_json_if_changed(runner.out / "runs" / runner.base / "run_info.json",
                              {"run": runner.base, "model": cfg.model.name, "method": "base", "data": None,
                               "seed": None, "profile": p.name, "finished": True})
    done = runner.run(todo)
    keep = [repo_relative(runner.out), *[repo_relative(runner.metrics / n) for n in [runner.base, *done]]]
    return runner.finish(done, lambda env, timings: report(
        runner.metrics, runner.out, base=runner.base, runs=done, mech=mech, timings=timings, environment=env,
        title=f"# Demo ({p.name}): SFT vs EAFT on {cfg.model.name}, CPU", command=p.command,
        n_methods=len(cfg.methods), figure_title=f"{cfg.model.name} on {cfg.data.name}: target gain vs general drift",
        missing=runner.missing), keep)



if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="demo", version_base=None)(main)()
