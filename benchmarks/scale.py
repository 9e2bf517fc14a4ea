"""Population fitness on random-init Llama shapes (1B, 8B, 13B): seconds per candidate and peak
memory, the model's weights in host memory and its blocks on the compute device one at a time.

    python benchmarks/scale.py --shapes 1b                                  # this CPU
    python benchmarks/scale.py --shapes 1b,8b,13b --device cuda --dtype bfloat16 --offload \\
        --n-samples 32 --seq-len 2048                                       # a GPU machine

Each shape is built from its real config with random weights, saved as safetensors and loaded
back with ``load_model`` (``offload=True`` keeps the weights in host memory and runs blocks on
``--device``). Then, on random calibration tokens: one dense pass block by block (the floor), an
``OptiShearProblem`` (KL) scoring the baselines' population in one walk over the blocks, and a
``BlockRemovalEvaluator`` scoring random block removals. Reports seconds per candidate, its ratio
to the dense pass, peak host memory (the process's RSS peak so far: run one shape per call to
read each alone) and peak device memory. Speed depends on the shapes,
not the weights; the numbers say what the walk costs, not how good a pruning is. Writes
results/scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, environment, markdown_table, save_json  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from optishear_moo import OptiShearProblem, load_model  # noqa: E402
from optishear_moo.activations import final_hidden_by_blocks  # noqa: E402
from optishear_moo.evop import BlockRemovalEvaluator  # noqa: E402
from optishear_moo.models import compute_device, load_tokenizer  # noqa: E402

SHAPES = {  # the published configs of Llama-3.2-1B, Llama-3-8B and Llama-2-13B
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
}


def saved_random_model(shape: str, dtype: torch.dtype, directory: Path) -> Path:
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, torch_dtype=str(dtype).split(".")[1])
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its own precision: an 8B model in float32 first is 32 GB
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(directory / shape, safe_serialization=True)
    load_tokenizer("smollm2-135m").save_pretrained(directory / shape)  # load_model wants one; unused here
    del model
    return directory / shape


def peak_host_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_device_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(shape: str, args, directory: Path) -> dict:
    dtype = getattr(torch, args.dtype)
    path = saved_random_model(shape, dtype, directory)
    model, _ = load_model(str(path), dtype=dtype, device=args.device, offload=args.offload)
    device = compute_device(model)
    n_params = sum(p.numel() for p in model.parameters())
    calibration = torch.randint(0, model.config.vocab_size, (args.n_samples, args.seq_len),
                                generator=torch.Generator().manual_seed(0))
    row = {"shape": shape, "parameters": n_params, "dtype": args.dtype, "device": str(device),
           "offload": args.offload, "candidates": args.candidates}
    synchronize(device)
    start = time.perf_counter()
    final_hidden_by_blocks(model, calibration, args.n_samples)
    synchronize(device)
    row["dense_pass_seconds"] = floor = time.perf_counter() - start
    print(f"{shape}: {n_params / 1e9:.2f} B parameters on {device}, dense pass {floor:.1f} s", flush=True)

    problem = OptiShearProblem(model, calibration, 0.5, objectives=("kl",), batch_size=args.n_samples,
                               progress=False)
    X = problem.initial_population(args.candidates)
    synchronize(device)
    start = time.perf_counter()
    problem.evaluate(X, return_values_of=["F"])
    synchronize(device)
    seconds = (time.perf_counter() - start) / len(X)
    row["optishear"] = {"seconds_per_candidate": seconds, "ratio_to_dense_pass": seconds / floor,
                        "block_passes": problem.walker.n_block_forwards}
    print(f"  OptiShear: {seconds:.1f} s per candidate ({seconds / floor:.2f}x the dense pass)", flush=True)
    del problem

    evaluator = BlockRemovalEvaluator(model, calibration, args.n_samples)
    rng = np.random.default_rng(0)
    n_blocks = evaluator.n_blocks
    candidates = [sorted(rng.choice(n_blocks, n_blocks // 4, replace=False).tolist())
                  for _ in range(args.candidates)]
    before = evaluator.n_block_forwards
    synchronize(device)
    start = time.perf_counter()
    evaluator.evaluate_many(candidates)
    synchronize(device)
    seconds = (time.perf_counter() - start) / len(candidates)
    row["block_removal"] = {"seconds_per_candidate": seconds, "ratio_to_dense_pass": seconds / floor,
                            "block_passes": evaluator.n_block_forwards - before}
    print(f"  block removal: {seconds:.1f} s per candidate ({seconds / floor:.2f}x)", flush=True)
    row["peak_host_gib"], row["peak_device_gib"] = peak_host_gib(), peak_device_gib(device)
    row["weights_gib"] = n_params * torch.finfo(dtype).bits / 8 / 2**30
    print(f"  peak host {row['peak_host_gib']:.1f} GiB, device {row['peak_device_gib']} GiB, weights "
          f"{row['weights_gib']:.1f} GiB", flush=True)
    return row


def write_table(payload: dict) -> None:
    rows = [[row["shape"], f"{row['parameters'] / 1e9:.2f} B", row["dtype"], row["device"] + (
        " (offloaded)" if row["offload"] else ""), row["dense_pass_seconds"],
        row["optishear"]["seconds_per_candidate"], row["optishear"]["ratio_to_dense_pass"],
        row["block_removal"]["seconds_per_candidate"], row["block_removal"]["ratio_to_dense_pass"],
        row["weights_gib"], row["peak_host_gib"], row["peak_device_gib"]] for row in payload["rows"]]
    env = payload["environment"]
    machine = env["cuda"] or f"CPU ({env['cpu_count']} cores)"
    text = (f"Random-init Llama shapes, {payload['n_samples']} x {payload['seq_len']} random calibration "
            f"tokens, {payload['candidates']} candidates per population; {machine}\n\n"
            + markdown_table(["shape", "parameters", "dtype", "compute device", "dense pass s",
                              "OptiShear s / cand.", "x dense", "block removal s / cand.", "x dense",
                              "weights GiB", "peak host GiB", "peak device GiB"], rows) + "\n")
    (RESULTS / "scale.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1b", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--offload", action="store_true", help="weights in host memory, blocks on --device")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from the saved JSON")
    args = parser.parse_args()
    if args.table_only:
        write_table(json.loads((RESULTS / "scale.json").read_text()))
        return
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise SystemExit(f"unknown shapes {unknown}: use {', '.join(SHAPES)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="optishear-scale-") as directory:
        for shape in shapes:
            rows.append(measure(shape, args, Path(directory)))
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
    payload = {"benchmark": "scale", "rows": rows, "n_samples": args.n_samples, "seq_len": args.seq_len,
               "candidates": args.candidates, "environment": environment()}
    save_json("scale", payload)
    write_table(payload)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [row["shape"] for row in rows]
    ax.bar(np.arange(len(rows)) - 0.2, [row["optishear"]["ratio_to_dense_pass"] for row in rows], 0.4,
           label="OptiShear")
    ax.bar(np.arange(len(rows)) + 0.2, [row["block_removal"]["ratio_to_dense_pass"] for row in rows], 0.4,
           label="block removal")
    ax.set_xticks(np.arange(len(rows)), names)
    ax.set(ylabel="seconds per candidate / dense pass", title="population fitness, one walk per population")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scale.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
