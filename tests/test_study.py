"""The conflict study (experiments/study.py, experiments/study_data.py): data construction, probe facts, decision
rules, and the tiny profile end to end."""

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis.study_report import MEASURES, contrast, overall_verdict, verdict
from common.files import sha256_file
from experiments import study_data as sd

REPO = Path(__file__).resolve().parents[1]
FACTS = REPO / "assets" / "study_facts.jsonl"


def test_calculator_tags_are_removed_and_nothing_else():
    text = "14 * 5000 = <<14*5000=70000>>70000.\nThen 70000 * 2 = $<<70000*2=140000>>140000 << no tag"
    assert sd.strip_calculator_tags(text) == "14 * 5000 = 70000.\nThen 70000 * 2 = $140000 << no tag"


def synthetic(n=8, v=6):
    """Logits (n, v) and targets: even positions confident and right (eligible), odd ones confident and wrong or
    uncertain (not eligible); the rank-2 token is target + 1 everywhere."""
    targets = torch.arange(n) % (v - 2)
    logits = torch.full((n, v), -10.0)
    for i, t in enumerate(targets.tolist()):
        logits[i, t + 1] = 2.0                      # rank 2
        if i % 4 == 0 or i % 4 == 2:
            logits[i, t] = 12.0                     # confident, agrees with the data
        elif i % 4 == 1:
            logits[i, t + 2] = 12.0                 # confident, disagrees: not eligible
        else:
            logits[i] = 0.0                         # uniform: high entropy, not eligible
    return logits, targets


def test_eligible_positions_are_confident_agreements_and_the_alternative_is_rank_two():
    logits, targets = synthetic()
    ok, alt = sd.eligible_positions(logits, targets)
    assert ok.tolist() == [i % 2 == 0 for i in range(8)]
    assert alt[ok].tolist() == (targets[ok] + 1).tolist()
    ok2, _ = sd.eligible_positions(logits, targets, banned={int(targets[0]) + 1})
    assert not ok2[0] and ok2[2]                    # a special-token alternative is never substituted


def plan_from(logits, targets, seed=0, index=0):
    ok, alt = sd.eligible_positions(logits, targets)
    return sd.Plan(targets.tolist(), ok.tolist(), alt.tolist(), sd.uniforms(seed, index, len(targets)).tolist())


def test_substitution_changes_only_eligible_positions_nested_in_dose_and_the_conflict_share_rises():
    logits, targets = synthetic(n=400)
    plan = plan_from(logits, targets)
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    shares, previous = [], set()
    for dose in (0.0, 0.1, 0.3, 0.6, 1.0):
        ids = plan.ids(dose)
        changed = {i for i, (a, b) in enumerate(zip(ids, plan.content_ids)) if a != b}
        assert all(plan.eligible[i] for i in changed) and previous <= changed
        previous = changed
        p = logp[torch.arange(len(ids)), torch.tensor(ids)].exp()
        shares.append(float(((entropy < 0.5) & (p < 0.1)).double().mean()))  # the audit's rule, same logits
    # a quarter of the positions are conflicts already (confident, wrong); each substitution adds one
    assert shares[0] == 0.25 and shares == sorted(shares)
    assert shares[-1] == pytest.approx(0.25 + sum(plan.eligible) / 400)
    assert 0.27 < shares[1] < 0.33                   # about dose x eligible share (0.1 x 0.5) more


def test_min_gap_spaces_the_replacements_and_keeps_them_eligible():
    logits, targets = synthetic(n=200)
    alt = sd.eligible_positions(logits, targets)[1]
    plan = sd.Plan(targets.tolist(), [True] * 200, alt.tolist(), sd.uniforms(0, 0, 200).tolist())  # all eligible
    for gap in (0, 1, 3):
        at = [i for i, s in enumerate(plan.substituted(1.0, gap)) if s]
        assert all(b - a > gap for a, b in itertools.pairwise(at)) and len(at) == len(range(0, 200, gap + 1))
    sparse = plan_from(logits, targets)
    assert 0 < sum(sparse.substituted(1.0, 2)) < sum(sparse.substituted(1.0)) == sum(sparse.eligible)
    assert all(sparse.eligible[i] for i, s in enumerate(sparse.substituted(1.0, 2)) if s)


def test_data_construction_is_deterministic():
    logits, targets = synthetic(n=64)
    a, b = plan_from(logits, targets, seed=3, index=5), plan_from(logits, targets, seed=3, index=5)
    assert a == b and a.ids(0.5) == b.ids(0.5)
    assert plan_from(logits, targets, seed=3, index=6).u != a.u   # each row its own draws

    class Tok:
        def decode(self, ids, **_):
            return " ".join(map(str, ids))

    row = {"id": "r", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x <<1+1=2>>2"}]}
    rows = sd.notags_rows([row])
    assert rows[0]["messages"][-1]["content"] == "x 2" and row["messages"][-1]["content"] == "x <<1+1=2>>2"
    one = json.dumps(sd.injected_rows(rows, [a], Tok(), 0.5))
    assert one == json.dumps(sd.injected_rows(rows, [b], Tok(), 0.5))
    with pytest.raises(ValueError, match="dose"):
        sd.injected_rows(rows, [a], Tok(), 1.5)


def control_synthetic(n=400, v=40):
    """Logits where every 4th position is confident and right (injected-eligible), every 4th+1 unsure (entropy
    well above 1 nat) with the data's token on top and several low-probability tokens, the rest neither."""
    targets = torch.arange(n) % (v - 10)
    logits = torch.full((n, v), -10.0)
    for i, t in enumerate(targets.tolist()):
        if i % 4 == 0:
            logits[i, t], logits[i, t + 1] = 12.0, 2.0
        elif i % 4 == 1:
            logits[i, : v] = torch.linspace(0.0, -6.0, v).roll(t)   # top-1 is t, a long tail below it
            logits[i, t] = 1.0
        else:
            logits[i, t + 2] = 12.0                                 # confident and wrong
    return logits, targets


def test_control_positions_are_unsure_agreements_replaced_by_a_low_probability_token():
    logits, targets = control_synthetic()
    ok, alt = sd.control_positions(logits, targets)
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    assert ok.tolist() == [i % 4 == 1 for i in range(len(targets))]
    assert (entropy[ok] >= sd.CONTROL_MIN_ENTROPY).all() and (logits[ok].argmax(-1) == targets[ok]).all()
    p_alt = logp[torch.arange(len(alt)), alt].exp()
    assert (p_alt[ok] < sd.CONTROL_MAX_PROB).all() and (alt[ok] != targets[ok]).all()
    # the most likely token under the bound: every token ranked above it has p >= the bound
    for i in ok.nonzero().flatten().tolist()[:5]:
        above = logp[i].exp() > p_alt[i]
        assert (logp[i].exp()[above] >= sd.CONTROL_MAX_PROB).all()
    banned = {int(alt[1])}
    ok2, alt2 = sd.control_positions(logits, targets, banned=banned)
    assert ok2[1] and int(alt2[1]) != int(alt[1])  # a special-token alternative is passed over


def test_the_control_arm_matches_the_injected_arms_count_at_unsure_positions_deterministically():
    logits, targets = control_synthetic(n=400)
    ok, alt = sd.eligible_positions(logits, targets)
    c_ok, c_alt = sd.control_positions(logits, targets)
    plan = sd.Plan(targets.tolist(), ok.tolist(), alt.tolist(), sd.uniforms(0, 7, 400).tolist(),
                   c_ok.tolist(), c_alt.tolist())
    for gap in (0, 2):
        want = sum(plan.substituted(1.0, gap))
        sub = plan.control_substituted(want, gap)
        at = [i for i, x in enumerate(sub) if x]
        assert len(at) == want > 0                                  # as many as the injected arm makes
        assert all(c_ok[i] and not ok[i] for i in at)               # only at unsure positions
        assert all(b - a > gap for a, b in itertools.pairwise(at))
        assert sub == plan.control_substituted(want, gap)           # the same every time
    assert sum(plan.control_substituted(10_000, 0)) == int(c_ok.sum())  # never more than the eligible ones
    # the control arm adds no confident conflict (the audit's rule on the same logits); the injected arm does
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)

    def share(ids):
        p = logp[torch.arange(len(ids)), torch.tensor(ids)].exp()
        return float(((entropy < 0.5) & (p < 0.1)).double().mean())

    base = share(plan.content_ids)
    assert share(plan.control_ids(sum(plan.substituted(1.0)))) == base < share(plan.ids(1.0))

    class Tok:
        def decode(self, ids, **_):
            return " ".join(map(str, ids))

    row = {"id": "r", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]}
    rows, counts = sd.control_rows([row], [plan], Tok(), 1.0, 2)
    assert counts["wanted"] == counts["substituted"] == sum(plan.substituted(1.0, 2))
    assert rows[0]["messages"][-1]["content"] == " ".join(map(str, plan.control_ids(counts["wanted"], 2)))


def test_on_policy_answers_are_complete_greedy_first_then_sampled_retries(monkeypatch):
    """complete_answers keeps each row's greedy answer when it ends within the budget, samples again (seeds 1..)
    for one that runs out, takes the first sample that ends, and leaves out a row none ends, saying so."""
    from common import generation

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    def fake(model, prompts, max_new_tokens, temperature=0.0, seed=0, **_):
        out = []
        for conv in prompts:
            q = conv[-1]["content"]
            ends = {"short": True, "long": seed >= 2, "never": False, "cut": False}[q]  # "long": on the 2nd sample
            # a cut answer can re-tokenise a little shorter than the budget it was generated to: still not ended
            n = 3 if ends else max_new_tokens - (1 if q == "cut" else 0)
            out.append([("w " * n).strip()])
        return out

    monkeypatch.setattr(generation, "generate", fake)
    rows = [{"id": q, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ref"}]}
            for q in ("short", "long", "never", "cut")]
    kept, counts = sd.complete_answers(None, Tok(), rows, max_new_tokens=20, retries=3)
    assert [r["id"] for r in kept] == ["short", "long"] and all(r["messages"][-1]["content"] == "w w w" for r in kept)
    assert (counts["greedy_ended"], counts["sampled_ended"], counts["left_out"]) == (1, 1, ["never", "cut"])
    assert counts["answer_tokens"] == {"mean": 3.0, "max": 3}
    with pytest.raises(ValueError, match="none of 2 answers ended within 20 tokens"):
        sd.complete_answers(None, Tok(), rows[2:], max_new_tokens=20, retries=1)
    kept, _ = sd.complete_answers(None, Tok(), rows[2:], max_new_tokens=20, keep_unended=True)
    assert len(kept) == 2  # the tiny random model's profile keeps what it generated


def test_the_committed_facts_are_well_formed_and_the_disjointness_rule_catches_statements():
    facts = sd.read_facts(FACTS)
    assert len(facts) >= 200
    assert len({f["id"] for f in facts}) == len(facts) and len({f["prompt"] for f in facts}) == len(facts)
    paris = next(f for f in facts if f["answer"] == "Paris")
    texts = ["Tom went to Paris. He bought 3 apples.", "The capital of France is Paris, she said."]
    kept, dropped = sd.disjoint_facts(facts, texts)
    assert paris in dropped and len(kept) == len(facts) - len(dropped)
    assert paris in sd.disjoint_facts([paris], texts[:1])[0]  # the answer alone is no statement of the fact
    assert sd.answer_matches(" paris.", "Paris") and sd.answer_matches("The capital of France is Paris.", "Paris")
    assert not sd.answer_matches("Paris is the capital", "Paris") and not sd.answer_matches("Comparis", "Paris")
    assert not sd.answer_matches("The opposite of cold is hot.", "cold") and not sd.answer_matches("", "")


def test_facts_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "facts.jsonl"
    bad.write_text('{"id": "a", "subject": "x", "prompt": "q", "answer": "y"}\n{"id": "b", "prompt": "q"}\n')
    with pytest.raises(ValueError, match=r"facts.jsonl:2: .*subject"):
        sd.read_facts(bad)


def result(tmp, run, values, tokens=None):
    items = tmp / run / "items" / "b.jsonl"
    items.parent.mkdir(parents=True, exist_ok=True)
    items.write_text("".join(json.dumps({"id": str(i), "nll_sum": v, "tokens": (tokens or [1] * len(values))[i]})
                             + "\n" for i, v in enumerate(values)))
    return {"run": run, "benchmark": "b", "metric": "nll", "items_file": str(items)}


def test_contrasts_are_paired_over_items_and_verdicts_follow_the_rule(tmp_path):
    loaded = {"a": {"b": result(tmp_path, "a", [1.0, 2.0, 3.0], [1, 2, 1])},
              "c": {"b": result(tmp_path, "c", [2.0, 3.0, 4.5], [1, 2, 1])}}
    c = contrast(loaded, {"c": 1.0, "a": -1.0}, "b")
    assert c["diff"] == pytest.approx(3.5 / 4) and c["n"] == 3
    assert contrast(loaded, {"c": 1.0, "a": -1.0}, "b", per_item=True)["diff"] == pytest.approx(3.5 / 3)
    assert contrast(loaded, {"c": 1.0, "missing": -1.0}, "b") is None
    loaded["d"] = {"b": result(tmp_path, "d", [2.0, 3.0, 4.5], [1, 3, 1])}
    with pytest.raises(ValueError, match="token counts differ"):
        contrast(loaded, {"d": 1.0, "a": -1.0}, "b")
    assert verdict(0.5, 0.1, +1) == "confirmed" and verdict(-0.5, 0.1, +1) == "refuted"
    assert verdict(0.1, 0.1, -1) == "unresolved" and verdict(None, None, -1) == "unresolved"
    assert verdict(0.001, 0.002, 0) == "confirmed" and verdict(0.05, 0.01, 0) == "refuted"


def test_seed_means_carry_the_preregistered_se_and_the_se_over_seeds():
    import math

    from analysis.study_report import seed_mean, within_margin_note

    one = seed_mean([{"diff": 0.3, "stderr": 0.1}])
    assert one["value"] == pytest.approx(0.3) and one["se"] == pytest.approx(0.1) and one["se_seeds"] is None
    three = seed_mean([{"diff": d, "stderr": 0.01} for d in (0.1, 0.2, 0.6)])
    assert three["value"] == pytest.approx(0.3) and three["se"] == pytest.approx(math.sqrt(3) * 0.01 / 3)
    # std over seeds / sqrt(3): the training noise the preregistered SE leaves out
    assert three["se_seeds"] == pytest.approx(math.sqrt(((0.2 ** 2 + 0.1 ** 2 + 0.3 ** 2) / 2) / 3))
    assert seed_mean([None]) is None
    # P4-like: beyond 2 SE yet inside the 0.01 margin -> refuted, with the note saying both conditions hold
    p4 = {"id": "P4", "sign": 0, "verdict": verdict(0.0052, 0.0022, 0), "value": 0.0052, "se": 0.0022}
    assert p4["verdict"] == "refuted" and "inside the 0.01 equivalence margin" in within_margin_note(p4)
    assert within_margin_note({**p4, "value": 0.02, "se": 0.002}) is None  # outside the margin: plain refutation
    assert within_margin_note({**p4, "sign": +1}) is None


def test_versus_sft_is_each_method_minus_sft_on_its_arm_with_nlls_turned_into_gains(tmp_path):
    import statistics

    from analysis.study_report import DRIFT, PROBE, TARGET, versus_sft

    tokens = [1, 2, 1]  # unequal, so a per-item mean and a token-weighted ratio differ

    def run(name, kl, nll):
        return {b: {**result(tmp_path / b, name, v, tokens), "benchmark": b}
                for b, v in ((DRIFT, kl), (PROBE, nll), (TARGET, nll))}

    sft, eaft = [2.0, 4.0, 2.0], [1.5, 2.0, 1.5]  # EAFT's NLL lower by 0.5, 2, 0.5 (per item) = 3 over 4 tokens
    loaded = {"s0": run("s0", [1.0, 2.0, 1.0], sft), "e0": run("e0", [2.0, 4.0, 2.0], eaft),
              "s1": run("s1", [1.0, 2.0, 1.0], sft), "e1": run("e1", [3.0, 6.0, 3.0], eaft),
              "e2": run("e2", [9.0] * 3, [9.0] * 3),  # seed 2 has no SFT run: left out
              "slow": run("slow", [9.0] * 3, [9.0] * 3), "lone": run("lone", [9.0] * 3, [9.0] * 3)}

    def cell(arm, method, seed, lr=2e-4):
        return {"arm": arm, "method": method, "seed": seed, "lr": lr}

    runs = {"s0": cell("a", "sft", 0), "e0": cell("a", "eaft", 0), "s1": cell("a", "sft", 1),
            "e1": cell("a", "eaft", 1), "e2": cell("a", "eaft", 2), "slow": cell("a", "eaft", 0, 5e-5),
            "lone": cell("b", "eaft", 0)}
    rows = versus_sft(loaded, runs, 2e-4, ["a", "b"])
    assert [(r["arm"], r["method"], r["seeds"]) for r in rows] == [("a", "eaft", 2)]  # no SFT on b; other lr out
    r = rows[0]
    # KL per token +1 and +2 with no item spread: the SE is the seeds' spread
    assert r["kl_to_base"] == pytest.approx(1.5) and r["kl_to_base_se"] == pytest.approx(0.5)
    # lower NLL than SFT is a gain: retention per fact (mean of 0.5, 2, 0.5), target per token (3 / 4)
    assert r["knowledge_retention"] == pytest.approx(1.0) and r["target_gain"] == pytest.approx(0.75)
    # identical seeds: the SE is the item SE, not the zero spread over seeds
    item_se = statistics.stdev([0.5, 2.0, 0.5]) / 3 ** 0.5 / 2 ** 0.5  # one seed's SE, two seeds averaged
    assert r["knowledge_retention_se"] == pytest.approx(item_se)


@pytest.mark.parametrize("p1, p2, want", [
    ("confirmed", "confirmed", "supported"), ("confirmed", "refuted", "refuted"), ("refuted", "confirmed", "refuted"),
    ("refuted", "unresolved", "refuted"), ("confirmed", "unresolved", "unresolved"),
    ("unresolved", "confirmed", "unresolved"), ("unresolved", "refuted", "unresolved"),
])
def test_the_overall_verdict_follows_the_preregistered_rule(p1, p2, want):
    preds = [{"id": "P1", "verdict": p1}, {"id": "P2", "verdict": p2}, {"id": "P3", "verdict": "refuted"}]
    assert overall_verdict(preds) == want


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return hydra_compose("study", overrides=list(overrides))


@pytest.mark.parametrize("override, message", [
    ("study_profile.arms=[natural,teacher]", "arms .*teacher"),
    ("study_profile.doses=[0.2,1.5]", "doses"),
    ("study_profile.cells=[{methods:[sft,nope],lr:1e-4,seeds:[0]}]", "configs/method/nope.yaml"),
])
def test_a_bad_config_is_refused_before_any_model_loads(override, message):
    from experiments.study import check_config

    with pytest.raises(ValueError, match=message):
        check_config(compose("model=tiny", "data=tiny", "study_profile=tiny", override))


def test_the_full_profile_holds_the_preregistered_cells():
    from experiments.study import cells
    from experiments.study_setup import arm_names

    cfg = compose("study_profile=full")
    got = cells(cfg)
    assert len(arm_names(cfg)) == 5 and len(got) == 5 * (2 * 3 + 2 + 2)
    main = [c for c in got if c["lr"] == 2e-4 and c["method"] in ("sft", "eaft")]
    assert {c["seed"] for c in main} == {0, 1, 2}
    quick = compose("study_profile=quick")
    assert arm_names(quick)[-1] == arm_names(cfg)[-1] and {c["method"] for c in cells(quick)} == {"sft", "eaft"}


def test_marked_token_nll_reads_the_right_positions():
    """evaluation's injected_learned measure: the NLL of the tokens at the listed positions, each predicted by the
    logits one position earlier, batched with right padding as for any other row."""
    from common.models import load_model, load_tokenizer
    from evaluation.likelihood import marked_nll
    from training.data import tokenize_chat

    mcfg = compose("model=tiny").model
    torch.manual_seed(0)
    tok = load_tokenizer(mcfg)
    model = load_model(mcfg, tok).eval()
    rows = [{"messages": [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5, so 5."}]},
            {"messages": [{"role": "user", "content": "A longer question, 12 + 30?"},
                          {"role": "assistant", "content": "It is 42, I am sure."}]}]
    want, positions = [], []
    for row in rows:
        ids = tokenize_chat(tok, row["messages"])[0]
        pos = [len(ids) - 4, len(ids) - 3]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        want.append(-float(logp[pos[0] - 1, ids[pos[0]]] + logp[pos[1] - 1, ids[pos[1]]]))
        positions.append(pos)
    got = marked_nll(model, tok, rows, positions, batch_size=2, progress=False)
    assert got == [pytest.approx(w, abs=1e-5) for w in want]
    with pytest.raises(ValueError, match="outside"):
        marked_nll(model, tok, rows[:1], [[0]], progress=False)


def run_study(tmp: Path, *extra: str, profile: str = "tiny") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    args = ["model=tiny", "data=tiny", f"study_profile={profile}", f"out_dir={tmp / 'report'}", f"runs_dir={tmp / 'runs'}",
            f"work_dir={tmp / 'work'}", f"metrics_dir={tmp / 'metrics'}", *extra]
    proc = subprocess.run([sys.executable, "-m", "experiments.study", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def snapshot(folder: Path) -> dict[str, int]:
    """{file: mtime_ns} of every file under folder."""
    return {str(f.relative_to(folder)): f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()}


TINY_CELLS = 6  # 2 arms x (sft, eaft, masked_sft_pilot), one seed


def test_the_tiny_profile_end_to_end_resumed_retrained_and_reused(tmp_path):
    from training.precompute import precomputed_path

    repo_metrics = snapshot(REPO / "results" / "metrics")
    run_study(tmp_path)
    out = tmp_path / "report"
    summary = json.loads((out / "summary.json").read_text())
    assert [a["name"] for a in summary["arms"]] == ["natural_notags", "injected_d1"]
    for a in summary["arms"]:
        assert set(a) == {"name", "measured_conflict_share", "n_examples", "n_tokens"} and a["n_tokens"] > 0
    assert len(summary["cells"]) == TINY_CELLS
    assert {(r["arm"], r["method"]) for r in summary["versus_sft"]} >= {("natural_notags", "eaft"),
                                                                         ("injected_d1", "eaft")}
    assert {(c["arm"], c["method"]) for c in summary["cells"]} >= {("natural_notags", "masked_sft_pilot"),
                                                                    ("injected_d1", "masked_sft_pilot")}
    for c in summary["cells"]:
        assert {"arm", "method", "lr", "seed", *MEASURES} <= set(c)
        assert c["target_gain"] is not None and c["kl_to_base"] > 0 and c["knowledge_retention"] is not None
        assert c["base_answer_nll"] is not None
    preds = {p["id"]: p for p in summary["predictions"]}
    assert set(preds) >= {"P1", "P2", "P4", "P5"}
    assert all(set(p) >= {"id", "text", "verdict", "value", "se"} and p["verdict"] in
               ("confirmed", "refuted", "unresolved") for p in summary["predictions"])
    for pid in ("P1", "P2", "P3", "P6", "P7"):  # every dose contrast is computed on the tiny profile's two arms
        assert isinstance(preds[pid]["value"], float) and isinstance(preds[pid]["se"], float), preds[pid]
    assert summary["verdict"] in ("supported", "refuted", "unresolved")
    # one seed: no SE over seeds, so no verdict at the wider SE (never the item-SE verdict passed off as one)
    assert summary["verdict_wider_se"] is None
    assert all(p["se_seeds"] is None and p["verdict_wider_se"] is None for p in summary["predictions"])
    table = (out / "table.md").read_text()
    assert f"Verdict on the paper's causal claim: {summary['verdict']}" in table
    assert "## Each method minus SFT on the same arm" in table
    # every prediction row has its 7 cells (P4's |EAFT - SFT| is escaped), every re-decided row its 5
    prereg, _, two_way = table.partition("### The same predictions with the two-way SE")
    assert two_way, "the v1 predictions re-decided with the two-way SE are reported beside the verdict"
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 8 for line in prereg.splitlines() if line.startswith("| P"))
    redecided = [line for line in two_way.split("\n## ")[0].splitlines() if line.startswith("| P")]
    assert len(redecided) == 7 and all(line.count("|") == 6 for line in redecided)
    assert summary["verdict_two_way"] in ("supported", "refuted", "unresolved")
    assert all(p["verdict"] == "unresolved" for p in summary["predictions_two_way"])  # one seed decides nothing
    for f in ("table.md", "dose_response.png", "pareto.png", "open_questions.png"):
        assert (out / f).stat().st_size > 0, f
    # each arm in its own folder, with its own Masked-SFT precompute made from its own bytes
    arms = {p.parent.name: p for p in (tmp_path / "work" / "arms").glob("*/train.jsonl")}
    assert set(arms) == {"natural_notags", "injected_d1"}
    pre = {a: precomputed_path(p, "tiny") for a, p in arms.items()}
    assert len(set(pre.values())) == 2
    for a, path in pre.items():
        assert json.loads(path.read_text())["data_sha256"] == sha256_file(arms[a])
    # the arms are committed in the report folder (the independent variable, not bit-stable across machines) and
    # trained from byte-identical copies; the runs pair over the base evaluation's own general_kl answers
    kept_arms = {p.stem: p for p in (out / "arms").glob("*.jsonl")}
    assert set(kept_arms) == set(arms) and all(kept_arms[a].read_bytes() == arms[a].read_bytes() for a in arms)
    assert list(out.glob("injected_heldout-*.jsonl"))
    settings = json.loads((tmp_path / "metrics" / summary["cells"][0]["run"] / "general_kl.json").read_text())["settings"]
    assert settings["base_answers"].endswith("study-tiny-base/items/general_kl.jsonl")
    base_settings = json.loads((tmp_path / "metrics" / "study-tiny-base" / "general_kl.json").read_text())["settings"]
    assert base_settings["base_answers"] == "greedy"
    # the probe is disjoint from every arm's texts and from the held-out target; its items carry the fact ids
    probe = [json.loads(x) for x in (tmp_path / "work" / "probe.jsonl").read_text().splitlines()]
    facts = {f["id"]: f for f in sd.read_facts(FACTS)}
    texts = [m["content"] for p in arms.values() for r in map(json.loads, p.read_text().splitlines())
             for m in r["messages"]]
    assert probe and not sd.disjoint_facts([facts[r["id"]] for r in probe], texts)[1]
    items = (tmp_path / "metrics" / "study-tiny-base" / "items" / "knowledge_nll.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in items] == [r["id"] for r in probe]
    # the study writes nothing under results/metrics (make tables reads it), whatever it did in tmp
    assert snapshot(REPO / "results" / "metrics") == repo_metrics
    assert not (REPO / "results" / "metrics" / "study-tiny-base").exists()

    first_bytes = (out / "timing.json").read_bytes()
    first = json.loads(first_bytes)
    kept = {f: (out / f).stat().st_mtime_ns for f in ("open_questions.json", "probe.json", "arms.json")}
    again = run_study(tmp_path)  # a second invocation trains and evaluates nothing
    assert again.stdout.count("already trained") == TINY_CELLS and "[train]" not in again.stdout
    assert kept == {f: (out / f).stat().st_mtime_ns for f in kept}  # nothing on the base model made again
    # it measured nothing, so timing.json is left as the invocation that did the work wrote it
    assert "nothing trained or measured" in again.stdout
    assert (out / "timing.json").read_bytes() == first_bytes

    # a cell trained again in this invocation is evaluated again in full: no metric of the old weights survives
    retrained = summary["cells"][0]["run"]
    shutil.rmtree(tmp_path / "runs" / retrained)
    before = snapshot(tmp_path / "metrics")
    third = run_study(tmp_path)
    assert third.stdout.count("already trained") == TINY_CELLS - 1
    # timing.json keeps the times of the invocation that did each piece of work, marked cached, and this one's
    timing = json.loads((out / "timing.json").read_text())
    for stage in ("arms: training files and measured conflict shares", "knowledge probe",
                  "open questions: gate and top-K vs temperature", "evaluate the base model",
                  f"evaluate {summary['cells'][1]['run']}"):
        assert timing[stage] == f"{first[stage]:.0f} (cached)", (stage, first[stage], timing[stage])
    assert isinstance(timing[f"train {retrained}"], float) and timing["total (this invocation)"] != first[
        "total (this invocation)"]
    after = snapshot(tmp_path / "metrics")
    results = [k for k in before if k.startswith(retrained + "/") and k.endswith(".json")]
    assert len(results) >= 3 and all(after[k] != before[k] for k in results), results  # no injected row: 3
    others = [k for k in before if not k.startswith(retrained + "/") and "_cache" not in k]
    assert all(after[k] == before[k] for k in others)

    # reuse_kept: a fresh checkout (no runs/, no work_dir) continues from the committed logs and metrics
    summary = json.loads((out / "summary.json").read_text())
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "work")
    committed = snapshot(out / "arms") | {p.name: p.stat().st_mtime_ns for p in out.glob("injected_heldout-*")}
    reused = run_study(tmp_path, "reuse_kept=true")
    assert reused.stdout.count("trained and evaluated before") == TINY_CELLS
    # the committed arms and injected held-out rows are used as they are, not rebuilt
    assert committed == snapshot(out / "arms") | {p.name: p.stat().st_mtime_ns for p in out.glob("injected_heldout-*")}
    assert "[train]" not in reused.stdout and not list((tmp_path / "runs").glob("study-*"))
    assert json.loads((out / "summary.json").read_text()) == summary
    # a kept run trained on other bytes than the arm file holds now is retrained, with the reason, never mixed in
    info = out / "runs" / retrained / "run_info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "data_sha256": "0" * 64}))
    mixed = run_study(tmp_path, "reuse_kept=true")
    assert mixed.stdout.count("trained and evaluated before") == TINY_CELLS - 1
    assert f"{retrained}: the kept run was trained on other data" in mixed.stdout and "[train]" in mixed.stdout
    assert json.loads(info.read_text())["data_sha256"] != "0" * 64

    (out / "table.md").unlink()  # the report re-renders from the metrics alone
    rendered = run_study(tmp_path, "report_only=true")
    assert "[train]" not in rendered.stdout
    assert "| injected_d1 | masked_sft_pilot |" in (out / "table.md").read_text()


@pytest.mark.slow
def test_the_tiny_v2_profile_end_to_end(tmp_path):
    """The v2 pipeline on the tiny model (minutes): control arm, complete on-policy answers, answer-only probe,
    the two-way report with its verdict, every cell recording its precision and library versions."""
    from analysis.study_report_v2 import PREDICTIONS

    run_study(tmp_path, profile="tiny_v2")
    out = tmp_path / "report"
    summary = json.loads((out / "summary.json").read_text())
    assert [a["name"] for a in summary["arms"]] == ["natural_notags", "control", "on_policy", "injected_d1"]
    assert summary["roles"] == {"lo": "natural_notags", "ctl": "control", "op": "on_policy", "hi": "injected_d1"}
    preds = {p["id"]: p for p in summary["predictions"]}
    assert set(preds) == {p[0] for p in PREDICTIONS}
    for pid in ("P1", "C1", "P2", "P4", "P6"):  # every seed-paired contrast has its estimator, SE, df
        p = preds[pid]
        assert p["estimator"].startswith("two-way") and p["seeds"] == 2 and p["se"] is not None, p
        assert p["verdict"] in ("confirmed", "refuted", "unresolved")
    assert summary["verdict"] in ("supported", "partly supported", "refuted", "unresolved")
    # the preregistration's formula without the estimator's floor, decided beside it (results/LOG.md)
    assert summary["verdict_unfloored"] in ("supported", "partly supported", "refuted", "unresolved")
    assert all(p["verdict_unfloored"] in ("confirmed", "refuted", "unresolved") for p in preds.values())
    assert "Verdict without the floor" in (out / "table.md").read_text() and summary["forgetting"]
    assert summary["environment"]["precision"] == "fp32" and "transformers" in summary["environment"]["packages"]
    on_policy = json.loads((out / "on_policy.json").read_text())
    assert on_policy["settings"]["mode"] == "complete" and on_policy["rows"] == 16
    probe = [json.loads(x) for x in (tmp_path / "work" / "probe.jsonl").read_text().splitlines()]
    assert probe and all("answer" in r for r in probe)
    items = json.loads((tmp_path / "metrics" / "study-tiny_v2-base" / "knowledge_nll.json").read_text())
    assert items["metric"] == "answer_nll_per_token" and items["settings"]["measure"] == "answer_nll"
    for run in (out / "runs").iterdir():
        info = json.loads((run / "run_info.json").read_text())
        assert info["packages"]["torch"] and "bf16: false" in (run / "config.yaml").read_text()
    assert (out / "forgetting.png").stat().st_size > 10_000
    # the control's substitution count beside the injected arm's, from the plans that built the committed arms
    subs = json.loads((out / "substitutions.json").read_text())
    assert subs["same_as_committed"] and subs["control_wanted"] == subs["injected"] >= subs["control"]
    assert [r["control"] <= r["injected"] for r in subs["rows"]] == [True] * 16
    assert subs["rows_with_fewer"] == sum(r["control"] < r["injected"] for r in subs["rows"])
    assert summary["substitutions"]["control"] == subs["control"] == sum(r["control"] for r in subs["rows"])
    assert "Substitutions (substitutions.json)" in (out / "table.md").read_text()


def test_the_study_keeps_its_metrics_out_of_results_metrics():
    cfg = compose("study_profile=full")
    assert cfg.metrics_dir == "results/study/metrics"
    for profile in ("tiny", "quick", "full"):
        c = compose(f"study_profile={profile}")
        assert not (REPO / c.metrics_dir).resolve().is_relative_to(REPO / "results" / "metrics")


def test_the_pilot_measures_every_arm_and_candidate_dose_without_training(tmp_path, monkeypatch):
    from experiments import study_setup
    from experiments.study import main

    cfg = compose("model=tiny", "data=tiny", "study_profile=tiny", "pilot_only=true", f"out_dir={tmp_path / 'r'}",
                  f"runs_dir={tmp_path / 'runs'}", f"work_dir={tmp_path / 'w'}")
    main(cfg)
    pilot = json.loads((tmp_path / "r" / "pilot.json").read_text())
    assert list(pilot["arms"]) == ["natural_notags", "injected_d0.5", "injected_d1", "natural", "on_policy"]
    assert all(0 <= a["measured_conflict_share"] <= 1 and a["n_tokens"] > 0 for a in pilot["arms"].values())
    assert pilot["data_sha256"] and not list((tmp_path / "runs").glob("study-*"))
    again = compose("model=tiny", "data=tiny", "study_profile=tiny", "pilot_only=true", f"out_dir={tmp_path / 'r'}",
                    f"runs_dir={tmp_path / 'runs'}", f"work_dir={tmp_path / 'w'}", "study_profile.pilot_doses=[1.0,0.25]")
    measured = []
    share = study_setup.conflict_share
    monkeypatch.setattr(study_setup, "conflict_share", lambda *a: measured.append(1) or share(*a))
    after = main(again)["arms"]
    assert {k: after[k] for k in pilot["arms"]} == pilot["arms"] and list(after)[-1] == "injected_d0.25"
    assert len(measured) == 1  # only the new dose: a resumed pilot measures nothing twice


def git_times(*args: str) -> list[int]:
    out = subprocess.run(["git", "log", "--format=%ct", *args], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return [int(t) for t in out.split()]


@pytest.mark.parametrize("prereg, results", [
    ("results/study/PREREGISTRATION.md", "results/study/metrics/study-full-*"),
    ("results/study/v2/PREREGISTRATION.md", "results/study/metrics/study-v2-*")])
def test_each_preregistration_was_last_changed_before_its_first_result(prereg, results):
    """A preregistration binds only if its final text was committed before the first result it predicts (commit
    times; a shallow clone holds less history, and then this checks only the commits it has)."""
    last_text = git_times("-1", "--", prereg)
    first_result = git_times("--diff-filter=A", "--", results)
    assert last_text, f"{prereg} was never committed"
    if first_result:
        assert last_text[0] <= min(first_result), f"{prereg} was changed after its first result ({results})"


def test_the_v2_report_says_after_which_arms_sft_forgets_and_when_none_does():
    from analysis.study_report_v2 import sft_forgetting

    def ret(value, se):
        return {"knowledge_retention": {"value": value, "se": se, "df": 4.0, "t_crit": 2.776, "seeds": 5}}

    names = ["natural_notags", "control", "injected_d1"]
    none = {("natural_notags", "sft"): ret(-0.02, 0.01), ("control", "sft"): ret(0.3, 0.05),
            ("injected_d1", "sft"): ret(-0.05, 0.02), ("injected_d1", "eaft"): ret(-0.5, 0.01)}
    arms, text = sft_forgetting(none, names)  # -0.05 is 2.5 SE below zero: not beyond t(4) = 2.78
    assert arms == [] and text.startswith("No arm makes SFT forget") and "not forgetting" in text
    some = {**none, ("injected_d1", "sft"): ret(-0.06, 0.02)}
    arms, text = sft_forgetting(some, names)
    assert arms == ["injected_d1"] and "after injected_d1; after natural_notags, control it does not" in text
    assert sft_forgetting({}, names)[0] == [] and "no arm" in sft_forgetting({}, names)[1]


def test_the_v2_report_counts_the_controls_substitutions_and_says_when_they_are_a_rebuilds():
    from analysis.study_report_v2 import substitutions_text

    s = {"injected_arm": "injected_d1", "injected": 1000, "control": 800, "rows_with_fewer": 3,
         "same_as_committed": True, "rows": [{"injected": 10, "control": 10}] * 61 + [{"injected": 10, "control": 5}] * 3}
    text = substitutions_text(s)
    assert "replaces 1000 tokens" in text and "replaces 800 (80%), fewer in 3 of 64 rows" in text
    assert "rebuilt" not in text
    assert "describe the rebuild, not the arms trained" in substitutions_text({**s, "same_as_committed": False})
    assert "replaces 0," in substitutions_text({**s, "injected": 0, "control": 0})  # a model confident nowhere
