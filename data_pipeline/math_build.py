"""Math domains (math, math-mini): prepare -> generate (sharded, resumable) -> finalize.

prepare   read every source through its adapter; dedupe on normalised problem text; draw the prompt pool
          (domain.pool); drop prompts whose gold answer math-verify cannot parse; assign the held-out split.
          -> work/prompts.jsonl, work/prepare.json, work/rejected-prepare.jsonl. Deterministic, so array tasks that
          each run it when it is missing write identical files (the rename makes the race harmless).
generate  the shard's prompts (shard_of(id) == shard) minus those already done: the teacher answers a chunk,
          each response is verified, the chunk is written as one atomic part file (data_pipeline.shards).
finalize  every prompt must have its record (else it names the missing shards); keep verified-correct responses
          (the first `per_prompt` per prompt), drop over-long rows, sample n_train with the seed, write
          train.jsonl / heldout.jsonl / rejected.jsonl / manifest.json. Fewer than n_train rows is an error
          unless allow_short=true.
prepare.json is reused only while the settings hash and every source file's sha256 match (else an error that
names the changed source and says overwrite=true).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from common.files import atomic_write_json, atomic_write_jsonl, read_jsonl, sha256_file, sha256_json
from data_pipeline.adapters import ADAPTERS
from data_pipeline.output import (
    check_not_short,
    drop_overlong,
    split_stats,
    student_tokenizer,
    write_manifest,
    write_rejects,
    write_split,
)
from data_pipeline.records import RejectLog
from data_pipeline.sampling import dedupe, seeded_sample, shard_of, split_heldout
from data_pipeline.shards import ShardStore
from data_pipeline.sources import read_source, source_sha256
from data_pipeline.teacher import Teacher, conversation
from data_pipeline.verify import check, parse_gold

PREPARE_KEYS = ("sources", "pool", "heldout")  # what decides the prompt set (plus the seed)


def prepare_hash(d: dict, seed: int) -> str:
    return sha256_json({"seed": seed, **{k: d.get(k) for k in PREPARE_KEYS}})


def generate_hash(d: dict, seed: int) -> str:
    teacher = {k: v for k, v in d["teacher"].items() if k not in ("chunk_size", "delay_s", "batch_size")}
    return sha256_json({"prepare": prepare_hash(d, seed), "prompt": d["prompt"], "teacher": teacher})


def _pool(records: list[dict], pool: dict, seed: int) -> list[dict]:
    """All records, or a seeded sample: `size` over the union, or `per_source` quotas {source: n}."""
    quotas = pool.get("per_source")
    if quotas:
        out = []
        for src, n in quotas.items():
            out += seeded_sample([r for r in records if r["source"] == src], int(n), seed)
        return out
    return seeded_sample(records, pool.get("size"), seed) if pool.get("size") else records


def prepare(d: dict, seed: int, work: Path) -> dict:
    rejects, infos, records = RejectLog(), [], []
    for spec in d["sources"]:
        recs, info = read_source(spec, ADAPTERS, rejects)
        records += recs
        infos.append(info)
    records = dedupe(records, key=lambda r: r["problem"], rejects=rejects)
    after_dedupe = len(records)
    pool = _pool(records, d.get("pool") or {}, seed)
    kept = []
    for rec in tqdm(pool, desc="parse gold answers", unit="prompt", mininterval=2):
        if parse_gold(rec["answer"]):
            kept.append(rec)
        else:
            rejects.add(rec["id"], rec["source"], "prepare", "gold_unparseable", repr(rec["answer"])[:200])
    _, held = split_heldout(kept, int((d.get("heldout") or {}).get("n", 0)), seed)
    held_ids = {r["id"] for r in held}
    prompts = sorted(({**r, "split": "heldout" if r["id"] in held_ids else "train"} for r in kept),
                     key=lambda r: r["id"])
    atomic_write_jsonl(work / "rejected-prepare.jsonl", rejects.rows)
    atomic_write_jsonl(work / "prompts.jsonl", prompts)
    info = {"hash": prepare_hash(d, seed), "sources": infos, "after_dedupe": after_dedupe, "pool": len(pool),
            "prompts": len(prompts), "heldout": len(held), "rejects": rejects.counts(),
            "prompts_sha256": sha256_file(work / "prompts.jsonl")}
    atomic_write_json(work / "prepare.json", info)  # written last: its presence means prepare finished
    return info


def check_sources_unchanged(d: dict, info: dict, path: Path) -> None:
    """The prompts in work/ stand for the sources' contents, not only their settings: a source file replaced or
    repaired since prepare (same path, other bytes) makes them stale."""
    changed = [f"{i['name']} ({i.get('file') or i.get('path')})" for spec, i in zip(d["sources"], info["sources"])
               if source_sha256(spec) != i.get("sha256")]
    if changed:
        raise RuntimeError(f"{path} was prepared from other contents of {', '.join(changed)} (sha256 differs); "
                           f"pass overwrite=true to rebuild {path.parent} from the current files, or use another "
                           "out_dir")


def ensure_prepared(d: dict, seed: int, work: Path, overwrite: bool = False) -> dict:
    import json

    path = work / "prepare.json"
    if path.exists() and not overwrite:
        info = json.loads(path.read_text())
        if info.get("hash") != prepare_hash(d, seed):
            raise RuntimeError(f"{path} was made from other sources/pool/seed settings; pass overwrite=true to "
                               f"rebuild {work} from scratch, or use another out_dir")
        check_sources_unchanged(d, info, path)
        return info
    return prepare(d, seed, work)


def _verify_record(rec: dict, responses: list[str]) -> list[dict]:
    gold = parse_gold(rec["answer"])
    out = []
    for text in responses:
        verdict, detail = check(gold, text)
        out.append({"text": text, "verdict": verdict, "detail": detail})
    return out


def generate(d: dict, seed: int, work: Path, shard: int | None, num_shards: int) -> dict:
    prompts = read_jsonl(work / "prompts.jsonl")
    store = ShardStore(work / "generate")
    teacher = Teacher(d["teacher"], d["prompt"])
    store.check_settings(generate_hash(d, seed), {"prompt": d["prompt"], "teacher": teacher.describe()})
    shards = range(num_shards) if shard is None else [shard]
    done = store.done_ids()
    stats = {"shards": list(shards), "num_shards": num_shards, "skipped_done": 0, "generated": 0}
    chunk = int(d["teacher"].get("chunk_size", 64))
    for s in shards:
        mine = [p for p in prompts if shard_of(p["id"], num_shards) == s]
        todo = [p for p in mine if p["id"] not in done]
        stats["skipped_done"] += len(mine) - len(todo)
        bar = tqdm(total=len(todo), desc=f"generate shard {s}/{num_shards}", unit="prompt", mininterval=2)
        for i in range(0, len(todo), chunk):
            batch = todo[i: i + chunk]
            responses = teacher.respond(batch)
            recs = [{"id": p["id"], "responses": _verify_record(p, r)} for p, r in zip(batch, responses)]
            store.write_part(s, num_shards, recs)
            stats["generated"] += len(recs)
            bar.update(len(batch))
        bar.close()
        store.mark_done(s, num_shards, {"prompts": len(mine), "teacher": teacher.describe()})
    return stats


def finalize(d: dict, seed: int, work: Path, out_dir: Path, num_shards: int, allow_partial: bool = False,
             allow_short: bool = False) -> dict:
    import json

    prep = json.loads((work / "prepare.json").read_text())
    check_sources_unchanged(d, prep, work / "prepare.json")
    prompts = read_jsonl(work / "prompts.jsonl")
    store = ShardStore(work / "generate")
    gens, duplicates = store.records()
    by_id = {g["id"]: g for g in gens}
    missing = [p for p in prompts if p["id"] not in by_id]
    if missing and not allow_partial:
        shards = sorted({shard_of(p["id"], num_shards) for p in missing})
        raise RuntimeError(f"{len(missing)} of {len(prompts)} prompts have no generation yet (e.g. "
                           f"{missing[0]['id']}); run stage=generate for shards {shards[:20]} of "
                           f"num_shards={num_shards}, or pass allow_partial=true")
    rejects = RejectLog.load(work / "rejected-prepare.jsonl")
    verdicts: dict[str, dict] = {}
    rows = {"train": [], "heldout": []}
    per_prompt = int((d.get("select") or {}).get("per_prompt", 1))
    for p in prompts:
        if p["id"] not in by_id:
            rejects.add(p["id"], p["source"], "generate", "not_generated", "allow_partial=true")
            continue
        responses = by_id[p["id"]]["responses"]
        for r in responses:
            verdicts.setdefault(p["source"], {}).setdefault(r["verdict"], 0)
            verdicts[p["source"]][r["verdict"]] += 1
        correct = [r for r in responses if r["verdict"] == "correct"][:per_prompt]
        if not correct:
            r = responses[0] if responses else {"verdict": "no_response", "detail": ""}
            rejects.add(p["id"], p["source"], "verify", r["verdict"], r.get("detail", ""))
            continue
        for k, r in enumerate(correct):
            rows[p["split"]].append({
                "id": p["id"] if k == 0 else f"{p['id']}#{k}", "source": p["source"],
                "source_ref": p.get("source_ref"), "problem": p["problem"], "answer": p["answer"],
                "messages": conversation(p["problem"], d["prompt"]) + [{"role": "assistant", "content": r["text"]}]})
    tok = student_tokenizer(d["tokenizer"], d.get("chat_template"))
    for name, split_rows in rows.items():
        rows[name] = drop_overlong(split_rows, tok, int(d["max_length"]), rejects, name)
    n_train = (d.get("select") or {}).get("n_train")
    train = seeded_sample(rows["train"], n_train, seed + 1)
    heldout = sorted(rows["heldout"], key=lambda r: r["id"])
    if not allow_short:
        check_not_short(train, n_train, rejects, out_dir)
    if not train:
        raise RuntimeError(f"no verified training row survived (rejections: {rejects.counts()}); see "
                           f"{work / 'generate'} for the teacher's responses and verdicts")
    out = {"train": write_split(out_dir, "train", train)}
    if d.get("heldout", {}).get("n"):
        out["heldout"] = write_split(out_dir, "heldout", heldout)
    sources = {}
    for info in prep["sources"]:
        name = info["name"]
        v = verdicts.get(name, {})
        n_resp = sum(v.values())
        sources[name] = {**info, "prompts": sum(p["source"] == name for p in prompts), "verdicts": v,
                         "pass_rate": round(v.get("correct", 0) / n_resp, 4) if n_resp else None,
                         "train_rows": sum(r["source"] == name for r in train),
                         "heldout_rows": sum(r["source"] == name for r in heldout)}
    all_v = {}
    for v in verdicts.values():
        for k, n in v.items():
            all_v[k] = all_v.get(k, 0) + n
    n_all = sum(all_v.values())
    return {"sources": sources, "outputs": out,
            "counts": {"after_dedupe": prep["after_dedupe"], "pool": prep["pool"], "prompts": len(prompts),
                       "generated": len(gens), "duplicate_generations": duplicates,
                       "correct_candidates_train": len(rows["train"]), "train": len(train),
                       "heldout": len(heldout), "requested_train": n_train,
                       "short_by": max(0, n_train - len(train)) if n_train else 0},
            "verification": {"verdicts": all_v, "pass_rate": round(all_v.get("correct", 0) / n_all, 4) if n_all
                             else None, "method": "math_verify.verify(parse(gold), parse(response))"},
            "token_stats": {"tokenizer": d["tokenizer"], "train": split_stats(train),
                            "heldout": split_stats(heldout)},
            "teacher": Teacher(d["teacher"], d["prompt"]).describe(), "prompt": d["prompt"],
            "inputs": {"prompts_sha256": prep["prompts_sha256"],
                       "sources": {i["name"]: {k: i.get(k) for k in ("sha256", "fingerprint", "records_sha256",
                                                                      "revision")} for i in prep["sources"]}},
            "_rejects": rejects}


def write(d: dict, result: dict, out_dir: Path, manifest_limit: int, extra: dict) -> dict:
    rejects = result.pop("_rejects")
    manifest = {**extra, **result, "rejected": write_rejects(out_dir, rejects, manifest_limit)}
    write_manifest(out_dir, manifest)
    return manifest
