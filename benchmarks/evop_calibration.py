"""How many calibration tokens before a lower KL means a lower held-out perplexity? EvoP's objective.

    python benchmarks/evop_calibration.py                   # 128 x 128 shipped-text tokens
    python benchmarks/evop_calibration.py --calibration-source wikitext2-valid \
        --name evop_calibration_wikitext                   # the test text's own distribution

EvoP, SLEB and the (1 + λ) search choose blocks to remove by a score on calibration windows
(``BlockRemovalEvaluator``: the mean KL to the dense model per token, or the calibration
perplexity); ``benchmarks/evop_budget.py`` ran them on 8 x 128 tokens and measured each choice's
WikiText-2 test perplexity (results/SOURCE.json). A search can only beat the heuristics held out
where a lower score means a lower test perplexity. This script takes every distinct block set of
SOURCE (the ``last`` rows left out) and scores all of them on ``--windows`` fresh windows (seed
``--seed``, apart from the searches' seeds 0-2), ``--group`` windows at a time (one evaluator and
one walk per group, all sets in the walk). Windows drawn at random are exchangeable, so ``k``
disjoint groups together are a draw of ``k * group`` windows: a group's mean KL per token
averages into the draw's (every window has the same length), and so does its log perplexity. For
each draw size the table gives, per removal count, the Spearman correlation of each score with
the test perplexity over the sets, and the test perplexity of the set the score ranks first over
the best set's (1.000: it picks the best), median and range over the disjoint draws of that size.

Every group's scores are saved as they come (results/NAME.json); a rerun with the same settings
scores only the (group, set) pairs it lacks, so sets added to SOURCE later are scored too.
Writes results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    check_saved_settings,
    device_label,
    environment,
    markdown_table,
    save_figure,
    save_json,
    summary,
)
from scipy.stats import spearmanr  # noqa: E402

from optishear_moo import load_calibration, load_model  # noqa: E402
from optishear_moo.evop.fitness import BlockRemovalEvaluator  # noqa: E402

SCORES = {"kl": "calibration KL", "ppl": "calibration ppl"}
HEADERS = [f"{label} {what}" for label in SCORES.values()
           for what in ("Spearman with test ppl", "picked / best test ppl")]


def block_sets(source_rows: list[dict]) -> dict[str, dict]:
    """Every distinct block set SOURCE chose (but for the ``last`` baseline), keyed ``"13,14,17"``,
    with its removal count and test perplexity."""
    sets = {}
    for row in source_rows:
        if row["method"] != "last":
            blocks = sorted(row["removed_blocks"])
            sets[",".join(map(str, blocks))] = {"n_removed": len(blocks), "test_ppl": row["test_ppl"]}
    return sets


def draw_scores(groups: list[dict], members: list[int], blocks: str) -> dict[str, float]:
    """A set's scores on the windows of ``members`` (group indices): the mean KL per token and the
    perplexity of the mean log-likelihood, as one evaluator over those windows would give."""
    kl = statistics.fmean(groups[g]["scores"][blocks]["kl"] for g in members)
    ppl = math.exp(statistics.fmean(math.log(groups[g]["scores"][blocks]["ppl"]) for g in members))
    return {"kl": kl, "ppl": ppl}


def agreement(payload: dict) -> list[dict]:
    """Per removal count, draw size and score: Spearman with the test ppl and picked / best test
    ppl, one value per disjoint draw of that size (groups ``0..k-1``, ``k..2k-1``, ...)."""
    sets, groups = payload["sets"], payload["groups"]
    n_groups, size = len(groups), payload["settings"]["group"]
    out = []
    for n_removed in sorted({s["n_removed"] for s in sets.values()}):
        members = sorted(b for b, s in sets.items() if s["n_removed"] == n_removed)
        if len(members) < 3 or any(b not in group["scores"] for group in groups for b in members):
            continue
        test = [sets[b]["test_ppl"] for b in members]
        k = 1
        while k <= n_groups:
            draws = [list(range(start, start + k)) for start in range(0, n_groups - k + 1, k)]
            entry = {"n_removed": n_removed, "sets": len(members), "windows": k * size, "draws": len(draws)}
            for score in SCORES:
                rho, picked = [], []
                for draw in draws:
                    values = [draw_scores(groups, draw, b)[score] for b in members]
                    rho.append(float(spearmanr(values, test).statistic))
                    picked.append(test[values.index(min(values))] / min(test))
                entry[score] = {"rho": rho, "picked": picked}
            out.append(entry)
            k *= 2
    return out


def write_table(payload: dict, entries: list[dict], name: str) -> str:
    """results/NAME.md: a row per entry of :func:`agreement`."""
    settings = payload["settings"]
    rows = [[e["n_removed"], e["sets"], e["windows"] * settings["seq_len"], e["draws"],
             *(summary(e[s][m], 3) for s in SCORES for m in ("rho", "picked"))] for e in entries]
    text = (f"SmolLM2-135M: the {len(payload['sets'])} distinct block sets of "
            f"results/{settings['source']}.json (the last-blocks rows left out) scored on "
            f"{settings['calibration_source']} windows of "
            f"{settings['seq_len']} tokens (seed {settings['seed']}), {len(payload['groups'])} groups of "
            f"{settings['group']}; against each set's WikiText-2 test ppl from that file; median [min, max] "
            f"over the disjoint draws of each size; {device_label(payload['environment'])}\n\n"
            + markdown_table(["removed", "sets", "calibration tokens", "draws", *HEADERS], rows) + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    return text


def plot(entries: list[dict], seq_len: int, name: str) -> None:
    """Spearman of the calibration KL with the test ppl against calibration tokens, a line per
    removal count (median over the draws, min-max band)."""
    if not entries:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for n_removed in sorted({e["n_removed"] for e in entries}):
        mine = [e for e in entries if e["n_removed"] == n_removed]
        tokens = [e["windows"] * seq_len for e in mine]
        rho = [e["kl"]["rho"] for e in mine]
        ax.plot(tokens, [statistics.median(r) for r in rho], marker="o",
                label=f"{n_removed} blocks ({mine[0]['sets']} sets)")
        ax.fill_between(tokens, [min(r) for r in rho], [max(r) for r in rho], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel="calibration tokens", ylabel="Spearman: calibration KL vs test ppl",
           title="SmolLM2-135M block removal: does a lower KL mean a lower test ppl?")
    save_figure(fig, ax, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="evop_budget", help="results/SOURCE.json of evop_budget.py")
    parser.add_argument("--calibration-source", default="gutenberg",
                        help="text of the windows (default: the shipped text the searches used)")
    parser.add_argument("--windows", type=int, default=128, help="windows in all, a multiple of --group")
    parser.add_argument("--group", type=int, default=8, help="windows per evaluator (the searches': 8)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=100, help="the windows' draw (the searches used 0-2)")
    parser.add_argument("--name", default="evop_calibration", help="results/NAME.{json,md,png}")
    args = parser.parse_args()
    if args.group < 1 or args.windows < args.group or args.windows % args.group:
        parser.error(f"--windows {args.windows} --group {args.group}: give --windows as a multiple of "
                     "--group (at least 1)")
    source = RESULTS / f"{args.source}.json"
    if not source.is_file():
        parser.error(f"--source: {source} not found; run benchmarks/evop_budget.py first")
    sets = block_sets(json.loads(source.read_text())["rows"])
    if not sets:
        parser.error(f"--source {args.source}: no block set to score")

    path = RESULTS / f"{args.name}.json"
    payload = json.loads(path.read_text()) if path.is_file() else None
    settings = {"source": args.source, "calibration_source": args.calibration_source, "windows": args.windows,
                "group": args.group, "seq_len": args.seq_len, "seed": args.seed}
    check_saved_settings(parser, path, payload and payload["settings"], settings)  # its windows' scores
    n_groups = args.windows // args.group
    if payload is None:
        payload = {"benchmark": "evop_calibration", "model": "smollm2-135m", "settings": settings,
                   "environment": environment(),
                   "groups": [{"scores": {}, "seconds": 0.0} for _ in range(n_groups)]}
    payload["sets"] = sets
    todo = [[b for b in sets if b not in group["scores"]] for group in payload["groups"]]
    print(f"{len(sets)} block sets x {n_groups} groups of {args.group} windows: "
          f"{sum(map(len, todo))} scores to measure", flush=True)

    if any(todo):
        model, tokenizer = load_model("smollm2-135m")
        calibration = load_calibration(tokenizer, args.windows, args.seq_len, args.seed,
                                       source=args.calibration_source)
        for index, (group, missing) in enumerate(zip(payload["groups"], todo)):
            if not missing:
                continue
            started = time.perf_counter()
            windows = calibration[index * args.group:(index + 1) * args.group]
            evaluator = BlockRemovalEvaluator(model, windows, batch_size=args.group)
            scores = evaluator.evaluate_many([[int(b) for b in blocks.split(",")] for blocks in missing])
            seconds = time.perf_counter() - started
            group["scores"].update(dict(zip(missing, scores)))
            group["seconds"] += seconds
            save_json(args.name, payload)
            print(f"[group {index + 1}/{n_groups}] {len(missing)} sets in {seconds:.0f} s", flush=True)
        payload["environment"] = environment()
        save_json(args.name, payload)
    entries = agreement(payload)
    plot(entries, args.seq_len, args.name)
    print(write_table(payload, entries, args.name))


if __name__ == "__main__":
    main()
