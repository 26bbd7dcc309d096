"""The CPU rehearsal of the paper's configurations (`make rehearsal`, tier `rehearsal`): every configs/experiment/
file composed exactly as a cluster job composes it, with only the weights replaced by a miniature of the same
architecture (tools/miniature.py: class, config keys, tied or untied head, vocabulary, real chat template, random
weights), the data by a miniature of the same domain's format built by the real pipeline (math with its reference
teacher and math-verify, medical with its reasoning in the thinking template, agent tool calls), and the sizes
(steps, global batch) made small. On the CPU the paper trainer needs `use_cpu: true` for bf16; nothing else of it
changes (ZeRO-3, bf16, gradient checkpointing, cosine with warm-up, AdamW, clipping).

1. each miniature keeps its real model's architecture facts and chat template;
2. one experiment of each table and each architecture family (Qwen3-4B-Instruct: Tables 1 and 3, Qwen3-4B-Thinking:
   Table 2, GLM-4-9B, Qwen2.5-32B) trains two optimizer steps through torchrun on 2 CPU ranks under DeepSpeed
   ZeRO-3, saving a checkpoint at each step;
3. every other experiment takes an optimizer step on its miniature (one torchrun process, a Hydra multirun), FLOW and
   Masked SFT after the precompute pass they need;
4. the math build's cluster teacher: vLLM's CPU build serving the Qwen3 miniature answers every prompt, math-verify
   judges every answer (all wrong: random weights), and finalize refuses the short set;
5. table1-eaft as slurm/submit.py queues it on the one-node SLURM cluster: training on 2 torchrun ranks, killed and
   requeued mid-run, resumed; the checkpoint sweep and the base row on Table 1's suite through vLLM's CPU build;
   Table 1 in the paper's layout naming the step the selection used (~15 min on 2 AVX2 cores);
6. table2-eaft and table3-eaft the same way, without the requeue and with the HF backend (vLLM's path is 5's): 2
   ranks, the sweep's final model and the base row on Table 2's and Table 3's suites (Table 2 scored by generation,
   the answer after the reasoning), Tables 2 and 3 in the paper's layout (~1 min each).

    .venv/bin/python -m pytest -m rehearsal tests/test_rehearsal.py       (make rehearsal)

Needs g++ for DeepSpeed's JIT CPU op (component `distributed`, as tests/test_distributed.py), .venv-vllm for 4 and 5
(`vllm`), slurm-wlm and munge for 5 and 6 (`slurm`).
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import need
from tests.test_data_build import FIX, make_cfg, math_cfg

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.rehearsal
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
# one experiment of each table and each architecture family
REPRESENTATIVES = ["table1-eaft", "table2-eaft", "table3-eaft", "table1-glm4-9b-eaft", "table1-qwen2.5-32b-eaft"]
# Found by this rehearsal: the fused loss under ZeRO-3 on 2 ranks crashed in backward when the head is not tied to
# the embedding (GLM-4-9B, Qwen2.5-32B): "The size of tensor a (0) must match the size of tensor b (64)", the
# hand-gathered head weight's gradient meeting its empty local partition. Fixed in eaft_loss.objective (the fused
# loss runs as the head module's forward, so ZeRO-3's own hooks gather and reduce it; tests/test_linear_losses.py
# compares fused with unfused under ZeRO-3 for both heads). Both heads run fused here, and the untied ones unfused too.
UNTIED = [e for e in REPRESENTATIVES if "glm4" in e or "qwen2.5" in e]   # tie_word_embeddings: false
RUNS = [pytest.param(e, [], id=e) for e in REPRESENTATIVES]
RUNS += [pytest.param(e, ["fused_loss=false"], id=f"{e}-unfused") for e in UNTIED]
MINI_MODELS = REPO / "data" / "rehearsal" / "models"  # git-ignored; rebuilt only when a recipe changes
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"


def experiment(name: str) -> dict:
    """{model, data, method} an experiment file composes (its defaults list)."""
    text = (REPO / "configs" / "experiment" / f"{name}.yaml").read_text()
    out = {}
    for key in ("model", "method", "data"):
        out[key] = next(line.split(":")[1].strip() for line in text.splitlines()
                        if line.strip().startswith(f"- override /{key}:"))
    return out


def tied(model: str) -> bool:
    return OmegaConf.load(REPO / "configs/model" / f"{model}.yaml").architecture.tie_word_embeddings


@pytest.fixture(scope="module")
def minis() -> Path:
    need("distributed", shutil.which("g++") is not None, "g++ is needed for DeepSpeed's JIT CPU op")
    sys.path.insert(0, str(REPO / "tools"))
    import miniature

    for model in sorted({experiment(e)["model"] for e in EXPERIMENTS}):
        miniature.build(model, MINI_MODELS)
    return MINI_MODELS


@pytest.fixture(scope="module")
def mini_data(minis, tmp_path_factory) -> Path:
    """<root>/<data>/train.jsonl for math, medical and agent, built by data_pipeline.build from the source fixtures
    (each source's published format), lengths measured with the miniature's tokenizer, its real template."""
    from data_pipeline.build import main

    root = tmp_path_factory.mktemp("mini-data")
    main(math_cfg(root / "math", tokenizer=str(minis / "qwen3-4b"), **{"select.n_train": 4}))
    med = [{"name": "medical-o1-en", "adapter": "medical_o1", "loader": "hf", "path": "json", "split": "train",
            "data_files": str(FIX / "medical_o1_sft_en.json")}]
    main(make_cfg("medical", root / "medical", sources=med, tokenizer=str(minis / "qwen3-4b-thinking"),
                  max_length=4096))
    agent = [{"name": n, "adapter": "nemotron_agentic", "loader": "jsonl", "path": str(FIX / f),
              "options": {"non_thinking": "strip"}}
             for n, f in [("tc", "nemotron_agentic_tool_calling.jsonl"), ("ia", "nemotron_agentic_interactive_agent.jsonl")]]
    main(make_cfg("agent", root / "agent", ["allow_short=true"], sources=agent, tokenizer=str(minis / "qwen3-4b"),
                  max_length=4096))
    return root


def torchrun(nproc: int, module: str, *overrides: str, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={port}",
           "-m", module, *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def cluster_overrides(minis: Path, data: Path, out: Path, steps: int, nproc: int) -> list[str]:
    """What replaces the weights, the data and the sizes; the experiment file composes everything else."""
    return [f"model.name_or_path={minis}/${{model.name}}", f"data.train_file={data}/${{data.name}}/train.jsonl",
            f"out_dir={out}", f"++trainer.max_steps={steps}", f"global_batch_size={nproc}", "++trainer.use_cpu=true",
            "trainer.dataloader_num_workers=0", "trainer.save_steps=1"]


def test_miniatures_keep_the_real_architecture(minis):
    from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

    for model in ("qwen3-4b", "qwen3-4b-thinking", "qwen2.5-32b", "glm4-9b"):
        arch = OmegaConf.to_container(OmegaConf.load(REPO / "configs/model" / f"{model}.yaml"))["architecture"]
        cfg = json.loads((minis / model / "config.json").read_text())
        assert cfg["model_type"] == arch["model_type"] and cfg["tie_word_embeddings"] == arch["tie_word_embeddings"]
        # every key the architecture's config class adds to the generic ones is written, as in the real config.json
        own_keys = set(AutoConfig.for_model(arch["model_type"]).to_dict()) - set(PretrainedConfig().to_dict())
        assert own_keys <= set(cfg), (model, own_keys - set(cfg))
        assert type(AutoConfig.from_pretrained(minis / model)).__name__.lower().startswith(
            arch["model_type"].replace(".", ""))
        assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # grouped-query attention, as the real one
        tok = AutoTokenizer.from_pretrained(minis / model)
        assert tok.chat_template == (REPO / arch["chat_template"]).read_text()
        assert cfg["vocab_size"] >= len(tok) and (cfg["vocab_size"] == arch["vocab_size"] or model == "glm4-9b")
        text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
        ids = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        assert tok.decode(ids) == text  # every special token of the template is one token of the tokenizer
        if model == "glm4-9b":
            assert text.startswith("[gMASK]<sop><|user|>\n2+2?") and text.endswith("<|assistant|>")
        elif model == "qwen3-4b-thinking":
            assert text.endswith("<|im_start|>assistant\n<think>\n")
        else:
            assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("name, extra", RUNS)
def test_one_experiment_per_table_and_architecture_trains_on_two_ranks(name, extra, minis, mini_data, tmp_path):
    out = tmp_path / "runs"
    torchrun(2, "training.train", f"experiment={name}", *cluster_overrides(minis, mini_data, out, 2, 2), *extra,
             port=29400 + REPRESENTATIVES.index(name) + 10 * bool(extra))
    e = experiment(name)
    run = out / f"{e['model']}-{e['data']}-{e['method']}-s42"
    info = json.loads((run / "run_info.json").read_text())
    assert info["finished"] and info["world_size"] == 2 and info["global_step"] == 2, info
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.deepspeed.zero_optimization.stage == 3 and cfg.trainer.bf16 and cfg.trainer.gradient_checkpointing
    assert cfg.trainer.lr_scheduler_type == "cosine" and cfg.trainer.learning_rate == 1.0e-5 and cfg.profile == "paper"
    assert (run / "checkpoint-1" / "checkpoint_complete.json").exists() and (run / "final" / "config.json").exists()
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2]


def test_every_other_experiment_takes_an_optimizer_step(minis, mini_data, tmp_path):
    others = [e for e in EXPERIMENTS if e not in REPRESENTATIVES]
    for model in sorted({experiment(e)["model"] for e in others
                         if experiment(e)["method"] in ("flow", "masked_sft")}):  # the base-model pass first
        torchrun(1, "training.precompute", f"model={model}", "data=math", "method=masked_sft",
                 f"model.name_or_path={minis}/{model}", f"data.train_file={mini_data}/math/train.jsonl", port=29420)
    out = tmp_path / "runs"
    # the untied heads (GLM-4, Qwen2.5) with fused_loss=false: the fused ZeRO-3 crash above hits them on 1 rank too
    untied = [e for e in others if not tied(experiment(e)["model"])]
    for group, extra in (([e for e in others if e not in untied], []), (untied, ["fused_loss=false"])):
        torchrun(1, "training.train", "-m", f"experiment={','.join(group)}",
                 *cluster_overrides(minis, mini_data, out, 1, 1), *extra, port=29421 + bool(extra))
    for e in others:
        x = experiment(e)
        info = json.loads((out / f"{x['model']}-{x['data']}-{x['method']}-s42" / "run_info.json").read_text())
        assert info["finished"] and info["global_step"] == 1, (e, info)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    """vLLM's CPU build (`make vllm-venv`): the math teacher's and the evaluation's generation on the cluster path."""
    ok = VLLM_PY.exists() and subprocess.run([str(VLLM_PY), "-c", "import vllm, lm_eval"], capture_output=True,
                                             timeout=300, check=False).returncode == 0
    need("vllm", ok, f"{VLLM_PY} cannot import vllm and lm_eval (make vllm-venv)")
    return VLLM_PY


def test_math_miniature_through_the_vllm_teacher(minis, vllm_python, tmp_path):
    """configs/domain/math.yaml's build with its own teacher settings (backend vllm, sampling at temperature 0.7,
    top_p 0.8, seed 0), only the teacher's weights (the Qwen3 miniature), its sizes and the sources (the fixtures)
    replaced: vLLM's CPU build answers every prompt and math-verify judges every answer. Random weights answer
    nothing right, so finalize refuses to write a set short of select.n_train, as it would on the cluster; the
    refusal must count every prompt as rejected at verification. (The training rehearsals read the math miniature
    the reference teacher builds, mini_data: the same prepare, verification and finalize code.)"""
    from data_pipeline.build import main
    from data_pipeline.shards import ShardStore

    teacher = {"model": str(minis / "qwen3-4b"), "tensor_parallel_size": 1, "max_new_tokens": 16,
               "max_model_len": 1024, "chunk_size": 16, "vllm_python": str(vllm_python)}
    cfg = math_cfg(tmp_path, tokenizer=str(minis / "qwen3-4b"), teacher=teacher, **{"select.n_train": 4})
    assert cfg.domain.teacher.backend == "vllm" and cfg.domain.teacher.temperature == 0.7  # the cluster's teacher
    with pytest.raises(RuntimeError, match=r"only 0 of the 4 training rows") as refused:
        main(cfg)
    records, duplicates = ShardStore(tmp_path / "work" / "generate").records()
    prompts = [json.loads(x) for x in (tmp_path / "work" / "prompts.jsonl").read_text().splitlines()]
    assert duplicates == 0 and sorted(r["id"] for r in records) == sorted(p["id"] for p in prompts)
    verdicts = [resp["verdict"] for r in records for resp in r["responses"]]
    assert len(verdicts) == len(prompts) and set(verdicts) <= {"incorrect", "unparseable", "empty"}, verdicts
    assert any(resp["text"] for r in records for resp in r["responses"]), "vLLM returned only empty completions"
    used = json.loads((tmp_path / "work" / "generate" / "settings.json").read_text())["settings"]["teacher"]
    assert used["backend"] == "vllm" and used["model"] == teacher["model"]
    at_verify = re.search(r"'verify': (\{[^}]*\})", str(refused.value))
    assert at_verify and sum(ast.literal_eval(at_verify.group(1)).values()) == len(prompts), str(refused.value)


EVAL_FIX = REPO / "tests" / "fixtures" / "eval"
# The offline fixtures of Table 1's suite, in each benchmark's published format (tests/fixtures/eval/README.md)
GENERAL_DATA = [f"bench.mmlu.local.data_dir={EVAL_FIX}/mmlu", "bench.mmlu.num_fewshot=1",  # one dev row a subject
                f"bench.ifeval.local.data_files.train={EVAL_FIX}/ifeval/input_data.jsonl",
                f"bench.cluewsc.local.data_files.validation={EVAL_FIX}/cluewsc/dev.json"]
TABLE1_DATA = [f"bench.gsm8k.local.data_files=[{EVAL_FIX}/gsm8k.jsonl]",
               f"bench.aime24.local.data_files=[{EVAL_FIX}/aime24.jsonl]",
               f"bench.aime25.local.data_files=[{EVAL_FIX}/aime25.jsonl]", *GENERAL_DATA]
TABLE2_DATA = [f"bench.medmcqa.local.data_files.validation={EVAL_FIX}/medmcqa/validation.jsonl",
               f"bench.medqa.local.data_files.test={EVAL_FIX}/medqa/test_5options.jsonl", "bench.medqa.source=local",
               f"bench.pubmedqa.local.data_files.test={EVAL_FIX}/pubmedqa/ori_pqal.json", *GENERAL_DATA]
TABLE3_DATA = [f"bench.bfcl_v3.local.data_dir={EVAL_FIX}/bfcl",  # the categories the fixture holds
               ("bench.bfcl_v3.categories=[simple,multiple,parallel,parallel_multiple,irrelevance,live_simple,"
                "live_relevance]"), *GENERAL_DATA]


@pytest.fixture(scope="module")
def rehearsal_cluster(tmp_path_factory, nltk_punkt):
    """The one-node SLURM cluster with a site file as a user writes it: training jobs get both cores and 2 torchrun
    ranks (EAFT_NPROC_PER_NODE, what a GPU node's count sets), every other job one core; offline."""
    from tests.test_slurm import running_cluster

    site = tmp_path_factory.mktemp("site") / "site.sh"
    site.write_text(f'EAFT_PYTHON="{sys.executable}"\nEAFT_NPROC_PER_NODE=2\nEAFT_TRAIN_SBATCH="--cpus-per-task=2"\n'
                    + "".join(f'EAFT_{k}_SBATCH="--cpus-per-task=1"\n' for k in ("DATA", "EVAL", "CPU"))
                    + "eaft_site_setup() { export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled "
                    + f'NLTK_DATA="{nltk_punkt}"; }}\n')
    with running_cluster(site) as env:
        yield env


def ours_row(table: str, model: str, method: str) -> list[str]:
    """The cells of our row under `model`'s `method` in a paper table (Markdown; method "" = the base row)."""
    lines = table.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(f"| {model} | paper |"))
    label = f"| + {method} | paper |" if method else f"| {model} | paper |"
    i = next(i for i in range(start, len(lines)) if lines[i].startswith(label))
    assert lines[i + 1].startswith("|  | ours"), lines[i + 1]  # "ours (<profile>)"
    return [c.strip() for c in lines[i + 1].strip("|").split("|")]


def submit(env: dict, tmp_path: Path, name: str, minis: Path, mini_data: Path, *, steps: int, save_steps: int,
           checkpoints: str, eval_args: list[str]) -> dict[str, str]:
    """`slurm/submit.py --experiments <name>` as a user queues it, with only the weights (the miniature of the
    experiment's model), the data (the domain's miniature) and the sizes replaced; {job name: job id} in the order
    the manifest lists them (the dependency chain's)."""
    logs = tmp_path / "logs"
    train = f"model.name_or_path={minis}/${{model.name}} data.train_file={mini_data}/${{data.name}}/train.jsonl " \
            f"++trainer.max_steps={steps} global_batch_size=2 ++trainer.use_cpu=true " \
            f"trainer.dataloader_num_workers=0 trainer.save_steps={save_steps}"
    cmd = [sys.executable, "slurm/submit.py", "--experiments", name, "--no-build-data", "--gpus-per-node", "0",
           "--runs-dir", str(tmp_path / "runs"), "--metrics-dir", str(tmp_path / "metrics"),
           "--tables-dir", str(tmp_path / "tables"), "--logs", str(logs), "--eval-checkpoints", checkpoints,
           "--train-args", train,
           "--eval-args", " ".join([*eval_args, "limit=2", "max_new_tokens=8", "progress=false"])]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {j["name"]: j["job_id"] for j in json.loads(next(logs.glob("submit-*.json")).read_text())["jobs"]}


def test_table1_eaft_through_submit_on_the_slurm_cluster(minis, mini_data, vllm_python, rehearsal_cluster, tmp_path):
    """table1-eaft as slurm/submit.py queues it on a cluster, with only the weights (the Qwen3 miniature), the data
    (the math miniature) and the sizes replaced: training through train.sbatch (torchrun, 2 CPU ranks, the paper
    trainer under ZeRO-3, a save every 2 of its 4 steps) is killed and requeued after step 2 and resumes; the sweep
    evaluates the last checkpoint of the first epoch and the final model, the base row the miniature's own weights, on
    Table 1's suite through vLLM's CPU build; the tables job writes Table 1 in the paper's layout, our rows naming
    the step the best-checkpoint selection used."""
    from tests.test_slurm import assert_completed, attempts_resumed_in, freeze_training, slurm, wait, wait_for

    env, logs, runs, metrics = rehearsal_cluster, tmp_path / "logs", tmp_path / "runs", tmp_path / "metrics"
    ids = submit(env, tmp_path, "table1-eaft", minis, mini_data, steps=4, save_steps=2, checkpoints="epoch",
                 eval_args=["backend=vllm", f"vllm.python={vllm_python}", *TABLE1_DATA])
    assert list(ids) == ["train-qwen3-4b", "eval-qwen3-4b", "eval-qwen3-4b-base", "tables"]
    run = runs / "qwen3-4b-math-eaft-s42"

    # Preemption mid-training: killed and requeued once checkpoint-2 (of 2, 4) is complete
    wait_for(run / "checkpoint-2" / "trainer_state.json", env, ids["train-qwen3-4b"], logs, timeout=900)
    freeze_training(runs)
    slurm(env, "scontrol", "requeue", ids["train-qwen3-4b"])
    wait(env, list(ids.values()), logs, timeout=2400)
    rec = {name: assert_completed(env, job_id, logs) for name, job_id in ids.items()}
    assert rec["train-qwen3-4b"][0]["Restarts"] == "1"
    train_log = next(logs.glob(f"eaft-train-qwen3-4b-{ids['train-qwen3-4b']}_*.out")).read_text()
    assert set(attempts_resumed_in(train_log)) == {2}, train_log[-3000:]  # each rank says so
    info = json.loads((run / "run_info.json").read_text())
    assert info["finished"] and info["world_size"] == 2 and info["global_step"] == 4, info
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.deepspeed.zero_optimization.stage == 3 and cfg.trainer.bf16 and cfg.profile == "paper"
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2, 3, 4]  # none lost or repeated by the requeue

    # The sweep: 4 rows at global batch 2 are 2 steps an epoch; epoch 1 ends at checkpoint-2, the final model ends
    # epoch 2: checkpoint-2 and the final model
    assert [p.name for p in (metrics / run.name).glob("checkpoint-*")] == ["checkpoint-2"]
    suite = ["aime24", "aime25", "gsm8k", "mmlu", "ifeval", "cluewsc"]
    for where, step in ((metrics / run.name / "checkpoint-2", 2), (metrics / run.name, 4),
                        (metrics / "qwen3-4b", None)):
        for bench in suite:
            result = json.loads((where / f"{bench}.json").read_text())
            assert result["step"] == step and result["n"] >= 1, (where, bench)
            assert result["settings"]["backend"] == "vllm", (where, bench)
    base = json.loads((metrics / "qwen3-4b" / "gsm8k.json").read_text())
    assert base["method"] == "base" and base["model"].endswith("rehearsal/models/qwen3-4b")

    # Table 1 in the paper's layout: the base row and the EAFT row of ours, with the step each used
    table = (tmp_path / "tables" / "table1_math.md").read_text()
    base_row, eaft_row = ours_row(table, "Qwen3-4B-Instruct", ""), ours_row(table, "Qwen3-4B-Instruct", "EAFT")
    assert all(c != "–" for c in base_row[2:9]) and all(c != "–" for c in eaft_row[2:9]), (base_row, eaft_row)
    assert re.search(r"step [24] \(best of 2 evaluated\)", eaft_row[-1]), eaft_row


# {experiment: (model, the paper's name for it, the target benchmarks, their fixtures and the general ones', the
# table file, its columns in the paper's layout)}
TABLES_2_3 = {
    "table2-eaft": ("qwen3-4b-thinking", "Qwen3-4B-Thinking-2507", ["medmcqa", "medqa", "pubmedqa"], TABLE2_DATA,
                    "table2_medical.md", ["MedMCQA", "MedQA", "PubMedQA", "Med", "MMLU", "IFEval", "CLUEWSC",
                                          "General (Δ)"]),
    "table3-eaft": ("qwen3-4b", "Qwen3-4B-Instruct-2507", ["bfcl_v3"], TABLE3_DATA, "table3_agent.md",
                    ["BFCL v3", "MMLU", "IFEval", "CLUEWSC", "General (Δ)"])}


@pytest.mark.parametrize("name", list(TABLES_2_3))
def test_tables_2_and_3_eaft_through_submit_on_the_slurm_cluster(name, minis, mini_data, rehearsal_cluster,
                                                                  tmp_path):
    """table2-eaft (the Qwen3-4B-Thinking miniature on the medical miniature, its reasoning in the thinking template)
    and table3-eaft (the Qwen3-4B-Instruct miniature on the agent tool-call miniature) as slurm/submit.py queues them,
    the same chain as Table 1's above with only the weights, the data and the sizes replaced: training through
    train.sbatch on 2 torchrun ranks under the paper trainer (2 steps), the sweep (`--eval-checkpoints final`, its
    cheapest rule) and the base row on the table's whole suite, and the tables job writing the table in the paper's
    layout, our rows naming the step used. Evaluated with the HF backend, limit 2, 8 new tokens (the thinking
    model's budget included): vLLM's path and the kill and requeue are rehearsed by Table 1's test and would only
    add minutes here. Table 2's every benchmark is scored by generation with the answer after the reasoning, as the
    paper scores its thinking model."""
    from tests.test_slurm import assert_completed, wait, when

    model, paper_name, target, fixtures, table_file, columns = TABLES_2_3[name]
    env, logs, runs, metrics = rehearsal_cluster, tmp_path / "logs", tmp_path / "runs", tmp_path / "metrics"
    ids = submit(env, tmp_path, name, minis, mini_data, steps=2, save_steps=2, checkpoints="final",
                 eval_args=["backend=hf", *fixtures])
    assert list(ids) == [f"train-{model}", f"eval-{model}", f"eval-{model}-base", "tables"]
    wait(env, list(ids.values()), logs, timeout=1800)
    rec = {job: assert_completed(env, job_id, logs) for job, job_id in ids.items()}
    train_end = when(rec[f"train-{model}"][0], "EndTime")
    assert when(rec[f"eval-{model}"][0], "StartTime") >= train_end  # the sweep after its training
    evals = rec[f"eval-{model}"] + rec[f"eval-{model}-base"]
    assert when(rec["tables"][0], "StartTime") >= max(when(r, "EndTime") for r in evals)

    e = experiment(name)
    run = runs / f"{model}-{e['data']}-eaft-s42"
    info = json.loads((run / "run_info.json").read_text())
    assert info["finished"] and info["world_size"] == 2 and info["global_step"] == 2, info
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.deepspeed.zero_optimization.stage == 3 and cfg.trainer.bf16 and cfg.profile == "paper"
    assert cfg.method.name == "eaft" and cfg.data.name == e["data"]
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2]

    # The sweep (final only) and the base row, on the whole suite: the target benchmarks and the general ones
    assert not list((metrics / run.name).glob("checkpoint-*"))
    thinking = model == "qwen3-4b-thinking"
    for where, step in ((metrics / run.name, 2), (metrics / model, None)):
        for bench in [*target, "mmlu", "ifeval", "cluewsc"]:
            result = json.loads((where / f"{bench}.json").read_text())
            assert result["step"] == step and result["n"] >= 1, (where, bench)
            assert result["settings"]["backend"] == "hf", (where, bench)
            if not thinking:
                continue
            # the thinking model: every benchmark generated and graded on the text after the last </think>
            assert result["settings"]["thinking"] is True and result["settings"]["max_new_tokens"] == 8, result
            assert result["settings"]["answer"].startswith("text after the last </think>"), (where, bench, result)
            if bench != "ifeval":  # the multiple-choice ones by generation (MedEvalKit's protocol), not log-likelihood
                assert result["settings"]["scoring"] == "generative multiple choice", (where, bench, result)
                items = [json.loads(x) for x in (where / "items" / f"{bench}.jsonl").read_text().splitlines()]
                assert len(items) == result["n"] and all(  # 8 random tokens never close the reasoning: no answer
                    pred is None for it in items for pred, cut in zip(it["preds"], it["unterminated"]) if cut), items
                assert result["metrics"]["unterminated_reasoning_n"] == sum(sum(it["unterminated"]) for it in items)
    base = json.loads((metrics / model / f"{target[0]}.json").read_text())
    assert base["method"] == "base" and base["model"].endswith(f"rehearsal/models/{model}")

    # The table in the paper's layout: the base row and the EAFT row of ours, with the step each used
    table = (tmp_path / "tables" / table_file).read_text()
    header = next(x for x in table.splitlines() if x.startswith("| model / method |"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["model / method", "source", *columns, "note"]
    base_row, eaft_row = ours_row(table, paper_name, ""), ours_row(table, paper_name, "EAFT")
    for row in (base_row, eaft_row):
        assert len(row) == len(columns) + 3 and all(c != "–" for c in row[2:-1]), (row, table)
    assert "step" not in base_row[-1] and eaft_row[-1].endswith("seed 42: step 2 (best of 1 evaluated)"), (eaft_row, table)
