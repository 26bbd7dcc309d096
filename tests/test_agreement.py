"""A re-run on another machine against the committed reference (experiments/agreement.py), and the environment
rules of experiments/environment.py: the precision a kept cell was trained in is kept, library pins are checked
before any work, and cells made under different precisions or library versions are never pooled."""

import json

import pytest

from experiments import agreement, environment


def summary(values: dict, precision="bf16", transformers="5.24.0") -> dict:
    return {"environment": {"precision": precision, "packages": {"torch": "2.13.0+cpu",
                                                                  "transformers": transformers}},
            "headlines": [{"name": k, "value": v, "se": se} for k, (v, se) in values.items()]}


def test_headlines_agree_within_two_combined_standard_errors():
    ref = summary({"eaft - sft: general_kl": (0.028, 0.002), "eaft - sft: target_nll": (0.005, 0.004),
                   "dft - sft: general_kl": (0.01, 0.001), "only in ref": (1.0, 0.1)})["headlines"]
    mine = summary({"eaft - sft: general_kl": (0.026, 0.002), "eaft - sft: target_nll": (0.030, 0.004),
                    "dft - sft: general_kl": (0.01, None)})["headlines"]
    rows = {r["name"]: r for r in agreement.compare(ref, mine)}
    kl = rows["eaft - sft: general_kl"]
    assert kl["verdict"] == "agrees" and kl["diff"] == pytest.approx(-0.002)
    assert kl["combined_se"] == pytest.approx((0.002 ** 2 * 2) ** 0.5)
    # 0.025 apart, combined SE 0.0057: beyond 2 SE
    assert rows["eaft - sft: target_nll"]["verdict"] == "differs"
    assert rows["dft - sft: general_kl"]["verdict"] == "not comparable"  # a side without an SE decides nothing
    assert rows["only in ref"]["verdict"] == "not comparable" and rows["only in ref"]["mine"] is None


def test_a_rerun_reports_against_the_reference_and_says_how_to_keep_or_discard(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    before = summary({"eaft - sft: general_kl": (0.028, 0.002)})
    (out / "summary.json").write_text(json.dumps(summary({"eaft - sft: general_kl": (0.026, 0.002)}, "fp32",
                                                         "5.25.0")))
    got = agreement.report(out / "summary.json", before, ["results/demo", "results/metrics/demo-quick-sft-s0"])
    text = (out / "agreement.md").read_text()
    assert got["rows"][0]["verdict"] == "agrees" and "1 of 1 headline numbers agree" in text
    assert "made under bf16, torch 2.13.0+cpu, transformers 5.24.0" in text  # the reference's side
    assert "made under fp32, torch 2.13.0+cpu, transformers 5.25.0" in text  # yours
    assert "as found before this run" in text  # a folder outside the checkout has no committed version
    assert "git add results/demo results/metrics/demo-quick-sft-s0 && git commit" in text
    assert "git restore --staged --worktree results/demo" in text
    assert "1 of 1 headline numbers agree" in capsys.readouterr().out  # printed as well


def test_a_re_render_writes_no_agreement_file(tmp_path):
    same = summary({"x": (1.0, 0.1)})
    (tmp_path / "summary.json").write_text(json.dumps(same))
    assert agreement.report(tmp_path / "summary.json", same, ["results/demo"]) is None
    assert agreement.report(tmp_path / "summary.json", None, ["results/demo"]) is None  # no reference at all
    assert not (tmp_path / "agreement.md").exists()


def test_the_reference_is_the_committed_file_when_there_is_one():
    from common.files import REPO

    committed = agreement.committed(REPO / "results" / "study" / "summary.json")
    if committed is None:
        pytest.skip("not a git checkout with results/study/summary.json committed")
    assert committed["profile"] == "full" and "predictions" in committed


def test_precision_auto_keeps_the_kept_cells_and_refuses_a_mix(monkeypatch):
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: False)
    assert environment.resolve_precision("auto", {"a": "bf16", "b": "bf16"}, "x.yaml") == "bf16"
    assert environment.resolve_precision("auto", {}, "x.yaml") == "fp32"  # nothing kept: the machine's
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: True)
    assert environment.resolve_precision("auto", {}, "x.yaml") == "bf16"
    assert environment.resolve_precision("fp32", {"a": "bf16"}, "x.yaml") == "fp32"  # declared wins
    with pytest.raises(ValueError, match=r"x\.yaml: precision auto, but the kept cells were trained in"):
        environment.resolve_precision("auto", {"a": "bf16", "b": "fp32"}, "x.yaml")
    with pytest.raises(ValueError, match="precision must be one of"):
        environment.resolve_precision("fp16", {}, "x.yaml")


def test_cells_of_other_precision_or_library_versions_are_not_pooled(tmp_path):
    def kept(name, bf16, transformers):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(f"trainer:\n  bf16: {str(bf16).lower()}\n")
        (d / "run_info.json").write_text(json.dumps({"packages": {"torch": "2.13.0+cpu",
                                                                  "transformers": transformers}}))
        return environment.cell_environment(d)

    a, b = kept("a", True, "5.24.0"), kept("b", True, "5.24.0")
    assert environment.refuse_mixed({"a": a, "b": b}, "p.yaml") == a
    with pytest.raises(ValueError, match=r"p\.yaml: .*cannot be pooled: .*a, b: .*5\.24\.0.*c: .*5\.25\.0"):
        environment.refuse_mixed({"a": a, "b": b, "c": kept("c", True, "5.25.0")}, "p.yaml")
    with pytest.raises(ValueError, match="cannot be pooled"):
        environment.refuse_mixed({"a": a, "d": kept("d", False, "5.24.0")}, "p.yaml")


def test_library_pins_are_checked_before_any_work():
    have = environment.installed(("torch",))["torch"]
    environment.check_pins({"torch": have}, "p.yaml")
    environment.check_pins(None, "p.yaml")
    with pytest.raises(RuntimeError, match=r"p\.yaml: packages pins torch 0\.0\.1.*pip install torch==0\.0\.1"):
        environment.check_pins({"torch": "0.0.1"}, "p.yaml")
