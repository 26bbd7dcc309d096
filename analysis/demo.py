"""The embedded default: SFT vs EAFT on a real pretrained model (SmolLM2-135M-Instruct), CPU only, offline.

    make demo                                   # quick profile: base, SFT, EAFT; ~15 min after set-up
    make demo FULL=1                            # every method x 3 seeds, longer schedule, larger evaluations
    python -m analysis.demo methods=[sft,eaft,dft] demo_profile.train.n_examples=64
    make demo FULL=1 ARGS=reuse_kept=true       # take runs whose kept log and metrics are committed as done

Stages, each cached on disk so that a re-run (or an interrupted run) skips what is done:
  1. set-up     the SmolLM2 HF folder (data_pipeline.assets), data/math-mini (data_pipeline.build), the offline
                benchmark bundle (evaluation.data_bundle)
  2. mechanism  token statistics of the training data under the base model (analysis.token_stats): the share
                of confident conflicts and the Pearson correlation of top-20 with full entropy; the landscape
  3. training   one run per method x seed through training.train (runs/demo-<profile>-<method>-s<seed>)
  4. eval       base and every run through evaluation.evaluate (results/metrics/<run>/): held-out target NLL,
                greedy accuracy on held-out GSM8K items, the `mini` multiple-choice suite, and drift from the base
                model on general chat prompts (KL and NLL of the base model's answers, as the base evaluation
                committed them: runs made on other CPUs pair over the same text)
  5. report     <out_dir>/table.md (also printed), figures, timing.json (analysis/demo_report.py); each run's
                training log is kept in <out_dir>/runs/<run>/ for make figures (Fig. 4)
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from analysis.demo_report import report
from analysis.demo_runs import base_run_name, compose_cfg, evaluated, run_name, run_prefix
from common.files import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    repo_path,
    repo_relative,
)


class Timer:
    """Wall time of each stage, printed as it ends and kept in timing.json. A stage that found its work done
    (`skip()` inside the block) keeps the time measured by the run that did it, marked as cached."""

    def __init__(self, path: Path, tag: str = "demo"):
        self.path, self.tag = path, tag
        self.previous = json.loads(path.read_text()) if path.exists() else {}
        self.stages: dict[str, float | str] = {}
        self._skipped = False

    def skip(self) -> None:
        self._skipped = True

    @contextmanager
    def __call__(self, name: str):
        print(f"\n=== [{self.tag}] {name}", flush=True)
        t0, self._skipped = time.time(), False
        yield
        took = round(time.time() - t0, 1)
        if self._skipped:
            before = self.previous.get(name)
            self.stages[name] = before if isinstance(before, str) else (
                f"{before:.0f} (cached)" if before is not None else "cached")
        else:
            self.stages[name] = took
        print(f"=== [{self.tag}] {name}: {self.stages[name]} s", flush=True)
        self.save()  # after every stage, so a run that fails later keeps the times of what it did

    def discard(self) -> None:
        """Put timing.json back as this invocation found it: for an invocation that measured nothing (every stage
        and cell was on disk), whose ~0 s set-up and total would otherwise replace the times of the work."""
        if self.previous:
            atomic_write_text(self.path, json.dumps(self.previous, indent=2) + "\n")
        else:
            self.path.unlink(missing_ok=True)

    def save(self) -> None:
        # stages of an earlier invocation that this one has not reached yet keep their times
        merged = {**{k: v for k, v in self.previous.items() if k not in self.stages}, **self.stages}
        atomic_write_text(self.path, json.dumps(merged, indent=2) + "\n")


def cpu_has_native_bf16() -> bool:
    """bf16 autocast only pays off with AVX512-BF16 or AMX; elsewhere it is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str) -> bool:
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return cpu_has_native_bf16() if precision == "auto" else precision == "bf16"


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
    return {"model": cfg.model.name, "train_file": repo_relative(train_file),
            "limit": cfg.demo_profile.mechanism.limit}


def mechanism(cfg, train_file: Path, timer: Timer) -> dict:
    """Confident-conflict share and top-20/full entropy correlation of the training data under the base model."""
    from analysis.fig_tokens import landscape
    from analysis.plotting import save
    from analysis.summaries import conflict_summary, topk_correlation
    from analysis.token_stats import compute

    out = repo_path(cfg.out_dir)
    cache = out / "mechanism.json"
    limit = cfg.demo_profile.mechanism.limit
    key = mechanism_key(cfg, train_file)
    if cache.exists() and json.loads(cache.read_text()).get("key") == key:
        timer.skip()
        return json.loads(cache.read_text())
    acfg = compose_cfg("analysis", [f"model={cfg.model.name}", f"data={cfg.data.name}", f"limit={limit}",
                                    f"data.train_file={train_file}"])
    df, _, _ = compute(acfg, rollouts=False)
    corr = topk_correlation(df).set_index("k")
    summary = conflict_summary(df)
    fig = landscape({"SFT data (teacher-forced, base model)": df},
                    title=f"{cfg.model.name} on {cfg.data.name}: entropy-probability landscape")
    save(fig, out / "landscape")
    result = {"key": key, **summary,
              "pearson_top20_full": float(corr.loc[20, "pearson"]),
              "spearman_top20_full": float(corr.loc[20, "spearman"]) if "spearman" in corr else None}
    atomic_write_text(cache, json.dumps(result, indent=2) + "\n")
    return result


def write_base_info(cfg, name: str) -> Path:
    """<out_dir>/runs/<base>/run_info.json: the base model's identity and profile for analysis (it is evaluated
    once per profile, with that profile's evaluation sizes, so it belongs to that profile alone)."""
    path = repo_path(cfg.out_dir) / "runs" / name / "run_info.json"
    info = {"run": name, "model": cfg.model.name, "method": "base", "data": None, "seed": None,
            "profile": cfg.demo_profile.name, "finished": True}
    if not path.exists() or json.loads(path.read_text()) != info:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, info)
    return path


def train_cfg(cfg, method: str, seed: int, train_file: Path, bf16: bool):
    """The training.train config of one demo run. Its paths are repository-relative: the resolved config is kept
    and committed (config.yaml), and `reuse_kept` compares it in whatever checkout runs the demo."""
    t = cfg.demo_profile.train
    overrides = [f"model={cfg.model.name}", f"data={cfg.data.name}", f"method={method}", "trainer=cpu",
                 f"seed={seed}", f"run_prefix={run_prefix(cfg)}", f"profile={cfg.demo_profile.name}",
                 f"out_dir={repo_relative(repo_path(cfg.runs_dir))}",
                 f"data.train_file={repo_relative(train_file)}", f"data.max_length={t.max_length}",
                 f"trainer.bf16={str(bf16).lower()}", *[f"trainer.{k}={v}" for k, v in t.trainer.items()]]
    return compose_cfg("train", overrides)


def finished(run_dir: Path) -> bool:
    """True when the run's run_info.json (written by training.train at the end) says it finished."""
    info = run_dir / "run_info.json"
    return info.exists() and bool(json.loads(info.read_text()).get("finished"))


def same_config(run_dir: Path, tcfg) -> bool:
    """The run's config.yaml is the config `tcfg` would train, by the rule training.train applies on resume (keys
    outside guards.RESUMABLE_KEYS equal), so a kept run stays reusable when a resume-only key is added."""
    from omegaconf import OmegaConf

    from training.guards import config_differences

    path = run_dir / "config.yaml"
    return path.exists() and not config_differences(OmegaConf.to_container(OmegaConf.load(path), resolve=True),
                                                    OmegaConf.to_container(tcfg, resolve=True))


def train(cfg, method: str, seed: int, train_file: Path, bf16: bool, timer: Timer) -> tuple[Path, bool]:
    """Train one run unless it finished with the same resolved config; returns (run dir, trained now).
    A finished run made with other settings is moved aside to <run>.old, never silently reused."""
    from training.train import main as train_main

    name = run_name(cfg, method, seed)
    run_dir = repo_path(cfg.runs_dir) / name
    method_cfg = compose_cfg("train", [f"method={method}"]).method
    if method_cfg.get("precomputed"):
        from training.precompute import main as precompute_main
        from training.precompute import precomputed_path
        if not precomputed_path(train_file, cfg.model.name).exists():
            precompute_main(compose_cfg("precompute", [f"model={cfg.model.name}", f"data={cfg.data.name}",
                                                       f"data.train_file={train_file}"]))
    tcfg = train_cfg(cfg, method, seed, train_file, bf16)
    if finished(run_dir):
        if same_config(run_dir, tcfg):
            print(f"[demo] {name}: already trained", flush=True)
            timer.skip()
            return run_dir, False
        print(f"[demo] {name} was trained with other settings: moving it to {set_aside_path(run_dir)}", flush=True)
        set_aside(run_dir)
    train_main(tcfg)
    if not cfg.keep_checkpoints:
        drop_checkpoints(run_dir)
    return run_dir, True


def set_aside_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".old")


def set_aside(run_dir: Path) -> Path:
    """Move a run trained with other settings to <run>.old (replacing an older one), so it is retrained."""
    old = set_aside_path(run_dir)
    if old.exists():
        shutil.rmtree(old)
    run_dir.rename(old)
    return old


def drop_checkpoints(run_dir: Path) -> None:
    """Delete a finished run's checkpoint-* folders: they only resume an unfinished run, and the demo evaluates
    final/. Kept when the run did not finish or final/ is missing."""
    if not (finished(run_dir) and (run_dir / "final").is_dir()):
        return
    for ckpt in run_dir.glob("checkpoint-*"):
        shutil.rmtree(ckpt)


def kept_and_evaluated(cfg, method: str, seed: int, train_file: Path, bf16: bool) -> bool:
    """True when the repository already holds this run, made by this command: its kept log (<out_dir>/runs/<run>/)
    says it finished with exactly this training config (whose paths are repository-relative, so in any checkout)
    and every evaluation group has a result in <metrics_dir>/<run>/. With reuse_kept=true such a run is
    neither retrained nor re-evaluated: how a run longer than one sitting is finished across fresh checkouts,
    since runs/ (the weights) is not committed."""
    name = run_name(cfg, method, seed)
    kept = repo_path(cfg.out_dir) / "runs" / name
    return (finished(kept) and same_config(kept, train_cfg(cfg, method, seed, train_file, bf16))
            and evaluated(cfg, name))


def keep_logs(cfg, run_dir: Path) -> Path:
    """Copy a run's training log (metrics.jsonl: loss, gate, CE of the entropy groups per step), run_info.json and
    config.yaml to <out_dir>/runs/<run>/, which is committed (runs/ is not): Fig. 4 and the identity of the run
    for make figures come from there."""
    dest = repo_path(cfg.out_dir) / "runs" / run_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "run_info.json", "config.yaml"):
        if (run_dir / name).exists():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    return dest


def evaluate(cfg, model_spec: str, name: str, bf16: bool, timer: Timer, fresh: bool = False) -> None:
    """Every evaluation group of the profile: each is (benchmarks, limit, extra overrides). Unless the model is
    `fresh` (trained in this invocation), finished groups are skipped; an interrupted group resumes from its items
    files, which evaluation.items ties to the weights' identity."""
    from evaluation.evaluate import main as eval_main

    if not fresh and evaluated(cfg, name):
        print(f"[demo] {name}: already evaluated", flush=True)
        timer.skip()
        return
    base = base_run_name(cfg)
    for group in cfg.demo_profile.eval.groups:
        overrides = [f"model_spec={model_spec}", f"run_name={name}", f"benchmarks=[{','.join(group.benchmarks)}]",
                     f"limit={group.limit}", f"out_dir={repo_path(cfg.metrics_dir)}",
                     f"dtype={'bfloat16' if bf16 else 'float32'}", *group.get("overrides", [])]
        if name != base and "general_kl" in group.benchmarks:
            overrides.append(base_answers_override(cfg, base))
        eval_main(compose_cfg("eval", overrides))


def general_kl_items(cfg, name: str) -> Path:
    return repo_path(cfg.metrics_dir) / name / "items" / "general_kl.jsonl"


def base_answers(cfg, name: str) -> dict[str, str]:
    """general_kl's greedy base-model answers as evaluated for run `name` ({} when it has none)."""
    path = general_kl_items(cfg, name)
    return {r["id"]: r["base_answer"] for r in read_jsonl(path)} if path.exists() else {}


def base_answers_override(cfg, base: str) -> str:
    """general_kl over the base evaluation's answers (committed with its metrics), not this machine's greedy
    decoding of them: greedy bf16 decoding differs across CPUs, so a run evaluated on another machine than the base
    would pair over other answer tokens. With it, kept and new runs pair over one text wherever they ran."""
    return f"bench.general_kl.base_answers_file={general_kl_items(cfg, base)}"


def refuse_other_base_answers(cfg, base: str, names: list[str]) -> None:
    """Runs evaluate general_kl over the base evaluation's answers (base_answers_override), so theirs differ only
    when the base was evaluated again after them (or they were evaluated before the override existed). Evaluating
    the base once more would not help (it would replace the answers every other run paired over): refuse, naming
    what to evaluate again."""
    stale = differing_base_answers(cfg, base, names)
    if stale:
        raise RuntimeError(f"general_kl: {stale} were evaluated over other base answers than {base}'s "
                           f"({general_kl_items(cfg, base)}), so they cannot be "
                           f"paired; delete their general_kl.json in {repo_path(cfg.metrics_dir)}/<run>/ to evaluate "
                           "them again over the base's answers")


def differing_base_answers(cfg, base: str, names: list[str]) -> list[str]:
    """The runs whose general_kl base answers are not the base evaluation's. Each evaluation regenerates the base
    model's greedy answers, and greedy decoding is not bit-stable across CPUs (bf16 kernels) or library versions: a
    base evaluation made on another machine pairs with fresh runs over different answer tokens."""
    ref = base_answers(cfg, base)
    return [n for n in names if (a := base_answers(cfg, n)) and any(ref.get(k) != v for k, v in a.items())]


def main(cfg) -> dict:
    repo_path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    timer = Timer(repo_path(cfg.out_dir) / "timing.json")
    t_all = time.time()
    bf16 = use_bf16(cfg.precision)
    print(f"[demo] profile={cfg.demo_profile.name} methods={list(cfg.methods)} seeds={list(cfg.seeds)} "
          f"precision={'bf16 autocast' if bf16 else 'fp32'}", flush=True)
    with timer("set-up (model folder, data, benchmark files)"):
        train_file = setup(cfg)
    with timer("mechanism: token statistics of the training data under the base model"):
        mech = mechanism(cfg, train_file, timer)
    base = base_run_name(cfg)
    with timer("evaluate the base model"):
        evaluate(cfg, cfg.model.name, base, bf16, timer)
        write_base_info(cfg, base)
    runs = {}
    for seed in cfg.seeds:
        for method in cfg.methods:
            name = run_name(cfg, method, seed)
            runs[name] = {"method": method, "seed": seed}
            if cfg.reuse_kept and kept_and_evaluated(cfg, method, seed, train_file, bf16):
                print(f"[demo] {name}: trained and evaluated before (kept log and metrics; reuse_kept=true)",
                      flush=True)
                for stage in (f"train {name}", f"evaluate {name}"):
                    with timer(stage):
                        timer.skip()
                continue
            with timer(f"train {name}"):
                run_dir, fresh = train(cfg, method, seed, train_file, bf16, timer)
                keep_logs(cfg, run_dir)
            with timer(f"evaluate {name}"):
                evaluate(cfg, str(run_dir), name, bf16, timer, fresh)
    refuse_other_base_answers(cfg, base, list(runs))
    with timer("report"):
        out = report(cfg, base, runs, mech, timer.stages)
    timer.stages["total (this invocation)"] = round(time.time() - t_all, 1)
    timer.save()
    print(f"\n[demo] done in {(time.time() - t_all) / 60:.1f} min; table: {out['table']}", flush=True)
    return {**out, "timing": timer.stages, "mechanism": mech}


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="demo", version_base=None)(main)()
