"""Before training: does EAFT suit this data? A confident-conflict audit of a data set under the base model.

    python -m analysis.audit model=smollm2-135m data=math-mini limit=200       (make audit MODEL=... DATA=...)
    python -m analysis.audit model=smollm2-135m data=math-mini rollouts=true   # + the model's own samples
    python -m analysis.audit model=smollm2-135m data=math-mini \
        audit.from_stats=results/token_stats/smollm2-135m-math-mini.parquet       # no model pass (+ its
                                                                                  # -rollouts file if present)

One teacher-forced pass of the model over the data (analysis/token_stats.py), then a report, printed and written
to results/audit/<model>-<data>.{md,json} (configs/analysis.yaml, key `audit`):
- the share of confident-conflict tokens (H < 0.5 nats, p < 0.1; eaft_loss/losses.py) and their share of the
  SFT loss, of EAFT's loss and of the summed logit-gradient norm; the mean EAFT gate;
- entropy (full and top-20), probability and gate quantiles; shares of the high/low-entropy groups;
- the Masked-SFT thresholds (the q-quantiles of H_top20 and p, defined as training/precompute.py does), next to
  the precomputed file's when one exists for this data and model;
- Pearson (and Spearman) correlation of top-20 with full entropy;
- the most conflicting tokens (lowest p among confident conflicts) in context, with what the model expected.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from analysis.summaries import (
    conflict_summary,
    masked_sft_thresholds,
    quantiles,
    region_masks,
    region_shares,
    topk_correlation,
)
from analysis.token_stats import compute, load, read_token_stats
from common.files import atomic_write_text, repo_path, repo_relative, sha256_file
from common.models import load_tokenizer
from training.data import build_examples, read_chat_jsonl
from training.precompute import precomputed_path

QUANTILE_COLUMNS = ["entropy", "entropy_top20", "prob", "gate"]


def visible(text: str) -> str:
    """One line of text: newlines shown as ⏎, table pipes escaped."""
    return text.replace("\r", "").replace("\n", "⏎").replace("|", "\\|")


def conflicts_in_context(df: pd.DataFrame, examples: list[dict], tokenizer, n: int = 15,
                         context: int = 16) -> list[dict]:
    """The n confident conflicts with the lowest p, each with `context` tokens before it and 4 after."""
    by_row = {e["row"]: e for e in examples}
    worst = df[region_masks(df)["confident_conflict"]].nsmallest(n, "prob")
    out = []
    for r in worst.itertuples():
        ids = by_row[r.example]["input_ids"]
        out.append({"example": int(r.example), "position": int(r.position), "token": r.token, "prob": float(r.prob),
                    "entropy": float(r.entropy), "gate": float(r.gate), "expected": r.pred_token,
                    "expected_prob": float(r.pred_prob),
                    "before": tokenizer.decode(ids[max(0, r.position - context): r.position]),
                    "after": tokenizer.decode(ids[r.position + 1: r.position + 5])})
    return out


def precomputed_thresholds(train_file: str, model_name: str, sha: str) -> dict | None:
    """training/precompute.py's Masked-SFT thresholds for this data and model, if computed from this file."""
    path = precomputed_path(repo_path(train_file), model_name)
    if not path.exists():
        return None
    pre = json.loads(path.read_text())
    if pre.get("data_sha256") != sha:
        return None
    return {"path": repo_relative(path), **pre["masked_sft"]}


def build_report(df: pd.DataFrame, meta: dict, conflicts: list[dict], q: float = 0.15, k: int = 20,
                 rollouts: pd.DataFrame | None = None, precomputed: dict | None = None) -> dict:
    corr = topk_correlation(df, meta.get("vocab_size"))
    k20 = corr[corr["k"] == k]
    report = {
        "model": meta["model"], "data": meta["data"], "data_file": repo_relative(meta["data_file"]), "rows": meta["rows"],
        "examples": int(df["example"].nunique()), "counts": meta["counts"],
        "conflicts": conflict_summary(df), "regions": region_shares(df),
        "quantiles": quantiles(df, QUANTILE_COLUMNS).to_dict(orient="index"),
        "masked_sft": masked_sft_thresholds(df, q, k), "masked_sft_precomputed": precomputed,
        "topk_correlation": {"k": k, "pearson": float(k20["pearson"].iloc[0]) if len(k20) else math.nan,
                             "spearman": float(k20["spearman"].iloc[0]) if len(k20) else math.nan},
        "top_conflicts": conflicts,
    }
    if rollouts is not None:
        report["rollouts"] = {"conflicts": conflict_summary(rollouts), "regions": region_shares(rollouts)}
    return report


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def num(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def conflict_lines(rep: dict) -> list[str]:
    c = rep["conflicts"]
    lines = [
        (f"- {c['conflicts']:,} tokens = **{pct(c['token_share'])} of supervised tokens**, carrying "
         f"**{pct(c['sft_loss_share'])} of the SFT loss** and {pct(c['sft_grad_share'])} of the summed "
         "logit-gradient norm."),
        (f"- Under EAFT (gate H_top20/3.0) they carry {pct(c['eaft_loss_share'])} of the loss and "
         f"{pct(c['eaft_grad_share'])} of the gradient norm; their mean gate is {num(c['conflict_gate_mean'])} "
         f"against {num(c['gate_mean'])} over all tokens."),
    ]
    if "rollouts" in rep:
        rc = rep["rollouts"]["conflicts"]
        lines.append(f"- On the model's own samples (rollouts, {rc['tokens']:,} tokens) the share is "
                     f"{pct(rc['token_share'])} of tokens and {pct(rc['sft_loss_share'])} of the loss.")
    r = rep["regions"]
    lines += ["", (f"Token groups: high entropy (H ≥ 2.0) {pct(r['high_entropy'])}, low entropy and confident "
                   f"(H ≤ 0.5, p ≥ 0.5) {pct(r['low_entropy_confident'])}.")]
    return lines


def quantile_lines(rep: dict) -> list[str]:
    qs = rep["quantiles"]
    head = list(next(iter(qs.values())))
    lines = ["| quantity | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    return lines + [f"| {name} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |" for name, row in qs.items()]


def threshold_lines(rep: dict) -> list[str]:
    m, pre = rep["masked_sft"], rep.get("masked_sft_precomputed")
    lines = [f"- τ (H_top{m['k']}) = {m['entropy_threshold']:.4f} nats, π (p) = {m['prob_threshold']:.4f}.",
             (f"- Eq. 4 mask (H_top{m['k']} ≤ τ) drops {pct(m['drop_share_eq4'])} of tokens; the pilot mask "
              f"(H ≤ τ and p ≤ π) drops {pct(m['drop_share_pilot'])}.")]
    if pre:
        lines.append(f"- training/precompute.py ({pre['path']}, {pre['n_tokens']:,} tokens): τ = "
                     f"{pre['entropy_threshold']:.4f}, π = {pre['prob_threshold']:.4f}.")
    return lines


def context_lines(rep: dict) -> list[str]:
    lines = ["| p | H | gate | context … **label** … | the model expected |", "|---|---|---|---|---|"]
    for x in rep["top_conflicts"]:
        lines.append(f"| {x['prob']:.2e} | {x['entropy']:.3f} | {x['gate']:.3f} | …{visible(x['before'])}"
                     f"**{visible(x['token']).replace(' ', '␣')}**{visible(x['after'])}… | `{visible(x['expected'])}` "
                     f"(p = {x['expected_prob']:.2f}) |")
    if not rep["top_conflicts"]:
        lines.append("| – | – | – | no confident conflicts | – |")
    return lines


READING = (
    "Confident conflicts are the tokens on which SFT pushes hardest against the model's own belief (they carry "
    "the largest gradients); EAFT scales each token's loss by its normalised top-20 entropy, so it mostly stops "
    "learning them. The larger their share of the SFT loss above, the more EAFT's update differs from SFT's. "
    "That is the intent when the conflicts are formatting or phrasing choices that would pull the model away "
    "from its prior for no gain in the target skill; it is a drawback when the data is meant to overwrite what "
    "the model believes (knowledge editing, a limitation the paper states). The mean gate also scales EAFT's "
    "loss, and so its effective step size, relative to SFT's."
)


def render(rep: dict) -> str:
    t, m = rep["topk_correlation"], rep["masked_sft"]
    lines = [f"# Confident-conflict audit: {rep['model']} on {rep['data']}", "",
             (f"Data: `{repo_relative(rep['data_file'])}`, {rep['examples']} examples scored ({rep['rows']} rows read), "
              f"{rep['conflicts']['tokens']:,} supervised tokens."),
             "", "## Confident conflicts (H < 0.5 nats and p < 0.1)", "", *conflict_lines(rep),
             "", "## Quantiles", "", *quantile_lines(rep),
             "", f"## Masked-SFT thresholds (q = {m['q']:g}, over all scored tokens)", "", *threshold_lines(rep),
             "", f"## Top-{t['k']} entropy as a stand-in for full entropy", "",
             (f"Pearson r = {num(t['pearson'], 4)}, Spearman ρ = {num(t['spearman'], 4)} (the paper reports 0.999 "
              "for K = 20 on Qwen3-4B)."),
             "", "## The most conflicting tokens, in context", "", *context_lines(rep),
             "", "## Reading it", "", READING]
    return "\n".join(lines) + "\n"


def json_safe(obj):
    """NaN -> null, so the file is strict JSON; numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item"):
        obj = obj.item()
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def from_stats(cfg, path) -> tuple[pd.DataFrame, dict, list[dict], object]:
    """A token-statistics file instead of a model pass: (frame, metadata, examples, tokenizer). The examples are
    re-tokenised from the same rows (no model needed) for the context column; the data must be unchanged."""
    df, meta = read_token_stats(repo_path(path))
    if meta.get("rollouts"):
        raise ValueError(f"{path} holds rollout statistics; the audit reads the data's (rollouts=false) file")
    data_file = repo_path(meta["data_file"])  # recorded relative to the repository root
    if not data_file.exists():
        raise FileNotFoundError(f"{path} was computed from {meta['data_file']}, which is not here; build it (make data "
                                f"DOMAIN={meta['data']}) or run analysis.token_stats on the data you have")
    if sha256_file(data_file) != meta["data_sha256"]:
        raise ValueError(f"{meta['data_file']} changed since {path} was written; run analysis.token_stats again")
    tokenizer = load_tokenizer(cfg.model)
    rows = read_chat_jsonl(data_file)[: meta["rows"]]
    examples, _ = build_examples(rows, tokenizer, cfg.data.max_length, cfg.data.overlong)
    return df, meta, examples, tokenizer


def main(cfg) -> dict:
    a = cfg.audit
    roll = None
    if a.get("from_stats"):
        df, meta, examples, tokenizer = from_stats(cfg, a.from_stats)
        sibling = repo_path(a.from_stats).with_name(repo_path(a.from_stats).stem + "-rollouts.parquet")
        roll = read_token_stats(sibling)[0] if sibling.exists() else None  # its rollouts, when made
    else:
        loaded = load(cfg)
        df, meta, examples = compute(cfg, rollouts=False, loaded=loaded)
        roll = compute(cfg, rollouts=True, loaded=loaded)[0] if cfg.rollouts else None
        tokenizer = loaded["tokenizer"]
    k = int(cfg.method.hparams.get("k", 20))
    conflicts = conflicts_in_context(df, examples, tokenizer, a.top_conflicts, a.context_tokens)
    rep = build_report(df, meta, conflicts, a.q, k, roll,
                       precomputed_thresholds(meta["data_file"], meta["model"], meta["data_sha256"]))
    text = render(rep)
    stem = repo_path(a.out_dir) / f"{meta['model']}-{meta['data']}"
    atomic_write_text(stem.with_suffix(".md"), text)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(json_safe(rep), indent=2, allow_nan=False) + "\n")
    print(text)
    print(f"[audit] wrote {stem}.md and {stem}.json")
    return rep


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="analysis", version_base=None)(main)()
