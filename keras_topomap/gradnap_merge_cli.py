"""``keras-topomap gradnap-merge``: the merge step of sharded GradNAP.

The command lives in :mod:`keras_topomap.gradnap_cli` (with ``keras-topomap gradnap``); this
module only gives it the ``main`` entry point the command dispatcher expects.
"""

from keras_topomap.gradnap_cli import merge_main as main

__all__ = ["main"]
