"""Submit a grid of runs (models x methods x seeds) to SLURM as job arrays chained with dependencies:

    data (array over shards) -> data finalize -> [precompute, per model] -> train (array per model)
        -> eval (array per model, task N after train task N: the run's checkpoints, then its final model) -> tables

    python slurm/submit.py --data math --models qwen3-4b,qwen2.5-32b,glm4-9b \\
        --methods sft,sft_kl,flow,dft,talr,eaft --seeds 42 --suite table1 --gpus-per-node 8 \\
        --data-shards 64 --train-args "trainer=paper deepspeed=zero3 global_batch_size=64" \\
        --eval-args "backend=vllm vllm.tensor_parallel_size=8" --nodes qwen2.5-32b=2
    python slurm/submit.py --experiments table1-sft,table1-eaft --gpus-per-node 8   # named paper runs
    python slurm/submit.py --list-experiments  # the paper's named runs (configs/experiment/)
    python slurm/submit.py ... --dry-run      # print the sbatch commands, submit nothing
    python slurm/submit.py ... --check        # the preflight only (slurm/preflight.py): will every job's data load?

A named experiment (configs/experiment/<name>.yaml) fixes model, method, data, the paper's trainer and its
evaluation suite; --experiments groups its runs by data set and model into the same arrays as a grid.
Every stage forwards Hydra overrides to its entry point (the slurm/*.sbatch scripts). Each run's name is the one
configs/train.yaml composes (`run_name`), read here by composing the overrides its training task gets, so the
evaluation array knows where each training task writes; a method's `precomputed` key says whether FLOW /
Masked-SFT need the precompute job. Training uses `trainer=paper` unless --train-args names another trainer, and
a GPU grid with a CPU trainer (`use_cpu: true`, e.g. trainer=tiny) is refused before anything is submitted.
Each run's evaluation is a checkpoint sweep (slurm/sweep.sbatch, evaluation/sweep.py): --eval-checkpoints epoch
(default) evaluates the last checkpoint of each epoch but the last, then the final model, the inputs of the tables'
best-checkpoint selection (the paper's protocol) and of Fig. 2a; `all` every save; `final` the final model only. Its
GPU-hours: slurm/gpu_hours.py.
Before anything is queued, the preflight (slurm/preflight.py) resolves every model, data set, config, split and
field the planned jobs read and counts the agent filter's yield; a problem stops the submission with its fix
(--no-check queues anyway; --dry-run skips it unless --check is given).
Site settings (partition, account, time limits, modules, container) come from slurm/site.local.sh, or the file
in $EAFT_SITE (see slurm/site.example.sh). A manifest of every job (id, command, dependency) is written to
<logs>/submit-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from common.files import REPO

DEFAULT_TRAINER = "paper"  # configs/train.yaml defaults to trainer=tiny, the CPU test trainer: never on a cluster


def site_env(path: Path) -> dict[str, str]:
    """The environment after sourcing the site file (plain assignments exported too): SBATCH_* and EAFT_*."""
    env = dict(os.environ)
    if path.is_file():
        out = subprocess.run(["bash", "-c", 'set -a; source "$0" >/dev/null; env -0', str(path)], check=True,
                             capture_output=True, text=True).stdout
        env = dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)
    env["EAFT_SITE"] = str(path)
    return env


def per_model(values: list[str], models: list[str], default: int) -> dict[str, int]:
    """`--nodes 2 --nodes qwen2.5-32b=4`: a bare value sets every model, MODEL=N one model."""
    out = {m: default for m in models}
    for v in sorted(values, key=lambda v: "=" in v):  # bare values first, so MODEL=N wins
        name, sep, val = v.partition("=")
        if not sep:
            out = {m: int(v) for m in models}
        elif name in models:
            out[name] = int(val)
        else:
            raise SystemExit(f"{v!r}: {name!r} is not one of --models {models}")
    return out


def per_model_args(values: list[str], models: list[str]) -> dict[str, list[str]]:
    """`--model-args "qwen2.5-32b=deepspeed=zero3_offload trainer.per_device_train_batch_size=1"`."""
    out: dict[str, list[str]] = {m: [] for m in models}
    for v in values:
        name, _, rest = v.partition("=")
        if name not in models:
            raise SystemExit(f"--model-args {v!r}: expected MODEL=OVERRIDES with MODEL one of {models}")
        out[name] += shlex.split(rest)
    return out


def method_config(method: str):
    from omegaconf import OmegaConf

    path = REPO / "configs" / "method" / f"{method}.yaml"
    if not path.exists():
        raise SystemExit(f"unknown method {method!r}: no {path.relative_to(REPO)}")
    return OmegaConf.load(path)


def needs_precompute(method: str) -> bool:
    return bool(method_config(method).get("precomputed"))


def precompute_method(methods: list[str]) -> str | None:
    """The Masked-SFT method whose q and k the precompute job uses: one file per model and data holds one set of
    thresholds, so the grid's Masked-SFT methods must agree on q and k (training refuses a mismatch later)."""
    masked = {m: dict(method_config(m).get("hparams") or {}) for m in methods
              if method_config(m).get("precomputed") == "masked_sft"}
    qk = {m: (hp.get("q"), hp.get("k")) for m, hp in masked.items()}
    if len(set(qk.values())) > 1:
        raise SystemExit(f"--methods: the Masked-SFT methods need thresholds for different q, k {qk}; one "
                         "precompute file holds one pair: submit them as separate grids (another --data-dir)")
    return next(iter(masked), None)


def with_trainer(overrides: list[str], default: str = DEFAULT_TRAINER) -> tuple[list[str], bool]:
    """The training overrides with a `trainer=` choice: the given one, else `default` put first (so that a later
    trainer.* override still applies on top). Returns (overrides, whether the default was added)."""
    if any(o.lstrip("+").startswith("trainer=") for o in overrides):
        return overrides, False
    return [f"trainer={default}", *overrides], True


def trainer_settings(overrides: list[str]) -> tuple[str, dict]:
    """(trainer name, its settings after any trainer.* override): what each training job will run with."""
    from omegaconf import OmegaConf

    name = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("trainer=")][-1]
    path = REPO / "configs" / "trainer" / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"trainer={name}: no {path.relative_to(REPO)} (one of "
                         f"{sorted(p.stem for p in path.parent.glob('*.yaml'))})")
    dots = [o.lstrip("+").removeprefix("trainer.") for o in overrides if o.lstrip("+").startswith("trainer.")]
    return name, OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(dots)))


def check_trainer(overrides: list[str], gpus_per_node: int, where: str) -> None:
    """A GPU job must not get a CPU trainer (trainer=tiny and trainer=cpu set use_cpu: true): it would hold the
    node's GPUs and train on its CPUs, with the test-sized settings."""
    name, settings = trainer_settings(overrides)
    if gpus_per_node > 0 and settings.get("use_cpu"):
        raise SystemExit(
            f"{where}: trainer={name} sets use_cpu: true (configs/trainer/{name}.yaml), but the training jobs "
            f"ask for {gpus_per_node} GPU(s) per node and would train on the CPU. Pass --train-args "
            f"\"trainer=paper ...\" (the paper's settings), or trainer.use_cpu=false, or --gpus-per-node 0 for a "
            "CPU-only cluster")


def data_needs_gpus(domain: str, data_args: list[str]) -> bool:
    """Whether the data step serves a teacher on GPUs (teacher.backend: vllm, after any domain.* override in
    --data-args); the medical and agent sets are prepared from released responses, on CPUs."""
    from omegaconf import OmegaConf

    path = REPO / "configs" / "domain" / f"{domain}.yaml"
    if not path.exists():
        raise SystemExit(f"--data {domain!r}: no {path.relative_to(REPO)} to build it from (or pass --no-build-data)")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(
        [a.removeprefix("domain.") for a in data_args if a.startswith("domain.")]))
    return OmegaConf.select(cfg, "teacher.backend") == "vllm"


class Submitter:
    def __init__(self, args, env: dict[str, str]):
        self.args, self.env, self.jobs = args, env, []
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.logs = Path(args.logs).resolve()
        self.task_dir = self.logs / f"grid-{self.stamp}"
        self.fake_id = 1000

    def sbatch(self, name: str, script: str, overrides: list[str], *, after: list[str] = (), kind: str = "afterok",
               tasks: list[list[str]] | None = None, array: int | None = None, resources: list[str] = ()) -> str:
        """Submit one job; `tasks` (per-task overrides, via $EAFT_TASKS) or `array` (a size) makes it an array."""
        cmd = ["sbatch", "--parsable", f"--chdir={REPO}", f"--output={self.logs}/%x-%A_%a.out",
               f"--job-name=eaft-{name}", "--kill-on-invalid-dep=yes"]
        env = {k: v for k, v in self.env.items() if k != "EAFT_TASKS"}
        if after:
            cmd.append(f"--dependency={kind}:" + ":".join(after))
        if tasks is not None:
            task_file = self.task_dir / f"{name}.tasks"
            if not self.args.dry_run:
                task_file.parent.mkdir(parents=True, exist_ok=True)
                task_file.write_text("".join(" ".join(shlex.quote(o) for o in t) + "\n" for t in tasks))
            cmd.append(f"--array=0-{len(tasks) - 1}")
            cmd.append(f"--export=ALL,EAFT_TASKS={task_file}")
        elif array:
            cmd.append(f"--array=0-{array - 1}")
        cmd += [*resources, *shlex.split(self.args.sbatch_args), f"slurm/{script}", *overrides]
        if self.args.dry_run:
            self.fake_id += 1
            job_id = str(self.fake_id)
        else:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"sbatch failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr}")
            job_id = proc.stdout.strip().split(";")[0]
        self.jobs.append({"name": name, "job_id": job_id, "script": script, "tasks": tasks,
                          "dependency": f"{kind}:{':'.join(after)}" if after else None, "command": shlex.join(cmd)})
        print(f"{job_id:>10}  {name:<34} {'after ' + kind + ':' + ','.join(after) if after else ''}")
        if self.args.dry_run:
            print(f"            {shlex.join(cmd)}" + (f"\n            tasks: {tasks}" if tasks else ""))
        return job_id


def data_dir_file(data_dir: str | None) -> list[str]:
    """The training file override --data-dir gives every training and precompute job."""
    return [f"data.train_file={Path(data_dir) / 'train.jsonl'}"] if data_dir else []


def gpus(n: int) -> list[str]:
    return [f"--gpus-per-node={n}"] if n > 0 else []


def compose_train(overrides: list[str]):
    """configs/train.yaml composed with these overrides: what a training task with them will run."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        try:
            return compose("train", overrides=overrides)
        except HydraException as e:
            raise SystemExit(f"training overrides {overrides} do not compose with configs/train.yaml: {e}") from e


def experiments() -> dict[str, str]:
    """{name: its one-line description} of every configs/experiment/*.yaml."""
    out = {}
    for p in sorted((REPO / "configs" / "experiment").glob("*.yaml")):
        lines = [x for x in p.read_text().splitlines() if x.startswith("# ") and "@package" not in x]
        out[p.stem] = lines[0].removeprefix("# ") if lines else ""
    return out


def planned_runs(args, train_common: list[str]) -> dict[str, dict[str, list[dict]]]:
    """{data: {model: [{method, task (its overrides), run, suite}]}}: the experiments named by --experiments, or
    the --models x --methods x --seeds grid on --data. Names, data and suites come from the composed configs."""
    if args.experiments:
        known = experiments()
        unknown = [e for e in args.experiments.split(",") if e not in known]
        if unknown:
            raise SystemExit(f"--experiments: no configs/experiment/{unknown[0]}.yaml (--list-experiments shows "
                             f"the {len(known)} there)")
        seeds = [[f"seed={int(s)}"] for s in args.seeds.split(",")] if args.seeds else [[]]  # default: its own
        tasks = [[f"experiment={e}", *seed] for e in args.experiments.split(",") for seed in seeds]
    else:
        missing = [f"--{k}" for k in ("data", "models", "methods") if not getattr(args, k)]
        if missing:
            raise SystemExit(f"{', '.join(missing)} required (or --experiments)")
        seeds = (args.seeds or "42").split(",")
        tasks = [[f"model={m}", f"data={args.data}", f"method={me}", f"seed={int(s)}"]
                 for m in args.models.split(",") for me in args.methods.split(",") for s in seeds]
    plan: dict[str, dict[str, list[dict]]] = {}
    for task in tasks:
        cfg = compose_train([*task, *train_common])
        suite = args.suite or cfg.get("suite")
        plan.setdefault(cfg.data.name, {}).setdefault(cfg.model.name, []).append(
            {"method": cfg.method.name, "task": task, "run": cfg.run_name, "suite": suite})
    return plan


def base_weights(model: str, runs: list[dict], train_overrides: list[str]) -> list[str]:
    """`model_path=` for the base model's evaluation when its runs train from another copy of the weights than
    configs/model/<model>.yaml names (model.name_or_path in --train-args or --model-args: a mirror, a miniature),
    so that the base row scores the weights the runs started from."""
    from omegaconf import OmegaConf

    weights = {compose_train([*r["task"], *train_overrides]).model.name_or_path for r in runs}
    if len(weights) > 1:
        raise SystemExit(f"{model}: its runs train from different weights {sorted(weights)}; one base row cannot "
                         "stand for them: submit them as separate grids")
    (path,) = weights
    declared = OmegaConf.load(REPO / "configs" / "model" / f"{model}.yaml").name_or_path
    return [] if path == declared else [f"model_path={path}"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--experiments", default=None, help="comma-separated configs/experiment/ names (instead of "
                                                       "--data/--models/--methods)")
    p.add_argument("--list-experiments", action="store_true", help="print the named experiments and exit")
    p.add_argument("--data", default=None, help="training data config name (configs/data/), also the domain "
                                                "built by the data step (configs/domain/)")
    p.add_argument("--models", default=None, help="comma-separated configs/model/ names")
    p.add_argument("--methods", default=None, help="comma-separated configs/method/ names")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 42, or each experiment's own)")
    p.add_argument("--suite", default=None, help="evaluation suite (configs/suite/); default: each experiment's "
                                                 "own; none (grid): no eval and no tables")
    p.add_argument("--no-build-data", action="store_true", help="the training file already exists")
    p.add_argument("--data-shards", type=int, default=1, help="array size of the data step (teacher generation)")
    p.add_argument("--data-dir", default=None, help="build into / train from this folder instead of the "
                                                    "configs' ./data/<domain>")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--metrics-dir", default="results/metrics")
    p.add_argument("--tables-dir", default="results/tables")
    p.add_argument("--no-eval-base", action="store_true", help="skip evaluating the base models")
    p.add_argument("--eval-checkpoints", choices=("epoch", "all", "final"), default="epoch",
                   help="which checkpoints of each run are evaluated besides its final model (evaluation/sweep.py): "
                        "the last of each epoch (default), every save, or none")
    p.add_argument("--train-args", default="", help="Hydra overrides for training (and precompute); without "
                                                    f"trainer=NAME, trainer={DEFAULT_TRAINER}")
    p.add_argument("--model-args", action="append", default=[], help='MODEL="overrides": one model only')
    p.add_argument("--eval-args", default="", help="Hydra overrides for evaluation.evaluate")
    p.add_argument("--data-args", default="", help="Hydra overrides for data_pipeline.build")
    p.add_argument("--tables-args", default="", help="Hydra overrides for analysis.tables")
    p.add_argument("--nodes", action="append", default=[], help="nodes per training run: N or MODEL=N")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default $EAFT_GPUS_PER_NODE, else 0 (CPU)")
    p.add_argument("--sbatch-args", default="", help="extra sbatch options for every job")
    p.add_argument("--after", default=None, help="job id(s) the first jobs wait for (afterok), colon-separated")
    p.add_argument("--logs", default="logs")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--check", action="store_true", help="run the preflight only (exit 0 ok, 1 problems, 2 no Hub)")
    p.add_argument("--no-check", action="store_true", help="queue without the preflight")
    p.add_argument("--recorded", type=Path, default=None, help="preflight against recorded Hub metadata (a folder)")
    p.add_argument("--record", type=Path, default=None, help="preflight: save the live Hub's answers (a folder)")
    args = p.parse_args(argv)
    if args.list_experiments:
        for name, what in experiments().items():
            print(f"{name:<28} {what}")
        return {"experiments": experiments()}

    env = site_env(Path(os.environ.get("EAFT_SITE", REPO / "slurm" / "site.local.sh")).resolve())
    g = args.gpus_per_node if args.gpus_per_node is not None else int(env.get("EAFT_GPUS_PER_NODE", 0) or 0)
    res = {k: shlex.split(env.get(f"EAFT_{k.upper()}_SBATCH", "")) for k in ("data", "train", "eval", "cpu")}
    train_common, defaulted = with_trainer(shlex.split(args.train_args))
    train_common.append(f"out_dir={args.runs_dir}")
    if defaulted:
        print(f"[submit] no trainer= in --train-args: training uses trainer={DEFAULT_TRAINER} "
              f"(configs/trainer/{DEFAULT_TRAINER}.yaml)", file=sys.stderr)
    check_trainer(train_common, g, "--train-args")  # before composing anything with it
    if args.methods and not args.experiments:  # named before the configs compose: a Masked-SFT q/k clash, and
        precompute_method(args.methods.split(","))  # a data set with no build config
        if args.data and not args.no_build_data:
            data_needs_gpus(args.data, shlex.split(args.data_args))
    plan = planned_runs(args, train_common)
    models = sorted({m for by_model in plan.values() for m in by_model})
    nodes = per_model(args.nodes, models, 1)
    model_args = per_model_args(args.model_args, models)
    masked = precompute_method(list(dict.fromkeys(r["method"] for by_model in plan.values()
                                                  for rs in by_model.values() for r in rs)))
    for model in models:
        check_trainer([*train_common, *model_args[model]], g, f"--train-args/--model-args for {model}")

    if args.check or not (args.dry_run or args.no_check):
        from preflight import plan_needs, run_preflight

        needs = plan_needs(plan, compose_train, build_data=not args.no_build_data,
                           data_args=shlex.split(args.data_args), eval_args=shlex.split(args.eval_args),
                           train_common=[*train_common, *data_dir_file(args.data_dir)])
        status, report = run_preflight(needs, recorded=args.recorded, record=args.record)
        print(report, file=sys.stderr if status else sys.stdout)
        if args.check:
            raise SystemExit(status)
        if status:
            raise SystemExit("nothing was submitted: fix the problems above, or pass --no-check to queue anyway")

    s = Submitter(args, env)
    if not args.dry_run:
        s.logs.mkdir(parents=True, exist_ok=True)
    first = args.after.split(":") if args.after else []
    evals = []
    for data, by_model in plan.items():
        ready = list(first)
        data_common = [f"data={data}", *data_dir_file(args.data_dir)]
        if not args.no_build_data:
            build = [f"domain={data}", *([f"out_dir={args.data_dir}"] if args.data_dir else []),
                     *shlex.split(args.data_args)]
            data_gpus = gpus(g) if data_needs_gpus(data, shlex.split(args.data_args)) else []
            shards = s.sbatch(f"data-{data}", "data.sbatch", build, after=ready,
                              array=args.data_shards, resources=[*data_gpus, *res["data"]])
            final = s.sbatch(f"data-{data}-finalize", "data.sbatch",
                             [*build, "stage=finalize", f"num_shards={args.data_shards}"], after=[shards],
                             resources=res["cpu"])
            ready = [final]
        tag = "" if len(plan) == 1 else f"-{data}"  # one grid keeps its historical job names
        for model, runs in by_model.items():
            train_after = list(ready)
            if any(needs_precompute(r["method"]) for r in runs):
                pre = s.sbatch(f"precompute-{model}{tag}", "precompute.sbatch",
                               [f"model={model}", *data_common, *([f"method={masked}"] if masked else []),
                                *train_common, *model_args[model]], after=ready,
                               resources=[*gpus(min(g, 1)), *res["eval"]])
                train_after.append(pre)
            train = s.sbatch(f"train-{model}{tag}", "train.sbatch", [*data_common, *train_common, *model_args[model]],
                             after=train_after, tasks=[r["task"] for r in runs],
                             resources=[f"--nodes={nodes[model]}", *gpus(g), *res["train"]])
            suites = list(dict.fromkeys(r["suite"] for r in runs))
            if None in suites and len(suites) > 1:
                raise SystemExit(f"{model} on {data}: some runs have an evaluation suite and some none {suites}; "
                                 "pass --suite")
            if suites == [None]:
                continue
            eval_common = [f"out_dir={args.metrics_dir}", *shlex.split(args.eval_args)]
            # aftercorr: evaluation task N starts when training task N ends; each run on its own suite
            evals.append(s.sbatch(f"eval-{model}{tag}", "sweep.sbatch", eval_common, after=[train], kind="aftercorr",
                                  tasks=[[f"model={Path(args.runs_dir) / r['run']}", f"suite={r['suite']}",
                                          f"checkpoints={args.eval_checkpoints}"] for r in runs],
                                  resources=[*gpus(g), *res["eval"]]))
            if not args.no_eval_base:
                base = [f"model={model}", *base_weights(model, runs, [*train_common, *model_args[model]])]
                for suite in suites:
                    evals.append(s.sbatch(f"eval-{model}{tag}-base" + ("" if len(suites) == 1 else f"-{suite}"),
                                          "eval.sbatch", [*base, f"suite={suite}", *eval_common],
                                          after=ready if args.after else [], resources=[*gpus(g), *res["eval"]]))
    if evals:
        s.sbatch("tables", "tables.sbatch", [f"metrics_dir={args.metrics_dir}", f"runs_dir={args.runs_dir}",
                                             f"out_dir={args.tables_dir}", *shlex.split(args.tables_args)],
                 after=evals, resources=res["cpu"])

    manifest = {"created": s.stamp, "argv": sys.argv[1:] if argv is None else argv, "dry_run": args.dry_run,
                "site": env["EAFT_SITE"], "jobs": s.jobs}
    if not args.dry_run:
        path = s.logs / f"submit-{s.stamp}.json"
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"manifest: {path}")
    return manifest


if __name__ == "__main__":
    main()
