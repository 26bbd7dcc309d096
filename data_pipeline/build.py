"""Build a training set: `make data DOMAIN=math-mini|math|medical|agent`, configured by configs/data_build.yaml.

    python -m data_pipeline.build domain=math-mini                       # CPU default, from PyPI-carried GSM8K
    python -m data_pipeline.build domain=math stage=prepare              # cluster: once
    python -m data_pipeline.build domain=math stage=generate shard=$SLURM_ARRAY_TASK_ID num_shards=64
    python -m data_pipeline.build domain=math stage=finalize num_shards=64
    python -m data_pipeline.build domain=medical                         # medical/agent: one stage, no teacher

Writes data/<domain>/train.jsonl (+ heldout.jsonl for math-mini), rejected.jsonl and manifest.json; math
intermediates under data/<domain>/work/. Stages (math): prepare | generate | finalize | all (default: prepare if
needed, generate the given shard or every shard, then finalize once every shard is done). Re-running any stage
resumes; `overwrite=true` (only without shard=) deletes data/<domain>/work first. Medical and agent ignore the
stage and shard arguments except stage=generate, which does nothing for them.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.files import REPO, git_sha
from data_pipeline import chat_build, math_build
from data_pipeline.shards import ShardStore

STAGES = ("prepare", "generate", "finalize", "all")


def _versions() -> dict:
    out = {}
    for name in ("datasets", "transformers", "math-verify", "hydra-core", "vllm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _command() -> str | None:
    """The command line that built this, from Hydra's record of the overrides (None when called from Python)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return " ".join(["python -m data_pipeline.build", *HydraConfig.get().overrides.task])


def _plain(x):
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


def main(cfg) -> dict:
    t0 = time.time()
    d = _plain(cfg["domain"])
    stage, shard, num_shards = cfg.get("stage", "all"), cfg.get("shard"), int(cfg.get("num_shards", 1))
    seed = int(cfg.get("seed", 0))
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if num_shards < 1 or (shard is not None and not 0 <= int(shard) < num_shards):
        raise ValueError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
    shard = None if shard is None else int(shard)
    out_dir = Path(cfg["out_dir"])
    out_dir = out_dir if out_dir.is_absolute() else REPO / out_dir
    work = out_dir / "work"
    if cfg.get("overwrite"):
        if shard is not None:
            raise ValueError("overwrite=true deletes the shared work folder: run it once, without shard=")
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    extra = {"domain": d["name"], "kind": d["kind"], "command": _command(),
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_sha": git_sha(),
        "seed": seed, "packages": _versions(), "settings": {"domain": d, "num_shards": num_shards}}
    summary = {"domain": d["name"], "stage": stage, "out_dir": str(out_dir)}
    limit = int(cfg.get("manifest_max_rejects", 2000))
    allow_short = bool(cfg.get("allow_short", False))

    if d["kind"] in ("medical", "agent"):
        if stage == "generate":
            print(f"[data] {d['name']}: responses come from the source data; nothing to generate")
            return summary
        manifest = chat_build.build(d, seed, out_dir, limit, extra, allow_short)
        return {**summary, **manifest["counts"], "manifest": str(out_dir / "manifest.json"),
                "wall_s": round(time.time() - t0, 1)}
    if d["kind"] != "math":
        raise ValueError(f"domain.kind must be math, medical or agent, got {d['kind']!r}")

    if stage in ("prepare", "generate", "all"):
        info = math_build.ensure_prepared(d, seed, work)
        summary["prompts"] = info["prompts"]
        print(f"[data] prepare: {info['prompts']} prompts ({info['heldout']} held out); rejected: {info['rejects']}")
    if stage in ("generate", "all"):
        summary["generate"] = math_build.generate(d, seed, work, shard, num_shards)
        print(f"[data] generate: {summary['generate']}")
    if stage in ("finalize", "all"):
        done = ShardStore(work / "generate").done_shards(num_shards)
        if stage == "all" and shard is not None and len(done) < num_shards:
            print(f"[data] {len(done)}/{num_shards} shards done; the last one to finish runs finalize")
            return summary
        result = math_build.finalize(d, seed, work, out_dir, num_shards, bool(cfg.get("allow_partial", False)),
                                     allow_short)
        extra["wall_s"] = round(time.time() - t0, 1)  # this invocation, up to writing the outputs
        manifest = math_build.write(d, result, out_dir, limit, extra)
        summary.update(manifest["counts"], manifest=str(out_dir / "manifest.json"))
        print(f"[data] wrote {manifest['outputs']}; pass rate {manifest['verification']['pass_rate']}; "
              f"rejected {manifest['rejected']['counts']}")
    summary["wall_s"] = round(time.time() - t0, 1)
    return summary


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="data_build", version_base=None)(main)()
