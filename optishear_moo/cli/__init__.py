"""Command line: ``optishear-moo COMMAND ...``, one module per command.

Each command only turns its flags into the library's configs (checked as they are made, before
any model loads) and calls the method's driver; :mod:`.job` gives every command the same output
layout. Bad input gives one ``optishear-moo: error: ...`` line naming the flag, exit code 2.
Library modules are imported when a command runs, so ``--help`` and ``--version`` are fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys

from .._version import __version__

COMMANDS = ("prune", "optishear", "evopress", "evop", "darwinlm", "export", "finetune", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optishear-moo",
                                     description="Evolutionary multi-objective pruning of LLMs (pymoo).")
    parser.add_argument("--version", action="version", version=f"optishear-moo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    from ..errors import SettingError
    from .job import AlreadyFinished
    from .options import flag_names

    if args.quiet:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    try:
        args.handler(args)
    except SettingError as error:
        flags = flag_names(parser._subparsers._group_actions[0].choices[args.command])
        return _fail(error.render(lambda name: flags.get(name, name)))
    except (ValueError, FloatingPointError, OSError) as error:
        message = str(error) if not isinstance(error, OSError) or not error.filename else (
            f"{error.strerror} ({error.filename})")
        return _fail(message)
    except AlreadyFinished as finished:
        print(f"optishear-moo: {finished}")
        return 0
    except KeyboardInterrupt:  # an interrupted run keeps what it saved: it resumes
        print(f"optishear-moo: {_interrupted(args)}", file=sys.stderr)
        return 130
    return 0


def _interrupted(args) -> str:
    from ..outputs import OutputDirectory

    if "--resume" not in args.argv and not OutputDirectory(getattr(args, "output", None) or ".").resumable():
        return "interrupted before anything was saved: run the command again"
    argv = [a for a in args.argv if a not in ("--overwrite", "--resume")]
    return f"{args.command} interrupted; continue with: {shlex.join(['optishear-moo', *argv, '--resume'])}"


def _fail(message: str) -> int:
    print(f"optishear-moo: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
