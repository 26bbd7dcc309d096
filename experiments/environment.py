"""What an experiment's cells were made under, and the rule that cells made under different conditions are never
pooled: the training precision and the versions of the libraries that decide the numbers.

    from experiments.environment import resolve_precision, cell_environment, refuse_mixed

Precision is part of what a cell is, not a choice of the machine that re-renders it. A profile declares
`precision: bf16 | fp32 | auto`. `auto` takes the precision of the experiment's kept cells when it has any (so a
re-render or a continuation on another CPU keeps them), else bf16 autocast where the CPU has native bf16
(AVX512-BF16 or AMX) and fp32 elsewhere. A profile may also pin `packages: {transformers: 5.24.0, ...}`: no cell
is trained or evaluated under other versions. Every kept cell records both (run_info.json `packages`,
config.yaml `trainer.bf16`), and `refuse_mixed` stops a report that would average cells that differ in either.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

# The libraries whose version changes a cell's numbers (kernels, model code, tokenisation); run_info.json records
# these and more (training.train).
DECIDING = ("torch", "transformers")
PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    """bf16 autocast only pays off with AVX512-BF16 or AMX; elsewhere it is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def kept_precision(config_yaml: Path) -> str | None:
    """'bf16' or 'fp32' as the kept cell's config.yaml trained it (trainer.bf16), None without one."""
    from omegaconf import OmegaConf

    if not config_yaml.exists():
        return None
    return "bf16" if OmegaConf.load(config_yaml).trainer.get("bf16") else "fp32"


def resolve_precision(declared: str, kept: dict[str, str], where: str) -> str:
    """The experiment's precision: the declared one, or for `auto` the kept cells' (all alike) or the machine's.
    `kept`: {cell name: precision} of the cells the experiment will reuse."""
    if declared not in PRECISIONS:
        raise ValueError(f"{where}: precision must be one of {PRECISIONS}, got {declared!r}")
    if declared != "auto":
        return declared
    found = sorted(set(kept.values()))
    if len(found) > 1:
        raise ValueError(f"{where}: precision auto, but the kept cells were trained in {found} "
                         f"({describe(kept)}); set precision= to one of them and retrain the others")
    if found:
        return found[0]
    return "bf16" if cpu_has_native_bf16() else "fp32"


def installed(packages=DECIDING) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def cell_environment(kept_dir: Path) -> dict | None:
    """{precision, packages} of a kept cell (<out_dir>/runs/<run>/), None when it has no run_info.json."""
    info = kept_dir / "run_info.json"
    if not info.exists():
        return None
    packages = json.loads(info.read_text()).get("packages") or {}
    return {"precision": kept_precision(kept_dir / "config.yaml"),
            "packages": {p: packages.get(p, "not recorded") for p in DECIDING}}


def describe(by_cell: dict) -> str:
    """'a, b: X; c: Y', cells grouped by what they share."""
    groups: dict[str, list[str]] = {}
    for name, what in by_cell.items():
        groups.setdefault(json.dumps(what, sort_keys=True) if not isinstance(what, str) else what, []).append(name)
    return "; ".join(f"{', '.join(names)}: {what}" for what, names in groups.items())


def refuse_mixed(envs: dict[str, dict], where: str) -> dict | None:
    """The one environment every cell shares; a ValueError naming the cells when they differ in precision or in a
    deciding library's version (their numbers would be averaged as if made alike). None for no cells."""
    envs = {k: v for k, v in envs.items() if v is not None}
    kinds = {json.dumps(v, sort_keys=True) for v in envs.values()}
    if len(kinds) > 1:
        raise ValueError(f"{where}: the cells were made under different precisions or library versions and "
                         f"cannot be pooled: {describe(envs)}. Retrain the odd ones out under the others' settings "
                         "(reuse_kept=false retrains every cell; install the recorded versions with "
                         "`.venv/bin/pip install <package>==<version>`)")
    return next(iter(envs.values()), None)


def check_pins(pins: dict | None, where: str) -> None:
    """Refuse to make cells under other library versions than the profile pins, before any model loads."""
    if not pins:
        return
    have = installed(tuple(pins))
    wrong = {p: (str(v), have[p]) for p, v in pins.items() if have[p] != str(v)}
    if wrong:
        fix = " ".join(f"{p}=={v}" for p, (v, _) in wrong.items())
        raise RuntimeError(f"{where}: packages pins {', '.join(f'{p} {v}' for p, (v, _) in wrong.items())}, this "
                           f"environment has {', '.join(f'{p} {h}' for p, (_, h) in wrong.items())}. Cells made "
                           f"under other versions are not pooled with the kept ones: `.venv/bin/pip install {fix}` "
                           "(or declare a new profile)")
