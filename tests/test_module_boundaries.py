"""Modules use each other through public names only (private modules such as _files and
_keras_internals are shared helpers: their names are public to the package)."""

import re
from pathlib import Path

import keras_topomap

PACKAGE = Path(keras_topomap.__file__).parent


def _sources():
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_a_private_name_of_another():
    found = []
    for name, text in _sources().items():
        for match in re.finditer(r"from keras_topomap(?:\.\w+)+ import ([^\n(]+|\([^)]*\))", text):
            names = re.findall(r"\b(\w+)(?: as \w+)?", match.group(1))
            found += [f"{name}: {n}" for n in names if n.startswith("_") and n != "_"
                      and not re.match(r"_(keras_internals|files|arrays|deprecation)$", n)]
    assert not found


def test_no_module_reads_a_private_attribute_of_another_module():
    modules = "|".join(["grid_lib", "reg_lib", "vis", "models_lib", "train_lib", "distribute_lib",
                        "phones_lib", "checks", "ctc", "metrics", "summaries", "fast_conv",
                        "gradients", "probe_groups", "sample_groups", "datasets", "run_io",
                        "training_callbacks"])
    found = []
    for name, text in _sources().items():
        found += [f"{name}: {m}" for m in re.findall(rf"\b(?:{modules})\._[a-z]\w*", text)]
    assert not found


def test_identifiers_are_spelled_american():
    import io
    import tokenize

    british = re.compile(r"neighbour|centre|colour|normalis|optimis|analys(e|ed|ing)\b|"
                         r"labell(?!eft)|standardis|summaris|visualis|serialis|regularis|"
                         r"localis|symmetris")
    found = []
    for name, text in _sources().items():
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.NAME and british.search(token.string):
                found.append(f"{name}:{token.start[0]}: {token.string}")
    assert not found
