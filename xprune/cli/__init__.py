"""The `xprune` command line: parses, calls the library, prints. Bad input exits 2 with one line on stderr.

Each module holds the commands of one pipeline stage and registers their parsers."""

from __future__ import annotations

import argparse
import sys

from xprune.cli import auto, bench, export, finetune, prune, study
from xprune.cli.common import Parser
from xprune.errors import XpruneError


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="xprune", description="Explainability-guided layer pruning for object detectors.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    for stage in (prune, finetune, export, bench, study, auto):
        stage.add_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except XpruneError as e:
        sys.stderr.write(f"xprune: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("xprune: interrupted\n")
        return 130
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
