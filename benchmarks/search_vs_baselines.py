"""Searched pruning against the fixed recipes (WikiText-2 test perplexity).

    python benchmarks/search_vs_baselines.py                        # SmolLM2-135M, 50/60/70 % and 2:4
    python benchmarks/search_vs_baselines.py --model qwen2.5-coder-0.5b --targets 0.5,0.7 \\
        --name search_vs_baselines_qwen                             # Qwen2.5-0.5B (split wheels)
    python benchmarks/search_vs_baselines.py --resume               # continue, keeping finished rows
    python benchmarks/search_vs_baselines.py --resume --redo LABEL  # run one method's rows again
    python benchmarks/search_vs_baselines.py --targets 0.5,0.6,0.7 --seeds 3 \
        --name search_vs_baselines_seeds                            # median and range over 3 seeds

Per target: uniform and OWL Wanda and SparseGPT (``prune_model``); OptiShear's searched metric and
allocation without and with the OBS weight update (``search_optishear``); the EvoPress-style level
search over a SparseGPT database (``search_evopress``; ``--level-methods`` adds databases pruned with
Wanda, RIA or magnitude) built from dense inputs as EvoPress does and
built as ``search_evopress`` does by default (each block pruned from the blocks before it pruned at
the target), each shown with the database's weights and with the allocation found pruned again
block by block; and the joint OptiShear space, metric + allocation + update
(``search_optishear(search_update=True)``). Every method prunes from the same
calibration windows (``--n-samples`` x ``--seq-len``); searches score candidates on a smaller
set (``--search-samples`` x ``--search-seq-len``) and choose their plan on held-out
WikiText-2 validation windows. With ``--seeds N`` every row runs N times, seed s drawing all the
windows again and seeding the searches with s; cells show the median and [min, max], and a second
table each method's perplexity over uniform SparseGPT's in the same seed. A rerun with
``--resume`` and more seeds adds them. Writes results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import RESULTS, device_label, environment, grouped_bars, markdown_table, save_json, summary

from optishear_moo import (
    CalibrationSet,
    EvoPressConfig,
    OptiShearConfig,
    SearchRun,
    load_calibration,
    load_model,
    prune_model,
    search_evopress,
    search_optishear,
)
from optishear_moo.evaluation import perplexity
from optishear_moo.evopress.config import GENERATIONS
from optishear_moo.pruning import DenseSnapshot

BASELINES = [("wanda", "uniform"), ("wanda", "owl"), ("sparsegpt", "uniform"), ("sparsegpt", "owl")]
REFERENCE = "sparsegpt (uniform)"  # the fixed recipe every row is divided by, seed by seed
SEARCHES = ["OptiShear", "OptiShear + OBS update", "joint (metric + allocation + update)"]
# (database inputs, pruned again block by block) -> label
LEVELS = {("dense", False): "EvoPress levels, dense-input database",
          ("dense", True): "EvoPress levels, dense-input database, pruned again block by block",
          ("pruned", False): "EvoPress levels, database pruned at the target (search_evopress default)",
          ("pruned", True): "EvoPress levels, database pruned at the target, pruned again block by block"}
LEVEL_METHODS = ("sparsegpt", "wanda", "ria", "magnitude")


def level_label(method: str, inputs: str, again: bool) -> str:
    """A level row's label: the SparseGPT database's as in LEVELS, another method's names it."""
    label = LEVELS[inputs, again]
    if method == "sparsegpt":
        return label
    return label.replace("EvoPress levels", f"EvoPress levels over {method}")


def level_labels() -> list[str]:
    return [level_label(method, *key) for method in LEVEL_METHODS for key in LEVELS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--targets", default="0.5,0.6,0.7,2:4")
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--search-samples", type=int, default=8)
    parser.add_argument("--search-seq-len", type=int, default=128)
    parser.add_argument("--pop", type=int, default=8, help="OptiShear population")
    parser.add_argument("--gens", type=int, default=3, help="OptiShear generations")
    parser.add_argument("--level-offspring", type=int, default=16)
    parser.add_argument("--level-gens", type=int, default=GENERATIONS, help="default: EvoPressConfig's")
    parser.add_argument("--level-methods", default="sparsegpt",
                        help="methods the level databases are pruned with, comma-separated "
                             f"({', '.join(LEVEL_METHODS)}; default: sparsegpt)")
    parser.add_argument("--eval-segments", type=int, default=16)
    parser.add_argument("--eval-seq-len", type=int, default=1024)
    parser.add_argument("--skip", action="append", default=[], metavar="LABEL",
                        help="a method to leave out, by its table label (repeat for more)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run every row with seeds 0..N-1 (calibration, search and validation windows "
                             "drawn again, searches seeded); tables show median [min, max]")
    parser.add_argument("--name", default="search_vs_baselines")
    parser.add_argument("--resume", action="store_true", help="keep the rows a previous run finished")
    parser.add_argument("--redo", action="append", default=[], metavar="LABEL",
                        help="with --resume: run a method again (its rows at --targets are dropped "
                             "first), by its table label (repeat for more)")
    args = parser.parse_args()
    skip, redo = set(args.skip), set(args.redo)
    labels = {f"{m} ({a})" for m, a in BASELINES} | set(SEARCHES) | set(level_labels())
    for flag, named in (("--skip", skip), ("--redo", redo)):
        if named - labels:
            parser.error(f"{flag} {sorted(named - labels)[0]!r} is not a table label: use one of the "
                         "method names in results/*.md")
    level_methods = args.level_methods.split(",")
    if set(level_methods) - set(LEVEL_METHODS):
        parser.error(f"--level-methods {args.level_methods!r}: use {', '.join(LEVEL_METHODS)}")
    if redo and not args.resume:
        parser.error("--redo runs rows of a previous run again: add --resume")
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: run at least one seed")

    path = RESULTS / f"{args.name}.json"
    payload = json.loads(path.read_text()) if args.resume and path.exists() else None
    if payload is not None:
        targets = set(args.targets.split(","))
        payload["rows"] = [row for row in payload["rows"]
                           if not (row["method"] in redo and row["target"] in targets)]
        check_resumed_settings(parser, payload, args)
    model, tokenizer = load_model(args.model)
    windows = {}

    def draw(seed: int) -> None:
        """Every role's windows for ``seed`` (seed 0: the windows of a one-seed table)."""
        windows.update(
            seed=seed,
            calibration=load_calibration(tokenizer, args.n_samples, args.seq_len, seed=seed),
            search=load_calibration(tokenizer, args.search_samples, args.search_seq_len, seed=seed),
            validation=load_calibration(tokenizer, args.search_samples, args.search_seq_len, seed=seed,
                                        source="wikitext2-valid"))

    def evaluate() -> float:
        return perplexity(model, tokenizer, args.eval_seq_len, args.eval_segments).perplexity

    if payload is None:
        payload = {"benchmark": args.name, "model": args.model, "settings": vars(args),
                   "environment": environment(), "dense_ppl": evaluate(), "rows": []}
    done = {(row.get("seed", 0), row["target"], row["method"]) for row in payload["rows"]}
    snapshot = DenseSnapshot.of(model)

    def record(target: str, method: str, run) -> None:
        seed = windows["seed"]
        if (seed, target, method) in done or method in skip:
            return
        started = time.perf_counter()
        try:
            details = run() or {}
            ppl = evaluate()
        finally:
            snapshot.restore()
        row = {"target": target, "method": method, "seed": seed, "ppl": ppl,
               "seconds": time.perf_counter() - started, **details}
        payload["rows"].append(row)
        save_json(args.name, payload)
        print(f"seed {seed} {target:>4} {method:<40} ppl {ppl:10.2f}  {row['seconds']:7.0f} s  "
              f"{row.get('evaluations', '')}", flush=True)

    def run_target(target: str) -> None:
        nm = target if ":" in target else None
        calibration = windows["calibration"]
        sparsity = 0.5 if nm else float(target)
        for method, allocation in BASELINES:
            if nm and allocation == "owl":
                continue

            def baseline(method=method, allocation=allocation):
                prune_model(model, calibration, method=method, sparsity=sparsity, nm=nm,
                            allocation=allocation, progress=False)

            record(target, f"{method} ({allocation})", baseline)

        def optishear(update="none", search_update=False):
            config = OptiShearConfig(sparsity, nm=nm, pop_size=args.pop, n_gen=args.gens, update=update,
                                     search_update=search_update)
            sets = CalibrationSet(windows["search"], prune=calibration, validation=windows["validation"])
            result = search_optishear(model, sets, config, SearchRun(seed=windows["seed"]))
            result.apply(model)  # pruned from the same windows as the baselines
            return {"evaluations": result.n_evaluations, "plan": result.chosen.to_dict(),
                    "search_seconds": result.seconds}

        record(target, SEARCHES[0], optishear)
        record(target, SEARCHES[1], lambda: optishear(update="obs"))
        databases = [(m, inputs) for m in level_methods for inputs in ("dense", "pruned")]
        for level_method, inputs in databases if nm is None else ():
            searched = {}

            def levels(sequential: bool, level_method=level_method, inputs=inputs, searched=searched):
                if not searched:  # one search serves both rows: they differ in how the weights are set
                    config = EvoPressConfig(sparsity, method=level_method, database_inputs=inputs,
                                            n_offsprings=args.level_offspring, n_gen=args.level_gens)
                    sets = CalibrationSet(windows["search"], prune=calibration)
                    searched["choice"] = search_evopress(model, sets, config, SearchRun(seed=windows["seed"]))
                choice = searched["choice"]
                # pruned again: the allocation found, pruned block by block from the same windows as the
                # baselines; database: its weights, exactly what the search scored
                choice.apply(model, weights="pruned again" if sequential else "database")
                return {"evaluations": choice.n_evaluations, "generations": args.level_gens,
                        "offspring": args.level_offspring,
                        "search_seconds": choice.seconds - choice.database_seconds,
                        "database_seconds": choice.database_seconds, "levels": choice.levels,
                        "layer_sparsity_range": [min(choice.layer_sparsity.values()),
                                                 max(choice.layer_sparsity.values())]}

            record(target, level_label(level_method, inputs, False), lambda: levels(False))
            record(target, level_label(level_method, inputs, True), lambda: levels(True))
        record(target, SEARCHES[2], lambda: optishear(search_update=True))

    for seed in range(args.seeds):
        draw(seed)
        for target in args.targets.split(","):
            run_target(target)

    write_table(payload, args.name)


def check_resumed_settings(parser, payload: dict, args) -> None:
    """A resumed table keeps one protocol: every setting that shapes its rows must be the saved one,
    except the level search's budget when no level row is kept (all of them are redone)."""
    saved = payload["settings"]
    kept_levels = any(row["method"] in level_labels() for row in payload["rows"])
    for key, value in vars(args).items():
        if key in ("targets", "skip", "redo", "resume", "name", "seeds") or saved.get(key, value) == value:
            continue
        if key in ("level_gens", "level_offspring") and not kept_levels:
            continue
        flag = "--" + key.replace("_", "-")
        parser.error(f"{flag} {value} differs from the resumed table's {saved[key]}: pass {flag} "
                     f"{saved[key]}" + (", or --redo every EvoPress row" if key.startswith("level") else ""))
    payload["settings"] = {**saved, **{key: value for key, value in vars(args).items()
                                       if key not in ("targets", "skip", "redo", "resume")},
                           "seeds": max(saved.get("seeds", 1), args.seeds)}


def write_table(payload: dict, name: str) -> None:
    targets = sorted(dict.fromkeys(row["target"] for row in payload["rows"]),  # sparsities, then N:M
                     key=lambda t: (":" in t, float(t) if ":" not in t else 0.0, t))
    order = [f"{method} ({allocation})" for method, allocation in BASELINES] + SEARCHES[:2] + [
        *level_labels(), SEARCHES[2]]
    found = list(dict.fromkeys(row["method"] for row in payload["rows"]))
    methods = [m for m in order if m in found] + [m for m in found if m not in order]
    cells: dict[tuple[str, str], dict[int, dict]] = {}  # (target, method) -> seed -> row
    for row in payload["rows"]:
        cells.setdefault((row["target"], row["method"]), {})[row.get("seed", 0)] = row
    seeds = sorted({row.get("seed", 0) for row in payload["rows"]})

    def column(method: str, value) -> list:
        out = []
        for target in targets:
            runs = cells.get((target, method), {})
            values = [v for v in (value(target, seed, row) for seed, row in sorted(runs.items()))
                      if v is not None]
            partial = f" ({len(values)} of {len(seeds)} seeds)" if 0 < len(values) < len(seeds) else ""
            out.append(summary(values) + partial if values else None)
        return [method, *out]

    header = ["method", *targets]
    rows = [column(method, lambda t, s, row: row["ppl"]) for method in methods]
    seconds = [column(method, lambda t, s, row: round(row["seconds"])) for method in methods]

    def over_reference(target: str, seed: int, row: dict):
        reference = cells.get((target, REFERENCE), {}).get(seed)
        return None if reference is None else row["ppl"] / reference["ppl"]

    ratios = [column(method, over_reference) for method in methods if method != REFERENCE]
    device = device_label(payload["environment"])
    spread = (f"; median [min, max] over seeds {', '.join(map(str, seeds))} (windows drawn again and "
              "searches seeded per seed)" if len(seeds) > 1 else "")
    text = (f"{payload['model']}, WikiText-2 test ppl; dense: {payload['dense_ppl']:.2f}; "
            f"device: {device}{spread}\n\n{markdown_table(header, rows)}\n\n")
    if any(value is not None for row in ratios for value in row[1:]):
        text += (f"Perplexity over {REFERENCE}'s with the same seed's windows (below 1: better than "
                 f"the fixed recipe):\n\n{markdown_table(header, ratios)}\n\n")
    text += f"Wall seconds per row (search + pruning + evaluation):\n\n{markdown_table(header, seconds)}\n"
    (RESULTS / f"{name}.md").write_text(text)

    def by_seed(method: str, target: str) -> list[float]:
        return [row["ppl"] for row in cells.get((target, method), {}).values()]

    ppl = {method: [float(np.median(by_seed(method, t))) if by_seed(method, t) else np.nan for t in targets]
           for method in methods}
    ranges = {method: [(min(by_seed(method, t)), max(by_seed(method, t))) if by_seed(method, t)
                       else (np.nan, np.nan) for t in targets] for method in methods}
    grouped_bars(RESULTS / f"{name}.png", targets, ppl,
                 "WikiText-2 test perplexity" + (" (median, range over seeds)" if len(seeds) > 1 else ""),
                 payload["model"], reference=("dense", payload["dense_ppl"]),
                 ranges=ranges if len(seeds) > 1 else None)
    print(text)


if __name__ == "__main__":
    main()
