"""Folder datasets: real png/wav/text/vector files written here, loaded through edgekd.data.folder."""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgekd.data.folder import load_folder
from edgekd.errors import DataError
from edgekd.recipe import FolderData
from edgekd.runtime import preprocess as pp

ALL = {"img": "image", "snd": "audio", "txt": "text", "vec": "vector"}
WORDS = ["red", "green", "blue", "small", "large", "round", "square", "bright", "dark"]


def write_png(path: Path, seed: int, size=(20, 18), mode="RGB") -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def write_wav(path: Path, freq: float, rate=8000, seconds=0.3) -> None:
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def make_rows(folder: Path, n: int = 12, split=True) -> list[dict]:
    """n rows alternating classes a/b, with real files; the first 8 train, then 2 val, 2 test."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "snd").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        label = "ab"[i % 2]
        write_png(folder / "img" / f"{i}.png", i)
        write_wav(folder / "snd" / f"{i}.wav", 300 + 100 * i, rate=16000 if i == 3 else 8000)
        row = {
            "label": label, "img": f"img/{i}.png", "snd": f"snd/{i}.wav",
            "txt": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)).title(),
            "vec": [float(i), 10.0 * (i % 2), 1.0],
        }
        if split:
            row["split"] = "train" if i < 8 else "val" if i < 10 else "test"
        rows.append(row)
    return rows


def write_jsonl(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_csv(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})


def cfg(folder: Path, modalities=None, **kw) -> FolderData:
    audio = {"seconds": 0.5, "n_mels": 16}
    return FolderData(path=str(folder), modalities=modalities or ALL, image_size=16, text_max_length=8,
                      audio=audio, **kw)


def load(folder: Path, seed=0, **kw):
    return load_folder(cfg(folder, **kw), folder.parent, seed)


def error(folder: Path, **kw) -> str:
    with pytest.raises(DataError) as e:
        load(folder, **kw)
    return str(e.value)


# --------------------------------------------------------------------------- happy paths


def test_jsonl_all_modalities_shapes_split_column_and_runtime_parity(tmp_path):
    folder = tmp_path / "ds"
    rows = make_rows(folder)
    write_jsonl(folder, rows)
    ds = load(folder)

    assert ds.name == "ds" and ds.classes == ["a", "b"] and ds.num_pairings == 1
    spec = ds.modalities
    assert (spec["img"].kind, spec["img"].shape, spec["img"].dtype) == ("image", (1, 16, 16), "float32")
    assert spec["snd"].shape == (1 + 4000 // 128, 16)  # 0.5 s at 8 kHz, hop 128, reflect-padded frames
    assert (spec["txt"].shape, spec["txt"].dtype) == ((8,), "int64") and spec["txt"].vocab_size > 2
    assert spec["vec"].shape == (3,)
    json.dumps(ds.preprocess)  # goes into preprocess.json as is

    tr, va, te = ds.split("train"), ds.split("val"), ds.split("test")
    assert tr.ids == [f"row{i}" for i in range(1, 9)] and va.ids == ["row9", "row10"] and te.ids == ["row11", "row12"]
    assert tr.labels.dtype == np.int64 and tr.labels.tolist() == [0, 1] * 4
    for name, s in spec.items():
        assert tr.inputs[name].shape == (8, *s.shape) and tr.inputs[name].dtype == np.dtype(s.dtype)
    assert ds.has_split("val") and ds.has_split("test")

    # The runtime turns the raw files into the same numbers, from the stored parameters alone.
    p = ds.preprocess
    for i, s in [(3, tr), (9, va)]:  # row 4 is the 16 kHz file (resampled)
        j = s.ids.index(f"row{i + 1}")
        np.testing.assert_array_equal(pp.image_from_file(folder / rows[i]["img"], p["img"]), s.inputs["img"][j])
        np.testing.assert_array_equal(pp.audio_from_file(folder / rows[i]["snd"], p["snd"]), s.inputs["snd"][j])
        np.testing.assert_array_equal(pp.text_ids(rows[i]["txt"], p["txt"]), s.inputs["txt"][j])
        np.testing.assert_array_equal(pp.vector_array(rows[i]["vec"], p["vec"]), s.inputs["vec"][j])


def test_preprocessing_is_fitted_on_train_only(tmp_path):
    folder = tmp_path / "ds"
    rows = make_rows(folder)
    write_jsonl(folder, rows)
    ds = load(folder)
    train_vecs = np.array([r["vec"] for r in rows[:8]])
    np.testing.assert_allclose(ds.preprocess["vec"]["mean"], train_vecs.mean(axis=0))
    np.testing.assert_allclose(ds.preprocess["vec"]["std"], np.maximum(train_vecs.std(axis=0), 1e-6))
    assert ds.preprocess["vec"]["mean"][0] == pytest.approx(3.5)  # all 12 rows would give 5.5
    assert ds.preprocess["vec"]["std"][2] == pytest.approx(1e-6)  # constant column: floored std
    tr = {m: np.asarray(x) for m, x in ds.split("train").inputs.items()}  # lazy columns, read whole here
    for m in ("img", "snd"):
        assert abs(tr[m].mean()) < 1e-4 and tr[m].std() == pytest.approx(1.0, abs=1e-3)
    assert abs(np.asarray(ds.split("test").inputs["img"]).mean()) > 1e-4  # test pixels were not part of the fit
    a = ds.preprocess["snd"]
    assert (a["num_samples"], a["fmax"], a["mel_floor"], a["kind"]) == (4000, 4000.0, 1e-10, "audio")


def test_csv_variant_with_json_vectors_and_no_split_column(tmp_path):
    folder = tmp_path / "ds"
    write_csv(folder, make_rows(folder, n=20, split=False))
    ds = load(folder, val_fraction=0.1)
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 14, "val": 2, "test": 4}  # per class of 10: 2 test, 1 val, 7 train
    assert ds.split("train").inputs["vec"].shape == (14, 3)
    assert ds.split("test").inputs["txt"].dtype == np.int64


def test_seeded_stratified_split_is_deterministic_and_stratified(tmp_path):
    folder = tmp_path / "vec"
    labels = ["x"] * 10 + ["y"] * 10 + ["z"] * 2 + ["solo"]
    write_jsonl(folder, [{"label": c, "v": [i, i % 3]} for i, c in enumerate(labels)])
    mods = {"v": "vector"}
    a, b, c = (load(folder, seed, modalities=mods, val_fraction=0.1) for seed in (1, 1, 2))
    assert all(a.split(s).ids == b.split(s).ids for s in ("train", "val", "test"))
    assert any(a.split(s).ids != c.split(s).ids for s in ("train", "val", "test"))
    for name, (n_test, n_val, n_train) in {"x": (2, 1, 7), "y": (2, 1, 7), "z": (1, 0, 1), "solo": (0, 0, 1)}.items():
        k = a.classes.index(name)
        counts = [int((a.split(s).labels == k).sum()) for s in ("test", "val", "train")]
        assert counts == [n_test, n_val, n_train], name
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()  # the seed determines the arrays


def test_text_tokenizer_pad_zero_lowercase_and_deterministic(tmp_path):
    folder = tmp_path / "txt"
    texts = ["Red Apple", "red apple pie", "green pear", "Green pears!", "blue sky", "blue skies"]
    write_jsonl(folder, [{"label": t.split()[0].lower(), "t": t, "split": "train"} for t in texts]
                + [{"label": "red", "t": "REDDER apples", "split": "test"}])
    ds = load(folder, modalities={"t": "text"})
    from tokenizers import Tokenizer

    p = ds.preprocess["t"]
    tok = Tokenizer.from_str(p["tokenizer_json"])
    assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("[UNK]") == 1
    assert ds.modalities["t"].vocab_size == tok.get_vocab_size()
    ids = ds.split("train").inputs["t"]
    assert ids[0].tolist()[2:] == [0] * 6 and (ids[0][:2] > 1).all()  # two words, then padding
    np.testing.assert_array_equal(pp.text_ids("RED APPLE", p), ids[0])  # lowercased
    unseen = tok.encode("redder apples").tokens
    assert "[UNK]" not in unseen and unseen[0] == "red"  # unseen words split into known pieces
    assert load(folder, modalities={"t": "text"}).preprocess["t"]["tokenizer_json"] == p["tokenizer_json"]


def test_fingerprint_follows_file_contents_not_location(tmp_path):
    folder = tmp_path / "ds"
    write_jsonl(folder, make_rows(folder))
    mods = {"img": "image"}
    fp = load(folder, modalities=mods).fingerprint()
    moved = tmp_path / "moved" / "ds"
    shutil.copytree(folder, moved)
    assert load(moved, modalities=mods).fingerprint() == fp
    write_png(moved / "img" / "5.png", 99)
    assert load(moved, modalities=mods).fingerprint() != fp


# --------------------------------------------------------------------------- errors


def broken(tmp_path, row: int, **changes) -> Path:
    folder = tmp_path / "ds"
    rows = make_rows(folder, n=4)
    rows[row - 1].update(changes)
    write_jsonl(folder, rows)
    return folder


def test_path_escaping_with_dotdot_is_refused(tmp_path):
    write_png(tmp_path / "outside.png", 0)
    msg = error(broken(tmp_path, 2, img="../outside.png"))
    assert "row 2" in msg and "'../outside.png'" in msg and "leaves the dataset folder" in msg


def test_absolute_path_is_refused(tmp_path):
    write_png(tmp_path / "abs.png", 0)
    msg = error(broken(tmp_path, 3, img=str(tmp_path / "abs.png")))
    assert "row 3" in msg and "abs.png" in msg and "absolute" in msg and "relative" in msg


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    write_png(tmp_path / "secret.png", 0)
    folder = broken(tmp_path, 1, img="img/link.png")
    (folder / "img" / "link.png").symlink_to(tmp_path / "secret.png")
    msg = error(folder)
    assert "row 1" in msg and "img/link.png" in msg and "outside the dataset folder" in msg


def test_missing_file_names_row_and_file(tmp_path):
    msg = error(broken(tmp_path, 4, snd="snd/missing.wav"))
    assert "row 4" in msg and "snd/missing.wav" in msg and "not found" in msg


def test_corrupt_wav_and_png_name_row_and_file(tmp_path):
    folder = broken(tmp_path, 2)
    (folder / "snd" / "1.wav").write_bytes(b"RIFF not really a wav")
    msg = error(folder)
    assert "row 2" in msg and "snd/1.wav" in msg and "not a readable audio file" in msg and "readable formats: wav" in msg
    write_wav(folder / "snd" / "1.wav", 440)
    (folder / "img" / "2.png").write_text("hello")
    msg = error(folder)
    assert "row 3" in msg and "img/2.png" in msg and "not a readable image" in msg


def test_missing_label_column_lists_columns_and_suggests(tmp_path):
    folder = tmp_path / "ds"
    write_jsonl(folder, [{"labels": "a", "vec": [1]}, {"labels": "b", "vec": [2]}])
    msg = error(folder, modalities={"vec": "vector"})
    assert "no column 'label'" in msg and "labels, vec" in msg and "did you mean 'labels'" in msg
    msg = error(folder, modalities={"vector": "vector"}, label="labels")
    assert "no column 'vector'" in msg and "did you mean 'vec'" in msg and "data.modalities" in msg


def test_bad_or_partial_split_column_names_the_row(tmp_path):
    msg = error(broken(tmp_path, 3, split="validation"))
    assert "row 3" in msg and "'validation'" in msg and "train, val or test" in msg
    folder = broken(tmp_path, 2)
    rows = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]
    del rows[1]["split"]
    write_jsonl(folder, rows)
    msg = error(folder)
    assert "row 2" in msg and "other rows have one" in msg


def test_malformed_json_line_and_non_utf8_metadata_name_the_line(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text('{"label": "a", "v": [1]}\n\n{"label": "b", "v": [2]\n')
    msg = error(folder, modalities={"v": "vector"})
    assert "line 3" in msg and "not valid JSON" in msg
    (folder / "metadata.jsonl").write_bytes(b'{"label": "a", "v": [1]}\n{"label": "\xe9", "v": [2]}\n')
    msg = error(folder, modalities={"v": "vector"})
    assert "line 2" in msg and "UTF-8" in msg


def test_empty_or_absent_metadata(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    assert "no metadata.jsonl or metadata.csv" in error(folder, modalities={"v": "vector"})
    (folder / "metadata.jsonl").write_text("\n\n")
    assert "has no rows" in error(folder, modalities={"v": "vector"})
    assert "not found" in error(tmp_path / "nowhere", modalities={"v": "vector"})


def test_ragged_vectors_name_the_row(tmp_path):
    msg = error(broken(tmp_path, 3, vec=[1.0, 2.0]))
    assert "row 3" in msg and "has 2 numbers but row 1 has 3" in msg
    msg = error(broken(tmp_path, 2, vec="[1, oops]"))
    assert "row 2" in msg and "list of finite numbers" in msg


# --------------------------------------------------------------------------- property


@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=40),
    seed=st.integers(-(2**40), 2**40),
    val=st.sampled_from([0.0, 0.1, 0.3]),
    test=st.sampled_from([0.05, 0.2, 0.5]),
)
def test_random_vector_rows_always_split_into_disjoint_covering_stratified_splits(labels, seed, val, test):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "ds"
        write_jsonl(folder, [{"label": c, "v": [i, len(c)]} for i, c in enumerate(labels)])
        ds = load_folder(cfg(folder, {"v": "vector"}, val_fraction=val, test_fraction=test), Path(d), seed)
    ids = {s: ds.split(s).ids for s in ("train", "val", "test")}
    flat = [i for s in ids.values() for i in s]
    assert sorted(flat) == sorted(f"row{i + 1}" for i in range(len(labels))) and len(set(flat)) == len(flat)
    assert set(ds.split("train").labels.tolist()) == set(range(len(ds.classes)))
    for k, c in enumerate(ds.classes):
        if labels.count(c) >= 2:
            assert (ds.split("test").labels == k).sum() >= 1


def test_rgb_mode_fits_per_channel_stats_on_train_and_matches_the_runtime(tmp_path):
    folder = tmp_path / "ds"
    rows = make_rows(folder)
    write_jsonl(folder, rows)
    ds = load(folder, image_mode="rgb")
    assert ds.modalities["img"].shape == (3, 16, 16)
    p = ds.preprocess["img"]
    assert p["channels"] == 3 and len(p["mean"]) == len(p["std"]) == 3 and p["alpha"] == "white"
    train = np.asarray(ds.split("train").inputs["img"]).astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)  # normalised by train statistics
    te = ds.split("test")
    j = te.ids.index("row12")
    np.testing.assert_array_equal(pp.image_from_file(folder / rows[11]["img"], p), te.inputs["img"][j])
    assert load(folder).fingerprint() != ds.fingerprint()  # another input: another cache key


def test_audio_in_other_formats_loads_for_training(tmp_path):
    import soundfile as sf

    folder = tmp_path / "ds"
    rows = make_rows(folder)
    t = np.arange(4000) / 8000
    for i, (fmt, subtype, ext) in enumerate([("WAV", "PCM_24", "wav"), ("WAV", "FLOAT", "wav"), ("FLAC", "PCM_16", "flac"),
                                             ("OGG", "VORBIS", "ogg")]):
        name = f"snd/x{i}.{ext}"
        sf.write(str(folder / name), 0.4 * np.sin(2 * np.pi * (300 + 50 * i) * t), 8000, format=fmt, subtype=subtype)
        rows[i]["snd"] = name
    write_jsonl(folder, rows)
    ds = load(folder)
    tr = ds.split("train")
    for i in range(4):
        j = tr.ids.index(f"row{i + 1}")
        np.testing.assert_array_equal(pp.audio_from_file(folder / rows[i]["snd"], ds.preprocess["snd"]), tr.inputs["snd"][j])


def test_val_fraction_carves_validation_rows_out_of_train_when_the_split_column_has_none(tmp_path):
    folder = tmp_path / "ds"
    rows = make_rows(folder, n=40)
    for i, r in enumerate(rows):
        r["split"] = "test" if i >= 32 else "train"
    write_jsonl(folder, rows)
    ds = load(folder, val_fraction=0.25)
    tr, va, te = (set(ds.split(s).ids) for s in ("train", "val", "test"))
    assert len(va) == 8 and len(tr) == 24 and not (tr & va) and not (va & te)
    assert te == {f"row{i}" for i in range(33, 41)}  # the given test rows stay test
    assert sorted(ds.split("val").labels.tolist()) == [0] * 4 + [1] * 4  # stratified
    assert load(folder, val_fraction=0.25).split("val").ids == ds.split("val").ids  # seeded
    assert not load(folder).has_split("val")
