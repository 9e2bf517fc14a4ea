"""Population fitness on random-init Llama shapes (1B, 3B, 8B, 13B): seconds per candidate and
peak memory, the model's blocks on the compute device one at a time, its weights in host memory or
read from disk as used.

    python benchmarks/scale.py --shapes 1b                                  # this CPU
    python benchmarks/scale.py --shapes 8b --dtype bfloat16 --offload disk --n-samples 2
    python benchmarks/scale.py --shapes 1b,8b,13b --device cuda --dtype bfloat16 --offload host \\
        --n-samples 32 --seq-len 2048                                       # a GPU machine

Each shape is written from its real config with random weights (normal, std 0.02), as safetensors
shards of one block each, by a child process (so the measured process's memory peak is the
search's alone), and loaded back with ``load_model`` (``--offload host`` keeps the weights in
host memory and runs blocks on ``--device``; ``--offload disk`` leaves blocks and embeddings in
the files and reads each when used). Then, on random calibration tokens: one dense pass block by
block (the floor), an
``OptiShearProblem`` (KL) scoring the baselines' population in one walk over the blocks, and a
``BlockRemovalEvaluator`` scoring random block removals. Reports seconds per candidate, its ratio
to the dense pass, peak host memory (the process's RSS peak so far: run one shape per call to
read each alone) and peak device memory. Rows are merged into results/scale.json by shape, dtype,
device and offload mode. Speed depends on the shapes,
not the weights; the numbers say what the walk costs, not how good a pruning is. Writes
results/scale.{json,md,png}.
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
import torch  # noqa: E402
from _common import RESULTS, device_label, environment, markdown_table, peak_host_gib, save_json  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from optishear_moo import OptiShearProblem, load_model  # noqa: E402
from optishear_moo.activations import final_hidden_by_blocks  # noqa: E402
from optishear_moo.evop import BlockRemovalEvaluator  # noqa: E402
from optishear_moo.models import compute_device  # noqa: E402

SHAPES = {  # the published configs of Llama-3.2-1B, Llama-3.2-3B, Llama-3-8B and Llama-2-13B
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
}


def write_random_model(shape: str, dtype: torch.dtype, directory: Path) -> None:
    """A checkpoint of ``shape`` with random weights, written one block's shard at a time (an 8B
    model never whole in memory), as ``save_pretrained`` lays out sharded safetensors."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, dtype=str(dtype).split(".")[1])
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    groups: dict[str, list[tuple[str, torch.Size]]] = {}
    tied = skeleton.all_tied_weights_keys if config.tie_word_embeddings else {}
    for name, parameter in skeleton.named_parameters():
        if name in tied:  # stored once, under the name it is tied to
            continue
        group = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else name
        groups.setdefault(group, []).append((name, parameter.shape))
    generator = torch.Generator().manual_seed(0)
    directory.mkdir(parents=True)
    weight_map = {}
    for number, names in enumerate(groups.values()):
        file = f"model-{number + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: (torch.ones(size, dtype=dtype) if len(size) == 1 else
                          (torch.randn(size, generator=generator, dtype=dtype) * 0.02))
                   for name, size in names}
        save_file(tensors, directory / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config.save_pretrained(directory)
    placeholder_tokenizer().save_pretrained(directory)  # load_model wants one; the ids are random


def placeholder_tokenizer():
    """A one-word tokenizer (no model wheel needed on a bare GPU machine)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def saved_random_model(shape: str, dtype: torch.dtype, directory: Path) -> Path:
    """:func:`write_random_model` in a child process, whose memory is not this process's."""
    subprocess.run([sys.executable, __file__, "--write", shape, "--dtype", str(dtype).split(".")[1],
                    "--into", str(directory / shape)], check=True)
    return directory / shape


def peak_device_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(shape: str, args, directory: Path) -> dict:
    dtype = getattr(torch, args.dtype)
    path = saved_random_model(shape, dtype, directory)
    offload = False if args.offload == "none" else args.offload
    model, _ = load_model(str(path), dtype=dtype, device=args.device, offload=offload)
    device = compute_device(model)
    tied = getattr(model, "all_tied_weights_keys", None) or {}  # a streamed head is its own tensor
    n_params = sum(p.numel() for name, p in model.named_parameters() if name not in tied)
    calibration = torch.randint(0, model.config.vocab_size, (args.n_samples, args.seq_len),
                                generator=torch.Generator().manual_seed(0))
    row = {"shape": shape, "parameters": n_params, "dtype": args.dtype, "device": str(device),
           "offload": args.offload, "candidates": args.candidates, "n_samples": args.n_samples,
           "seq_len": args.seq_len}
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


def merged_rows(rows: list[dict]) -> list[dict]:
    """``rows`` over the saved ones measured on the same machine with the same shape, dtype,
    device and offload mode."""
    def key(row):
        return row["shape"], row["dtype"], row["device"], str(row["offload"])

    saved = RESULTS / "scale.json"
    old = json.loads(saved.read_text()) if saved.is_file() else {"rows": []}
    same_machine = old.get("environment", {}).get("cuda") == environment()["cuda"]
    for row in old["rows"]:  # rows saved before the settings were kept per row
        row.setdefault("n_samples", old.get("n_samples"))
        row.setdefault("seq_len", old.get("seq_len"))
        row["offload"] = {True: "host", False: "none"}.get(row["offload"], row["offload"])
    kept = {key(row): row for row in old["rows"] if same_machine}
    kept.update({key(row): row for row in rows})
    return sorted(kept.values(), key=lambda row: (list(SHAPES).index(row["shape"]), key(row)))


def write_table(payload: dict) -> None:
    where = {"none": "", "host": " (weights in host memory)", "disk": " (weights read from disk)"}
    rows = [[row["shape"], f"{row['parameters'] / 1e9:.2f} B", row["dtype"], row["device"]
             + where[row["offload"]], f"{row['n_samples']} x {row['seq_len']}", row["candidates"],
             row["dense_pass_seconds"],
        row["optishear"]["seconds_per_candidate"], row["optishear"]["ratio_to_dense_pass"],
        row["block_removal"]["seconds_per_candidate"], row["block_removal"]["ratio_to_dense_pass"],
        row["weights_gib"], row["peak_host_gib"], row["peak_device_gib"]] for row in payload["rows"]]
    machine = device_label(payload["environment"])
    text = (f"Random-init Llama shapes, random calibration tokens; {machine}\n\n"
            + markdown_table(["shape", "parameters", "dtype", "compute device", "tokens", "candidates",
                              "dense pass s",
                              "OptiShear s / cand.", "x dense", "block removal s / cand.", "x dense",
                              "weights GiB", "peak host GiB", "peak device GiB"], rows) + "\n")
    (RESULTS / "scale.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1b", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--offload", default="none", choices=["none", "host", "disk"],
                        help="weights in host memory (host) or read from the files as used (disk)")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from the saved JSON")
    parser.add_argument("--write", help=argparse.SUPPRESS)  # the child writing a checkpoint
    parser.add_argument("--into", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_random_model(args.write, getattr(torch, args.dtype), Path(args.into))
        return
    if args.table_only:
        write_table({"rows": merged_rows([]), "environment": json.loads((RESULTS / "scale.json").read_text())[
            "environment"]})
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
    payload = {"benchmark": "scale", "rows": merged_rows(rows), "environment": environment()}
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
