"""A verb as data (help line, description, options, code), so that one verb can have two spellings: its
name, and an old name kept as an alias that runs the same code after a note on stderr saying the new one.
The options are added by one function for both parsers, so the spellings cannot drift apart."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from typing import Callable

from tsugiki.registry import did_you_mean


class VerbParser(argparse.ArgumentParser):
    """The CLI's parsers (``tsugiki`` and, through ``add_subparsers``, every verb's): the first word may name
    one of ``sub_verbs``, which then parses the rest with its own options and --help; anything else is this
    parser's own. `tsugiki eval t2i ...` beside `tsugiki eval [BENCHMARK ...]`: argparse's sub-parsers
    cannot say this, they would read the first benchmark name as a sub-verb and refuse it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sub_verbs: dict[str, argparse.ArgumentParser] = {}

    def parse_known_args(self, args=None, namespace=None):
        if args and args[0] in self.sub_verbs:
            return self.sub_verbs[args[0]].parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)

    def _check_value(self, action, value):
        # argparse's own check and words (Python 3.11's), with the nearest choice as every tsugiki name list
        # gives it (argparse suggests only from Python 3.14, with suggest_on_error)
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{did_you_mean(value, action.choices)} (choose from {choices})")


@dataclass(frozen=True)
class Verb:
    help: str  # its line in the parent's list of verbs
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    def build(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """``parser`` with this verb's options, running this verb."""
        self.add_arguments(parser)
        parser.set_defaults(func=self.run)
        return parser

    def add(self, sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
        return self.build(sub.add_parser(name, help=self.help, description=self.description))

    def add_alias(self, sub: argparse._SubParsersAction, old: str, new: str, *,
                  listed: bool = True) -> argparse.ArgumentParser:
        """`tsugiki OLD` as an alias of `tsugiki NEW` (``old``, ``new``: the words after `tsugiki`; the
        last word of ``old`` is added to ``sub``). ``listed=False``: left out of the parent's list of verbs."""
        kwargs = {"help": f"(alias of tsugiki {new})"} if listed else {}
        p = self.build(sub.add_parser(old.split()[-1], description=self.description, **kwargs))
        p.set_defaults(func=functools.partial(_noted, f"tsugiki: note: `tsugiki {old}` is now `tsugiki {new}`", self.run))
        return p


def _noted(note: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    print(note, file=sys.stderr)
    return run(args)
