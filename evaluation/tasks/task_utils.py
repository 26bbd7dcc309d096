"""Prompt functions of this repository's own lm-eval tasks (cluewsc.yaml, medqa_local.yaml, pubmedqa_test_fold.yaml).

lm-eval imports this file by path through the YAMLs' `!function task_utils.<name>` entries; it is not imported
by anything else. Run a task with `python -m evaluation.evaluate model=<run> benchmarks=[cluewsc]`.
"""

LETTERS = "ABCDEFGHIJ"
PUBMEDQA_CHOICES = ["yes", "no", "maybe"]


def _pubmedqa(doc) -> tuple[str, list, str]:
    """(question, contexts, answer text) of a row in either PubMedQA format (pubmedqa_test_fold.yaml)."""
    if isinstance(doc.get("data"), dict):  # openlifescienceai/pubmedqa
        d = doc["data"]
        options, key = d["Options"], d["Correct Option"]
        return d["Question"], list(d["Context"]), str(options.get(key, key))
    return doc["QUESTION"], list(doc["CONTEXTS"]), str(doc["final_decision"])


def pubmedqa_doc_to_text(doc) -> str:
    question, contexts, _ = _pubmedqa(doc)
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(contexts), question)  # lm-eval's pubmedqa prompt


def pubmedqa_doc_to_target(doc) -> int:
    answer = _pubmedqa(doc)[2].strip().lower()
    if answer not in PUBMEDQA_CHOICES:
        raise ValueError(f"PubMedQA answer must be one of {PUBMEDQA_CHOICES}, got {answer!r}")
    return PUBMEDQA_CHOICES.index(answer)


def cluewsc_doc_to_text(doc) -> str:
    t = doc["target"]
    return f"{doc['text']}\n问题：在上面这句话中，“{t['span2_text']}”指的是“{t['span1_text']}”吗？\n答案："


def cluewsc_doc_to_target(doc) -> int:
    """1 (是) when the pronoun refers to the span. CLUE's files say "true"/"false"; the Hub copy's ClassLabel has
    0 = "true", 1 = "false"."""
    label = doc["label"]
    if isinstance(label, str) and label.lower() in ("true", "false"):
        return int(label.lower() == "true")
    if label in (0, 1):
        return int(label == 0)
    raise ValueError(f"CLUEWSC label must be 'true'/'false' (CLUE) or 0/1 (Hub), got {label!r} in {doc.get('idx')}")


def _medqa_options(doc) -> list[str]:
    opts = doc.get("choices") or doc.get("options")  # MedQA's own files: options = {"A": .., "B": ..}
    if opts:
        return [opts[k] for k in sorted(opts)] if isinstance(opts, dict) else list(opts)
    if "ending0" in doc:
        return [doc[f"ending{i}"] for i in range(10) if doc.get(f"ending{i}") is not None]
    raise ValueError("MedQA row needs `choices` (list), `options` (dict) or `ending0..3`; got keys "
                     + ", ".join(sorted(doc)))


def medqa_doc_to_text(doc) -> str:
    q = doc.get("question", doc.get("sent1"))
    options = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(_medqa_options(doc)))
    return f"Question: {q}\n{options}Answer:"


def medqa_doc_to_choice(doc) -> list[str]:
    return list(LETTERS[: len(_medqa_options(doc))])


def medqa_doc_to_target(doc) -> int:
    if "answer_idx" in doc:
        a = doc["answer_idx"]
        return LETTERS.index(a) if isinstance(a, str) else int(a)
    return int(doc["label"])
