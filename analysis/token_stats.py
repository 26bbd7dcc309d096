"""Per-token statistics of a model on a chat data set, or on its own samples, stored as parquet.

    python -m analysis.token_stats model=smollm2-135m data=math-mini limit=64
    python -m analysis.token_stats model=smollm2-135m data=math-mini limit=64 rollouts=true

Writes results/token_stats/<model>-<data>[-rollouts].parquet (config: configs/analysis.yaml), one row per
supervised token, so that every token-level figure (1b, 3, 6, 7) and the audit rebuild without the model:

    example        index of the row in the data file
    position       index of the label token in the tokenised sequence
    response_pos   index among the example's supervised tokens
    token_id, token   the label y_t and its decoded text
    prob           p_t = P(y_t | x, y_<t)
    entropy        full-vocabulary entropy H_t (nats)
    entropy_top{K} top-K entropy, `eaft_loss.losses.topk_entropy`, for each K in cfg.topk
    gate           the EAFT gate (H_top20 / 3.0) ** alpha, `eaft_loss.losses.eaft_gate` with the method config
    grad_norm      ||softmax - onehot(y_t)||_2 = sqrt(sum_v p_v^2 - 2 p_t + 1): the norm of dCE_t/dlogits.
                   With the detached gate, EAFT's logit gradient norm is gate * grad_norm (Fig. 3).
    pred_id, pred_prob   the model's top-1 token and its probability (what it expected instead)

Rollouts (rollouts=true): for each row, the conversation up to its last assistant turn is the prompt; the model
samples one answer through `common.generation.generate` (temperature 1 by default: the policy itself), and
the sample is scored exactly like the data, teacher-forced. Token ids are the prompt's (rendered by
`render_prompts`, the one prompt renderer) followed by the re-tokenised sample and the end-of-turn (eos) token;
a sample cut at max_new_tokens gets no eos. Re-tokenising decoded text may differ from the sampled ids where the
tokenizer has several spellings of a string; this is the usual approximation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from eaft_loss.losses import Tokens, eaft_gate, full_entropy, supervised_tokens, topk_entropy
from omegaconf import OmegaConf
from tqdm import tqdm

from common.files import atomic_path, git_sha, repo_relative, sha256_file
from common.models import REPO, load_model, load_tokenizer, resolve
from training.data import IGNORE_INDEX, ChatCollator, build_examples, read_chat_jsonl

META_KEY = b"eaft_token_stats"


@torch.no_grad()
def grad_norm(tok: Tokens) -> torch.Tensor:
    """(N,) ||softmax - onehot(y)||_2, computed as sqrt((1 - p_y)^2 + sum_{v != y} p_v^2).

    Algebraically sqrt(sum p^2 - 2 p_y + 1); this form avoids the cancellation of that one as p_y -> 1."""
    p = tok.logp.detach().exp()  # (N, V)
    p_y = p.gather(-1, tok.targets.unsqueeze(-1)).squeeze(-1)
    others = (p * p).scatter(-1, tok.targets.unsqueeze(-1), 0.0).sum(-1)
    return ((1.0 - p_y) ** 2 + others).sqrt()


@torch.no_grad()
def batch_token_stats(logits: torch.Tensor, labels: torch.Tensor, ks: list[int],
                      gate_hparams: dict) -> dict[str, torch.Tensor]:
    """logits (B, T, V), labels (B, T) -> dict of (N,) tensors, one entry per supervised token."""
    tok = supervised_tokens(logits, labels)
    mask = labels[:, 1:].to(logits.device) != IGNORE_INDEX  # (B, T-1), same order as supervised_tokens
    pred_prob, pred_id = tok.logp.max(-1)
    out = {
        "row_in_batch": tok.rows,
        "position": mask.nonzero()[:, 1] + 1,  # logits at t predict the label at t + 1
        "token_id": tok.targets,
        "prob": tok.prob,
        "entropy": full_entropy(tok.logp),
        "gate": eaft_gate(tok, **gate_hparams),
        "grad_norm": grad_norm(tok),
        "pred_id": pred_id,
        "pred_prob": pred_prob.exp(),
    }
    for k in ks:
        out[f"entropy_top{k}"] = topk_entropy(tok.logits, k)
    return out


@torch.no_grad()
def token_frame(model, tokenizer, examples: list[dict], ks: list[int], gate_hparams: dict,
                batch_size: int = 4, desc: str = "token stats") -> pd.DataFrame:
    """Teacher-forced statistics of every supervised token of `examples` (from `build_examples`)."""
    collate = ChatCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    model.eval()
    parts = []
    # Similar lengths share a batch (less padding); rows are keyed by `example`, so order does not matter.
    examples = sorted(examples, key=lambda e: len(e["input_ids"]))
    for i in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch"):
        chunk = examples[i: i + batch_size]
        batch = collate(chunk)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        stats = {k: v.cpu() for k, v in batch_token_stats(logits, batch["labels"], ks, gate_hparams).items()}
        part = pd.DataFrame({k: v.numpy() for k, v in stats.items()})
        part.insert(0, "example", [chunk[r]["row"] for r in part.pop("row_in_batch")])
        parts.append(part)
    df = pd.concat(parts, ignore_index=True).sort_values(["example", "position"], ignore_index=True)
    df["response_pos"] = df.groupby("example").cumcount()
    vocab = {i: tokenizer.decode([i]) for i in set(df["token_id"]) | set(df["pred_id"])}
    df["token"] = df["token_id"].map(vocab)
    df["pred_token"] = df["pred_id"].map(vocab)
    floats = [c for c in df.columns if df[c].dtype.kind == "f"]
    df[floats] = df[floats].astype("float32")
    return df


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation before its last assistant turn: what the model answers in a rollout."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def rollout_examples(gen_model, tokenizer, rows: list[dict], row_ids: list[int], gen: dict,
                     max_length: int) -> tuple[list[dict], dict]:
    """Sample one answer per row's prompt and build teacher-forcing examples in which only it is supervised."""
    from common.generation import generate, render_prompts

    prompts = [prompt_messages(rows[i]["messages"]) for i in row_ids]
    tools = [rows[i].get("tools") for i in row_ids]
    tools = tools if any(t is not None for t in tools) else None
    step = gen.get("prompts_per_call") or len(prompts)
    outs = []
    for i in range(0, len(prompts), step):
        outs += generate(gen_model, prompts[i: i + step], backend=gen["backend"], max_new_tokens=gen["max_new_tokens"],
                         temperature=gen["temperature"], top_p=gen["top_p"], n=1, seed=gen["seed"] + i,
                         batch_size=gen["batch_size"], tools=tools[i: i + step] if tools else None)
    texts = render_prompts(tokenizer, prompts, tools=tools)
    examples, counts = [], {"rollouts": len(row_ids), "truncated_at_max_new_tokens": 0, "empty": 0}
    for row, text, out in zip(row_ids, texts, outs):
        p_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        g_ids = tokenizer(out[0], add_special_tokens=False)["input_ids"]
        cut = len(g_ids) >= gen["max_new_tokens"]
        counts["truncated_at_max_new_tokens"] += int(cut)
        answer = g_ids + ([] if cut else [tokenizer.eos_token_id])
        ids = (p_ids + answer)[:max_length]
        labels = ([IGNORE_INDEX] * len(p_ids) + answer)[:max_length]
        if all(x == IGNORE_INDEX for x in labels[1:]):
            counts["empty"] += 1
            continue
        examples.append({"input_ids": ids, "labels": labels, "row": row, "text": out[0]})
    counts["kept"] = len(examples)
    return examples, counts


def stats_path(out_dir: str | Path, model: str, data: str, rollouts: bool = False) -> Path:
    out = Path(out_dir)
    out = out if out.is_absolute() else REPO / out
    return out / f"{model}-{data}{'-rollouts' if rollouts else ''}.parquet"


def write_token_stats(df: pd.DataFrame, path: Path, meta: dict) -> Path:
    """Atomic parquet write; `meta` goes into the file's schema metadata (read back by `read_token_stats`)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           META_KEY: json.dumps(meta, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_token_stats(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(frame, metadata) of a file written by this module."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no token statistics; make them with "
                                "`python -m analysis.token_stats model=<model> data=<data>`")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path}: not written by analysis.token_stats (no {META_KEY.decode()} metadata)")
    return table.to_pandas(), json.loads(raw)


def load(cfg) -> dict:
    """Model, tokenizer, the first `limit` rows and their examples: what `compute` scores, loaded once."""
    torch.manual_seed(cfg.seed)  # a from_config (random) model is then the same on every call
    train_file = resolve(cfg.data.train_file)
    rows = read_chat_jsonl(train_file)
    rows = rows[: cfg.limit] if cfg.limit else rows
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tokenizer)
    if torch.cuda.is_available():
        model = model.cuda()
    examples, counts = build_examples(rows, tokenizer, cfg.data.max_length, cfg.data.overlong)
    return {"train_file": train_file, "rows": rows, "tokenizer": tokenizer, "model": model, "examples": examples,
            "counts": counts}


def compute(cfg, rollouts: bool | None = None, loaded: dict | None = None) -> tuple[pd.DataFrame, dict, list[dict]]:
    """Score the data (rollouts=False) or the model's samples on its prompts (True; default cfg.rollouts).
    Returns (frame, metadata, the scored examples)."""
    rollouts = cfg.rollouts if rollouts is None else rollouts
    ld = loaded or load(cfg)
    model, tokenizer, examples, counts = ld["model"], ld["tokenizer"], ld["examples"], dict(ld["counts"])
    gen = OmegaConf.to_container(cfg.generation, resolve=True)
    if rollouts:
        gen_model = (model, tokenizer) if gen["backend"] == "hf" else OmegaConf.to_container(cfg.model)
        examples, counts["rollout"] = rollout_examples(gen_model, tokenizer, ld["rows"], [e["row"] for e in examples],
                                                        gen, cfg.data.max_length)
    ks = sorted(int(k) for k in cfg.topk)
    hparams = dict(cfg.method.hparams)
    df = token_frame(model, tokenizer, examples, ks, hparams, cfg.batch_size,
                     desc="rollout stats" if rollouts else "token stats")
    meta = {"model": cfg.model.name, "model_path": cfg.model.get("name_or_path"), "data": cfg.data.name,
            "data_file": repo_relative(ld["train_file"]), "data_sha256": sha256_file(ld["train_file"]), "rows": len(ld["rows"]),
            "limit": cfg.limit, "counts": counts, "rollouts": bool(rollouts), "generation": gen if rollouts else None,
            "topk": ks, "gate": {"method": cfg.method.name, **hparams}, "vocab_size": len(tokenizer),
            "seed": cfg.seed, "git_sha": git_sha()}
    return df, meta, examples


def main(cfg) -> dict:
    df, meta, _ = compute(cfg)
    path = write_token_stats(df, stats_path(cfg.out_dir, cfg.model.name, cfg.data.name, cfg.rollouts), meta)
    print(f"[token_stats] wrote {path}: {len(df)} tokens from {df['example'].nunique()} examples "
          f"({path.stat().st_size / 1e6:.2f} MB)")
    return {"path": str(path), "tokens": len(df), "examples": int(df["example"].nunique())}


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="analysis", version_base=None)(main)()
