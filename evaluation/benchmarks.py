"""Every declared benchmark (configs/benchmark/*.yaml) in the evaluation's config, without a list to keep.

    from evaluation.benchmarks import with_declared
    compose("eval", overrides=with_declared(["model_spec=tiny", "benchmarks=[gsm8k]"]))

configs/eval.yaml names no benchmark: the evaluation's command line (evaluation/evaluate.py) and every composition
of its config in the repository add `+benchmark@bench.<b>=<b>` for each declared file, so a new benchmark is its
file alone, and `bench.<b>.<key>=value` overrides it as before. A suite's list comes from the suite file or, for
the paper's suites, from paper/tables.yaml (common.declarations.suite_benchmarks).
"""

from __future__ import annotations

from pathlib import Path

from common.declarations import CONFIGS
from common.declarations import benchmarks as declared


def with_declared(overrides: list[str], root: Path = CONFIGS) -> list[str]:
    """`overrides` preceded by one `+benchmark@bench.<b>=<b>` per benchmark declared under <root>/benchmark/ and
    not already added."""
    given = {o.split("=", 1)[0] for o in overrides if o.startswith("+benchmark@bench.")}
    return [*(f"+benchmark@bench.{b}={b}" for b in declared(root) if f"+benchmark@bench.{b}" not in given),
            *overrides]


__all__ = ["declared", "with_declared"]
