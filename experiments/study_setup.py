"""The conflict study's set-up stages, each cached on disk and committed where a machine could not remake it
bit for bit: the arms, their measured conflict shares, the control's substitution count, the knowledge probe, the
open questions on the base model, the injected held-out rows, and the data-only dose pilot (experiments/study.py
runs them; PREREGISTRATION.md).

    python -m experiments.study study_profile=full pilot_only=true    # the dose pilot alone, no training
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from common.files import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    jsonl_text,
    repo_path,
    repo_relative,
    sha256_file,
)
from experiments import study_data as sd
from experiments.runner import compose_cfg


def cached(path: Path, command: str):
    """A committed stage output, for report_only=true (which makes nothing)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; report_only=true renders what `{command}` made, run it first")
    return json.loads(path.read_text())


def arm_names(cfg) -> list[str]:
    return [*cfg.study_profile.arms, *[sd.dose_arm(float(d)) for d in cfg.study_profile.doses]]


class Base:
    """The base model and tokenizer, loaded on first use (a resumed run that needs no model pass loads none).
    Every call tells the runner that the stage did work (experiments.runner.Runner.worked)."""

    def __init__(self, cfg, worked=lambda: None):
        self.cfg, self._pair, self.worked = cfg, None, worked

    def __call__(self):
        self.worked()
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
    """The base model's answers, cached under a key of the model, the rows' content (so of the data file and
    n_examples) and the generation settings: generated once, reused by every sitting. v1 (no `on_policy` in the
    profile): greedy, cut at each row's reference length. `on_policy: {mode: complete, ...}`: complete answers to
    the model's own end of turn (study_data.complete_answers), with what it took recorded in
    <out_dir>/on_policy.json (committed)."""
    from common.files import sha256_json

    settings = OmegaConf.to_container(cfg.study_profile.on_policy) if cfg.study_profile.get("on_policy") else None
    key = sha256_json([cfg.model.get("name_or_path"), cfg.model.name, rows, *([settings] if settings else [])])[:16]
    cache = repo_path(cfg.runs_dir) / "_study" / "cache" / f"on_policy-{cfg.model.name}-{key}.jsonl"
    if cache.exists():
        return [json.loads(x) for x in cache.read_text().splitlines()]
    model, tok = base()
    if settings is None:
        out = sd.on_policy_rows(model, tok, rows, sd.reference_lengths(tok, rows), batch_size=32)
    elif settings.get("mode") == "complete":
        backend = settings.get("backend", "hf")  # vllm: vLLM's CPU build (.venv-vllm), far faster at 1k tokens
        gen_model = OmegaConf.to_container(cfg.model, resolve=True) if backend == "vllm" else (model, tok)
        out, counts = sd.complete_answers(gen_model, tok, rows, int(settings["max_new_tokens"]),
                                          int(settings.get("retries", 0)), float(settings.get("temperature", 1.0)),
                                          batch_size=int(settings.get("batch_size", 8)),
                                          keep_unended=bool(settings.get("keep_unended", False)), backend=backend)
        atomic_write_json(repo_path(cfg.out_dir) / "on_policy.json", {"settings": settings, **counts})
    else:
        raise ValueError(f"study_profile.on_policy.mode must be `complete` (or no on_policy key), got {settings}")
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
        if "control" in p.arms:  # as many substitutions per row as the highest dose, at unsure positions
            out["control"] = sd.control_rows(notags, plans, tok, max(float(d) for d in p.doses), p.min_gap)[0]
    return {a: out[a] for a in arm_names(cfg)}


def arms_key(cfg) -> dict:
    """What the arm files depend on: a cached arm made with another model, data, row count, seed, gap or dose is
    rebuilt, never reused."""
    p = cfg.study_profile
    key = {"model": cfg.model.name, "name_or_path": cfg.model.get("name_or_path"),
           "data_sha256": sha256_file(repo_path(cfg.data.train_file)), "n_examples": int(p.n_examples),
           "seed": int(cfg.seed), "min_gap": int(p.min_gap), "doses": [float(d) for d in p.doses]}
    if p.get("on_policy"):  # how the on_policy arm is generated, when the profile says (v1 did not: budgets were
        key["on_policy"] = OmegaConf.to_container(p.on_policy)  # the reference lengths)
    if "control" in p.arms:
        key["control"] = {"min_entropy": sd.CONTROL_MIN_ENTROPY, "max_prob": sd.CONTROL_MAX_PROB}
    return key


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


def substitutions(cfg, base: Base) -> dict | None:
    """How many tokens the highest-dose injected arm and the control arm replace, in all and per row, cached in
    <out_dir>/substitutions.json (committed) under the arms' key and the two arm files' sha256; None for a profile
    without a control arm. The control asks for as many as the injected arm makes in each row and gets fewer where
    the row has too few unsure positions at the required gap, so its count is reported, not assumed. Counted from
    the substitution plans of one teacher-forced pass, rebuilt here; `same_as_committed` says whether the rows they
    give are the committed arm files byte for byte (the pass can differ across CPUs: then the counts describe a
    rebuild, not the committed arms, and the file says so)."""
    p = cfg.study_profile
    if "control" not in p.arms or not p.doses:
        return None
    dose = max(float(d) for d in p.doses)
    hi = sd.dose_arm(dose)
    kept_dir, out = repo_path(cfg.out_dir) / "arms", repo_path(cfg.out_dir) / "substitutions.json"
    key = {**arms_key(cfg), "sha256": {a: sha256_file(kept_dir / f"{a}.jsonl") for a in (hi, "control")}}
    if out.exists() and (old := json.loads(out.read_text())).get("key") == key:
        return old
    model, tok = base()
    rows = sd.notags_rows(prompt_rows(cfg))
    plans = sd.substitution_plans(model, tok, rows, cfg.seed)
    injected, _ = sd.injected_rows(rows, plans, tok, dose, p.min_gap)
    control, counts = sd.control_rows(rows, plans, tok, dose, p.min_gap)
    # the control wants exactly what the injected arm makes in the row
    per_row = [{"id": r.get("id"), "injected": want, "control": made}
               for r, (want, made) in zip(rows, counts["per_row"], strict=True)]
    same = all((kept_dir / f"{a}.jsonl").read_text() == jsonl_text(rs)
               for a, rs in ((hi, injected), ("control", control)))
    result = {"key": key, "injected_arm": hi, "injected": sum(r["injected"] for r in per_row),
              "control": counts["substituted"], "control_wanted": counts["wanted"],
              "rows_with_fewer": sum(r["control"] < r["injected"] for r in per_row),
              "same_as_committed": same, "rows": per_row}
    atomic_write_json(out, result)
    return result


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
    result = {"command": f"python -m experiments.study study_profile={cfg.study_profile.name} pilot_only=true",
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

def answer_nll(model, tok, chats: list[dict], answer_only: bool = False) -> dict[str, float]:
    """{row id: NLL (nats) of its answer turn}, or with answer_only of the tokens of its `answer` inside that turn
    (the lead-in before it read as context); a row whose answer has no supervised token is absent."""
    from evaluation.likelihood import answer_positions, marked_nll, response_nll

    if not chats:
        return {}
    if answer_only:
        pos = [answer_positions(tok, c["messages"], c["answer"]) for c in chats]
        return {c["id"]: s for c, s in zip(chats, marked_nll(model, tok, chats, pos, batch_size=8, progress=False))}
    r = response_nll(model, tok, chats, batch_size=8, progress=False)
    return {chats[i]["id"]: s for i, (s, _) in zip(r["kept"], r["per_example"])}


def probe_row(fact: dict, turn: str, answer_only: bool) -> dict:
    """A probe item: the fact's question and `turn` (the base model's own answer); with answer_only the row names
    the fact's answer, which the knowledge_nll benchmark then scores alone (measure answer_nll)."""
    row = sd.fact_chat(fact, turn)
    return {**row, "answer": fact["answer"]} if answer_only else row


def probe(cfg, base: Base, paths: dict[str, Path]) -> Path:
    """<work_dir>/probe.jsonl: facts the base model knows confidently, each with the base model's own greedy answer
    turn (retention = the change in its log-probability: of the whole turn, or with probe.scoring: answer of the
    answer's tokens given the question and the turn's own lead-in), none stated by any training arm or the held-out
    target.
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
    pc = cfg.study_profile.probe
    answer_only = pc.get("scoring", "turn") == "answer"
    key = {"model": cfg.model.name, "facts_sha256": sha256_file(repo_path(cfg.facts_file)),
           "probe": dict(pc), "answer_turn": "base_greedy"}
    recorded = json.loads(info.read_text()) if info.exists() else {}
    if recorded.get("key") != key or "kept" not in recorded:
        from common.generation import generate

        kept, dropped = sd.disjoint_facts(facts, texts)
        kept = kept[: pc.limit] if pc.get("limit") else kept
        model, tok = base()
        gens = generate((model, tok), [f["prompt"] for f in kept], max_new_tokens=pc.max_new_tokens)
        # the tiny random model knows nothing: its profile keeps every candidate (require_correct: false)
        right = [probe_row(f, g, answer_only) for f, (g,) in zip(kept, gens)
                 if sd.answer_matches(g, f["answer"]) or not pc.require_correct]
        if answer_only and not pc.require_correct:  # a random model's turn rarely holds the answer: append it
            right = [r if r["answer"].lower() in r["messages"][-1]["content"].lower()
                     else probe_row(by_id[r["id"]], f"{r['messages'][-1]['content']} {r['answer']}", True)
                     for r in right]
        nll = answer_nll(model, tok, right, answer_only)
        known = [c for c in right if c["id"] in nll and math.exp(-nll[c["id"]]) >= pc.min_prob]
        recorded = {"key": key, "candidates": len(facts), "stated_in_training_or_heldout": len(dropped),
                    "answered_correctly": len(right), "n_kept": len(known),
                    "kept": [{"id": c["id"], "answer": c["messages"][-1]["content"]} for c in known]}
        atomic_write_json(info, recorded)
    missing = [k["id"] for k in recorded["kept"] if k["id"] not in by_id]
    if missing:
        raise ValueError(f"{info}: kept facts {missing} are not in {cfg.facts_file}")
    rows = [probe_row(by_id[k["id"]], k["answer"], answer_only) for k in recorded["kept"]]
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
    from eaft_loss.losses import eaft_gate, full_entropy, supervised_tokens, topk_entropy
    from omegaconf import OmegaConf

    from training.data import ChatCollator, build_examples, read_chat_jsonl

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



# ---- 5. the injected held-out rows ---------------------------------------------------------------------------

def injected_heldout(cfg, base: Base) -> Path:
    """The natural held-out solutions, tags removed, with the highest dose's substitution rule applied; each row
    lists the positions (in tokenize_chat's ids) of its substituted tokens, which the injected_learned benchmark
    scores. Kept in <out_dir> (committed) under a key of what it depends on (model, held-out file, limit, dose,
    min_gap, seed), for the reason the arms are (write_arms); returns its path."""
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
    return path
