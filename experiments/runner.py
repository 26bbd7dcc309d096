"""The one experiment runner under the demo and the study: trains a cell if needed, evaluates it, reuses kept
results, times every stage, names runs by configs/train.yaml's run_name, refuses to pool cells made under other
precisions or library versions, and says whether a re-run agrees with the committed reference.

    from experiments.runner import Runner
    runner = Runner(cfg, cfg.demo_profile, tag="demo", prefix="demo-quick")
    cells = [runner.cell(method="sft", seed=0, train_file=path)]
    runner.evaluate_base(); done = runner.run(cells); runner.finish(lambda env: report(...))

An experiment (experiments/demo.py, experiments/study.py) is a declaration on it: its profile
(configs/demo_profile/, configs/study_profile/) gives the training schedule (`train`), the evaluation groups
(`eval.groups`: benchmarks, items per benchmark, overrides), `precision` and optional `packages` pins; the
experiment adds its own set-up stages, the cells, per-benchmark data files (`bench_settings`) and the report.

Where things go: runs/<run>/ (weights, gitignored), <metrics_dir>/<run>/<benchmark>.json (evaluation's one
writer), <out_dir>/runs/<run>/{metrics.jsonl, run_info.json, config.yaml} (the kept log, committed: a fresh
checkout holds no weights, and `reuse_kept=true` takes a cell whose kept log matches and whose metrics exist as
done), <out_dir>/timing.json, and the experiment's report. A finished run made with other settings or on other
data is moved aside to runs/<run>.old and retrained, never reused.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common.files import (
    REPO,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    repo_path,
    repo_relative,
)
from experiments import agreement
from experiments.environment import (
    cell_environment,
    check_pins,
    kept_precision,
    refuse_mixed,
    resolve_precision,
)

CONFIGS = REPO / "configs"
SUBSET_SEED = 1234  # configs/eval.yaml subset_seed: which items a `limit` keeps


def compose_cfg(name: str, overrides: list[str]):
    """Compose an entry point's config (inside a @hydra.main job too). The evaluation's gets every declared
    benchmark (evaluation.benchmarks), as its command line does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if name == "eval":
        from evaluation.benchmarks import with_declared

        overrides = with_declared(overrides)
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose(name, overrides=overrides)


class Timer:
    """Wall time of each stage, printed as it ends and kept in timing.json. A stage that found its work done
    (`skip()` inside the block) keeps the time measured by the run that did it, marked as cached."""

    def __init__(self, path: Path, tag: str):
        self.path, self.tag = path, tag
        self.previous = json.loads(path.read_text()) if path.exists() else {}
        self.stages: dict[str, float | str] = {}
        self._skipped = False

    def skip(self) -> None:
        self._skipped = True

    @contextmanager
    def __call__(self, name: str):
        print(f"\n=== [{self.tag}] {name}", flush=True)
        t0, self._skipped = time.time(), False
        yield
        took = round(time.time() - t0, 1)
        if self._skipped:
            before = self.previous.get(name)
            self.stages[name] = before if isinstance(before, str) else (
                f"{before:.0f} (cached)" if before is not None else "cached")
        else:
            self.stages[name] = took
        print(f"=== [{self.tag}] {name}: {self.stages[name]} s", flush=True)
        self.save()  # after every stage, so a run that fails later keeps the times of what it did

    def discard(self) -> None:
        """Put timing.json back as this invocation found it: for an invocation that measured nothing (every stage
        and cell was on disk), whose ~0 s set-up and total would otherwise replace the times of the work."""
        if self.previous:
            atomic_write_text(self.path, json.dumps(self.previous, indent=2) + "\n")
        else:
            self.path.unlink(missing_ok=True)

    def save(self) -> None:
        # stages of an earlier invocation that this one has not reached yet keep their times
        merged = {**{k: v for k, v in self.previous.items() if k not in self.stages}, **self.stages}
        atomic_write_text(self.path, json.dumps(merged, indent=2) + "\n")

    def reported(self, measured: bool) -> dict:
        """The stage times a report shows: this invocation's, or, when it measured nothing, those of the
        invocations that did the work (timing.json as found)."""
        times = self.stages if measured or not self.previous else self.previous
        return {k: v for k, v in times.items() if k not in ("report", "total (this invocation)")}


@dataclass
class Cell:
    """One model to train and evaluate: its run name (configs/train.yaml `run_name`), what the report groups it
    by (`meta`: method, seed, ...), its training file and the training.train overrides it adds."""
    name: str
    meta: dict
    train_file: Path
    overrides: list[str] = field(default_factory=list)


def finished(run_dir: Path) -> bool:
    """True when the run's run_info.json (written by training.train at the end) says it finished."""
    info = run_dir / "run_info.json"
    return info.exists() and bool(json.loads(info.read_text()).get("finished"))


def same_config(run_dir: Path, tcfg) -> bool:
    """The run's config.yaml is the config `tcfg` would train, by the rule training.train applies on resume (keys
    outside guards.RESUMABLE_KEYS equal), so a kept run stays reusable when a resume-only key is added."""
    from omegaconf import OmegaConf

    from training.guards import config_differences

    path = run_dir / "config.yaml"
    return path.exists() and not config_differences(OmegaConf.to_container(OmegaConf.load(path), resolve=True),
                                                    OmegaConf.to_container(tcfg, resolve=True))


def data_differs(run_dir: Path, train_file: Path) -> bool:
    """The finished run was trained on other bytes than the training file now holds (an arm rebuilt differently)."""
    from common.files import sha256_file

    info = json.loads((run_dir / "run_info.json").read_text())
    return info.get("data_sha256") not in (None, sha256_file(train_file))


def set_aside(run_dir: Path) -> Path:
    """Move a run trained with other settings to <run>.old (replacing an older one), so it is retrained."""
    old = run_dir.with_name(run_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    run_dir.rename(old)
    return old


def drop_checkpoints(run_dir: Path) -> None:
    """Delete a finished run's checkpoint-* folders: they only resume an unfinished run, and experiments evaluate
    final/. Kept when the run did not finish or final/ is missing."""
    if finished(run_dir) and (run_dir / "final").is_dir():
        for ckpt in run_dir.glob("checkpoint-*"):
            shutil.rmtree(ckpt)


class Runner:
    def __init__(self, cfg, profile, tag: str, prefix: str):
        self.cfg, self.profile, self.tag, self.prefix = cfg, profile, tag, prefix
        self.out, self.metrics, self.runs = (repo_path(cfg.out_dir), repo_path(cfg.metrics_dir),
                                             repo_path(cfg.runs_dir))
        self.out.mkdir(parents=True, exist_ok=True)
        self.where = f"configs/{tag}_profile/{profile.name}.yaml"
        self.timer = Timer(self.out / "timing.json", tag)
        self.base = f"{prefix}-base"
        self.bench_settings: dict[str, dict] = {}   # benchmark -> {key under bench.<b>: value}, set by the experiment
        self.precision: str | None = None
        self.missing: dict[str, dict] = {}   # report_only: the cells not evaluated yet
        self.skip: set[str] = set()           # benchmarks with no item to score (the experiment says why)
        self.work = 0        # models trained, evaluated or loaded by this invocation (see stage and finish)
        self.t0 = time.time()
        summary = self.out / "summary.json"
        self.summary_before = json.loads(summary.read_text()) if summary.exists() else None

    # ---- naming and configs ---------------------------------------------------------------------------------

    def cell(self, meta: dict, train_file: Path, run_prefix: str | None = None, overrides: list[str] = ()) -> Cell:
        """A cell of `meta` (method, seed and whatever else the report groups by, in the report's key order),
        named by training.train's own rule (configs/train.yaml run_name, the one definition)."""
        prefix = run_prefix or self.prefix
        name = compose_cfg("train", [f"run_prefix={prefix}", f"method={meta['method']}",
                                     f"seed={meta['seed']}"]).run_name
        return Cell(name, dict(meta), train_file, [f"run_prefix={prefix}", *overrides])

    def train_cfg(self, cell: Cell):
        """The training.train config of a cell. Its paths are repository-relative: the resolved config is kept and
        committed (config.yaml), and `reuse_kept` compares it in whatever checkout runs the experiment."""
        t = self.profile.train
        overrides = [f"model={self.cfg.model.name}", f"data={self.cfg.data.name}", f"method={cell.meta['method']}",
                     "trainer=cpu", f"seed={cell.meta['seed']}", f"profile={self.profile_label()}",
                     f"out_dir={repo_relative(self.runs)}", f"data.train_file={repo_relative(cell.train_file)}",
                     f"data.max_length={t.max_length}", f"trainer.bf16={str(self.precision == 'bf16').lower()}",
                     *[f"trainer.{k}={v}" for k, v in t.trainer.items()], *cell.overrides]
        return compose_cfg("train", overrides)

    def profile_label(self) -> str:
        """run_info.json's `profile`: the demo's profile name, the study's study-<profile>."""
        return self.profile.name if self.tag == "demo" else f"{self.tag}-{self.profile.name}"

    # ---- stages ---------------------------------------------------------------------------------------------

    def worked(self) -> None:
        """An experiment's own stage used a model (so its outputs were made now, not found on disk)."""
        self.work += 1

    @contextmanager
    def stage(self, name: str):
        """A timed stage marked cached when nothing in it trained, evaluated or loaded a model."""
        before = self.work
        with self.timer(name):
            yield
            if self.work == before:
                self.timer.skip()

    def resolve(self, cells: list[Cell]) -> None:
        """The experiment's precision (environment.resolve_precision: `auto` keeps the kept cells'), and the
        library pins, checked before any model loads when there is anything to make."""
        kept = {}
        if self.cfg.reuse_kept:
            for c in cells:
                p = kept_precision(self.out / "runs" / c.name / "config.yaml")
                if p and finished(self.out / "runs" / c.name):
                    kept[c.name] = p
        declared = self.cfg.get("precision") or self.profile.get("precision", "auto")
        self.precision = resolve_precision(declared, kept, self.where)
        print(f"[{self.tag}] precision: {'bf16 autocast' if self.precision == 'bf16' else 'fp32'}", flush=True)

    def dtype(self) -> str:
        return "bfloat16" if self.precision == "bf16" else "float32"

    # ---- evaluation -----------------------------------------------------------------------------------------

    def groups(self) -> list:
        """The profile's evaluation groups, less the benchmarks the experiment has nothing to score on (`skip`)."""
        from omegaconf import OmegaConf

        out = []
        for g in self.profile.eval.groups:
            keep = [b for b in g.benchmarks if b not in self.skip]
            if keep:
                out.append(g if len(keep) == len(g.benchmarks) else OmegaConf.merge(g, {"benchmarks": keep}))
        return out

    def _group_done(self, name: str, group, items: bool = True) -> bool:
        """Every benchmark of the group has a result made with the group's limit (`items`: over the current items
        of its data file)."""
        for bench in group.benchmarks:
            path = self.metrics / name / f"{bench}.json"
            if not path.exists() or json.loads(path.read_text())["settings"].get("limit") != group.limit:
                return False
            if items and not self._items_current(name, bench, group.limit):
                return False
        return True

    def _items_current(self, name: str, bench: str, limit) -> bool:
        """For a benchmark whose items carry their data rows' ids (`id_field`), the result scored the rows the data
        file holds now (a rebuilt probe file holds other facts). Always true for the others."""
        from evaluation.harness import select_subset
        from evaluation.likelihood import item_ids

        conf = {**_bench_default(bench), **self.bench_settings.get(bench, {})}
        files = conf.get("local.data_files") or conf.get("local", {}).get("data_files")
        if not conf.get("id_field") or not files:
            return True
        items = self.metrics / name / "items" / f"{bench}.jsonl"
        if not items.exists():
            return False
        rows = list(read_jsonl(repo_path(files[0])))
        want = item_ids({**conf, "name": bench}, rows, select_subset(len(rows), limit, SUBSET_SEED))
        return [str(r["id"]) for r in read_jsonl(items)] == want

    def evaluated(self, name: str, items: bool = True) -> bool:
        return all(self._group_done(name, g, items) for g in self.groups())

    def evaluate(self, model_spec: str, name: str, fresh: bool = False) -> bool:
        """Every evaluation group. Unless the model is `fresh` (trained in this invocation), groups done over the
        current items are skipped; a fresh model is evaluated again in full, so no metric of its previous weights
        survives. Returns whether anything was evaluated."""
        from omegaconf import OmegaConf, open_dict

        from evaluation.evaluate import main as eval_main

        ran = False
        for g in self.groups():
            if not fresh and self._group_done(name, g):
                continue
            ecfg = compose_cfg("eval", [f"model_spec={model_spec}", f"run_name={name}",
                                        f"benchmarks=[{','.join(g.benchmarks)}]",
                                        f"limit={'null' if g.limit is None else g.limit}",
                                        f"out_dir={repo_path(self.metrics)}", f"dtype={self.dtype()}",
                                        *g.get("overrides", [])])
            settings = {b: dict(self.bench_settings.get(b, {})) for b in g.benchmarks}
            if name != self.base and "general_kl" in g.benchmarks:
                # over the base evaluation's committed answers, not this machine's greedy decoding of them
                settings["general_kl"]["base_answers_file"] = str(self.general_kl_items(self.base))
            with open_dict(ecfg):
                for b, kv in settings.items():
                    for key, value in kv.items():
                        OmegaConf.update(ecfg, f"bench.{b}.{key}", value, merge=False)
            eval_main(ecfg)
            ran = True
        if not ran:
            print(f"[{self.tag}] {name}: already evaluated", flush=True)
        self.work += ran
        return ran

    def evaluate_base(self) -> None:
        with self.stage("evaluate the base model"):
            self.evaluate(self.cfg.model.name, self.base)

    def general_kl_items(self, name: str) -> Path:
        return self.metrics / name / "items" / "general_kl.jsonl"

    def base_answers(self, name: str) -> dict[str, str]:
        """general_kl's greedy base-model answers as evaluated for run `name` ({} when it has none)."""
        path = self.general_kl_items(name)
        return {r["id"]: r["base_answer"] for r in read_jsonl(path)} if path.exists() else {}

    def refuse_other_base_answers(self, names: list[str]) -> None:
        """Runs evaluate general_kl over the base evaluation's answers, so theirs differ only when the base was
        evaluated again after them. Evaluating the base once more would not help (it would replace the answers
        every other run paired over): refuse, naming what to evaluate again."""
        ref = self.base_answers(self.base)
        stale = [n for n in names if (a := self.base_answers(n)) and any(ref.get(k) != v for k, v in a.items())]
        if stale:
            raise RuntimeError(f"general_kl: {stale} were evaluated over other base answers than {self.base}'s "
                               f"({self.general_kl_items(self.base)}), so they cannot be paired; delete their "
                               f"general_kl.json in {self.metrics}/<run>/ to evaluate them again over the base's "
                               "answers")

    # ---- training -------------------------------------------------------------------------------------------

    def precompute(self, cell: Cell) -> None:
        """FLOW weights / Masked-SFT thresholds of the cell's training file (<folder>/precomputed/<model>.json),
        made again when missing, made from other bytes, or holding another q and k than the method's."""
        from common.files import sha256_file
        from training.precompute import main as precompute_main
        from training.precompute import precomputed_path

        method = compose_cfg("train", [f"method={cell.meta['method']}"]).method
        path = precomputed_path(cell.train_file, self.cfg.model.name)
        if path.exists():
            pre = json.loads(path.read_text())
            hp = dict(method.get("hparams") or {})
            masked = pre.get("masked_sft", {})
            if pre.get("data_sha256") == sha256_file(cell.train_file) and (
                    method.precomputed != "masked_sft" or (masked.get("q"), masked.get("k")) == (hp.get("q"),
                                                                                              hp.get("k"))):
                return
        precompute_main(compose_cfg("precompute", [
            f"model={self.cfg.model.name}", f"data={self.cfg.data.name}", f"data.train_file={cell.train_file}",
            f"data.max_length={self.profile.train.max_length}", f"method={cell.meta['method']}"]))
        self.work += 1

    def train(self, cell: Cell) -> tuple[Path, bool]:
        """Train one cell unless it finished with the same config and data; returns (run dir, trained now)."""
        from training.train import main as train_main

        run_dir = self.runs / cell.name
        if compose_cfg("train", [f"method={cell.meta['method']}"]).method.get("precomputed"):
            self.precompute(cell)
        tcfg = self.train_cfg(cell)
        if finished(run_dir):
            why = ("other settings" if not same_config(run_dir, tcfg)
                   else "other data (its data_sha256 is not the training file's)"
                   if data_differs(run_dir, cell.train_file) else None)
            if why is None:
                print(f"[{self.tag}] {cell.name}: already trained", flush=True)
                return run_dir, False
            print(f"[{self.tag}] {cell.name} was trained with {why}: moving it to {run_dir.name}.old and training "
                  "again", flush=True)
            set_aside(run_dir)
        train_main(tcfg)
        self.work += 1
        if not self.cfg.keep_checkpoints:
            drop_checkpoints(run_dir)
        return run_dir, True

    def keep_logs(self, run_dir: Path) -> Path:
        """Copy a run's training log (metrics.jsonl: loss, gate, CE of the entropy groups per step), run_info.json
        and config.yaml to <out_dir>/runs/<run>/, which is committed (runs/ is not): Fig. 4, the identity of the
        run, its precision and library versions come from there."""
        dest = self.out / "runs" / run_dir.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "run_info.json", "config.yaml"):
            if (run_dir / name).exists():
                with atomic_path(dest / name) as tmp:
                    shutil.copyfile(run_dir / name, tmp)
        return dest

    def reusable(self, cell: Cell) -> bool:
        """reuse_kept=true: the committed log finished with this config, on the bytes the training file holds now,
        and every group is evaluated over the current items. A kept run trained on other data is retrained (the
        reason is printed), never mixed in."""
        kept = self.out / "runs" / cell.name
        if not (finished(kept) and same_config(kept, self.train_cfg(cell)) and self.evaluated(cell.name)):
            return False
        if data_differs(kept, cell.train_file):
            print(f"[{self.tag}] {cell.name}: the kept run was trained on other data than "
                  f"{repo_relative(cell.train_file)} holds now: training it again", flush=True)
            return False
        return True

    def run(self, cells: list[Cell]) -> dict[str, dict]:
        """Train and evaluate every cell (or reuse it); returns {run name: meta} in the cells' order. With
        report_only=true nothing is trained or evaluated: the cells evaluated so far, the rest in `self.missing`."""
        if self.cfg.get("report_only"):
            # what the base evaluation measured is what the experiment measured (the tiny model has no
            # injected rows, for instance)
            self.skip |= {b for g in self.groups() for b in g.benchmarks
                          if not (self.metrics / self.base / f"{b}.json").exists()}
            done = {c.name: c.meta for c in cells if self.evaluated(c.name, items=False)}
            self.missing = {c.name: c.meta for c in cells if c.name not in done}
            if not done:
                raise FileNotFoundError(f"report_only=true: no cell of {self.where} is evaluated under "
                                        f"{repo_relative(self.metrics)} yet; run `{self.profile.command}` first")
            return done
        if self.precision is None:
            self.resolve(cells)
        todo = [c for c in cells if not (self.cfg.reuse_kept and self.reusable(c))]
        if todo:
            check_pins(self.profile.get("packages"), self.where)
        done = {}
        for i, cell in enumerate(cells, 1):
            print(f"\n[{self.tag}] cell {i}/{len(cells)}: {cell.name}", flush=True)
            if cell not in todo:
                print(f"[{self.tag}] {cell.name}: trained and evaluated before (kept log and metrics; "
                      "reuse_kept=true)", flush=True)
                for stage in (f"train {cell.name}", f"evaluate {cell.name}"):
                    with self.timer(stage):
                        self.timer.skip()
                done[cell.name] = cell.meta
                continue
            with self.stage(f"train {cell.name}"):
                run_dir, fresh = self.train(cell)
                self.keep_logs(run_dir)
            with self.stage(f"evaluate {cell.name}"):
                self.evaluate(str(run_dir), cell.name, fresh)
            done[cell.name] = cell.meta
        return done

    # ---- the end --------------------------------------------------------------------------------------------

    def environment(self, names: list[str]) -> dict | None:
        """The precision and deciding library versions every cell shares (refused when they differ)."""
        return refuse_mixed({n: cell_environment(self.out / "runs" / n) for n in names}, self.where)

    def finish(self, done: dict[str, dict], report, keep: list[str]) -> dict:
        """Refuse unpaired or unpoolable cells, write the report (`report(environment, timings)` returns its
        paths, with `summary` when it writes summary.json), time it, and compare the summary with the committed
        reference when this invocation made anything. `keep`: the paths a user commits to keep the run."""
        self.refuse_other_base_answers(list(done))
        env = self.environment(list(done))
        with self.timer("report"):
            result = report(env, self.timer.reported(bool(self.work)))
        if self.work:
            self.timer.stages["total (this invocation)"] = round(time.time() - self.t0, 1)
            self.timer.save()
            if result.get("summary"):
                agreement.report(Path(result["summary"]), self.summary_before, keep)
        else:
            self.timer.discard()
            print(f"[{self.tag}] nothing trained or measured: {repo_relative(self.timer.path)} keeps the times of "
                  "the work", flush=True)
        print(f"\n[{self.tag}] done in {(time.time() - self.t0) / 60:.1f} min; {result['table']}", flush=True)
        return result


def _bench_default(bench: str) -> dict:
    from evaluation.benchmarks import declared

    return dict(declared().get(bench, {}))


def write_json_if_changed(path: Path, obj) -> None:
    if not path.exists() or json.loads(path.read_text()) != obj:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, obj)
