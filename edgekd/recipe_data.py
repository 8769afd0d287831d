"""The recipe's data section: which dataset, its splits and its preprocessing (edgekd.recipe
re-exports these; a data loader imports them from here or from there)."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from edgekd.schema import Strict

# --------------------------------------------------------------------------- data


class AudioFeatures(Strict):
    sample_rate: int = Field(8000, gt=0, description="Model sample rate; other rates are resampled.")
    seconds: float = Field(1.0, gt=0, description="Clips are zero-padded or cut to this length.")
    n_fft: int = Field(256, gt=0, description="FFT size (and Hann window length) in samples.")
    hop_length: int = Field(128, gt=0, description="Hop between frames in samples.")
    n_mels: int = Field(40, gt=0, description="Number of HTK mel bands.")
    fmin: float = Field(0.0, ge=0, description="Lowest mel frequency in Hz.")
    fmax: float | None = Field(None, gt=0, description="Highest mel frequency in Hz (default: Nyquist).")

    @model_validator(mode="after")
    def _band(self):
        top = self.fmax if self.fmax is not None else self.sample_rate / 2
        if not self.fmin < top <= self.sample_rate / 2:
            raise ValueError(f"need fmin < fmax <= sample_rate / 2 ({self.sample_rate / 2:g} Hz)")
        if self.n_fft > round(self.seconds * self.sample_rate):
            raise ValueError("n_fft is longer than the clip (seconds * sample_rate)")
        return self

class AVDigitsData(Strict):
    """FSDD spoken digits paired with MNIST images of the same digit."""

    name: Literal["avdigits"] = "avdigits"
    split: Literal["speaker", "official"] = Field(
        "speaker", description="'speaker': test_speakers are held out; 'official': takes 0-4 are test."
    )
    test_speakers: list[str] = Field(["lucas", "yweweler"], min_length=1, description="Held-out speakers.")
    image_pca_variance: float | None = Field(
        0.7, gt=0, le=1, description="Degrade images to the PCA components explaining this fraction "
        "of the train-image variance (null: clean images)."
    )
    pairings: int = Field(4, ge=1, description="Distinct seeded train pairings, cycled over epochs.")
    test_images_per_class: int = Field(100, ge=1, description="MNIST images per digit kept for test only.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Train clips per digit held out for validation (train speakers).")
    val_speakers: list[str] = Field(
        [], description="Speakers held out for validation instead of val_fraction (a proxy for the unseen test "
        "speakers; fewer speakers are left to train on).")
    val_images_per_class: int = Field(50, ge=1, description="MNIST train images per digit kept for validation only.")
    audio: AudioFeatures = AudioFeatures()


# data fields that change how fast, not what: no stage goes stale and the fingerprint ignores them
MACHINE_ONLY = ("workers", "shard_rows")


class FolderData(Strict):
    """A user's folder: metadata.jsonl or metadata.csv, one row per sample."""

    name: Literal["folder"] = "folder"
    path: str = Field(description="The dataset folder (relative paths resolve against the data root).")
    metadata: str | None = Field(None, description="Metadata file name (default: metadata.jsonl, then .csv).")
    label: str = Field("label", description="Column holding the class label.")
    modalities: dict[str, Literal["image", "audio", "text", "vector"]] = Field(
        min_length=1, description="Column name -> modality type."
    )
    split_column: str = Field("split", description="Optional column with train/val/test.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Rows held out of training for model selection (stages report val and "
        "test accuracy): without a split column a seeded stratified share of all rows; with one that has no val "
        "rows, a seeded share of each class's train rows.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Used when there is no split column.")
    image_size: int = Field(28, gt=0, description="Images are resized to image_size x image_size.")
    image_mode: Literal["gray", "rgb"] = Field(
        "gray", description="gray: one channel (luma); rgb: three channels, normalised per channel, transparent "
        "pixels composited on white. The bundle and `edgekd predict` follow.")
    text_max_length: int = Field(32, gt=0, description="Token ids per text, padded or cut.")
    text_vocab_size: int = Field(2000, ge=16, description="WordPiece vocabulary trained on train texts.")
    audio: AudioFeatures = AudioFeatures()
    workers: int | None = Field(
        None, ge=1, description="Processes that decode the data store and run teacher processors in loader "
        "workers (default: every core). Changes no result, so no stage goes stale.")
    shard_rows: int = Field(
        1024, ge=1, description="Rows per data-store shard: the unit of parallel decoding and of resuming a "
        "killed build. Changes no result.")

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


DataConfig = Annotated[Union[AVDigitsData, FolderData], Field(discriminator="name")]
