"""Grade BFCL (entry, completion, mode) rows with the official bfcl-eval code; runs only inside .venv-bfcl.

    make bfcl-venv
    .venv-bfcl/bin/python evaluation/bfcl_official.py < rows.jsonl > verdicts.jsonl

Each stdin line is {"entry": <BFCL entry with id, category, function, ground_truth>, "cases": [[mode, completion],
...]} (mode "prompt" or "fc"); each stdout line is {"verdicts": [{"correct": bool|None, "error": str|None}, ...]},
correct None where the official code raises (its runner would stop there). The path is exactly BFCL's for
its local Qwen handlers: the handler's `_parse_query_response_prompting` (drops a think block), its `decode_ast`,
then eval_runner's `_evaluate_single_relevance_entry` or `_evaluate_single_ast_entry` (the AST checker). The
model names are the Qwen3-4B-Instruct-2507 registry entries (prompt and -FC), whose checker settings
(underscore_to_dot=False) are those of every local Qwen handler. Nothing of this project is imported, so the
script needs only the venv's bfcl-eval; the differential test (tests/test_bfcl_official.py) drives it.
"""

import json
import sys
from types import SimpleNamespace

from bfcl_eval.constants.enums import Language, ReturnFormat
from bfcl_eval.eval_checker import eval_runner
from bfcl_eval.model_handler.local_inference.qwen import QwenHandler
from bfcl_eval.model_handler.local_inference.qwen_fc import QwenFCHandler

MODELS = {"prompt": (QwenHandler, "Qwen/Qwen3-4B-Instruct-2507", False),
          "fc": (QwenFCHandler, "Qwen/Qwen3-4B-Instruct-2507-FC", True)}
HANDLERS = {mode: cls(name.removesuffix("-FC"), 0.0, name, fc) for mode, (cls, name, fc) in MODELS.items()}


def model_response(handler, completion: str) -> str:
    """What BFCL hands the decoder: the handler's parse of a raw completion (think block removed)."""
    api = SimpleNamespace(choices=[SimpleNamespace(text=completion)],
                          usage=SimpleNamespace(prompt_tokens=0, completion_tokens=0))
    return handler._parse_query_response_prompting(api)["model_responses"]


def grade(entry: dict, completion: str, mode: str) -> dict:
    handler = HANDLERS[mode]
    registry = MODELS[mode][1].replace("/", "_")
    text = model_response(handler, completion)
    cat = entry["category"]
    prompt = {"id": entry["id"], "function": entry["function"]}
    if "relevance" in cat:
        res = eval_runner._evaluate_single_relevance_entry(handler, entry["id"], text, prompt, registry, cat)
    else:
        res = eval_runner._evaluate_single_ast_entry(handler, entry["id"], text, entry["ground_truth"], prompt,
                                                     registry, cat, Language.PYTHON, ReturnFormat.PYTHON)
    return {"correct": bool(res["valid"]), "error": None if res["valid"] else str(res.get("error"))[:300]}


def safe_grade(entry: dict, completion: str, mode: str) -> dict:
    try:
        return grade(entry, completion, mode)
    except Exception as e:  # noqa: BLE001 -- BFCL's runner would crash here; report that as the verdict
        return {"correct": None, "error": f"official code raised {type(e).__name__}: {e}"[:300]}


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            row = json.loads(line)
            verdicts = [safe_grade(row["entry"], completion, mode) for mode, completion in row["cases"]]
            sys.stdout.write(json.dumps({"verdicts": verdicts}) + "\n")


if __name__ == "__main__":
    main()
