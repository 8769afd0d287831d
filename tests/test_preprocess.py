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
    samples, rate = pp.read_wav(wav)
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
        from_wav = pp.audio_from_wav(av.clip_path(data_dir, clip_index), av.preprocess["audio"])
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
