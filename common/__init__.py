"""Helpers every stage imports; nothing here imports a stage (data_pipeline < training < evaluation < analysis).

    files.py         REPO, the path rule (repo_path / repo_relative), atomic writes, JSONL with line numbers, hashes
    chat.py          the chat render: a conversation -> token ids under a tokenizer's chat template
    models.py        tokenizer and causal LM from a model config (Hub id, local folder, or random init)
    generation.py    chat generation (HF batched, or vLLM in a worker): evaluation, teacher data, token stats
    vllm_worker.py   vLLM in its own process/venv: JSONL in, JSONL out
"""
