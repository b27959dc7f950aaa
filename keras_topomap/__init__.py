"""keras-topomap: topographic filter maps for Keras 3.

Lay a layer's filters out on a 2D grid, make neighbouring filters similar with
:class:`TopographicRegularizer` (weights) or :class:`TopographicActivityRegularizer`
(responses), and read activations as smooth topographic maps.
"""

# augment and schedules register their classes, so saved models and optimizers load.
from keras_topomap import augment, ctc, grid, metrics, models, schedules
from keras_topomap.activity import TopographicActivityRegularizer
from keras_topomap.callbacks import TopoMapCallback
from keras_topomap.ctc import CTCLoss, transcribe
from keras_topomap.gradnap import GradNAP
from keras_topomap.group_sums import GroupSums
from keras_topomap.language_model import CharNGramLM
from keras_topomap.layout import FilterLayout, fit_layouts, reorder_filters
from keras_topomap.metrics import topography_score, topography_test
from keras_topomap.models import wav2letter
from keras_topomap.optimal_inputs import OptimalInputs, optimal_inputs
from keras_topomap.receptive_field import LayerTiming, receptive_fields
from keras_topomap.regularizers import (
    TopographicRegularizer,
    topographic_layers,
    topographic_penalty,
)

__version__ = "0.1.0"

__all__ = [
    "OptimalInputs",
    "optimal_inputs",
    "GradNAP",
    "GroupSums",
    "FilterLayout",
    "fit_layouts",
    "reorder_filters",
    "TopoMapCallback",
    "LayerTiming",
    "receptive_fields",
    "TopographicRegularizer",
    "TopographicActivityRegularizer",
    "grid",
    "metrics",
    "models",
    "augment",
    "schedules",
    "ctc",
    "wav2letter",
    "CTCLoss",
    "transcribe",
    "CharNGramLM",
    "topographic_layers",
    "topographic_penalty",
    "topography_score",
    "topography_test",
    "__version__",
]
