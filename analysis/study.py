"""The conflict study: does the confident-conflict share of the training data drive forgetting, and does EAFT's
gate remove that effect? SmolLM2-135M on the CPU, offline. Design and predictions: results/study/PREREGISTRATION.md.

    make study PROFILE=quick                                  # sft, eaft x 3 arms, one seed (<= 20 min)
    make study                                                # every preregistered cell (hours; resumable)
    python -m analysis.study study_profile=full pilot_only=true   # the data-only dose pilot, no training
    python -m analysis.study model=tiny data=tiny study_profile=tiny   # seconds (tests/test_study.py)
    make study ARGS=reuse_kept=true                           # continue from committed results in a fresh checkout

Stages, each cached on disk, so a killed run resumes and a finished cell is never rerun:
  1. check     the config (arms, doses, methods, learning rates, seeds), before any model loads
  2. arms      the training files of every arm (analysis/study_data.py), <work_dir>/arms/<arm>/train.jsonl, and
               each arm's measured confident-conflict share under the base model (<out_dir>/arms.json)
  3. probe     the knowledge probe: candidate facts (analysis/study_facts.jsonl) that no arm or held-out text
               states, kept when the base model answers them greedily and correctly with p >= min_prob
  4. open      the paper's open questions on the base model: EAFT gate and top-K vs full entropy as the softmax
               temperature rises (<out_dir>/open_questions.json)
  5. cells     train (training.train) and evaluate (evaluation.evaluate + injected_learned) every arm x method x
               lr x seed; runs/study-<profile>-<arm>-lr<lr>-<method>-s<seed>; metrics in <metrics_dir>
               (results/study/metrics: not results/metrics, whose files analysis/results.py reads for make tables)
  6. report    <out_dir>/{table.md, summary.json, dose_response.png, pareto.png} (analysis/study_report.py)
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

from analysis import study_data as sd
from analysis.demo import (
    Timer,
    base_answers_override,
    drop_checkpoints,
    finished,
    keep_logs,
    refuse_other_base_answers,
    same_config,
    set_aside,
    set_aside_path,
    use_bf16,
)
from analysis.demo_runs import compose_cfg, group_done
from analysis.study_runs import (
    INJECTED_LEARNED,
    arm_names,
    base_run_name,
    cells,
    evaluated,
    run_name,
    run_prefix,
)
from common.files import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    repo_path,
    repo_relative,
    sha256_file,
)

METHODS_DIR = repo_path("configs/method")


# ---- 1. check -----------------------------------------------------------------------------------------------

def check_config(cfg) -> None:
    """Every mistake a long run would find late, found now; the message names the key."""
    p = cfg.study_profile
    where = f"configs/study_profile/{p.name}.yaml"
    known = {"on_policy", "natural_notags", "natural"}
    bad = [a for a in p.arms if a not in known]
    if bad:
        raise ValueError(f"{where}: arms {bad} unknown; known: {sorted(known)} (injected arms come from `doses`)")
    if any(not 0 < float(d) <= 1 for d in p.doses) or len(set(p.doses)) != len(p.doses):
        raise ValueError(f"{where}: doses must be distinct numbers in (0, 1], got {list(p.doses)}")
    if not p.arms and not p.doses:
        raise ValueError(f"{where}: no arm to train")
    for i, cell in enumerate(p.cells):
        for m in cell.methods:
            if not (METHODS_DIR / f"{m}.yaml").exists():
                raise ValueError(f"{where}: cells[{i}].methods: no configs/method/{m}.yaml")
        if not float(cell.lr) > 0 or not list(cell.seeds):
            raise ValueError(f"{where}: cells[{i}] needs lr > 0 and at least one seed")
    if int(p.n_examples) < 2:
        raise ValueError(f"{where}: n_examples must be >= 2")
    for key, f in (("facts_file", cfg.facts_file), ("study_profile.heldout_file", p.heldout_file),
                   ("data.train_file", cfg.data.train_file)):
        if not repo_path(f).exists() and not str(f).startswith(("./data", "data")):
            raise FileNotFoundError(f"{key} = {f}: missing (configs/study.yaml, {where} or configs/data/)")


# ---- 2. arms ------------------------------------------------------------------------------------------------

class Base:
    """The base model and tokenizer, loaded on first use (a resumed run that needs no model pass loads none)."""

    def __init__(self, cfg):
        self.cfg, self._pair = cfg, None
        self.calls = 0  # every stage asks for the model only when it has work to do (see base_stage)

    def __call__(self):
        self.calls += 1
        if self._pair is None:
            import torch

            from common.models import load_model, load_tokenizer

            torch.manual_seed(self.cfg.seed)  # a from_config model is the same on every call
            tok = load_tokenizer(self.cfg.model)
            self._pair = (load_model(self.cfg.model, tok).eval(), tok)
        return self._pair


def setup(cfg, bundle: bool = True) -> None:
    """The SmolLM2 folder, data/math-mini and (bundle=True) the benchmark bundle, as the demo makes them."""
    from data_pipeline.assets import SMOLLM2_DIR, smollm2

    if repo_path(cfg.model.name_or_path).resolve() == SMOLLM2_DIR.resolve():
        smollm2()
    if not repo_path(cfg.data.train_file).exists():
        from data_pipeline.build import main as build_data
        build_data(compose_cfg("data_build", [f"domain={cfg.data.name}"]))
    if bundle and cfg.study_profile.eval_bundle:
        from evaluation.data_bundle import main as build_eval_data
        build_eval_data(["--only", *cfg.study_profile.eval_bundle])


def prompt_rows(cfg) -> list[dict]:
    from training.data import read_chat_jsonl

    rows = read_chat_jsonl(repo_path(cfg.data.train_file))[: cfg.study_profile.n_examples]
    return [dict(r) for r in rows]


def on_policy(cfg, base: Base, rows: list[dict]) -> list[dict]:
    """The base model's answers, cached under a key of the model and the rows' content (so of the data file and
    n_examples): generated once, reused by every profile and sitting. Greedy, so the same on a rebuild up to
    decoding differences across CPUs (write_arms)."""
    from common.files import sha256_json

    key = sha256_json([cfg.model.get("name_or_path"), cfg.model.name, rows])[:16]
    cache = repo_path(cfg.runs_dir) / "_study" / "cache" / f"on_policy-{cfg.model.name}-{key}.jsonl"
    if cache.exists():
        return [json.loads(x) for x in cache.read_text().splitlines()]
    model, tok = base()
    out = sd.on_policy_rows(model, tok, rows, sd.reference_lengths(tok, rows), batch_size=32)
    atomic_write_jsonl(cache, out)
    return out


def arm_rows(cfg, base: Base, rows: list[dict], plans=None) -> dict[str, list[dict]]:
    notags = sd.notags_rows(rows)
    out = {"natural": rows, "natural_notags": notags}
    if "on_policy" in cfg.study_profile.arms:
        out["on_policy"] = on_policy(cfg, base, rows)
    p = cfg.study_profile
    if p.doses:
        model, tok = base()
        plans = plans or sd.substitution_plans(model, tok, notags, cfg.seed)
        for d in cfg.study_profile.doses:
            out[sd.dose_arm(float(d))] = sd.injected_rows(notags, plans, tok, float(d), p.min_gap)[0]
    return {a: out[a] for a in arm_names(cfg)}


def arms_key(cfg) -> dict:
    """What the arm files depend on: a cached arm made with another model, data, row count, seed, gap or dose is
    rebuilt, never reused."""
    p = cfg.study_profile
    return {"model": cfg.model.name, "name_or_path": cfg.model.get("name_or_path"),
            "data_sha256": sha256_file(repo_path(cfg.data.train_file)), "n_examples": int(p.n_examples),
            "seed": int(cfg.seed), "min_gap": int(p.min_gap), "doses": [float(d) for d in p.doses]}


def write_arms(cfg, base: Base) -> dict[str, Path]:
    """<work_dir>/arms/<arm>/train.jsonl for every arm, copied from <out_dir>/arms/<arm>.jsonl (committed), which
    is built once per arms_key and rebuilt only when made for another one.

    Committed because the arms are the study's independent variable and not bit-stable across machines: on_policy
    is greedy decoding and the substitution plan one teacher-forced pass, whose results can differ across CPUs
    (bf16 kernels) or library versions. A study continued on another machine trains on the same bytes, so its kept
    runs stay valid (reuse_kept checks each kept run's data_sha256), and a reader can inspect what was injected.

    One work folder per arm: training.precompute keeps its file beside the data (<folder>/precomputed/<model>.json,
    tied to the data's sha256), so arms sharing a folder would share, and refuse, one Masked-SFT precompute file."""
    kept_dir, work = repo_path(cfg.out_dir) / "arms", repo_path(cfg.work_dir) / "arms"
    kept = {a: kept_dir / f"{a}.jsonl" for a in arm_names(cfg)}
    key, key_file = arms_key(cfg), kept_dir / "key.json"
    if not (all(p.exists() for p in kept.values()) and key_file.exists()
            and json.loads(key_file.read_text()) == key):
        for arm, rws in arm_rows(cfg, base, prompt_rows(cfg)).items():
            atomic_write_jsonl(kept[arm], rws)
        atomic_write_json(key_file, key)
    paths = {a: work / a / "train.jsonl" for a in kept}
    for arm, src in kept.items():
        if not paths[arm].exists() or paths[arm].read_bytes() != src.read_bytes():
            atomic_write_text(paths[arm], src.read_text())
    return paths


def conflict_share(cfg, base: Base, rows: list[dict]) -> dict:
    """analysis.summaries.conflict_summary of the rows under the base model, as the demo and `make audit` measure."""
    from analysis.summaries import conflict_summary
    from analysis.token_stats import token_frame
    from training.data import build_examples

    model, tok = base()
    examples, counts = build_examples(rows, tok, cfg.study_profile.train.max_length, "drop")
    hparams = dict(compose_cfg("train", ["method=eaft"]).method.hparams)
    df = token_frame(model, tok, examples, [20], hparams, desc="conflict share")
    s = conflict_summary(df)
    return {"measured_conflict_share": s["token_share"], "n_examples": counts["kept"], "n_tokens": s["tokens"],
            "conflicts": s["conflicts"], "sft_loss_share": s["sft_loss_share"], "gate_mean": s["gate_mean"]}


def measure_arms(cfg, base: Base, paths: dict[str, Path]) -> list[dict]:
    """Each arm's measured share, cached in <out_dir>/arms.json (committed) by model and the arm file's sha256:
    measured again only when a rebuilt arm's bytes differ from those measured."""
    from training.data import read_chat_jsonl

    cache = repo_path(cfg.out_dir) / "arms.json"
    old = {a["name"]: a for a in json.loads(cache.read_text())} if cache.exists() else {}
    out = []
    for arm, path in paths.items():
        key = {"model": cfg.model.name, "sha256": sha256_file(path)}
        measure = old.get(arm, {}).get("key") != key
        if measure:
            old[arm] = {"name": arm, "key": key, **conflict_share(cfg, base, read_chat_jsonl(path))}
        out.append(old[arm])
        if measure:  # after each arm, so a cut run keeps what it measured
            atomic_write_json(cache, out + [v for k, v in old.items() if k not in paths])
    return out


def pilot(cfg, base: Base) -> dict:
    """The data-only dose pilot: measured conflict share of every arm and candidate dose, no training. Resumable:
    an arm already in <out_dir>/pilot.json for the same model, data file and seed is not measured again, so a
    second invocation with more candidate doses measures only those."""
    rows = prompt_rows(cfg)
    gap = int(cfg.study_profile.min_gap)
    path = repo_path(cfg.out_dir) / ("pilot.json" if gap == 0 else f"pilot_min_gap{gap}.json")
    result = {"command": f"python -m analysis.study study_profile={cfg.study_profile.name} pilot_only=true",
              "model": cfg.model.name, "data": repo_relative(repo_path(cfg.data.train_file)),
              "data_sha256": sha256_file(repo_path(cfg.data.train_file)), "n_examples": len(rows), "seed": cfg.seed,
              **({"min_gap": gap} if gap else {}), "arms": {}, "substitutions": {}}
    if path.exists():
        old = json.loads(path.read_text())
        if all(old.get(k) == result.get(k) for k in ("model", "data_sha256", "n_examples", "seed", "min_gap")):
            result["arms"], result["substitutions"] = old["arms"], old.get("substitutions", {})
    notags = sd.notags_rows(rows)
    doses = [float(d) for d in cfg.study_profile.pilot_doses if sd.dose_arm(float(d)) not in result["arms"]]
    plans = sd.substitution_plans(*base(), notags, cfg.seed) if doses else None
    arms = {"natural_notags": lambda: notags}
    for d in doses:
        rws, result["substitutions"][sd.dose_arm(d)] = sd.injected_rows(notags, plans, base()[1], d, gap)
        arms[sd.dose_arm(d)] = lambda rws=rws: rws
    arms |= {"natural": lambda: rows, "on_policy": lambda: on_policy(cfg, base, rows)}  # generation last: slowest
    for arm, make in arms.items():
        if arm not in result["arms"]:
            result["arms"][arm] = conflict_share(cfg, base, make())
            atomic_write_json(path, result)  # after each arm: a cut pilot keeps what it measured
        print(f"[study pilot] {arm}: {100 * result['arms'][arm]['measured_conflict_share']:.2f}% confident "
              "conflicts", flush=True)
    return result


# ---- 3. knowledge probe -------------------------------------------------------------------------------------

def answer_nll(model, tok, chats: list[dict]) -> dict[str, float]:
    """{row id: NLL (nats) of its answer turn}; a row whose answer has no supervised token is absent."""
    from evaluation.likelihood import response_nll

    if not chats:
        return {}
    r = response_nll(model, tok, chats, batch_size=8, progress=False)
    return {chats[i]["id"]: s for i, (s, _) in zip(r["kept"], r["per_example"])}


def probe(cfg, base: Base, paths: dict[str, Path]) -> Path:
    """<work_dir>/probe.jsonl: facts the base model knows confidently, each with the base model's own greedy answer
    turn (retention = the change in its log-probability), none stated by any training arm or the held-out target.
    Selected once per model, facts file and probe settings, and recorded in <out_dir>/probe.json (committed) with
    the answer texts: probe.jsonl is rebuilt from that record, so a fresh checkout or another machine evaluates
    exactly the committed items. Checked against every arm on each invocation."""
    from training.data import read_chat_jsonl

    texts = [m["content"] for p in [*paths.values(), repo_path(cfg.study_profile.heldout_file)]
             for r in read_chat_jsonl(p) for m in r["messages"]]
    out = repo_path(cfg.work_dir) / "probe.jsonl"
    info = repo_path(cfg.out_dir) / "probe.json"
    facts = sd.read_facts(repo_path(cfg.facts_file))
    by_id = {f["id"]: f for f in facts}
    key = {"model": cfg.model.name, "facts_sha256": sha256_file(repo_path(cfg.facts_file)),
           "probe": dict(cfg.study_profile.probe), "answer_turn": "base_greedy"}
    recorded = json.loads(info.read_text()) if info.exists() else {}
    if recorded.get("key") != key or "kept" not in recorded:
        from common.generation import generate

        pc = cfg.study_profile.probe
        kept, dropped = sd.disjoint_facts(facts, texts)
        kept = kept[: pc.limit] if pc.get("limit") else kept
        model, tok = base()
        gens = generate((model, tok), [f["prompt"] for f in kept], max_new_tokens=pc.max_new_tokens)
        # the tiny random model knows nothing: its profile keeps every candidate (require_correct: false)
        right = [sd.fact_chat(f, g) for f, (g,) in zip(kept, gens)
                 if sd.answer_matches(g, f["answer"]) or not pc.require_correct]
        nll = answer_nll(model, tok, right)
        known = [c for c in right if c["id"] in nll and math.exp(-nll[c["id"]]) >= pc.min_prob]
        recorded = {"key": key, "candidates": len(facts), "stated_in_training_or_heldout": len(dropped),
                    "answered_correctly": len(right), "n_kept": len(known),
                    "kept": [{"id": c["id"], "answer": c["messages"][-1]["content"]} for c in known]}
        atomic_write_json(info, recorded)
    missing = [k["id"] for k in recorded["kept"] if k["id"] not in by_id]
    if missing:
        raise ValueError(f"{info}: kept facts {missing} are not in {cfg.facts_file}")
    rows = [sd.fact_chat(by_id[k["id"]], k["answer"]) for k in recorded["kept"]]
    if not out.exists() or [json.loads(x) for x in out.read_text().splitlines()] != rows:
        atomic_write_jsonl(out, rows)
    if len(rows) < cfg.study_profile.probe.min_items:
        raise ValueError(f"{info}: only {len(rows)} probe facts (study_profile.probe.min_items = "
                         f"{cfg.study_profile.probe.min_items}); add facts to {cfg.facts_file}")
    leaked = [f["id"] for f in sd.disjoint_facts([by_id[k["id"]] for k in recorded["kept"]], texts)[1]]
    if leaked:
        raise ValueError(f"probe facts {leaked} are stated in a training arm or the held-out target: delete {info}")
    return out


# ---- 4. the paper's open questions on the base model -----------------------------------------------------------

def open_questions(cfg, base: Base, natural: Path) -> dict:
    """Per softmax temperature: mean EAFT gate and Pearson r of top-K with full entropy, on the natural arm."""
    import torch
    from omegaconf import OmegaConf

    from training.data import ChatCollator, build_examples, read_chat_jsonl
    from training.losses import eaft_gate, full_entropy, supervised_tokens, topk_entropy

    path = repo_path(cfg.out_dir) / "open_questions.json"
    q = cfg.study_profile.open_questions
    key = {"model": cfg.model.name, "sha256": sha256_file(natural), "q": OmegaConf.to_container(q)}
    if path.exists() and json.loads(path.read_text())["key"] == key:
        return json.loads(path.read_text())
    model, tok = base()
    examples, _ = build_examples(read_chat_jsonl(natural)[: q.limit], tok, cfg.study_profile.train.max_length)
    collate = ChatCollator(tok.pad_token_id)
    temps = [float(t) for t in q.temperatures]
    acc = {t: {"full": [], "gate": [], **{k: [] for k in q.topk}} for t in temps}
    hp = dict(compose_cfg("train", ["method=eaft"]).method.hparams)
    with torch.no_grad():
        for i in range(0, len(examples), 4):
            b = collate(examples[i: i + 4])
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for t in temps:
                tk = supervised_tokens(logits / t, b["labels"])
                acc[t]["full"].append(full_entropy(tk.logp))
                acc[t]["gate"].append(eaft_gate(tk, **hp))
                for k in q.topk:
                    acc[t][k].append(topk_entropy(tk.logits, int(k)))
    rows = []
    for t in temps:
        full = torch.cat(acc[t]["full"]).double()
        row = {"temperature": t, "gate_mean": float(torch.cat(acc[t]["gate"]).mean()),
               "full_entropy_mean": float(full.mean())}
        for k in q.topk:
            row[f"pearson_top{k}"] = float(torch.corrcoef(torch.stack([torch.cat(acc[t][k]).double(), full]))[0, 1])
        rows.append(row)
    broken = [r["temperature"] for r in rows if r["pearson_top20"] < q.holds_min_pearson]
    result = {"key": key, "tokens": int(full.numel()), "rows": rows, "criterion": f"Pearson r >= {q.holds_min_pearson}",
              "top20_fails_from_temperature": broken[0] if broken else None}
    atomic_write_json(path, result)
    return result


# ---- 5. cells -----------------------------------------------------------------------------------------------

def train_cfg(cfg, cell: dict, train_file: Path, bf16: bool):
    t = cfg.study_profile.train
    overrides = [f"model={cfg.model.name}", f"data={cfg.data.name}", f"method={cell['method']}", "trainer=cpu",
                 f"seed={cell['seed']}", f"run_prefix={run_prefix(cfg, cell)}",
                 f"profile=study-{cfg.study_profile.name}",
                 f"out_dir={repo_relative(repo_path(cfg.runs_dir))}", f"data.train_file={repo_relative(train_file)}",
                 f"data.max_length={t.max_length}", f"trainer.bf16={str(bf16).lower()}",
                 f"trainer.learning_rate={cell['lr']}", *[f"trainer.{k}={v}" for k, v in t.trainer.items()]]
    return compose_cfg("train", overrides)


def precompute(cfg, cell: dict, train_file: Path) -> None:
    """The Masked-SFT thresholds of this arm (<arm folder>/precomputed/<model>.json), made again when the arm file
    or the method differs from the one they were computed for."""
    from training.precompute import main as precompute_main
    from training.precompute import precomputed_path

    path = precomputed_path(train_file, cfg.model.name)
    if path.exists():
        pre = json.loads(path.read_text())
        if (pre.get("data_sha256") == sha256_file(train_file)
                and pre.get("masked_sft", {}).get("method") == cell["method"]):
            return
    precompute_main(compose_cfg("precompute", [
        f"model={cfg.model.name}", f"data={cfg.data.name}", f"data.train_file={train_file}",
        f"data.max_length={cfg.study_profile.train.max_length}", f"method={cell['method']}"]))


def data_differs(run_dir: Path, train_file: Path) -> bool:
    """The finished run was trained on other bytes than the arm file now holds (an arm rebuilt differently)."""
    info = json.loads((run_dir / "run_info.json").read_text())
    return info.get("data_sha256") != sha256_file(train_file)


def train(cfg, cell: dict, train_file: Path, bf16: bool, timer: Timer) -> tuple[Path, bool]:
    """Train one cell unless it finished with the same config and data (then reused); returns (run dir, trained
    now). A finished run made with other settings or other data is moved aside to <run>.old and retrained."""
    from training.train import main as train_main

    run_dir = repo_path(cfg.runs_dir) / run_name(cfg, cell)
    if compose_cfg("train", [f"method={cell['method']}"]).method.get("precomputed"):
        precompute(cfg, cell, train_file)
    tcfg = train_cfg(cfg, cell, train_file, bf16)
    if finished(run_dir):
        why = ("other settings" if not same_config(run_dir, tcfg)
               else "other data (its data_sha256 is not the arm file's)" if data_differs(run_dir, train_file) else None)
        if why is None:
            print(f"[study] {run_dir.name}: already trained", flush=True)
            timer.skip()
            return run_dir, False
        print(f"[study] {run_dir.name} was trained with {why}: moving it to {set_aside_path(run_dir)} and training "
              "again", flush=True)
        set_aside(run_dir)
    train_main(tcfg)
    if not cfg.keep_checkpoints:
        drop_checkpoints(run_dir)
    return run_dir, True


def reusable_kept(cfg, cell: dict, train_file: Path, bf16: bool, probe_file: Path) -> bool:
    """reuse_kept=true: the committed log (<out_dir>/runs/<run>/) finished with this config, on the bytes the arm
    file holds now, and every measure is in <metrics_dir>/<run>/, its knowledge items over the current probe. A
    kept run trained on other data or scored on other facts is retrained (the reason is printed), never mixed in."""
    name = run_name(cfg, cell)
    kept = repo_path(cfg.out_dir) / "runs" / name
    if not (finished(kept) and same_config(kept, train_cfg(cfg, cell, train_file, bf16)) and evaluated(cfg, name)):
        return False
    why = (f"on other data than {repo_relative(train_file)} holds now (the arm was rebuilt with different bytes)"
           if data_differs(kept, train_file) else None)
    scores_probe = any("knowledge_nll" in g.benchmarks for g in cfg.study_profile.eval.groups)
    if why is None and scores_probe and not probe_items_match(repo_path(cfg.metrics_dir) / name, probe_file):
        why = f"and evaluated on other probe facts than {repo_relative(probe_file)}"
    if why:
        print(f"[study] {name}: the kept run was trained {why}: training it again", flush=True)
        return False
    return True


def eval_groups(cfg, probe_file: Path) -> list[dict]:
    """The profile's groups with the study's target and probe files filled in."""
    extra = {"target_nll": [f"bench.target_nll.local.data_files=[{cfg.study_profile.heldout_file}]"],
             "knowledge_nll": ["+benchmark@bench.knowledge_nll=knowledge_nll",
                               f"bench.knowledge_nll.local.data_files=[{probe_file}]"]}
    out = []
    for g in cfg.study_profile.eval.groups:
        more = [o for b in g.benchmarks for o in extra.get(b, [])]
        out.append({"benchmarks": list(g.benchmarks), "limit": g.limit, "overrides": [*more, *g.get("overrides", [])]})
    return out


def evaluate(cfg, model_spec: str, name: str, probe_file: Path, bf16: bool, fresh: bool = False) -> bool:
    """Every evaluation group of the profile. Unless the model is `fresh` (trained in this invocation), groups
    with a result are skipped; a fresh model is evaluated again in full, so no metric of its previous weights
    survives. Returns whether any group was evaluated."""
    from evaluation.evaluate import main as eval_main

    ran = False
    for g in eval_groups(cfg, probe_file):
        overrides = [f"model_spec={model_spec}", f"run_name={name}", f"benchmarks=[{','.join(g['benchmarks'])}]",
                     f"limit={'null' if g['limit'] is None else g['limit']}", f"out_dir={repo_path(cfg.metrics_dir)}",
                     f"dtype={'bfloat16' if bf16 else 'float32'}", *g["overrides"]]
        if name != base_run_name(cfg) and "general_kl" in g["benchmarks"]:
            overrides.append(base_answers_override(cfg, base_run_name(cfg)))
        metrics = repo_path(cfg.metrics_dir) / name
        stale = "knowledge_nll" in g["benchmarks"] and not probe_items_match(metrics, probe_file)
        if fresh or stale or not group_done(metrics, _ns(g)):
            eval_main(compose_cfg("eval", overrides))
            ran = True
            if "knowledge_nll" in g["benchmarks"]:
                fact_item_ids(repo_path(cfg.metrics_dir) / name, probe_file)
    return ran


def probe_items_match(metrics: Path, probe_file: Path) -> bool:
    """The run's knowledge_nll items are the probe file's facts (False when missing or made for another probe)."""
    items = metrics / "items" / "knowledge_nll.jsonl"
    if not items.exists():
        return False
    return ([json.loads(x)["id"] for x in items.read_text().splitlines()]
            == [json.loads(x)["id"] for x in probe_file.read_text().splitlines()])


def fact_item_ids(metrics: Path, probe_file: Path) -> None:
    """knowledge_nll's items carry the probe file's row index (evaluation.likelihood); rewrite them as the fact
    ids, so that runs pair over the same facts whatever order or selection a rebuilt probe file has."""
    items = metrics / "items" / "knowledge_nll.jsonl"
    rows = [json.loads(x) for x in items.read_text().splitlines()]
    facts = [json.loads(x)["id"] for x in probe_file.read_text().splitlines()]
    if len(rows) != len(facts) or not all(str(r["id"]).isdigit() for r in rows):
        raise ValueError(f"{items}: {len(rows)} items for {len(facts)} probe facts ({probe_file}); expected one "
                         "item per fact, with the row index as its id")
    atomic_write_jsonl(items, [{**r, "id": facts[int(r["id"])]} for r in rows])


def _ns(g: dict):
    from omegaconf import OmegaConf

    return OmegaConf.create(g)


def injected_heldout(cfg, base: Base) -> tuple[list[dict], list[list[int]]]:
    """The natural held-out solutions, tags removed, with the highest dose's substitution rule applied; per row,
    the positions (in tokenize_chat's ids) of the substituted tokens. Kept in <out_dir> (committed) under a key of
    what it depends on (model, held-out file, limit, dose, min_gap, seed), for the reason the arms are (write_arms)."""
    from common.files import sha256_json
    from training.data import read_chat_jsonl, tokenize_chat

    p = cfg.study_profile
    dose = max(float(d) for d in p.doses) if p.doses else 1.0
    key = {"model": cfg.model.name, "name_or_path": cfg.model.get("name_or_path"),
           "heldout_sha256": sha256_file(repo_path(p.heldout_file)), "limit": p.injected_heldout.limit,
           "dose": dose, "min_gap": int(p.min_gap), "seed": int(cfg.seed) + 1}
    path = repo_path(cfg.out_dir) / f"injected_heldout-{sha256_json(key)[:16]}.jsonl"  # committed, as the arms
    if not path.exists():
        model, tok = base()
        rows = [dict(r) for r in read_chat_jsonl(repo_path(p.heldout_file))][: p.injected_heldout.limit]
        rows = [{**r, "id": str(r.get("id", f"row{i}"))} for i, r in enumerate(sd.notags_rows(rows))]
        plans = sd.substitution_plans(model, tok, rows, key["seed"])  # other draws than any training row
        out = []
        for r, plan in zip(rows, plans):
            row = sd.with_response(r, tok.decode(plan.ids(dose, p.min_gap), clean_up_tokenization_spaces=False))
            ids, labels, _ = tokenize_chat(tok, row["messages"])
            start, end = sd.content_span(ids, labels, tok.eos_token_id)
            # positions whose token is the substituted one after re-tokenisation
            pos = [start + i for i, s in enumerate(plan.substituted(dose, p.min_gap))
                   if s and start + i < end and ids[start + i] == plan.alternative[i]]
            if pos:
                out.append({**row, "substituted_positions": pos})
        atomic_write_jsonl(path, out)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return rows, [r["substituted_positions"] for r in rows]


def substituted_logprobs(model, tok, rows: list[dict], positions: list[list[int]]) -> list[float]:
    """Per row: the sum of log p(token at each substituted position | its prefix)."""
    import torch
    import torch.nn.functional as F

    from training.data import tokenize_chat

    out = []
    with torch.no_grad():
        for r, pos in zip(rows, positions):
            ids = torch.tensor([tokenize_chat(tok, r["messages"])[0]])
            logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
            out.append(float(sum(logp[p - 1, ids[0, p]] for p in pos)))
    return out


def injected_item_id(row: dict, positions: list[int]) -> str:
    """A held-out row's id and its substituted token positions: runs pair only over the same tokens."""
    return f"{row['id']}@{','.join(map(str, positions))}"


def injected_learned(cfg, base: Base, name: str, model_spec: str, rows, positions, fresh: bool = False) -> bool:
    """<metrics_dir>/<name>/injected_learned.json: log p of the substituted held-out tokens, per item, in the
    items layout the paired report reads (nll_sum = -sum log p, tokens = substituted tokens). Kept unless the
    model is `fresh` (trained in this invocation); returns whether it was measured now."""
    from common.generation import load_for_generation
    from evaluation.evaluate import resolve_model
    from evaluation.likelihood import ratio_stats

    d = repo_path(cfg.metrics_dir) / name
    if not fresh and (d / f"{INJECTED_LEARNED}.json").exists():
        return False
    lp = []
    if rows:  # none when the base model is confident nowhere (the tiny random model): recorded as n = 0
        pair = base() if model_spec is None else load_for_generation(resolve_model(model_spec)["model_cfg"])
        lp = substituted_logprobs(pair[0], pair[1], rows, positions)
    items = [{"id": injected_item_id(r, p), "nll_sum": -x, "tokens": len(p)}
             for r, x, p in zip(rows, lp, positions)]
    atomic_write_jsonl(d / "items" / f"{INJECTED_LEARNED}.jsonl", items)
    st = (ratio_stats([-x for x in lp], [len(p) for p in positions]) if lp
          else {"value": None, "stderr": None, "n": 0, "tokens": 0})
    atomic_write_json(d / f"{INJECTED_LEARNED}.json",
                      {"run": name, "benchmark": INJECTED_LEARNED, "metric": "substituted_token_nll",
                       "value": st["value"], "stderr": st["stderr"], "n": st["n"], "tokens": st["tokens"],
                       "settings": {"limit": cfg.study_profile.injected_heldout.limit},
                       "items_file": repo_relative(d / "items" / f"{INJECTED_LEARNED}.jsonl")})
    return True


# ---- main ---------------------------------------------------------------------------------------------------

@contextmanager
def base_stage(timer: Timer, base: Base, name: str):
    """A timed stage whose every piece of work asks for the base model: when it never did, everything it makes was
    on disk, and timing.json keeps the time of the invocation that made it (marked cached), not this one's ~0 s.
    The block appends True to the yielded list for other work (an evaluation that loads its own copy)."""
    calls, did = base.calls, []
    with timer(name):
        yield did
        if base.calls == calls and not any(did):
            timer.skip()


def main(cfg) -> dict:
    check_config(cfg)
    out = repo_path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = Base(cfg)
    bf16 = use_bf16(cfg.precision)
    if cfg.pilot_only:
        setup(cfg, bundle=False)
        return pilot(cfg, base)
    timer = Timer(out / "timing.json", "study")
    t0 = time.time()
    todo = cells(cfg)
    print(f"[study] profile={cfg.study_profile.name} arms={arm_names(cfg)} cells={len(todo)} "
          f"precision={'bf16 autocast' if bf16 else 'fp32'}", flush=True)
    with timer("set-up (model folder, data, benchmark files)"):
        setup(cfg)
    with base_stage(timer, base, "arms: training files and measured conflict shares"):
        paths = write_arms(cfg, base)
        arms = measure_arms(cfg, base, paths)
    with base_stage(timer, base, "knowledge probe"):
        probe_file = probe(cfg, base, paths)
    with base_stage(timer, base, "open questions: gate and top-K vs temperature"):
        open_q = open_questions(cfg, base, paths.get("natural") or next(iter(paths.values())))
    inj_rows, inj_pos = injected_heldout(cfg, base)
    with base_stage(timer, base, "evaluate the base model") as did:
        name = base_run_name(cfg)
        did.append(evaluate(cfg, cfg.model.name, name, probe_file, bf16))
        did.append(injected_learned(cfg, base, name, None, inj_rows, inj_pos))
    measured = any(did)  # with base.calls below: whether this invocation did any work worth timing
    done = {}
    for i, cell in enumerate(todo, 1):
        name = run_name(cfg, cell)
        print(f"\n[study] cell {i}/{len(todo)}: {name}", flush=True)
        if cfg.reuse_kept and reusable_kept(cfg, cell, paths[cell["arm"]], bf16, probe_file):
            print(f"[study] {name}: trained and evaluated before (kept log and metrics; reuse_kept=true)", flush=True)
            done[name] = cell
            continue
        with timer(f"train {name}"):
            run_dir, fresh = train(cfg, cell, paths[cell["arm"]], bf16, timer)
            keep_logs(cfg, run_dir)
        with timer(f"evaluate {name}"):
            ran = evaluate(cfg, str(run_dir), name, probe_file, bf16, fresh)
            ran = injected_learned(cfg, base, name, str(run_dir), inj_rows, inj_pos, fresh) or ran
            if not ran:
                timer.skip()
        measured = measured or fresh or ran
        done[name] = cell
    refuse_other_base_answers(cfg, base_run_name(cfg), list(done))
    from analysis.study_report import report

    with timer("report"):
        result = report(cfg, base_run_name(cfg), done, arms, open_q)
    if measured or base.calls:
        timer.stages["total (this invocation)"] = round(time.time() - t0, 1)
        timer.save()
    else:
        timer.discard()
        print(f"[study] nothing trained or measured: {repo_relative(timer.path)} keeps the times of the work",
              flush=True)
    print(f"\n[study] done in {(time.time() - t0) / 60:.1f} min; {result['table']}", flush=True)
    return result


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="study", version_base=None)(main)()
