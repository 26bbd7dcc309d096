"""Loss-kernel benchmark: forward + backward of the LM head and the loss, wall time and peak memory.

    make bench                                              # CPU: N 1,024 and 2,048, fp32; GPU: 1k-16k, bf16
    python -m training.bench --tokens 256,512 --repeats 3   # other token counts
    python -m training.bench --chunk-sweep --tokens 1024    # time and memory vs chunk size (chunked EAFT)
    python -m training.bench --render                       # rewrite the markdown from the saved rows

Shape: Qwen3-4B's head, hidden d = 2560, vocabulary V = 151,936 (override with --hidden/--vocab). Each case
starts from hidden (1, N, d) and the head weight (V, d), both requiring grad, with every next-token label
supervised, and runs loss.backward():
    plain_ce        full logits, then CE as HF's ForCausalLMLoss does it (upcast to fp32, F.cross_entropy)
    authors_eaft    EAFT as the authors' released code does it (docs/paper.md, "Method"): full logits upcast to fp32,
                    per-token CE over every position, a masked copy of the supervised rows for the top-20 entropy
                    under no_grad, weight (H/3.0)^alpha, sum / num_items
    ours_eaft       LOSSES['eaft'] on the full logits (eaft_loss.losses, packages/eaft-loss)
    chunked_eaft    LINEAR_LOSSES['eaft']: no full logits (eaft_loss.linear_losses)
    chunked_ce      LINEAR_LOSSES['sft']
    chunked_eaft_stats  chunked_eaft plus the gate statistics training logs every step

Time: the wall time of one forward + backward (CUDA: synchronised), the median over --repeats, after one
untimed warm-up of every case at 16 tokens; the repeats of all methods are interleaved so a change of machine
load hits every method alike. On the CPU the process CPU time (user + system, all threads) is reported too: on a
shared machine it measures the work done, where the wall time also measures waiting for a core. Memory, "peak extra": the
high-water mark during forward + backward minus what was allocated before it (hidden, weight, labels); it
includes the gradients every method returns (grad of the weight, V x d, the same for all methods: 1.56 GB
in fp32 at this shape). CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats. CPU: the
process's resident-set high-water mark (VmHWM in /proc/self/status), reset before each case by writing 5 to
/proc/self/clear_refs, after malloc_trim(0) hands freed heap pages back to the kernel; torch's CPU allocator
has no peak counter and Python's tracemalloc does not see torch's allocations. RSS counts pages actually
touched, so it is what the machine had to provide. Ratios are to plain_ce at the same token count, measured in
the same invocation.

Rows are appended to results/bench/loss_kernels.jsonl as they are measured (so a long sweep can be split into
several invocations); the markdown table (results/bench/loss_kernels.md) is rendered from every row for the
current device and shape.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F
from eaft_loss.linear_losses import DEFAULT_CHUNK_SIZE, LINEAR_LOSSES
from eaft_loss.losses import LOSSES

from common.files import REPO, read_jsonl

OUT = REPO / "results" / "bench"
QWEN3_4B = {"hidden": 2560, "vocab": 151_936}
EAFT_HP = {"k": 20, "alpha": 1.0, "norm": 3.0}  # configs/method/eaft.yaml


def authors_eaft(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None, alpha: float = 1.0):
    """EAFT as the authors' released loss computes it (docs/paper.md, "Method"); kept faithful on purpose, copies
    included: this is the baseline the fused version is measured against."""
    logits = logits.float()  # the whole (B, T, V) upcast to fp32
    vocab = logits.size(-1)
    labels = F.pad(labels, (0, 1), value=-100)[..., 1:]  # shift by padding the labels, not slicing the logits
    source, target = logits.view(-1, vocab), labels.reshape(-1).to(logits.device)
    per_token = F.cross_entropy(source, target, ignore_index=-100, reduction="none")  # over every position
    valid = target != -100
    valid_losses = per_token[valid]
    with torch.no_grad():
        masked = source[valid].detach()  # the masked copy of the supervised rows
        top = torch.topk(masked, k=20, dim=-1).values
        logq = top - torch.logsumexp(top, dim=-1, keepdim=True)
        entropy = -(logq.exp() * logq).sum(-1)
        weight = torch.pow(entropy / 3.0, alpha)
    weighted = valid_losses * weight
    return weighted.sum() / num_items_in_batch if num_items_in_batch is not None else weighted.mean()


def plain_ce(logits, labels, num_items_in_batch):
    """transformers' ForCausalLMLoss: upcast, shift, F.cross_entropy(reduction='sum') / num_items."""
    logits = logits.float()
    shift = labels[:, 1:].reshape(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shift, ignore_index=-100,
                           reduction="sum") / num_items_in_batch


def _full(loss_fn):
    return lambda h, w, y, n: loss_fn(h @ w.T, y, n)


METHODS = {
    "plain_ce": _full(plain_ce),
    "authors_eaft": _full(lambda z, y, n: authors_eaft(z, y, n)),
    "ours_eaft": _full(lambda z, y, n: LOSSES["eaft"](z, y, n, **EAFT_HP)),
    "chunked_eaft": lambda h, w, y, n, c=None: LINEAR_LOSSES["eaft"](h, w, y, n, chunk_size=c, **EAFT_HP),
    "chunked_ce": lambda h, w, y, n, c=None: LINEAR_LOSSES["sft"](h, w, y, n, chunk_size=c),
    "chunked_eaft_stats": lambda h, w, y, n, c=None: LINEAR_LOSSES["eaft"](h, w, y, n, chunk_size=c, stats={},
                                                                        **EAFT_HP),
}
DEFAULT_METHODS = ["plain_ce", "authors_eaft", "ours_eaft", "chunked_eaft", "chunked_ce"]


# ---------------------------------------------------------------------------------------------------------
# Memory.


class PeakMemory:
    """Peak bytes allocated above the level at `reset()`: CUDA allocator stats, or the CPU process's VmHWM."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.libc = ctypes.CDLL("libc.so.6") if not self.cuda and sys.platform.startswith("linux") else None

    @staticmethod
    def _status_kb(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.base = self._status_kb("VmRSS") * 1024

    def peak_extra(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return self._status_kb("VmHWM") * 1024 - self.base


# ---------------------------------------------------------------------------------------------------------
# One case.


def make_inputs(n_tokens: int, hidden: int, vocab: int, dtype, device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = (torch.randn(1, n_tokens, hidden, generator=g)).to(device, dtype).requires_grad_(True)
    # Scaled so the logits have a realistic spread (std ~ 3): entropies neither all ~0 nor all ~ln V.
    w = (torch.randn(vocab, hidden, generator=g) * (3.0 / hidden ** 0.5)).to(device, dtype).requires_grad_(True)
    y = torch.randint(0, vocab, (1, n_tokens), generator=g).to(device)
    y[:, 0] = -100
    return h, w, y


def run_case(method: str, h, w, y, mem: PeakMemory, chunk: int | None) -> tuple[float, float, int, float]:
    """(wall seconds, process CPU seconds, peak extra bytes, loss value) of one forward + backward."""
    h.grad = w.grad = None
    n = torch.tensor(int((y[:, 1:] != -100).sum()), device=h.device)
    fn = METHODS[method]
    kwargs = {"c": chunk} if method.startswith("chunked") else {}
    mem.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = fn(h, w, y, n, **kwargs)
    loss.backward()
    if h.is_cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = mem.peak_extra()
    value = loss.item()
    del loss
    h.grad = w.grad = None
    return seconds, cpu_seconds, peak, value


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------------------------------------------------
# Rendering.


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def grad_bytes(row: dict) -> int:
    """Bytes of the gradients every method returns: grad of the weight (V, d) and of the hidden (N, d)."""
    return (row["vocab"] + row["tokens"]) * row["hidden"] * (4 if row["dtype"] == "float32" else 2)


def render(rows: list[dict], device: str, hidden: int, vocab: int, dtype: str) -> str:
    rows = [r for r in rows if r["device"] == device and r["hidden"] == hidden and r["vocab"] == vocab
            and r["dtype"] == dtype]
    out = [f"Device: {device}; d = {hidden}, V = {vocab:,}, {dtype}. Forward + backward of head + loss.",
           ("Time: median over the repeats (interleaved across methods); peak extra memory: high-water mark above "
            "the inputs, including the returned gradients (grad of the weight alone: "
            f"{_gb(hidden * vocab * (4 if dtype == 'float32' else 2))} GB). "
            "'Above grads' subtracts the gradients every method must return (V x d + N x d), leaving what the "
            "loss itself holds at its peak. Ratios are to plain_ce / authors_eaft at the same N in the same "
            "invocation."), ""]
    sweep = [r for r in rows if r.get("sweep")]
    main = [r for r in rows if not r.get("sweep")]
    if main:
        out += [("| tokens N | method | chunk | wall (s) | x plain CE | CPU time (s) | x plain CE | "
                 "peak extra (GB) | x plain CE | x authors' EAFT | above grads (GB) | x authors' EAFT | repeats "
                 "| run |"),
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key in sorted({(r["tokens"], r["run"]) for r in main}):
            group = [r for r in main if (r["tokens"], r["run"]) == key]
            ref = {r["method"]: r for r in group}
            for r in sorted(group, key=lambda r: list(METHODS).index(r["method"])):
                t_med = statistics.median(r["times"])
                t_ratio = (f"{t_med / statistics.median(ref['plain_ce']['times']):.2f}"
                           if "plain_ce" in ref else "")
                c_med = statistics.median(r["cpu_times"]) if r.get("cpu_times") else None
                c_ref = ref.get("plain_ce", {}).get("cpu_times")
                c_cell = f"{c_med:.2f}" if c_med is not None else ""
                c_ratio = f"{c_med / statistics.median(c_ref):.2f}" if c_med is not None and c_ref else ""
                m_ratio = f"{r['peak'] / ref['plain_ce']['peak']:.3f}" if "plain_ce" in ref else ""
                a_ratio = f"{r['peak'] / ref['authors_eaft']['peak']:.3f}" if "authors_eaft" in ref else ""
                above = r["peak"] - grad_bytes(r)
                g_ratio = (f"{above / (ref['authors_eaft']['peak'] - grad_bytes(ref['authors_eaft'])):.3f}"
                           if "authors_eaft" in ref else "")
                out.append(f"| {r['tokens']:,} | {r['method']} | {r['chunk'] or ''} | {t_med:.2f} | {t_ratio} | "
                           f"{c_cell} | {c_ratio} | {_gb(r['peak'])} | {m_ratio} | {a_ratio} | {_gb(above)} | "
                           f"{g_ratio} | {len(r['times'])} | {r['run']} |")
    if sweep:
        out += ["", "Chunk-size sweep (chunked_eaft; plain_ce of the same run as the reference):", "",
                ("| tokens N | method | chunk | wall (s) | CPU time (s) | CPU x plain CE | peak extra (GB) | "
                 "repeats | run |"),
                "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(sweep, key=lambda r: (r["tokens"], r["run"], r["chunk"] or 0)):
            cpu = statistics.median(r["cpu_times"]) if r.get("cpu_times") else None
            ref = [q for q in sweep if q["run"] == r["run"] and q["tokens"] == r["tokens"]
                   and q["method"] == "plain_ce" and q.get("cpu_times")]
            ratio = f"{cpu / statistics.median(ref[0]['cpu_times']):.2f}" if cpu and ref else ""
            out.append(f"| {r['tokens']:,} | {r['method']} | {r['chunk'] or ''} | "
                       f"{statistics.median(r['times']):.2f} | {f'{cpu:.2f}' if cpu else ''} | {ratio} | "
                       f"{_gb(r['peak'])} | {len(r['times'])} | {r['run']} |")
    runs = {r["run"]: r for r in rows}
    load = {k: f", load average {r['load_avg_1min']} at its end" if "load_avg_1min" in r else ""
            for k, r in runs.items()}
    out += ["", "Runs:", ""] + [f"- `{k}` {r['date']}, torch {r['torch']}{load[k]}: `{r['command']}`"
                                 for k, r in sorted(runs.items(), key=lambda kv: kv[1]["date"])]
    return "\n".join(out) + "\n"


NOTES = "<!-- notes: everything below this line is kept when the table is rendered again -->"


def write_markdown(rows_path: Path, md_path: Path, device: str, hidden: int, vocab: int, dtype: str) -> None:
    """Render the table; hand-written notes below the NOTES marker in an existing file are kept."""
    rows = read_jsonl(rows_path)
    old = md_path.read_text() if md_path.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    header = ("# Loss kernels: time and peak memory of forward + backward (head + loss)\n\n"
              "Made by `python -m training.bench` (training/bench.py explains what is measured and how). "
              "Timings on a shared machine are noisy: medians of interleaved repeats.\n\n")
    md_path.write_text(header + render(rows, device, hidden, vocab, dtype) + ("\n" + notes if notes else ""))


# ---------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default=None, help="comma-separated token counts (default: by device)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated cases to time, from: {', '.join(METHODS)} (see the module docstring); "
                        f"default: {','.join(DEFAULT_METHODS)}")
    p.add_argument("--repeats", type=int, default=None, help="default 2 on CPU, 5 on CUDA")
    p.add_argument("--hidden", type=int, default=QWEN3_4B["hidden"],
                   help=f"hidden size d of the head's input (default {QWEN3_4B['hidden']}, Qwen3-4B)")
    p.add_argument("--vocab", type=int, default=QWEN3_4B["vocab"],
                   help=f"vocabulary size V, the head's output (default {QWEN3_4B['vocab']}, Qwen3-4B)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--chunk-size", type=int, default=None, help=f"default {DEFAULT_CHUNK_SIZE}")
    p.add_argument("--chunk-sweep", default=None, nargs="?", const="64,128,256,512,1024,2048",
                   help="time chunked_eaft at these chunk sizes instead of the method comparison")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda | cpu (default: cuda when available)")
    p.add_argument("--results", default=str(OUT / "loss_kernels.jsonl"), help="rows are appended here (jsonl)")
    p.add_argument("--markdown", default=str(OUT / "loss_kernels.md"), help="the table rendered from the rows")
    p.add_argument("--render", action="store_true", help="only rewrite the markdown from the saved rows")
    args = p.parse_args(argv)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown --methods {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    dev_name = device_name(device)
    rows_path, md_path = Path(args.results), Path(args.markdown)
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    if args.render:
        write_markdown(rows_path, md_path, dev_name, args.hidden, args.vocab, dtype_name)
        return {}

    # CPU default: ~10 min and ~5.5 GB on 2 idle cores; 2,048 is where the logits start to dominate the peak.
    tokens = [int(x) for x in (args.tokens or ("1024,4096,8192,16384" if cuda else "1024,2048")).split(",")]
    repeats = args.repeats or (5 if cuda else 2)
    if args.chunk_sweep:
        # plain_ce as the reference the chunk sizes are compared with, in the same invocation
        cases = [("plain_ce", None)] + [("chunked_eaft", int(c)) for c in args.chunk_sweep.split(",")]
    else:
        cases = [(m, args.chunk_size if m.startswith("chunked") else None) for m in args.methods.split(",")]
    command = "python -m training.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    run_id, date = uuid.uuid4().hex[:8], dt.date.today().isoformat()
    mem = PeakMemory(device)
    print(f"[bench] {dev_name}, d={args.hidden}, V={args.vocab}, {dtype_name}, tokens={tokens}, "
          f"repeats={repeats}")

    # Warm-up, untimed: the first matmul of a process pays for thread pools and page faults.
    h, w, y = make_inputs(16, args.hidden, args.vocab, dtype, device)
    for case in cases:
        run_case(case[0], h, w, y, mem, case[1])
    del h, w, y

    results = {}
    for n_tokens in tokens:
        h, w, y = make_inputs(n_tokens, args.hidden, args.vocab, dtype, device)
        samples = {case: {"times": [], "cpu_times": [], "peaks": [], "loss": None} for case in cases}
        for _ in range(repeats):  # interleaved: each repeat runs every case once
            for case in cases:
                sec, cpu_sec, peak, value = run_case(case[0], h, w, y, mem, case[1])
                s = samples[case]
                s["times"].append(sec)
                s["cpu_times"].append(cpu_sec)
                s["peaks"].append(peak)
                s["loss"] = value
                print(f"[bench] N={n_tokens:>6} {case[0]:<20} chunk={case[1] or '-':<5} {sec:8.2f} s (CPU {cpu_sec:7.2f} s)  "
                      f"peak extra {_gb(peak)} GB  loss {value:.5f}", flush=True)
        with rows_path.open("a") as f:
            for (method, chunk), s in samples.items():
                row = {"run": run_id, "date": date, "command": command, "device": dev_name, "dtype": dtype_name,
                       "hidden": args.hidden, "vocab": args.vocab, "tokens": n_tokens, "method": method,
                       "chunk": (chunk or DEFAULT_CHUNK_SIZE) if method.startswith("chunked") else None,
                       "times": s["times"], "cpu_times": s["cpu_times"], "peak": max(s["peaks"]), "loss": s["loss"],
                       "sweep": bool(args.chunk_sweep), "torch": torch.__version__,
                       "load_avg_1min": round(os.getloadavg()[0], 2)}
                f.write(json.dumps(row) + "\n")
                results[(n_tokens, method, chunk)] = row
        del h, w, y
    write_markdown(rows_path, md_path, dev_name, args.hidden, args.vocab, dtype_name)
    print(md_path.read_text())
    return results


if __name__ == "__main__":
    main()
