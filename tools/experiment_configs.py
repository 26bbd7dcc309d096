"""Write configs/experiment/<name>.yaml, one per paper run that paper/tables.yaml declares (common.declarations.
paper_runs): each file composes the paper's setup, its model, method and data, and names its evaluation suite.

    python tools/experiment_configs.py            # write the missing or changed files, delete the stale ones
    python tools/experiment_configs.py --check    # list the differences, change nothing (exit 1 if any)

The files are derived, never edited by hand: tests/test_experiments.py fails, naming this command, when they
differ from what paper/tables.yaml declares. Hydra needs one file per `experiment=` choice, so they are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.declarations import CONFIGS, PAPER_TABLES, paper_runs, title


def text(name: str, run: dict, root: Path = CONFIGS) -> str:
    return (f"# @package _global_\n"
            f"# {run['what']}: {run['model_title']} + {title('method', run['method'], root)}. Written by "
            f"tools/experiment_configs.py from\n# paper/tables.yaml: edit that file, not this one.\n"
            f"#   make train EXP={name}        python slurm/submit.py --experiments {name}\n"
            f"defaults:\n  - /setup: paper\n  - override /model: {run['model']}\n"
            f"  - override /method: {run['method']}\n  - override /data: {run['data']}\n\nsuite: {run['suite']}\n")


def differences(root: Path = CONFIGS, tables: Path = PAPER_TABLES) -> dict[str, str]:
    """{file name: what is wrong} between <root>/experiment/ and paper/tables.yaml."""
    folder = root / "experiment"
    want = {f"{n}.yaml": text(n, r, root) for n, r in paper_runs(tables).items()}
    have = {p.name: p.read_text() for p in folder.glob("*.yaml")}
    out = {f: "missing" for f in want if f not in have}
    out |= {f: "stale: no such run in paper/tables.yaml" for f in have if f not in want}
    out |= {f: "differs from what paper/tables.yaml declares" for f in want if f in have and have[f] != want[f]}
    return out


def write(root: Path = CONFIGS, tables: Path = PAPER_TABLES) -> dict[str, str]:
    diff = differences(root, tables)
    runs = paper_runs(tables)
    for f, why in diff.items():
        if why.startswith("stale"):
            (root / "experiment" / f).unlink()
        else:
            (root / "experiment" / f).write_text(text(f.removesuffix(".yaml"), runs[f.removesuffix(".yaml")], root))
    return diff


if __name__ == "__main__":
    diff = differences() if "--check" in sys.argv else write()
    for f, why in sorted(diff.items()):
        print(f"configs/experiment/{f}: {why}")
    print("up to date" if not diff else f"{len(diff)} file(s) {'differ' if '--check' in sys.argv else 'written'}")
    sys.exit(1 if diff and "--check" in sys.argv else 0)
