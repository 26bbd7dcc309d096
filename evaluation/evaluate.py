"""Evaluate a model on a suite of benchmarks; one JSON per benchmark in results/metrics/<run>/ (evaluation/schema.py).

    python -m evaluation.evaluate model=smollm2-135m suite=mini limit=100
    python -m evaluation.evaluate model=runs/<run> suite=math backend=vllm vllm.tensor_parallel_size=8
    python -m evaluation.evaluate model=runs/<run>/checkpoint-200 suite=general     # -> .../<run>/checkpoint-200/
    make eval RUN=<run> SUITE=table1

`model` is resolved in this order: a config name in configs/model/ (a base model, method "base"); a run
directory (runs/<run> or <run>: evaluates final/, else the newest checkpoint; method, domain and the base model
come from its config.yaml); a checkpoint-N or final/ folder inside a run (records `step`); any other local
folder; a Hub id. Per-item outputs go to <results>/items/ and are reused when the same evaluation runs again.

Refused before any model loads: benchmarks whose data is missing (all of them listed, by
evaluation/sources.py's preflight); a run whose run_info.json says it failed (finished: false, or an `error`,
as training writes when it stops on divergence); local weights holding NaN or Inf. The schema refuses a NaN
or infinite score.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.declarations import suite_benchmarks
from common.files import REPO, git_sha, repo_path, repo_relative  # recorded paths: the same on any clone
from evaluation.context import EvalContext
from evaluation.schema import run_failure, write_result
from evaluation.sources import preflight
from training.checkpoints import newest_verified, step_of, verify

# Target domains a training data config may declare (configs/data/*.yaml `domain:`).
DOMAINS = ("math", "medical", "agent", "general")


def data_domain(data_cfg: dict) -> str:
    """The target domain a run trained on: its composed config's data.domain. A run composed before data configs
    declared it (config.yaml without data.domain) takes the declaration of configs/data/<data.name>.yaml."""
    domain, source = data_cfg.get("domain"), "the run's config.yaml (data.domain)"
    if domain is None:
        path = REPO / "configs" / "data" / f"{data_cfg.get('name')}.yaml"
        if not path.exists():
            raise ValueError(f"the run's config.yaml has no data.domain and there is no {path} to declare it")
        domain, source = OmegaConf.load(path).get("domain"), str(path)
    if domain not in DOMAINS:
        raise ValueError(f"{source}: domain {domain!r} is not one of {DOMAINS}")
    return domain


def _config_model(name: str) -> dict | None:
    p = REPO / "configs" / "model" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(p), resolve=True) if p.exists() and "/" not in name else None


def _find_dir(spec: str) -> Path | None:
    """A folder: `spec` by common.files.repo_path, else a run name under runs/."""
    for cand in (repo_path(spec), REPO / "runs" / spec):
        if cand.is_dir():
            return cand.resolve()
    return None


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer_config.json").exists() or (d / "tokenizer.json").exists()


def _from_run(run_dir: Path, model_dir: Path, step: int | None) -> dict:
    rcfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    base = dict(rcfg["model"])
    mcfg = {k: v for k, v in base.items() if k != "from_config"}
    mcfg["name_or_path"] = str(model_dir)
    # HF Trainer checkpoints hold no tokenizer (train.py saves it with final/ only)
    tok_dir = next((d for d in (model_dir, run_dir / "final") if _has_tokenizer(d)), None)
    mcfg["tokenizer"] = str(tok_dir) if tok_dir else base.get("tokenizer") or base["name_or_path"]
    domain = data_domain(rcfg.get("data") or {})
    return {"model_cfg": mcfg, "run": run_dir.name, "method": rcfg["method"]["name"], "step": step,
            "domain": domain, "base_model_cfg": base, "run_dir": run_dir}


# Folders of this repository: `runs/x` names a (missing) run, never the Hub organisation "runs", even before the
# folder has been created on a fresh clone.
LOCAL_ROOTS = frozenset({"runs", "data", "results", "outputs", "multirun"})


def resolve_model(spec: str) -> dict:
    """{model_cfg, run, method, step, domain, base_model_cfg} for a model spec (see the module docstring)."""
    spec = str(spec)
    cfg = _config_model(spec)
    if cfg:
        return {"model_cfg": cfg, "run": cfg["name"], "method": "base", "step": None, "domain": None,
                "base_model_cfg": cfg}
    d = _find_dir(spec)
    if d is not None:
        if (d / "config.yaml").exists():  # a run directory
            if (d / "final" / "config.json").exists():
                info = json.loads((d / "run_info.json").read_text()) if (d / "run_info.json").exists() else {}
                return _from_run(d, d / "final", info.get("global_step"))
            ckpt, skipped = newest_verified(d)
            for bad, reason in skipped:
                print(f"[eval] skipping {bad}: {reason}", file=sys.stderr)
            if ckpt is None:
                raise FileNotFoundError(f"run {d} has neither final/ nor a complete checkpoint-*/ to evaluate"
                                        f"{' (all incomplete, see above)' if skipped else ''}; train it first")
            print(f"[eval] {d.name} has no final/: evaluating its newest complete checkpoint, {ckpt.name}",
                  file=sys.stderr)
            return _from_run(d, ckpt, step_of(ckpt))
        if (d.parent / "config.yaml").exists() and re.fullmatch(r"checkpoint-\d+|final", d.name):
            reason = verify(d) if d.name != "final" else None
            if reason:
                raise ValueError(f"{d} is not a complete checkpoint: {reason}. Evaluate the run ({d.parent}) to "
                                 "take its newest complete checkpoint, or name another one")
            step = int(d.name.split("-")[1]) if d.name != "final" else None
            if step is None and (d.parent / "run_info.json").exists():
                step = json.loads((d.parent / "run_info.json").read_text()).get("global_step")
            return _from_run(d.parent, d, step)
        if (d / "config.json").exists():
            cfg = {"name": d.name, "name_or_path": str(d)}
            return {"model_cfg": cfg, "run": d.name, "method": "base", "step": None, "domain": None,
                    "base_model_cfg": cfg}
        raise FileNotFoundError(f"model {spec!r}: {d} is neither a run directory (config.yaml) nor a model folder "
                                "(config.json)")
    first = Path(spec).parts[0] if Path(spec).parts else ""
    looks_local = (spec.startswith((".", "/", "~")) or first in LOCAL_ROOTS
                   or Path(first).is_dir() or (REPO / first).is_dir())
    if spec.count("/") == 1 and not looks_local:  # org/name, and `org` is not a local folder (runs/, data/)
        cfg = {"name": spec, "name_or_path": spec}
        return {"model_cfg": cfg, "run": spec.replace("/", "--"), "method": "base", "step": None, "domain": None,
                "base_model_cfg": cfg}
    known = sorted(p.stem for p in (REPO / "configs" / "model").glob("*.yaml"))
    raise FileNotFoundError(f"model {spec!r} not found: not a config in configs/model ({', '.join(known)}), not a "
                            f"folder (looked in {Path.cwd()}, {REPO}, {REPO / 'runs'}), not a Hub id (org/name)")


def with_weights(m: dict, spec: str, path: str) -> dict:
    """A configs/model name evaluated from another copy of its weights (`model_path=<folder>`): the config's other
    settings (dtype, thinking, budgets) still apply and the results keep the config's name, so a grid that trained
    from a local copy (a mirror on a cluster without Hub access, the rehearsal's miniature) gets its base row from
    the weights its runs started from, not from the Hub id."""
    if _config_model(spec) is None:
        raise ValueError(f"model_path={path} replaces the weights of a configs/model name; model={spec!r} is not one")
    folder = repo_path(path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"model_path={path}: {folder} has no config.json (not a model folder)")
    cfg = {k: v for k, v in m["model_cfg"].items() if k not in ("tokenizer", "from_config")}
    cfg["name_or_path"] = str(folder)
    return {**m, "model_cfg": cfg, "base_model_cfg": cfg}


def _runner(kind: str, mode: str | None = None):
    if kind in ("math", "bfcl") or mode == "generate":
        from evaluation.generative import run_generative

        return run_generative
    if kind == "lm_eval":
        from evaluation.lm_eval_bench import run_lm_eval

        return run_lm_eval
    if kind == "likelihood":
        from evaluation.likelihood import run_likelihood

        return run_likelihood
    raise ValueError(f"unknown benchmark kind {kind!r} (math, bfcl, lm_eval, likelihood)")


def with_mode(bench: dict, model_cfg: dict) -> dict:
    """The benchmark with its scoring mode made concrete: `mode: auto` (the multiple-choice benchmarks) is generation
    for a thinking model, as MedEvalKit scores the paper's Table 2 model, and log-likelihood otherwise
    (evaluation.mcq.scoring_mode); an explicit mode is kept. Benchmarks without a mode are returned as they are."""
    if bench.get("kind") != "lm_eval" or "mode" not in bench:
        return bench
    from common.generation import is_thinking
    from evaluation.mcq import scoring_mode

    return {**bench, "mode": scoring_mode(bench, is_thinking(model_cfg))}


def _check_data(benches: list[dict]) -> None:
    """Every benchmark's data and IFEval's NLTK tables, before any model loads; one error lists all."""
    extra = []
    if any(b["name"] == "ifeval" for b in benches):
        from evaluation.lm_eval_bench import _need_punkt

        try:
            _need_punkt()
        except FileNotFoundError as e:
            extra.append(f"benchmark 'ifeval': {e}")
    preflight(benches, extra)


def nonfinite_weight(model_dir: Path) -> str | None:
    """'<file>: <tensor>' of the first weight holding NaN or Inf in a model folder, else None. Reads the
    weight files one tensor at a time: works for either backend, never holds a second copy of the model."""
    import torch
    from safetensors import safe_open

    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            names = st.keys()  # safe_open has no __iter__
            bad = next((k for k in names if not torch.isfinite(st.get_tensor(k)).all()), None)
        if bad:
            return f"{f.name}: {bad}"
    if not any(model_dir.glob("*.safetensors")):  # a checkpoint's training_args.bin is no weight file
        for f in sorted(model_dir.glob("pytorch_model*.bin")):
            weights = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            bad = next((k for k, t in weights.items() if not torch.isfinite(t).all()), None)
            if bad:
                return f"{f.name}: {bad}"
    return None


def refuse_broken_model(m: dict) -> None:
    """A failed run or non-finite weights would score like a model (accuracies are finite even then), and the
    tables would average them with healthy seeds: refuse both before anything is scored."""
    info = m.get("run_dir") and Path(m["run_dir"]) / "run_info.json"
    why = run_failure(json.loads(info.read_text())) if info and info.exists() else None
    if why:
        raise ValueError(f"{info}: {why}. Not evaluating {m['model_cfg']['name_or_path']}: retrain the run "
                         "(after a divergence, with a lower learning rate) or evaluate another one")
    if m["model_cfg"].get("from_config"):  # random init: no weights on disk
        return
    from common.models import resolve

    try:
        model_dir = Path(resolve(str(m["model_cfg"]["name_or_path"])))
    except FileNotFoundError:  # loading it says so
        return
    bad = nonfinite_weight(model_dir) if model_dir.is_dir() else None  # a Hub id is a published model
    if bad:
        raise ValueError(f"{model_dir}: weight {bad} holds NaN or Inf (the training diverged); refusing to "
                         "evaluate it. Evaluate an earlier checkpoint or retrain with a lower learning rate")


def main(cfg) -> dict:
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if cfg.get("model_spec") in (None, "???", ""):
        raise ValueError("say what to evaluate: model=<run dir | checkpoint | configs/model name | path | Hub id> "
                         "(with make: make eval RUN=<run> SUITE=<suite>)")
    names = list(cfg["benchmarks"] or suite_benchmarks(cfg["suite"]))
    unknown = [b for b in names if b not in cfg["bench"]]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(sorted(cfg['bench']))} "
                         "(a new one is a file, configs/benchmark/<name>.yaml)")
    m = resolve_model(cfg["model_spec"])  # its config only; nothing is loaded before the data are checked
    if cfg.get("model_path"):
        m = with_weights(m, cfg["model_spec"], cfg["model_path"])
    benches = {b: with_mode(dict(cfg["bench"][b], name=b), m["model_cfg"]) for b in names}
    _check_data(list(benches.values()))
    if cfg.get("base_model"):
        m["base_model_cfg"] = resolve_model(cfg["base_model"])["model_cfg"]
    if cfg.get("dtype"):
        # the evaluated model and general_kl's reference in the same precision: the KL then measures the weights,
        # and the base's own evaluation and its runs' share one set of base answers (same fingerprint)
        m["model_cfg"] = {**m["model_cfg"], "dtype": cfg["dtype"]}
        if m["base_model_cfg"]:
            m["base_model_cfg"] = {**m["base_model_cfg"], "dtype": cfg["dtype"]}
    refuse_broken_model(m)
    run = cfg.get("run_name") or m["run"]
    out = Path(cfg["out_dir"]) if Path(cfg["out_dir"]).is_absolute() else REPO / cfg["out_dir"]
    res_dir = out / run / (Path(m["model_cfg"]["name_or_path"]).name
                           if re.fullmatch(r"checkpoint-\d+", Path(m["model_cfg"]["name_or_path"]).name) else "")
    ctx = EvalContext(
        model_cfg=m["model_cfg"], items_dir=res_dir / "items", cache_dir=out / "_cache", backend=cfg["backend"],
        limit=cfg.get("limit"),
        subset_seed=cfg["subset_seed"], seed=cfg["seed"], batch_size=cfg["batch_size"],
        chunk_size=cfg["chunk_size"], resume=cfg["resume"], progress=cfg["progress"],
        overrides={k: cfg.get(k) for k in ("n_runs", "temperature", "top_p", "max_new_tokens")},
        chat_template_kwargs=dict(cfg.get("chat_template_kwargs") or {}), vllm=dict(cfg.get("vllm") or {}),
        base_model_cfg=m["base_model_cfg"])
    if ctx.backend not in ("hf", "vllm"):
        raise ValueError(f"backend must be hf or vllm, got {ctx.backend!r}")
    results = {}
    for name in names:
        bench = benches[name]
        part = _runner(bench["kind"], bench.get("mode"))(bench, ctx)
        mc = m["model_cfg"]
        model_id = (f"{mc['name']} (from_config: random init, seed {cfg['seed']})" if mc.get("from_config")
                    else repo_relative(mc["name_or_path"]))
        result = {"run": run, "model": model_id, "method": m["method"],
                  "benchmark": name, **part, "data_source": repo_relative(part["data_source"]), "git_sha": git_sha(),
                  "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "step": m["step"], "items_file": repo_relative(ctx.items_dir / f"{name}.jsonl")}
        if m["domain"]:
            result["domain"] = m["domain"]
        path = write_result(res_dir / f"{name}.json", result)
        results[name] = result
        err = f" ± {result['stderr']:.2f}" if result["stderr"] is not None else ""
        print(f"[eval] {run} {name}: {result['metric']} = {result['value']:.2f}{err} (n={result['n']}) -> {path}")
    return results


def _cli() -> None:
    # configs/model/ is the training config group, so Hydra would read `model=X` as a choice within it; the
    # evaluation takes any model spec, so the wrapper hands it over as `model_spec=X`.
    sys.argv = [re.sub(r"^model=", "model_spec=", a) for a in sys.argv]
    from evaluation.benchmarks import with_declared

    # every declared benchmark under bench.<name>; Hydra's own flags (-m, --cfg, ...) stay first
    flags = [a for a in sys.argv[1:] if a.startswith("-")]
    sys.argv = [sys.argv[0], *flags, *with_declared([a for a in sys.argv[1:] if not a.startswith("-")])]
    import hydra

    hydra.main(config_path="../configs", config_name="eval", version_base=None)(main)()


if __name__ == "__main__":
    _cli()
