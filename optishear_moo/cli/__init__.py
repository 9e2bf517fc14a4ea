"""Command line: ``optishear-moo COMMAND ...``, one module per command over :mod:`.common`.

Thin: each command parses its flags, checks them before any expensive work and calls the
library; bad input gives one ``optishear-moo: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import evaluate, finetune, levels, prune, remove_blocks, search, structured
from .common import AlreadyFinished, abandon_begun_jobs, forget_begun_jobs

COMMANDS = (prune, search, levels, remove_blocks, structured, finetune, evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optishear-moo", description="Evolutionary multi-objective pruning of LLMs (pymoo)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if args.quiet:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    forget_begun_jobs()
    try:
        args.handler(args)
    except (ValueError, FloatingPointError, OSError) as error:
        abandon_begun_jobs()
        message = str(error) if not isinstance(error, OSError) or not error.filename else (
            f"{error.strerror} ({error.filename})")
        print(f"optishear-moo: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except AlreadyFinished as finished:
        print(f"optishear-moo: {finished}")
        return 0
    except KeyboardInterrupt as interrupt:  # an interrupted run keeps its output: it resumes
        forget_begun_jobs()
        print(f"optishear-moo: {interrupt or 'interrupted; nothing was written'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
