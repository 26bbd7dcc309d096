"""The conflict study's data arms: the same math-mini prompts with responses that differ in one thing, how many
confident conflicts (low entropy, low probability under the base model) they hold.

    python -m analysis.study study_profile=quick          # builds the arms it needs (analysis/study.py)
    python -m analysis.study study_profile=full pilot_only=true   # the data-only dose pilot

Arms (every arm has the same rows, in the same order, and about the same number of supervised tokens):
    on_policy        the base model's own greedy answer to each prompt, at most as many tokens as the reference
    natural_notags   the reference solution with GSM8K's calculator annotations `<<48/2=24>>` removed
    natural          the reference solution as the demo trains on it
    injected_d<dose> natural_notags with confident-token substitution at rate `dose` (below)
    control          natural_notags with as many substitutions per row as the highest injected arm, at positions
                     where the model is unsure (control_positions): as much corrupted text, few confident conflicts

Confident-token substitution. One teacher-forced pass of the base model over each natural_notags response gives,
at every response token y_t, the full-vocabulary entropy H_t and the model's two most likely tokens. A position
is eligible when the model is confident and agrees with the data (H_t < 0.5 nats, the audit's threshold, and y_t
is its top-1) and its rank-2 token is an ordinary token. Each eligible position draws one uniform number u_t from
an RNG seeded by (study seed, row index); it is replaced by the rank-2 token when u_t < dose. The same u_t serve
every dose. With `min_gap` = g > 0 a token is replaced only when at least g tokens separate it from the previous
replacement: replacements packed together change the context the model's confidence was measured in, and the
measured share then saturates (PREREGISTRATION.md, Sec. 6). With g = 0 a higher dose substitutes a superset of a
lower one's positions. All decisions come from that one pass on the original context; the response is rebuilt by decoding the substituted ids (one token for one token:
the length is kept up to re-tokenisation). The substituted token has low probability at a low-entropy position:
a confident conflict by the paper's Sec. 3 definition.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from eaft_loss.losses import CONFLICT_MAX_ENTROPY, full_entropy
from tqdm import tqdm

from training.data import IGNORE_INDEX, ChatCollator, tokenize_chat

CALCULATOR_TAG = re.compile(r"<<[^<>]*>>")


def strip_calculator_tags(text: str) -> str:
    """GSM8K's `<<a*b=c>>` annotations removed (the result after them stays: `= <<2*3=6>>6` -> `= 6`)."""
    return CALCULATOR_TAG.sub("", text)


def response(row: dict) -> str:
    return row["messages"][-1]["content"]


def with_response(row: dict, text: str) -> dict:
    """A copy of `row` whose last (assistant) turn says `text`."""
    if row["messages"][-1]["role"] != "assistant":
        raise ValueError(f"row {row.get('id')!r}: the last message must be the assistant's answer")
    out = copy.deepcopy(dict(row))
    out["messages"][-1]["content"] = text
    return out


def notags_rows(rows: list[dict]) -> list[dict]:
    return [with_response(r, strip_calculator_tags(response(r))) for r in rows]


def content_span(ids: list[int], labels: list[int], eos_id: int) -> tuple[int, int]:
    """[start, end) of the answer's own tokens in `ids`: the supervised positions before the end-of-turn token
    (the template's eos and what follows it are never substituted)."""
    sup = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    if not sup:
        raise ValueError("no supervised token")
    end = next((i for i in sup if ids[i] == eos_id), sup[-1] + 1)
    return sup[0], end


@torch.no_grad()
def eligible_positions(logits: torch.Tensor, targets: torch.Tensor, banned: set[int] = frozenset(),
                       max_entropy: float = CONFLICT_MAX_ENTROPY) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V) predicting targets (N,) -> (eligible (N,) bool, rank-2 token ids (N,)).

    Eligible: full entropy < max_entropy, the target is the top-1 token, and the rank-2 token is not in `banned`
    (special tokens)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    top2 = logp.topk(2, dim=-1).indices  # (N, 2)
    ok = (full_entropy(logp) < max_entropy) & (top2[:, 0] == targets)
    if banned:
        ok &= ~torch.isin(top2[:, 1], torch.tensor(sorted(banned), device=top2.device))
    return ok, top2[:, 1]


def uniforms(seed: int, index: int, n: int) -> np.ndarray:
    """The n uniform draws of row `index`: the same on every machine and for every dose."""
    return np.random.default_rng([seed, index]).random(n)


CONTROL_MIN_ENTROPY = 1.0   # nats: a control position is one where the model is unsure (PREREGISTRATION-v2.md)
CONTROL_MAX_PROB = 0.05     # the control's replacement: the most likely token below this probability


@torch.no_grad()
def control_positions(logits: torch.Tensor, targets: torch.Tensor, banned: set[int] = frozenset(),
                      min_entropy: float = CONTROL_MIN_ENTROPY, max_prob: float = CONTROL_MAX_PROB,
                      search: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V) predicting targets (N,) -> (eligible (N,) bool, alternative ids (N,)) for the control arm.

    Eligible: full entropy >= min_entropy and the target is the top-1 token (as the injected arms', but where the
    model is NOT confident), and among the `search` most likely tokens there is an ordinary one (not in `banned`)
    with probability below max_prob; the alternative is the most likely such token. Replacing it puts a
    low-probability token at a high-entropy position: corrupted text, but not a confident conflict."""
    logp = F.log_softmax(logits.float(), dim=-1)
    top = logp.topk(min(search, logp.shape[-1]), dim=-1)  # (N, search), descending
    low = top.values.exp() < max_prob
    if banned:
        low &= ~torch.isin(top.indices, torch.tensor(sorted(banned), device=top.indices.device))
    low[:, 0] = False
    has = low.any(-1)
    first = low.float().argmax(-1)  # the first (most likely) qualifying rank
    alt = top.indices.gather(-1, first[:, None]).squeeze(-1)
    ok = (full_entropy(logp) >= min_entropy) & (top.indices[:, 0] == targets) & has
    return ok, alt


@dataclass
class Plan:
    """One row's substitution plan from the single teacher-forced pass: its answer's token ids, and per token
    whether it is eligible, the rank-2 alternative and the uniform draw; and the control arm's eligibility and
    alternative at every token (control_positions)."""

    content_ids: list[int]
    eligible: list[bool]
    alternative: list[int]
    u: list[float]
    control_eligible: list[bool] | None = None
    control_alternative: list[int] | None = None

    def control_substituted(self, count: int, min_gap: int = 0) -> list[bool]:
        """`count` control positions (fewer when the row has fewer): control-eligible tokens in the order of their
        uniform draws, each at least `min_gap` tokens from every one taken before."""
        out = [False] * len(self.content_ids)
        taken: list[int] = []
        for i in sorted(range(len(out)), key=lambda k: self.u[k]):
            if len(taken) == count:
                break
            if self.control_eligible[i] and all(abs(i - j) > min_gap for j in taken):
                out[i] = True
                taken.append(i)
        return out

    def control_ids(self, count: int, min_gap: int = 0) -> list[int]:
        sub = self.control_substituted(count, min_gap)
        return [a if s else t for t, a, s in zip(self.content_ids, self.control_alternative, sub)]

    def substituted(self, dose: float, min_gap: int = 0) -> list[bool]:
        """Which tokens are replaced: eligible, u < dose, and at least `min_gap` unreplaced tokens after the
        previous replacement (min_gap > 0 keeps each conflict's context as the base model saw it)."""
        out, last = [], -(min_gap + 1)
        for i, (e, u) in enumerate(zip(self.eligible, self.u)):
            out.append(bool(e and u < dose and i - last > min_gap))
            last = i if out[-1] else last
        return out

    def ids(self, dose: float, min_gap: int = 0) -> list[int]:
        sub = self.substituted(dose, min_gap)
        return [a if s else t for t, a, s in zip(self.content_ids, self.alternative, sub)]


@torch.no_grad()
def substitution_plans(model, tokenizer, rows: list[dict], seed: int, batch_size: int = 4,
                       progress: bool = True) -> list[Plan]:
    """One teacher-forced pass of `model` over every row's last assistant turn -> one Plan per row."""
    device = next(model.parameters()).device
    banned = set(tokenizer.all_special_ids)
    enc = []
    for r in rows:
        ids, labels, _ = tokenize_chat(tokenizer, r["messages"], r.get("tools"))
        enc.append((ids, labels, content_span(ids, labels, tokenizer.eos_token_id)))
    collate = ChatCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    plans: list[Plan] = []
    model.eval()
    for s in tqdm(range(0, len(enc), batch_size), desc="substitution pass", disable=not progress):
        part = enc[s: s + batch_size]
        batch = collate([{"input_ids": i, "labels": lab} for i, lab, _ in part])
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits  # (B, T, V)
        for b, (ids, _, (start, end)) in enumerate(part):
            pred = logits[b, start - 1: end - 1]  # (n, V): position t - 1 predicts token t
            target = torch.tensor(ids[start:end], device=pred.device)
            ok, alt = eligible_positions(pred, target, banned)
            c_ok, c_alt = control_positions(pred, target, banned)
            plans.append(Plan(ids[start:end], ok.tolist(), alt.tolist(), uniforms(seed, s + b, end - start).tolist(),
                              c_ok.tolist(), c_alt.tolist()))
    return plans


def injected_rows(rows: list[dict], plans: list[Plan], tokenizer, dose: float,
                  min_gap: int = 0) -> tuple[list[dict], dict]:
    """The rows with each plan applied at `dose` (and `min_gap`); counts of eligible and substituted tokens."""
    if not 0.0 <= dose <= 1.0:
        raise ValueError(f"dose must be in [0, 1], got {dose}")
    out, counts = [], {"tokens": 0, "eligible": 0, "substituted": 0}
    for row, plan in zip(rows, plans, strict=True):
        sub = plan.substituted(dose, min_gap)
        counts["tokens"] += len(plan.content_ids)
        counts["eligible"] += sum(plan.eligible)
        counts["substituted"] += sum(sub)
        text = tokenizer.decode(plan.ids(dose, min_gap), clean_up_tokenization_spaces=False) if any(sub) else response(row)
        out.append(with_response(row, text))
    return out, counts


def control_rows(rows: list[dict], plans: list[Plan], tokenizer, dose: float,
                 min_gap: int = 0) -> tuple[list[dict], dict]:
    """The control arm: in every row, as many substitutions as the injected arm at `dose` makes in it, at control
    positions (control_positions); counts of substitutions wanted, made, and control-eligible tokens, in all and
    (`per_row`: wanted, made) row by row."""
    out, counts = [], {"tokens": 0, "control_eligible": 0, "wanted": 0, "substituted": 0, "per_row": []}
    for row, plan in zip(rows, plans, strict=True):
        want = sum(plan.substituted(dose, min_gap))
        sub = plan.control_substituted(want, min_gap)
        counts["tokens"] += len(plan.content_ids)
        counts["control_eligible"] += sum(plan.control_eligible)
        counts["wanted"] += want
        counts["substituted"] += sum(sub)
        counts["per_row"].append((want, sum(sub)))
        text = (tokenizer.decode(plan.control_ids(want, min_gap), clean_up_tokenization_spaces=False) if any(sub)
                else response(row))
        out.append(with_response(row, text))
    return out, counts


def reference_lengths(tokenizer, rows: list[dict]) -> list[int]:
    """Tokens of each row's answer, in context (what on_policy's max_new_tokens is set to)."""
    out = []
    for r in rows:
        ids, labels, _ = tokenize_chat(tokenizer, r["messages"], r.get("tools"))
        start, end = content_span(ids, labels, tokenizer.eos_token_id)
        out.append(end - start)
    return out


def on_policy_rows(model, tokenizer, rows: list[dict], budgets: list[int], batch_size: int = 8,
                   progress: bool = True) -> list[dict]:
    """The base model's greedy answer to each row's prompt, cut at that row's budget of tokens. A greedy answer
    cut at n tokens is the first n tokens of a longer greedy answer, so one call with the largest budget serves
    every row."""
    from common.generation import generate

    prompts = [r["messages"][:-1] for r in rows]
    outs = generate((model, tokenizer), prompts, max_new_tokens=max(budgets), batch_size=batch_size,
                    progress=progress)
    texts = []
    for (text,), n in zip(outs, budgets):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        texts.append(text if len(ids) <= n else tokenizer.decode(ids[:n], clean_up_tokenization_spaces=False))
    return [with_response(r, t) for r, t in zip(rows, texts)]


ENDED_MARGIN = 8  # tokens: see complete_answers.ended


def complete_answers(model, tokenizer, rows: list[dict], max_new_tokens: int, retries: int = 0,
                     temperature: float = 1.0, batch_size: int = 8, progress: bool = True,
                     keep_unended: bool = False, backend: str = "hf") -> tuple[list[dict], dict]:
    """The base model's complete answer to each row's prompt: greedy, to its own end of turn within
    `max_new_tokens`. A row whose greedy answer does not end within the budget (it loops, or runs on) is sampled
    again at `temperature`, with seeds 1..retries, and takes the first sample that ends; a row none of them ends is
    left out (kept as its greedy text with keep_unended, for the tiny random model of the tests, which never ends).
    Returns (rows, counts: greedy ends, ended by sampling, left out, tokens per answer). `model`: an in-memory
    (model, tokenizer) pair for backend hf, the model's config for backend vllm (which loads it itself)."""
    from common.generation import generate

    def ended(text: str) -> bool:
        """Generation stops at the end-of-turn token, or at the budget. The text comes back decoded, and an answer cut
        at the budget can re-tokenise a token or two shorter than it was generated (four cut answers came back as 767
        of 768 tokens): an answer counts as ended only when it is at least ENDED_MARGIN tokens inside the budget."""
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_new_tokens - ENDED_MARGIN

    prompts = [r["messages"][:-1] for r in rows]
    answers = [o[0] for o in generate(model, prompts, max_new_tokens=max_new_tokens, backend=backend,
                                      batch_size=batch_size, progress=progress)]
    done = [a if ended(a) else None for a in answers]
    greedy = sum(a is not None for a in done)
    for seed in range(1, retries + 1):
        todo = [i for i, a in enumerate(done) if a is None]
        if not todo:
            break
        outs = generate(model, [prompts[i] for i in todo], max_new_tokens=max_new_tokens, backend=backend,
                        temperature=temperature, seed=seed, batch_size=batch_size, progress=progress)
        for i, (text,) in zip(todo, outs):
            done[i] = text if ended(text) else None
    if keep_unended:
        done = [a if a is not None else g for a, g in zip(done, answers)]
    kept = [with_response(r, a) for r, a in zip(rows, done) if a is not None]
    if not kept:
        raise ValueError(f"on_policy: none of {len(rows)} answers ended within {max_new_tokens} tokens "
                         f"(greedy, then {retries} samples); raise study_profile.on_policy.max_new_tokens or retries")
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in done if a is not None]
    return kept, {"rows": len(rows), "greedy_ended": greedy, "sampled_ended": len(kept) - greedy,
                  "left_out": [r.get("id") for r, a in zip(rows, done) if a is None],
                  "answer_tokens": {"mean": sum(lengths) / max(1, len(lengths)), "max": max(lengths, default=0)}}


def dose_arm(dose: float) -> str:
    """injected_d0.15 for dose 0.15: the arm's name carries its nominal dose."""
    return f"injected_d{dose:g}"


# ---- the knowledge probe's candidate facts (analysis/study_facts.jsonl) ------------------------------------

FACT_KEYS = ("id", "subject", "prompt", "answer")


def read_facts(path) -> list[dict]:
    """The candidate facts: JSONL rows {id, kind, subject, prompt, answer}; a bad row is an error naming file:line."""
    from common.files import iter_jsonl

    facts = []
    for lineno, obj, err in iter_jsonl(path):
        missing = err or [k for k in FACT_KEYS if not (isinstance(obj, dict) and isinstance(obj.get(k), str))]
        if missing:
            raise ValueError(f"{path}:{lineno}: {err or f'missing or non-string keys {missing}'}")
        facts.append(obj)
    if not facts:
        raise ValueError(f"{path}: no facts")
    return facts


def sentences(texts: list[str]) -> list[str]:
    return [s.lower() for t in texts for s in re.split(r"(?<=[.!?])\s+|\n+", t) if s.strip()]


def _word(x: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(x.lower()) + r"(?!\w)")


def fact_in(fact: dict, sents: list[str]) -> bool:
    """True when some sentence states the fact: it holds the question itself, or both its subject and its answer
    as whole words ("The capital of France is Paris" does; "Paris has 3 parks" does not)."""
    q = fact["prompt"].lower().removesuffix(" answer with one word.")
    subj, ans = _word(fact["subject"]), _word(fact["answer"])
    return any(q in s or (subj.search(s) and ans.search(s)) for s in sents)


def disjoint_facts(facts: list[dict], texts: list[str]) -> tuple[list[dict], list[dict]]:
    """(facts no text states, facts some text states)."""
    sents = sentences(texts)
    kept, dropped = [], []
    for f in facts:
        (dropped if fact_in(f, sents) else kept).append(f)
    return kept, dropped


def fact_chat(fact: dict, answer: str | None = None) -> dict:
    """A probe item as a chat row, scored like the target (evaluation.likelihood.response_nll): the fact's prompt
    and `answer` (the base model's own answer turn; default the fact's bare answer)."""
    return {"id": fact["id"], "messages": [{"role": "user", "content": fact["prompt"]},
                                           {"role": "assistant", "content": fact["answer"] if answer is None else answer}]}


def answer_matches(generated: str, answer: str) -> bool:
    """The greedy answer gives the fact's answer: it is the answer, or a sentence ending in it ("The capital of
    France is Paris."), case, spacing and final punctuation ignored. Ending in it, not containing it: "The opposite
    of cold is hot." contains the answer to "the opposite of hot" but does not give it."""
    def norm(s: str) -> str:
        return " ".join(s.strip().rstrip(".!\"'").lower().split())

    g, a = norm(generated), norm(answer)
    return bool(a) and (g == a or g.endswith(" " + a))