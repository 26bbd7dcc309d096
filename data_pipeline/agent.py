"""Nemotron agentic tool-use trajectories -> chat rows whose tool calls render through the chat template.

The paper's "Nemotron-Agentic-Tool-Use-v1" is published as nvidia/Nemotron-Agentic-v1 (335,122 trajectories:
data/tool_calling.jsonl 316,094 and data/interactive_agent.jsonl 19,028). A row is
{uuid, messages, tools, license, used_in} (+ `reasoning` in interactive_agent); messages are OpenAI-style:
assistant turns carry `tool_calls` [{id?, type: function, function: {name, arguments}}] and often
`reasoning_content`; tool results are role "tool".

What we write (one row per trajectory; the whole multi-turn conversation is kept, every assistant turn is
supervised by training/data.py):
- `tools`: the function schemas, handed to `apply_chat_template(tools=...)` by the trainer, so the model's own
  template writes them into the system prompt (Qwen3: a <tools> block).
- assistant turns: `content` (a string, "" when the turn only calls tools) and `tool_calls` with `arguments` as a
  JSON object (parsed from the source's string: templates that `tojson` it then print it once, not as a quoted
  string); the template renders them (Qwen3: <tool_call>{"name": ..., "arguments": ...}</tool_call>).
- tool results: role "tool" (Qwen3 renders them as <tool_response> blocks inside a user turn).
- empty system messages are dropped (the template writes its own system block when tools are present).

"Non-thinking subset" [U: the paper names no field, and no public loader confirms one: `reasoning` is a key of
every interactive_agent row and of no tool_calling row, whose assistant turns carry `reasoning_content`]:
`non_thinking: strip` (configs/domain/agent.yaml) keeps every row and removes the reasoning, as the public SFT
loaders of these files do; `select` keeps a row when its `reasoning` field says off, or, for rows without that
field, when no assistant turn has reasoning (`reasoning_content` or <think>) -- its yield on the real files is
unknown, and `slurm/submit.py --check` counts it on a sample before a build is queued; `keep` keeps reasoning as
`reasoning_content` (for a thinking model).
"""

from __future__ import annotations

import json
import re

from data_pipeline.records import Rejected

ROLES = {"system", "user", "assistant", "tool"}
OFF = {"off", "false", "0", "no"}
THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def _tools(raw) -> list[dict]:
    if raw is None:
        return []
    if isinstance(raw, str):  # some mirrors store the schema list as a JSON string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise Rejected("bad_tools", "tools is a string that is not JSON") from None
    if not isinstance(raw, list):
        raise Rejected("bad_tools", f"tools is {type(raw).__name__}")
    out = []
    for t in raw:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise Rejected("bad_tools", "a tool without function.name")
        out.append({"type": "function", "function": fn})
    return out


def _tool_call(tc) -> dict:
    fn = tc.get("function", tc) if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise Rejected("bad_tool_call", "no function name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise Rejected("bad_tool_arguments", f"{fn['name']}: {e.msg}") from None
    if not isinstance(args, dict):
        raise Rejected("bad_tool_arguments", f"{fn['name']}: arguments are {type(args).__name__}")
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(tc.get("id"), str):
        out["id"] = tc["id"]
    return out


def _has_reasoning(messages: list) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "assistant" and (
        (isinstance(m.get("reasoning_content"), str) and m["reasoning_content"].strip())
        or (isinstance(m.get("content"), str) and "<think>" in m["content"])) for m in messages)


def adapt_nemotron_agentic(row: dict, non_thinking: str = "select") -> dict:
    if non_thinking not in ("select", "strip", "keep"):
        raise ValueError(f"non_thinking must be select, strip or keep, got {non_thinking!r}")
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise Rejected("missing_messages")
    tools = _tools(row.get("tools"))
    declared = {t["function"]["name"] for t in tools}
    if non_thinking == "select":
        flag = row.get("reasoning")
        if flag is not None and str(flag).strip().lower() not in OFF:
            raise Rejected("thinking_row", f"reasoning={flag!r}")
        if flag is None and _has_reasoning(msgs):
            raise Rejected("thinking_row", "an assistant turn has reasoning")
    out: list[dict] = []
    for j, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise Rejected("bad_role", f"messages[{j}].role={role!r}")
        content = m.get("content")
        content = "" if content is None else content
        if not isinstance(content, str):
            raise Rejected("non_string_content", f"messages[{j}] content is {type(content).__name__}")
        if role == "system" and not content.strip():
            continue
        msg = {"role": role, "content": content}
        if role == "assistant":
            if non_thinking != "keep":
                msg["content"] = THINK.sub("", content)
            elif isinstance(m.get("reasoning_content"), str) and m["reasoning_content"].strip():
                msg["reasoning_content"] = m["reasoning_content"]
            calls = [_tool_call(tc) for tc in (m.get("tool_calls") or [])]
            for c in calls:
                if declared and c["function"]["name"] not in declared:
                    raise Rejected("undeclared_tool", c["function"]["name"])
            if calls:
                msg["tool_calls"] = calls
            elif not msg["content"].strip():
                raise Rejected("empty_assistant_turn", f"messages[{j}]")
        elif role == "tool":
            prev = out[-1] if out else None
            if prev is None or not (prev["role"] == "tool" or prev.get("tool_calls")):
                raise Rejected("orphan_tool_message", f"messages[{j}] does not follow a tool call")
            for key in ("tool_call_id", "name"):
                if isinstance(m.get(key), str):
                    msg[key] = m[key]
        out.append(msg)
    if not out or out[-1]["role"] != "assistant":
        raise Rejected("ends_without_assistant")
    return {"messages": out, "tools": tools or None, "source_ref": row.get("uuid")}
