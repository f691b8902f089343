"""``imgtune`` command line: a thin layer that builds a TrainConfig and calls the Python API.

User mistakes (UserError) become one line on stderr and exit status 2. Everything that changes
the whole process is decided here, and only here: OpenMP's wait policy, the warning format,
where imgtune's log messages go.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import warnings
from pathlib import Path

from imgtune import __version__
from imgtune.cli import compare, demo, evaluate, export, merge, methods, predict, presets, serve, train
from imgtune.errors import UserError

# the order of `imgtune --help`
COMMANDS = (train, evaluate, predict, demo, presets, methods, compare, merge, export, serve)
PACKAGE_DIR = Path(__file__).resolve().parent.parent


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples keep their lines; every option with a real default says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = (None, False, argparse.SUPPRESS)
        if "%(default)" in text or not action.option_strings or action.default in quiet:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgtune",
        description="Fine-tune image classifiers with parameter-efficient adapters, then "
        "evaluate, merge, export and serve them.",
        epilog="examples:\n  imgtune demo\n  imgtune train --config food101-lora --dataset photos/ --epochs 3\n"
        "  imgtune COMMAND --help",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imgtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        before = set(sub.choices)
        command.add_command(sub)
        for name in set(sub.choices) - before:
            sub.choices[name].formatter_class = HelpFormatter
            sub.choices[name].epilog = "examples:\n" + "\n".join(f"  {line}" for line in command.EXAMPLES)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse reports a mistyped option with the top-level usage; here it is the command's usage and
    the closest real option."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = parser._subparsers._group_actions[0].choices[args.command]  # the chosen command's parser
        options = [o for a in command._actions for o in a.option_strings]
        hints = []
        flags = [u for u in unknown if u.startswith("-")] or unknown  # a mistyped flag's value is not news
        for flag in flags:
            close = difflib.get_close_matches(flag.split("=")[0], options, n=1) if flag.startswith("-") else []
            hints.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        command.error(f"unrecognized argument(s): {', '.join(hints)}")
    return args


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (an AdaLoRA schedule scaled to a short run, ...) are messages to the user:
    one line, without the source line a library warning shows."""
    ours = Path(filename).resolve().is_relative_to(PACKAGE_DIR)
    text = (
        f"imgtune: warning: {message}\n" if ours else warnings.formatwarning(message, category, filename, lineno, line)
    )
    (file or sys.stderr).write(text)


class TerminalHandler(logging.Handler):
    """imgtune's log records on the terminal: progress (INFO) as plain lines on stdout, warnings as
    ``imgtune: warning: ...`` on stderr, like the CLI's own messages. Looks the streams up on every
    record, so a redirected sys.stdout (tests, notebooks) is followed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"imgtune: warning: {record.getMessage()}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(record.getMessage() + "\n")
                sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


def configure_process() -> None:
    # Loader work and torch's compute threads share the CPU: with libgomp's default spinning, idle
    # OpenMP threads starve everything else on a busy machine (measured on 2 shared cores: a small
    # ViT step 15-46 ms/image spinning vs 6.4 ms passive; a 224-px resize 14.6 vs 0.6 ms). Only takes
    # effect before torch is loaded, and never overrides the user's own setting.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = show_warning
    # deprecation notices raised inside transformers/peft are for their authors, not our users
    warnings.filterwarnings("ignore", category=FutureWarning)
    logger = logging.getLogger("imgtune")
    if not any(isinstance(h, TerminalHandler) for h in logger.handlers):
        logger.addHandler(TerminalHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    configure_process()
    args = parse(build_parser(), argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"imgtune: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written (exists as a file, no permission, no space)
        where = f": {err.filename}" if err.filename else ""
        print(f"imgtune: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
