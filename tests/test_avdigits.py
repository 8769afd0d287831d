"""The built-in avdigits dataset on the real FSDD + MNIST files."""
import numpy as np
import pytest

from edgekd.data.avdigits import AVDigits
from edgekd.errors import DataError
from edgekd.recipe import AVDigitsData


@pytest.fixture(scope="module")
def av():
    return AVDigits(AVDigitsData(), _module_data_dir(), seed=0)


def _module_data_dir():
    from conftest import real_data_root

    return real_data_root()


def test_speaker_held_out_split_has_1000_test_clips_from_unseen_speakers(av):
    test, train, val = av.split("test"), av.split("train"), av.split("val")
    assert len(test) == 1000 and len(train) == 1800 and len(val) == 200  # val: 10% of each digit's train clips
    test_speakers = {i.split("_")[1] for i in test.ids}
    train_speakers = {i.split("_")[1] for i in train.ids}
    assert test_speakers == {"lucas", "yweweler"} and not (test_speakers & train_speakers)
    assert {i.split("_")[1] for i in val.ids} <= train_speakers  # carved from the train speakers' clips
    assert not {i.split("+")[0] for i in val.ids} & {i.split("+")[0] for i in train.ids}
    assert np.bincount(test.labels).tolist() == [100] * 10 and np.bincount(val.labels).tolist() == [20] * 10


def test_pairs_share_the_digit_and_train_test_images_are_disjoint(av):
    for split in ("train", "test"):
        rows = av.pairing(split, 0)
        _, digits, _ = _mnist(av)
        assert (digits[rows] == av.split(split).labels).all()
    train_imgs = set(np.concatenate([av.pairing("train", p) for p in range(av.num_pairings)]).tolist())
    assert not train_imgs & set(av.pairing("test").tolist())
    val_imgs = set(av.pairing("val").tolist())  # its own image pool: disjoint from train and test
    assert val_imgs and not val_imgs & train_imgs and not val_imgs & set(av.pairing("test").tolist())


def _mnist(av):
    from edgekd.data.avdigits import _read_mnist

    return _read_mnist.__wrapped__(str(_module_data_dir() / "mnist5k" / "mnist_5k.csv.gz"))


def test_pairings_are_seeded_and_differ_between_epochs(av):
    assert (av.pairing("train", 1) == av.pairing("train", 1)).all()
    assert (av.pairing("train", 0) != av.pairing("train", 1)).mean() > 0.9
    assert (av.pairing("test", 0) == av.pairing("test", 3)).all()  # evaluation never re-pairs
    other_seed = AVDigits(AVDigitsData(), _module_data_dir(), seed=1)
    assert (other_seed.pairing("train", 0) != av.pairing("train", 0)).mean() > 0.9


def test_pca_degradation_is_fitted_on_train_images_only(av):
    assert av.pca_components is not None and 2 < av.pca_components < 60
    clean = AVDigits(AVDigitsData(image_pca_variance=None), _module_data_dir(), seed=0)
    assert clean.pca_components is None
    # degraded test images lie in the span fitted on train images: changing a test image's pixels
    # would not change the basis, so the number of kept components depends on train only
    assert av.preprocess["image"]["std"] < clean.preprocess["image"]["std"]


def test_official_split_and_bad_speaker(av):
    official = AVDigits(AVDigitsData(split="official"), _module_data_dir(), seed=0)
    assert len(official.split("test")) == 300  # takes 0-4 of 6 speakers x 10 digits
    with pytest.raises(DataError, match="unknown speaker"):
        AVDigits(AVDigitsData(test_speakers=["theodore"]), _module_data_dir(), seed=0)


def test_audio_normalisation_uses_train_statistics(av):
    train = av.split("train").inputs["audio"]
    assert abs(float(train.mean())) < 1e-3 and abs(float(train.std()) - 1) < 1e-3
    assert av.split("test").inputs["audio"].shape[1:] == (63, 40)


def test_missing_files_name_the_fetch_command(tmp_path):
    with pytest.raises(DataError, match="edgekd data fetch avdigits"):
        AVDigits(AVDigitsData(), tmp_path, seed=0)


def test_validation_speakers_are_held_out_like_the_test_speakers(av):
    held = AVDigits(AVDigitsData(val_speakers=["theo"]), _module_data_dir(), seed=0)
    train, val, test = held.split("train"), held.split("val"), held.split("test")
    speakers = {name: {i.split("_")[1] for i in s.ids} for name, s in (("train", train), ("val", val), ("test", test))}
    assert speakers["val"] == {"theo"} and "theo" not in speakers["train"] and speakers["test"] == {"lucas", "yweweler"}
    assert len(val) == 500 and len(train) + len(val) + len(test) == 3000
    assert held.fingerprint() != av.fingerprint()
    assert AVDigits(AVDigitsData(val_speakers=[]), _module_data_dir(), seed=0).fingerprint() == av.fingerprint()
    for bad, why in ((["theodore"], "unknown speaker"), (["lucas"], "other than test_speakers"),
                     (["george", "jackson", "nicolas", "theo"], "leave one to train on")):
        with pytest.raises(DataError, match=why):
            AVDigits(AVDigitsData(val_speakers=bad), _module_data_dir(), seed=0)
