"""The example notebooks in examples/ are committed clean and are valid notebooks.

These checks only read the files; executing the notebooks is ``make notebooks``' job (each
notebook once, with nbconvert, into build/notebooks/examples/, which the docs site renders).
"""

import ast
import json
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _python_source(cell):
    # IPython magics ("%matplotlib inline") and shell escapes are not Python syntax.
    lines = "".join(cell["source"]).splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def test_examples_exist_and_are_listed():
    assert len(NOTEBOOKS) >= 3, f"expected the example notebooks in {EXAMPLES}"
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in NOTEBOOKS if p.name not in readme]
    assert not missing, f"examples/README.md does not list {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_nbformat4(path):
    import nbformat  # comes with nbconvert (the dev extra)

    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert notebook.nbformat == 4
    nbformat.validate(notebook)  # raises ValidationError on a malformed notebook
    assert notebook.metadata.kernelspec.name == "python3"
    assert notebook.metadata.kernelspec.language == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = _load(path)
    dirty = [
        index
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell["outputs"] or cell["execution_count"] is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_parses_and_starts_with_prose(path):
    cells = _load(path)["cells"]
    assert cells and cells[0]["cell_type"] == "markdown", f"{path.name}: start with a title"
    assert "".join(cells[0]["source"]).startswith("# "), f"{path.name}: no title heading"
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            try:
                ast.parse(_python_source(cell))
            except SyntaxError as e:
                pytest.fail(f"{path.name}: cell {index} is not valid Python: {e}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_holds_no_machine_paths(path):
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"/(?:work|root|home|tmp)/[\w./-]+", text)
    assert not found, f"{path.name} mentions paths of one machine: {found[:3]}"
