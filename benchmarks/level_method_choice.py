"""Does ``optishear-moo evopress --method auto`` base its database on the better method?

    python benchmarks/level_method_choice.py                                   # SmolLM2, 50/60/70 %
    python benchmarks/level_method_choice.py --targets 0.6,0.7 --resume        # keep the 50 % row
    python benchmarks/level_method_choice.py --model qwen2.5-coder-0.5b --targets 0.5,0.7 \\
        --baselines search_vs_baselines_qwen --name level_method_choice_qwen

For each target, ``choose_level_method`` (what ``search_evopress`` runs with ``method="auto"``, the
default) prunes the model uniformly with SparseGPT and with Wanda from the calibration windows of
the search-vs-baselines table (32 x 512, which ``evopress`` prunes from by default) and scores each
by KL to the dense model on held-out windows shaped as ``evopress`` shapes them by default: as many
and as long as the pruning windows, from WikiText-2 validation (``--validation-samples`` x
``--validation-seq-len`` to try others; 8 x 128 ranked Wanda above SparseGPT on SmolLM2 at 50 %).
Next to them: the same uniform models' WikiText-2 *test* perplexity from that table
(``results/BASELINES.json``, same windows), and the EvoPress level search's perplexity over each
method's database where the table has it. The choice is right where the method with the lower
KL also has the lower test perplexity. Writes results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time

from _common import RESULTS, device_label, environment, grouped_bars, markdown_table, save_json

from optishear_moo import load_calibration, load_model
from optishear_moo.evopress import choose_level_method
from optishear_moo.evopress.config import LEVEL_METHOD_CANDIDATES

LEVEL_ROW = {"sparsegpt": "EvoPress levels, database pruned at the target (search_evopress default)",
             "wanda": "EvoPress levels over wanda, database pruned at the target (search_evopress default)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--targets", default="0.5,0.6,0.7")
    parser.add_argument("--baselines", default="search_vs_baselines",
                        help="results/NAME.json with the uniform baselines' test perplexity")
    parser.add_argument("--validation-samples", type=int, default=None,
                        help="default: the table's --n-samples")
    parser.add_argument("--validation-seq-len", type=int, default=None, help="default: the table's --seq-len")
    parser.add_argument("--name", default="level_method_choice")
    parser.add_argument("--resume", action="store_true",
                        help="keep a previous run's rows at targets not in --targets (same settings)")
    args = parser.parse_args()
    table_path = RESULTS / f"{args.baselines}.json"
    if not table_path.is_file():
        parser.error(f"{table_path} does not exist: run search_vs_baselines.py --name {args.baselines} first")
    table = json.loads(table_path.read_text())
    if table["model"] != args.model:
        parser.error(f"{table_path.name} holds {table['model']}, not {args.model}: pass its --baselines")
    cell = {(row["target"], row["method"]): row["ppl"] for row in table["rows"]}
    targets = args.targets.split(",")
    if not all(t.replace(".", "", 1).isdigit() and 0 < float(t) < 1 for t in targets):
        parser.error(f"--targets {args.targets!r}: sparsities between 0 and 1, e.g. 0.5,0.7 (no N:M)")
    missing = [f"{m} (uniform) at {t}" for t in targets for m in LEVEL_METHOD_CANDIDATES
               if (t, f"{m} (uniform)") not in cell]
    if missing:
        parser.error(f"{table_path.name} has no {missing[0]}: run search_vs_baselines.py for it first")

    settings = table["settings"]
    args.validation_samples = args.validation_samples or settings["n_samples"]
    args.validation_seq_len = args.validation_seq_len or settings["seq_len"]
    kept = resumed_rows(parser, args, settings, targets) if args.resume else []
    model, tokenizer = load_model(args.model)
    calibration = load_calibration(tokenizer, settings["n_samples"], settings["seq_len"], seed=0)
    windows = load_calibration(tokenizer, args.validation_samples, args.validation_seq_len, seed=0,
                               source="wikitext2-valid")
    payload = {"benchmark": args.name, "model": args.model,
               "settings": {key: value for key, value in vars(args).items() if key != "resume"},
               "calibration": {"n_samples": settings["n_samples"], "seq_len": settings["seq_len"]},
               "environment": environment(), "rows": kept}
    for target in targets:
        started = time.perf_counter()
        choice = choose_level_method(model, calibration, float(target), windows)
        seconds = time.perf_counter() - started
        uniform = {m: cell[target, f"{m} (uniform)"] for m in LEVEL_METHOD_CANDIDATES}
        searched = {m: cell.get((target, LEVEL_ROW[m])) for m in LEVEL_METHOD_CANDIDATES}
        row = {"target": target, "chosen": choice["method"], "kl": choice["kl"], "uniform_ppl": uniform,
               "level_search_ppl": searched, "right": choice["method"] == min(uniform, key=uniform.get),
               "seconds": seconds}
        payload["rows"] = sorted([*payload["rows"], row], key=lambda r: float(r["target"]))
        save_json(args.name, payload)
        print(f"{target}: chose {choice['method']}; KL {choice['kl']}; uniform test ppl {uniform}; "
              f"{seconds:.0f} s", flush=True)
        write_table(payload, args.name)  # after every target: a stopped run leaves its rows' table


def resumed_rows(parser, args, settings: dict, targets: list[str]) -> list[dict]:
    """The rows of results/NAME.json at targets this run does not measure again; the saved run must
    share the model, the baselines table, the validation windows and the calibration."""
    path = RESULTS / f"{args.name}.json"
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    for key in ("model", "baselines", "validation_samples", "validation_seq_len"):
        if saved["settings"][key] != getattr(args, key):
            flag = "--" + key.replace("_", "-")
            parser.error(f"{flag} {getattr(args, key)} differs from {path.name}'s {saved['settings'][key]}: "
                         f"pass {flag} {saved['settings'][key]}, or drop --resume to start a new table")
    if saved["calibration"] != {"n_samples": settings["n_samples"], "seq_len": settings["seq_len"]}:
        parser.error(f"{path.name} was measured on {saved['calibration']} calibration windows, "
                     f"{args.baselines}.json now has others: drop --resume to measure every target again")
    return [row for row in saved["rows"] if row["target"] not in targets]


def write_table(payload: dict, name: str) -> None:
    methods = LEVEL_METHOD_CANDIDATES
    header = ["target", *[f"KL {m}" for m in methods], "chosen", *[f"uniform {m} ppl" for m in methods],
              *[f"levels over {m} ppl" for m in methods], "right", "seconds"]
    rows = [[row["target"], *[f"{row['kl'][m]:.4f}" for m in methods], row["chosen"],
             *[row["uniform_ppl"][m] for m in methods], *[row["level_search_ppl"][m] for m in methods],
             "yes" if row["right"] else "no", round(row["seconds"])] for row in payload["rows"]]
    device = device_label(payload["environment"])
    calibration = payload["calibration"]
    text = (f"{payload['model']}; KL to dense on {payload['settings']['validation_samples']} x "
            f"{payload['settings']['validation_seq_len']} WikiText-2 validation tokens after uniform "
            f"pruning from {calibration['n_samples']} x {calibration['seq_len']} calibration windows; "
            f"ppl: WikiText-2 test, from results/{payload['settings']['baselines']}.json; "
            f"device: {device}\n\n"
            f"{markdown_table(header, rows)}\n")
    (RESULTS / f"{name}.md").write_text(text)
    grouped_bars(RESULTS / f"{name}.png", [row["target"] for row in payload["rows"]],
                 {f"{m} (uniform)": [row["kl"][m] for row in payload["rows"]] for m in methods},
                 "KL to dense, held-out windows", payload["model"], figsize=(6, 3.5))
    print(text)


if __name__ == "__main__":
    main()
