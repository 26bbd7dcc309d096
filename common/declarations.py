"""Benchmarks, methods, models and the paper's tables, each declared once; every list that follows from them is
derived here, so adding one is one file (or one line in paper/tables.yaml), never an edit of several lists.

    python -m common.declarations            # prints what is declared and what is derived from it

Declarations (plain YAML, read without Hydra's composition):
    configs/benchmark/<b>.yaml   a benchmark: `name`, `title` (its column header), `domain`, how it is scored
    configs/method/<m>.yaml      a method: `name`, `title` (its row label), `loss`, `hparams`
    configs/model/<m>.yaml       a model: `name`, `name_or_path`; the paper's models add `params` (for GPU-hours)
    paper/tables.yaml            the paper's tables: models, methods, target and general benchmarks of each
Derived: the evaluation config's benchmark entries (evaluation.benchmarks), the paper suites (configs/suite/ files
that say `paper:`), the named paper runs (configs/experiment/, written by tools/experiment_configs.py and checked
by tests/test_experiments.py), table columns and row labels (analysis.tables), GPU-hour plans (slurm/gpu_hours.py).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from common.files import REPO

CONFIGS = REPO / "configs"
PAPER_TABLES = REPO / "paper" / "tables.yaml"


def _load(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


@cache
def _group(group: str, root: Path = CONFIGS) -> dict[str, dict]:
    out = {}
    for p in sorted((root / group).glob("*.yaml")):
        d = _load(p)
        if d.get("name") != p.stem:
            raise ValueError(f"{p}: name {d.get('name')!r} must equal the file name {p.stem!r}")
        out[p.stem] = d
    return out


def benchmarks(root: Path = CONFIGS) -> dict[str, dict]:
    """{name: declaration} of every configs/benchmark/*.yaml."""
    return _group("benchmark", root)


def methods(root: Path = CONFIGS) -> dict[str, dict]:
    return _group("method", root)


def models(root: Path = CONFIGS) -> dict[str, dict]:
    return _group("model", root)


def title(kind: str, name: str, root: Path = CONFIGS) -> str:
    """A benchmark's or method's display name (its `title`; the base model's row is "base")."""
    if kind == "method" and name == "base":
        return "base"
    decl = {"benchmark": benchmarks, "method": methods, "model": models}[kind](root).get(name, {})
    return decl.get("title", name)


@cache
def paper_tables(path: Path = PAPER_TABLES) -> dict:
    """paper/tables.yaml: {general: [...], tables: {id: layout}, figures: {id: ...}}; each table's `general` is
    filled in from the shared list."""
    doc = _load(path)
    for t in doc["tables"].values():
        t.setdefault("general", list(doc["general"]))
    return doc


def suite_benchmarks(suite: dict, path: Path = PAPER_TABLES) -> list[str]:
    """A suite's benchmarks: its own `benchmarks` list, or the part of a paper table it names with
    `paper: <table>` (target + general), `paper: <table>/target`, or `paper: general`."""
    if suite.get("benchmarks"):
        return list(suite["benchmarks"])
    ref = suite.get("paper")
    if not ref:
        raise ValueError(f"suite {suite.get('name')!r}: give `benchmarks: [...]` or `paper: <table>[/target]`")
    doc = paper_tables(path)
    if ref == "general":
        return list(doc["general"])
    table, _, part = ref.partition("/")
    if table not in doc["tables"]:
        raise ValueError(f"suite {suite.get('name')!r}: paper: {ref!r} names no table of {path} "
                         f"({', '.join(doc['tables'])})")
    t = doc["tables"][table]
    if part not in ("", "target"):
        raise ValueError(f"suite {suite.get('name')!r}: paper: {ref!r}: the part after / must be `target`")
    return list(t["target"]) if part == "target" else [*t["target"], *t["general"]]


def paper_runs(path: Path = PAPER_TABLES) -> dict[str, dict]:
    """The paper's named runs (configs/experiment/<name>.yaml): every trained (model, method) of every table and
    figure. {name: {table, model, method, data, suite, model_title, method_title}}. The table's first model owns
    the short names (table1-eaft); the others carry their model (table1-glm4-9b-eaft)."""
    doc = paper_tables(path)
    out = {}
    for tid, t in doc["tables"].items():
        for i, (model, model_title) in enumerate(t["models"].items()):
            for method in t["methods"]:
                if method != "base":
                    name = f"{tid}-{method}" if i == 0 else f"{tid}-{model}-{method}"
                    out[name] = {"table": tid, "model": model, "method": method, "data": t["data"], "suite": tid,
                                 "model_title": model_title, "what": f"{t['title'].split(':')[0]} ({t['domain']})"}
    for fid, f in doc.get("figures", {}).items():
        t = doc["tables"][f["table"]]
        for method in f["methods"]:
            out[f"{fid}-{method}"] = {"table": f["table"], "model": f["model"], "method": method, "data": t["data"],
                                      "suite": f["table"], "model_title": f["model_title"], "what": f["what"]}
    return out


def problems(root: Path = CONFIGS, path: Path = PAPER_TABLES) -> list[str]:
    """Everything a table or suite needs that a declaration lacks: each a sentence naming the file and the fix."""
    out = []
    bench, meth, mod = benchmarks(root), methods(root), models(root)
    for b, d in bench.items():
        for key in ("title", "domain", "kind"):
            if key not in d:
                out.append(f"configs/benchmark/{b}.yaml: no `{key}`")
    for m, d in meth.items():
        for key in ("title", "loss"):
            if key not in d:
                out.append(f"configs/method/{m}.yaml: no `{key}`")
    doc = paper_tables(path)
    for b in doc["general"]:
        if b not in bench:
            out.append(f"{path.name}: general benchmark {b!r} has no configs/benchmark/{b}.yaml")
    for tid, t in doc["tables"].items():
        for b in t["target"]:
            if b not in bench:
                out.append(f"{path.name}: {tid} target {b!r} has no configs/benchmark/{b}.yaml")
            elif bench[b].get("domain") != t["domain"]:
                out.append(f"configs/benchmark/{b}.yaml: domain {bench[b].get('domain')!r}, but {tid} scores it as "
                           f"its {t['domain']} target")
        for m in t["methods"]:
            if m != "base" and m not in meth:
                out.append(f"{path.name}: {tid} method {m!r} has no configs/method/{m}.yaml")
        for m in t["models"]:
            if m not in mod:
                out.append(f"{path.name}: {tid} model {m!r} has no configs/model/{m}.yaml")
            elif "params" not in mod[m]:
                out.append(f"configs/model/{m}.yaml: no `params` (parameter count, for slurm/gpu_hours.py)")
        if not (root / "data" / f"{t['data']}.yaml").exists():
            out.append(f"{path.name}: {tid} data {t['data']!r} has no configs/data/{t['data']}.yaml")
        if not (root / "suite" / f"{tid}.yaml").exists():
            out.append(f"{path.name}: {tid} has no configs/suite/{tid}.yaml (`name: {tid}`, `paper: {tid}`)")
    for f, d in doc.get("figures", {}).items():
        for m in d["methods"]:
            if m not in meth:
                out.append(f"{path.name}: {f} method {m!r} has no configs/method/{m}.yaml")
    for p in sorted((root / "suite").glob("*.yaml")):
        try:
            names = suite_benchmarks(_load(p), path)
        except ValueError as e:
            out.append(f"{p.relative_to(root.parent)}: {e}")
            continue
        out += [f"{p.relative_to(root.parent)}: benchmark {b!r} has no configs/benchmark/{b}.yaml"
                for b in names if b not in bench]
    return out


if __name__ == "__main__":
    print("benchmarks:", ", ".join(f"{b} ({d.get('title')})" for b, d in benchmarks().items()))
    print("methods:", ", ".join(f"{m} ({d.get('title')})" for m, d in methods().items()))
    print("models:", ", ".join(models()))
    print("paper runs:", ", ".join(paper_runs()))
    found = problems()
    print("problems:", "none" if not found else "\n  " + "\n  ".join(found))
