"""Turn raw inputs (wav samples, image pixels, strings, number lists) into model inputs.

Everything here is numpy-only and driven by the parameters stored in a bundle's
`preprocess.json`, so a device without torch or transformers reproduces the exact
tensors the student saw in training: training calls these same functions, and
tests/test_preprocess.py holds the log-mel to transformers.audio_utils' as the reference.
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

# Slaney-free HTK mel scale, the default of transformers.audio_utils.mel_filter_bank.


def hertz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mels, dtype=np.float64) / 2595.0) - 1.0)


def mel_filters(n_fft: int, n_mels: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK mel filters, shape (n_fft // 2 + 1, n_mels), unnormalised."""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    mel_pts = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), n_mels + 2)
    hz_pts = mel_to_hertz(mel_pts)
    diffs = np.diff(hz_pts)
    slopes = hz_pts[None, :] - fft_freqs[:, None]  # (F, n_mels + 2)
    down = -slopes[:, :-2] / diffs[:-1]
    up = slopes[:, 2:] / diffs[1:]
    return np.maximum(0.0, np.minimum(down, up))


def fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad or truncate a 1-D signal to exactly n samples."""
    out = np.zeros(n, dtype=np.float32)
    k = min(n, samples.shape[0])
    out[:k] = samples[:k]
    return out


def log_mel(samples: np.ndarray, p: dict) -> np.ndarray:
    """Log-mel spectrogram (frames, n_mels) of a float waveform in [-1, 1], then normalised."""
    x = fit_length(np.asarray(samples, dtype=np.float64), int(p["num_samples"])).astype(np.float64)
    n_fft, hop = int(p["n_fft"]), int(p["hop_length"])
    x = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    n_frames = 1 + (x.shape[0] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spec = np.abs(np.fft.rfft(x[idx] * window, n=n_fft)) ** 2  # (T, F) power
    mel = spec @ mel_filters(n_fft, int(p["n_mels"]), int(p["sample_rate"]), p["fmin"], p["fmax"])
    out = np.log10(np.maximum(mel, p.get("mel_floor", 1e-10)))
    return ((out - p["mean"]) / p["std"]).astype(np.float32)  # (T, n_mels)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a PCM wav file."""
    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        if not 1 <= rate <= 1_000_000:  # 0 would divide by zero when resampling; absurd rates blow up memory
            raise ValueError(f"the wav header says sample rate {rate} Hz (expected 1 Hz to 1 MHz)")
        raw = w.readframes(w.getnframes())
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"unsupported wav sample width {width} bytes (use 8/16/32-bit PCM)")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data, rate


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear-interpolation resampling; enough for speech features at a fixed model rate."""
    if rate == target:
        return samples
    n_out = int(round(samples.shape[0] * target / rate))
    t_out = np.arange(n_out) * (rate / target)
    return np.interp(t_out, np.arange(samples.shape[0]), samples).astype(np.float32)


def audio_from_wav(path: str | Path, p: dict) -> np.ndarray:
    samples, rate = read_wav(path)
    return log_mel(resample(samples, rate, int(p["sample_rate"])), p)


def image_array(pixels: np.ndarray, p: dict) -> np.ndarray:
    """(H, W) or (H, W, C) uint8/float pixels 0..255 → normalised (1, size, size) float32."""
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    size = int(p["size"])
    if img.shape != (size, size):
        img = _resize_bilinear(img, size)
    return ((img / 255.0 - p["mean"]) / p["std"]).astype(np.float32)[None]


def _resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape
    ys = np.linspace(0, h - 1, size)
    xs = np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def image_from_file(path: str | Path, p: dict) -> np.ndarray:
    from PIL import Image  # Pillow is a light, torch-free dependency of the runtime

    try:
        with Image.open(path) as im:
            return image_array(np.asarray(im.convert("L")), p)
    except Image.DecompressionBombError as e:  # not an OSError: callers catch ValueError for unreadable images
        raise ValueError(f"image too large to decode safely ({str(e).split(',')[0]})") from None


def vector_array(values, p: dict) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    if v.shape != (len(p["mean"]),):
        raise ValueError(f"expected a vector of {len(p['mean'])} numbers, got shape {v.shape}")
    if not np.isfinite(v).all():  # training refused NaN/inf too; a NaN input gives NaN logits, not an error
        raise ValueError(f"expected finite numbers, got {v.tolist()}")
    return ((v - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)).astype(np.float32)


def text_ids(text: str, p: dict, tokenizer=None) -> np.ndarray:
    """Token ids (max_length,) padded with 0; `tokenizer` is a `tokenizers.Tokenizer`."""
    if tokenizer is None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(p["tokenizer_json"])
    ids = tokenizer.encode(text).ids[: int(p["max_length"])]
    out = np.zeros(int(p["max_length"]), dtype=np.int64)
    out[: len(ids)] = ids
    return out
