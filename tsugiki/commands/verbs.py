"""A verb as data (help line, description, options, code), so that one verb can have two spellings: its
name, and an old name kept as an alias that runs the same code after a note on stderr saying the new one.
The options are added by one function for both parsers, so the spellings cannot drift apart."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from typing import Callable


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
        p = sub.add_parser(old.split()[-1], description=self.description, **kwargs)
        self.add_arguments(p)
        p.set_defaults(func=functools.partial(_noted, f"tsugiki: note: `tsugiki {old}` is now `tsugiki {new}`", self.run))
        return p


def _noted(note: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    print(note, file=sys.stderr)
    return run(args)
