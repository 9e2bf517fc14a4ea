"""Measured speed of structurally pruned SmolLM2-135M against the dense model.

    python benchmarks/structured_speed.py                 # CPU here; CUDA when present
    python benchmarks/structured_speed.py --device cpu --compressions 1.5 2

Slices the model to the most uniform level allocation at each block-weight compression (and to
the searched allocations of results/darwinlm.json when that file exists), then times prefill
latency and greedy decoding with the KV cache at two shapes. Speed depends on the layer
shapes only, so a small calibration set builds the level database. Writes
results/structured_speed.json, .md and .png.
"""

from __future__ import annotations

import argparse
import copy
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import RESULTS, environment, markdown_table, save_json  # noqa: E402

from optishear_moo import load_calibration, load_model  # noqa: E402
from optishear_moo.darwinlm import StructuredLevelDatabase, apply_levels_  # noqa: E402
from optishear_moo.darwinlm.problem import StructuredPruningProblem  # noqa: E402
from optishear_moo.evaluation import measure_speed  # noqa: E402

SHAPES = [(1, 256), (8, 128)]  # (batch, prompt tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compressions", type=float, nargs="+", default=[1.25, 1.5, 2.0, 3.0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m", device=args.device)
    calibration = load_calibration(tokenizer, 4, 128, 0)
    database = StructuredLevelDatabase.build(model, calibration, progress=True)
    problem = StructuredPruningProblem(model, calibration, 2.0, database=database)  # for its helpers
    variants = {"dense": None}
    variants.update({f"uniform {c}x": problem.uniform_levels(c) for c in args.compressions})
    searched = RESULTS / "darwinlm.json"
    if searched.exists():
        for row in json.loads(searched.read_text())["rows"]:
            if row["method"] != "uniform":
                variants[f"{row['method']} {row['target']}x"] = row["levels"]

    payload = {"environment": environment(), "settings": vars(args), "rows": []}
    for label, levels in variants.items():
        pruned = model if levels is None else apply_levels_(copy.deepcopy(model), database, levels)
        compression = 1.0 if levels is None else 1 / problem.kept_share(levels)
        for batch, seq_len in SHAPES:
            speed = measure_speed(pruned, seq_len=seq_len, batch_size=batch, new_tokens=args.new_tokens,
                                  repeats=args.repeats)
            payload["rows"].append({"model": label, "compression": compression, **speed.to_dict()})
            print(f"{label:28s} batch {batch} x {seq_len}: prefill {speed.prefill_seconds * 1e3:7.1f} ms, "
                  f"decode {speed.decode_tokens_per_second:7.1f} tok/s, {speed.parameters / 1e6:.1f}M params")
            save_json("structured_speed", payload)
        del pruned

    dense = {(r["batch_size"], r["seq_len"]): r for r in payload["rows"] if r["model"] == "dense"}
    table_rows = []
    for r in payload["rows"]:
        base = dense[r["batch_size"], r["seq_len"]]
        table_rows.append([r["model"], r["compression"], r["parameters"] / 1e6,
                           f"{r['batch_size']}x{r['seq_len']}", r["prefill_seconds"] * 1e3,
                           base["prefill_seconds"] / r["prefill_seconds"], r["decode_tokens_per_second"],
                           r["decode_tokens_per_second"] / base["decode_tokens_per_second"]])
    table = markdown_table(["model", "block compression", "params (M)", "batch x prompt", "prefill (ms)",
                            "prefill speed-up", "decode tok/s", "decode speed-up"], table_rows)
    device = payload["rows"][0]["device"]
    (RESULTS / "structured_speed.md").write_text(f"Device: {device}\n\n{table}\n")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (batch, seq_len) in zip(axes, SHAPES):
        rows = [r for r in payload["rows"] if (r["batch_size"], r["seq_len"]) == (batch, seq_len)]
        base = dense[batch, seq_len]
        ax.scatter([r["compression"] for r in rows],
                   [base["prefill_seconds"] / r["prefill_seconds"] for r in rows], label="prefill")
        ax.scatter([r["compression"] for r in rows],
                   [r["decode_tokens_per_second"] / base["decode_tokens_per_second"] for r in rows],
                   marker="^", label="decode")
        ax.set(xlabel="block-weight compression", ylabel="speed-up vs dense",
               title=f"batch {batch} x {seq_len} tokens ({device})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "structured_speed.png", dpi=120)
    print(table)


if __name__ == "__main__":
    main()
