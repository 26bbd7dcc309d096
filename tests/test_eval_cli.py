"""End to end on the tiny random model: every benchmark kind through the real CLI on the fixtures, the schema,
run-dir resolution, resume, and bad input. Fast tier (about a minute on 2 cores)."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from evaluation import evaluate as ev
from evaluation.benchmarks import with_declared
from evaluation.schema import read_result
from evaluation.sources import DataFormatError
from tests.conftest import REPO

F = REPO / "tests" / "fixtures" / "eval"
FIXTURES = [
    f"bench.gsm8k.local.data_files=[{F}/gsm8k.jsonl]",
    f"bench.aime24.local.data_files=[{F}/aime24.jsonl]",
    f"bench.aime25.local.data_files=[{F}/aime25.jsonl]",
    f"bench.bfcl_v3.local.data_dir={F}/bfcl",
    "bench.bfcl_v3.categories=[simple,multiple,parallel,parallel_multiple,irrelevance,live_simple,live_relevance]",
    f"bench.mmlu.local.data_dir={F}/mmlu", "bench.mmlu.num_fewshot=1",  # the fixture has one dev row a subject
    f"bench.ifeval.local.data_files.train={F}/ifeval/input_data.jsonl",
    f"bench.cluewsc.local.data_files.validation={F}/cluewsc/dev.json",
    f"bench.medmcqa.local.data_files.validation={F}/medmcqa/validation.jsonl",
    f"bench.medqa.local.data_files.test={F}/medqa/test_5options.jsonl", "bench.medqa.source=local",
    f"bench.pubmedqa.local.data_files.test={F}/pubmedqa/ori_pqal.json",
    f"bench.arc_easy.local.data_files.validation={F}/arc_easy/validation.jsonl",
    f"bench.boolq.local.data_files.validation={F}/boolq/validation.jsonl",
    f"bench.hellaswag.local.data_files.validation={F}/hellaswag/validation.jsonl",
    f"bench.target_nll.local.data_files=[{F}/chat_heldout.jsonl]",
    f"bench.general_kl.local.data_files=[{F}/general_prompts.jsonl]",
]
ALL = ["gsm8k", "aime24", "aime25", "bfcl_v3", "mmlu", "ifeval", "cluewsc", "medmcqa", "medqa", "pubmedqa",
       "arc_easy", "boolq", "hellaswag", "target_nll", "general_kl"]


def cfg_for(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose("eval", overrides=with_declared([f"out_dir={tmp_path / 'metrics'}", "progress=false", "max_new_tokens=8",
                                          *FIXTURES, *overrides]))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, nltk_punkt):
    """One CLI call over every benchmark kind (the way `make eval` runs it)."""
    out = tmp_path_factory.mktemp("cli")
    cmd = [sys.executable, "-m", "evaluation.evaluate", "model=tiny", f"benchmarks=[{','.join(ALL)}]", "limit=2",
           f"out_dir={out}", "max_new_tokens=8", "progress=false", *FIXTURES]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "tiny", proc.stdout


def test_cli_writes_a_valid_result_per_benchmark(cli_run):
    res_dir, stdout = cli_run
    for name in ALL:
        r = read_result(res_dir / f"{name}.json")  # schema-validated
        assert r["benchmark"] == name and r["run"] == "tiny" and r["method"] == "base" and r["step"] is None
        assert r["model"].startswith("tiny (from_config")
        assert r["n"] == (2 if name not in ("mmlu", "bfcl_v3") else r["n"]) and r["n_runs"] == 1
        items = [json.loads(line) for line in (res_dir / "items" / f"{name}.jsonl").read_text().splitlines()]
        assert len(items) == r["n"], name
        assert f"tiny {name}:" in stdout
    mmlu = read_result(res_dir / "mmlu.json")
    assert mmlu["n"] == 4 and mmlu["settings"]["num_fewshot"] == 1          # 2 per subject folder, 2 subjects
    ife = read_result(res_dir / "ifeval.json")
    assert ife["metric"] == "prompt_level_strict_acc"
    assert {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
            "inst_level_loose_acc"} <= set(ife["metrics"])
    medqa = read_result(res_dir / "medqa.json")
    assert medqa["settings"]["variant"] == "5 options" and medqa["metrics"]["n_options"] == 5
    bf = read_result(res_dir / "bfcl_v3.json")
    assert bf["metric"] == "ast_summary" and bf["settings"]["mode"] == "prompt"  # the tiny template has no tools
    kl = read_result(res_dir / "general_kl.json")
    assert kl["value"] == pytest.approx(0, abs=1e-6)  # the base model compared with itself
    nll = read_result(res_dir / "target_nll.json")
    assert nll["metric"] == "nll_per_token" and nll["value"] > 3  # a random 384-token model: about ln 384 = 6
    gsm = read_result(res_dir / "gsm8k.json")
    assert gsm["settings"]["prompt"].startswith("Please reason step by step") and gsm["settings"]["temperature"] == 0


def test_pubmedqa_dict_format_is_read(cli_run):
    res_dir, _ = cli_run
    pm = [json.loads(x) for x in (res_dir / "items" / "pubmedqa.jsonl").read_text().splitlines()]
    assert len(pm) == 2 and all(r["doc"]["final_decision"] in ("yes", "no", "maybe") for r in pm)


def test_aime24_keeps_only_2024_from_the_hub_set(monkeypatch, tmp_path):
    """AI-MO/aimo-validation-aime holds AIME 2022-2024; the Hub path keeps the 2024 problems (by url)."""
    import evaluation.generative as gen

    rows = [json.loads(x) for x in (F / "aime24.jsonl").read_text().splitlines()]
    monkeypatch.setattr(gen, "load_items", lambda bench: ([dict(r, _where="hub") for r in rows],
                                                          "AI-MO/aimo-validation-aime:train"))
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        bench = dict(compose("eval", overrides=with_declared(["model_spec=tiny"])).bench.aime24)
    items, source = gen.math_items(bench | {"hub": dict(bench["hub"])})
    assert [it["id"] for it in items] == ["60", "61"] and "2024_AIME" in source
    assert items[0]["messages"][0] == {"role": "system", "content": bench["prompt"]} and items[0]["gold"] == "1"


def fake_run(tmp_path):
    """A run directory as training.train leaves it: config.yaml, checkpoint-3/ (no tokenizer, marked complete),
    final/."""
    run = tmp_path / "runs" / "tiny-math-mini-eaft-s1"
    mcfg = yaml.safe_load((REPO / "configs" / "model" / "tiny.yaml").read_text())
    for k in ("name_or_path", "tokenizer"):
        mcfg[k] = str(REPO / mcfg[k])
    (run).mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": mcfg, "method": {"name": "eaft"},
                                                      "data": {"name": "math-mini"}}))
    from common.generation import load_for_generation

    torch.manual_seed(1)  # different weights from the base (seed 0): KL > 0
    model, tok = load_for_generation(mcfg)
    model.save_pretrained(run / "checkpoint-3")
    (run / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    from training.checkpoints import write_marker

    write_marker(run / "checkpoint-3")  # training.train marks every checkpoint it finished saving
    model.save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    (run / "run_info.json").write_text(json.dumps({"global_step": 6}))
    return run


def test_run_dir_checkpoint_and_drift(tmp_path):
    run = fake_run(tmp_path)
    r = ev.main(cfg_for(tmp_path, f"model_spec={run / 'checkpoint-3'}", "benchmarks=[general_kl,gsm8k]", "limit=2"))
    kl, gsm = r["general_kl"], r["gsm8k"]
    assert kl["run"] == run.name and kl["method"] == "eaft" and kl["step"] == 3 and kl["domain"] == "math"
    assert kl["value"] > 0 and kl["metrics"]["base_answer_nll"] > 0       # tuned != base
    assert (tmp_path / "metrics" / run.name / "checkpoint-3" / "general_kl.json").exists()  # Fig. 2a layout
    assert gsm["model"] == str(run / "checkpoint-3")
    final = ev.main(cfg_for(tmp_path, f"model_spec={run}", "benchmarks=[target_nll]"))["target_nll"]
    assert final["step"] == 6 and (tmp_path / "metrics" / run.name / "target_nll.json").exists()
    # the base answers are cached once for every run compared with the same base model
    assert len((tmp_path / "metrics" / "_cache" / "general_kl_base_answers.jsonl").read_text().splitlines()) == 2


def test_resume_reuses_finished_items(tmp_path, monkeypatch):
    import evaluation.generative as gen

    calls = []
    real = gen.generate

    def counting(model, convs, **kw):
        calls.append(len(convs))
        return real(model, convs, **kw)

    monkeypatch.setattr(gen, "generate", counting)
    base = ["model_spec=tiny", "benchmarks=[gsm8k]", "chunk_size=2"]
    first = ev.main(cfg_for(tmp_path, *base))["gsm8k"]
    assert sum(calls) == 4 and calls == [2, 2]
    items = tmp_path / "metrics" / "tiny" / "items" / "gsm8k.jsonl"
    rows = items.read_text().splitlines()
    items.write_text("\n".join(rows[:3]) + "\n" + rows[3][:20])  # an interrupted run: last row half-written
    calls.clear()
    again = ev.main(cfg_for(tmp_path, *base))["gsm8k"]
    assert calls == [1]  # only the unfinished item is generated again
    assert again["value"] == first["value"] and len(items.read_text().splitlines()) == 4
    calls.clear()
    ev.main(cfg_for(tmp_path, *base, "max_new_tokens=9"))  # another setting: nothing reusable
    assert sum(calls) == 4


def test_lm_eval_resume_uses_the_cache(tmp_path, monkeypatch):
    base = ["model_spec=tiny", "benchmarks=[arc_easy]"]
    first = ev.main(cfg_for(tmp_path, *base))["arc_easy"]
    from lm_eval.models.huggingface import HFLM

    def boom(*a, **k):
        raise AssertionError("the model was called although every request is cached")

    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", boom)
    again = ev.main(cfg_for(tmp_path, *base))["arc_easy"]
    assert again["value"] == first["value"] and again["n"] == 3


def test_bad_input_errors(tmp_path, nltk_punkt):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        ev.main(cfg_for(tmp_path, "model_spec=./does_not_exist", "benchmarks=[gsm8k]"))
    with pytest.raises(ValueError, match="unknown benchmark.*'gsm9k'.*known: .*gsm8k"):
        ev.main(cfg_for(tmp_path, "model_spec=tiny", "benchmarks=[gsm9k]"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: no answer field"):
        ev.main(cfg_for(tmp_path, "model_spec=tiny", "benchmarks=[gsm8k]", f"bench.gsm8k.local.data_files=[{bad}]"))
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\nnot json\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: not valid JSON"):
        ev.main(cfg_for(tmp_path, "model_spec=tiny", "benchmarks=[gsm8k]", f"bench.gsm8k.local.data_files=[{bad}]"))
    bad.write_text('{"id": "x", "question": "Q?", "choices": {"text": ["a"], "label": ["A"]}}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: missing field 'answerKey'"):
        ev.main(cfg_for(tmp_path, "model_spec=tiny", "benchmarks=[arc_easy]",
                        f"bench.arc_easy.local.data_files.validation={bad}"))
    with pytest.raises(DataFormatError, match=r"bench.ifeval.local.data_files"):
        ev.main(cfg_for(tmp_path, "model_spec=tiny", "benchmarks=[ifeval]", "bench.ifeval.source=local",
                        f"bench.ifeval.local.data_files.train={tmp_path / 'missing.jsonl'}"))


def test_unknown_suite_and_run():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"suite/nope(.|\n)*mini"):  # Hydra lists the suites
        cfg_for(REPO, "model_spec=tiny", "suite=nope")
    with pytest.raises(FileNotFoundError, match=r"'runs/no-such-run' not found.*configs/model \(.*tiny"):
        ev.resolve_model("runs/no-such-run")  # looks like org/name, but runs/ is a local folder: not a Hub id


def test_generative_multiple_choice(tmp_path, monkeypatch):
    """mode=generate (MedEvalKit style): options lettered in the prompt, the letter read from the completion."""
    from omegaconf import OmegaConf

    import evaluation.generative as gen
    from evaluation.mcq import mcq_items

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        b = OmegaConf.to_container(compose("eval", overrides=with_declared(["model_spec=tiny", *FIXTURES])).bench, resolve=True)
    medqa = b["medqa"] | {"name": "medqa"}
    items, _ = mcq_items(medqa)
    assert [it["gold"] for it in items] == ["B", "B"] and items[0]["letters"] == "ABCDE"
    assert "E. Skin biopsy" in items[0]["messages"][0]["content"]
    four = medqa | {"local": medqa["local"] | {"data_files": {"test": str(F / "medqa/test_4options.jsonl")}}}
    assert [it["letters"] for it in mcq_items(four)[0]] == ["ABCD", "ABCD"]  # GBaker's sent1/ending0-3 format
    pub, _ = mcq_items(b["pubmedqa"] | {"name": "pubmedqa"})
    assert [it["gold"] for it in pub] == ["A", "C", "B"] and "Mitochondrial dynamics" in pub[0]["messages"][0]["content"]

    answers = iter(["The answer is C.", "<think>A or B?</think>\\boxed{B}", "I am not sure."])  # right, right, none
    monkeypatch.setattr(gen, "generate", lambda model, convs, **kw: [[next(answers)] for _ in convs])
    r = ev.main(cfg_for(tmp_path, "model_spec=tiny", "benchmarks=[medmcqa]", "bench.medmcqa.mode=generate"))["medmcqa"]
    assert r["metric"] == "accuracy" and r["value"] == pytest.approx(200 / 3) and r["n"] == 3
    assert r["metrics"]["no_answer_rate"] == pytest.approx(100 / 3)
    assert r["settings"]["scoring"] == "generative multiple choice"


def test_base_answers_are_shared_by_the_base_and_its_runs(tmp_path):
    """general_kl compares every model with the base on the same base answers: the base's own evaluation and a
    run's evaluation reuse one cached set, also when they name the prompt file by a relative and an absolute
    path (greedy decoding in fp32 can differ between processes, so answers are generated once)."""
    run = fake_run(tmp_path)
    rel = (F / "general_prompts.jsonl").relative_to(REPO)
    # dtype= applies to the reference model too (it once changed only the evaluated one, so the base's own
    # evaluation generated its answers in bf16 and its runs' evaluations in fp32)
    ev.main(cfg_for(tmp_path, "model_spec=tiny", "benchmarks=[general_kl]", "limit=2", "dtype=bfloat16",
                    f"bench.general_kl.local.data_files=[{rel}]"))
    ev.main(cfg_for(tmp_path, f"model_spec={run}", "benchmarks=[general_kl]", "limit=2", "dtype=bfloat16"))
    cache = (tmp_path / "metrics" / "_cache" / "general_kl_base_answers.jsonl").read_text().splitlines()
    assert len(cache) == 2
    answers = {}
    for name in ("tiny", run.name):
        rows = [json.loads(x) for x in (tmp_path / "metrics" / name / "items" / "general_kl.jsonl").read_text()
                .splitlines()]
        answers[name] = [(r["base_answer"], r["tokens"]) for r in rows]
    assert answers["tiny"] == answers[run.name]


def test_model_path_evaluates_a_configured_model_from_another_copy(tmp_path):
    """model=<configs/model name> model_path=<folder>: the config's settings and name, the folder's weights."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text("{}")
    m = ev.with_weights(ev.resolve_model("qwen3-4b-thinking"), "qwen3-4b-thinking", str(copy))
    assert m["run"] == "qwen3-4b-thinking" and m["method"] == "base" and m["base_model_cfg"] == m["model_cfg"]
    assert m["model_cfg"]["name_or_path"] == str(copy) and m["model_cfg"]["thinking"] is True
    with pytest.raises(ValueError, match="not one"):
        ev.with_weights(ev.resolve_model("Qwen/Qwen3-4B"), "Qwen/Qwen3-4B", str(copy))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ev.with_weights(ev.resolve_model("qwen3-4b"), "qwen3-4b", str(tmp_path))
