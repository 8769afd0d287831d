"""The numpy preprocessing a device runs reproduces the training inputs exactly, and the log-mel
matches transformers.audio_utils with the same parameters."""
import numpy as np
import pytest
from PIL import Image

from edgekd.data.features import audio_params
from edgekd.recipe import AudioFeatures, AVDigitsData
from edgekd.runtime import preprocess as pp


def _reference_log_mel(samples, p):
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    filters = mel_filter_bank(num_frequency_bins=p["n_fft"] // 2 + 1, num_mel_filters=p["n_mels"],
                              min_frequency=p["fmin"], max_frequency=p["fmax"], sampling_rate=p["sample_rate"],
                              mel_scale="htk")
    spec = spectrogram(pp.fit_length(samples, p["num_samples"]).astype(np.float64),
                       window_function(p["n_fft"], "hann", periodic=True), frame_length=p["n_fft"],
                       hop_length=p["hop_length"], power=2.0, center=True, pad_mode="reflect", mel_filters=filters,
                       mel_floor=p["mel_floor"], log_mel="log10", dtype=np.float64)
    return ((spec.T - p["mean"]) / p["std"]).astype(np.float32)


@pytest.mark.parametrize("cfg", [AudioFeatures(), AudioFeatures(n_fft=400, hop_length=160, n_mels=64,
                                                                  sample_rate=16000, fmin=20.0)])
def test_numpy_log_mel_matches_transformers_audio_utils(cfg):
    rng = np.random.default_rng(0)
    p = audio_params(cfg)
    t = np.arange(int(0.7 * cfg.sample_rate)) / cfg.sample_rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.shape)).astype(np.float32)
    ours, ref = pp.log_mel(samples, p), _reference_log_mel(samples, p)
    assert ours.shape == ref.shape == (1 + p["num_samples"] // p["hop_length"], cfg.n_mels)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_real_wav_log_mel_matches_reference(data_dir):
    wav = data_dir / "fsdd" / "recordings" / "3_theo_7.wav"
    samples, rate = pp.read_audio(wav)
    assert rate == 8000 and samples.dtype == np.float32 and np.abs(samples).max() <= 1.0
    p = audio_params(AudioFeatures())
    np.testing.assert_allclose(pp.log_mel(samples, p), _reference_log_mel(samples, p), atol=1e-4)


def test_avdigits_training_inputs_equal_device_preprocessing_of_raw_files(data_dir, tmp_path):
    from edgekd.data.avdigits import AVDigits

    av = AVDigits(AVDigitsData(), data_dir, seed=0)
    test = av.split("test")
    rows = av.pairing("test")
    for i in (0, 123, 999):
        clip_index = int(np.flatnonzero([n.startswith(test.ids[i].split("+")[0] + ".") for n in av._names])[0])
        from_wav = pp.audio_from_file(av.clip_path(data_dir, clip_index), av.preprocess["audio"])
        np.testing.assert_allclose(from_wav, test.inputs["audio"][i], atol=1e-5)
        png = tmp_path / f"{i}.png"
        Image.fromarray(av.raw_image(rows[i])).save(png)  # what a camera-side device would hand over
        np.testing.assert_allclose(pp.image_from_file(png, av.preprocess["image"]), test.inputs["image"][i], atol=1e-6)


def test_image_resize_and_rgb_to_gray():
    p = {"size": 4, "mean": 0.0, "std": 1.0}
    rgb = np.full((8, 8, 3), 255, dtype=np.uint8)
    out = pp.image_array(rgb, p)
    assert out.shape == (1, 4, 4) and np.allclose(out, 1.0)


def test_resample_and_fit_length():
    x = np.sin(np.linspace(0, 20, 16000)).astype(np.float32)
    y = pp.resample(x, 16000, 8000)
    assert y.shape == (8000,)
    assert pp.fit_length(y, 100).shape == (100,) and pp.fit_length(y[:10], 100)[10:].sum() == 0


def test_vector_shape_error():
    with pytest.raises(ValueError, match="expected a vector of 3"):
        pp.vector_array([1, 2], {"mean": [0, 0, 0], "std": [1, 1, 1]})


# --------------------------------------------------------------------------- audio formats (libsndfile)


def _sine(rate: int = 8000, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt, subtype, atol", [
    ("WAV", "PCM_16", 1 / 32768), ("WAV", "PCM_24", 1 / 2**23), ("WAV", "PCM_32", 1e-7), ("WAV", "PCM_U8", 1 / 128),
    ("WAV", "FLOAT", 0.0), ("WAV", "DOUBLE", 1e-7), ("FLAC", "PCM_16", 1 / 32768), ("FLAC", "PCM_24", 1 / 2**23),
    ("OGG", "VORBIS", 0.05)])
def test_audio_formats_users_have_are_read(tmp_path, fmt, subtype, atol):
    """Measured on main: a 24-bit PCM wav ("unsupported wav sample width 3 bytes") and a 32-bit float
    wav ("unknown format: 3") were refused, at training and at predict."""
    import soundfile as sf

    x = _sine()
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(str(path), np.stack([x, x], axis=1), 8000, format=fmt, subtype=subtype)  # stereo: averaged to mono
    samples, rate = pp.read_audio(path)
    assert rate == 8000 and samples.dtype == np.float32 and samples.shape == x.shape
    np.testing.assert_allclose(samples, x, atol=atol + 1e-7)


def test_16_bit_pcm_reads_exactly_as_the_wave_module_did(tmp_path):
    """FSDD and every existing 16-bit dataset keep bit-identical features."""
    import wave

    x = (_sine() * 32767).astype("<i2")
    path = tmp_path / "c.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(x.tobytes())
    samples, _ = pp.read_audio(path)
    np.testing.assert_array_equal(samples, x.astype(np.float32) / 32768.0)


@pytest.mark.parametrize("content, needle", [(b"RIFF\x00\x00\x00\x00WAVEfmt ", "readable formats"),
                                             (b"not audio at all", "readable formats"), (b"", "readable formats")])
def test_unreadable_audio_is_a_value_error_naming_the_formats(tmp_path, content, needle):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=needle):
        pp.read_audio(path)


# --------------------------------------------------------------------------- RGB images


def test_rgb_images_keep_their_colour_per_channel(tmp_path):
    pixels = np.zeros((10, 12, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 2] = 255, 51  # red with a little blue
    Image.fromarray(pixels).save(tmp_path / "c.png")
    p = {"kind": "image", "size": 8, "channels": 3, "alpha": "white", "mean": [0.5, 0.0, 0.1], "std": [0.5, 1.0, 0.1]}
    x = pp.image_from_file(tmp_path / "c.png", p)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[1], 0.0, atol=1e-6)
    np.testing.assert_allclose(x[2], 1.0, atol=1e-5)
    gray = {"kind": "image", "size": 8, "mean": 0.0, "std": 1.0}  # an older bundle's parameters: one channel
    assert pp.image_from_file(tmp_path / "c.png", gray).shape == (1, 8, 8)


def test_transparent_pixels_are_white_in_rgb_mode(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    rgba[0, 0] = (0, 0, 0, 255)  # one opaque black pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    p = {"kind": "image", "size": 4, "channels": 3, "alpha": "white", "mean": [0.0] * 3, "std": [1.0] * 3}
    x = pp.image_from_file(tmp_path / "t.png", p)
    assert x[:, 0, 0].tolist() == [0.0, 0.0, 0.0] and np.allclose(x[:, 1:, :], 1.0)


def _old_resize(img: np.ndarray, size: int) -> np.ndarray:  # the formula before it gathered corners directly
    h, w = img.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def test_resizing_a_very_wide_image_takes_memory_of_the_output_not_the_input_rows():
    import tracemalloc

    rng = np.random.default_rng(0)
    for shape in [(17, 23), (5, 300), (300, 5), (1, 1000)]:  # the same numbers as before, bit for bit
        img = rng.integers(0, 256, shape).astype(np.float32)
        np.testing.assert_array_equal(pp._resize_bilinear(img, 28), _old_resize(img, 28))
    wide = np.zeros((1, 2**21), np.float32)  # 8 MB; copying 28 of its rows took 235 MB
    tracemalloc.start()
    try:
        pp._resize_bilinear(wide, 28)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"{peak / 2**20:.0f} MB for a 28 x 28 output"
