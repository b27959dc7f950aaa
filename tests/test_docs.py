"""The docs site's structure, checked without building it (``make docs`` runs the strict build).

Every page under docs/ is in the mkdocs.yml nav, every nav entry exists, every public module of
the package has an API page, and relative links in the pages and the README point at files that
exist inside docs/ (mkdocs cannot serve files outside it).
"""

import re
from pathlib import Path

import yaml  # comes with mkdocs (the dev extra): a missing one is an install error

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "keras_topomap"
# Modules that are only command-line entry points (the dispatcher): documented as commands,
# not as an API.
COMMAND_LINE_ONLY = {"keras_topomap.cli"}
# A Markdown link or image target: ](target) or ](target "title").
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _load_mkdocs_config():
    # mkdocs.yml may hold python/name tags in other setups; ignore any tag, keep the values.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)


def _nav_files(entries):
    for entry in entries:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                if isinstance(value, str):
                    yield value
                else:
                    yield from _nav_files(value)


def _pages():
    """Markdown pages mkdocs serves (paths relative to docs/, '/' separated)."""
    return sorted(
        path.relative_to(DOCS).as_posix()
        for path in DOCS.rglob("*.md")
        if not any(part.startswith((".", "_")) for part in path.relative_to(DOCS).parts)
    )


def _public_modules():
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        modules.add(".".join(parts))
    return modules - {"keras_topomap"}


def _documented_modules():
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented.update(re.findall(r"^::: *([\w.]+)", page.read_text(encoding="utf-8"), re.M))
    return documented


def _links(path):
    text = path.read_text(encoding="utf-8")
    # Links inside code blocks and code spans are text, not links.
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # external (https:, mailto:) or an anchor on the same page
        yield target.split("#", 1)[0]


def test_mkdocs_config_is_strict_and_documents_google_docstrings():
    config = _load_mkdocs_config()
    assert config["docs_dir"] == "docs"
    assert config["strict"] is True
    handler = next(
        p["mkdocstrings"] for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p
    )
    assert handler["handlers"]["python"]["options"]["docstring_style"] == "google"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = list(_nav_files(_load_mkdocs_config()["nav"]))
    missing_files = [entry for entry in nav if not (DOCS / entry).is_file()]
    assert not missing_files, f"nav entries without a file under docs/: {missing_files}"
    duplicates = sorted({entry for entry in nav if nav.count(entry) > 1})
    assert not duplicates, f"pages listed twice in the nav: {duplicates}"
    not_in_nav = sorted(set(_pages()) - set(nav))
    assert not not_in_nav, f"docs pages missing from the mkdocs.yml nav: {not_in_nav}"


def test_the_core_pages_exist():
    pages = set(_pages())
    for page in [
        "index.md",
        "method.md",
        "librispeech_timit.md",
        "benchmarks.md",
        "results.md",
        "regularizer.md",
        "datasets.md",
        "recognizer.md",
        "callbacks.md",
        "gradnap.md",
        "optimal_inputs.md",
    ]:
        assert page in pages


def test_every_public_module_has_an_api_page():
    documented = _documented_modules()
    missing = sorted(_public_modules() - documented - COMMAND_LINE_ONLY)
    assert not missing, (
        f"public modules without an API page (add '::: module' to a docs/api/*.md page and the "
        f"page to the nav): {missing}"
    )
    unknown = sorted(documented - _public_modules())
    assert not unknown, f"API pages document modules that do not exist: {unknown}"


def test_the_module_scan_sees_known_modules():
    # Guards the test above against a scan that finds nothing (and so can never fail).
    modules = _public_modules()
    assert {
        "keras_topomap.grid",
        "keras_topomap.datasets",
        "keras_topomap.datasets.readers",
        "keras_topomap.regularizers",
    } <= modules
    assert not any(name.split(".")[-1].startswith("_") for name in modules)


def test_relative_links_resolve_inside_docs():
    # One test for all pages (the suite's per-test session reset costs more than the check).
    broken, outside = [], []
    for page in _pages():
        path = DOCS / page
        for target in _links(path):
            if not target:
                continue
            resolved = (path.parent / target).resolve()
            if DOCS.resolve() not in resolved.parents:
                outside.append(f"{page}: {target}")
            elif not resolved.exists():
                broken.append(f"{page}: {target}")
    assert not outside, (
        f"links to files outside docs/, which the site cannot serve (use a code span): {outside}"
    )
    assert not broken, f"links to missing files: {broken}"


def test_readme_links_to_docs_resolve():
    readme = ROOT / "README.md"
    targets = [t for t in _links(readme) if t]
    assert any(t.startswith("docs/") for t in targets), "README should link to the docs pages"
    broken = [t for t in targets if not (ROOT / t).exists()]
    assert not broken, f"README has links to missing files: {broken}"


def _make_figures():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only; nothing runs on import
    return module


def test_caption_blocks_are_rewritten_in_place():
    make_figures = _make_figures()
    text = "a\n<!-- caption:x -->\nold\n<!-- /caption -->\nb"
    assert make_figures.rewrite_captions(text, {"x": "new"}) == (
        "a\n<!-- caption:x -->\nnew\n<!-- /caption -->\nb")
    assert make_figures.caption_blocks(text) == {"x": "old"}
    import pytest

    with pytest.raises(ValueError, match="Unknown caption block 'x'"):
        make_figures.rewrite_captions(text, {})


def test_every_caption_block_is_what_figures_json_makes_of_its_run():
    """The demo figures' captions quote the numbers of the run the figures come from: each
    caption block in README.md and docs/method.md is exactly what make_figures.captions makes of
    docs/figures/demo/figures.json, every figure the docs show is there, and the numbers in
    figures.json are finite and consistent with each other."""
    import json
    import math

    make_figures = _make_figures()
    numbers = json.loads(make_figures.NUMBERS.read_text(encoding="utf-8"))
    generated = make_figures.captions(numbers)
    seen = {}
    for doc in make_figures.DOCS:
        seen.update(make_figures.caption_blocks((ROOT / doc).read_text(encoding="utf-8")))
    assert set(seen) == set(generated), "every caption make_figures writes has one block"
    stale = [name for name, body in seen.items() if body != generated[name].strip()]
    assert not stale, f"caption blocks not regenerated from figures.json: {stale}"
    for name in make_figures.FILES:
        assert (make_figures.FIGURES / name).is_file(), name
    animated = numbers["animation_frames"] is not None
    assert (make_figures.FIGURES / "maps.gif").is_file() == animated
    for layer in numbers["layers"].values():
        assert all(math.isfinite(layer[k]) for k in ("score", "z", "median_morans_i"))
        assert 0 <= layer["n_topographic"] <= layer["n_maps"]
    assert numbers["_checks"]["finite"]
    run = json.loads(make_figures.RUN_METRICS.read_text(encoding="utf-8"))
    from_run = make_figures.metrics_numbers(run)
    assert {k: numbers[k] for k in from_run} == from_run, "figures.json is not that run's"
    assert run["model"] == make_figures.portable_model(run["model"])  # no machine path
    assert numbers["test_cer"] is None or 0 <= numbers["test_cer"] <= 1.5


def _notebooks_hook(monkeypatch, root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("notebooks_hook", DOCS / "_hooks/notebooks.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    monkeypatch.setattr(hook, "ROOT", root)
    monkeypatch.setattr(hook, "EXAMPLES", root / "examples")
    monkeypatch.setattr(hook, "EXECUTED", root / "build/notebooks")
    return hook


def _write_notebook(path, code, outputs=()):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# Title"]},
             {"cell_type": "code", "metadata": {}, "source": [code], "outputs": list(outputs),
              "execution_count": 1 if outputs else None}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}), encoding="utf-8")


def test_the_site_renders_the_executed_notebooks_never_executing_them():
    config = _load_mkdocs_config()
    assert config["hooks"] == ["docs/_hooks/notebooks.py"]
    jupyter = [p["mkdocs-jupyter"] for p in config["plugins"]
               if isinstance(p, dict) and "mkdocs-jupyter" in p]
    assert jupyter and jupyter[0]["execute"] is False
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--output-dir build/notebooks/examples examples/*.ipynb" in makefile


def test_the_notebooks_hook_serves_an_executed_copy_only_while_its_code_matches(
        tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mkdocs.structure.files import Files

    hook = _notebooks_hook(monkeypatch, tmp_path)
    committed = tmp_path / "examples/01_a.ipynb"
    _write_notebook(committed, "print(1)")
    _write_notebook(tmp_path / "examples/02_b.ipynb", "print(2)")
    assert hook.executed_copy(committed) is None  # make notebooks has not run
    executed = tmp_path / "build/notebooks/examples/01_a.ipynb"
    _write_notebook(executed, "print(1)", outputs=[{"output_type": "stream", "name": "stdout",
                                                     "text": ["1\n"]}])
    assert hook.executed_copy(committed) == executed

    config = SimpleNamespace(site_dir=str(tmp_path / "site"), use_directory_urls=True,
                             nav=[{"Guide": "index.md"}, {"API reference": ["api/a.md"]}])
    files = hook.on_files(Files([]), config)
    assert {f.src_uri: f.abs_src_path for f in files} == {
        "examples/01_a.ipynb": str(executed),
        "examples/02_b.ipynb": str(tmp_path / "examples/02_b.ipynb")}
    assert hook.on_config(config).nav[1] == {
        "Examples": ["examples/01_a.ipynb", "examples/02_b.ipynb"]}

    _write_notebook(committed, "print(10)")  # edited since make notebooks ran
    assert hook.executed_copy(committed) is None


def test_the_screenshots_are_shown_and_small():
    # Screenshots of the demo's page and of TensorBoard: committed once, so kept small.
    for page, image in (("index.md", "figures/demo_page.png"),
                        ("tensorboard.md", "figures/tensorboard_maps.png")):
        assert f"]({image})" in (DOCS / page).read_text(encoding="utf-8"), (page, image)
        assert (DOCS / image).stat().st_size < 300_000, image
