"""Does a short fine-tune tell which structured candidate recovers best? DarwinLM's selection premise.

    python benchmarks/darwinlm_selection.py                  # 2x, 8 candidates, 3 seeds
    python benchmarks/darwinlm_selection.py --seeds 1 --name darwinlm_selection_seed0
    python benchmarks/darwinlm_selection.py --draw offspring --calibration-source wikitext2-valid \
        --finetune-tokens 2048 4096 --name darwinlm_selection_offspring

Training-aware selection ranks offspring by their KL after a short fine-tune, betting that it
predicts how well a candidate recovers after the final post-training better than the one-shot KL
does. For ``--candidates`` allocations at the target, drawn as the search's first population is
(the most uniform allocation and copies moved by random level switches, ``BudgetSampling``), on
SmolLM2-135M, this measures every candidate's one-shot KL on the calibration windows, its KL after
a fine-tune of each of ``--finetune-tokens`` (what a training-aware stage scores, through
``StructuredPruningProblem.finetuned_kl``), and its WikiText-2 test perplexity after the
post-training every row of ``benchmarks/darwinlm.py`` gets (``--post-train-tokens``, the same
windows and learning rate). Reported per score: the Spearman rank correlation with the
post-trained perplexity, and the post-trained perplexity of the candidate that score would pick
over the best candidate's (1.00: it picks the best). Training-aware selection can only beat
one-shot selection from the fine-tune budget at which its scores rank the candidates better than
the one-shot KL does. ``--draw offspring`` measures what the search itself ranks instead: the
first population's candidate of lowest one-shot KL becomes the parent, and the candidates are its
offspring under the search's mutation (``LevelSwitchMutation``: one to three level switches each),
which differ from each other far less than a first population does.
A rerun with the same settings keeps the candidates it has measured.
Writes results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable

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
    save_json,
    summary,
)
from pymoo.core.population import Population  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from optishear_moo import StructuredPruningProblem, load_model  # noqa: E402
from optishear_moo.darwinlm import apply_levels_  # noqa: E402
from optishear_moo.evaluation import perplexity  # noqa: E402
from optishear_moo.finetuning import post_train  # noqa: E402
from optishear_moo.search.levels import BudgetSampling, LevelSwitchMutation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2.0, help="block-weight compression")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds 0..N-1 (windows and candidates drawn again)")
    darwinlm_arguments(parser, [512, 1024, 2048, 4096], "stage fine-tune budgets scored (tokens)")
    parser.add_argument("--draw", choices=("population", "offspring"), default="population",
                        help="candidates: the search's first population, or the offspring of its best "
                             "member under the search's mutation")
    parser.add_argument("--name", default="darwinlm_selection", help="results/NAME.{json,md,png}")
    args = parser.parse_args()
    if args.candidates < 3 or args.seeds < 1 or not args.target > 1:
        parser.error("--candidates must be at least 3 (a rank correlation), --seeds at least 1, "
                     "--target above 1")
    if min(args.finetune_tokens) < args.seq_len:
        parser.error(f"every --finetune-tokens must be at least one window (--seq-len {args.seq_len})")
    # --draw only when not the default, so results saved before the flag existed still match
    settings = flag_settings(args, ("name", "seeds") + (("draw",) if args.draw == "population" else ()))

    path = RESULTS / f"{args.name}.json"
    previous = json.loads(path.read_text()) if path.is_file() else None
    check_saved_settings(parser, path, previous and previous["settings"], settings)
    model, tokenizer = load_model("smollm2-135m")
    if previous is not None:
        payload = previous
        print(f"adding to {path.name}: {len(payload['rows'])} candidates measured")
    else:
        payload = {"environment": environment(), "settings": settings, "rows": []}
    done = {(row["seed"], row["candidate"]) for row in payload["rows"]}
    for seed in range(args.seeds):
        if all((seed, k) in done for k in range(args.candidates)):
            continue
        calibration, training = darwinlm_windows(tokenizer, args, seed)
        problem = StructuredPruningProblem(model, calibration, args.target, training=training,
                                           finetune_learning_rate=args.learning_rate)
        X = candidates(problem, args.candidates, args.draw, np.random.default_rng(seed))
        for k, x in enumerate(X):
            if (seed, k) in done:
                continue
            levels = problem.levels(x)
            one_shot = problem.evaluator.evaluate(levels)
            staged = {str(tokens): problem.finetuned_kl(x, tokens) for tokens in args.finetune_tokens}
            problem.restore_dense()
            pruned = apply_levels_(copy.deepcopy(model), problem.database, levels)
            post_train(pruned, training[: args.post_train_tokens // args.seq_len], args.learning_rate)
            after = perplexity(pruned, tokenizer, 1024, args.eval_segments, progress=False).perplexity
            del pruned
            row = {"seed": seed, "candidate": k, "levels": levels.tolist(), "one_shot_kl": one_shot,
                   "finetuned_kl": staged, "ppl_after": after}
            payload["rows"].append(row)
            save_json(args.name, payload)
            print(f"seed {seed} candidate {k}: one-shot KL {one_shot:.3f}, after fine-tunes "
                  + ", ".join(f"{t}: {v:.3f}" for t, v in staged.items()) + f"; post-trained ppl {after:.2f}",
                  flush=True)
        problem.restore_dense()
    payload["environment"] = environment()
    save_json(args.name, payload)
    print(write_table(payload, args.name))


def candidates(problem: StructuredPruningProblem, n: int, draw: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` allocations: the search's first population, or (``offspring``) that population's
    member of lowest one-shot KL mutated ``n`` times as the search mutates a parent."""
    X = BudgetSampling().do(problem, n, random_state=rng).get("X")
    if draw == "population":
        return X
    parent = X[int(np.argmin([problem.evaluator.evaluate(problem.levels(x)) for x in X]))]
    offspring = LevelSwitchMutation().do(problem, Population.new(X=np.repeat(parent[None], n, axis=0)),
                                         random_state=rng)
    return np.rint(offspring.get("X")).astype(int)


def scores(payload: dict) -> dict[str, Callable[[dict], float]]:
    """``{label: getter}`` of every score a selection could rank candidates by."""
    out = {"one-shot KL": lambda row: row["one_shot_kl"]}
    for tokens in payload["settings"]["finetune_tokens"]:
        out[f"KL after {tokens}-token fine-tune"] = lambda row, t=str(tokens): row["finetuned_kl"][t]
    return out


def per_seed(payload: dict) -> dict[str, dict[str, list[float]]]:
    """For every score: its Spearman correlation with the post-trained ppl and the post-trained ppl
    of the candidate it picks over the best one's, one value per seed with every candidate."""
    out = {label: {"rho": [], "regret": []} for label in scores(payload)}
    for rows in complete_seeds(payload):
        final = np.array([row["ppl_after"] for row in rows])
        for label, get in scores(payload).items():
            values = np.array([get(row) for row in rows])
            out[label]["rho"].append(float(spearmanr(values, final).statistic))
            out[label]["regret"].append(float(final[np.argmin(values)] / final.min()))
    return out


def complete_seeds(payload: dict) -> list[list[dict]]:
    """The rows of every seed with all its candidates measured, in seed order."""
    by_seed: dict[int, list[dict]] = {}
    for row in payload["rows"]:
        by_seed.setdefault(row["seed"], []).append(row)
    return [rows for _, rows in sorted(by_seed.items()) if len(rows) == payload["settings"]["candidates"]]


def spread(payload: dict) -> list[float]:
    """Per seed with every candidate: the worst post-trained ppl over the best (how different the
    candidates a selection has to rank are)."""
    return [max(row["ppl_after"] for row in rows) / min(row["ppl_after"] for row in rows)
            for rows in complete_seeds(payload)]


DRAWN = {"population": "the search's first population",
         "offspring": "offspring of the first population's best (one to three level switches each)"}


def write_table(payload: dict, name: str) -> str:
    settings, stats = payload["settings"], per_seed(payload)
    seeds = len(next(iter(stats.values()))["rho"])
    table = [[label, *(summary(s[key], 3) if s[key] else None for key in ("rho", "regret"))]
             for label, s in stats.items()]
    text = (f"SmolLM2-135M at {settings['target']}x block-weight compression: {settings['candidates']} "
            f"candidates per seed drawn as {DRAWN[settings.get('draw', 'population')]}, KLs on "
            f"{settings.get('calibration_source') or 'shipped-text (Gutenberg)'} windows; post-training "
            f"{settings['post_train_tokens']} tokens (lr {settings['learning_rate']}), WikiText-2 test ppl "
            f"over {settings['eval_segments']} x 1024 tokens; median [min, max] over {seeds} "
            f"seed{'s' if seeds != 1 else ''}\n\n"
            + markdown_table(["score", "Spearman with post-trained ppl", "picked / best post-trained ppl"],
                             table) + "\n")
    if seeds:
        text += ("\nSpread of the candidates' post-trained ppl, worst / best per seed: "
                 f"{summary(spread(payload), 3)}\n")
    (RESULTS / f"{name}.md").write_text(text)
    if seeds:
        labels = list(stats)
        fig, ax = plt.subplots(figsize=(6, 4))
        tokens = settings["finetune_tokens"]
        rho = [stats[label]["rho"] for label in labels[1:]]
        middle = [statistics.median(r) for r in rho]
        ax.errorbar(tokens, middle, yerr=[[m - min(r) for m, r in zip(middle, rho)],
                                          [max(r) - m for m, r in zip(middle, rho)]],
                    fmt="o-", capsize=3, label="KL after a stage fine-tune (median, range over seeds)")
        one_shot = stats[labels[0]]["rho"]
        ax.axhspan(min(one_shot), max(one_shot), color="k", alpha=0.08)
        ax.axhline(statistics.median(one_shot), color="k", ls="--", lw=0.8, label="one-shot KL (band: range)")
        ax.axhline(0, color="grey", lw=0.5)
        drawn = "a parent's offspring" if settings.get("draw") == "offspring" else "a first population"
        ax.set(xscale="log", xlabel="stage fine-tune tokens", ylim=(-1, 1),
               ylabel="Spearman with post-trained ppl")
        ax.set_title(f"SmolLM2-135M, {settings['target']}x, {settings['candidates']} candidates from {drawn}",
                     fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=120)
        plt.close(fig)
    return text


if __name__ == "__main__":
    main()
