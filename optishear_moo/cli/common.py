"""What every command shares: the model/calibration/evaluation flags, and :class:`Job`, one run
of a command in its ``--output`` directory (checks before any work, resume, interruption,
atomic writes, the report)."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

MODEL_SETTINGS = ("model", "device", "dtype", "calibration", "calibration_sampling", "n_clusters",
                  "n_samples", "seq_len", "seed", "batch_size", "eval_seq_len", "eval_segments")
"""Settings of :func:`add_model_arguments` that a resumed run reuses."""


def add_validation_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--validation`` / ``--validation-samples``: held-out windows that choose ``what``."""
    parser.add_argument("--validation", default="wikitext2-valid",
                        help=f"text of the held-out windows that choose {what} "
                             "(default: %(default)s; the calibration never uses it)")
    parser.add_argument("--validation-samples", type=int, default=None,
                        help="held-out windows (default: --n-samples; 0: none)")


def check_validation(args: argparse.Namespace) -> None:
    """``--validation-samples`` defaults to ``--n-samples`` and may be 0 (checked before any work)."""
    if args.validation_samples is None:
        args.validation_samples = args.n_samples
    check_positive(args, "validation_samples", minimum=0)


def load_validation_for(args: argparse.Namespace, tokenizer, shape: tuple[int, int] | None = None):
    """The held-out windows of :func:`add_validation_arguments` (after :func:`check_validation`), or
    None with 0 samples; ``shape`` (windows, tokens each) instead of ``--validation-samples`` x
    ``--seq-len``."""
    from ..data import load_calibration

    if not args.validation_samples:
        return None
    n_samples, seq_len = shape or (args.validation_samples, args.seq_len)
    return load_calibration(tokenizer, n_samples, seq_len, args.seed, args.validation)


def add_model_arguments(parser: argparse.ArgumentParser, n_samples: int = 32, seq_len: int = 512,
                        resumable: bool = False, prune_windows: tuple[int, int] | None = None) -> None:
    """The model and calibration flags; a search (``resumable``) scores candidates on ``--n-samples``
    x ``--seq-len`` windows, and with ``prune_windows`` prunes its final model (and any database) from
    ``--prune-samples`` x ``--prune-seq-len`` windows (defaults: ``prune_windows``)."""
    parser.add_argument("--model", default="smollm2-135m",
                        help="embedded name, local directory, .gguf file or hub id (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--calibration", default="gutenberg",
                        help="shipped corpus (gutenberg, wikitext2-valid), text file or hf:NAME")
    parser.add_argument("--calibration-sampling", default="random", choices=["random", "cluster"],
                        help="random windows, or EvoP's cluster-based sampling (default: random)")
    parser.add_argument("--n-clusters", type=int, default=None,
                        help="k-means clusters for --calibration-sampling cluster (default: 8)")
    parser.add_argument("--n-samples", type=int, default=n_samples,
                        help="calibration windows (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=seq_len,
                        help="tokens per window (default: %(default)s)")
    if prune_windows is not None:
        parser.add_argument("--prune-samples", type=int, default=prune_windows[0],
                            help="calibration windows the final model is pruned from (default: %(default)s; "
                                 "--n-samples are the windows that score candidates)")
        parser.add_argument("--prune-seq-len", type=int, default=prune_windows[1],
                            help="tokens per pruning window (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward")
    add_zero_shot_arguments(parser)
    if resumable:
        parser.add_argument("--resume", action="store_true",
                            help="continue the interrupted search in --output (its settings are reused)")
        parser.add_argument("--workers", type=int, default=None,
                            help="evaluate populations on this many Ray workers (one per GPU, or CPU "
                                 "processes); needs the [ray] extra (default: in this process)")
        parser.add_argument("--ray-address", default=None,
                            help="join this Ray cluster (HEAD:6379 or auto) instead of starting a local one")
        parser.add_argument("--trust-checkpoint", action="store_true",
                            help="resume a checkpoint this user's optishear-moo did not write (from a "
                                 "colleague or another machine); it is still read as data only")
    add_output_arguments(parser)


def add_zero_shot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zero-shot", default=None, metavar="TASKS",
                        help="also report 0-shot accuracy on these tasks (comma-separated: arc_easy, "
                             "arc_challenge, boolq, hellaswag, piqa, winogrande, openbookqa, rte)")
    parser.add_argument("--zero-shot-limit", type=int, default=None,
                        help="examples per zero-shot task (default: the whole validation set)")


def check_zero_shot(args: argparse.Namespace) -> None:
    """Zero-shot settings checked before any work: task names, the engine and the task data."""
    if getattr(args, "zero_shot", None):
        from ..evaluation.zero_shot import check_engine, task_configs

        check_engine()
        task_configs(args.zero_shot)  # known tasks whose data is installed
        check_positive(args, "zero_shot_limit")


def zero_shot_report(args: argparse.Namespace, model, tokenizer) -> dict | None:
    """Zero-shot accuracies of ``model`` as it is, or None without ``--zero-shot``."""
    if not getattr(args, "zero_shot", None):
        return None
    from ..evaluation.zero_shot import zero_shot

    return zero_shot(model, tokenizer, args.zero_shot, args.zero_shot_limit, batch_size=args.batch_size)


def front_zero_shot(args: argparse.Namespace, tokenizer, points: list[dict], pruned, size_name: str,
                    output: Path, title: str, baselines: dict | None = None) -> None:
    """With ``--zero-shot``, score every front point (and baseline) on the zero-shot tasks: each
    ``points[i]`` gets ``"zero_shot"`` (the results) and the front is drawn as ``size_name`` (a key
    of the points) against average accuracy in ``pareto_zero_shot.png``. ``pruned(point)`` is a
    context manager giving the pruned model of a point (and restoring what it changed)."""
    if not getattr(args, "zero_shot", None):
        return
    from ..search import plot_pareto

    reference = {}
    for label, point in (baselines or {}).items():
        with pruned(point) as model:
            point["zero_shot"] = zero_shot_report(args, model, tokenizer)
        reference[label] = [point[size_name], point["zero_shot"]["average"]["acc"]]
    for point in points:
        with pruned(point) as model:
            point["zero_shot"] = zero_shot_report(args, model, tokenizer)
    F = [[point[size_name], point["zero_shot"]["average"]["acc"]] for point in points]
    plot_pareto(F, [size_name, "zero_shot_accuracy"], output / "pareto_zero_shot", baselines=reference,
                title=f"{title}: average 0-shot accuracy ({args.zero_shot})")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-seq-len", type=int, default=1024,
                        help="WikiText-2 test segment length (default: %(default)s)")
    parser.add_argument("--eval-segments", default="16",
                        help="segments to evaluate, or 'all' for the full split (default: 16)")
    parser.add_argument("--output", required=True, help="directory for the results and report.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def eval_segments(value: str) -> int | None:
    if value == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--eval-segments must be a positive integer or 'all', got {value!r}")
    return count


def value_or_range(value: str, flag: str, kind=float, example: str = "0.5"):
    """``"X"`` -> X, ``"LOW:HIGH"`` -> (LOW, HIGH), anything else a ValueError naming the flag."""
    try:
        parts = [kind(v) for v in str(value).split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"{flag} must be a number (e.g. {example}) or LOW:HIGH, got {value!r}")
    if len(parts) == 2 and parts[0] >= parts[1]:
        raise ValueError(f"{flag} LOW:HIGH needs LOW < HIGH, got {value!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def versions() -> dict:
    import torch
    import transformers

    from .. import __version__

    return {"optishear_moo": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def load_calibration_for(args: argparse.Namespace, tokenizer, model, prune: bool = False):
    """The calibration windows that score candidates, or with ``prune`` those the final model (and
    any database) is pruned from (``--prune-samples`` x ``--prune-seq-len``)."""
    from ..data import load_calibration

    n_samples, seq_len = (args.prune_samples, args.prune_seq_len) if prune else (args.n_samples, args.seq_len)
    return load_calibration(tokenizer, n_samples, seq_len, args.seed, args.calibration,
                            sampling=args.calibration_sampling, n_clusters=args.n_clusters,
                            model=model, batch_size=args.batch_size, progress=not args.quiet)


def load_search_and_prune_calibration_for(args: argparse.Namespace, tokenizer, model):
    """``(windows that score candidates, windows the final model is pruned from)``: one tensor,
    loaded once, when ``--prune-samples`` x ``--prune-seq-len`` equal ``--n-samples`` x ``--seq-len``."""
    calibration = load_calibration_for(args, tokenizer, model)
    if (args.prune_samples, args.prune_seq_len) == (args.n_samples, args.seq_len):
        return calibration, calibration
    return calibration, load_calibration_for(args, tokenizer, model, prune=True)


def calibration_settings(args: argparse.Namespace) -> dict:
    return {"source": args.calibration, "sampling": args.calibration_sampling,
            "n_clusters": args.n_clusters, "n_samples": args.n_samples, "seq_len": args.seq_len,
            "seed": args.seed, **({"prune_samples": args.prune_samples, "prune_seq_len": args.prune_seq_len}
                                  if hasattr(args, "prune_samples") else {})}


def save_atomically(output: Path, write) -> None:
    """Write into a temporary sibling directory and move it into place only when complete."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        write(staging)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def check_output(output: str, overwrite: bool) -> Path:
    """``--output`` as a path, refused before any work when it exists (without ``--overwrite``), is a
    file, lies under a file, or cannot be written."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {output!r} is a file, not a directory: choose another --output")
    if path.exists() and not overwrite and any(path.iterdir()):
        raise ValueError(f"output {output!r} already exists: choose another --output or pass --overwrite")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot create output {output!r}: {str(ancestor)!r} is a file")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".optishear-moo-probe-", dir=ancestor))
    except OSError as error:
        raise ValueError(f"cannot write output {output!r} ({error.strerror or error}): choose a writable "
                         "--output") from None
    return path


def check_positive(args: argparse.Namespace, *names: str, minimum: int = 1) -> None:
    """A ``ValueError`` naming the flag when one of ``names`` is below ``minimum``."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def check_context(config, args: argparse.Namespace) -> None:
    """Token lengths no longer than the model's context (``max_position_embeddings``)."""
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    for name in ("seq_len", "prune_seq_len", "eval_seq_len"):
        value = getattr(args, name, None)
        if context and value is not None and value > context:
            raise ValueError(f"--{name.replace('_', '-')} {value} is longer than the model's context of "
                             f"{context} tokens: choose at most {context}")


class AlreadyFinished(Exception):
    """A resumed command whose work was already done: reported, nothing changed (exit code 0)."""


_BEGUN: list[Job] = []


def forget_begun_jobs() -> None:
    _BEGUN.clear()


def abandon_begun_jobs() -> None:
    """After an error: remove the outputs that fresh (not resumed) jobs created, so that nothing
    half-written is left behind. Interrupted runs keep theirs (they resume)."""
    while _BEGUN:
        job = _BEGUN.pop()
        if job.created and job.output.exists():
            shutil.rmtree(job.output, ignore_errors=True)


class Job:
    """One run of a command in ``args.output``.

    ``resume_from(load_settings)`` copies a resumed run's saved settings onto ``args``; otherwise
    the output is checked. ``begin()`` (after the model is loaded and every input validated)
    clears an overwritten output and creates the directory; ``interruptible()`` turns Ctrl-C into
    a message naming the resume command; ``finish()`` writes ``model/`` atomically and
    ``report.json``.
    """

    def __init__(self, args: argparse.Namespace, command: str, settings: tuple[str, ...]):
        self.args, self.command, self.setting_names = args, command, settings
        self.output = Path(args.output)
        self.started = time.perf_counter()
        self.created = False
        check_positive(args, "n_samples", "prune_samples", "batch_size", "pop", "offspring", "n_clusters",
                       "tokens", "checkpoint_every", "workers")
        if getattr(args, "workers", None) or getattr(args, "ray_address", None):
            from ..search.pool import _ray

            _ray()  # the [ray] extra is installed
        check_positive(args, "seq_len", "prune_seq_len", "eval_seq_len", minimum=2)
        check_zero_shot(args)

    def model_config(self):
        """The model's config, read without its weights, with the token lengths checked against it."""
        from ..models.loading import load_config

        config = load_config(self.args.model)
        check_context(config, self.args)
        return config

    def resume_from(self, saved_settings) -> None:
        """With ``--resume``, take the settings ``saved_settings()`` returns; else check the output."""
        if getattr(self.args, "resume", False):
            for key, value in saved_settings().items():
                setattr(self.args, key, value)
        else:
            check_output(self.args.output, self.args.overwrite)

    def resume_search(self, default_gens: int = 10) -> None:
        """:meth:`resume_from` the settings a checkpointed search saved in ``--output``, except
        ``--gens`` when given (to run longer). The checkpoint is read and authenticated here,
        before any model loads; a run that already did its generations raises
        :class:`AlreadyFinished`."""
        from ..search import load_checkpoint

        gens = self.args.gens
        if not self.args.resume:
            self.resume_from(dict)
        else:
            _, state = load_checkpoint(self.output, trust=self.args.trust_checkpoint)
            self.resume_from(lambda: state["config"])
            if state["generation"] >= (gens or self.args.gens):
                raise AlreadyFinished(
                    f"the search in {self.output} had finished ({state['generation']} generations, "
                    f"{state['n_eval']} evaluations); nothing was changed. Continue it with --gens "
                    f"{state['generation'] + 5} (any number above {state['generation']})")
        if gens is not None:
            self.args.gens = gens
        self.args.gens = default_gens if self.args.gens is None else self.args.gens
        if self.args.gens < 1:
            raise ValueError(f"--gens must be at least 1, got {self.args.gens}")

    @property
    def settings(self) -> dict:
        return {key: getattr(self.args, key) for key in self.setting_names}

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def begin(self) -> None:
        resumed = getattr(self.args, "resume", False)
        if self.output.exists() and not resumed and self.args.overwrite:
            shutil.rmtree(self.output)
        self.created = not resumed and not self.output.exists()
        self.output.mkdir(parents=True, exist_ok=True)
        _BEGUN.append(self)

    @contextlib.contextmanager
    def interruptible(self, what: str = "search"):
        try:
            yield
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"{what} interrupted; continue with: optishear-moo {self.command} "
                                    f"--output {self.output} --resume") from None

    def perplexity(self, model, tokenizer):
        from ..evaluation import perplexity

        return perplexity(model, tokenizer, self.args.eval_seq_len, eval_segments(self.args.eval_segments),
                          progress=not self.args.quiet)

    def finish(self, model, tokenizer, report: dict) -> dict:
        """``output/model`` (staged, moved into place when complete), then ``output/report.json``
        with the zero-shot accuracies (``--zero-shot``), settings, versions and wall time added."""
        accuracy = zero_shot_report(self.args, model, tokenizer)
        if accuracy is not None:
            report["zero_shot"] = accuracy
        report = {**report, "seconds": self.seconds, "settings": self.settings, "versions": versions()}
        save_atomically(self.output / "model", lambda directory: (model.save_pretrained(directory),
                                                                   tokenizer.save_pretrained(directory)))
        (self.output / "report.json").write_text(json.dumps(report, indent=2))
        if self in _BEGUN:
            _BEGUN.remove(self)
        return report
