"""The synthetic demo (`python -m keras_topomap.synthetic_demo`, `make demo ARGS=--synthetic`)."""

import numpy as np

from keras_topomap.synthetic_demo import format_results, make_sequence_task, run_synthetic_demo


def test_sequence_task_shapes_and_shared_prototypes():
    x, y = make_sequence_task(n_sequences=6, length=40, seed=3)
    assert x.shape == (6, 40, 12) and x.dtype == np.float32
    assert y.shape == (6, 40) and y.min() >= 0 and y.max() < 12
    # labels come in runs (segments), not frame-wise noise
    assert (np.diff(y, axis=1) != 0).mean() < 0.35
    x2, _ = make_sequence_task(n_sequences=6, length=40, seed=3, sample_seed=1)
    assert not np.allclose(x, x2)
    again, _ = make_sequence_task(n_sequences=6, length=40, seed=3)
    np.testing.assert_array_equal(x, again)


def test_demo_constraint_orders_filters_and_unconstrained_does_not():
    results = run_synthetic_demo(epochs=4, n_permutations=20, verbose=0)
    for layer, r in results["topographic"]["scores"].items():
        assert r.score > 0.3, layer  # after only 4 epochs; the full demo reaches ~0.9
        assert r.z > 5, layer
    for layer, r in results["unconstrained"]["scores"].items():
        assert abs(r.score) < 0.1, layer
    text = format_results(results)
    assert "conv_1" in text and "validation frame accuracy" in text
