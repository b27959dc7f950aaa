"""The ``keras-topomap`` command line: one entry point, one module per subcommand.

Each subcommand lives in a module exposing ``main(argv=None)`` and an argparse parser (or
another function, named in :data:`COMMANDS` as ``"module:function"``); this file only
dispatches, importing the module when its command is used so that ``keras-topomap --help``
stays fast.

Example::

    keras-topomap train --config small --epochs 10 --out runs/small
    keras-topomap build-corpus --out corpus --utterances 1000 --seed 0
"""

from __future__ import annotations

import importlib
import sys

# command -> ("module" or "module:function" (default function: main), one-line help)
COMMANDS = {
    "build-corpus": (
        "keras_topomap.datasets.build_tts_corpus",
        "synthesise the phone-aligned speech corpus with Festival",
    ),
    "train": ("keras_topomap.train", "train the Wav2Letter-style recognizer with CTC"),
    "demo": ("keras_topomap.demo", "run the main demo and write its figures"),
    "gradnap": ("keras_topomap.gradnap_cli", "GradNAP over one shard of a corpus (--shard i/n)"),
    "gradnap-merge": (
        "keras_topomap.gradnap_cli:merge_main", "merge GradNAP shard files into one"
    ),
}


def _usage():
    lines = ["usage: keras-topomap COMMAND [options]", "", "commands:"]
    width = max(len(c) for c in COMMANDS)
    for command, (_, text) in COMMANDS.items():
        lines.append(f"  {command:<{width}}  {text}")
    lines.append("")
    lines.append("Run 'keras-topomap COMMAND --help' for a command's options.")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a command is required: say which there are, and fail like argparse does
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"keras-topomap: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[command][0].partition(":")
    module = importlib.import_module(module_name)
    result = getattr(module, function or "main")(rest)
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
