"""``optishear-moo evopress`` (EvoPress's level search)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from optishear_moo.cli import main
from optishear_moo.pruning import sparsity_report
from tests.cli.conftest import FAST, PRUNE_WINDOWS


def test_evopress_writes_a_pruned_model_and_report_and_resumes(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from optishear_moo.evopress import search as driver

    output = tmp_path / "evopress"
    settings = ["evopress", "--model", str(tiny_model_dir), "--target-sparsity", "0.6", "--step", "0.1",
                "--levels-each-side", "1", "--offspring", "4", "--stages", "2", *FAST, *PRUNE_WINDOWS]
    argv = [*settings, "--gens", "2", "--output", str(output)]
    assert main(argv) == 0
    report = json.loads((output / "report.json").read_text())
    assert abs(report["sparsity"] - 0.6) < 0.01 and report["n_evaluations"] >= 5
    assert report["pruned_ppl"] > report["dense_ppl"] and len(report["layer_sparsity"]) == 21
    model = AutoModelForCausalLM.from_pretrained(output / "model")
    assert abs(sparsity_report(model).total - report["sparsity"]) < 1e-6
    # the resumed search keeps the database's method (--method auto's choice is not made again)
    monkeypatch.setattr(driver, "choose_level_method", lambda *args, **kwargs: pytest.fail("chosen again"))
    assert main([*settings, "--gens", "3", "--output", str(output), "--resume"]) == 0
    resumed = json.loads((output / "report.json").read_text())
    assert resumed["n_evaluations"] > report["n_evaluations"]
    assert resumed["method_choice"] == report["method_choice"] is not None
    assert resumed["method"] == report["method_choice"]["method"] and resumed["settings"]["method"] == "auto"
    assert main([*settings, "--output", str(tmp_path / "x"), "--method", "obc"]) == 2
    assert "--method 'obc' is not a pruning method" in capsys.readouterr().err


def test_evopress_saves_the_scored_weights_or_the_better_way_on_held_out_windows(tiny_model_dir, tmp_path):
    """Without held-out windows, the default database (blocks pruned from the blocks before them
    at the target) gives the saved model exactly the database's weights at the levels found, and a
    dense-input database has them pruned again block by block; with held-out windows the way with
    the lower KL on them is saved."""
    from optishear_moo.evopress import SparsityLevelDatabase
    from optishear_moo.models import get_adapter, load_model

    settings = ["evopress", "--model", str(tiny_model_dir), "--target-sparsity", "0.6", "--step", "0.1",
                "--levels-each-side", "1", "--offspring", "4", "--stages", "2", "--gens", "4", *FAST,
                "--prune-samples", "6", "--prune-seq-len", "48"]  # not the search's windows
    dense_model, tokenizer = load_model(str(tiny_model_dir))
    for inputs, held_out in (("pruned", "0"), ("dense", "0"), ("pruned", "4")):
        output = tmp_path / f"{inputs}-{held_out}"
        assert main([*settings, "--database-inputs", inputs, "--validation-samples", held_out,
                     "--output", str(output)]) == 0
        report = json.loads((output / "report.json").read_text())
        final = report["final"]
        if held_out == "0":
            assert final["weights"] == ("database" if inputs == "pruned" else "pruned again")
        else:
            assert final["weights"] == min(("database", "pruned again"),
                                           key=lambda way: final["kl_" + way.replace(" ", "_")])
            assert final["kl_database"] != final["kl_pruned_again"]
        equal = final["weights"] == "database"
        assert len(set(report["levels"])) > 1  # a mix, where pruning again changes the weights
        assert report["database_inputs_at"] == (0.6 if inputs == "pruned" else None)
        calibration = _calibration_of(tokenizer, report)
        database = SparsityLevelDatabase.build(dense_model, calibration, report["ladder"], report["method"],
                                               inputs_at=report["database_inputs_at"])
        saved = AutoModelForCausalLM.from_pretrained(output / "model")
        same = [bool(torch.allclose(layer.weight, database.weight(layer.name, level), atol=1e-6))
                for layer, level in zip(get_adapter(saved).prunable_layers(saved), report["levels"])]
        assert all(same) if equal else not all(same)


def _calibration_of(tokenizer, report):
    """The calibration windows a command pruned from, rebuilt from its report."""
    from optishear_moo.data import load_calibration

    settings = report["calibration"]
    return load_calibration(tokenizer, settings["prune_samples"], settings["prune_seq_len"], settings["seed"],
                            settings["source"], sampling=settings["sampling"],
                            n_clusters=settings["n_clusters"], progress=False)


def test_evopress_searches_the_library_default_generations_unless_told(tiny_model_dir, tmp_path, monkeypatch):
    """``evopress`` without ``--gens`` runs as many generations as ``EvoPressConfig`` by default
    (40: 10 left a 70 % search well short), and ``--gens`` overrides it."""
    import optishear_moo.evopress as evopress
    from optishear_moo.evopress import EvoPressConfig

    class Searched(Exception):
        pass

    def search_evopress(model, calibration, config, run):
        raise Searched(config.n_gen)

    assert EvoPressConfig().n_gen == 40
    monkeypatch.setattr(evopress, "search_evopress", search_evopress)
    settings = ["evopress", "--model", str(tiny_model_dir), "--target-sparsity", "0.6", "--step", "0.1",
                "--levels-each-side", "1", *FAST, *PRUNE_WINDOWS]
    for extra, generations in (([], 40), (["--gens", "3"], 3)):
        with pytest.raises(Searched) as searched:
            main([*settings, *extra, "--output", str(tmp_path / f"run{generations}")])
        assert searched.value.args == (generations,)


def test_evopress_prunes_its_database_with_the_method_that_prunes_the_model_better(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """By default (``--method auto``) the database's method is whichever of SparseGPT and Wanda,
    pruning uniformly at the target, has the lower KL to dense on held-out windows as many and as
    long as the pruning windows (the search windows with ``--validation-samples 0``); the report
    names the choice and its scores, and the database is built with it. ``--method`` names one and
    skips the choice."""
    from optishear_moo.evopress import search as evopress

    settings = ["evopress", "--model", str(tiny_model_dir), "--target-sparsity", "0.6", "--step", "0.1",
                "--levels-each-side", "1", "--offspring", "4", "--stages", "2", "--gens", "1", *FAST,
                "--prune-samples", "6", "--prune-seq-len", "48"]
    chosen = {}
    for held_out in (None, "4", "0"):
        output = tmp_path / f"auto-{held_out}"
        extra = ["--validation-samples", held_out] if held_out else []
        assert main([*settings, *extra, "--output", str(output)]) == 0
        report = json.loads((output / "report.json").read_text())
        choice = report["method_choice"]
        assert set(choice["kl"]) == {"sparsegpt", "wanda"}
        assert choice["method"] == min(choice["kl"], key=choice["kl"].get) == report["method"]
        # held-out windows as many (by default) and as long as the pruning ones; none: the search windows
        expected = {None: ("validation", [6, 48]), "4": ("validation", [4, 48]),
                    "0": ("calibration", [4, 32])}
        assert (choice["windows"], choice["window_shape"]) == expected[held_out]
        chosen[held_out] = choice
    assert chosen["4"]["kl"] != chosen["0"]["kl"]  # other windows judged

    real = evopress.choose_level_method
    other = {"sparsegpt": "wanda", "wanda": "sparsegpt"}[chosen["4"]["method"]]
    monkeypatch.setattr(evopress, "choose_level_method", lambda *args, **kwargs: {
        **real(*args, **kwargs), "method": other})
    assert main([*settings, "--output", str(tmp_path / "other")]) == 0
    assert json.loads((tmp_path / "other" / "report.json").read_text())["method"] == other

    monkeypatch.setattr(evopress, "choose_level_method", lambda *args, **kwargs: pytest.fail("not asked"))
    assert main([*settings, "--method", "wanda", "--output", str(tmp_path / "wanda")]) == 0
    report = json.loads((tmp_path / "wanda" / "report.json").read_text())
    assert report["method"] == "wanda" and report["method_choice"] is None
