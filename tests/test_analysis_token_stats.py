"""Token statistics and the data audit: per-token quantities against an independent fp64 reference, then
`analysis.token_stats` and `analysis.audit` end to end on the tiny random model and data (CPU, seconds).
The SmolLM2 check is in the `integration` tier."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from analysis import audit, token_stats
from analysis.summaries import conflict_summary, masked_sft_thresholds
from common.generation import render_prompts
from tests.conftest import need

REPO = Path(__file__).resolve().parents[1]
IGNORE = -100


def cfg_for(*overrides):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("analysis", overrides=list(overrides))


def reference(logits, labels, ks):
    """Loop over supervised tokens in fp64: prob, entropies, gate, and the autograd norm of dCE/dlogits."""
    rows = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE:
                continue
            z = logits[b, t].double().clone().requires_grad_(True)
            F.cross_entropy(z[None], torch.tensor([y])).backward()
            p = torch.softmax(z.detach(), -1)
            ent = {}
            for k in ks:
                q = torch.softmax(z.detach().topk(min(k, z.numel())).values, -1)
                ent[k] = float(-(q * q.log()).sum())
            rows.append({"row": b, "position": t + 1, "prob": float(p[y]), "entropy": float(-(p * p.log()).sum()),
                         "grad_norm": float(z.grad.norm()), "top": ent, "pred": int(p.argmax())})
    return rows


def test_batch_token_stats_match_an_fp64_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 50) * 3
    labels = torch.randint(0, 50, (3, 9))
    labels[0, :4] = IGNORE
    labels[2, 6] = IGNORE
    ks = [5, 20, 50]
    out = token_stats.batch_token_stats(logits, labels, ks, {"k": 20, "alpha": 1.0, "norm": 3.0})
    ref = reference(logits, labels, ks)
    assert len(out["prob"]) == len(ref) == int((labels[:, 1:] != IGNORE).sum())
    for i, r in enumerate(ref):
        assert int(out["row_in_batch"][i]) == r["row"] and int(out["position"][i]) == r["position"]
        assert int(out["token_id"][i]) == int(labels[r["row"], r["position"]])
        assert float(out["prob"][i]) == pytest.approx(r["prob"], rel=1e-4, abs=1e-7)
        assert float(out["entropy"][i]) == pytest.approx(r["entropy"], abs=1e-4)
        assert float(out["grad_norm"][i]) == pytest.approx(r["grad_norm"], abs=1e-5)
        for k in ks:
            assert float(out[f"entropy_top{k}"][i]) == pytest.approx(r["top"][k], abs=1e-4)
        assert float(out["gate"][i]) == pytest.approx(r["top"][20] / 3.0, abs=1e-4)
        assert int(out["pred_id"][i]) == r["pred"]


def test_grad_norm_is_stable_when_the_label_is_certain():
    logits = torch.full((1, 2, 10), -60.0)
    logits[0, 0, 3] = 60.0
    labels = torch.tensor([[IGNORE, 3]])
    out = token_stats.batch_token_stats(logits, labels, [5], {"k": 5})
    assert float(out["grad_norm"][0]) == pytest.approx(0.0, abs=1e-6) and not math.isnan(float(out["grad_norm"][0]))
    labels = torch.tensor([[IGNORE, 4]])  # sure of token 3, the label says 4: the largest possible norm, sqrt 2
    out = token_stats.batch_token_stats(logits, labels, [5], {"k": 5})
    assert float(out["grad_norm"][0]) == pytest.approx(math.sqrt(2), abs=1e-6)


@pytest.fixture(scope="module")
def tiny():
    cfg = cfg_for("model=tiny", "data=tiny", "limit=6", "generation.max_new_tokens=8", "batch_size=4")
    return cfg, token_stats.load(cfg)


def test_token_stats_cli_writes_a_parquet_per_supervised_token(tiny, tmp_path):
    cfg = cfg_for("model=tiny", "data=tiny", "limit=6", f"out_dir={tmp_path}")
    out = token_stats.main(cfg)
    df, meta = token_stats.read_token_stats(out["path"])
    assert Path(out["path"]).name == "tiny-tiny.parquet"
    assert len(df) == meta["counts"]["supervised_tokens"] and meta["rows"] == 6
    assert {"prob", "entropy", "gate", "grad_norm", "token", "position", "example", "response_pos",
            "entropy_top20", "entropy_top2000"} <= set(df.columns)
    assert meta["gate"] == {"method": "eaft", "k": 20, "alpha": 1.0, "norm": 3.0}
    _, ld = tiny
    by_row = {e["row"]: e for e in ld["examples"]}
    for r in df.sample(20, random_state=0).itertuples():
        assert by_row[r.example]["input_ids"][r.position] == r.token_id
        assert by_row[r.example]["labels"][r.position] == r.token_id
        assert ld["tokenizer"].decode([r.token_id]) == r.token
    with pytest.raises(FileNotFoundError, match="analysis.token_stats"):
        token_stats.read_token_stats(tmp_path / "missing.parquet")


def test_rollouts_supervise_only_the_models_own_sample(tiny):
    cfg, ld = tiny
    df, meta, examples = token_stats.compute(cfg, rollouts=True, loaded=ld)
    assert meta["rollouts"] and meta["counts"]["rollout"]["rollouts"] == 6
    tok = ld["tokenizer"]
    prompts = [token_stats.prompt_messages(r["messages"]) for r in ld["rows"]]
    for e in examples:
        p_ids = tok(render_prompts(tok, [prompts[e["row"]]])[0], add_special_tokens=False)["input_ids"]
        assert e["input_ids"][: len(p_ids)] == p_ids
        assert all(x == IGNORE for x in e["labels"][: len(p_ids)])
        assert e["labels"][len(p_ids):] == e["input_ids"][len(p_ids):]
        assert df[df["example"] == e["row"]]["position"].min() == len(p_ids)
    assert len(df) == sum(sum(x != IGNORE for x in e["labels"][1:]) for e in examples)


def test_audit_on_a_confident_tiny_model(tiny, tmp_path, monkeypatch):
    """Sharpen the random model's output layer so it is sure (and mostly wrong): confident conflicts appear."""
    cfg, ld = tiny
    sharp = {**ld, "model": token_stats.load(cfg)["model"]}
    with torch.no_grad():
        sharp["model"].lm_head.weight.mul_(40.0)
    monkeypatch.setattr(audit, "load", lambda cfg: sharp)
    rep = audit.main(cfg_for("model=tiny", "data=tiny", "limit=6", f"audit.out_dir={tmp_path}",
                             "audit.top_conflicts=5"))
    df = token_stats.compute(cfg, rollouts=False, loaded=sharp)[0]
    manual = ((df["entropy"] < 0.5) & (df["prob"] < 0.1)).mean()
    assert rep["conflicts"]["token_share"] == pytest.approx(manual) and manual > 0.05
    assert rep["conflicts"] == pytest.approx(conflict_summary(df), nan_ok=True)
    assert rep["masked_sft"] == pytest.approx(masked_sft_thresholds(df, 0.15, 20))
    worst = rep["top_conflicts"]
    assert len(worst) == 5 and [w["prob"] for w in worst] == sorted(w["prob"] for w in worst)
    assert all(w["prob"] < 0.1 and w["entropy"] < 0.5 for w in worst)
    md = (tmp_path / "tiny-tiny.md").read_text()
    assert "Confident-conflict audit" in md and f"**{audit.visible(worst[0]['token']).replace(' ', '␣')}**" in md
    saved = json.loads((tmp_path / "tiny-tiny.json").read_text())  # strict JSON: NaN became null
    assert saved["conflicts"]["conflicts"] == rep["conflicts"]["conflicts"]


@pytest.mark.integration
def test_audit_on_smollm2(tmp_path):
    need("smollm2", (REPO / "data/assets/smollm2-135m-instruct").exists(), "run `make assets` first")
    rep = audit.main(cfg_for("model=smollm2-135m", "data=tiny", "limit=4", f"audit.out_dir={tmp_path}"))
    assert rep["topk_correlation"]["pearson"] > 0.8  # a real model: top-20 tracks full entropy
    assert 0 <= rep["conflicts"]["token_share"] < 0.5
    assert isinstance(pd.read_json(tmp_path / "smollm2-135m-tiny.json", typ="series"), pd.Series)


def test_audit_from_a_stats_file_needs_no_model_and_checks_the_data(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text((REPO / "tests/assets/tiny_chat.jsonl").read_text())
    common = ["model=tiny", "data=tiny", "limit=5", f"data.train_file={data}"]
    path = token_stats.main(cfg_for(*common, f"out_dir={tmp_path}"))["path"]
    rep = audit.main(cfg_for(*common, f"audit.from_stats={path}", f"audit.out_dir={tmp_path}"))
    df, _ = token_stats.read_token_stats(path)
    assert rep["conflicts"] == pytest.approx(conflict_summary(df), nan_ok=True) and rep["examples"] == 5
    data.write_text(data.read_text().replace("coins", "stones"))
    with pytest.raises(ValueError, match="changed"):
        audit.main(cfg_for(*common, f"audit.from_stats={path}", f"audit.out_dir={tmp_path}"))
