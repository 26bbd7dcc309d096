"""Submit a grid of runs (models x methods x seeds) to SLURM as job arrays chained with dependencies:

    data (array over shards) -> data finalize -> [precompute, per model] -> train (array per model)
        -> eval (array per model, task N after train task N) -> tables

    python slurm/submit.py --data math --models qwen3-4b,qwen2.5-32b,glm4-9b \\
        --methods sft,sft_kl,flow,dft,talr,eaft --seeds 42 --suite table1 --gpus-per-node 8 \\
        --data-shards 64 --train-args "trainer=paper deepspeed=zero3 global_batch_size=64" \\
        --eval-args "backend=vllm vllm.tensor_parallel_size=8" --nodes qwen2.5-32b=2
    python slurm/submit.py ... --dry-run      # print the sbatch commands, submit nothing

Every stage forwards Hydra overrides to its entry point (the slurm/*.sbatch scripts); nothing here reads the
training configs except each method's `precomputed` key, to know whether FLOW / Masked-SFT need the precompute
job. Training uses `trainer=paper` unless --train-args names another trainer, and a GPU grid with a CPU trainer
(`use_cpu: true`, e.g. trainer=tiny) is refused before anything is submitted. Run names are set explicitly
(`run_name=<model>-<data>-<method>-s<seed>`, the configs' own pattern), so the evaluation array knows where each
training task writes. Site settings (partition, account, time limits, modules,
container) come from slurm/site.local.sh, or the file in $EAFT_SITE (see slurm/site.example.sh). A manifest of
every job (id, command, dependency) is written to <logs>/submit-<time>.json.
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

REPO = Path(__file__).resolve().parents[1]
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


def gpus(n: int) -> list[str]:
    return [f"--gpus-per-node={n}"] if n > 0 else []


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="training data config name (configs/data/), also the domain "
                                                 "built by the data step (configs/domain/)")
    p.add_argument("--models", required=True, help="comma-separated configs/model/ names")
    p.add_argument("--methods", required=True, help="comma-separated configs/method/ names")
    p.add_argument("--seeds", default="42", help="comma-separated seeds (default 42)")
    p.add_argument("--suite", default=None, help="evaluation suite (configs/suite/); none: no eval and no tables")
    p.add_argument("--no-build-data", action="store_true", help="the training file already exists")
    p.add_argument("--data-shards", type=int, default=1, help="array size of the data step (teacher generation)")
    p.add_argument("--data-dir", default=None, help="build into / train from this folder instead of the "
                                                    "configs' ./data/<domain>")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--metrics-dir", default="results/metrics")
    p.add_argument("--tables-dir", default="results/tables")
    p.add_argument("--no-eval-base", action="store_true", help="skip evaluating the base models")
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
    args = p.parse_args(argv)

    env = site_env(Path(os.environ.get("EAFT_SITE", REPO / "slurm" / "site.local.sh")).resolve())
    models, methods = args.models.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    g = args.gpus_per_node if args.gpus_per_node is not None else int(env.get("EAFT_GPUS_PER_NODE", 0) or 0)
    nodes = per_model(args.nodes, models, 1)
    model_args = per_model_args(args.model_args, models)
    res = {k: shlex.split(env.get(f"EAFT_{k.upper()}_SBATCH", "")) for k in ("data", "train", "eval", "cpu")}
    train_common, defaulted = with_trainer(shlex.split(args.train_args))
    train_common.append(f"out_dir={args.runs_dir}")
    if defaulted:
        print(f"[submit] no trainer= in --train-args: training uses trainer={DEFAULT_TRAINER} "
              f"(configs/trainer/{DEFAULT_TRAINER}.yaml)", file=sys.stderr)
    masked = precompute_method(methods)
    for model in models:
        check_trainer([*train_common, *model_args[model]], g, f"--train-args/--model-args for {model}")
    data_common = [f"data={args.data}"]
    if args.data_dir:
        data_common.append(f"data.train_file={Path(args.data_dir) / 'train.jsonl'}")

    s = Submitter(args, env)
    if not args.dry_run:
        s.logs.mkdir(parents=True, exist_ok=True)
    ready = args.after.split(":") if args.after else []

    if not args.no_build_data:
        build = [f"domain={args.data}", *([f"out_dir={args.data_dir}"] if args.data_dir else []),
                 *shlex.split(args.data_args)]
        data_gpus = gpus(g) if data_needs_gpus(args.data, shlex.split(args.data_args)) else []
        shards = s.sbatch(f"data-{args.data}", "data.sbatch", build, after=ready,
                          array=args.data_shards, resources=[*data_gpus, *res["data"]])
        final = s.sbatch(f"data-{args.data}-finalize", "data.sbatch",
                         [*build, "stage=finalize", f"num_shards={args.data_shards}"], after=[shards],
                         resources=res["cpu"])
        ready = [final]

    evals = []
    for model in models:
        train_after = list(ready)
        if any(needs_precompute(m) for m in methods):
            pre = s.sbatch(f"precompute-{model}", "precompute.sbatch",
                           [f"model={model}", *data_common, *([f"method={masked}"] if masked else []),
                            *train_common, *model_args[model]], after=ready,
                           resources=[*gpus(min(g, 1)), *res["eval"]])
            train_after.append(pre)
        runs = [(m, seed, f"{model}-{args.data}-{m}-s{seed}") for m in methods for seed in seeds]
        train = s.sbatch(f"train-{model}", "train.sbatch", [f"model={model}", *data_common, *train_common,
                                                            *model_args[model]],
                         after=train_after, tasks=[[f"method={m}", f"seed={seed}", f"run_name={run}"]
                                                   for m, seed, run in runs],
                         resources=[f"--nodes={nodes[model]}", *gpus(g), *res["train"]])
        if args.suite:
            eval_common = [f"suite={args.suite}", f"out_dir={args.metrics_dir}", *shlex.split(args.eval_args)]
            evals.append(s.sbatch(f"eval-{model}", "eval.sbatch", eval_common, after=[train], kind="aftercorr",
                                  tasks=[[f"model={Path(args.runs_dir) / run}"] for *_, run in runs],
                                  resources=[*gpus(g), *res["eval"]]))
            if not args.no_eval_base:
                evals.append(s.sbatch(f"eval-{model}-base", "eval.sbatch", [f"model={model}", *eval_common],
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
