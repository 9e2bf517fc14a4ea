"""DarwinLM's one-shot scoring on SmolLM2-135M: a sliced forward per candidate against one walk
over the blocks for the population, and one-shot DarwinLM on the model streamed from disk.

    python benchmarks/structured_fitness.py [--candidates 16] [--compression 2.0]
    python benchmarks/structured_fitness.py --memory-only   # rerun the memory part, keep the speed rows
    python benchmarks/structured_fitness.py --table-only    # results/structured_fitness.md from the JSON

Speed: ``StructuredPruningProblem.evaluate`` on the same populations with ``scoring="slice"`` (one
working model re-sliced per candidate, only the changed blocks rebuilt, a whole forward) and
``scoring="walk"`` (the population in one walk over the dense-shaped blocks, shared prefixes run
once), for a random population (budget-keeping samples, the first generation) and for the
offspring of one parent (level switches, what the (1+λ) search scores every generation);
seconds per candidate, their ratio to one dense forward, and how far the two scorings' KLs are
apart.

Memory: ``search_darwinlm`` (one-shot, ``--gens`` generations of ``--offspring``) and
``result.apply`` in a child process each, on the model loaded in memory (scored as ``auto``
chooses, and sliced: the two scorings end to end in one run), on the model saved as safetensors
and loaded with ``offload="disk"``, and on that model with the level database on disk too
(``database_dir``); the children report their scoring, peak RSS, the level database's bytes (in
memory or its files), wall seconds, the levels found and their KL.
Writes results/structured_fitness.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    device_label,
    environment,
    markdown_table,
    peak_host_gib,
    save_json,
    speed_arguments,
    speed_setup,
)

from optishear_moo.darwinlm import DarwinLMConfig, StructuredLevelDatabase, search_darwinlm  # noqa: E402
from optishear_moo.darwinlm.fitness import check_scoring  # noqa: E402
from optishear_moo.darwinlm.problem import StructuredPruningProblem  # noqa: E402
from optishear_moo.search import SearchRun  # noqa: E402
from optishear_moo.search.levels import BudgetSampling, LevelSwitchMutation  # noqa: E402

SCORINGS = ("slice", "walk")
DATABASE_ON_DISK = "disk, database on disk"
SLICED = "memory, sliced"
CHILDREN = ("memory", SLICED, "disk", DATABASE_ON_DISK)  # memory and disk score as `auto` chooses


def populations(problem, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    random = BudgetSampling()._do(problem, n, random_state=rng)
    parent = random[1]  # a sampled allocation (row 0 is the uniform one)
    offspring = LevelSwitchMutation()._do(problem, np.repeat(parent[None], n, 0), random_state=rng)
    return {"random": random, "offspring of one parent": offspring}


def speed(args) -> dict:
    model, calibration, floor = speed_setup(args)
    start = time.perf_counter()
    database = StructuredLevelDatabase.build(model, calibration)
    database_seconds = time.perf_counter() - start
    print(f"dense forward {floor:.2f} s; level database {database_seconds:.1f} s, "
          f"{database.nbytes / 2**30:.2f} GiB of entries", flush=True)
    rows, scores = [], {}
    for scoring in SCORINGS:
        problem = StructuredPruningProblem(model, calibration, args.compression, database,
                                           batch_size=args.n_samples, scoring=scoring)
        for regime, X in populations(problem, args.candidates).items():
            start = time.perf_counter()
            F = problem.evaluate(X, return_values_of=["F"])[:, 0]
            seconds = (time.perf_counter() - start) / len(X)
            problem.restore_dense()
            scores[scoring, regime] = F
            rows.append({"scoring": scoring, "population": regime, "seconds_per_candidate": seconds,
                         "ratio_to_dense_forward": seconds / floor, "distinct": len({tuple(x) for x in X})})
            print(f"{scoring:5s} {regime:24s} {seconds:.2f} s/candidate ({seconds / floor:.2f}x a dense "
                  f"forward)", flush=True)
    for row in rows:
        walked, sliced = scores["walk", row["population"]], scores["slice", row["population"]]
        row["max_relative_kl_difference"] = float(np.max(np.abs(walked - sliced) / np.abs(sliced)))
    return {"dense_forward_seconds": floor, "database_seconds": database_seconds,
            "database_gib": database.nbytes / 2**30, "rows": rows}


def child(args) -> None:
    """One one-shot DarwinLM run (search and apply), its figures as JSON on the last line."""
    from optishear_moo import load_calibration, load_model

    offload = "disk" if args.child.startswith("disk") else False
    database_dir = str(Path(args.model_dir).parent / "database") if args.child == DATABASE_ON_DISK else None
    start = time.perf_counter()
    model, tokenizer = load_model(args.model_dir, offload=offload)
    calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, seed=0)
    config = DarwinLMConfig(target_compression=args.compression, selection="one-shot", pop_size=1,
                            n_offsprings=args.offspring, n_gen=args.gens, batch_size=args.n_samples,
                            database_dir=database_dir, scoring="slice" if args.child == SLICED else "auto")
    scoring = "walk" if check_scoring(config.scoring, model) else "slice"
    result = search_darwinlm(model, calibration, config, SearchRun(seed=0))
    result.apply(model)
    print(json.dumps({"offload": args.child, "scoring": scoring, "peak_rss_gib": peak_host_gib(),
                      "seconds": time.perf_counter() - start, "levels": result.levels,
                      "database_gib": result.database.nbytes / 2**30,
                      "calibration_kl": result.calibration_kl, "n_evaluations": result.n_evaluations}))


def memory(args) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "smollm2"
        subprocess.run([sys.executable, __file__, "--save-into", str(directory)], check=True)
        weights = sum(path.stat().st_size for path in directory.glob("*.safetensors")) / 2**30
        for mode in CHILDREN:
            flags = ["--child", mode, "--model-dir", str(directory), "--n-samples", str(args.n_samples),
                     "--seq-len", str(args.seq_len), "--compression", str(args.compression),
                     "--offspring", str(args.offspring), "--gens", str(args.gens)]
            out = subprocess.run([sys.executable, __file__, *flags], check=True, capture_output=True,
                                 text=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            run["weights_gib"] = weights
            runs.append(run)
            print(f"{mode:22s} peak RSS {run['peak_rss_gib']:.2f} GiB ({weights:.2f} GiB of weights), "
                  f"{run['seconds']:.0f} s, KL {run['calibration_kl']:.4f}", flush=True)
    return runs


def write_table(payload: dict) -> None:
    speed_part, runs = payload["speed"], payload["memory"]
    device = device_label(payload["environment"])
    text = (f"SmolLM2-135M at {payload['compression']}x, {payload['calibration']['n_samples']} x "
            f"{payload['calibration']['seq_len']} calibration tokens, {payload['candidates']} candidates, "
            f"{device}; one dense forward: {speed_part['dense_forward_seconds']:.2f} s\n\n"
            + markdown_table(["scoring", "population", "distinct", "s / candidate", "vs dense forward",
                              "max relative KL difference (walk vs slice)"],
                             [[r["scoring"], r["population"], r["distinct"], r["seconds_per_candidate"],
                               r["ratio_to_dense_forward"], f"{r['max_relative_kl_difference']:.1e}"]
                              for r in speed_part["rows"]])
            + f"\n\nOne-shot DarwinLM ({payload['gens']} generations of {payload['offspring']} offspring, "
            f"then apply), each in its own process:\n\n"
            + markdown_table(["run", "scoring", "peak RSS (GiB)", "weights (GiB)", "level database (GiB)",
                              "seconds", "calibration KL", "same levels as in memory"],
                             [[r["offload"], r.get("scoring", "–"), r["peak_rss_gib"], r["weights_gib"],
                               r["database_gib"] if "database_gib" in r else "–", r["seconds"],
                               f"{r['calibration_kl']:.4f}", r["levels"] == runs[0]["levels"]] for r in runs])
            + "\n")
    (RESULTS / "structured_fitness.md").write_text(text)
    print(text)


def plot(payload: dict) -> None:
    rows = payload["speed"]["rows"]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([f"{r['scoring']}, {r['population']}" for r in rows], [r["ratio_to_dense_forward"] for r in rows])
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_xlabel("seconds per candidate / one dense forward (SmolLM2)")
    fig.tight_layout()
    fig.savefig(RESULTS / "structured_fitness.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed_arguments(parser, candidates=16)
    parser.add_argument("--compression", type=float, default=2.0)
    parser.add_argument("--offspring", type=int, default=8,
                        help="offspring per generation of the memory runs")
    parser.add_argument("--gens", type=int, default=2, help="generations of the memory runs")
    parser.add_argument("--memory-only", action="store_true",
                        help="rerun the memory part only; the speed rows come from the saved JSON")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--save-into", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.save_into:  # SmolLM2 as safetensors, written by a child whose memory is not measured
        from optishear_moo import load_model

        model, tokenizer = load_model("smollm2-135m")
        model.save_pretrained(args.save_into)
        tokenizer.save_pretrained(args.save_into)
        return
    if args.child:
        child(args)
        return
    if args.table_only:
        payload = json.loads((RESULTS / "structured_fitness.json").read_text())
    elif args.memory_only:
        payload = json.loads((RESULTS / "structured_fitness.json").read_text())
        saved = (payload["compression"], payload["calibration"], payload["offspring"], payload["gens"])
        if saved != (args.compression, {"n_samples": args.n_samples, "seq_len": args.seq_len},
                     args.offspring, args.gens):
            parser.error("--memory-only: the saved run has other settings; rerun without it")
        payload["memory"], payload["environment"] = memory(args), environment()
        save_json("structured_fitness", payload)
    else:
        payload = {"benchmark": "structured_fitness", "model": "smollm2-135m",
                   "compression": args.compression,
                   "calibration": {"n_samples": args.n_samples, "seq_len": args.seq_len},
                   "candidates": args.candidates, "offspring": args.offspring, "gens": args.gens,
                   "speed": speed(args), "memory": memory(args), "environment": environment()}
        save_json("structured_fitness", payload)
    write_table(payload)
    plot(payload)


if __name__ == "__main__":
    main()
