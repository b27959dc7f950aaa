"""The Keras internals keras-topomap uses exist in the installed Keras (an upgrade fails here
first), and no module but keras_topomap._keras_internals touches them."""

import importlib
import importlib.util
import re
from pathlib import Path

import keras
import pytest

from keras_topomap import _keras_internals as internals

PACKAGE = Path(internals.__file__).parent
SOURCE = Path(internals.__file__).read_text()


def _objects():
    """One object of each kind named in PRIVATE_SYMBOLS."""
    inputs = keras.Input((None, 3))
    outputs = keras.layers.Conv1D(2, 3, padding="same", name="conv")(inputs)
    functional = keras.Model(inputs, outputs)
    sequential = keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(use_ema=True)  # built: its moving averages exist
    optimizer.build(functional.trainable_variables)
    return {
        "Sequential": sequential,
        "Functional": functional,
        "KerasTensor": outputs,
        "Layer": functional.get_layer("conv"),
        "Model": functional,
        "Optimizer": optimizer,
    }


@pytest.mark.backend
def test_every_private_symbol_exists_in_the_installed_keras():
    objects = _objects()
    missing = []
    for where, name in internals.PRIVATE_SYMBOLS:
        if where.startswith("keras.src"):
            if where.startswith("keras.src.backend.jax") and not importlib.util.find_spec("jax"):
                continue
            if not hasattr(importlib.import_module(where), name):
                missing.append(f"{where}.{name}")
        elif where.endswith(" on TensorFlow"):
            if keras.backend.backend() == "tensorflow" and not hasattr(objects["Model"], name):
                missing.append(f"{where}.{name}")
        elif not hasattr(objects[where], name):
            missing.append(f"{where}.{name}")
    assert not missing, f"keras {keras.version()} lacks {missing}"


def test_the_list_names_every_private_symbol_the_module_uses():
    listed = {name for _, name in internals.PRIVATE_SYMBOLS}
    modules = {where for where, _ in internals.PRIVATE_SYMBOLS if where.startswith("keras.src")}
    used_modules = set(re.findall(r"from (keras\.src[\w.]*) import", SOURCE))
    assert used_modules <= modules
    imported = set(re.findall(r"from keras\.src[\w.]* import (\w+)", SOURCE))
    # Attributes read off objects other than this module's own names: obj._name.
    attributes = set(re.findall(r"\b(?!self\b)\w+\.(_[a-z]\w*)", SOURCE))
    attributes |= set(re.findall(r"getattr\(\w+, \"(_[a-z]\w*)\"", SOURCE))
    assert imported | attributes <= listed, sorted((imported | attributes) - listed)


def test_no_other_module_touches_them():
    names = [name for _, name in internals.PRIVATE_SYMBOLS if name.startswith("_")]
    touched = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_keras_internals.py":
            continue
        text = path.read_text()
        found = [n for n in names if re.search(rf"\.{n}\b|\"{n}\"", text)]
        found += ["keras.src"] if "keras.src" in text else []
        if found:
            touched[str(path.relative_to(PACKAGE))] = found
    assert not touched


@pytest.mark.backend
def test_graph_helpers_on_functional_and_sequential_models():
    objects = _objects()
    functional, sequential = objects["Functional"], objects["Sequential"]
    assert internals.is_graph_model(functional) and internals.is_graph_model(sequential)
    assert internals.graph(sequential) is not sequential
    assert internals.producing_layer(internals.graph_outputs(functional)[0]).name == "conv"
    mode, steps, input_ids, output_ids = internals.graph_steps(functional)
    assert mode == "graph" and [layer.name for layer, _, _ in steps] == ["conv"]
    assert steps[0][1] == input_ids and steps[0][2] == output_ids
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    assert internals.is_unbuilt_sequential(unbuilt) and not internals.is_graph_model(unbuilt)
    assert internals.graph_steps(unbuilt)[0] == "chain"
    assert [layer.name for layer in internals.graph_layers(functional)] == ["conv"]
    assert functional in internals.all_sublayers(functional)
    assert functional not in internals.all_sublayers(functional, include_self=False)


def test_multi_worker_workaround_applies_to_the_versions_known_to_need_it():
    first, last = internals.KERAS_20585_VERSIONS
    assert internals.needs_multi_worker_fit_workaround(f"{first[0]}.{first[1]}.0")
    assert internals.needs_multi_worker_fit_workaround(f"{last[0]}.{last[1]}.2")
    assert not internals.needs_multi_worker_fit_workaround(f"{last[0]}.{last[1] + 1}.0")
    assert internals.keras_version("3.16.0rc1") == (3, 16)
    # The installed Keras is one the workaround was checked on (widen the range after checking
    # a newer one: tests/test_distribute.py runs fit under MultiWorkerMirroredStrategy).
    assert internals.needs_multi_worker_fit_workaround()


def test_keras_upper_bound_is_the_next_minor_after_the_checked_one():
    import tomllib
    from packaging.requirements import Requirement

    with open(PACKAGE.parent / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    (spec,) = [Requirement(d).specifier for d in deps if Requirement(d).name == "keras"]
    major, minor = internals.KERAS_20585_VERSIONS[1]
    assert f"<{major}.{minor + 1}" in {str(s) for s in spec}
    assert spec.contains(keras.version(), prereleases=True)
