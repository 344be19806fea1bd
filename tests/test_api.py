"""The public Python API: load a checkpoint, load examples, read a table."""

import torch

from flatcli import api, models, tables
from flatcli.checkpoints import save_checkpoint


def test_load_model_load_examples_read_table(tmp_path):
    torch.manual_seed(0)
    model = models.build("tiny", 10, 1)
    path = save_checkpoint(
        tmp_path / "run" / "epoch_0001.safetensors", model, "tiny", {}, "digits", 1
    )
    loaded = api.load_model(path)
    x, y = api.load_examples("digits", "test", 16)
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64 and 0 <= x.min() <= x.max() <= 1
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    tables.write_part(
        tmp_path / "out", "attack", "run__e0001", "0" * 16, [{"run": "run", "epoch": 1}]
    )
    df = api.read_table(tmp_path / "out", "attack")
    assert list(df.run) == ["run"] and list(df.columns) == tables.columns("attack")
