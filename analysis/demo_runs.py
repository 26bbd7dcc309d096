"""The demo's runs by name, and whether each is evaluated: shared by analysis/demo.py (which trains and evaluates
them) and analysis/demo_report.py (which reports them), so that neither imports the other back."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from common.files import REPO, repo_path

CONFIGS = REPO / "configs"


def compose_cfg(name: str, overrides: list[str]):
    """Compose another entry point's config; works inside this @hydra.main job, whose GlobalHydra is set."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose(name, overrides=overrides)


def run_prefix(cfg) -> str:
    return f"demo-{cfg.demo_profile.name}"


def run_name(cfg, method: str, seed: int) -> str:
    """training.train's own name for the run (configs/train.yaml `run_name`, the one definition)."""
    return compose_cfg("train", [f"run_prefix={run_prefix(cfg)}", f"method={method}", f"seed={seed}"]).run_name


def base_run_name(cfg) -> str:
    return f"{run_prefix(cfg)}-base"


def group_done(metrics: Path, group) -> bool:
    """True when every benchmark of the group has a result made with the group's limit."""
    for bench in group.benchmarks:
        path = metrics / f"{bench}.json"
        if not path.exists() or json.loads(path.read_text())["settings"].get("limit") != group.limit:
            return False
    return True


def evaluated(cfg, name: str) -> bool:
    """True when every evaluation group of the profile has a result for this run (or base model)."""
    return all(group_done(repo_path(cfg.metrics_dir) / name, g) for g in cfg.demo_profile.eval.groups)
