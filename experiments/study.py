"""The conflict study: does the confident-conflict share of the training data drive forgetting, and does EAFT's
gate remove that effect? SmolLM2-135M on the CPU, offline. Design and predictions: results/study/PREREGISTRATION.md.

    make study PROFILE=quick                                  # sft, eaft x 3 arms, one seed (<= 20 min)
    make study                                                # every preregistered cell (hours; resumable)
    make study ARGS=reuse_kept=true                           # re-render / continue from the committed cells
    python -m experiments.study study_profile=full pilot_only=true   # the data-only dose pilot, no training
    python -m experiments.study study_profile=v2 setup_only=true     # the arms, their shares and the probe only
    python -m experiments.study model=tiny data=tiny study_profile=tiny   # seconds (tests/test_study.py)

A declaration on the experiment runner (experiments/runner.py). Stages, each cached on disk, so a killed run
resumes and a finished cell is never rerun:
  1. check     the config (arms, doses, methods, learning rates, seeds), before any model loads
  2. arms      the training files of every arm (experiments/study_data.py), <work_dir>/arms/<arm>/train.jsonl, and
               each arm's measured confident-conflict share under the base model (<out_dir>/arms.json)
  3. probe     the knowledge probe: candidate facts (assets/study_facts.jsonl) that no arm or held-out text
               states, kept when the base model answers them greedily and correctly with p >= min_prob
  4. open      the paper's open questions on the base model: EAFT gate and top-K vs full entropy as the softmax
               temperature rises (<out_dir>/open_questions.json)
  5. cells     train and evaluate every arm x method x lr x seed; runs/study-<profile>-<arm>-lr<lr>-<method>-s<seed>;
               metrics (target_nll, general_kl, the mini suite, knowledge_nll, injected_learned: evaluation/) in
               <metrics_dir> (results/study/metrics, not results/metrics, whose files make tables reads)
  6. report    <out_dir>/{table.md, summary.json, dose_response.png, pareto.png} (analysis/study_report.py)
"""

from __future__ import annotations

import json

from common.files import repo_path, repo_relative
from experiments import study_setup as ss
from experiments.runner import Runner

METHODS_DIR = repo_path("configs/method")


def check_config(cfg) -> None:
    """Every mistake a long run would find late, found now; the message names the key."""
    p = cfg.study_profile
    where = f"configs/study_profile/{p.name}.yaml"
    known = {"on_policy", "natural_notags", "natural", "control"}
    bad = [a for a in p.arms if a not in known]
    if bad:
        raise ValueError(f"{where}: arms {bad} unknown; known: {sorted(known)} (injected arms come from `doses`)")
    if "control" in p.arms and not p.doses:
        raise ValueError(f"{where}: the control arm matches the highest dose's substitution count; give `doses`")
    if any(not 0 < float(d) <= 1 for d in p.doses) or len(set(p.doses)) != len(p.doses):
        raise ValueError(f"{where}: doses must be distinct numbers in (0, 1], got {list(p.doses)}")
    if not p.arms and not p.doses:
        raise ValueError(f"{where}: no arm to train")
    for i, cell in enumerate(p.cells):
        for m in cell.methods:
            if not (METHODS_DIR / f"{m}.yaml").exists():
                raise ValueError(f"{where}: cells[{i}].methods: no configs/method/{m}.yaml")
        if not float(cell.lr) > 0 or not list(cell.seeds):
            raise ValueError(f"{where}: cells[{i}] needs lr > 0 and at least one seed")
        bad_arms = [a for a in cell.get("arms") or [] if a not in ss.arm_names(cfg)]
        if bad_arms:
            raise ValueError(f"{where}: cells[{i}].arms {bad_arms} are not arms of the profile "
                             f"{ss.arm_names(cfg)}")
    if int(p.n_examples) < 2:
        raise ValueError(f"{where}: n_examples must be >= 2")
    for key, f in (("facts_file", cfg.facts_file), ("study_profile.heldout_file", p.heldout_file),
                   ("data.train_file", cfg.data.train_file)):
        if not repo_path(f).exists() and not str(f).startswith(("./data", "data")):
            raise FileNotFoundError(f"{key} = {f}: missing (configs/study.yaml, {where} or configs/data/)")


def cells(cfg) -> list[dict]:
    """Every (arm, method, lr, seed) of the profile: the cell groups in the profile's order (the first is the one
    the verdict rests on, so a run cut short has it), within a group seeds outermost so that a partial group covers
    every arm. A cell group trains on every arm unless it names its `arms`."""
    out = []
    for c in cfg.study_profile.cells:
        for seed in sorted(int(s) for s in c.seeds):
            for arm in ss.arm_names(cfg):
                if not c.get("arms") or arm in c.arms:
                    out += [{"arm": arm, "method": m, "lr": float(c.lr), "seed": seed} for m in c.methods]
    return out


def run_prefix(cfg, cell: dict) -> str:
    return f"study-{cfg.study_profile.name}-{cell['arm']}-lr{cell['lr']:g}"


def main(cfg) -> dict:
    check_config(cfg)
    p = cfg.study_profile
    runner = Runner(cfg, p, tag="study", prefix=f"study-{p.name}")
    base = ss.Base(cfg, runner.worked)
    if cfg.pilot_only:
        ss.setup(cfg, bundle=False)
        return ss.pilot(cfg, base)
    work = repo_path(cfg.work_dir) / "arms"
    todo = [runner.cell(c, work / c["arm"] / "train.jsonl", run_prefix(cfg, c), [f"trainer.learning_rate={c['lr']}"])
            for c in cells(cfg)]
    print(f"[study] profile={p.name} arms={ss.arm_names(cfg)} cells={len(todo)}", flush=True)
    if cfg.report_only:  # what the committed files say, no model, no data
        arms = [a for a in ss.cached(runner.out / "arms.json", p.command) if a["name"] in ss.arm_names(cfg)]
        open_q = ss.cached(runner.out / "open_questions.json", p.command)
        subs_file = runner.out / "substitutions.json"
        subs = json.loads(subs_file.read_text()) if subs_file.exists() else None
    else:
        runner.resolve(todo)
        with runner.timer("set-up (model folder, data, benchmark files)"):
            ss.setup(cfg)
        with runner.stage("arms: training files and measured conflict shares"):
            paths = ss.write_arms(cfg, base)
            arms = ss.measure_arms(cfg, base, paths)
            subs = ss.substitutions(cfg, base)
        with runner.stage("knowledge probe"):
            probe_file = ss.probe(cfg, base, paths)
        with runner.stage("open questions: gate and top-K vs temperature"):
            open_q = ss.open_questions(cfg, base, paths.get("natural") or next(iter(paths.values())))
        injected = ss.injected_heldout(cfg, base)
        if cfg.setup_only:  # the data-only stages (arms, their shares, probe, open questions): no training
            print(f"[study] setup_only=true: arms, shares and probe are in {repo_relative(runner.out)}", flush=True)
            runner.timer.save()
            return {"arms": arms, "probe": str(probe_file), "injected_heldout": str(injected)}
        if not injected.read_text().strip():  # the tiny random model is confident nowhere: nothing was substituted
            print(f"[study] {repo_relative(injected)} holds no row: injected_learned is not measured", flush=True)
            runner.skip.add("injected_learned")
        runner.bench_settings = {"target_nll": {"local.data_files": [p.heldout_file]},
                                 "knowledge_nll": {"local.data_files": [str(probe_file)]},
                                 "injected_learned": {"local.data_files": [repo_relative(injected)]}}
        if p.probe.get("scoring", "turn") == "answer":  # the answer's tokens only, its lead-in as context
            runner.bench_settings["knowledge_nll"]["measure"] = "answer_nll"
        runner.evaluate_base()
    done = runner.run(todo)
    if p.get("report", "v1") == "v2":
        from analysis.study_report_v2 import report
    else:
        from analysis.study_report import report

    extra = {"substitutions": subs} if p.get("report", "v1") == "v2" else {}
    keep = [repo_relative(runner.out)]
    return runner.finish(done, lambda env, timings: report(
        runner.metrics, runner.out, base=runner.base, runs=done, arms=arms, oq=open_q, environment=env,
        profile=p.name, command=p.command, model=cfg.model.name, main_lr=float(p.cells[0].lr), **extra), keep)


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="study", version_base=None)(main)()
