"""Teachers and students: shapes, modality masks, registry, save/rebuild, local HF directories."""
import pytest
import torch

from edgekd.data.base import ModalitySpec
from edgekd.errors import CheckpointError, RecipeError
from edgekd.models import count_flops, count_params, create_model, get_entry, list_models
from edgekd.models.io import load_model_dir, save_model
from edgekd.models.student import inference_form

MODS = {
    "image": ModalitySpec("image", "image", (1, 28, 28)),
    "audio": ModalitySpec("audio", "audio", (63, 40)),
    "text": ModalitySpec("text", "text", (12,), dtype="int64", vocab_size=50),
    "vector": ModalitySpec("vector", "vector", (5,)),
}


def _batch(n=3, mods=MODS):
    torch.manual_seed(0)
    x = {"image": torch.randn(n, 1, 28, 28), "audio": torch.randn(n, 63, 40),
         "text": torch.randint(1, 50, (n, 12)), "vector": torch.randn(n, 5)}
    x["text"][:, 8:] = 0  # padding
    return {k: v for k, v in x.items() if k in mods}


def _tiny_teacher(fusion="cross_attention", audio_encoder="whisper", mods=MODS):
    return create_model("mm_transformer", "teacher", modalities=mods, num_classes=4, hidden=16, layers=1, heads=2,
                        fusion=fusion, audio_encoder=audio_encoder)


@pytest.mark.parametrize("fusion", ["concat", "cross_attention", "late"])
@pytest.mark.parametrize("audio_encoder", ["whisper", "ast"])
def test_teacher_all_modalities(fusion, audio_encoder):
    t = _tiny_teacher(fusion, audio_encoder).eval()
    out = t(_batch())
    assert out.logits.shape == (3, 4) and out.features.shape == (3, 16)
    assert set(out.modality_features) == set(MODS)
    keep = torch.ones(3, 4)
    keep[:, 1] = 0  # audio absent
    changed = t(_batch(), keep=keep).logits
    assert not torch.allclose(changed, out.logits)


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention", "late"])
def test_students_every_fusion(fusion):
    s = create_model("fusion_tiny", "student", modalities=MODS, num_classes=4, fusion=fusion).eval()
    out = s(_batch())
    assert out.logits.shape == (3, 4) and out.features.shape == (3, s.embed_dim)
    assert not any(isinstance(m, torch.nn.EmbeddingBag) for m in s.modules())  # exports as a slow Loop
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0]] * 3)
    assert not torch.allclose(s(_batch(), keep=keep).logits, out.logits)



def test_late_fusion_without_a_mask_equals_an_all_ones_mask():
    # keep=None takes the export path (plain sums, no stack/gather nodes); it must give the same values
    s = create_model("fusion_tiny", "student", modalities=MODS, num_classes=4, fusion="late").eval()
    plain, ones = s(_batch()), s(_batch(), keep=torch.ones(3, 4))
    assert torch.allclose(plain.logits, ones.logits, atol=1e-6) and torch.allclose(plain.features, ones.features)


@pytest.mark.parametrize("mods", [MODS, {k: MODS[k] for k in ("image", "audio")}, {"vector": MODS["vector"]}],
                         ids=["four", "image+audio", "one"])
def test_folded_late_student_gives_the_same_outputs_in_one_tail_product(mods):
    s = create_model("fusion_lean", "student", modalities=mods, num_classes=4, fusion="late").eval()
    with torch.no_grad():  # trained-looking weights: the default init leaves biases small
        for p in s.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    folded = inference_form(s)
    x = _batch(mods=mods)
    a, b = s(x), folded(x)
    assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.features, b.features, atol=1e-5)
    assert a.logits.abs().max() > 0.1  # not a trivially zero comparison
    assert [m for m in folded.modules() if isinstance(m, torch.nn.Linear) and m not in set(s.modules())] == [folded.tail]
    with torch.no_grad():  # the fold is a snapshot: later training of the student does not reach it
        s.fuse.heads[0].bias.add_(1.0)
    assert not torch.allclose(s(x).logits, folded(x).logits)


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_only_late_fusion_folds(fusion):
    s = create_model("fusion_tiny", "student", modalities=MODS, num_classes=4, fusion=fusion)
    assert inference_form(s) is s
    teacher = _tiny_teacher("late")
    assert inference_form(teacher) is teacher  # teachers export as they are


def test_lean_student_does_less_work_with_stride_2_stems():
    mods = {k: MODS[k] for k in ("image", "audio")}
    lean = create_model("fusion_lean", "student", modalities=mods, num_classes=10, width=12)
    small = create_model("fusion_small", "student", modalities=mods, num_classes=10, width=12)
    assert lean.encoders["image"].body[0][0].stride == (2, 2) and lean.encoders["audio"].body[0][0].stride == (2,)
    ex = {k: v[:1] for k, v in _batch(mods=mods).items()}
    assert count_flops(lean, ex) < count_flops(small, ex) / 2
    assert lean(ex).logits.shape == (1, 10)

def test_student_is_far_smaller_than_teacher_and_flops_counted():
    mods = {k: MODS[k] for k in ("image", "audio")}
    t = create_model("mm_transformer", "teacher", modalities=mods, num_classes=10, hidden=128, layers=3, heads=4)
    s = create_model("fusion_small", "student", modalities=mods, num_classes=10)
    assert count_params(t) > 20 * count_params(s)
    ex = {k: v[:1] for k, v in _batch(mods=mods).items()}
    assert count_flops(t, ex) > 10 * count_flops(s, ex) > 0


def test_width_and_depth_knobs_change_size():
    small = create_model("fusion_small", "student", modalities=MODS, num_classes=4)
    wide = create_model("fusion_small", "student", modalities=MODS, num_classes=4, width=32, depth=4)
    assert count_params(wide) > count_params(small)


def test_registry_lists_and_suggests():
    names = {e.name for e in list_models()}
    assert {"mm_transformer", "fusion_tiny", "fusion_small", "fusion_base", "fusion_lean"} <= names
    with pytest.raises(RecipeError, match="did you mean 'fusion_small'"):
        get_entry("fusion_smal", "student", "recipe.student.name")


def test_save_and_rebuild_gives_identical_outputs(tmp_path):
    for model, role, name, opts in [
        (_tiny_teacher(), "teacher", "mm_transformer",
         {"hidden": 16, "layers": 1, "heads": 2, "fusion": "cross_attention", "audio_encoder": "whisper"}),
        (create_model("fusion_tiny", "student", modalities=MODS, num_classes=4, fusion="attention"), "student",
         "fusion_tiny", {"fusion": "attention", "width": None, "depth": None}),
    ]:
        model.eval()
        save_model(model, tmp_path / role, role=role, name=name, options=opts, modalities=MODS,
                   classes=["a", "b", "c", "d"])
        again, config = load_model_dir(tmp_path / role)
        assert config["classes"] == ["a", "b", "c", "d"]
        torch.testing.assert_close(again(_batch()).logits, model(_batch()).logits)


def test_convnext_image_encoder_trains_saves_and_rebuilds(tmp_path):
    opts = {"hidden": 16, "layers": 1, "heads": 2, "fusion": "late", "image_encoder": "convnext", "image_patch": 4}
    mods = {k: MODS[k] for k in ("image", "audio")}
    t = create_model("mm_transformer", "teacher", modalities=mods, num_classes=4, **opts)
    assert t.encoders["image"].model_type == "convnext"
    t(_batch(mods=mods)).logits.sum().backward()  # gradients reach the ConvNeXt stem
    assert t.encoders["image"].net.embeddings.patch_embeddings.weight.grad.abs().sum() > 0
    t.eval()
    save_model(t, tmp_path / "t", role="teacher", name="mm_transformer", options=opts, modalities=mods,
               classes=["a", "b", "c", "d"])
    again, _ = load_model_dir(tmp_path / "t")
    torch.testing.assert_close(again(_batch(mods=mods)).logits, t(_batch(mods=mods)).logits)


def test_teacher_encoder_from_local_hf_directory(tmp_path):
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=24, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=32))
    vit.save_pretrained(tmp_path / "my-vit")
    mods = {"image": MODS["image"], "vector": MODS["vector"]}
    t = create_model("mm_transformer", "teacher", modalities=mods, num_classes=3, hidden=16, layers=1, heads=2,
                     encoders={"image": {"pretrained": str(tmp_path / "my-vit")}}).eval()
    loaded = t.encoders["image"].net
    torch.testing.assert_close(loaded.embeddings.patch_embeddings.projection.weight,
                               vit.embeddings.patch_embeddings.projection.weight)
    save_model(t, tmp_path / "teacher", role="teacher", name="mm_transformer",
               options={"hidden": 16, "layers": 1, "heads": 2}, modalities=mods, classes=["a", "b", "c"])
    (tmp_path / "my-vit" / "config.json").unlink()  # the saved teacher no longer needs the source dir
    again, _ = load_model_dir(tmp_path / "teacher")
    x = _batch(mods=mods)
    torch.testing.assert_close(again(x).logits, t(x).logits)


def test_bad_pretrained_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a Hugging Face model directory"):
        create_model("mm_transformer", "teacher", modalities={"image": MODS["image"]}, num_classes=3, hidden=16,
                     layers=1, heads=2, encoders={"image": {"pretrained": str(tmp_path)}})


def test_corrupt_weights_and_config(tmp_path):
    s = create_model("fusion_tiny", "student", modalities=MODS, num_classes=4)
    save_model(s, tmp_path, role="student", name="fusion_tiny", options={}, modalities=MODS, classes=list("abcd"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not an edgekd model config"):
        load_model_dir(tmp_path)
    with pytest.raises(CheckpointError, match="not an edgekd model directory"):
        load_model_dir(tmp_path / "nowhere")


def test_cross_attention_teacher_stays_finite_when_a_sample_has_no_tokens_left():
    mods = {"text": MODS["text"], "vector": MODS["vector"]}
    t = _tiny_teacher("cross_attention", mods=mods).eval()
    x = _batch(mods=mods)
    x["text"][:] = 0  # empty texts: every token is padding
    keep = torch.tensor([[1.0, 0.0]] * 3)  # ... and the vector is absent
    assert torch.isfinite(t(x, keep=keep).logits).all()


def test_text_kernel_adds_a_token_convolution_that_padding_cannot_reach():
    """student.text_kernel: word pairs/triples, still averaged over the real tokens only -- the same
    text padded to another length gives the same features; student.dim sets the embedding width."""
    from edgekd.models.student import TextEncoder

    s = create_model("fusion_lean", "student", modalities={"text": MODS["text"]}, num_classes=3, text_kernel=3,
                     dim=24).eval()
    enc = s.encoders["text"]
    assert isinstance(enc, TextEncoder) and enc.conv.kernel_size == (3,) and s.embed_dim == 24
    ids = torch.tensor([[5, 9, 7, 0, 0, 0]])
    with torch.no_grad():
        short, long = enc.features(ids[:, :4]), enc.features(torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1))
        plain = TextEncoder(50, 24).eval()
        plain.emb.load_state_dict(enc.emb.state_dict())
        plain.out.load_state_dict(enc.out.state_dict())
        assert not torch.allclose(plain.features(ids), enc.features(ids))  # the convolution adds something
    torch.testing.assert_close(short, long)
