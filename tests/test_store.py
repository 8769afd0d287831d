"""The data store: decoded once, reused, resumable after a kill, safe on a full disk; Parquet and
save_to_disk sources; every row equal to the device's preprocessing of its raw file."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_folder_data import ALL, make_rows, write_jsonl, write_png

from edgekd.data import decode, store
from edgekd.data.folder import load_folder
from edgekd.errors import DataError, EdgekdError
from edgekd.recipe import FolderData
from edgekd.runtime import preprocess as pp


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A store folder of this test's own."""
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "store"


def load(folder: Path, **kw) -> object:
    cfg = FolderData(path=str(folder), modalities=kw.pop("modalities", ALL), image_size=16, text_max_length=6,
                     workers=kw.pop("workers", 1), **kw)
    return load_folder(cfg, folder.parent, seed=0)


def test_every_row_equals_the_device_preprocessing_of_its_raw_file(tmp_path, cache):
    folder = tmp_path / "ds"
    rows = make_rows(folder)
    write_jsonl(folder, rows)
    ds = load(folder, image_mode="rgb")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(ds.preprocess["txt"]["tokenizer_json"])
    for split in ("train", "val", "test"):
        s = ds.split(split)
        for j, i in enumerate(ds.split_rows(split)):
            r = rows[i]
            np.testing.assert_array_equal(s.inputs["img"][j], pp.image_from_file(folder / r["img"], ds.preprocess["img"]))
            np.testing.assert_array_equal(s.inputs["snd"][j], pp.audio_from_file(folder / r["snd"], ds.preprocess["snd"]))
            np.testing.assert_array_equal(s.inputs["vec"][j], pp.vector_array(r["vec"], ds.preprocess["vec"]))
            np.testing.assert_array_equal(s.inputs["txt"][j], pp.text_ids(r["txt"], ds.preprocess["txt"], tok))


def test_a_second_load_decodes_nothing_and_a_touched_file_only_its_shard(tmp_path, cache, monkeypatch):
    folder = tmp_path / "ds"
    write_jsonl(folder, make_rows(folder))
    first = load(folder, shard_rows=4)
    decoded = []
    real = decode.shard
    monkeypatch.setattr(decode, "shard", lambda job: decoded.append(job["shard"]) or real(job))
    again = load(folder, shard_rows=4)
    assert decoded == [] and again.fingerprint() == first.fingerprint()
    write_png(folder / "img" / "5.png", 99, size=(20, 18))  # another image, same name: rows 4..7 are shard 1
    os.utime(folder / "img" / "5.png", ns=(1, 1))
    changed = load(folder, shard_rows=4)
    assert decoded == [1] and changed.fingerprint() != first.fingerprint()


def test_verify_finds_an_edit_that_kept_size_and_mtime(tmp_path, cache, capsys):
    from conftest import cli

    folder = tmp_path / "ds"
    write_jsonl(folder, make_rows(folder))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndata: {{name: folder, path: {folder}, modalities: {{img: image, txt: text}}, "
                      "image_size: 16, workers: 1}\nteacher: {name: mm_transformer}\nstudent: {name: fusion_lean}\n")
    code, out, err = cli(capsys, "data", "prepare", recipe)
    assert code == 0 and "12 rows" in out, err
    code, out, _ = cli(capsys, "data", "verify", recipe)
    assert code == 0 and "all files match" in out
    f = folder / "img" / "2.png"
    st, body = f.stat(), bytearray(f.read_bytes())
    body[-5] ^= 0xFF  # same size; mtime put back
    f.write_bytes(bytes(body))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, _, err = cli(capsys, "data", "verify", recipe)
    assert code == 1 and "img/2.png" in err and len(err.strip().splitlines()) == 1
    assert not list(cache.glob("*/index.json"))  # removed: the next run decodes again


def test_parquet_with_image_bytes_equals_the_same_rows_as_files(tmp_path, cache):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "ds"
    rows = make_rows(folder)
    write_jsonl(folder, rows)
    mods = {"img": "image", "txt": "text", "vec": "vector"}
    want = load(folder, modalities=mods)
    hub = tmp_path / "hub"
    hub.mkdir()
    table = pa.table({"img": [{"bytes": (folder / r["img"]).read_bytes(), "path": r["img"]} for r in rows],
                      "txt": [r["txt"] for r in rows], "vec": [r["vec"] for r in rows],
                      "label": [r["label"] for r in rows], "split": [r["split"] for r in rows]})
    pq.write_table(table, hub / "metadata.parquet")
    got = load(hub, modalities=mods)
    for s in ("train", "test"):
        for m in mods:
            np.testing.assert_array_equal(np.asarray(got.split(s).inputs[m]), np.asarray(want.split(s).inputs[m]))
    assert got.files("img", [0])[0].read() == (folder / rows[0]["img"]).read_bytes()  # what a teacher processor reads
    bad = table.set_column(0, "img", pa.array([{"bytes": b"not a png", "path": None}] * len(rows),
                                              table.schema.field("img").type))
    pq.write_table(bad, hub / "metadata.parquet")
    with pytest.raises(DataError, match=r"metadata.parquet row 1 \(line 1\): the 'img' bytes are not a readable image"):
        load(hub, modalities=mods)


def test_a_save_to_disk_directory_with_class_labels_and_splits(tmp_path, cache):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    rows = make_rows(folder)
    write_jsonl(folder, rows)
    want = load(folder, modalities={"img": "image", "txt": "text"})
    features = datasets.Features({"img": datasets.Image(), "txt": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["a", "b"])})

    def part(sel):
        return datasets.Dataset.from_dict({"img": [str(folder / rows[i]["img"]) for i in sel],
                                           "txt": [rows[i]["txt"] for i in sel],
                                           "label": ["ab".index(rows[i]["label"]) for i in sel]}, features=features)
    out = tmp_path / "saved"
    datasets.DatasetDict({"train": part(range(8)), "validation": part(range(8, 10)),
                          "test": part(range(10, 12))}).save_to_disk(str(out))
    got = load(out, modalities={"img": "image", "txt": "text"})
    assert got.classes == ["a", "b"] and list(got.split("test").labels) == list(want.split("test").labels)
    assert len(got.split("val")) == 2
    np.testing.assert_array_equal(np.asarray(got.split("train").inputs["img"]), np.asarray(want.split("train").inputs["img"]))


def test_a_full_disk_is_one_line_and_leaves_no_half_file(tmp_path, cache, monkeypatch):
    folder = tmp_path / "ds"
    write_jsonl(folder, make_rows(folder))
    real = np.save

    def full(f, arr, **kw):  # the disk fills while a shard's images are written
        if ".img.npy.tmp" in str(getattr(f, "name", "")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, arr, **kw)
    monkeypatch.setattr(np, "save", full)
    with pytest.raises(EdgekdError, match="No space left on device; free some space") as e:
        load(folder)
    assert "\n" not in str(e.value)
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]  # no temp file, no half shard
    assert not list(cache.glob("*/index.json")) and not list(cache.glob("*.partial/*.done"))
    monkeypatch.setattr(np, "save", real)
    assert len(load(folder).split("train")) == 8  # space again: the build continues


def test_a_store_that_cannot_fit_is_refused_up_front(tmp_path, cache, monkeypatch):
    folder = tmp_path / "ds"
    write_jsonl(folder, make_rows(folder))
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(DataError, match=r"the data store needs about .* GB for 12 rows .* only 0.00 GB are free"):
        load(folder)
    assert not list(cache.glob("*.partial/*.done"))


def test_a_build_killed_mid_way_resumes_and_equals_a_clean_build(tmp_path, cache):
    folder = tmp_path / "ds"
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(600):
        write_png(folder / "img" / f"{i}.png", i, size=(256, 256))
        rows.append({"img": f"img/{i}.png", "label": "ab"[i % 2]})
    write_jsonl(folder, rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndata: {{name: folder, path: {folder}, modalities: {{img: image}}, image_size: 64, "
                      "shard_rows: 20, workers: 1}\nteacher: {name: mm_transformer}\nstudent: {name: fusion_lean}\n")
    env = {**os.environ, "EDGEKD_CACHE": str(cache.parent)}
    cmd = [sys.executable, "-m", "edgekd", "data", "prepare", str(recipe)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("*.partial/*.done"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(cache.glob("*.partial/*.done")))
    assert 3 <= done < 30, "the build was not killed mid-way"
    out = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"resuming the data store: {done}/30 shards already decoded" in out.stdout
    resumed = load_folder(FolderData(path=str(folder), modalities={"img": "image"}, image_size=64, shard_rows=20),
                          tmp_path, 0)
    (key,) = [p for p in cache.iterdir() if p.is_dir()]
    clean = tmp_path / "clean"
    env["EDGEKD_CACHE"] = str(clean)
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    for f in sorted(key.glob("*.npy")):
        np.testing.assert_array_equal(np.load(f), np.load(clean / "store" / key.name / f.name), err_msg=f.name)
    assert resumed.split("train").inputs["img"].shape == (480, 1, 64, 64)


def test_parallel_build_equals_one_worker(tmp_path, cache):
    folder = tmp_path / "ds"
    write_jsonl(folder, make_rows(folder, n=24))
    one = load(folder, shard_rows=5, workers=1)
    arrays = {m: np.asarray(one.split("train").inputs[m]) for m in ("img", "snd")}
    for p in cache.iterdir():
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
    two = load(folder, shard_rows=5, workers=2)
    assert json.loads((two.store.path / "index.json").read_text())["workers"] == 2
    for m, x in arrays.items():
        np.testing.assert_array_equal(np.asarray(two.split("train").inputs[m]), x)


def test_doctor_reports_the_store_missing_whole_stale_partial_and_corrupt(tmp_path, cache):
    from edgekd.data.folder import store_state

    folder = tmp_path / "ds"
    write_jsonl(folder, make_rows(folder))
    cfg = FolderData(path=str(folder), modalities=ALL, image_size=16, workers=1, shard_rows=4)
    assert store_state(cfg, tmp_path)[0] == "note" and "not built yet" in store_state(cfg, tmp_path)[1]
    ds = load_folder(cfg, tmp_path, 0)
    level, finding = store_state(cfg, tmp_path)
    assert level == "note" and "complete, 12 rows" in finding
    os.utime(folder / "img" / "0.png", ns=(5, 5))
    assert store_state(cfg, tmp_path)[0] == "warning"
    load_folder(cfg, tmp_path, 0)  # re-decodes that shard
    np.save(ds.store.path / "00001.img.npy", np.zeros((3, 2), np.float32))
    level, finding = store_state(cfg, tmp_path)
    assert level == "error" and "00001.img.npy holds (3, 2)" in finding
    ds.store.path.rename(ds.store.path.with_name(ds.store.path.name + ".partial"))
    level, finding = store_state(cfg, tmp_path)
    assert level == "warning" and "cut short" in finding


def test_a_real_disk_too_small_for_the_store_is_refused_in_one_line(tmp_path, capsys):
    from conftest import cli
    from test_run_safety import tmpfs

    folder = tmp_path / "ds"
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(100):
        write_png(folder / "img" / f"{i}.png", i)
        rows.append({"img": f"img/{i}.png", "label": "ab"[i % 2]})
    write_jsonl(folder, rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndata: {{name: folder, path: {folder}, modalities: {{img: image}}, image_size: 64, "
                      "image_mode: rgb, workers: 1}\nteacher: {name: mm_transformer}\nstudent: {name: fusion_lean}\n")
    with tmpfs(tmp_path / "small", "2m") as disk:  # 100 rows x 49 KB do not fit
        os.environ["EDGEKD_CACHE"], before = str(disk), os.environ.get("EDGEKD_CACHE")
        try:
            code, _, err = cli(capsys, "data", "prepare", recipe)
        finally:
            os.environ["EDGEKD_CACHE"] = before
        assert code == 1 and "the data store needs about 0.01 GB for 100 rows" in err and "EDGEKD_CACHE" in err
        assert len(err.strip().splitlines()) == 1
        assert not list(disk.rglob("*.done")) and not list(disk.rglob("*.npy.tmp*"))
