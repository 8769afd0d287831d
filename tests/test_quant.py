"""INT8 with ModelOpt on tiny students: where the quantizers go, exclusions, save/restore,
resume, and the errors for bad options."""
import pytest
import torch
from conftest import train_until_killed

from edgekd.data.base import ModalitySpec
from edgekd.distill.trainer import Job, load_checkpoint, train
from edgekd.errors import CheckpointError, RecipeError
from edgekd.models import create_model
from edgekd.quant.fold import fold_batchnorm, unfolded_batchnorms
from edgekd.quant.int8 import calibration_batches, quantize, quantizers, restore_quantized, save_quantized
from edgekd.recipe import QatConfig, recipe_from_dict

NAMES = ["image", "audio"]


def _student(toy, fusion="gated"):
    torch.manual_seed(0)
    m = create_model("fusion_tiny", "student", modalities=toy.modalities, num_classes=3, fusion=fusion)
    return m.eval()


def _calib(toy, q):
    return calibration_batches(toy.split("train"), NAMES, q.batch_size, q.calib_batches, 0)


def _quantized(toy, **options):
    q = QatConfig(batch_size=16, calib_batches=2, **options)
    model = _student(toy)
    fold_batchnorm(model)
    return quantize(model, q, _calib(toy, q)), q


def _batch(toy, n=8):
    s = toy.split("test")
    return {k: torch.from_numpy(v[:n]) for k, v in s.inputs.items()}


def test_folding_batchnorm_keeps_outputs(toy):
    model = _student(toy)
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = _batch(toy)
    before = model(x).logits
    assert fold_batchnorm(model) > 0 and unfolded_batchnorms(model) == []
    torch.testing.assert_close(model(x).logits, before, atol=1e-5, rtol=1e-4)


def test_quantizers_are_int8_per_channel_weights_and_per_tensor_activations(toy):
    model, _ = _quantized(toy)
    table = quantizers(model)
    weights = {k: v for k, v in table.items() if k.endswith("weight_quantizer") and v["enabled"]}
    inputs = {k: v for k, v in table.items() if k.endswith("input_quantizer") and v["enabled"]}
    convs_and_linears = [n for n, m in model.named_modules() if type(m).__name__ in ("QuantConv1d", "QuantConv2d", "QuantLinear")]
    assert len(weights) == len(inputs) == len(convs_and_linears) > 0
    for name, w in weights.items():
        layer = model.get_submodule(name.rsplit(".", 1)[0])
        assert w["num_bits"] == 8 and w["axis"] == 0 and not w["unsigned"]  # signed + amax-scaled: zero-point 0
        assert w["amax_shape"][0] == layer.weight.shape[0] and all(d == 1 for d in w["amax_shape"][1:])
    for a in inputs.values():
        assert a["num_bits"] == 8 and a["axis"] is None and not a["unsigned"] and a["amax_shape"] in ([], [1])
    assert not any(v["enabled"] for k, v in table.items() if k.endswith("output_quantizer"))


def test_excluded_modules_stay_unquantized(toy):
    model, _ = _quantized(toy, exclude=["encoders.image.body.0.*", "encoders.*.out"])
    table = quantizers(model)
    off = [k for k, v in table.items() if not v["enabled"] and not k.endswith("output_quantizer")]
    assert sorted(off) == sorted(["encoders.image.body.0.0.input_quantizer", "encoders.image.body.0.0.weight_quantizer",
                                  "encoders.image.out.input_quantizer", "encoders.image.out.weight_quantizer",
                                  "encoders.audio.out.input_quantizer", "encoders.audio.out.weight_quantizer"])
    assert table["encoders.image.body.1.0.weight_quantizer"]["enabled"]


def test_embeddings_are_left_in_fp32_unless_asked():
    specs = {"text": ModalitySpec("text", "text", (6,), "int64", vocab_size=20), "audio": ModalitySpec("audio", "audio", (6, 4))}
    torch.manual_seed(0)
    batch = {"text": torch.randint(1, 20, (8, 6)), "audio": torch.randn(8, 6, 4)}
    for flag in (False, True):
        m = create_model("fusion_tiny", "student", modalities=specs, num_classes=3, fusion="concat").eval()
        fold_batchnorm(m)
        q = QatConfig(quantize_embeddings=flag)
        table = quantizers(quantize(m, q, [batch]))
        emb = [v["enabled"] for k, v in table.items() if k.startswith("encoders.text.emb.") and not k.endswith("output_quantizer")]
        assert any(emb) is flag


def test_save_restore_gives_identical_outputs(toy, tmp_path):
    model, _ = _quantized(toy)
    path = save_quantized(model, tmp_path / "q.pth")
    fresh = _student(toy)
    fold_batchnorm(fresh)
    with torch.no_grad():  # disturb the fresh weights: everything must come from the file
        for p in fresh.parameters():
            p.add_(1.0)
    restored = restore_quantized(fresh, path).eval()
    x = _batch(toy)
    torch.testing.assert_close(restored(x).logits, model(x).logits, atol=0, rtol=0)
    assert quantizers(restored) == quantizers(model)


def test_restore_refuses_a_corrupt_file(toy, tmp_path):
    bad = tmp_path / "q.pth"
    bad.write_bytes(b"not a checkpoint")
    fresh = _student(toy)
    fold_batchnorm(fresh)
    with pytest.raises(CheckpointError, match="re-run `edgekd qat`"):
        restore_quantized(fresh, bad)


def test_quantized_finetuning_resumes_exactly(toy, tmp_path):
    model, q = _quantized(toy)
    ptq = save_quantized(model, tmp_path / "ptq.pth")
    opt = QatConfig(epochs=3, batch_size=16, lr=1e-3)

    def fresh():
        m = _student(toy)
        fold_batchnorm(m)
        return restore_quantized(m, ptq)

    full = fresh()
    train(Job(full, NAMES, opt, 0, tmp_path / "full.pt", "qat"), toy)
    killed = tmp_path / "killed.pt"
    train_until_killed(Job(fresh(), NAMES, opt, 0, killed, "qat"), toy, stop_after=1)
    assert load_checkpoint(killed)["epoch"] == 1
    resumed = fresh()
    hist = train(Job(resumed, NAMES, opt, 0, killed, "qat"), toy, resume=True)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_qad_with_the_fp32_student_as_teacher_gets_targets_for_the_same_batch_and_mask(toy, tmp_path):
    from edgekd.distill.cache import SelfTargets

    reference = _student(toy)
    targets = SelfTargets(reference)
    x, keep = _batch(toy), torch.tensor([[1.0, 0.0]] * 8)
    got = targets.get(x, keep)
    torch.testing.assert_close(got["logits"], reference(x, keep=keep).logits)
    assert not any(p.requires_grad for p in reference.parameters())
    model, _ = _quantized(toy)
    loss = {"alpha": 0.5, "temperature": 4.0, "beta": 0.0, "beta_modality": 0.0}
    hist = train(Job(model, NAMES, QatConfig(epochs=2, batch_size=16, lr=1e-4), 0, tmp_path / "q.pt", "qad",
                     targets=targets, loss=loss), toy)
    assert len(hist) == 2 and "kd" in hist[-1] and hist[-1]["kd"] >= 0


def test_a_pattern_matching_nothing_is_an_error(toy):
    with pytest.raises(RecipeError, match=r"recipe.qat.exclude: 'encoders.imag.body.9' matches no quantizable layer"):
        _quantized(toy, exclude=["encoders.imag.body.9"])


RECIPE = {"name": "t", "data": {"name": "avdigits"}}


@pytest.mark.parametrize("qat, message", [
    ({"algorithm": "entropi"}, r"recipe.qat.algorithm: 'entropi' is not allowed \(expected 'max', 'mse' or 'smoothquant'\)"),
    ({"algorithm": "mxa"}, r"did you mean 'max'\?"),
    ({"calib_batches": 0}, r"recipe.qat.calib_batches: .*greater than or equal to 1"),
    ({"method": "distill"}, r"recipe.qat.method: 'distill' is not allowed"),
    ({"exlude": ["x"]}, r"recipe.qat.exlude: unknown key 'exlude'; did you mean 'exclude'\?"),
    ({"augment": True}, r"qat.augment must be false"),
])
def test_bad_qat_options_name_the_field(qat, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({**RECIPE, "qat": qat})


@pytest.mark.parametrize("algorithm", ["mse", "smoothquant"])
def test_other_calibration_algorithms_run(toy, algorithm):
    model, _ = _quantized(toy, algorithm=algorithm)
    out = model(_batch(toy)).logits
    assert torch.isfinite(out).all() and any(v["enabled"] for v in quantizers(model).values())
