"""evaluation.likelihood against independent references on tiny random models (fast tier)."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from common.generation import load_for_generation
from evaluation.likelihood import kl_to_base, ratio_stats, response_nll
from training.data import IGNORE_INDEX, tokenize_chat

CHATS = [[{"role": "user", "content": "Ava has 3 apples and gets 4 more. How many?"},
          {"role": "assistant", "content": "3 + 4 = 7. The answer is 7."}],
         [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
          {"role": "assistant", "content": "Blue, the colour of a clear sky at noon."}]]


@pytest.fixture(scope="module")
def models(repo):
    cfg = yaml.safe_load((repo / "configs/model/tiny.yaml").read_text())
    for k in ("name_or_path", "tokenizer"):
        cfg[k] = str(repo / cfg[k])
    torch.manual_seed(0)
    base, tok = load_for_generation(cfg)
    torch.manual_seed(1)
    tuned, _ = load_for_generation(cfg)
    return base, tuned, tok


def test_ratio_stats():
    r = ratio_stats([2.0, 6.0, 4.0], [1, 3, 2])
    assert r["value"] == 2.0 and r["stderr"] == 0.0 and r["n"] == 3 and r["tokens"] == 6  # every ratio is 2
    r = ratio_stats([1.0, 3.0], [1, 1])
    assert r["value"] == 2.0 and r["stderr"] == pytest.approx(1.0)  # = sample std / sqrt(n) for equal lengths
    assert ratio_stats([1.0], [2])["stderr"] is None
    with pytest.raises(ValueError):
        ratio_stats([], [])


def test_response_nll_matches_hf_loss_and_ignores_batching(models):
    base, _, tok = models
    ref_sum, ref_tokens = 0.0, 0
    for chat in CHATS:  # reference: HF's own shifted cross-entropy over the same assistant-token labels
        ids, labels, _ = tokenize_chat(tok, chat)
        n = sum(x != IGNORE_INDEX for x in labels[1:])
        with torch.no_grad():
            loss = base(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        ref_sum, ref_tokens = ref_sum + loss.item() * n, ref_tokens + n
    a = response_nll(base, tok, CHATS, batch_size=1, progress=False)
    b = response_nll(base, tok, CHATS, batch_size=3, progress=False)   # right padding must not change it
    assert a["value"] == pytest.approx(ref_sum / ref_tokens, rel=1e-5)
    assert b["value"] == pytest.approx(a["value"], rel=1e-5) and a["tokens"] == ref_tokens and a["n"] == 3
    assert 0 < a["stderr"] < a["value"]
    assert a["value"] == pytest.approx(math.log(len(tok)), rel=0.3)  # a random model is near uniform


def test_kl_to_base(models):
    base, tuned, tok = models
    prompts = [c[:-1] for c in CHATS]
    answers = [c[-1]["content"] for c in CHATS]
    same = kl_to_base(base, base, tok, prompts, base_answers=answers, progress=False)
    assert same["kl"]["value"] == pytest.approx(0, abs=1e-6)
    assert same["base_answer_nll"]["value"] == pytest.approx(response_nll(base, tok, CHATS, progress=False)["value"],
                                                             rel=1e-5)
    d = kl_to_base(tuned, base, tok, prompts, base_answers=answers, batch_size=2, progress=False)
    # reference for the KL: torch's kl_div over the answer positions, conversation by conversation
    kl_sum, n_tok = 0.0, 0
    for chat in CHATS:
        ids, labels, _ = tokenize_chat(tok, chat)
        mask = torch.tensor(labels[1:]) != IGNORE_INDEX
        with torch.no_grad():
            logp = F.log_softmax(tuned(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
            logq = F.log_softmax(base(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
        kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)   # KL(p || q) per position
        kl_sum, n_tok = kl_sum + kl[mask].sum().item(), n_tok + int(mask.sum())
    assert d["kl"]["value"] == pytest.approx(kl_sum / n_tok, rel=1e-4) and d["kl"]["value"] > 0
    assert d["base_answer_nll"]["value"] == pytest.approx(response_nll(tuned, tok, CHATS, progress=False)["value"],
                                                          rel=1e-5)


def test_kl_generates_base_answers_when_missing(models):
    base, tuned, tok = models
    d = kl_to_base(tuned, base, tok, ["Who wrote Hamlet?", "2+2?"], max_new_tokens=6, progress=False)
    assert len(d["base_answers"]) == 2 and d["kl"]["n"] == 2 and d["kl"]["value"] > 0
    with pytest.raises(ValueError, match="base answers"):
        kl_to_base(tuned, base, tok, ["a", "b"], base_answers=["x"], progress=False)


def test_a_conversation_without_supervised_tokens_does_not_shift_the_ids_after_it(models, tmp_path):
    """A row whose answer is cut away by max_length is not scored; the rows after it keep their own ids and sums
    (run_likelihood once zipped the kept row indices with the shorter per_example list)."""
    import json
    from types import SimpleNamespace

    from evaluation.likelihood import run_likelihood

    base, _, tok = models
    long_prompt = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "cut away"}]
    chats = [CHATS[0], long_prompt, CHATS[1], CHATS[2]]
    r = response_nll(base, tok, chats, max_length=64, progress=False)
    assert r["kept"] == [0, 2, 3] and r["n"] == 3
    alone = [response_nll(base, tok, [c], max_length=64, progress=False)["per_example"][0] for c in CHATS]
    assert [t for _, t in r["per_example"]] == [t for _, t in alone]

    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    ctx = SimpleNamespace(pair=lambda: (base, tok), limit=None, subset_seed=0, batch_size=2, progress=False,
                          items_dir=tmp_path / "items")
    bench = {"name": "target_nll", "measure": "response_nll", "source": "local", "max_length": 64,
             "local": {"data_files": [str(data)]}}
    run_likelihood(bench, ctx)
    items = [json.loads(x) for x in (tmp_path / "items/target_nll.jsonl").read_text().splitlines()]
    assert [(i["id"], i["tokens"]) for i in items] == [("0", alone[0][1]), ("2", alone[1][1]), ("3", alone[2][1])]


def test_base_answers_from_a_file_are_used_as_they_are_and_a_gap_is_named(tmp_path):
    import json

    from evaluation.likelihood import answers_from_file

    f = tmp_path / "general_kl.jsonl"
    f.write_text("".join(json.dumps({"id": str(i), "base_answer": f"answer {i}", "kl_sum": 0.0}) + "\n"
                         for i in (0, 2, 5)))
    assert answers_from_file(f, [5, 0]) == ["answer 5", "answer 0"]
    with pytest.raises(ValueError, match=r"general_kl.jsonl has no answer for item\(s\) \['1'\]"):
        answers_from_file(f, [0, 1])
    with pytest.raises(FileNotFoundError, match="base_answers_file"):
        answers_from_file(tmp_path / "missing.jsonl", [0])
