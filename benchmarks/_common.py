"""Shared helpers for the benchmark scripts: environment record, JSON/markdown output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    import pymoo
    import transformers

    import optishear_moo

    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": {"optishear_moo": optishear_moo.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "pymoo": pymoo.__version__},
    }


def device_label(environment_: dict) -> str:
    """The device a result was measured on, as the tables name it: the GPU, or the CPU's cores."""
    return environment_["cuda"] or f"CPU ({environment_['cpu_count']} cores)"


def save_json(name: str, payload: dict) -> Path:
    """Write atomically so an interrupted run never leaves a truncated file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path


def save_figure(fig, ax, name: str) -> None:
    """Grid and legend on ``ax``, then write ``fig`` to results/NAME.png and close it."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    import matplotlib.pyplot as plt  # (the scripts choose the backend before importing it)

    plt.close(fig)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.2f}" if value < 1e5 else f"{value:.3g}"
        return "–" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary(values: list[float], digits: int = 2) -> str:
    """The value, or the median and [min, max] of several (ints as integers, floats with ``digits``
    decimals, large values in three significant digits)."""
    def number(value):
        if all(isinstance(v, int) for v in values):
            return f"{value:.0f}"
        return f"{value:.3g}" if abs(value) >= 1e5 else f"{value:.{digits}f}"

    if len(values) == 1:
        return number(values[0])
    return f"{number(statistics.median(values))} [{number(min(values))}, {number(max(values))}]"


def paired_comparison(pairs: list[tuple[float, float]], strict: bool = False) -> tuple[int, float]:
    """For ``(a, b)`` pairs of one measure (lower is better) from the same draw: in how many ``a``
    is at most ``b`` (below it, with ``strict``), and the median of ``a / b``."""
    wins = sum(a < b if strict else a <= b for a, b in pairs)
    return wins, statistics.median(a / b for a, b in pairs)


def grouped_bars(path: Path, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str,
                 reference: tuple[str, float] | None = None, figsize=(8, 4),
                 ranges: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """A log-scale bar chart: one bar per series in each group (NaN: no bar), an optional
    horizontal ``(label, value)`` reference line, optional ``(low, high)`` whiskers per bar (a
    series' spread over seeds); saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=figsize)
    width = 0.8 / max(len(series), 1)
    for k, (label, values) in enumerate(series.items()):
        spread = (ranges or {}).get(label)
        yerr = None if spread is None else np.abs(np.array(spread, float).T - np.array(values, float))
        ax.bar(np.arange(len(groups)) + k * width, values, width, label=label, yerr=yerr, capsize=2)
    ax.set_xticks(np.arange(len(groups)) + width * (len(series) - 1) / 2, groups)
    ax.set(yscale="log", ylabel=ylabel, title=title)
    if reference is not None:
        ax.axhline(reference[1], color="k", lw=0.8, ls="--", label=reference[0])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def darwinlm_arguments(parser, finetune_tokens: list[int], finetune_help: str) -> None:
    """The DarwinLM protocol's flags (windows, stage fine-tunes, the post-training every row gets)."""
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--finetune-tokens", type=int, nargs="+", default=finetune_tokens, help=finetune_help)
    parser.add_argument("--post-train-tokens", type=int, default=8192)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--eval-segments", type=int, default=8)
    parser.add_argument("--calibration-source", default=None,
                        help="text of the windows that score candidates (default: the shipped text; "
                             "wikitext2-valid: the stage fine-tunes' own distribution)")


def flag_settings(args, leave_out=("name",)) -> dict:
    """The flags a rerun must share to add to saved rows (``--calibration-source`` only when given,
    so results saved before the flag existed still match)."""
    return {key: value for key, value in vars(args).items()
            if key not in leave_out and not (key == "calibration_source" and value is None)}


def check_saved_settings(parser, path: Path, saved: dict | None, settings: dict, grid=()) -> None:
    """Stop with one line, before any model loads, when results/NAME.json (``path``, its settings
    ``saved``; None: no file) was run with other settings than ``settings``: its rows are kept,
    never overwritten by a run with other flags. ``grid``: the settings rows are keyed by, which a
    rerun may extend."""
    if saved is None:
        return
    differ = [key for key in dict.fromkeys([*settings, *saved]) if key not in grid
              and saved.get(key) != settings.get(key)]
    if differ:
        flag = differ[0].replace("_", "-")
        parser.error(f"{path.name} was run with other --{flag} ({saved.get(differ[0])}); "
                     "rerun with it or choose another --name")


def darwinlm_windows(tokenizer, args, seed: int):
    """Seed ``seed``'s calibration windows (the shipped text, or ``--calibration-source``) and
    training windows (WikiText-2 validation, seed + 1), enough for the largest stage fine-tune and
    the post-training."""
    from optishear_moo import load_calibration

    source = {"source": args.calibration_source} if args.calibration_source else {}
    calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, seed, **source)
    n_train = max(args.finetune_tokens + [args.post_train_tokens]) // args.seq_len
    return calibration, load_calibration(tokenizer, n_train, args.seq_len, seed + 1, source="wikitext2-valid")


def peak_host_gib() -> float:
    """This process's peak resident memory so far (GiB). On Linux the high-water mark of its own
    address space (``VmHWM``): ``ru_maxrss`` survives ``execve``, so a child started by a large
    parent would report at least the parent's size when it forked."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def speed_arguments(parser, candidates: int) -> None:
    """The flags the fitness-speed benchmarks share."""
    parser.add_argument("--candidates", type=int, default=candidates)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from the saved JSON")


def speed_setup(args):
    """SmolLM2, its calibration windows (one batch) and the floor: the best of three dense forwards."""
    import time

    from optishear_moo import load_calibration, load_model

    model, tokenizer = load_model("smollm2-135m")
    calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, seed=0)
    device = next(model.parameters()).device

    @torch.no_grad()
    def forward_seconds() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(input_ids=calibration.to(device), use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return model, calibration, min(forward_seconds() for _ in range(3))
