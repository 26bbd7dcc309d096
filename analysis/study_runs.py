"""The conflict study's cells and run names, shared by analysis/study.py (which runs them) and
analysis/study_report.py (which reads them back): arms, cells, run names, and whether a run is evaluated."""

from __future__ import annotations

from analysis import study_data as sd
from analysis.demo_runs import compose_cfg, group_done
from common.files import repo_path

INJECTED_LEARNED = "injected_learned"


def arm_names(cfg) -> list[str]:
    return [*cfg.study_profile.arms, *[sd.dose_arm(float(d)) for d in cfg.study_profile.doses]]


def cells(cfg) -> list[dict]:
    """Every (arm, method, lr, seed) of the profile, seeds outermost so that a partial run covers every arm."""
    out = []
    seeds = sorted({s for c in cfg.study_profile.cells for s in c.seeds})
    for seed in seeds:
        for arm in arm_names(cfg):
            for c in cfg.study_profile.cells:
                for m in c.methods:
                    if seed in c.seeds:
                        out.append({"arm": arm, "method": m, "lr": float(c.lr), "seed": int(seed)})
    return out


def run_prefix(cfg, cell: dict) -> str:
    return f"study-{cfg.study_profile.name}-{cell['arm']}-lr{cell['lr']:g}"


def run_name(cfg, cell: dict) -> str:
    """training.train's own name for the cell's run (configs/train.yaml `run_name`, the one definition)."""
    overrides = [f"run_prefix={run_prefix(cfg, cell)}", f"method={cell['method']}", f"seed={cell['seed']}"]
    return compose_cfg("train", overrides).run_name


def base_run_name(cfg) -> str:
    return f"study-{cfg.study_profile.name}-base"


def evaluated(cfg, name: str) -> bool:
    from omegaconf import OmegaConf

    metrics = repo_path(cfg.metrics_dir) / name
    return (all(group_done(metrics, OmegaConf.create(g)) for g in cfg.study_profile.eval.groups)
            and (metrics / f"{INJECTED_LEARNED}.json").exists())
