"""The compiled path: equal to eager up to rounding, compiled once per architecture,
static shapes (padded last batch), channels_last, stacked weight settings, bf16.

Every claim that compiled numbers equal eager's runs the real `inductor` backend (CPU): it
generates and compiles kernels of its own, which may round differently from eager's, so only it
can show that they agree (`aot_eager` runs eager's kernels on the traced graph). One inductor
case per claim, all on the small sample model and the same batch shapes, so that kernels
compiled for one case are reused by the next. `aot_eager`, which traces the same graphs in a
second, serves the tests of which measures take the compiled path.
"""

from pathlib import Path

import pytest
import torch
from conftest import assert_error_flips, assert_flips
from torch._dynamo.utils import counters

from flatcli import data, engine, runtime
from flatcli.attacks.apgd import APGDCE
from flatcli.attacks.pgd import PGD
from flatcli.checkpoints import discover
from flatcli.config.commands import AttackConfig
from flatcli.errors import UsageError
from flatcli.evaluation import SharedModels, load_for_eval

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints" / "at"
CPU = torch.device("cpu")
EPS = 0.15  # the sample runs' training eps
N, BATCH = 40, 16  # batches of 16, 16 and a last one of 8 rows padded to 16


def _attacks():
    # One restart each, so PGD and APGD-CE run batches of the same shape (the same two graphs).
    return [
        PGD("pgd5", "linf", EPS, steps=5, step_size=EPS / 4),
        APGDCE("apgd-ce", "linf", EPS, steps=10),
    ]


def _refs():
    return {ref.epoch: ref for ref in discover([SAMPLES])}


def _config():
    return AttackConfig(dataset="digits", n_examples=N, eps=EPS)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _assert_agree(got: engine.ExampleLosses, want: engine.ExampleLosses, names) -> None:
    """Losses within float tolerance; outcomes equal but for at most one example (of 16 to 40)
    whose margin is within rounding of zero, which compiled kernels may classify either way."""
    torch.testing.assert_close(got.clean_loss, want.clean_loss, atol=1e-4, rtol=1e-4)
    assert_flips(got.clean_correct, want.clean_correct, 1, "clean")
    for name in names:
        g, w = got.robust[name], want.robust[name]
        torch.testing.assert_close(g.loss, w.loss, atol=1e-3, rtol=1e-3)
        assert_flips(g.correct, w.correct, 1, name)


@pytest.fixture(scope="module")
def examples():
    return data.load_split("digits", "test", N)


@pytest.fixture(scope="module")
def inductor_run(examples):
    """Epoch 25 then epoch 10 of the `at` sample run through one shared model, eager and
    compiled (inductor); the graph count after each compiled checkpoint."""
    torch._dynamo.reset()
    x, y = examples
    shared, refs, keys = SharedModels(), _refs(), (0, "compile")
    out = {}
    for epoch in (25, 10):
        model, _ = shared.load(refs[epoch], _config(), CPU)
        eager = engine.robust_losses(model, x, y, _attacks(), keys, BATCH)
        compiled = engine.robust_losses(model, x, y, _attacks(), keys, BATCH, compile="on")
        out[epoch] = (model, eager, compiled, _graphs())
    yield out
    torch._dynamo.reset()


def test_compiled_equals_eager_on_a_trained_checkpoint(inductor_run):
    for epoch in (25, 10):
        _, eager, compiled, _ = inductor_run[epoch]
        _assert_agree(compiled, eager, ["pgd5", "apgd-ce"])
        assert eager.robust["pgd5"].correct.float().mean() < eager.clean_correct.float().mean()
    assert inductor_run[25][2].compile_seconds > 0  # the first checkpoint compiled, timed
    assert inductor_run[25][1].compile_seconds == 0  # eager


def test_second_checkpoint_of_an_architecture_does_not_recompile(inductor_run):
    first_model, _, first, graphs_after_first = inductor_run[25]
    second_model, eager, second, graphs_after_second = inductor_run[10]
    assert second_model is first_model  # the epoch-10 weights were copied into it in place
    assert graphs_after_first == 2  # with and without autograd; the padded last batch reused them
    assert graphs_after_second == graphs_after_first
    assert second.compile_seconds == 0
    assert not torch.equal(first.robust["pgd5"].loss, second.robust["pgd5"].loss)


def test_shared_model_holds_the_loaded_checkpoint(examples):
    x, y = examples
    refs, shared = _refs(), SharedModels()
    shared.load(refs[25], _config(), CPU)
    model, _ = shared.load(refs[3], _config(), CPU)
    fresh, _ = load_for_eval(refs[3], _config(), CPU)
    want = fresh.state_dict()
    assert model.state_dict().keys() == want.keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, want[name]), name


def _sample_model():
    """A fresh eager instance of the sample run's last checkpoint (frozen, eval mode)."""
    return load_for_eval(_refs()[25], _config(), CPU)[0]


def test_padded_last_batch_equals_unpadded_and_does_not_recompile(inductor_run, examples):
    """The fixture's inductor run pads its last batch of 8 rows to 16 with repeats: the rows kept
    equal one eager batch of all 40 (no batch boundary), and no third graph was compiled."""
    x, y = examples
    whole = engine.robust_losses(_sample_model(), x, y, _attacks(), (0, "compile"), batch_size=N)
    _, _, padded, graphs = inductor_run[25]
    _assert_agree(padded, whole, ["pgd5", "apgd-ce"])
    assert graphs == 2  # the 8+8-row batch reused the 16-row graphs


def test_channels_last_model_through_the_compiled_path(examples):
    """Inductor generates other kernels for a channels_last model (`load_for_eval`'s layout on
    CUDA)."""
    torch._dynamo.reset()
    x, y = examples
    attacks, keys = _attacks(), (2,)
    model = _sample_model()
    eager = engine.robust_losses(model, x, y, attacks, keys, BATCH)
    channels_last = model.to(memory_format=torch.channels_last)
    try:
        got = engine.robust_losses(channels_last, x, y, attacks, keys, BATCH, compile="on")
    finally:
        torch._dynamo.reset()
    _assert_agree(got, eager, ["pgd5", "apgd-ce"])


def test_policy():
    assert not runtime.enabled("auto", CPU) and runtime.enabled("on", CPU)
    assert runtime.enabled("auto", torch.device("cuda"))
    model = torch.nn.Linear(2, 2)
    assert runtime.compiled(model, "auto", CPU) is model  # default: eager on CPU
    assert not runtime.is_compiled(model)
    wrapped = runtime.compiled(model, "on", CPU)
    assert runtime.is_compiled(wrapped) and runtime.compiled(wrapped, "on", CPU) is wrapped
    with pytest.raises(UsageError, match="--compile 'maybe'"):
        runtime.enabled("maybe", CPU)


def test_stacked_weight_settings_and_bf16_through_the_compiled_path(examples):
    """Inductor compiles the stacked model (two weight settings, vmapped) and the bf16 search
    (autocast) into kernels of their own; both equal eager up to rounding."""
    from flatcli import weights
    from flatcli.attacks.precision import with_precision

    torch._dynamo.reset()
    x, y = examples[0][:BATCH], examples[1][:BATCH]
    pgd = _attacks()[0]
    eager = _sample_model()
    gen = torch.Generator().manual_seed(0)
    layers = [p for _, p in weights.layers(eager)]
    offsets = [[1e-2 * torch.randn(p.shape, generator=gen) for p in layers] for _ in range(2)]
    model = runtime.compiled(eager, "on", CPU)  # inductor
    try:
        want = engine.robust_losses_at(eager, offsets, x, y, [pgd], (3,), 8)
        got = engine.robust_losses_at(model, offsets, x, y, [pgd], (3,), 8)
        bf16 = [with_precision(pgd, "bf16")]
        want_bf16 = engine.robust_losses(eager, x, y, bf16, (4,), BATCH)
        got_bf16 = engine.robust_losses(model, x, y, bf16, (4,), BATCH)
    finally:
        torch._dynamo.reset()
    for g, w in zip(got, want, strict=True):
        _assert_agree(g, w, ["pgd5"])
    _assert_agree(got_bf16, want_bf16, ["pgd5"])


@pytest.mark.parametrize(
    "command,args,numbers,backend",
    [
        ("attack", ["--attacks", "pgd3"], ["robust_loss", "robust_err", "clean_loss"],
         "aot_eager"),
        # The real backend once, end to end through the CLI (the stacked and bf16 paths have an
        # inductor case of their own above).
        ("attack", ["--attacks", "pgd3"], ["robust_loss", "robust_err", "clean_loss"],
         "inductor"),
        (
            "flatness",
            ["--measure", "average", "--xi", "0.5", "--samples", "2", "--attack", "pgd3"],
            ["robust_loss", "perturbed_robust_loss", "flatness"],
            "aot_eager",
        ),
        (
            "flatness",
            ["--measure", "worst", "--xi", "0.00075", "--iterations", "2", "--restarts", "2",
             "--attack", "pgd3"],
            ["robust_loss", "perturbed_robust_loss", "flatness"],
            "aot_eager",
        ),
        (
            "landscape",
            ["--n-directions", "1", "--steps", "3", "--attack", "pgd2", "--plot", "none",
             "--point-batch", "2"],
            ["clean_loss", "robust_loss", "robust_err"],
            "aot_eager",
        ),
    ],
)  # fmt: skip
def test_every_measure_takes_the_compiled_path_and_says_so(
    command, args, numbers, backend, tmp_path, capsys, monkeypatch
):
    """`--compile on` reaches the engine from attack, flatness (average; worst: the stacked
    ascent) and landscape (stacked points too), gives the eager rows up to rounding (error rates
    up to one of the 16 examples flipped) and prints the compile line on stderr."""
    import pandas as pd

    from flatcli import api
    from flatcli.cli import main

    compile_calls = []

    def recorded(model, policy, device, asked="inductor"):
        compile_calls.append(policy)
        return original(model, policy, device, backend=chosen(asked))

    def recorded_function(fn, policy, device, asked="inductor"):
        compile_calls.append(f"{fn.__name__}:{policy}")
        return original_function(fn, policy, device, backend=chosen(asked))

    def chosen(asked: str) -> str:  # what flatcli asked for (inductor), or the test's backend
        return asked if backend == "inductor" else backend

    original, original_function = runtime.compiled, runtime.compiled_function
    monkeypatch.setattr(runtime, "compiled", recorded)
    monkeypatch.setattr(runtime, "compiled_function", recorded_function)
    torch._dynamo.reset()
    tables, stderr = {}, ""
    for policy in ("off", "on"):
        out = tmp_path / policy
        with pytest.raises(SystemExit) as exit_info:
            main([command, str(SAMPLES / "epoch_0025.safetensors"), "--out", str(out), "-f",
                  "csv", "--n-examples", "16", "--compile", policy, *args])  # fmt: skip
        stderr += capsys.readouterr().err
        assert exit_info.value.code == 0
        tables[policy] = api.read_table(out, command).sort_values(numbers[:1])
    torch._dynamo.reset()
    assert "on" in compile_calls and "torch.compile:" in stderr
    assert ("call_stacked:on" in compile_calls) == ("worst" in args)
    losses = [c for c in numbers if not c.endswith("_err")]
    pd.testing.assert_frame_equal(
        tables["on"][losses].reset_index(drop=True),
        tables["off"][losses].reset_index(drop=True),
        atol=1e-4, rtol=1e-4,
    )  # fmt: skip
    for column in set(numbers) - set(losses):
        for on, off in zip(tables["on"][column], tables["off"][column], strict=True):
            assert_error_flips(on, off, 16, 1, column)
