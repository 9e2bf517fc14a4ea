"""DarwinLM on SmolLM2-135M: structured pruning at ~1.5x and ~2x block-weight compression, over seeds.

    python benchmarks/darwinlm.py                       # 1.5x and 2x, 3 seeds
    python benchmarks/darwinlm.py --targets 2 --seeds 1 --name darwinlm_seed0
    python benchmarks/darwinlm.py --gens 10 --offspring 16 --finetune-tokens 1024 4096 16384 \
        --name darwinlm_large                                                   # a larger budget
    python benchmarks/darwinlm.py --targets 1.5 --seeds 1 --gens 1 --offspring 2 --post-train-tokens 512 \
        --eval-segments 1 --name darwinlm_smoke                                 # a smoke run
    python benchmarks/darwinlm.py --targets 2 --calibration-source wikitext2-valid \
        --finetune-tokens 2048 4096 --methods uniform "search one-shot" "search training-aware" \
        --name darwinlm_matched          # scored on the fine-tunes' own text, longer fine-tunes
    python benchmarks/darwinlm.py --retime --name darwinlm_matched   # only time every row's speed-up again

For each target and seed (the calibration and training windows drawn again, the searches seeded):
uniform structured pruning (the most uniform level allocation), and ``search_darwinlm`` (what
``optishear-moo darwinlm`` runs) with one-shot selection and with training-aware selection (same
generations and offspring), and one-shot selection again given at least the compute that
training-aware selection spent. Compute is counted in passes over the calibration windows: the
tokens pushed through candidates to score them, plus ``TRAIN_PASS`` times the tokens of the stage
fine-tunes (a training step is a forward and a backward pass, about three forwards), over the
calibration windows' tokens. Each result is then post-trained on the same tokens and evaluated on
WikiText-2 test before and after; its speed-up over the dense model is timed with the two in
alternation (``compare_speed``: three rounds, the median ratio), and ``--retime`` times every row of a
table again that way (speed depends on the level allocation's shapes only). Tables show the median
and [min, max] over the seeds. A rerun with the same settings keeps the rows it has and adds more
targets or seeds. Writes results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    check_saved_settings,
    darwinlm_arguments,
    darwinlm_windows,
    environment,
    flag_settings,
    markdown_table,
    paired_comparison,
    save_json,
    summary,
)

from optishear_moo import (  # noqa: E402
    CalibrationSet,
    DarwinLMConfig,
    SearchRun,
    StructuredPruningProblem,
    load_calibration,
    load_model,
    search_darwinlm,
)
from optishear_moo.darwinlm import StructuredLevelDatabase, apply_levels_  # noqa: E402
from optishear_moo.evaluation import compare_speed, perplexity  # noqa: E402
from optishear_moo.finetuning import post_train  # noqa: E402

TRAIN_PASS = 3  # a training token costs about three forward tokens (forward + backward)
METHODS = ["uniform", "search one-shot", "search training-aware", "search one-shot, equal compute"]


def passes(row: dict, calibration_tokens: int) -> float:
    """A row's compute in forward passes over the calibration windows."""
    return (row["scored_tokens"] + TRAIN_PASS * row["finetune_tokens"]) / calibration_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0])
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds 0..N-1 (windows drawn again, searches seeded)")
    parser.add_argument("--gens", type=int, default=6)
    parser.add_argument("--offspring", type=int, default=8)
    darwinlm_arguments(parser, [512, 1024], "tokens per selection stage; survivors halve per stage down to 1")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD",
                        help=f"rows to run (default: all of {', '.join(repr(m) for m in METHODS)})")
    parser.add_argument("--name", default="darwinlm", help="results/NAME.{json,md,png}")
    parser.add_argument("--retime", action="store_true",
                        help="time every row's speed-up in results/NAME.json again (no search) and exit")
    args = parser.parse_args()
    if args.retime:
        return retime(args.name, parser)
    if args.seeds < 1 or args.gens < 1 or args.offspring < 1 or any(t <= 1 for t in args.targets):
        parser.error("--seeds, --gens and --offspring must be at least 1, every target above 1")
    if METHODS[3] in args.methods and METHODS[2] not in args.methods:
        parser.error(f"--methods: {METHODS[3]!r} needs {METHODS[2]!r} beside it (it gets that row's compute)")
    settings = flag_settings(args, leave_out=("name", "methods", "retime"))  # retime: a mode

    path = RESULTS / f"{args.name}.json"
    previous = json.loads(path.read_text()) if path.is_file() else None
    grid = ("targets", "seeds")  # what rows are keyed by; the rest must match to add to a table
    if previous is not None and "seeds" not in previous["settings"]:
        parser.error(f"{path.name} was run by an older version (no seeds); choose another --name")
    check_saved_settings(parser, path, previous and previous["settings"], settings, grid)
    model, tokenizer = load_model("smollm2-135m")
    if previous is not None:
        payload = previous
        old = payload["settings"]
        old["targets"] = sorted(set(old["targets"]) | set(args.targets))
        old["seeds"] = max(old["seeds"], args.seeds)
        print(f"adding to {path.name}: {len(payload['rows'])} rows done")
    else:
        dense_ppl = perplexity(model, tokenizer, 1024, args.eval_segments, progress=False).perplexity
        payload = {"environment": environment(), "settings": settings, "dense_ppl": dense_ppl, "rows": []}
    done = {(r["seed"], r["target"], r["method"]) for r in payload["rows"]}
    calibration_tokens = args.n_samples * args.seq_len
    for seed in range(args.seeds):
        if all((seed, target, method) in done for target in args.targets for method in args.methods):
            continue
        calibration, training = darwinlm_windows(tokenizer, args, seed)
        database = StructuredLevelDatabase.build(model, calibration)  # the uniform rows'
        # (each search builds the same database again from the same windows)
        for target in args.targets:
            problem = StructuredPruningProblem(model, calibration, target, database=database,
                                               training=training, finetune_learning_rate=args.learning_rate)
            for method in args.methods:
                if (seed, target, method) in done:
                    continue
                started = time.perf_counter()
                n_gen = args.gens
                if method == "uniform":
                    levels = problem.levels(problem.uniform_levels(target))
                    spent = {"calibration_kl": problem.evaluator.evaluate(levels), "evaluations": 0,
                             "scored_tokens": 0, "finetune_tokens": 0}
                    problem.restore_dense()
                else:
                    selection = "training-aware" if "training-aware" in method else "one-shot"
                    if method.endswith("equal compute"):  # at least training-aware's passes
                        aware = next(r for r in payload["rows"] if (r["seed"], r["target"], r["method"]) ==
                                     (seed, target, "search training-aware"))
                        n_gen = 1 + math.ceil((passes(aware, calibration_tokens) - 1) / args.offspring)
                    config = DarwinLMConfig(target, selection, tuple(args.finetune_tokens),
                                            args.learning_rate, n_offsprings=args.offspring, n_gen=n_gen)
                    choice = search_darwinlm(model, CalibrationSet(calibration, training=training), config,
                                             SearchRun(seed=seed))
                    levels = np.array(choice.levels)
                    spent = {"calibration_kl": choice.calibration_kl, "evaluations": choice.n_evaluations,
                             "scored_tokens": choice.scored_tokens, "finetune_tokens": choice.finetune_tokens}
                seconds = time.perf_counter() - started
                pruned = apply_levels_(copy.deepcopy(model), database, levels)
                before = perplexity(pruned, tokenizer, 1024, args.eval_segments, progress=False).perplexity
                post_train(pruned, training[: args.post_train_tokens // args.seq_len], args.learning_rate)
                after = perplexity(pruned, tokenizer, 1024, args.eval_segments, progress=False).perplexity
                row = {"seed": seed, "target": target, "method": method, "levels": levels.tolist(),
                       "compression": 1 / problem.kept_share(levels), **spent, "generations": n_gen,
                       "ppl_before": before, "ppl_after": after, "search_seconds": seconds,
                       **timed(model, pruned)}
                row["passes"] = passes(row, calibration_tokens)
                payload["rows"].append(row)
                save_json(args.name, payload)
                print(f"seed {seed} {target}x {method:32s} {row['passes']:6.0f} passes KL "
                      f"{row['calibration_kl']:.3f} ppl {before:9.2f} -> {after:9.2f} ({seconds:.0f} s)",
                      flush=True)
    payload["environment"] = environment()
    save_json(args.name, payload)
    print(write_table(payload, args.name))
    plot(payload, args.name)


def timed(dense, pruned) -> dict:
    """``pruned``'s parameters and speed-ups over ``dense``, the two timed in alternation."""
    comparison = compare_speed(dense, pruned, rounds=3, seq_len=256, new_tokens=32, repeats=3)
    return {"parameters": comparison.model[0].parameters, "prefill_speedup": comparison.prefill_speedup,
            "decode_speedup": comparison.decode_speedup, "speed_timing": "alternating"}


def retime(name: str, parser: argparse.ArgumentParser) -> None:
    """Time every row of results/NAME.json again against the dense model; nothing else changes."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        parser.error(f"--retime: there is no {path} to time again: run the benchmark first")
    payload = json.loads(path.read_text())
    model, tokenizer = load_model("smollm2-135m")
    settings = payload["settings"]  # any windows build the database: the shapes set the speed
    database = StructuredLevelDatabase.build(model, load_calibration(tokenizer, settings["n_samples"],
                                                                     settings["seq_len"], 0))
    for row in payload["rows"]:
        pruned = apply_levels_(copy.deepcopy(model), database, np.array(row["levels"]))
        row.update(timed(model, pruned))
        save_json(name, payload)
        print(f"seed {row.get('seed', 0)} {row['target']}x {row['method']:32s} prefill "
              f"{row['prefill_speedup']:.2f}x decode {row['decode_speedup']:.2f}x", flush=True)
        del pruned
    payload.pop("dense_speed", None)  # the timings it served are gone
    payload["environment"] = environment()
    save_json(name, payload)
    print(write_table(payload, name))
    plot(payload, name)


def write_table(payload: dict, name: str) -> str:
    rows, seeds = payload["rows"], payload["settings"]["seeds"]
    table, verdicts = [], []
    for target in payload["settings"]["targets"]:
        for method in METHODS:
            match = [r for r in rows if r["target"] == target and r["method"] == method]
            if not match:
                continue
            table.append([f"{target}x", method, len(match)] + [
                summary([r[key] for r in match], digits) for key, digits in
                (("compression", 2), ("passes", 0), ("calibration_kl", 3), ("ppl_before", 2),
                 ("ppl_after", 2), ("prefill_speedup", 2), ("decode_speedup", 2))])
        for other in ("search one-shot", "search one-shot, equal compute"):
            pairs = [(a["ppl_after"], b["ppl_after"]) for a in rows for b in rows
                     if a["target"] == b["target"] == target and a["seed"] == b["seed"]
                     and a["method"] == "search training-aware" and b["method"] == other]
            if pairs:
                wins, ratio = paired_comparison(pairs)
                verdicts.append(f"- {target}x: training-aware post-trained ppl <= "
                                f"{other.removeprefix('search ')}'s in {wins} of {len(pairs)} seeds; "
                                f"median ratio {ratio:.3f}")
    settings = payload["settings"]
    text = (f"Dense WikiText-2 test ppl {payload['dense_ppl']:.2f} ({settings['eval_segments']} x 1024 "
            f"tokens); median [min, max] over {seeds} seed{'s' if seeds > 1 else ''}; {settings['gens']} "
            f"generations x {settings['offspring']} offspring, stage fine-tunes "
            f"{settings['finetune_tokens']} tokens, post-training {settings['post_train_tokens']} tokens "
            f"for every row; passes: forward passes over the {settings['n_samples']} x "
            f"{settings['seq_len']} calibration windows"
            + (f" ({settings['calibration_source']} text)" if settings.get("calibration_source") else "")
            + f", a fine-tuning token counted as {TRAIN_PASS}"
            + ("; speed-ups: each row and the dense model timed in alternation, the median of 3 rounds"
               if rows and all(r.get("speed_timing") == "alternating" for r in rows) else "")
            + "\n\n"
            + markdown_table(["target", "method", "seeds", "compression", "passes", "calib. KL",
                              "ppl one-shot", "ppl post-trained", "prefill speed-up", "decode speed-up"],
                             table)
            + ("\n\n" + "\n".join(verdicts) if verdicts else "") + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    return text


def plot(payload: dict, name: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in zip(METHODS, "so^D"):
        points = {}
        for r in payload["rows"]:
            if r["method"] == method:
                points.setdefault(r["target"], []).append((r["compression"], r["ppl_after"]))
        if not points:
            continue
        xs = sorted(points)
        x = [statistics.median(c for c, _ in points[t]) for t in xs]
        y = [statistics.median(p for _, p in points[t]) for t in xs]
        low = [y_ - min(p for _, p in points[t]) for t, y_ in zip(xs, y)]
        high = [max(p for _, p in points[t]) - y_ for t, y_ in zip(xs, y)]
        ax.errorbar(x, y, yerr=[low, high], marker=marker, capsize=3, label=method)
    ax.set(xlabel="block-weight compression", ylabel="WikiText-2 ppl after post-training (median)",
           yscale="log", title="SmolLM2-135M structured pruning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
