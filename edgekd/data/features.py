"""Audio feature parameters as data (they go into preprocess.json).

Training and the device both compute log-mels with edgekd.runtime.preprocess.log_mel (numpy,
about 8x faster than transformers.audio_utils' per-frame loop); tests/test_preprocess.py holds it
to transformers.audio_utils' spectrogram with the same parameters as the reference.
"""
from __future__ import annotations

from edgekd.recipe import AudioFeatures


def audio_params(cfg: AudioFeatures) -> dict:
    """The JSON-able parameters of preprocess.json for an audio modality (before mean/std)."""
    return {
        "kind": "audio",
        "sample_rate": cfg.sample_rate,
        "num_samples": int(round(cfg.seconds * cfg.sample_rate)),
        "n_fft": cfg.n_fft,
        "hop_length": cfg.hop_length,
        "n_mels": cfg.n_mels,
        "fmin": float(cfg.fmin),
        "fmax": float(cfg.fmax or cfg.sample_rate / 2),
        "mel_floor": 1e-10,
        "mean": 0.0,
        "std": 1.0,
    }
