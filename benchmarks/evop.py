"""EvoP on SmolLM2-135M (30 blocks): which blocks to remove, searched vs heuristics.

    python benchmarks/evop.py                     # 3, 6, 9 blocks; random and cluster sampling
    python benchmarks/evop.py --removals 3 --pop 8 --gens 2   # a quick look

For each calibration sampling (random windows, EvoP's cluster sampling) and each number of
removed blocks, ``search_evop`` – what ``optishear-moo evop`` runs, with its defaults –
for each method: EvoP (GA over the block-removal problem, KL objective, warm-started as the
driver does), ShortGPT (lowest block influence), SLEB-style greedy removal by calibration
perplexity, and removing the last blocks before the final one. Reports WikiText-2 test
perplexity, calibration diversity and measured speed of the removed models. Writes
results/evop.json, results/evop.md and results/evop.png; saved after every entry.
"""

from __future__ import annotations

import argparse
import copy
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import RESULTS, environment, markdown_table, save_json  # noqa: E402

from optishear_moo import EvoPConfig, SearchRun, load_calibration, load_model, search_evop  # noqa: E402
from optishear_moo.data import calibration_diversity  # noqa: E402
from optishear_moo.evaluation import measure_speed, perplexity  # noqa: E402
from optishear_moo.evop.blocks import last_blocks, remove_blocks_  # noqa: E402

METHODS = ["evop", "shortgpt", "sleb", "last"]


def removed_copy(model, removed):
    pruned = copy.deepcopy(model)
    return remove_blocks_(pruned, removed)


def test_ppl(model, tokenizer, removed, segments):
    """WikiText-2 test ppl of a copy of ``model`` with ``removed`` blocks really dropped."""
    return perplexity(removed_copy(model, removed), tokenizer, 1024, segments, progress=False).perplexity


def plot(rows, dense, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, color in zip(METHODS, ["tab:blue", "tab:orange", "tab:green", "tab:gray"]):
        for sampling, style in (("random", "-o"), ("cluster", "--s")):
            points = sorted((r["n_removed"], r["test_ppl"]) for r in rows
                            if r["method"] == method and r["sampling"] == sampling)
            if points:
                ax.plot(*zip(*points), style, color=color, label=f"{method} ({sampling})")
    ax.axhline(dense, color="black", lw=0.8, label="dense")
    ax.set(xlabel="blocks removed (of 30)", ylabel="WikiText-2 test perplexity", yscale="log",
           title="SmolLM2-135M block removal")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--removals", type=int, nargs="+", default=[3, 6, 9])
    parser.add_argument("--samplings", nargs="+", default=["random", "cluster"])
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--pop", type=int, default=16, help="EvoP population (driver default: 16)")
    parser.add_argument("--gens", type=int, default=10, help="EvoP generations (driver default: 10)")
    parser.add_argument("--eval-segments", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m")
    n_blocks = model.config.num_hidden_layers
    dense = perplexity(model, tokenizer, 1024, args.eval_segments, progress=False).perplexity
    payload = {"environment": environment(), "settings": vars(args), "dense_ppl": dense,
               "diversity": {}, "rows": [], "speed": {}}
    print(f"dense WikiText-2 test ppl {dense:.2f}")
    for sampling in args.samplings:
        calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, args.seed,
                                       sampling=sampling, n_clusters=args.n_clusters, model=model)
        payload["diversity"][sampling] = calibration_diversity(
            calibration, tokenizer, model=model, n_clusters=args.n_clusters).to_dict()
        print(sampling, "calibration diversity", payload["diversity"][sampling])
        for n_remove in args.removals:
            for method in METHODS:
                if method == "last" and sampling != args.samplings[0]:
                    continue  # does not depend on the calibration data
                started = time.perf_counter()
                config = EvoPConfig(n_remove, method, pop_size=args.pop, n_gen=args.gens)
                choice = search_evop(model, calibration, config, SearchRun(seed=args.seed))
                blocks = choice.removed_blocks
                row = {"method": method, "sampling": sampling, "n_removed": n_remove,
                       "removed_blocks": blocks, "calibration_kl": choice.scores["kl"],
                       "calibration_ppl": choice.scores["ppl"],
                       "test_ppl": test_ppl(model, tokenizer, blocks, args.eval_segments),
                       "search_seconds": time.perf_counter() - started,
                       "evaluations": choice.n_evaluations or None}
                payload["rows"].append(row)
                print(f"{sampling:8s} {n_remove:2d} {method:9s} test ppl {row['test_ppl']:9.2f} "
                      f"calib KL {row['calibration_kl']:.3f} blocks {blocks}")
                save_json("evop", payload)

    for n_remove in [0, *args.removals]:
        pruned = removed_copy(model, last_blocks(n_blocks, n_remove)) if n_remove else model
        speed = measure_speed(pruned, seq_len=256, new_tokens=32, repeats=3)
        payload["speed"][str(n_remove)] = speed.to_dict()
        print(f"{n_remove} removed: prefill {speed.prefill_seconds * 1e3:.0f} ms, "
              f"decode {speed.decode_tokens_per_second:.1f} tok/s")
        save_json("evop", payload)

    base = payload["speed"]["0"]
    columns = [(m, s) for m in METHODS for s in (args.samplings[:1] if m == "last" else args.samplings)]
    table_rows = []
    for n_remove in args.removals:
        speed = payload["speed"][str(n_remove)]
        cells = [n_remove]
        for method, sampling in columns:
            match = [r["test_ppl"] for r in payload["rows"] if r["method"] == method
                     and r["n_removed"] == n_remove and r["sampling"] == sampling]
            cells.append(match[0] if match else None)
        cells += [base["prefill_seconds"] / speed["prefill_seconds"],
                  speed["decode_tokens_per_second"] / base["decode_tokens_per_second"]]
        table_rows.append(cells)
    header = ["removed"] + [m if m == "last" else f"{m} ({s})" for m, s in columns] + [
        "prefill speed-up", "decode speed-up"]
    table = markdown_table(header, table_rows)
    (RESULTS / "evop.md").write_text(f"Dense WikiText-2 test ppl {dense:.2f}\n\n{table}\n")
    plot(payload["rows"], dense, RESULTS / "evop.png")
    print(table)


if __name__ == "__main__":
    main()
