"""``optishear-moo finetune``: post-train a pruned model, optionally distilling from the dense one
(checkpointed every ``--checkpoint-every`` steps, resumable with the same flags)."""

from __future__ import annotations

import json

from .options import add_model_flags, add_output_flags

SETTINGS = ("model", "teacher", "temperature", "training", "tokens", "seq_len", "batch_size", "learning_rate",
            "dtype", "seed")


def add_parser(commands) -> None:
    finetune = commands.add_parser("finetune", help="post-train a pruned model (optionally distilling)")
    add_model_flags(finetune)
    finetune.add_argument("--teacher", default=None,
                          help="distill from this (dense) model, e.g. smollm2-135m; default: next-token loss")
    finetune.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    finetune.add_argument("--training", default="gutenberg", help="shipped corpus, text file or hf:NAME")
    finetune.add_argument("--tokens", type=int, default=65536, help="training tokens (default: 65536)")
    finetune.add_argument("--seq-len", type=int, default=512, help="tokens per window (default: 512)")
    finetune.add_argument("--batch-size", type=int, default=4, help="windows per step (default: 4)")
    finetune.add_argument("--learning-rate", type=float, default=1e-4)
    finetune.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--resume", action="store_true",
                          help="continue the interrupted training in --output (give the same flags again)")
    add_output_flags(finetune, search=False)
    finetune.set_defaults(handler=run)


def run(args) -> dict:
    from ..data import CalibrationConfig
    from ..errors import SettingError, param
    from ..finetuning import post_train
    from ..models.loading import load_config
    from ..outputs import make_directory, read_untrusted, remove, write_atomically
    from ..search.checkpoint import compare_settings
    from .job import Job

    if args.tokens < args.seq_len:
        raise SettingError(f"{param('tokens')} {args.tokens} is less than one window of {param('seq_len')} "
                           f"{args.seq_len}")
    for name in ("temperature", "learning_rate", "checkpoint_every"):
        if not getattr(args, name) > 0:
            raise SettingError(f"{param(name)} must be positive, got {getattr(args, name)}")
    if args.teacher is not None:
        load_config(args.teacher)  # the teacher exists: checked before any model loads
    calibration = CalibrationConfig(args.training, n_samples=args.tokens // args.seq_len,
                                    seq_len=args.seq_len, seed=args.seed, batch_size=args.batch_size)
    settings = {name: getattr(args, name) for name in SETTINGS}
    with Job(args, "finetune", None, calibration) as job:
        checkpoint = job.output / "checkpoint"
        if args.resume:
            if not (checkpoint / "settings.json").is_file():
                raise SettingError(f"{job.output} holds no interrupted post-training: start without "
                                   f"{param('resume')}")
            saved = json.loads(read_untrusted(checkpoint / "settings.json"))
            compare_settings(saved.get("settings", {}), settings, job.output, extensible=())
        model, tokenizer = job.load_model()
        teacher = job.load_model(args.teacher)[0] if args.teacher else None
        training = job.windows(model, tokenizer).search
        before = saved["ppl_before"] if args.resume else job.perplexity(model, tokenizer).perplexity
        if not args.resume:
            make_directory(checkpoint)
            saved = {"settings": settings, "ppl_before": before}
            write_atomically(checkpoint / "settings.json", json.dumps(saved))
        losses = post_train(model, training, args.learning_rate, args.batch_size, teacher, args.temperature,
                            checkpoint_dir=checkpoint, checkpoint_every=args.checkpoint_every,
                            resume=args.resume and (checkpoint / "training_state.json").exists(),
                            progress=not args.quiet)
        after = job.perplexity(model, tokenizer).perplexity
        description = {"post_training": {"loss": "distillation" if teacher else "next-token",
                                         "tokens": training.numel(), "teacher": args.teacher}}
        report = job.save(model, tokenizer, description, {
            "ppl_before": before, "ppl_after": after, "steps": len(losses), "first_loss": losses[0],
            "last_loss": losses[-1], "tokens": training.numel(), "settings": settings,
            "loss": "distillation" if teacher is not None else "next-token"})
        remove(checkpoint)  # the finished model replaces the training state
    print(f"finetune: {len(losses)} steps on {training.numel()} tokens ({report['loss']}); "
          f"ppl {before:.3f} -> {after:.3f}; saved to {job.output / 'model'}")
    return report
