"""EvoP against the block-removal heuristics at equal evaluation budgets, over seeds (SmolLM2-135M).

    python benchmarks/evop_budget.py                                # 3, 6, 9 blocks; both samplings; 3 seeds
    python benchmarks/evop_budget.py --removals 3 6 --samplings random --seeds 1        # seed 0, every method
    python benchmarks/evop_budget.py --removals 6 --methods sleb shortgpt last evop "evop 1+λ" "evop+sleb 1+λ"
    python benchmarks/evop_budget.py --removals 6 --samplings random --calibration-source wikitext2-valid \
        --methods sleb shortgpt "evop 1+λ" "evop+sleb 1+λ" --name evop_budget_wikitext  # the test text

Every method runs through ``search_evop`` (what ``optishear-moo evop`` runs) and reports the passes
over the calibration windows it spent choosing (``EvoPResult.n_evaluations``): SLEB's greedy
removal by calibration perplexity (one per option of each greedy step), ShortGPT (one pass for the
block influence), the last blocks (none), and two searches given at least SLEB's count of their
own (``EvoPConfig(n_evals=SLEB's count)``; rows made before that option were given
``ceil(SLEB's / pop)`` generations, which fall 1-3 % short when pymoo drops duplicate offspring, and
keep ``generations`` in the JSON): ``evop`` (started from ShortGPT's and the last blocks'
choices, the driver's default) and ``evop+sleb`` (started from SLEB's choice too, whose greedy
evaluations it then also spends), each with EvoP's GA and with the (1 + λ) search
(``algorithm="1+lambda"``), and the (1 + λ) search with EvoPress's multi-fidelity selection
(``staged``: ``n_stages=3``, see ``STAGES``; a candidate scored on a share of the windows counts
that share of a pass, so it scores about twice the candidates for the same count). The searches
minimise calibration KL to the dense model; ``ppl`` rows minimise calibration perplexity instead
(``objective="ppl"``: EvoP's own fitness, and the score SLEB's greedy steps rank by).

For each seed the calibration windows are drawn again (random windows, or EvoP's cluster sampling
at the same token count; from the shipped text, or ``--calibration-source``) and the GA is seeded
with it. Reported: WikiText-2 test perplexity
(held out, ``--eval-segments`` × 1024 tokens) and calibration KL, median and range over the seeds.
Rows are saved as they come (results/NAME.json); a rerun with the same settings skips the rows it
has, and one with more removals, samplings or seeds adds theirs to the same table.
Writes results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    check_saved_settings,
    environment,
    flag_settings,
    markdown_table,
    paired_comparison,
    save_json,
    summary,
)

from optishear_moo import EvoPConfig, SearchRun, load_calibration, load_model, search_evop  # noqa: E402
from optishear_moo.data.calibration import DEFAULT_CALIBRATION_SOURCE  # noqa: E402
from optishear_moo.evaluation import perplexity  # noqa: E402
from optishear_moo.evop.blocks import remove_blocks_  # noqa: E402

METHODS = ["sleb", "shortgpt", "last", "evop", "evop+sleb", "evop 1+λ", "evop+sleb 1+λ", "evop 1+λ staged",
           "evop+sleb 1+λ staged", "evop 1+λ ppl", "evop 1+λ staged ppl"]
WARM_STARTS = {method: ("last", "shortgpt") + ("sleb",) * method.startswith("evop+sleb")
               for method in METHODS if method.startswith("evop")}
"""The searches and the heuristics each starts from: its name says it (``evop+sleb``: SLEB's choice
too; ``1+λ``: ``algorithm="1+lambda"``; ``staged``: ``n_stages=STAGES``; ``ppl``:
``objective="ppl"``, else ``kl``)."""
STAGES = 3
"""Stages of the ``staged`` rows' multi-fidelity selection: 16 offspring on 2 of the 8 windows, the
best 4 on 4, the best 2 and the parent on all 8 (8 passes a generation instead of 16)."""


def test_ppl(model, tokenizer, removed, segments) -> float:
    pruned = remove_blocks_(copy.deepcopy(model), removed)
    return perplexity(pruned, tokenizer, 1024, segments, progress=False).perplexity


def write_table(payload: dict, name: str) -> str:
    rows, samplings = payload["rows"], payload["settings"]["samplings"]
    table = []
    for n_remove in payload["settings"]["removals"]:
        for method in METHODS:
            for sampling in samplings:
                match = [r for r in rows if r["method"] == method and r["n_removed"] == n_remove
                         and r["sampling"] == sampling]
                if not match:
                    continue
                table.append([n_remove, method, sampling if method != "last" else "–", len(match),
                              summary([r["evaluations"] for r in match]),
                              summary([r["calibration_kl"] for r in match], 3),
                              summary([r["test_ppl"] for r in match])])
    seeds = payload["settings"]["seeds"]
    lines = comparisons(rows)
    text = (f"SmolLM2-135M, dense WikiText-2 test ppl {payload['dense_ppl']:.2f}; "
            f"{payload['settings']['n_samples']} x {payload['settings']['seq_len']} calibration tokens"
            f" ({payload['settings'].get('calibration_source') or DEFAULT_CALIBRATION_SOURCE} text); "
            f"median [min, max] over {seeds} seed{'s' if seeds > 1 else ''}\n\n"
            + markdown_table(["removed", "method", "sampling", "seeds", "evaluations", "calibration KL",
                              "test ppl"], table) + "\n"
            + ("\n" + "\n".join(f"- {line}" for line in lines) + "\n" if lines else ""))
    (RESULTS / f"{name}.md").write_text(text)
    return text


def sleb_count(rows: list[dict], seed: int, sampling: str, n_remove: int) -> int:
    """The evaluations SLEB spent on these windows at this count."""
    return next(r["evaluations"] for r in rows if r["method"] == "sleb" and
                (r["seed"], r["sampling"], r["n_removed"]) == (seed, sampling, n_remove))


def own_evaluations(row: dict, rows: list[dict]) -> int:
    """A search row's evaluations less those of the heuristics it started from (ShortGPT's pass,
    SLEB's greedy ones; the last blocks cost none)."""
    starts = WARM_STARTS[row["method"]]
    warm = (("shortgpt" in starts)
            + ("sleb" in starts and sleb_count(rows, row["seed"], row["sampling"], row["n_removed"])))
    return row["evaluations"] - warm


def comparisons(rows: list[dict]) -> list[str]:
    """Per removal count: in how many draws each search scored at least SLEB's count of candidates
    of its own; in how many (seed, sampling) draws each search's test ppl is at most the better
    heuristic's (SLEB or ShortGPT on the same windows); and what cluster sampling does to each
    method's test ppl against random windows of the same seed."""
    by_key = {(r["n_removed"], r["method"], r["sampling"], r["seed"]): r["test_ppl"] for r in rows}
    lines = []
    for n_remove in sorted({r["n_removed"] for r in rows}):
        for method in [m for m in METHODS if m in WARM_STARTS]:
            searched = [r for r in rows if (r["n_removed"], r["method"]) == (n_remove, method)]
            if searched:
                level = sum(own_evaluations(r, rows) >= sleb_count(rows, r["seed"], r["sampling"], n_remove)
                            for r in searched)
                lines.append(f"{n_remove} blocks, {method}: its own evaluations >= SLEB's in {level} of "
                             f"{len(searched)} draws")
            pairs = []
            for (n, m, sampling, seed), ppl in by_key.items():
                best = [by_key.get((n, h, sampling, seed)) for h in ("sleb", "shortgpt")]
                if (n, m) == (n_remove, method) and None not in best:
                    pairs.append((ppl, min(best)))
            if pairs:
                wins, ratio = paired_comparison(pairs)
                lines.append(f"{n_remove} blocks, {method}: test ppl <= the better of SLEB and ShortGPT in "
                             f"{wins} of {len(pairs)} draws; median ratio {ratio:.3f}")
        for method in METHODS:
            pairs = [(by_key[(n_remove, method, "cluster", seed)], ppl)
                     for (n, m, sampling, seed), ppl in by_key.items()
                     if (n, m, sampling) == (n_remove, method, "random")
                     and (n_remove, method, "cluster", seed) in by_key]
            if pairs:
                better, ratio = paired_comparison(pairs, strict=True)
                lines.append(f"{n_remove} blocks, {method}: cluster sampling lowers test ppl against random "
                             f"windows in {better} of {len(pairs)} seeds; median ratio {ratio:.3f}")
    return lines


def plot(payload: dict, name: str) -> None:
    """Every draw's held-out perplexity per method, one panel per removal count (``last`` is off the
    scale and left out; its figures are in the table)."""
    removals = sorted({row["n_removed"] for row in payload["rows"]})
    methods = [m for m in METHODS if m != "last" and any(r["method"] == m for r in payload["rows"])]
    fig, axes = plt.subplots(1, len(removals), figsize=(4.5 * len(removals), 4), squeeze=False)
    for ax, n_remove in zip(axes[0], removals):
        for x, method in enumerate(methods):
            for sampling, marker, shift, color in (("random", "o", -0.12, "tab:blue"),
                                                   ("cluster", "s", 0.12, "tab:orange")):
                values = [r["test_ppl"] for r in payload["rows"] if r["n_removed"] == n_remove
                          and r["method"] == method and r["sampling"] == sampling]
                if values:
                    ax.scatter([x + shift] * len(values), values, marker=marker, color=color, alpha=0.7,
                               label=f"{sampling} windows" if x == 0 else None)
                    ax.hlines(statistics.median(values), x + shift - 0.1, x + shift + 0.1, color="black")
        ax.axhline(payload["dense_ppl"], color="gray", lw=0.8, ls=":", label="dense")
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        ax.set(title=f"{n_remove} of 30 blocks removed",
               ylabel="WikiText-2 test ppl (each draw; bar: median)")
        ax.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M block removal at equal evaluation budgets", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--removals", type=int, nargs="+", default=[3, 6, 9])
    parser.add_argument("--samplings", nargs="+", default=["random", "cluster"],
                        choices=["random", "cluster"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (calibration draw and GA)")
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--pop", type=int, default=16, help="EvoP population (driver default: 16)")
    parser.add_argument("--eval-segments", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD",
                        help=f"a subset of {', '.join(METHODS)} (the searches need sleb's evaluation count)")
    parser.add_argument("--calibration-source", help="text of the windows (default: the shipped text; "
                        "wikitext2-valid: the held-out test's own distribution)")
    parser.add_argument("--name", default="evop_budget", help="results/NAME.{json,md,png}")
    args = parser.parse_args()
    if args.seeds < 1 or args.pop < 2 or any(n < 1 for n in args.removals):
        parser.error("--seeds and every removal must be at least 1, --pop at least 2")
    if "sleb" not in args.methods and set(args.methods) & set(WARM_STARTS):
        parser.error("--methods: the searches get at least SLEB's evaluations, so add sleb")
    args.methods = [method for method in METHODS if method in args.methods]
    settings = flag_settings(args)

    path = RESULTS / f"{args.name}.json"
    previous = json.loads(path.read_text()) if path.is_file() else None
    grid = ("removals", "samplings", "seeds", "methods")  # what rows are keyed by; the rest must match
    check_saved_settings(parser, path, previous and previous["settings"], settings, grid)
    model, tokenizer = load_model("smollm2-135m")
    if previous is not None:
        payload = previous
        old = payload["settings"]
        old["removals"] = sorted(set(old["removals"]) | set(args.removals))
        old["samplings"] = list(dict.fromkeys(old["samplings"] + args.samplings))
        old["seeds"] = max(old["seeds"], args.seeds)
        old["methods"] = [m for m in METHODS if m in old.get("methods", METHODS) or m in args.methods]
        print(f"resuming {path.name}: {len(payload['rows'])} rows done")
    else:
        dense = perplexity(model, tokenizer, 1024, args.eval_segments, progress=False).perplexity
        payload = {"environment": environment(), "settings": settings, "dense_ppl": dense, "rows": []}
    done = {(r["seed"], r["sampling"], r["n_removed"], r["method"]) for r in payload["rows"]}
    source = {"source": args.calibration_source} if args.calibration_source else {}
    for seed in range(args.seeds):
        for sampling in args.samplings:
            calibration = None
            for n_remove in args.removals:
                for method in args.methods:
                    if method == "last" and (seed or sampling != args.samplings[0]):
                        continue  # depends on neither the windows nor the seed
                    if (seed, sampling, n_remove, method) in done:
                        continue
                    if calibration is None:
                        calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, seed,
                                                       sampling=sampling, n_clusters=args.n_clusters,
                                                       model=model, **source)
                    started = time.perf_counter()
                    budget = None
                    if method in WARM_STARTS:  # the search's own evaluations >= those SLEB spent here
                        budget = sleb_count(payload["rows"], seed, sampling, n_remove)
                        config = EvoPConfig(n_remove, "evop", pop_size=args.pop, n_evals=budget,
                                            warm_start=WARM_STARTS[method],
                                            algorithm="1+lambda" if "1+λ" in method else "ga",
                                            n_stages=STAGES if "staged" in method else 1,
                                            objective="ppl" if method.endswith(" ppl") else "kl")
                    else:
                        config = EvoPConfig(n_remove, method)
                    choice = search_evop(model, calibration, config, SearchRun(seed=seed))
                    seconds = time.perf_counter() - started
                    row = {"method": method, "sampling": sampling, "seed": seed, "n_removed": n_remove,
                           "removed_blocks": choice.removed_blocks, "evaluations": choice.n_evaluations,
                           "budget": budget,
                           "calibration_kl": choice.scores["kl"], "calibration_ppl": choice.scores["ppl"],
                           "search_seconds": seconds,
                           "test_ppl": test_ppl(model, tokenizer, choice.removed_blocks, args.eval_segments)}
                    payload["rows"].append(row)
                    save_json(args.name, payload)
                    print(f"seed {seed} {sampling:7s} {n_remove:2d} {method:9s} {row['evaluations']:4d} "
                          f"evals ({seconds:.0f} s) calib KL {row['calibration_kl']:.3f} test ppl "
                          f"{row['test_ppl']:.2f} blocks {choice.removed_blocks}", flush=True)
    payload["environment"] = environment()
    save_json(args.name, payload)
    print(write_table(payload, args.name))
    plot(payload, args.name)


if __name__ == "__main__":
    main()
