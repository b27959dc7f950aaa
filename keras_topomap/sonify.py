"""Listen to features: invert log-mel or MFCC frames to audio and write WAV files.

Optimal inputs (:mod:`keras_topomap.optimal_inputs`) live in feature space; this module turns
them back into sound with librosa, using the parameters of the
:class:`~keras_topomap.datasets.FeatureConfig` that extracted the model's training features, so
what is inverted is exactly what :func:`~keras_topomap.datasets.extract_features` computed:

1. **Undo the normalisation.** Extraction standardises every feature per utterance; the mean
   and standard deviation of the utterance are gone. :func:`features_to_audio` multiplies by a
   typical standard deviation and adds a typical mean per feature (``stats``); by default these
   are averaged over utterances of the bundled corpus (:func:`feature_statistics`).
2. **Features to a mel power spectrogram.** Log-mel: ``db_to_power``. MFCC:
   :func:`librosa.feature.inverse.mfcc_to_mel` (the dropped higher coefficients are taken as 0,
   which smooths the spectral envelope).
3. **Mel power to audio**, as :func:`librosa.feature.inverse.mel_to_audio` does it
   (non-negative least-squares inverse of the mel filter bank, then Griffin-Lim phase
   reconstruction, here with a seeded start) with the FFT size, window, hop and centring of
   extraction.

Limits, so nobody expects more than a sketch: the normalisation constants are corpus averages,
not the (non-existent) utterance's own; the mel filter bank and MFCC truncation throw away
spectral detail, so the inverse is smooth and buzzy; phase is invented by Griffin-Lim; values
an optimiser pushed beyond the data's range become very loud or very quiet bands; bands that
are mostly at the 80 dB floor have a tiny per-utterance standard deviation, so normalised values
there mean little and come back as faint noise; the audio is peak-normalised before writing.
The point is to *hear which bands and rhythms* a region likes.

Example:

>>> from keras_topomap.datasets import FeatureConfig
>>> from keras_topomap.sonify import write_wav
>>> write_wav("region.wav", joint_input[0], FeatureConfig())   # (T, 40) normalised log-mel
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["feature_statistics", "features_to_audio", "write_wav"]


def _config(config):
    from keras_topomap.datasets import FeatureConfig

    if config is None:
        return FeatureConfig()
    if not isinstance(config, FeatureConfig):
        raise ValueError(
            f"config must be a keras_topomap.datasets.FeatureConfig. Received: {config!r}"
        )
    return config


def feature_statistics(utterances, config=None):
    """Typical per-feature mean and standard deviation of *unnormalised* features.

    Normalisation is per utterance, so these are averages over utterances of each utterance's
    own mean and standard deviation: what :func:`features_to_audio` multiplies and adds back.

    Args:
        utterances: :class:`~keras_topomap.datasets.Utterance` objects.
        config: the :class:`~keras_topomap.datasets.FeatureConfig` of the normalised features.

    Returns:
        ``(mean, std)``, two float64 arrays ``(n_features,)``.
    """
    import dataclasses

    from keras_topomap.datasets import extract_features

    config = _config(config)
    raw = dataclasses.replace(config, normalize=False)
    feats = [extract_features(u, raw) for u in utterances]
    if not feats:
        raise ValueError("feature_statistics needs at least one utterance. Received: none")
    means = np.stack([f.mean(axis=0) for f in feats])
    stds = np.stack([f.std(axis=0) for f in feats])
    return means.mean(axis=0).astype(np.float64), stds.mean(axis=0).astype(np.float64)


@functools.lru_cache(maxsize=8)
def _corpus_statistics(config, n_utterances=32):
    from keras_topomap.datasets import load_tts_corpus

    return feature_statistics(load_tts_corpus("train")[:n_utterances], config)


def features_to_audio(features, config=None, stats=None, n_iter=32, seed=0):
    """Inverts ``(T, n_features)`` log-mel or MFCC frames to a waveform.

    Args:
        features: float array ``(T, config.n_features)`` (e.g. one optimal input).
        config: the :class:`~keras_topomap.datasets.FeatureConfig` the model's features were
            extracted with (default ``FeatureConfig()``: 40 normalised log-mel bands).
        stats: ``(mean, std)`` per feature to undo the normalisation with (only used when
            ``config.normalize``); default: averages over 32 utterances of the bundled corpus.
        n_iter: Griffin-Lim iterations.
        seed: seed of Griffin-Lim's random start phase (same seed, same audio).

    Returns:
        float32 waveform at ``config.sample_rate`` with ``(T - 1) * hop_length`` samples.

    Raises:
        ValueError: for a shape that does not match ``config`` or non-finite values.
    """
    import librosa

    config = _config(config)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != config.n_features:
        raise ValueError(
            f"features must be (T, {config.n_features}) for a {config.kind} FeatureConfig with "
            f"{config.n_features} features. Received: shape={features.shape}"
        )
    if features.shape[0] < 2 or not np.all(np.isfinite(features)):
        raise ValueError(
            "features need at least 2 frames and finite values. Received: "
            f"shape={features.shape}, finite={bool(np.all(np.isfinite(features)))}"
        )
    if config.normalize:
        mean, std = _corpus_statistics(config) if stats is None else stats
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.shape != (config.n_features,) or std.shape != (config.n_features,):
            raise ValueError(
                f"stats must be two arrays of shape ({config.n_features},). Received: "
                f"{mean.shape} and {std.shape}"
            )
        features = features * std + mean
    coefficients = features.T  # librosa works on (features, frames)
    if config.kind == "mfcc":
        mel_power = librosa.feature.inverse.mfcc_to_mel(coefficients, n_mels=config.n_mels, ref=1.0)
    else:
        mel_power = librosa.db_to_power(coefficients, ref=1.0)
    # mel_to_audio, done in its two steps so the Griffin-Lim start is seeded (repeatable audio)
    magnitude = librosa.feature.inverse.mel_to_stft(
        mel_power, sr=config.sample_rate, n_fft=config.n_fft, power=2.0
    )
    audio = librosa.griffinlim(
        magnitude, n_iter=int(n_iter), random_state=int(seed), **config.stft_params()
    )
    return audio.astype(np.float32)


def write_wav(path, features, config=None, stats=None, n_iter=32, peak=0.9, seed=0):
    """Inverts features to audio (:func:`features_to_audio`) and writes a 16-bit WAV.

    Args:
        path: output file.
        features: ``(T, n_features)``.
        config: the feature configuration, see :func:`features_to_audio`.
        stats: ``(mean, std)`` per feature, see :func:`features_to_audio`.
        n_iter: Griffin-Lim iterations.
        seed: seed of Griffin-Lim's random start phase.
        peak: the waveform is scaled so its largest absolute sample is ``peak`` (silence stays
            silent).

    Returns:
        The waveform written (float32, after scaling).
    """
    import soundfile

    config = _config(config)
    audio = features_to_audio(features, config, stats=stats, n_iter=n_iter, seed=seed)
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    if top > 0:
        audio = (audio * (peak / top)).astype(np.float32)
    soundfile.write(str(path), audio, config.sample_rate, subtype="PCM_16")
    return audio
