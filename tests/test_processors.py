"""Pretrained teachers that bring their own processors: image processors (ViT, ConvNeXt), feature
extractors (Whisper, AST, wav2vec2), CLIP, SigLIP and CLAP dual encoders and fine-tuned classifiers -- tiny
random-weight models saved with save_pretrained here, loaded offline."""
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from PIL import Image

WORDS = ["red", "green", "blue", "cat", "dog", "cow", "car", "bus", "tree", "sun", "moon", "star"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """RGBA icons, 1 s wavs and captions in 3 classes (each modality carries the class)."""
    d = tmp_path_factory.mktemp("mm")
    (d / "img").mkdir()
    (d / "wav").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        c = i % 3
        px = np.zeros((20, 24, 4), np.uint8)
        px[..., c] = 200
        px[..., 3] = (rng.random((20, 24)) > 0.5) * 255  # transparent pixels: composited on white
        Image.fromarray(px, "RGBA").save(d / "img" / f"{i}.png")
        t = np.arange(8000) / 8000
        samples = (0.3 * np.sin(2 * np.pi * 300 * (c + 1) * t) + 0.01 * rng.standard_normal(8000)) * 32767
        with wave.open(str(d / "wav" / f"{i}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes(samples.astype("<i2").tobytes())
        rows.append({"label": "abc"[c], "img": f"img/{i}.png", "wav": f"wav/{i}.wav",
                     "caption": f"{WORDS[3 + c]} {WORDS[8 + i % 4]}", "split": "test" if i >= 21 else "train"})
    (d / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def _tokenizer(path: Path, max_length: int = 16):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    core = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    core.normalizer, core.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    BertTokenizerFast(tokenizer_object=core, model_max_length=max_length, pad_token="[PAD]", unk_token="[UNK]",
                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(path))
    return len(vocab)


def save(kind: str, path: Path, **kw) -> Path:
    """A tiny random-weight model of `kind` with its processor, as save_pretrained leaves them."""
    import torch
    import transformers as t
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    if kind == "vit":
        t.ViTModel(t.ViTConfig(image_size=16, patch_size=8, num_channels=3, **small)).save_pretrained(path)
        t.ViTImageProcessor(size={"height": kw.get("size", 16), "width": kw.get("size", 16)}).save_pretrained(path)
    elif kind == "convnext":
        t.ConvNextModel(t.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                         patch_size=4)).save_pretrained(path)
        t.ConvNextImageProcessor(size={"shortest_edge": 24}, crop_pct=0.875).save_pretrained(path)
    elif kind == "whisper":
        t.WhisperModel(t.WhisperConfig(num_mel_bins=16, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                                       decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=32,
                                       decoder_ffn_dim=32, max_source_positions=50, max_target_positions=16,
                                       vocab_size=64, pad_token_id=1, bos_token_id=2, eos_token_id=3,
                                       decoder_start_token_id=2)).save_pretrained(path)
        t.WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(path)
    elif kind == "ast":
        t.ASTModel(t.ASTConfig(num_mel_bins=16, max_length=48, patch_size=16, frequency_stride=8, time_stride=8,
                               **small)).save_pretrained(path)
        t.ASTFeatureExtractor(num_mel_bins=16, max_length=48).save_pretrained(path)
    elif kind == "wav2vec2":
        t.Wav2Vec2Model(t.Wav2Vec2Config(conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=8,
                                         **small)).save_pretrained(path)
        t.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(path)
    elif kind == "clip":
        n = _tokenizer(path)
        text = dict(vocab_size=n, max_position_embeddings=16, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, pad_token_id=0, bos_token_id=2, eos_token_id=3)
        vision = dict(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32)
        t.CLIPModel(t.CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)).save_pretrained(path)
        t.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(path)
    elif kind == "clap":  # an audio tower (HTSAT, a small Swin over log-mel) beside a RoBERTa-style text tower
        n = _tokenizer(path)
        audio = dict(window_size=4, num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=(4, 4), depths=[1, 1],
                     num_attention_heads=[1, 1], patch_embeds_hidden_size=8, hidden_size=16, enable_fusion=False,
                     projection_hidden_size=16)
        text = dict(vocab_size=n, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=40, projection_hidden_size=16, pad_token_id=0)
        t.ClapModel(t.ClapConfig(text_config=text, audio_config=audio, projection_dim=8)).save_pretrained(path)
        t.ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1, fft_window_size=400,
                               truncation="rand_trunc", padding="repeatpad").save_pretrained(path)
    elif kind == "text-classifier":
        n = _tokenizer(path)
        labels = kw.get("labels", ["A", "B", "C", "other"])
        t.BertForSequenceClassification(t.BertConfig(vocab_size=n, max_position_embeddings=32, **small,
                                                     id2label=dict(enumerate(labels)),
                                                     label2id={x: i for i, x in enumerate(labels)})).save_pretrained(path)
    elif kind == "image-classifier":
        labels = ["c", "b", "a"]
        t.ViTForImageClassification(t.ViTConfig(image_size=16, patch_size=8, num_channels=3, **small,
                                                id2label=dict(enumerate(labels)),
                                                label2id={x: i for i, x in enumerate(labels)})).save_pretrained(path)
        t.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    logging.set_verbosity_warning()
    return path


def recipe(tmp_path: Path, data: Path, teacher: str, mods: str = "{img: image, caption: text}", train: str = "") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"""
name: proc
data: {{name: folder, path: {data}, modalities: {mods}, image_size: 8, text_max_length: 6,
        audio: {{n_mels: 16, seconds: 1.0}}}}
teacher: {{hidden: 16, layers: 1, heads: 2, epochs: 2, batch_size: 8, lr: 0.01, fusion: concat, image_patch: 4,
           {teacher}{f', train: {train}' if train else ''}}}
student: {{name: fusion_tiny}}
distill: {{epochs: 1, batch_size: 8, baseline: false}}
qat: {{epochs: 1, batch_size: 8, calib_batches: 1, compare: false}}
export: {{cpu_int8_min_agreement: 0.0}}
bench: {{batches: [1], backends: [onnxruntime-cpu], min_seconds: 0.05, max_seconds: 0.2}}
""")
    return path


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]


@pytest.mark.parametrize("kind,mods,col", [
    ("vit", "{img: image, caption: text}", "img"),
    ("convnext", "{img: image, caption: text}", "img"),
    ("whisper", "{wav: audio, caption: text}", "wav"),
    ("ast", "{wav: audio, caption: text}", "wav"),
    ("wav2vec2", "{wav: audio, caption: text}", "wav"),
])
def test_a_pretrained_encoder_reads_its_own_processors_inputs(tmp_path, capsys, data, kind, mods, col):
    model = save(kind, tmp_path / kind)
    run = tmp_path / "run"
    r = recipe(tmp_path, data, f"encoders: {{{col}: {{pretrained: {model}}}}}", mods)
    code, out, err = cli(capsys, "run", r, "--run-dir", run, "--until", "distill", "-q")
    assert code == 0, err
    m = _manifest(run)
    teacher = m["teacher"]["metrics"]
    emb = teacher["embeddings"][f"{col}__teacher"]  # head (the default): frozen, embedded once
    assert teacher["train"] == "head" and emb["rows"] == 30 and emb["gflops_per_s"] > 0
    config = json.loads((run / "teacher" / "config.json").read_text())
    spec = config["modalities"][f"{col}__teacher"]
    want = {"vit": [3, 16, 16], "convnext": [3, 24, 24], "whisper": [16, 100], "ast": [48, 16], "wav2vec2": [16000]}
    assert spec["shape"] == want[kind]  # the processor's size and rate, not the student's 8 px / 8 kHz mels
    assert m["distill"]["status"] == "done"
    # the view the later stages rebuild matches what the model's processor gives directly
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    from edgekd.data.folder import load_folder
    from edgekd.data.teacher_inputs import TeacherView
    from edgekd.recipe import load_recipe

    rec = load_recipe(r)
    view = TeacherView(load_folder(rec.data, data, 0), config["processors"])
    x = view.split("test").inputs[f"{col}__teacher"][:2]
    files = [data / json.loads(line)[col] for line in (data / "metadata.jsonl").read_text().splitlines()[21:23]]
    if col == "img":
        proc = AutoImageProcessor.from_pretrained(str(model), local_files_only=True, backend="pil")
        ims = [Image.alpha_composite(Image.new("RGBA", (24, 20), "white"), Image.open(f).convert("RGBA")).convert("RGB")
               for f in files]
        np.testing.assert_allclose(x, proc(images=ims, return_tensors="np")["pixel_values"], atol=1e-6)
    else:
        import soundfile

        from edgekd.runtime.preprocess import fit_length, resample

        fe = AutoFeatureExtractor.from_pretrained(str(model), local_files_only=True)
        waves = [fit_length(resample(soundfile.read(f, dtype="float32")[0], 8000, 16000), 16000) for f in files]
        got = fe(waves, sampling_rate=16000, return_tensors="np")[fe.model_input_names[0]]
        np.testing.assert_allclose(x, got, atol=1e-5)


def test_clip_towers_fused_by_a_trained_head_through_every_stage(tmp_path, capsys, data):
    model = save("clip", tmp_path / "clip")
    run = tmp_path / "run"
    code, out, err = cli(capsys, "run", recipe(tmp_path, data, f"pretrained: {model}"), "--run-dir", run, "-q")
    assert code == 0, err
    m = _manifest(run)
    teacher = m["teacher"]["metrics"]
    assert set(teacher["embeddings"]) == {"img__teacher", "caption__teacher"}  # both towers, frozen, cached
    config = json.loads((run / "teacher" / "config.json").read_text())
    encoders = config["options"]["encoders"]
    assert encoders["img__teacher"]["tower"] == "image" and encoders["caption__teacher"]["tower"] == "text"
    from safetensors.numpy import load_file

    saved = load_file(str(run / "teacher" / "model.safetensors"))
    assert not any(k.startswith("encoders.img__teacher.net.text_model") for k in saved)  # each tower stored once
    original = load_file(str(model / "model.safetensors"))
    np.testing.assert_array_equal(saved["encoders.img__teacher.net.visual_projection.weight"],
                                  original["visual_projection.weight"])
    with np.load(run / "bundle" / "testset.npz") as z:  # the teacher's own test inputs ride along for bench
        assert z["input.img__teacher"].shape[1:] == (3, 16, 16) and z["input.img"].shape[1:] == (1, 8, 8)
    bench = json.loads(next((run / "bench").glob("*/bench.json")).read_text())
    rows = {r["model"]: r for r in bench["results"] if not r["skipped"]}
    assert rows["teacher_fp32"]["accuracy"] == m["export"]["metrics"]["teacher_fp32"]["accuracy"]
    row = json.loads((data / "metadata.jsonl").read_text().splitlines()[-1])
    code, out, err = cli(capsys, "predict", run / "bundle", "--image", data / row["img"], "--text", row["caption"],
                         "--json")
    assert code == 0, err
    code, out, err = cli(capsys, "predict", run / "bundle", "--model", "teacher_fp32", "--image", data / row["img"],
                         "--text", row["caption"])
    assert code == 2 and "CLIPImageProcessor" in err and "student" in err and len(err.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore:At least one mel filter")  # transformers' note on this tiny mel bank
def test_clap_style_audio_and_text_towers_teach_through_export(tmp_path, capsys, data):
    """get_audio_features: the same tower lookup as CLIP's image tower, here over the model's own
    feature extractor (resampled 8 kHz clips, 16 kHz log-mel)."""
    import torch
    from transformers import ClapModel

    model = save("clap", tmp_path / "clap")
    run = tmp_path / "run"
    r = recipe(tmp_path, data, f"pretrained: {model}", mods="{wav: audio, caption: text}")
    code, _, err = cli(capsys, "run", r, "--run-dir", run, "--until", "export", "-q")
    assert code == 0, err
    m = _manifest(run)
    encoders = json.loads((run / "teacher" / "config.json").read_text())["options"]["encoders"]
    assert encoders["wav__teacher"]["tower"] == "audio" and encoders["caption__teacher"]["tower"] == "text"
    emb = m["teacher"]["metrics"]["embeddings"]
    assert set(emb) == {"wav__teacher", "caption__teacher"}
    cached = np.load(run / emb["wav__teacher"]["cache"] / "wav__teacher.npy")
    from edgekd.data.processors import encode

    p = json.loads((run / "teacher" / "config.json").read_text())["processors"]["wav"]
    assert p["processor_class"] == "ClapFeatureExtractor" and p["sampling_rate"] == 16000
    files = [data / json.loads(x)["wav"] for x in (data / "metadata.jsonl").read_text().splitlines()]
    with torch.no_grad():
        want = ClapModel.from_pretrained(str(model), local_files_only=True).eval().get_audio_features(
            torch.from_numpy(encode(p, files)))
    want = want if isinstance(want, torch.Tensor) else want.pooler_output
    np.testing.assert_allclose(cached, want.numpy(), atol=1e-5)
    assert m["export"]["metrics"]["teacher_fp32"]["top1_agreement"] == 1.0


def test_a_fine_tuned_classifier_is_the_teacher_as_is(tmp_path, capsys, data):
    model = save("text-classifier", tmp_path / "cls")
    run = tmp_path / "run"
    code, out, err = cli(capsys, "run", recipe(tmp_path, data, f"pretrained: {model}"), "--run-dir", run,
                         "--until", "distill", "-q")
    assert code == 0, err
    m = _manifest(run)
    assert m["teacher"]["metrics"]["train"] == "none"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgekd.models.io import load_model_dir

    teacher, config = load_model_dir(run / "teacher")
    assert config["name"] == "hf_classifier" and config["options"]["columns"] == [0, 1, 2]  # "a" matched "A"
    hf = AutoModelForSequenceClassification.from_pretrained(str(model), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    enc = tok(["dog moon", "cat"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        want = hf(**enc).logits[:, :3]
        got = teacher({"caption__teacher": enc["input_ids"]}).logits
    torch.testing.assert_close(got, want)  # nothing was fitted: the classifier's own logits


def test_an_image_classifier_teacher_reorders_its_labels(tmp_path, data):
    import torch

    from edgekd.data.base import ModalitySpec
    from edgekd.models import create_model

    model = save("image-classifier", tmp_path / "icls")
    mods = {"img__teacher": ModalitySpec("img__teacher", "image", (3, 16, 16), "float32")}
    t = create_model("hf_classifier", "teacher", modalities=mods, num_classes=3, columns=[2, 1, 0],
                     encoders={"img__teacher": {"pretrained": str(model), "auto_class": "AutoModelForImageClassification"}})
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = t.eval()({"img__teacher": x}).logits
        own = t.net(x).logits
    torch.testing.assert_close(out, own.flip(1))


def test_classifier_labels_that_do_not_match_are_listed(tmp_path, capsys, data):
    model = save("text-classifier", tmp_path / "cls", labels=["positive", "negative", "a"])
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", recipe(tmp_path, data, f"pretrained: {model}"), "--run-dir", run, "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no label for b, c" in err and "positive" in err and not run.exists()


@pytest.mark.parametrize("case", ["no-processor", "disagrees", "train-head-classifier"])
def test_processor_problems_are_one_line_errors(tmp_path, capsys, data, case):
    if case == "no-processor":
        model = save("vit", tmp_path / "vit")
        (model / "preprocessor_config.json").unlink()
        teacher, want = f"encoders: {{img: {{pretrained: {model}}}}}", ["no preprocessor_config.json", "save_pretrained"]
    elif case == "disagrees":  # a 24 px processor in front of a 16 px ViT
        model = save("vit", tmp_path / "vit", size=24)
        teacher, want = f"encoders: {{img: {{pretrained: {model}}}}}", ["rejects its processor's inputs", "img__teacher"]
    else:
        model = save("text-classifier", tmp_path / "cls")
        teacher, want = f"pretrained: {model}, train: head", ["no separate head", "none"]
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", recipe(tmp_path, data, teacher), "--run-dir", run, "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in want), err
    assert not run.exists()  # refused before anything was written


def test_the_frozen_pass_runs_where_a_trial_batch_says_it_is_faster(tmp_path):
    """PyTorch or onnxruntime, measured on a trial batch, both giving the same embeddings; the pass's
    figures name the backend and the trial."""
    import torch

    from edgekd.data.base import ModalitySpec
    from edgekd.distill import teacher_pass
    from edgekd.distill.embeddings import embed_rows
    from edgekd.models.teacher import HFEncoder

    model = save("vit", tmp_path / "vit")
    spec = ModalitySpec("img__teacher", "image", (3, 16, 16), "float32")
    enc = HFEncoder(spec, 16, 1, 2, source={"pretrained": str(model), "native": True}).eval()
    rows = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    fn, info = teacher_pass.pick(enc, torch.from_numpy(rows[:8]), rows=100_000)
    assert info["torch_samples_per_s"] > 0 and info["onnxruntime_samples_per_s"] > 0
    assert info["trial_max_rel_diff"] <= teacher_pass.TRIAL_TOLERANCE
    faster = info["onnxruntime_samples_per_s"] > info["torch_samples_per_s"]  # over 100k rows the export is noise
    assert info["backend"] == ("onnxruntime" if faster else "torch")
    with torch.no_grad():
        np.testing.assert_allclose(fn(torch.from_numpy(rows[:4])), enc.embed(torch.from_numpy(rows[:4])).numpy(),
                                   atol=1e-4)
    out, stats = embed_rows(enc, rows, batch_size=16)
    assert stats["backend"] in ("torch", "onnxruntime") and "torch_samples_per_s" in stats
    with torch.no_grad():
        np.testing.assert_allclose(out, enc.embed(torch.from_numpy(rows)).numpy(), atol=1e-4)


def test_a_teacher_the_exporter_cannot_trace_stays_on_pytorch_and_says_why(monkeypatch):
    import torch

    from edgekd.distill import teacher_pass

    class Enc(torch.nn.Module):
        def embed(self, x):
            return x * 2

    def broken(*a, **k):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(torch.onnx, "export", broken)
    fn, info = teacher_pass.pick(Enc(), torch.ones(2, 3), rows=10)
    assert info["backend"] == "torch" and "export failed" in info["onnxruntime"] and "unsupported op" in info["onnxruntime"]
    np.testing.assert_array_equal(fn(torch.ones(1, 3)), np.full((1, 3), 2.0, np.float32))


def test_a_dataset_without_raw_rows_refuses_a_pretrained_processor():
    from edgekd.data.teacher_inputs import TeacherView
    from edgekd.errors import RecipeError

    class Arrays:  # like avdigits: model-ready arrays, no files or texts as written
        name = "avdigits"

    with pytest.raises(RecipeError, match="folder dataset"):
        TeacherView(Arrays(), {"image": {"kind": "image"}})


def test_the_pruned_vocabulary_student_starts_from_the_teachers_token_embeddings(tmp_path):
    import torch

    from edgekd.data.base import ModalitySpec
    from edgekd.data.processors import pruned_text_params, text_params
    from edgekd.distill.embedding_init import init_text_embeddings
    from edgekd.models import create_model

    path = tmp_path / "bert"
    n = _tokenizer(path)
    import transformers as t

    t.BertModel(t.BertConfig(vocab_size=n, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(path)
    tp = text_params(path, "here", 8)
    sp = pruned_text_params(tp, ["cat dog", "red sun"])
    teacher = create_model("mm_transformer", "teacher", num_classes=2, hidden=16, layers=1, heads=2, fusion="concat",
                           modalities={"c__teacher": ModalitySpec("c__teacher", "text", (8,), "int64", n)},
                           encoders={"c__teacher": {"pretrained": str(path), "pad_id": 0}})
    student = create_model("fusion_tiny", "student", num_classes=2, dim=4,
                           modalities={"c": ModalitySpec("c", "text", (8,), "int64", sp["vocab_size"])})
    assert student.embed_dim == 4  # student.dim
    before = student.encoders["c"].emb.weight.clone()
    info = init_text_embeddings(student, teacher, {"c": sp}, {"c": tp})
    after = student.encoders["c"].emb.weight
    assert info["c"]["rows"] == sp["vocab_size"] - 1 and 0 < info["c"]["explained_variance"] <= 1
    assert torch.all(after[0] == 0) and not torch.equal(after[1:], before[1:])
    # rows keep the teacher's geometry: the projected rows are a linear image of the teacher's
    import json as j

    theirs = j.loads(tp["tokenizer_json"])["model"]["vocab"]
    ours = j.loads(sp["tokenizer_json"])["model"]["vocab"]
    table = teacher.encoders["c__teacher"].net.get_input_embeddings().weight.detach()
    old = table[[theirs[tok] for tok, i in sorted(ours.items(), key=lambda kv: kv[1]) if i > 0]].double()
    centred = old - old.mean(0)
    coef = torch.linalg.lstsq(centred, after[1:].double()).solution
    torch.testing.assert_close(centred @ coef, after[1:].double(), atol=1e-5, rtol=1e-4)


def test_clip_style_padding_with_the_end_token_keeps_the_first_one(tmp_path):
    """CLIP pads with its end-of-text token: the first is real (the causal tower pools there)."""
    import torch

    from edgekd.data.base import ModalitySpec
    from edgekd.models.teacher import HFEncoder

    spec = ModalitySpec("c__teacher", "text", (6,), "int64", 16)
    enc = HFEncoder(spec, 16, 1, 2, source={"pad_id": 3, "pad_is_eos": True})
    mask = enc.text_mask(torch.tensor([[2, 5, 9, 3, 3, 3], [2, 3, 3, 3, 3, 3]]))
    assert mask.int().tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]


def _siglip(path: Path) -> Path:
    """A tiny SigLIP with a fast tokenizer that pads with its end token to the full 16 positions."""
    import transformers as t
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = ["<unused>", "</s>", "<unk>", *WORDS]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    t.PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=16, pad_token="</s>", eos_token="</s>",
                              unk_token="<unk>").save_pretrained(str(path))
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    import torch

    torch.manual_seed(0)
    text = {**small, "vocab_size": len(vocab), "max_position_embeddings": 16, "pad_token_id": 1, "eos_token_id": 1}
    t.SiglipModel(t.SiglipConfig(text_config=text, vision_config={**small, "image_size": 16, "patch_size": 8})
                  ).save_pretrained(path)
    t.SiglipImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def test_siglip_towers_read_fixed_length_unmasked_texts(tmp_path, capsys, data):
    """SigLIP's text tower pools its last position over texts padded to the full table, unmasked, as
    its own processor pads them: edgekd keeps that length instead of cutting to the longest text."""
    import torch
    from transformers import AutoTokenizer, SiglipModel

    path = _siglip(tmp_path / "siglip")
    capsys.readouterr()  # transformers' own notes on this tiny config, written while saving it
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", recipe(tmp_path, data, f"pretrained: {path}"), "--run-dir", run, "--until",
                       "export", "-q")
    assert code == 0, err
    m = _manifest(run)
    config = json.loads((run / "teacher" / "config.json").read_text())
    assert config["options"]["encoders"]["caption__teacher"]["fixed_length"] is True
    assert config["processors"]["caption"]["max_length"] == 16 and config["processors"]["caption"]["pad_id"] == 1
    emb = np.load(run / m["teacher"]["metrics"]["embeddings"]["caption__teacher"]["cache"] / "caption__teacher.npy")
    texts = [json.loads(x)["caption"] for x in (data / "metadata.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ids = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = SiglipModel.from_pretrained(str(path), local_files_only=True).eval().get_text_features(input_ids=ids)
    want = want if isinstance(want, torch.Tensor) else want.pooler_output
    np.testing.assert_allclose(emb, want.numpy(), atol=1e-5)  # what the model says through its own processor
    assert m["export"]["metrics"]["teacher_fp32"]["top1_agreement"] == 1.0  # the exported graph keeps the length too


def test_a_teacher_tokenizer_that_pads_with_1_pads_with_1_on_the_device():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from edgekd.runtime.preprocess import text_ids

    core = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1, "red": 2, "cat": 3}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    p = {"max_length": 5, "tokenizer_json": core.to_str(), "pad_id": 1}
    assert text_ids("red cat", p).tolist() == [2, 3, 1, 1, 1]
    assert text_ids("red cat", {**p, "pad_id": 0}).tolist() == [2, 3, 0, 0, 0]
