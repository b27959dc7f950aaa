"""Phone-aligned speech data: the bundled corpus, readers for real corpora, features and batches.

* :func:`load_tts_corpus` loads the corpus shipped with the package (Festival voices, exact phone
  timings); :func:`read_librispeech`, :func:`read_timit` and :func:`read_textgrid_corpus` read
  corpora users bring. All return lists of :class:`Utterance`.
* :mod:`~keras_topomap.datasets.phones` folds ARPAbet to the 39-phone set.
* :class:`FeatureConfig`, :func:`extract_features`, :func:`frame_labels` and the character
  targets (:data:`CHARACTERS`, :func:`text_to_labels`) turn utterances into arrays;
  :func:`load_corpus_features` caches the bundled corpus's features on disk.
* :class:`SpeechBatches` is a ``keras.utils.PyDataset`` of padded, bucketed batches.

Example:

>>> from keras_topomap import datasets
>>> train = datasets.SpeechBatches.from_corpus("train", batch_size=16, mode="ctc")
>>> x, y = train[0]          # features (16, T, 40), packed CTC targets (16, 2 + L)
"""

from keras_topomap.datasets import phones
from keras_topomap.datasets.batches import (
    SpeechBatches,
    pack_ctc_targets,
    pad_sequences,
    unpack_ctc_targets,
)
from keras_topomap.datasets.corpus import (
    HELD_OUT_VOICE,
    SPLITS,
    PhoneSegment,
    Utterance,
    clear_tts_corpus_cache,
    load_tts_corpus,
    read_audio,
    split_ids,
    tts_corpus_dir,
    tts_corpus_info,
)
from keras_topomap.datasets.features import (
    BLANK,
    CHARACTERS,
    FeatureConfig,
    FeatureSet,
    cache_dir,
    extract_features,
    frame_labels,
    labels_to_text,
    load_corpus_features,
    normalize_text,
    num_frames,
    text_to_labels,
)
from keras_topomap.datasets.phones import (
    PHONES_39,
    fold_phone,
    index_to_phone,
    phone_to_index,
)
from keras_topomap.datasets.readers import (
    CorpusError,
    read_librispeech,
    read_textgrid,
    read_textgrid_corpus,
    read_timit,
)

__all__ = [
    "BLANK",
    "CHARACTERS",
    "CorpusError",
    "FeatureConfig",
    "FeatureSet",
    "HELD_OUT_VOICE",
    "PHONES_39",
    "PhoneSegment",
    "SPLITS",
    "SpeechBatches",
    "Utterance",
    "cache_dir",
    "clear_tts_corpus_cache",
    "extract_features",
    "fold_phone",
    "frame_labels",
    "index_to_phone",
    "labels_to_text",
    "load_corpus_features",
    "load_tts_corpus",
    "normalize_text",
    "num_frames",
    "pack_ctc_targets",
    "pad_sequences",
    "phone_to_index",
    "phones",
    "read_audio",
    "read_librispeech",
    "read_textgrid",
    "read_textgrid_corpus",
    "read_timit",
    "split_ids",
    "text_to_labels",
    "tts_corpus_dir",
    "tts_corpus_info",
    "unpack_ctc_targets",
]
