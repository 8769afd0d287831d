"""Turn raw inputs (wav samples, image pixels, strings, number lists) into model inputs.

Everything here is numpy-only and driven by the parameters stored in a bundle's
`preprocess.json`, so a device without torch or transformers reproduces the exact
tensors the student saw in training: training calls these same functions, and
tests/test_preprocess.py holds the log-mel to transformers.audio_utils' as the reference.
"""
from __future__ import annotations

import functools
import re

import numpy as np

# Slaney-free HTK mel scale, the default of transformers.audio_utils.mel_filter_bank.


def hertz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mels, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)  # the same few settings every call: ~0.09 ms saved per clip served
def mel_filters(n_fft: int, n_mels: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK mel filters, shape (n_fft // 2 + 1, n_mels), unnormalised (read-only: cached)."""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    mel_pts = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), n_mels + 2)
    hz_pts = mel_to_hertz(mel_pts)
    diffs = np.diff(hz_pts)
    slopes = hz_pts[None, :] - fft_freqs[:, None]  # (F, n_mels + 2)
    down = -slopes[:, :-2] / diffs[:-1]
    up = slopes[:, 2:] / diffs[1:]
    out = np.maximum(0.0, np.minimum(down, up))
    out.flags.writeable = False
    return out


def fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad or truncate a 1-D signal to exactly n samples."""
    out = np.zeros(n, dtype=np.float32)
    k = min(n, samples.shape[0])
    out[:k] = samples[:k]
    return out


def log_mel(samples: np.ndarray, p: dict) -> np.ndarray:
    """Log-mel spectrogram (frames, n_mels) of a float waveform in [-1, 1], then normalised."""
    return normalise_audio(log_mel_features(samples, p), p)


def normalise_audio(features: np.ndarray, p: dict) -> np.ndarray:
    """Unnormalised float32 log-mels (one clip or a batch) -> the model's input. Training applies it
    to whole batches read from the data store, the device to one clip: the same float32 arithmetic."""
    return ((features - p["mean"]) / p["std"]).astype(np.float32)


def log_mel_features(samples: np.ndarray, p: dict) -> np.ndarray:
    """The unnormalised float32 log-mel spectrogram (frames, n_mels): what the data store holds."""
    x = fit_length(np.asarray(samples, dtype=np.float64), int(p["num_samples"])).astype(np.float64)
    n_fft, hop = int(p["n_fft"]), int(p["hop_length"])
    x = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    n_frames = 1 + (x.shape[0] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spec = np.abs(np.fft.rfft(x[idx] * window, n=n_fft)) ** 2  # (T, F) power
    mel = spec @ mel_filters(n_fft, int(p["n_mels"]), int(p["sample_rate"]), p["fmin"], p["fmax"])
    return np.log10(np.maximum(mel, p.get("mel_floor", 1e-10))).astype(np.float32)  # (T, n_mels)


AUDIO_FORMATS = "wav (PCM 8/16/24/32-bit, float 32/64-bit), FLAC, OGG/Vorbis, MP3, AIFF"


def read_audio(path, max_seconds: float = 3600.0, seconds: float | None = None,
               formats: tuple[str, ...] | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of an audio file (a path or a binary
    file object), through libsndfile (the soundfile package: wav of every PCM and float width, FLAC,
    OGG, MP3, AIFF). Integer PCM is scaled by its full range (16-bit: / 32768), so 16-bit wavs read
    exactly as before. Longer than `max_seconds` is refused before decoding (a compressed hour of
    silence is a few kB on the wire and hundreds of MB decoded); `seconds` decodes only that much
    from the start (what a model that cuts clips uses anyway)."""
    import soundfile as sf

    src = path if hasattr(path, "read") else str(path)
    try:
        info = sf.info(src)
    except (sf.LibsndfileError, RuntimeError) as e:  # not audio, truncated header, unknown format
        raise ValueError(f"{_first_line(e)}; readable formats: {AUDIO_FORMATS}") from None
    if formats and info.format not in formats:  # a server: only the containers it documents
        raise ValueError(f"audio format {info.format} is not accepted; send one of {', '.join(formats)}")
    if not 1 <= info.samplerate <= 1_000_000:  # 0 would divide by zero when resampling; absurd rates blow up memory
        raise ValueError(f"the file's header says sample rate {info.samplerate} Hz (expected 1 Hz to 1 MHz)")
    if not 1 <= info.channels <= 32:  # each channel is decoded before the mono mix
        raise ValueError(f"the file's header says {info.channels} channels (at most 32)")
    if info.samplerate > 384_000:
        raise ValueError(f"the file's header says sample rate {info.samplerate} Hz (at most 384 kHz)")
    if info.frames > max_seconds * info.samplerate:  # beyond any clip a model sees, and a memory bomb
        raise ValueError(f"the file is {info.frames / info.samplerate:.0f} s long (at most {max_seconds:.0f} s); "
                         "cut it to the clip the model needs")
    if hasattr(src, "seek"):
        src.seek(0)
    try:
        frames = -1 if seconds is None else int(np.ceil(seconds * info.samplerate)) + 1
        data, rate = sf.read(src, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"{_first_line(e)}; readable formats: {AUDIO_FORMATS}") from None
    if data.shape[0] == 0:
        raise ValueError("the file holds no audio samples")
    if not np.isfinite(data).all():  # a float wav can hold NaN or infinity: the model would answer noise
        raise ValueError("the file holds non-finite samples (NaN or infinity)")
    return (data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]).astype(np.float32), int(rate)


def decoder_reason(e: BaseException) -> str:
    """A decoder's exception as one line for a user: its first line, without the repr of the
    in-memory file it was handed (Pillow: "cannot identify image file <_io.BytesIO object at 0x...>")."""
    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    return re.sub(r"\s*<[\w.]+ object at 0x[0-9a-f]+>", "", text)


def _first_line(e: BaseException) -> str:
    """libsndfile's reason, without the path it repeats ("Error opening '/x.wav': ...")."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^Error opening '.*?': ", "", text).rstrip(".")
    if "SF_INFO struct incomplete" in text:  # libsndfile's word for a header it cannot use
        return "its header is incomplete or invalid (a sample rate of 0, say)"
    return text


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear-interpolation resampling; enough for speech features at a fixed model rate."""
    if rate == target:
        return samples
    n_out = int(round(samples.shape[0] * target / rate))
    t_out = np.arange(n_out) * (rate / target)
    return np.interp(t_out, np.arange(samples.shape[0]), samples).astype(np.float32)


def audio_from_file(path, p: dict, max_seconds: float = 3600.0, formats: tuple[str, ...] | None = None) -> np.ndarray:
    return normalise_audio(audio_features(path, p, max_seconds, formats), p)


def audio_features(path, p: dict, max_seconds: float = 3600.0, formats: tuple[str, ...] | None = None) -> np.ndarray:
    """An audio file's unnormalised log-mels: only the clip the model sees is decoded."""
    samples, rate = read_audio(path, max_seconds, seconds=int(p["num_samples"]) / int(p["sample_rate"]),
                               formats=formats)
    return log_mel_features(resample(samples, rate, int(p["sample_rate"])), p)


def image_array(pixels: np.ndarray, p: dict) -> np.ndarray:
    """(H, W) or (H, W, C) uint8/float pixels 0..255 → normalised (C, size, size) float32, C = the
    parameters' `channels` (1: gray, the default of older bundles; 3: RGB, normalised per channel)."""
    return normalise_image(image_pixels(pixels, p), p)


def image_pixels(pixels: np.ndarray, p: dict) -> np.ndarray:
    """Pixels resized to the model's (C, size, size), float32 0..255, not yet normalised: what the
    data store holds, so training normalises batches with the very arithmetic of normalise_image."""
    img = np.asarray(pixels, dtype=np.float32)
    size = int(p["size"])
    if int(p.get("channels", 1)) == 1:
        if img.ndim == 3:
            img = img[..., :3].mean(axis=2)
        if img.shape != (size, size):
            img = _resize_bilinear(img, size)
        return img.astype(np.float32)[None]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.shape[:2] != (size, size):
        img = np.stack([_resize_bilinear(img[..., c], size) for c in range(3)], axis=2)
    return img.astype(np.float32).transpose(2, 0, 1)


def normalise_image(pixels: np.ndarray, p: dict) -> np.ndarray:
    """(C, size, size) or a (B, C, size, size) batch of float32 pixels 0..255 -> the model's input."""
    if int(p.get("channels", 1)) == 1:
        return ((pixels / 255.0 - p["mean"]) / p["std"]).astype(np.float32)
    mean = np.asarray(p["mean"], dtype=np.float64).reshape(-1, 1, 1)
    std = np.asarray(p["std"], dtype=np.float64).reshape(-1, 1, 1)
    return ((pixels / 255.0 - mean) / std).astype(np.float32)


def _resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape
    ys = np.linspace(0, h - 1, size)
    xs = np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    # gather the size x size corners directly (np.ix_): `img[y0][:, x0]` would first copy whole rows,
    # 2 GB for a 16,777,216 x 1 png that a 28-px model reads 784 pixels of
    top = img[np.ix_(y0, x0)] * (1 - wx) + img[np.ix_(y0, x1)] * wx
    bot = img[np.ix_(y1, x0)] * (1 - wx) + img[np.ix_(y1, x1)] * wx
    return top * (1 - wy) + bot * wy


def image_from_file(path, p: dict, max_pixels: int | None = None, formats: tuple[str, ...] | None = None) -> np.ndarray:
    """A png/jpg (a path or a binary file object) as the model's input; more than `max_pixels` is
    refused from the header, before decoding (Pillow's own bomb limit is ~179 M pixels);
    `formats` limits which Pillow decoders may run (a server: no TIFF/PSD/EPS from strangers)."""
    return normalise_image(image_file_pixels(path, p, max_pixels, formats), p)


def image_file_pixels(path, p: dict, max_pixels: int | None = None,
                      formats: tuple[str, ...] | None = None) -> np.ndarray:
    """A png/jpg's pixels at the model's size, not yet normalised (see image_pixels)."""
    from PIL import Image  # Pillow is a light, torch-free dependency of the runtime

    try:
        with Image.open(path, formats=formats) as im:
            if max_pixels and im.size[0] * im.size[1] > max_pixels:
                raise ValueError(f"image too large ({im.size[0]}x{im.size[1]} pixels, at most {max_pixels:,})")
            mode = "RGB" if int(p.get("channels", 1)) == 3 else "L"
            if p.get("alpha") == "white" and (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
            if im.mode == "F" and not np.isfinite(np.asarray(im)).all():  # a float TIFF can hold NaN
                raise ValueError("the image holds non-finite pixels (NaN or infinity)")
            return image_pixels(np.asarray(im.convert(mode)), p)
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
    """Token ids (max_length,) padded with the tokenizer's pad id (0 unless `pad_id` says otherwise:
    a teacher's own tokenizer may pad with 1, as RoBERTa and SigLIP do); `tokenizer` is a `tokenizers.Tokenizer`."""
    if tokenizer is None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(p["tokenizer_json"])
    ids = tokenizer.encode(text).ids[: int(p["max_length"])]
    out = np.full(int(p["max_length"]), int(p.get("pad_id", 0)), dtype=np.int64)
    out[: len(ids)] = ids
    return out
