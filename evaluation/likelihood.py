"""Continuous measures for small models: held-out response NLL, and drift from the base model (KL, NLL).

    from evaluation.likelihood import response_nll, kl_to_base
    r = response_nll(model, tok, [row["messages"] for row in heldout])      # {"value", "n", "stderr", "tokens"}
    d = kl_to_base(tuned, base, tok, ["Who wrote Hamlet?", ...])           # {"kl": {...}, "base_answer_nll": {...}}
    python -m evaluation.evaluate model=runs/<run> suite=forgetting           # both, as benchmarks

Accuracy on 135M-parameter models moves in steps of whole items; these move smoothly, which is what a CPU demo
with a few hundred training steps needs to see forgetting.

- response_nll: mean negative log-likelihood (nats) per supervised token of reference chats, with the exact
  assistant-token mask that training uses (training.data.tokenize_chat). Token-weighted: sum NLL / sum tokens.
- kl_to_base: the base model answers each general-domain prompt greedily; teacher-forcing those answers, the
  per-token KL(tuned || base) = sum_v p_tuned(v) (log p_tuned(v) - log p_base(v)) over the answer tokens, and the
  tuned model's NLL of the base answers. Both are 0 / the base's own NLL for the base model itself.
- marked_token_nll: the NLL of chosen tokens only: each row lists positions (in training.data.tokenize_chat's ids)
  under `positions_field`; the conflict study scores the tokens it substituted (injected_learned).
- answer_nll: the NLL of a row's `answer` only, inside its assistant turn: the tokens of the turn up to the answer
  (a lead-in such as "The capital of France is") are read, not scored (the conflict study's knowledge probe).

stderr: delta-method standard error of a ratio estimator (sum x_i / sum t_i over conversations i), so long
answers weigh more but the uncertainty is over conversations, the independent unit. Tensors: logits (B, T, V).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.files import atomic_write_jsonl, read_jsonl, repo_path, repo_relative
from training.data import IGNORE_INDEX, tokenize_chat


def ratio_stats(x: list[float], t: list[int]) -> dict:
    """value = sum x / sum t, with its delta-method standard error over the n pairs."""
    n, total = len(x), sum(t)
    if n == 0 or total == 0:
        raise ValueError("no supervised tokens to average over")
    r = sum(x) / total
    se = None
    if n >= 2:
        resid = sum((xi - r * ti) ** 2 for xi, ti in zip(x, t))
        se = math.sqrt(resid / (n * (n - 1))) / (total / n)
    return {"value": r, "n": n, "stderr": se, "tokens": total}


def _encode(tokenizer, conversations, max_length: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for conv in conversations:
        msgs, tools = (conv["messages"], conv.get("tools")) if isinstance(conv, dict) else (conv, None)
        ids, labels, _ = tokenize_chat(tokenizer, msgs, tools)
        out.append((ids[:max_length], labels[:max_length]))
    return out


def _batches(encoded, batch_size: int, pad_id: int, device):
    """Right-padded (input_ids, attention_mask, labels) batches, each (B, T)."""
    for s in range(0, len(encoded), batch_size):
        part = encoded[s: s + batch_size]
        width = max(len(ids) for ids, _ in part)
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        lab = torch.full((len(part), width), IGNORE_INDEX, dtype=torch.long)
        att = torch.zeros((len(part), width), dtype=torch.long)
        for r, (i, lb) in enumerate(part):
            ids[r, : len(i)], lab[r, : len(lb)], att[r, : len(i)] = torch.tensor(i), torch.tensor(lb), 1
        yield ids.to(device), att.to(device), lab.to(device)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def response_nll(model, tokenizer, conversations, *, max_length: int = 1024, batch_size: int = 4,
                 progress: bool = True) -> dict:
    """Mean NLL per supervised (assistant) token; conversations are message lists or {messages, tools} rows.
    Returns {value (nats/token), n (conversations), stderr, tokens, per_example: [(nll_sum, tokens)], kept}:
    a conversation with no supervised token after truncation is left out, so per_example[j] belongs to
    conversations[kept[j]]."""
    model.eval()
    device = next(model.parameters()).device
    encoded = _encode(tokenizer, conversations, max_length)
    kept = [i for i, e in enumerate(encoded) if any(x != IGNORE_INDEX for x in e[1][1:])]
    enc = [encoded[i] for i in kept]
    sums, counts = [], []
    for ids, att, lab in tqdm(list(_batches(enc, batch_size, _pad_id(tokenizer), device)), desc="nll",
                              disable=not progress):
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()  # (B, T-1, V)
        target = lab[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
        mask = target != IGNORE_INDEX
        sums += (nll * mask).sum(1).tolist()
        counts += mask.sum(1).tolist()
    out = ratio_stats(sums, counts)
    out["per_example"], out["kept"] = list(zip(sums, counts)), kept
    return out


@torch.no_grad()
def marked_nll(model, tokenizer, conversations, positions: list[list[int]], *, max_length: int = 1024,
               batch_size: int = 4, progress: bool = True) -> list[float]:
    """Per conversation: the summed NLL (nats) of the tokens at `positions` (indices into tokenize_chat's ids; each
    is predicted by the logits one position earlier)."""
    model.eval()
    device = next(model.parameters()).device
    encoded = _encode(tokenizer, conversations, max_length)
    for (ids, _), pos in zip(encoded, positions):
        if any(not 0 < p < len(ids) for p in pos):
            raise ValueError(f"marked positions {pos} fall outside a conversation of {len(ids)} tokens")
    sums = []
    batches = list(_batches(encoded, batch_size, _pad_id(tokenizer), device))
    for b, (ids, att, _) in enumerate(tqdm(batches, desc="marked nll", disable=not progress)):
        logp = F.log_softmax(model(input_ids=ids, attention_mask=att).logits.float(), -1)  # (B, T, V)
        for r in range(ids.shape[0]):
            pos = positions[b * batch_size + r]
            sums.append(-float(sum(logp[r, p - 1, ids[r, p]] for p in pos)))
    return sums


def answer_positions(tokenizer, messages: list[dict], answer: str) -> list[int]:
    """The token positions (in tokenize_chat's ids) of `answer` where the last assistant turn says it: the turn's
    tokens from the first one that overlaps the answer's characters to the last. The tokens before it (a lead-in)
    are context. Raises when the turn does not contain the answer."""
    turn = messages[-1]["content"]
    at = turn.lower().rfind(answer.lower())  # "paris" answers "Paris"
    if at < 0:
        raise ValueError(f"the assistant turn {turn!r} does not contain its answer {answer!r}")
    ids, labels, _ = tokenize_chat(tokenizer, messages)
    sup = [i for i, x in enumerate(labels) if x != IGNORE_INDEX]
    # decode the supervised tokens one by one to find which of them carry the answer's characters
    text, spans = "", []
    for i in sup:
        piece = tokenizer.decode(ids[: i + 1])[len(tokenizer.decode(ids[:i])):]
        spans.append((i, len(text), len(text) + len(piece)))
        text += piece
    start = text.find(turn[:at]) if at else 0
    lo, hi = start + at, start + at + len(answer)
    pos = [i for i, a, b in spans if a < hi and b > lo]
    if not pos:
        raise ValueError(f"no token of the assistant turn {turn!r} carries its answer {answer!r}")
    return pos


@torch.no_grad()
def kl_to_base(model, base_model, tokenizer, prompts, *, base_answers: list[str] | None = None,
               max_new_tokens: int = 128, max_length: int = 1024, batch_size: int = 4, progress: bool = True) -> dict:
    """KL(tuned || base) per token and the tuned model's NLL per token, on the base model's greedy answers.

    prompts: strings (one user turn) or message lists. base_answers: reuse earlier answers (must match prompts).
    Returns {"kl": stats, "base_answer_nll": stats, "base_answers": [...]}, stats as in ratio_stats."""
    from common.generation import generate

    convs = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    if base_answers is None:
        base_answers = [o[0] for o in generate((base_model, tokenizer), convs, max_new_tokens=max_new_tokens,
                                               batch_size=batch_size, progress=progress)]
    if len(base_answers) != len(convs):
        raise ValueError(f"{len(base_answers)} base answers for {len(convs)} prompts")
    full = [c + [{"role": "assistant", "content": a}] for c, a in zip(convs, base_answers)]
    model.eval(), base_model.eval()
    device = next(model.parameters()).device
    kls, nlls, counts = [], [], []
    enc = _encode(tokenizer, full, max_length)
    for ids, att, lab in tqdm(list(_batches(enc, batch_size, _pad_id(tokenizer), device)), desc="kl",
                              disable=not progress):
        logp = F.log_softmax(model(input_ids=ids, attention_mask=att).logits[:, :-1].float(), -1)  # (B, T-1, V)
        logq = F.log_softmax(base_model(input_ids=ids, attention_mask=att).logits[:, :-1].float(), -1)
        target = lab[:, 1:]
        mask = target != IGNORE_INDEX
        kl = (logp.exp() * (logp - logq)).sum(-1)                                                 # (B, T-1)
        nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        kls += (kl * mask).sum(1).tolist()
        nlls += (nll * mask).sum(1).tolist()
        counts += mask.sum(1).tolist()
    return {"kl": ratio_stats(kls, counts), "base_answer_nll": ratio_stats(nlls, counts),
            "base_answers": base_answers, "per_example": list(zip(kls, nlls, counts))}


# ---- as benchmarks (target_nll, general_kl; configs/benchmark/) -------------------------------------------------

def answers_from_file(path, ids: list[int]) -> list[str]:
    """The base answers of items `ids` from a general_kl items file (rows {id, base_answer}, as a base evaluation
    writes them): fixed answer texts, so runs evaluated on different machines pair over the same tokens."""
    if not path.exists():
        raise FileNotFoundError(f"bench.general_kl.base_answers_file: {path} does not exist; point it at a base "
                                "evaluation's items/general_kl.jsonl, or leave it null to generate the answers")
    found = {str(r["id"]): r["base_answer"] for r in read_jsonl(path)}
    missing = [str(i) for i in ids if str(i) not in found]
    if missing:
        raise ValueError(f"bench.general_kl.base_answers_file: {path} has no answer for item(s) {missing[:5]} "
                         f"({len(missing)} of {len(ids)}): it was made with another limit or prompt file")
    return [found[str(i)] for i in ids]


def _prompt_of(row: dict, where: str):
    if isinstance(row.get("messages"), list):
        msgs = [m for m in row["messages"] if m.get("role") != "assistant"]
        return msgs[: max(i for i, m in enumerate(msgs) if m["role"] == "user") + 1]
    if isinstance(row.get("prompt"), str):
        return row["prompt"]
    from evaluation.sources import DataFormatError

    raise DataFormatError(f"{where}: expected `prompt` (string) or `messages` (list) ; keys present: {sorted(row)}")


def run_likelihood(bench: dict, ctx) -> dict:
    """Benchmark wrapper: reads the local file, honours limit, writes per-item rows, returns the result part."""

    from common.files import sha256_file  # content, not path: ./x and /abs/x share one cache
    from evaluation.harness import select_subset
    from evaluation.items import ItemStore, fingerprint
    from evaluation.sources import choose_source, local_files, read_rows

    choose_source(bench)
    path = local_files(bench)[0]
    model, tok = ctx.pair()
    settings = {"measure": bench["measure"], "max_length": bench.get("max_length", 1024), "limit": ctx.limit,
                "subset_seed": ctx.subset_seed, "backend": "hf"}
    if bench["measure"] == "response_nll":
        from training.data import read_chat_jsonl

        rows = read_chat_jsonl(path)
        keep = select_subset(len(rows), ctx.limit, ctx.subset_seed)
        r = response_nll(model, tok, [rows[i] for i in keep], max_length=settings["max_length"],
                         batch_size=ctx.batch_size, progress=ctx.progress)
        # by r["kept"]: a row with no supervised token left after truncation is not scored, and must not shift
        # the ids of the rows after it
        ids = item_ids(bench, rows, keep)
        items = [{"id": ids[j], "nll_sum": s, "tokens": t} for j, (s, t) in zip(r["kept"], r["per_example"])]
        metric, value, stderr, n = "nll_per_token", r["value"], r["stderr"], r["n"]
        metrics = {"nll_per_token": value, "perplexity": math.exp(value), "tokens": r["tokens"]}
    elif bench["measure"] in ("marked_token_nll", "answer_nll"):
        from training.data import read_chat_jsonl

        rows = read_chat_jsonl(path)
        keep = select_subset(len(rows), ctx.limit, ctx.subset_seed)
        if bench["measure"] == "answer_nll":
            pos = [answer_positions(tok, rows[i]["messages"], rows[i]["answer"]) for i in keep]
        else:
            pos = [[int(p) for p in rows[i][bench["positions_field"]]] for i in keep]
        sums = marked_nll(model, tok, [rows[i] for i in keep], pos, max_length=settings["max_length"],
                          batch_size=ctx.batch_size, progress=ctx.progress)
        ids = item_ids(bench, rows, keep)
        items = [{"id": i, "nll_sum": x, "tokens": len(p)} for i, x, p in zip(ids, sums, pos)]
        if not items:
            raise ValueError(f"{path}: no row to score (limit {ctx.limit})")
        st = ratio_stats(sums, [len(p) for p in pos])
        metric, value, stderr, n = ("substituted_token_nll" if bench["measure"] == "marked_token_nll"
                                    else "answer_nll_per_token"), st["value"], st["stderr"], st["n"]
        metrics = {metric: value, "tokens": st["tokens"]}
    elif bench["measure"] == "kl_to_base":
        if not ctx.base_model_cfg:
            raise ValueError("general_kl needs the base model: evaluate a run dir (its config.yaml names it) or "
                             "set base_model=<model config name | path | Hub id>")
        rows = read_rows(path)
        keep = select_subset(len(rows), ctx.limit, ctx.subset_seed)
        prompts = [_prompt_of(rows[i], f"{path}:{i + 1}") for i in keep]
        base_pair = _load_base(ctx)
        settings |= {"max_new_tokens": int(ctx.setting(bench, "max_new_tokens", 128)), "base_model": ctx.base_model_cfg.get(
            "name_or_path"), "base_answers": "greedy"}
        if bench.get("base_answers_file"):
            answers = answers_from_file(repo_path(bench["base_answers_file"]), keep)
            settings["base_answers"] = repo_relative(repo_path(bench["base_answers_file"]))
        else:
            from evaluation.context import model_fingerprint

            # the base model's answers depend on the base model only: cache them for every run compared with it
            cache = ItemStore((ctx.cache_dir or ctx.items_dir) / "general_kl_base_answers.jsonl",
                              fingerprint({"base": model_fingerprint(ctx.base_model_cfg, ctx.seed),
                                           "data": sha256_file(path), "max_new_tokens": settings["max_new_tokens"]}))
            todo = [i for i, k in enumerate(keep) if str(k) not in cache.done]
            if todo:
                from common.generation import generate

                outs = generate(base_pair, [prompts[i] for i in todo], max_new_tokens=settings["max_new_tokens"],
                                batch_size=ctx.batch_size, progress=ctx.progress)
                cache.add([{"id": str(keep[i]), "answer": o[0]} for i, o in zip(todo, outs)])
            answers = [cache.done[str(k)]["answer"] for k in keep]
        r = kl_to_base(model, base_pair[0], tok, prompts, base_answers=answers, max_length=settings["max_length"],
                       batch_size=ctx.batch_size, progress=ctx.progress)
        items = [{"id": str(k), "prompt": p, "base_answer": a, "kl_sum": kl, "nll_sum": nll, "tokens": t}
                 for k, p, a, (kl, nll, t) in zip(keep, prompts, answers, r["per_example"])]
        metric, value, stderr, n = "kl_per_token", r["kl"]["value"], r["kl"]["stderr"], r["kl"]["n"]
        metrics = {"kl_per_token": value, "base_answer_nll": r["base_answer_nll"]["value"],
                   "base_answer_nll_stderr": r["base_answer_nll"]["stderr"], "tokens": r["kl"]["tokens"]}
    else:
        raise ValueError(f"bench.{bench['name']}.measure must be response_nll, kl_to_base, marked_token_nll or "
                         f"answer_nll, got {bench['measure']!r}")
    ctx.items_dir.mkdir(parents=True, exist_ok=True)
    out = ctx.items_dir / f"{bench['name']}.jsonl"
    atomic_write_jsonl(out, items)
    return {"metric": metric, "value": value, "stderr": stderr, "n": n, "n_runs": 1, "settings": settings,
            "data_source": str(path), "metrics": metrics}


def item_ids(bench: dict, rows: list[dict], keep: list[int]) -> list[str]:
    """The item ids a likelihood benchmark writes for rows `keep` of its data file: the row's own id (`id_field`),
    followed by @<positions> for marked tokens (runs pair only over the same tokens), else the row index."""
    field = bench.get("id_field")
    if not field:
        return [str(i) for i in keep]
    missing = [i + 1 for i in keep if field not in rows[i]]
    if missing:
        raise ValueError(f"bench.{bench['name']}: rows {missing[:5]} have no {field!r} (its id_field)")
    if bench["measure"] == "marked_token_nll":
        return [f"{rows[i][field]}@{','.join(str(int(p)) for p in rows[i][bench['positions_field']])}" for i in keep]
    return [str(rows[i][field]) for i in keep]


def _load_base(ctx):
    import torch

    from common.generation import load_for_generation
    from evaluation.context import model_fingerprint

    if model_fingerprint(ctx.base_model_cfg, ctx.seed) == ctx.model_fp():
        return ctx.pair()  # evaluating the base model itself: KL is 0 by construction
    torch.manual_seed(ctx.seed)
    return load_for_generation(ctx.base_model_cfg)
