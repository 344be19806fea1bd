"""The compiled path: equal to eager up to rounding, compiled once per architecture,
static shapes (padded last batch), channels_last.

One inductor compile in the file (module fixture, two graphs: with and without autograd);
the other cases use the `aot_eager` backend, which traces the same graphs in a second.
"""

from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from flatcli import compilation, data, engine
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
    torch.testing.assert_close(got.clean_loss, want.clean_loss, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.clean_correct, want.clean_correct)
    for name in names:
        g, w = got.robust[name], want.robust[name]
        torch.testing.assert_close(g.loss, w.loss, atol=1e-3, rtol=1e-3)
        assert torch.equal(g.correct, w.correct), name


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


def _aot_eager(model):
    return compilation.compiled(model, "on", CPU, backend="aot_eager")


def test_padded_last_batch_equals_unpadded_and_does_not_recompile(
    trained_digits_model, examples
):
    torch._dynamo.reset()
    x, y = examples
    attacks, keys = _attacks(), (1,)
    whole = engine.robust_losses(trained_digits_model, x, y, attacks, keys, batch_size=N)
    model = _aot_eager(trained_digits_model)
    engine.robust_losses(model, x[:32], y[:32], attacks, keys, batch_size=BATCH)
    graphs = _graphs()
    padded = engine.robust_losses(model, x, y, attacks, keys, batch_size=BATCH)  # 16, 16, 8+8
    assert _graphs() == graphs  # the last batch had the full shape
    _assert_agree(padded, whole, ["pgd5", "apgd-ce"])
    torch._dynamo.reset()


def test_channels_last_model_through_the_compiled_path(trained_digits_model, examples):
    torch._dynamo.reset()
    x, y = examples
    attacks, keys = _attacks(), (2,)
    eager = engine.robust_losses(trained_digits_model, x, y, attacks, keys, BATCH)
    channels_last = _aot_eager(trained_digits_model.to(memory_format=torch.channels_last))
    try:
        got = engine.robust_losses(channels_last, x, y, attacks, keys, BATCH)
    finally:
        trained_digits_model.to(memory_format=torch.contiguous_format)
        torch._dynamo.reset()
    _assert_agree(got, eager, ["pgd5", "apgd-ce"])


def test_policy():
    assert not compilation.enabled("auto", CPU) and compilation.enabled("on", CPU)
    assert compilation.enabled("auto", torch.device("cuda"))
    model = torch.nn.Linear(2, 2)
    assert compilation.compiled(model, "auto", CPU) is model  # default: eager on CPU
    assert not compilation.is_compiled(model)
    wrapped = compilation.compiled(model, "on", CPU)
    assert compilation.is_compiled(wrapped) and compilation.compiled(wrapped, "on", CPU) is wrapped
    with pytest.raises(UsageError, match="--compile 'maybe'"):
        compilation.enabled("maybe", CPU)


def test_stacked_weight_settings_and_bf16_through_the_compiled_path(
    trained_digits_model, examples
):
    from flatcli import weights
    from flatcli.attacks.precision import with_precision

    torch._dynamo.reset()
    x, y = examples[0][:BATCH], examples[1][:BATCH]
    pgd = _attacks()[0]
    gen = torch.Generator().manual_seed(0)
    layers = [p for _, p in weights.layers(trained_digits_model)]
    offsets = [[1e-2 * torch.randn(p.shape, generator=gen) for p in layers] for _ in range(2)]
    model = _aot_eager(trained_digits_model)
    try:
        want = engine.robust_losses_at(trained_digits_model, offsets, x, y, [pgd], (3,), 8)
        got = engine.robust_losses_at(model, offsets, x, y, [pgd], (3,), 8)
        bf16 = [with_precision(pgd, "bf16")]
        want_bf16 = engine.robust_losses(trained_digits_model, x, y, bf16, (4,), BATCH)
        got_bf16 = engine.robust_losses(model, x, y, bf16, (4,), BATCH)
    finally:
        torch._dynamo.reset()
    for g, w in zip(got, want, strict=True):
        _assert_agree(g, w, ["pgd5"])
    _assert_agree(got_bf16, want_bf16, ["pgd5"])


@pytest.mark.parametrize(
    "command,args,numbers",
    [
        ("attack", ["--attacks", "pgd3"], ["robust_loss", "robust_err", "clean_loss"]),
        (
            "flatness",
            ["--measure", "average", "--xi", "0.5", "--samples", "2", "--attack", "pgd3"],
            ["robust_loss", "perturbed_robust_loss", "flatness"],
        ),
        (
            "flatness",
            ["--measure", "worst", "--xi", "0.00075", "--iterations", "2", "--restarts", "2",
             "--attack", "pgd3"],
            ["robust_loss", "perturbed_robust_loss", "flatness"],
        ),
        (
            "landscape",
            ["--n-directions", "1", "--steps", "3", "--attack", "pgd2", "--plot", "none",
             "--point-batch", "2"],
            ["clean_loss", "robust_loss", "robust_err"],
        ),
    ],
)  # fmt: skip
def test_every_measure_takes_the_compiled_path_and_says_so(
    command, args, numbers, tmp_path, capsys, monkeypatch
):
    """`--compile on` reaches the engine from attack, flatness (average; worst: the stacked
    ascent) and landscape (stacked points too), gives the eager rows up to rounding and prints
    the compile line on stderr."""
    import pandas as pd

    from flatcli import api
    from flatcli.cli import main

    compile_calls = []

    def aot_eager(model, policy, device, backend="inductor"):
        compile_calls.append(policy)
        return original(model, policy, device, backend="aot_eager")

    def aot_eager_function(fn, policy, device, backend="inductor"):
        compile_calls.append(f"{fn.__name__}:{policy}")
        return original_function(fn, policy, device, backend="aot_eager")

    original, original_function = compilation.compiled, compilation.compiled_function
    monkeypatch.setattr(compilation, "compiled", aot_eager)
    monkeypatch.setattr(compilation, "compiled_function", aot_eager_function)
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
    pd.testing.assert_frame_equal(
        tables["on"][numbers].reset_index(drop=True),
        tables["off"][numbers].reset_index(drop=True),
        atol=1e-4, rtol=1e-4,
    )  # fmt: skip
