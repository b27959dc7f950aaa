"""Shared test configuration.

The suite runs once per Keras backend (``KERAS_BACKEND`` = tensorflow, jax, torch; see the
Makefile). Tests marked ``backend`` exercise backend-agnostic tensor code and run on all three;
the rest are backend-independent and run once (under TensorFlow).
"""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)  # seeds Python, numpy and the backend
    yield
    keras.backend.clear_session()


@pytest.fixture
def backend():
    return keras.backend.backend()


def pytest_collection_finish(session):
    # Every test ends with clear_session(), whose gc.collect() walks every object alive: after
    # importing TensorFlow, JAX or PyTorch (and the test modules) that is ~450,000 objects and
    # 1-3 s a test. Freezing what exists once collection is done (modules, functions, constants
    # imported for good) leaves the collector only what the tests themselves create.
    gc.collect()
    gc.freeze()


def pytest_configure(config):
    # Also registered in setup.cfg; repeated here so the marker exists whichever ini is used.
    config.addinivalue_line(
        "markers",
        "distributed: starts several devices or worker processes (tf.distribute, "
        "keras.distribution)",
    )
