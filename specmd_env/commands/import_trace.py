"""``specmd import FORMAT FILE --out TRACE.npz``: a routing trace from another tool (see
:mod:`specmd_env.importers`; one sub-command per format, each the format module's ``configure``/``run``)."""

from __future__ import annotations

from specmd_env.importers import FORMATS, importer
from specmd_env.outputs import writable_file


def configure(parser) -> None:
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name, (_, _, help_text) in FORMATS.items():
        module = importer(name)
        fmt_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(fmt_parser)
        fmt_parser.set_defaults(_import_run=module.run)


def run(args) -> int:
    writable_file(args.out, "--out")  # before reading anything
    return int(args._import_run(args) or 0)
