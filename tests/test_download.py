"""`edgekd data fetch avdigits` against a local HTTP server on 127.0.0.1 serving the real files."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from edgekd.data import download as dl
from edgekd.errors import DataError, DownloadError

TOP = "free-spoken-digit-dataset-1.0.10"


@pytest.fixture(scope="module")
def real_data(data_dir) -> Path:
    return data_dir


@pytest.fixture(scope="module")
def fsdd_archive(real_data, tmp_path_factory) -> Path:
    """The recordings packed the way GitHub's tag archive has them (built once: ~20 MB)."""
    path = tmp_path_factory.mktemp("archive") / dl.FSDD_ARCHIVE
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(real_data / "fsdd" / "recordings", arcname=f"{TOP}/recordings")
        readme = b"FSDD\n"
        info = tarfile.TarInfo(f"{TOP}/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(URL, served folder): an http.server on a random port, shut down after the test."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve(served: Path, real_data: Path, archive: Path | None) -> None:
    shutil.copy(real_data / "mnist5k" / "mnist_5k.csv.gz", served / dl.MNIST_NAME)
    if archive is not None:
        shutil.copy(archive, served / dl.FSDD_ARCHIVE)


def small_archive(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_fetch_from_mirror_verifies_and_skips_the_second_time(server, real_data, fsdd_archive, tmp_path):
    url, served = server
    serve(served, real_data, fsdd_archive)
    root = tmp_path / "data"
    calls = []
    out = dl.fetch_avdigits(root, mirror=url + "/", progress=lambda d, t, label: calls.append((d, t, label)))
    assert out["downloaded"] == ["mnist5k", "fsdd"] and out["skipped"] == []

    mnist = root / "mnist5k" / "mnist_5k.csv.gz"
    assert sha256(mnist) == dl.MNIST_SHA256 == sha256(real_data / "mnist5k" / "mnist_5k.csv.gz")
    wavs = sorted((root / "fsdd" / "recordings").iterdir())
    assert len(wavs) == 3000 and all(p.suffix == ".wav" for p in wavs)
    assert sha256(wavs[0]) == sha256(real_data / "fsdd" / "recordings" / wavs[0].name)
    assert leftovers(root / "fsdd") == ["recordings"] + [f"recordings/{p.name}" for p in wavs]  # no temp files
    assert leftovers(root / "mnist5k") == ["mnist_5k.csv.gz"]
    last = {label: (d, t) for d, t, label in calls}
    assert last["mnist5k"] == (mnist.stat().st_size, mnist.stat().st_size)
    assert last["fsdd"][0] == fsdd_archive.stat().st_size

    info = dl.describe_avdigits_files(root, verify=True)
    assert info["complete"] and info["missing"] == [] and info["fsdd"]["wav_files"] == 3000
    assert dl.require_avdigits(root)["mnist5k"] == mnist

    (served / dl.MNIST_NAME).unlink()  # a second fetch must not touch the network at all
    (served / dl.FSDD_ARCHIVE).unlink()
    again = dl.fetch_avdigits(root, mirror=url)
    assert again["downloaded"] == [] and again["skipped"] == ["mnist5k", "fsdd"]


def test_tampered_mnist_is_refused_and_leaves_nothing(server, real_data, tmp_path):
    url, served = server
    serve(served, real_data, None)
    data = bytearray((served / dl.MNIST_NAME).read_bytes())
    data[1000] ^= 0xFF
    (served / dl.MNIST_NAME).write_bytes(bytes(data))
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as e:
        dl.fetch_avdigits(root, mirror=url)
    msg = str(e.value)
    assert "mnist_5k.csv.gz" in msg and dl.MNIST_SHA256 in msg and hashlib.sha256(data).hexdigest() in msg
    assert not (root / "mnist5k" / "mnist_5k.csv.gz").exists() and leftovers(root) == []


def test_tampered_mnist_does_not_replace_what_is_there(server, real_data, tmp_path):
    url, served = server
    serve(served, real_data, None)
    (served / dl.MNIST_NAME).write_bytes(b"not mnist")
    root = tmp_path / "data"
    (root / "mnist5k").mkdir(parents=True)
    (root / "mnist5k" / "mnist_5k.csv.gz").write_bytes(b"partial old copy")
    with pytest.raises(DownloadError, match="expected"):
        dl.fetch_avdigits(root, mirror=url)
    assert (root / "mnist5k" / "mnist_5k.csv.gz").read_bytes() == b"partial old copy"
    assert leftovers(root) == ["mnist5k", "mnist5k/mnist_5k.csv.gz"]


def test_archive_with_dotdot_member_is_refused(server, real_data, tmp_path):
    url, served = server
    serve(served, real_data, None)
    small_archive(served / dl.FSDD_ARCHIVE, {f"{TOP}/recordings/0_x_0.wav": b"RIFF", f"{TOP}/../evil": b"x", "../evil": b"x"})
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as e:
        dl.fetch_avdigits(root, mirror=url)
    assert "unsafe archive member" in str(e.value) and "../evil" in str(e.value)
    assert not (root / "fsdd").exists() and not list(tmp_path.rglob("evil"))
    assert (root / "mnist5k" / "mnist_5k.csv.gz").is_file()  # the verified file stays


def test_archive_with_wrong_recordings_is_refused(server, real_data, tmp_path):
    url, served = server
    serve(served, real_data, None)
    small_archive(served / dl.FSDD_ARCHIVE, {f"{TOP}/recordings/0_x_0.wav": b"RIFF"})
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as e:
        dl.fetch_avdigits(root, mirror=url)
    assert "over 1 wav files" in str(e.value) and dl.FSDD_DIGEST in str(e.value)
    assert not (root / "fsdd").exists()


def test_network_error_names_url_and_mirror_hint(server, tmp_path):
    url, _ = server  # serves an empty folder: 404
    with pytest.raises(DownloadError) as e:
        dl.fetch_avdigits(tmp_path / "data", mirror=url)
    msg = str(e.value)
    assert f"{url}/mnist_5k.csv.gz" in msg and "404" in msg and "--mirror" in msg
    assert leftovers(tmp_path / "data") == []


def test_describe_and_require_on_an_empty_root(tmp_path):
    info = dl.describe_avdigits_files(tmp_path)
    assert not info["complete"] and info["fsdd"]["wav_files"] == 0
    assert info["missing"] == ["fsdd/recordings/ (0 of 3000 wav files)", "mnist5k/mnist_5k.csv.gz"]
    with pytest.raises(DataError) as e:
        dl.require_avdigits(tmp_path)
    assert "edgekd data fetch avdigits" in str(e.value) and "EDGEKD_DATA" in str(e.value) and "--data-root" in str(e.value)


def test_local_folder_mirror_and_present_recordings_are_skipped(real_data, tmp_path):
    mirror = tmp_path / "copied by hand"  # a plain folder path (with a space) works as a mirror
    mirror.mkdir()
    shutil.copy(real_data / "mnist5k" / "mnist_5k.csv.gz", mirror / dl.MNIST_NAME)
    root = tmp_path / "data"
    shutil.copytree(real_data / "fsdd" / "recordings", root / "fsdd" / "recordings")
    out = dl.fetch_avdigits(root, mirror=str(mirror))  # no archive in the mirror: FSDD must be skipped
    assert out == {"downloaded": ["mnist5k"], "skipped": ["fsdd"], "paths": out["paths"]}
    assert sha256(root / "mnist5k" / "mnist_5k.csv.gz") == dl.MNIST_SHA256


def test_cli_fetch_through_a_local_server(server, real_data, fsdd_archive, tmp_path, capsys):
    from edgekd.cli import main

    url, served = server
    serve(served, real_data, fsdd_archive)
    root = tmp_path / "data"
    main(["data", "fetch", "avdigits", "--data-root", str(root), "--mirror", url])
    out = capsys.readouterr().out
    assert "downloaded" in out and (root / "fsdd" / "recordings" / "0_george_0.wav").is_file()
    (served / dl.MNIST_NAME).write_bytes(b"tampered")
    (root / "mnist5k" / dl.MNIST_NAME).unlink()
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", "avdigits", "--data-root", str(root), "--mirror", url])
    assert e.value.code == 1 and "sha256" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", "mnist", "--data-root", str(root)])
    assert e.value.code == 2
