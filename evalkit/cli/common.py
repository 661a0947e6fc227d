"""What every subcommand's parser shares: the help formatter, value types, the subcommand builder, the
backends' own flags (declared as data in evalkit.backends), and third-party warnings shown once.

Nothing here imports torch, transformers or scipy: `--help` and an argument error stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import textwrap
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from evalkit.backends import BACKENDS, DEFAULT_BACKEND, PLUGINS, Flag, backend_help, plugin
from evalkit.stats.calibration import DEFAULT_BINS as DEFAULT_ECE_BINS
from evalkit.types import RunConfig

DEFAULTS = RunConfig(model="", task="")
DESCRIPTION_WIDTH = 100  # subcommand descriptions, wrapped by us: the formatter keeps the examples' lines


# ---- value types (checked before anything loads) ----


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low (the flag's range, checked before anything loads)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in its messages
    return parse


def int_list_at_least(low: int) -> Callable[[str], list[int]]:
    one = int_at_least(low)
    return lambda text: [one(item) for item in comma_list(text)]


def unit_fraction(text: str) -> float:
    """An argparse type: a float in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def literal_choices(cls: type, field_name: str) -> tuple[str, ...]:
    """The values of a Literal-typed field of a record (RunConfig.engine, ...), where they are defined."""
    hint = typing.get_type_hints(cls)[field_name]
    literals = [hint] if typing.get_origin(hint) is typing.Literal else typing.get_args(hint)  # X | None
    values = [value for literal in literals for value in typing.get_args(literal)]
    return tuple(value for value in values if isinstance(value, str))


# ---- help ----


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; each flag's default shown once, as it is typed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # `is`, not `in`: a default of 0 equals False and is shown
        unset = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        unset = unset or action.default in ([], "")
        if "default" in text or not action.option_strings or unset:
            return text
        return f"{text} (default: {as_typed(action.default)})"


def as_typed(value: object) -> str:
    """A default the way it is typed on the command line (comma lists, not Python lists); %-escaped."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("%", "%%")


def prog() -> str:
    """`evalkit` when run as the installed console command, else the script's own command line."""
    return "evalkit" if Path(sys.argv[0]).stem == "evalkit" else "python run_eval.py"


def subcommand(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    examples: Sequence[str],
    program: str,
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary, its description (wrapped here, so that the examples keep
    their lines) and two examples, shown in its --help."""
    wrapped = textwrap.fill(" ".join(description.split()), DESCRIPTION_WIDTH)
    epilog = "examples:\n" + "\n".join(f"  {program} {command}" for command in examples)
    return sub.add_parser(
        name, help=summary, description=wrapped, epilog=epilog, formatter_class=HelpFormatter
    )


def add_ece_bins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ece-bins",
        type=int_at_least(1),
        default=DEFAULT_ECE_BINS,
        help=f"equal-width confidence bins of the expected calibration error (default: {DEFAULT_ECE_BINS})",
    )


# ---- user benchmarks (tasks.declaration) ----


def add_task_file_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task-file",
        action="append",
        metavar="PATH",
        help="a benchmark declared as data (JSON; see README 'Your own benchmark'); repeatable; its "
        "hash enters the config hash",
    )


def register_task_files(args: argparse.Namespace) -> None:
    """--task-file: user benchmarks declared as data join the task registry (tasks.declaration)."""
    from tasks import register_task_file

    for path in getattr(args, "task_file", None) or []:
        register_task_file(path)


# ---- the backends' flags (declared in evalkit.backends) ----


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


_KINDS: dict[str, dict] = {
    "fraction": {"type": unit_fraction},
    "seconds": {"type": positive_seconds},
    "switch": {"action": "store_true", "default": None},
    "switch-off": {"action": "store_false", "default": None},
    "text": {},
    "texts": {"action": "append"},
}


def _flag_options(flag: Flag) -> dict:
    if flag.kind.startswith("int>="):
        return {"type": int_at_least(int(flag.kind.removeprefix("int>=")))}
    if flag.kind == "choice":
        return {"choices": flag.choices}
    return dict(_KINDS[flag.kind])


def add_backend_flags(parser: argparse.ArgumentParser, bench: bool = False) -> None:
    """--backend and each backend's own flag group; left unset (None), the record's defaults apply, so that
    a flag of another backend can be told from a default (evalkit.backends.refuse_foreign_flags)."""
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help=backend_help(bench))
    for entry in PLUGINS.values():
        if entry.flag_group is None:
            continue
        group = parser.add_argument_group(entry.flag_group.title, entry.flag_group.description)
        for flag in entry.flag_group.flags:
            name = flag.name or "--" + flag.dest.replace("_", "-")
            options = _flag_options(flag)
            if flag.metavar:
                options["metavar"] = flag.metavar
            group.add_argument(name, dest=entry.flag_group.dest(flag), help=flag.help, **options)


def backend_settings(args: argparse.Namespace) -> dict[str, object]:
    """The chosen backend's settings record from its flags ({RunConfig field: record}; {} where it has
    none): each flag given overrides the record's default."""
    group = plugin(args.backend).flag_group
    if group is None:
        return {}
    given = {flag.dest: getattr(args, group.dest(flag)) for flag in group.flags}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    return {group.field: dataclasses.replace(getattr(DEFAULTS, group.field), **given)}


# ---- warnings ----


@contextlib.contextmanager
def third_party_warnings_once() -> Iterator[None]:
    """Each distinct FutureWarning of the libraries shown once, in one line (torch and transformers repeat
    theirs on every task); DeprecationWarnings stay hidden unless -W / PYTHONWARNINGS asks for them.

    The "once" filter action cannot do it: every `warnings.catch_warnings()` in a library clears the
    registry it keeps, so the messages shown are remembered here.
    """
    shown: set[tuple[type[Warning], str]] = set()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: typing.TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if (category, str(message)) in shown:
            return
        shown.add((category, str(message)))
        where = "/".join(Path(filename).parts[-2:])
        print(f"warning: {category.__name__}: {message} ({where}:{lineno})", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        warnings.filterwarnings("always", category=FutureWarning)  # each reaches `show`, which dedups
        if not sys.warnoptions:
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        yield
