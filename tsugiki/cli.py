"""The `tsugiki` command line. It only parses arguments into the objects the Python API takes;
each area's verbs live in `tsugiki.commands.<area>`."""

from __future__ import annotations

import argparse
import logging
import sys

from tsugiki import __version__
from tsugiki.commands import bench, demo, evolve, gguf, images, merge, tiny, vlm
from tsugiki.commands.verbs import VerbParser
from tsugiki.errors import TsugikiError
from tsugiki.progress import interactive, quiet_third_party_bars, restore_env

COMMAND_MODULES = (merge, tiny, gguf, vlm, evolve, bench, images, demo)


def build_parser() -> argparse.ArgumentParser:
    p = VerbParser(prog="tsugiki", description="Evolve merged models and benchmark them.")  # verbs' parsers too
    p.add_argument("--version", action="version", version=f"tsugiki {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # a log or a pipe gets plain progress lines from us and no third-party bars (see tsugiki.progress)
    saved = None if interactive() else quiet_third_party_bars()
    try:
        return args.func(args)
    except TsugikiError as e:
        print(f"tsugiki: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tsugiki: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the last resort: a file error no command turned into a TsugikiError
        if args.verbose:
            logging.exception("unhandled file error")
        where = f"{e.filename}: " if e.filename else ""
        print(f"tsugiki: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        if saved is not None:
            restore_env(saved)


if __name__ == "__main__":
    sys.exit(main())
