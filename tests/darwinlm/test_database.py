import pytest
import torch

from optishear_moo.activations import collect_input_statistics
from optishear_moo.darwinlm.database import (
    StructuredLevelDatabase,
    default_mlp_levels,
    removal_path,
)
from optishear_moo.darwinlm.slicing import apply_levels_
from optishear_moo.models import get_adapter
from tests.conftest import make_tiny_model


def test_levels_are_nested_and_least_squares_beats_plain_removal(calibration):
    model = make_tiny_model("llama")
    database = StructuredLevelDatabase.build(model, calibration, mlp_levels=8)
    assert database.n_levels == {"attention": 2, "mlp": 8}
    layer = get_adapter(model).blocks(model)[1].mlp.down_proj
    stats = collect_input_statistics(model, calibration, layers=[
        x for x in get_adapter(model).prunable_layers(model) if x.name == "model.layers.1.mlp.down_proj"],
        with_gram=True)
    gram = stats["model.layers.1.mlp.down_proj"].gram.double()
    previous = None
    for level in range(9):
        entry = database.get(1, "mlp", level)
        assert entry.weight.shape == (64, 128 - 16 * level) and len(entry.kept) == 128 - 16 * level
        if previous is not None:
            assert set(entry.kept.tolist()) < set(previous.tolist())  # nested levels
        previous = entry.kept
        if 0 < level < 8:
            def error(w_kept, kept=entry.kept):
                delta = layer.weight.double().clone()
                delta[:, kept] -= w_kept.double()
                return float(torch.trace(delta @ gram @ delta.t()))
            plain = error(layer.weight[:, entry.kept])
            assert error(entry.weight) < 0.9 * plain
    assert torch.equal(database.get(1, "mlp", 0).weight, layer.weight)
    attention = database.get(0, "attention", 1)
    assert attention.weight.shape == (64, 32) and len(attention.kept) == 32  # one of two KV groups


def test_removal_path_first_removes_a_dead_channel():
    torch.manual_seed(0)
    x = torch.randn(200, 6)
    x[:, 4] = 0  # channel 4 never fires
    path = removal_path(torch.randn(3, 6), x.t() @ x, 1, [0, 1, 3])
    assert 4 not in path[1].kept.tolist() and len(path[3].kept) == 3






def test_structured_bad_input(calibration):
    with pytest.raises(ValueError, match="supports model types"):
        StructuredLevelDatabase.build(make_tiny_model("gpt2"), calibration)
    model = make_tiny_model("llama")
    with pytest.raises(ValueError, match="must divide"):
        StructuredLevelDatabase.build(model, calibration, mlp_levels=7)
    database = StructuredLevelDatabase.build(model, calibration, mlp_levels=4)
    with pytest.raises(ValueError, match="each of the 3 blocks"):
        apply_levels_(model, database, [[0, 0]])
    with pytest.raises(ValueError, match="0..\\[2, 4\\]"):
        apply_levels_(model, database, [[0, 5]] * 3)
    apply_levels_(model, database, [[2, 0]] * 3)
    with pytest.raises(ValueError, match="already sliced"):
        apply_levels_(model, database, [[0, 0]] * 3)
    assert default_mlp_levels(1536) == 12 and default_mlp_levels(128) == 8
