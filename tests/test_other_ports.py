"""Our EAFT against the released EAFT of LLaMA-Factory and of Axolotl, run from their PyPI wheels on the same inputs.

Each wheel is fetched once with `pip download --no-deps` (none of their dependencies is installed) into
data/assets/pypi/ and only the file holding the loss is read:
- LLaMA-Factory 0.9.5, `llamafactory/train/trainer_utils.py`: that module imports transformers, peft and the rest
  of llamafactory at its top, so the two functions `eaft_loss_func` and `_eaft_cross_entropy` are taken from the
  file's syntax tree and executed verbatim with `torch` and `typing.Optional` as their only names (no stand-in for
  any of their modules is needed);
- Axolotl 0.19.0, `axolotl/monkeypatch/loss/eaft.py`: it imports torch alone, so the file is imported as it is.

What the test pins down (docs/trainers.md, "Other implementations", states the same):
- LLaMA-Factory's loss equals ours with norm=3.0 (K fixed at 20 there) to fp32 precision, value and gradient,
  for fp32 and bf16 logits (both upcast before the softmax);
- Axolotl's loss does not divide the entropy by a constant: it equals ours with norm=3.0 times 3**alpha (and ours
  with norm=None, i.e. ln K, times (ln K)**alpha), for fp32 logits; with bf16 logits it computes the cross-entropy
  in bf16, so it agrees only to bf16 rounding;
- all supervised tokens ignored: ours is 0 with a gradient path, LLaMA-Factory's a constant 0 without one,
  Axolotl's NaN (without num_items_in_batch).

    python -m pytest tests/test_other_ports.py -m integration -q     (about 10 s once the wheels are cached)
"""

import ast
import importlib.util
import math
import subprocess
import sys
import typing
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from eaft_loss import get_loss

from tests.conftest import REPO, need

pytestmark = pytest.mark.integration

CACHE = REPO / "data" / "assets" / "pypi"
LLAMAFACTORY = ("llamafactory", "0.9.5", "llamafactory/train/trainer_utils.py")
AXOLOTL = ("axolotl", "0.19.0", "axolotl/monkeypatch/loss/eaft.py")
EAFT = get_loss("eaft")


def wheel_member(dist: str, version: str, member: str) -> Path:
    """One file of a released wheel, downloaded without dependencies and cached under data/assets/pypi/."""
    out = CACHE / f"{dist}-{version}" / member
    if out.exists():
        return out
    folder = CACHE / f"{dist}-{version}"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "-d", str(folder), f"{dist}=={version}"], capture_output=True, text=True, check=False)
    need("pypi", proc.returncode == 0, f"pip download {dist}=={version} failed: {proc.stderr.strip()[-300:]}")
    (wheel,) = folder.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extract(member, folder)
    return out


@pytest.fixture(scope="module")
def llamafactory_eaft():
    path = wheel_member(*LLAMAFACTORY)
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = {"eaft_loss_func", "_eaft_cross_entropy"}
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {d.name for d in defs} == wanted, f"{path} no longer defines {wanted}"
    scope = {"torch": torch, "Optional": typing.Optional}
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), scope)  # noqa: S102
    return scope["eaft_loss_func"]


@pytest.fixture(scope="module")
def axolotl_eaft():
    path = wheel_member(*AXOLOTL)
    spec = importlib.util.spec_from_file_location("axolotl_eaft", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.eaft_loss


def batch(dtype=torch.float32, seed=0, b=3, t=9, v=64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=g) * 3).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.3] = -100
    labels[:, :2] = -100  # a prompt
    return logits, labels


def value_and_grad(fn, logits):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x)
    loss.backward()
    return loss.detach().double(), x.grad.double()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("num_items", [None, 37])
def test_llamafactory_equals_ours_with_norm_3(llamafactory_eaft, alpha, num_items):
    logits, labels = batch()
    n = None if num_items is None else torch.tensor(num_items)
    theirs = value_and_grad(lambda x: llamafactory_eaft({"logits": x}, labels, n, alpha=alpha), logits)
    ours = value_and_grad(lambda x: EAFT(x, labels, num_items_in_batch=n, k=20, alpha=alpha, norm=3.0), logits)
    torch.testing.assert_close(theirs[0], ours[0], rtol=2e-6, atol=0)
    torch.testing.assert_close(theirs[1], ours[1], rtol=1e-5, atol=1e-9)


def test_llamafactory_equals_ours_on_bf16_logits(llamafactory_eaft):
    logits, labels = batch(torch.bfloat16, seed=1)
    theirs = value_and_grad(lambda x: llamafactory_eaft({"logits": x}, labels), logits)
    ours = value_and_grad(lambda x: EAFT(x, labels, k=20, alpha=1.0, norm=3.0), logits)
    torch.testing.assert_close(theirs[0], ours[0], rtol=2e-6, atol=0)


@pytest.mark.parametrize("alpha,k", [(0.5, 20), (1.0, 20), (2.0, 20), (1.0, 5)])
def test_axolotl_is_ours_times_3_to_the_alpha(axolotl_eaft, alpha, k):
    logits, labels = batch(seed=2)
    theirs = value_and_grad(lambda x: axolotl_eaft(SimpleNamespace(logits=x), labels, alpha=alpha, k=k), logits)
    ours = value_and_grad(lambda x: EAFT(x, labels, k=k, alpha=alpha, norm=3.0), logits)
    torch.testing.assert_close(theirs[0], ours[0] * 3.0 ** alpha, rtol=2e-6, atol=0)
    torch.testing.assert_close(theirs[1], ours[1] * 3.0 ** alpha, rtol=1e-5, atol=1e-9)
    # against our default normalisation (ln K), the factor is (ln K) ** alpha
    ln_k = EAFT(logits, labels, k=k, alpha=alpha).double()
    torch.testing.assert_close(theirs[0], ln_k * math.log(k) ** alpha, rtol=2e-6, atol=0)
    assert abs(theirs[0] / ours[0] - 1) > 0.1 or alpha == 0  # the factor is real, not within the tolerance


def test_axolotl_with_num_items_in_batch(axolotl_eaft):
    logits, labels = batch(seed=3)
    n = torch.tensor(41)
    theirs = axolotl_eaft(SimpleNamespace(logits=logits), labels, num_items_in_batch=n).double()
    ours = EAFT(logits, labels, num_items_in_batch=n, k=20, alpha=1.0, norm=3.0).double()
    torch.testing.assert_close(theirs, ours * 3.0, rtol=2e-6, atol=0)


def test_axolotl_computes_the_cross_entropy_in_bf16(axolotl_eaft):
    """bf16 logits: Axolotl's CrossEntropyLoss runs on the bf16 logits (its entropy is upcast, its CE is not), so it
    matches ours only to bf16 rounding (a relative 2**-8 per token), not to fp32 precision."""
    logits, labels = batch(torch.bfloat16, seed=4, t=33, v=200)
    theirs = axolotl_eaft(SimpleNamespace(logits=logits), labels).double()
    ours = EAFT(logits, labels, k=20, alpha=1.0, norm=3.0).double() * 3.0
    rel = abs(theirs / ours - 1)
    assert 1e-5 < rel < 2 ** -7  # outside fp32 precision, within bf16 rounding (6e-4 at most over 20 seeds)
    fp32 = axolotl_eaft(SimpleNamespace(logits=logits.float()), labels).double()
    assert abs(fp32 / ours - 1) < 2e-6


def test_all_ignored_batch(llamafactory_eaft, axolotl_eaft):
    logits, labels = batch(seed=5)
    labels[:] = -100
    x = logits.clone().requires_grad_(True)
    ours = EAFT(x, labels, k=20, alpha=1.0, norm=3.0)
    ours.backward()
    assert ours.item() == 0.0 and x.grad is not None and x.grad.abs().sum() == 0
    lf = llamafactory_eaft({"logits": logits.clone().requires_grad_(True)}, labels)
    assert lf.item() == 0.0 and not lf.requires_grad  # a constant: backward() on it would raise
    assert torch.isnan(axolotl_eaft(SimpleNamespace(logits=logits), labels))
