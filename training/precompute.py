"""One pass of the base model over the training data: FLOW sample weights and Masked-SFT thresholds.

    python -m training.precompute model=smollm2-135m data=math-mini
    make precompute MODEL=smollm2-135m DATA=math-mini

Writes <data dir>/precomputed/<model name>.json next to the training file:
- flow: tau = median per-sample loss L_i(theta_0) (mean token CE of the sample), weights
  w_i = exp(-L_i / tau), normalised to mean 1 over the data set so the loss keeps SFT's scale (FLOW,
  Sanyal et al. 2025). One weight per line of the training file.
- masked_sft: the q-quantiles of the top-k entropy (nats) and of the label probability over all supervised
  tokens, computed once under the base model (why: docs/paper.md, section "Where the paper is silent").
  q and k come from the method config (`method=`, default masked_sft: configs/method/masked_sft*.yaml), the
  quantile is the loss's own (eaft_loss.losses._quantile, any number of tokens), and the file records q, k, the
  mode and the method it was made for.
method=flow / masked_sft* read this file and fail if it is missing, was made from other data, or (Masked SFT)
holds thresholds for another q or k than the method's.

    python -m training.precompute model=qwen3-4b data=math method=masked_sft_pilot
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch
from eaft_loss.losses import _quantile, masked_sft_gate, supervised_tokens, topk_entropy
from tqdm import tqdm

from common.files import REPO, atomic_write_text, sha256_file
from common.models import load_model, load_tokenizer, resolve
from training.data import ChatCollator, build_examples, read_chat_jsonl


def precomputed_path(train_file: str | Path, model_name: str) -> Path:
    """<data folder>/precomputed/<model>.json, beside the data it was computed from. Data committed under tests/
    (data=tiny) is the exception: that folder stays as committed, so its file goes to the ignored
    runs/precomputed/<data folder, repository-relative>/ instead."""
    folder = Path(train_file).parent
    if folder.resolve().is_relative_to(REPO / "tests"):
        folder = REPO / "runs" / "precomputed" / folder.resolve().relative_to(REPO)
    return folder / "precomputed" / f"{model_name}.json"


def load_precomputed(train_file: str | Path, model_name: str) -> dict:
    """The precomputed file for this data and model, checked against the data's hash."""
    path = precomputed_path(train_file, model_name)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run `python -m training.precompute model={model_name} data=<data>` first "
            "(FLOW weights and Masked-SFT thresholds come from the base model)")
    pre = json.loads(path.read_text())
    if pre["data_sha256"] != sha256_file(train_file):
        raise ValueError(f"{path} was computed from another version of {train_file}; run training.precompute again")
    return pre


GATE_DEFAULTS = {n: p.default for n, p in inspect.signature(masked_sft_gate).parameters.items()
                 if p.default is not inspect.Parameter.empty}


def masked_sft_settings(method_cfg) -> dict:
    """{method, mode, q, k} of a Masked-SFT method config: what its thresholds must be computed with."""
    if method_cfg.get("precomputed") != "masked_sft":
        raise ValueError(f"method={method_cfg.get('name')} is not a Masked-SFT method (precomputed: masked_sft), so "
                         "it gives no q and k for the thresholds; leave method unset (masked_sft) or pass "
                         "method=masked_sft_pilot. FLOW's weights do not depend on it.")
    hp = dict(method_cfg.get("hparams") or {})
    return {"method": method_cfg.get("name"), "mode": hp.get("mode", GATE_DEFAULTS["mode"]),
            "q": float(hp.get("q", GATE_DEFAULTS["q"])), "k": int(hp.get("k", GATE_DEFAULTS["k"]))}


def check_masked_sft(pre: dict, method_cfg, model_name: str, train_file: str | Path) -> None:
    """Refuse thresholds made for another q or k than the method trains with (the loss would use them as if
    they were its own)."""
    want, got = masked_sft_settings(method_cfg), pre["masked_sft"]
    if got.get("k") != want["k"] or not math.isclose(float(got.get("q", math.nan)), want["q"]):
        raise ValueError(
            f"{precomputed_path(train_file, model_name)} holds Masked-SFT thresholds for q={got.get('q')}, "
            f"k={got.get('k')} (made for method={got.get('method', '?')}), but method={want['method']} has "
            f"q={want['q']}, k={want['k']}; rebuild them: python -m training.precompute model={model_name} "
            f"data.train_file={train_file} method={want['method']}")


@torch.no_grad()
def compute(model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 4, k: int = 20,
            q: float = 0.15) -> dict:
    # Keep every row (truncate rather than drop) so that weights line up with the file's lines.
    examples, _ = build_examples(rows, tokenizer, max_length, overlong="truncate")
    by_row = {e["row"]: e for e in examples}
    collate = ChatCollator(tokenizer.pad_token_id)
    losses = [float("nan")] * len(rows)
    ents, probs = [], []
    model.eval()
    device = next(model.parameters()).device
    order = sorted(by_row)
    for i in tqdm(range(0, len(order), batch_size), desc="precompute", unit="batch"):
        idx = order[i: i + batch_size]
        batch = collate([by_row[j] for j in idx])
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        tok = supervised_tokens(logits, batch["labels"].to(device))
        for b, j in enumerate(idx):
            losses[j] = tok.ce[tok.rows == b].mean().item()
        ents.append(topk_entropy(tok.logits, k).cpu())
        probs.append(tok.prob.cpu())
    valid = [x for x in losses if not math.isnan(x)]
    tau = float(torch.tensor(valid).median())
    raw = [math.exp(-x / tau) if not math.isnan(x) else 0.0 for x in losses]
    mean = sum(raw) / max(1, sum(1 for x in losses if not math.isnan(x)))
    h, p = torch.cat(ents), torch.cat(probs)
    return {
        "flow": {"tau": tau, "sample_loss": losses, "weights": [w / mean for w in raw]},
        # The loss's own quantile: torch.quantile refuses more than 2**24 tokens (the math set has ~47M).
        "masked_sft": {"q": q, "k": k, "entropy_threshold": float(_quantile(h, q)),
                       "prob_threshold": float(_quantile(p, q)), "n_tokens": int(h.numel())},
    }


def main(cfg) -> dict:
    settings = masked_sft_settings(cfg.method)  # before any model loads
    train_file = resolve(cfg.data.train_file, kind="data")
    rows = read_chat_jsonl(train_file)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tokenizer)
    if torch.cuda.is_available():
        model = model.cuda()
    out = compute(model, tokenizer, rows, cfg.data.max_length, batch_size=cfg.get("precompute_batch_size", 4),
                  k=settings["k"], q=settings["q"])
    out["masked_sft"].update(method=settings["method"], mode=settings["mode"])
    result = {"model": cfg.model.name, "data": str(train_file), "data_sha256": sha256_file(train_file), **out}
    path = precomputed_path(train_file, cfg.model.name)
    atomic_write_text(path, json.dumps(result))
    print(f"wrote {path}: flow tau={out['flow']['tau']:.3f}, masked_sft thresholds "
          f"H<={out['masked_sft']['entropy_threshold']:.3f} p<={out['masked_sft']['prob_threshold']:.3f}")
    return {"path": str(path), **out["masked_sft"], "flow_tau": out["flow"]["tau"]}


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="precompute", version_base=None)(main)()
