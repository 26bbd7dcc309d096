"""`make data`: builds the training sets (data/<domain>/train.jsonl + manifest.json). Entry point: build.py.

    build.py       Hydra entry (configs/data_build.yaml, configs/domain/*.yaml): stages, shards, manifest
    sources.py     read a source (Hub, local file, PyPI carrier); adapters.py / agent.py: one adapter per source
    math_build.py  math: prepare -> generate (sharded, resumable; shards.py) -> finalize
    chat_build.py  medical and agent: read -> check -> render -> write (responses come with the data)
    teacher.py     who answers math prompts: vLLM / HF (common.generation) or the reference solution
    verify.py      math-verify checking; sampling.py: dedupe, seeded sampling, shard assignment
    output.py      token lengths under the student's template, over-long filter, outputs and manifest
    assets.py      PyPI-carried model and benchmark files (offline)
"""
