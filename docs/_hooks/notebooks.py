"""MkDocs hook: the example notebooks as pages of the site, with their outputs.

The notebooks in ``examples/`` are committed without outputs. ``make notebooks`` executes each
once into ``build/notebooks/examples/`` (a failing cell fails it), and this hook serves those
executed copies as ``examples/NAME.ipynb`` pages, rendered by mkdocs-jupyter, in an "Examples"
section of the nav. A notebook without an executed copy, or whose copy no longer matches its
code (edited since ``make notebooks`` ran), is served as committed, without outputs.
"""

import json
import logging
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# Executed copies keep the examples/ folder, so that a page's path is the same either way.
EXECUTED = ROOT / "build" / "notebooks"
SECTION = "Examples"
# The section goes before this one of the nav (at the end if the nav has none).
BEFORE = "API reference"

log = logging.getLogger("mkdocs.hooks.notebooks")


def _notebooks():
    return sorted(EXAMPLES.glob("*.ipynb"))


def _code(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def executed_copy(notebook):
    """The executed copy of ``notebook`` (build/notebooks/examples/) if it has the same code."""
    executed = EXECUTED / "examples" / notebook.name
    if not executed.is_file():
        return None
    if _code(executed) != _code(notebook):
        log.info("%s changed since make notebooks ran: served without outputs", notebook.name)
        return None
    return executed


def on_config(config):
    pages = [f"examples/{p.name}" for p in _notebooks()]
    if not pages or config.nav is None:
        return config
    titles = [next(iter(entry)) if isinstance(entry, dict) else None for entry in config.nav]
    at = titles.index(BEFORE) if BEFORE in titles else len(config.nav)
    config.nav.insert(at, {SECTION: pages})
    return config


# Before mkdocs-jupyter's on_files, which turns every .ipynb file into a page.
@event_priority(50)
def on_files(files, config):
    # Real files (src_dir + src_uri), not File.generated: mkdocs-jupyter's wrapper recomputes
    # the source path from src_dir, which a generated file does not have.
    for notebook in _notebooks():
        src_dir = EXECUTED if executed_copy(notebook) else ROOT
        files.append(File(f"examples/{notebook.name}", src_dir=str(src_dir),
                          dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls))
    return files
