"""Shared fixtures: seeded, CPU-only, tiny models on the bundled digits data."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from flatcli import data, models
from flatcli.attacks.pgd import PGD

# One thread: predictable under load (two spinning OpenMP threads on a busy 2-core machine are
# 10-25x slower), and the tests are small enough that a second thread gains little.
torch.set_num_threads(1)


def quick_adversarial_training(
    arch: str = "small-cnn", epochs: int = 6, eps: float = 0.1, seed: int = 0, **arch_kwargs
) -> torch.nn.Module:
    """A few epochs of PGD-3 adversarial training on digits (test fixture, not `flatcli train`)."""
    torch.manual_seed(seed)
    x, y = data.load_split("digits", "train")
    model = models.build(arch, 10, 1, **arch_kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    attack = PGD("pgd3", "linf", eps, steps=3, step_size=eps / 2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 128):
            idx = perm[i : i + 128]
            xb, yb = x[idx], y[idx]
            model.eval()
            starts = attack.draw_starts(xb, gen)
            delta = _adversarial_delta(model, xb, yb, attack, starts)
            model.train()
            loss = torch.nn.functional.cross_entropy(model(xb + delta), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _adversarial_delta(model, x, y, attack, starts):
    from flatcli.ascent import Variable, ascend

    def objective(delta):
        logits = model(x + delta)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none"), logits

    (delta,) = ascend(
        objective, [Variable(starts[0], attack.threat, x, attack.step_size)], attack.steps
    )
    return delta


def assert_flips(a: torch.Tensor, b: torch.Tensor, max_flips: int, what: str) -> None:
    """Per-example boolean outcomes (`correct`) of two computations that are equal only up to
    float rounding (inductor vs eager, another batch size, stacked vs one weight setting at a
    time) disagree on at most `max_flips` examples. An example whose margin (true-class logit
    minus the best other) is within rounding of zero may be classified either way, so exact
    equality could fail on a correct implementation; a real bug flips many more."""
    assert a.dtype == b.dtype == torch.bool and a.shape == b.shape, (what, a.dtype, b.dtype)
    flips = int((a != b).sum())
    assert flips <= max_flips, (
        f"{what}: {flips} of {a.numel()} outcomes differ (at most {max_flips} may flip)"
    )


def assert_error_flips(a: float, b: float, n: int, max_flips: int, what: str) -> None:
    """Error rates over the same `n` examples from two such computations (see `assert_flips`)
    are at most `max_flips` examples apart."""
    flips = abs(a - b) * n
    assert flips <= max_flips + 1e-6, (
        f"{what}: error rates {a} and {b} differ by {flips:g} of {n} examples "
        f"(at most {max_flips} may flip)"
    )


@pytest.fixture(scope="session")
def trained_digits_model() -> torch.nn.Module:
    """small-cnn after 6 epochs of PGD-3 AT (eps 0.1) on digits; eval mode. Do not modify it."""
    return quick_adversarial_training()


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    return data.load_split("digits", "test")


def probed_title(page: str, script: str, tmp_path: Path, window: str = "1280,1000") -> str:
    """Open `page` (HTML) in headless Chromium with `script` (JavaScript that sets
    document.title on load) before </body>; return that title. Skips where no Chromium is
    installed, except under CI, which installs it (.ci/run)."""
    browser = next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        assert not os.environ.get("CI"), "CI installs Chromium (.ci/run); the browser test must run"
        pytest.skip("no headless Chromium installed")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", f"<script>{script}</script></body>"))
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={window}",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    title = re.search(r"<title>([^<]*)</title>", done.stdout).group(1)
    return title.replace("&quot;", '"').replace("&amp;", "&")


def flatcli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from flatcli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
