"""The README and docs/ say only what the repository holds.

- the README's file tree names paths that exist, and every top-level folder git tracks;
- its equation map names functions of eaft_loss.losses (packages/eaft-loss) and configs that exist;
- every relative link in README.md, docs/*.md and results/demo/README.md resolves (file and #heading);
- every number of ours in its results-at-a-glance table is in the committed file the row names;
- the published numbers in docs/paper.md equal paper/results.csv, cell by cell;
- the quoted demo numbers (the full profile's rows, the audit's calculator-tag finding) are the committed ones;
- the conflict study's v2 verdict is stated only from its committed summary, with its deciding predictions;
- the README's torch example runs; its commands are make targets; it stays short;
- docs/trainers.md's time and memory rows are rows of results/bench/loss_kernels.md.
"""

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest

from tests.conftest import REPO

README = REPO / "README.md"
PAPER_MD = REPO / "docs" / "paper.md"
DEMO_README = REPO / "results" / "demo" / "README.md"
MAX_README_LINES = 320


def section(text: str, heading: str) -> str:
    """The body of `## heading` up to the next `## ` heading."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row in `text`, header rows included, separator rows left out."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| :]*\|", line.strip()):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def numbers(text: str) -> list[str]:
    """Decimal numbers as written (sign kept, unicode minus as '-'), e.g. '+0.028', '-0.002', '1.7'."""
    return re.findall(r"[+-]?\d+(?:\.\d+)?", text.replace("−", "-"))


def tree() -> list[str]:
    m = re.search(r"```text\n(.*?)```", section(README.read_text(), "File tree"), re.DOTALL)
    assert m, "README.md's '## File tree' has no ```text block"
    return [line.split()[0] for line in m.group(1).splitlines() if line.strip()]


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it under {MAX_README_LINES} (move detail to docs/)"


def test_every_path_in_the_tree_exists():
    missing = [p for p in tree() if not (REPO / p).exists()]
    assert not missing, f"README.md's file tree names paths that do not exist: {missing}"


def test_every_tracked_top_level_folder_is_in_the_tree():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    folders = {f.split("/")[0] + "/" for f in files if "/" in f and (REPO / f).exists()}
    missing = sorted(folders - set(tree()))
    assert not missing, f"add these top-level folders to README.md's file tree: {missing}"


def equation_map() -> list[list[str]]:
    rows = table_rows(section(README.read_text(), "The paper in the code"))
    assert rows and rows[0][2:] == ["function", "config"], "the equation map's columns: paper | equation | function | config"
    return rows[1:]


def test_equation_map_functions_exist_in_losses():
    from eaft_loss import losses

    names = [n for row in equation_map() for n in backticked(row[2])]
    assert {"weighted_ce", "eaft_gate", "sft_kl_loss"} <= set(names)
    missing = [n for n in names if not callable(getattr(losses, n, None))]
    assert not missing, f"README.md's equation map names functions eaft_loss.losses lacks: {missing}"
    gates = {n for n in names if n.endswith("_gate")}
    assert gates <= {f.__name__ for f in losses.GATES.values()}, "a *_gate in the map is not in GATES"


def test_equation_map_configs_exist():
    names = [n for row in equation_map() for n in backticked(row[3]) if n.endswith(".yaml")]
    assert len(names) >= 12
    missing = [n for n in names if not (REPO / "configs" / "method" / n).exists()]
    assert not missing, f"README.md's equation map names configs/method/ files that do not exist: {missing}"
    unmapped = sorted({p.name for p in (REPO / "configs" / "method").glob("*.yaml")} - set(names))
    assert not unmapped, f"configs/method/ files missing from README.md's equation map: {unmapped}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", [README, DEMO_README, *sorted((REPO / "docs").glob("*.md"))],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    text = doc.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", dest.read_text(), re.MULTILINE)
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)}: links to missing files or headings: {broken}"


def test_glance_numbers_are_in_the_files_they_name():
    rows = table_rows(section(README.read_text(), "Results at a glance"))
    assert rows[0] == ["result", "paper (source)", "ours", "command", "file"]
    checked = 0
    for row in rows[1:]:
        files = backticked(row[4])
        assert len(files) == 1 and (REPO / files[0]).is_file(), f"glance row {row[0]!r}: name one committed file"
        source = (REPO / files[0]).read_text().replace("−", "-")
        for num in numbers(row[2]):
            assert num in source, f"glance row {row[0]!r}: {num} is not in {files[0]}"
            checked += 1
        for cmd in backticked(row[3]):
            assert cmd.startswith(("make ", "python ")), f"glance row {row[0]!r}: {cmd!r} is not a command"
    assert checked >= 6


# docs/paper.md's published-results tables -> paper/results.csv columns
ARTIFACT = {"Table 1": "table1", "Table 2": "table2", "Table 3": "table3", "Fig. 5": "fig5", "Fig. 6": "fig6"}
COLUMN = {"AIME24": "aime24", "AIME25": "aime25", "GSM8K": "gsm8k", "MMLU": "mmlu", "IFEval": "ifeval",
          "CLUEWSC": "cluewsc", "MedMCQA": "medmcqa", "MedQA": "medqa", "PubMedQA": "pubmedqa", "BFCL v3": "bfcl_v3",
          "Math avg": "printed_target_avg", "Med avg": "printed_target_avg", "General avg": "printed_general_avg",
          "Δ": "printed_general_delta", "General": "general", "Math": "target"}


def paper_md_values() -> dict[tuple, float]:
    """{(artifact, model, method, column): value} from the tables under '## Published results'."""
    values = {}
    for block in re.split(r"^### ", section(PAPER_MD.read_text(), "Published results"), flags=re.MULTILINE)[1:]:
        title = block.splitlines()[0]
        art = next((a for key, a in ARTIFACT.items() if title.startswith(key)), None)
        assert art, f"docs/paper.md: unknown published-results table {title!r}"
        header, *rows = table_rows(block)
        for row in rows:
            cells = dict(zip(header, row))
            if art == "fig6":
                k = cells["K"]
                values[(art, "qwen3-4b", "topk", f"pearson_k{k}")] = float(cells["Pearson r"])
                values[(art, "qwen3-4b", "topk", f"memory_kb_k{k}")] = float(cells["memory (KB)"])
                continue
            model, method = cells["model"].strip("`"), cells["method"]
            for label, value in cells.items():
                if label not in ("model", "method") and value:
                    values[(art, model, method, COLUMN[label])] = float(value.replace("−", "-"))
    return values


def test_paper_md_published_numbers_equal_the_csv():
    csv = pd.read_csv(REPO / "paper" / "results.csv")
    csv = csv[csv["column"] != "target_text"]  # a number the text gives, quoted in prose beside Fig. 5's table
    expected = {(r.artifact, r.model, r.method, r.column): r.value for r in csv.itertuples()}
    got = paper_md_values()
    wrong = {k: (v, expected.get(k)) for k, v in got.items() if expected.get(k) != pytest.approx(v)}
    assert not wrong, f"docs/paper.md disagrees with paper/results.csv (doc, csv): {wrong}"
    missing = sorted(set(expected) - set(got))
    assert not missing, f"docs/paper.md lacks these published numbers of paper/results.csv: {missing}"


@pytest.mark.parametrize("method, label", [("eaft", "EAFT"), ("eaft_sig", "EAFT-sigmoid"), ("mile", "MiLe"),
                                           ("sft_kl", "SFT-KL"), ("flow", "FLOW")])
def test_demo_readme_full_rows_are_the_committed_report(method, label):
    """results/demo/README.md quotes results/demo/full/table.md (written by `make demo FULL=1`), not numbers typed
    by hand: each method's row has the same seeds and differences as the report's row."""
    report = (REPO / "results/demo/full/table.md").read_text()
    row = re.search(rf"^\| {method} \| (\d+) \| ([^|]+) \| [^|]+ \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", report,
                    re.MULTILINE)
    assert row, f"results/demo/full/table.md has no '{method}' row against SFT"
    seeds, nll, mini, kl, base_nll = (c.strip().rstrip("*").replace("-", "−") for c in row.groups())
    expected = f"| {label} | {seeds} | {nll} | {kl} | {base_nll} | {mini} |"
    assert expected in DEMO_README.read_text(), f"results/demo/README.md's full-demo row for {label}: {expected}"


def test_readme_states_the_study_v2_verdict_only_from_its_committed_summary():
    """The conflict study's v2 verdict is stated in the README only once results/study/v2/summary.json (written by
    `make study PROFILE=v2` when all its cells have finished) holds it, in the summary's words, with the deciding
    predictions' values and SEs as the report writes them; until then the README says it is still running."""
    text = " ".join(section(README.read_text(), "The conflict study").split()).replace("−", "-")
    summary = REPO / "results/study/v2/summary.json"
    stated = re.search(r"\*\*v2[^*]*?verdict is \*([a-z ]+)\*", text)
    if not summary.is_file():
        assert stated is None and "its verdict will be stated here when all have finished" in text
        return
    s = json.loads(summary.read_text())
    assert stated and stated.group(1) == s["verdict"], "README's v2 verdict is not results/study/v2/summary.json's"
    for p in s["predictions"]:
        if p["role"] == "verdict":
            quoted = f"{p['id']} {p['value']:+.3f} ± {p['se']:.3f}"
            assert quoted in text, f"README's conflict study paragraph should quote {quoted!r} ({p['verdict']})"


def test_calculator_tag_finding_is_the_committed_audit():
    """The README and the demo's README quote the audit (results/audit/, `make audit`) and the token statistics it
    reads (results/token_stats/): the conflict count and share, and how many conflicts open a calculator tag."""
    from eaft_loss.losses import CONFLICT_MAX_ENTROPY, CONFLICT_MAX_PROB

    audit = json.loads((REPO / "results/audit/smollm2-135m-math-mini.json").read_text())["conflicts"]
    stats = pd.read_parquet(REPO / "results/token_stats/smollm2-135m-math-mini.parquet")
    conflicts = stats[(stats["entropy"] < CONFLICT_MAX_ENTROPY) & (stats["prob"] < CONFLICT_MAX_PROB)]
    assert len(conflicts) == audit["conflicts"], "the token statistics and the audit disagree on the conflicts"
    tags = int((conflicts["token"].str.strip() == "<<").sum())
    share = f"{100 * audit['token_share']:.1f}%"
    for doc in (README, DEMO_README):
        text = " ".join(doc.read_text().split())
        assert f"{audit['conflicts']} confident conflicts" in text, doc
        assert f"{share} of {audit['tokens']:,} supervised tokens" in text, doc
        assert f"{tags} of the {audit['conflicts']}" in text, doc


def test_paper_md_has_the_sections_the_code_cites():
    headings = re.findall(r"^## (.+)$", PAPER_MD.read_text(), re.MULTILINE)
    cited = ["Method", "Baselines", "Published settings", "Published results", "Where the paper is silent",
             "Related results"]
    assert headings == cited, f"docs/paper.md's sections are cited by name elsewhere; keep them: {cited}"


def test_nothing_cites_notes_outside_the_repository():
    """The repository stands alone: its paper notes are docs/paper.md, not a PAPER.md it does not hold."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "-C", str(REPO), "grep", "-n", "PAPER.md", "--", ".", ":!tests/test_readme.py"],
                         check=False, capture_output=True, text=True).stdout  # git grep exits 1 on no match
    assert not out, f"cite docs/paper.md (by section) instead of PAPER.md:\n{out}"


def test_readme_torch_example_runs():
    """The plain-torch block of 'Using the losses in your own trainer' runs as written; the HF block compiles."""
    blocks = re.findall(r"```python\n(.*?)```", section(README.read_text(), "Using the losses in your own trainer"),
                        re.DOTALL)
    torch_block = next(b for b in blocks if "torch.optim" in b)
    scope = {}
    exec(compile(torch_block, "README.md", "exec"), scope)  # noqa: S102
    assert scope["loss"].ndim == 0 and scope["loss"].isfinite()
    hf_block = next(b for b in blocks if "compute_loss_func" in b)
    compile(hf_block, "README.md", "exec")


def test_readme_commands_are_make_targets():
    text = README.read_text()
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^make ([a-z-]+)", text, re.MULTILINE)) | set(re.findall(r"`make ([a-z-]+)", text))
    assert {"demo", "test"} <= targets
    for target in sorted(targets):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), f"README: `make {target}`, no such target"


def test_trainers_md_bench_rows_are_rows_of_the_bench_file():
    """docs/trainers.md quotes results/bench/loss_kernels.md (`make bench`): each quoted row (tokens, method, run
    id) is a row of the file, with the same CPU time, ratio, peak and above-grads numbers."""
    doc = (REPO / "docs" / "trainers.md").read_text()
    rows = table_rows(section(doc, "Memory and time at Qwen3-4B's head"))
    assert rows[0] == ["tokens N", "method", "CPU time (s)", "× plain CE", "peak extra (GB)", "above grads (GB)", "run"]
    bench = {}
    for cells in table_rows((REPO / "results" / "bench" / "loss_kernels.md").read_text()):
        if len(cells) == 14 and cells[0] != "tokens N":  # the main table: tokens ... repeats | run
            bench[(cells[0], cells[1], cells[13])] = cells
    assert len(rows) > 4
    for tokens, method, cpu, ratio, peak, above, run in rows[1:]:
        key = (tokens, method, run.strip("`"))
        assert key in bench, f"docs/trainers.md quotes {key}, which results/bench/loss_kernels.md does not have"
        row = bench[key]
        assert (cpu, ratio, peak, above) == (row[5], row[6], row[7], row[10]), key
