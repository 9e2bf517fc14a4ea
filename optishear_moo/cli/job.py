"""One run of a command in its ``--output`` directory, the same for every command.

``with Job(args, command, config, calibration) as job:`` checks every input that can be checked
without the model's weights (flags, the output, the model's config, a checkpoint's settings)
before anything is written, and holds the output (:class:`~optishear_moo.outputs.OutputDirectory`)
for the run. Every command writes ``model/`` and ``report.json``; a search adds its checkpoint
(``state.json``, ``evaluations.jsonl``), ``front.json`` and plots.
"""

from __future__ import annotations

import json
import platform
import time

from ..errors import SettingError, param


class AlreadyFinished(Exception):
    """A resumed run whose work was all done: reported, nothing changed (exit code 0)."""

    keeps_output = True


def eval_segments(value: str) -> int | None:
    count = int(value) if value.isdigit() else 0
    if value != "all" and count < 1:
        raise SettingError(f"{param('eval_segments')} must be a positive integer or 'all', got {value!r}")
    return None if value == "all" else count


class Job:
    """See the module docstring: ``config`` is the method's config, ``calibration`` the
    :class:`~optishear_moo.data.CalibrationConfig`."""

    def __init__(self, args, command: str, config, calibration):
        from ..models.loading import check_offload, load_config, resolve_device
        from ..outputs import OutputDirectory

        self.args, self.command, self.config, self.calibration = args, command, config, calibration
        self.resume, self.started = getattr(args, "resume", False), time.perf_counter()
        resolve_device(args.device)
        self.offload = check_offload(args.model, getattr(args, "offload", "none"))
        if self.offload == "disk" and command == "finetune":
            raise SettingError("--offload disk is not supported by finetune (it trains the weights in "
                               "memory): use --offload host")
        if self.offload == "disk" and getattr(config, "selection", None) == "training-aware":
            raise SettingError("--offload disk scores candidates block by block, which training-aware "
                               "selection's fine-tunes cannot do: use --selection one-shot, or --offload "
                               "host")
        self.segments = eval_segments(args.eval_segments)
        calibration.check_sources()
        if args.zero_shot:
            from ..evaluation.zero_shot import check_engine, check_tasks

            check_engine()
            check_tasks(args.zero_shot)
        model_config = load_config(args.model)  # no weights: the model's needs are checked first
        calibration.check_context(model_config)
        if config is not None and hasattr(config, "check_model"):
            config.check_model(model_config)
        self.directory = OutputDirectory(args.output, args.overwrite, self.resume)
        self.output = self.directory.path

    @property
    def settings(self) -> dict:
        """What a resumed run must share besides the method's config."""
        return {"model": self.args.model, "dtype": self.args.dtype, "calibration": self.calibration.to_dict()}

    def __enter__(self) -> Job:
        self.directory.__enter__()
        try:
            if self.resume and self.config is not None:
                self._check_checkpoint()
        except BaseException as error:
            self.directory.__exit__(type(error), error, None)
            raise
        return self

    def __exit__(self, *exc) -> bool:
        return self.directory.__exit__(*exc)

    def _check_checkpoint(self) -> None:
        from ..search.checkpoint import BUDGETS, compare_settings, read_state

        state = read_state(self.output)
        if state["driver"] != self.command:
            raise SettingError(f"the run in {self.output} is of the {state['driver']} command, not "
                               f"{self.command}: resume it with optishear-moo {state['driver']}")
        compare_settings(state["settings"], {**self.settings, **self.config.to_dict()}, self.output)
        done = state["finished"] and all(state["settings"].get(name) == getattr(self.config, name, None)
                                         for name in BUDGETS)
        if done and (self.output / "report.json").is_file() and (self.output / "model").is_dir():
            more = (f"--evals {state['n_eval'] + 20} (any number above {state['n_eval']})"
                    if getattr(self.config, "n_evals", None) else
                    f"--gens {state['generation'] + 5} (any number above {state['generation']})")
            raise AlreadyFinished(f"the run in {self.output} had finished ({state['generation']} "
                                  f"generations, {state['n_eval']} evaluations); nothing was changed. "
                                  f"Continue it with {more}")

    def load_model(self, name: str | None = None):
        from ..models import load_model

        return load_model(name or self.args.model, dtype=self.args.dtype, device=self.args.device,
                          offload=self.offload if name is None else False)

    def windows(self, model, tokenizer):
        return self.calibration.load(tokenizer, model, progress=not self.args.quiet)

    def search_run(self):
        from ..search import SearchRun

        return SearchRun(self.output, self.resume, self.args.seed, self.args.workers, self.args.ray_address,
                         progress=not self.args.quiet, settings=self.settings)

    def perplexity(self, model, tokenizer):
        from ..evaluation import perplexity

        try:
            return perplexity(model, tokenizer, self.args.eval_seq_len, self.segments,
                              progress=not self.args.quiet)
        except SettingError as error:  # perplexity's parameters are the evaluation flags here
            names = {"seq_len": "eval_seq_len", "max_segments": "eval_segments"}
            raise SettingError(error.render(lambda name: param(names.get(name, name)))) from None

    def finish(self, model, tokenizer, result) -> dict:
        """Score the dense model, the front (``--zero-shot``) and the chosen point; save the pruned
        model, the front and ``report.json``."""
        from ..pruning.weights import sparsity_report
        from ..search import zero_shot_front

        dense = self.perplexity(model, tokenizer)
        if self.args.zero_shot and len(result.front) > 1:
            zero_shot_front(result, model, tokenizer, self.args.zero_shot, self.args.zero_shot_limit,
                            self.args.batch_size, progress=not self.args.quiet)
        dense_parameters = sum(p.numel() for p in model.parameters())
        pruned = self.perplexity(result.apply(model), tokenizer)
        sparsity, parameters = sparsity_report(model), sum(p.numel() for p in model.parameters())
        result.save(self.output, title=f"{result.title}: {self.args.model}")
        report = self.save(model, tokenizer, result.description(), {
            **result.report(), "dense_ppl": dense.perplexity, "pruned_ppl": pruned.perplexity,
            "sparsity": sparsity.total, "per_layer_sparsity": sparsity.per_layer,
            "dense_parameters": dense_parameters, "parameters": parameters})
        print(f"{self.command}: ppl {dense.perplexity:.3f} -> {pruned.perplexity:.3f}, sparsity "
              f"{sparsity.total:.4f}, parameters {dense_parameters / 1e6:.1f}M -> {parameters / 1e6:.1f}M; "
              f"saved to {self.output / 'model'}")
        return report

    def save(self, model, tokenizer, description: dict, report: dict) -> dict:
        """``model/`` in ``--save-dtype`` with ``description`` (what it holds) in its config.json,
        staged and moved into place when complete; then ``report.json`` with the zero-shot
        accuracies (``--zero-shot``), settings, versions and wall time added."""
        import torch
        import transformers

        from .. import __version__
        from ..evaluation.zero_shot import zero_shot
        from ..models import save_model
        from ..outputs import write_atomically

        if self.args.zero_shot:
            report["zero_shot"] = zero_shot(model, tokenizer, self.args.zero_shot, self.args.zero_shot_limit,
                                            batch_size=self.args.batch_size)
        report.update(command=self.command, model=self.args.model,
                      settings=self.config.to_dict() if self.config is not None else report.get("settings"),
                      calibration=self.calibration.to_dict(), seconds=time.perf_counter() - self.started,
                      versions={"optishear_moo": __version__, "torch": torch.__version__,
                                "transformers": transformers.__version__,
                                "python": platform.python_version()})
        description = {"by": f"optishear-moo {__version__}", "command": self.command, **description,
                       "achieved_sparsity": report.get("sparsity")}
        computed = model.dtype
        save_model(model, tokenizer, self.output / "model", self.args.save_dtype, description)
        report["saved_dtype"] = str(model.dtype).removeprefix("torch.")
        if model.dtype != computed:  # what the saved model scores, as it reloads
            report["saved_ppl"] = self.perplexity(model, tokenizer).perplexity
        write_atomically(self.output / "report.json", json.dumps(report, indent=2))
        return report
