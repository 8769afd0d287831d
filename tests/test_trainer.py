"""The training loop: it learns, resumes exactly, and the teacher cache equals the live teacher."""
import numpy as np
import pytest
import torch
from conftest import train_until_killed

from edgekd.distill.cache import TeacherTargets
from edgekd.distill.evaluate import confusion, evaluate, per_class
from edgekd.distill.losses import Projectors
from edgekd.distill.trainer import Job, load_checkpoint, train
from edgekd.errors import CheckpointError
from edgekd.models import create_model
from edgekd.recipe import Optim

NAMES = ["image", "audio"]


def _student(toy, fusion="gated"):
    torch.manual_seed(0)
    return create_model("fusion_tiny", "student", modalities=toy.modalities, num_classes=3, fusion=fusion)


def _teacher(toy):
    torch.manual_seed(1)
    return create_model("mm_transformer", "teacher", modalities=toy.modalities, num_classes=3, hidden=16, layers=1,
                        heads=2).eval()


def test_training_learns_the_toy_task(toy, tmp_path):
    model = _student(toy)
    hist = train(Job(model, NAMES, Optim(epochs=12, batch_size=16, lr=3e-3), 0, tmp_path / "ck.pt", "s"), toy)
    assert len(hist) == 12 and hist[-1]["loss"] < hist[0]["loss"]
    assert evaluate(model, toy.split("test"), NAMES, toy.classes)["accuracy"] > 0.7  # chance is 1/3


def test_resume_after_interruption_matches_uninterrupted_run(toy, tmp_path):
    full = _student(toy)
    train(Job(full, NAMES, Optim(epochs=3, batch_size=16), 0, tmp_path / "full.pt", "s"), toy)

    part = _student(toy)
    train(Job(part, NAMES, Optim(epochs=3, batch_size=16), 0, tmp_path / "part.pt", "s"), toy)  # writes epoch 3
    # rewind the checkpoint to "killed after epoch 1": train 1 epoch of the same 3-epoch schedule
    first = _student(toy)
    ck = tmp_path / "killed.pt"
    job = Job(first, NAMES, Optim(epochs=3, batch_size=16), 0, ck, "s")
    train_until_killed(job, toy, stop_after=1)
    assert load_checkpoint(ck)["epoch"] == 1
    resumed = _student(toy)
    hist = train(Job(resumed, NAMES, Optim(epochs=3, batch_size=16), 0, ck, "s"), toy, resume=True)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_corrupt_checkpoint_is_a_clear_error(toy, tmp_path):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="without --resume"):
        train(Job(_student(toy), NAMES, Optim(epochs=1), 0, ck, "s"), toy, resume=True)


def test_cached_targets_equal_live_teacher_and_are_computed_once(toy, tmp_path):
    teacher = _teacher(toy)
    cached = TeacherTargets(teacher, NAMES, toy, tmp_path / "cache")
    live = TeacherTargets(teacher, NAMES, toy, None)
    idx = np.array([5, 0, 17, 3])
    for pairing in (0, 1):
        a, b = cached.get(pairing, idx), live.get(pairing, idx)
        torch.testing.assert_close(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a["features"], b["features"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a["modality_features"]["audio"], b["modality_features"]["audio"], rtol=1e-5, atol=1e-5)
    assert cached.computed_pairings == [0, 1]
    assert not torch.allclose(cached.get(0, idx)["logits"], cached.get(1, idx)["logits"])  # pairings differ
    again = TeacherTargets(teacher, NAMES, toy, tmp_path / "cache")
    again.prepare(2)
    assert again.computed_pairings == []  # reused from disk, memory-mapped
    assert isinstance(again._loaded[0]["logits"], np.memmap)


def test_distillation_with_cache_trains(toy, tmp_path):
    teacher = _teacher(toy)
    student = _student(toy)
    job = Job(student, NAMES, Optim(epochs=2, batch_size=16), 0, tmp_path / "s.pt", "kd",
              targets=TeacherTargets(teacher, NAMES, toy, tmp_path / "c"),
              projectors=Projectors(student.embed_dim, teacher.embed_dim, {"audio": (student.embed_dim, 16)}),
              loss={"alpha": 0.5, "temperature": 2.0, "beta": 1.0, "beta_modality": 0.5})
    hist = train(job, toy)
    assert {"kd", "feat", "feat_modality"} <= set(hist[-1])


def test_cross_modal_student_learns_from_a_teacher_with_more_modalities(toy, tmp_path):
    teacher = _teacher(toy)
    audio_only = {"audio": toy.modalities["audio"]}
    student = create_model("fusion_tiny", "student", modalities=audio_only, num_classes=3)
    job = Job(student, ["audio"], Optim(epochs=2, batch_size=16), 0, tmp_path / "s.pt", "kd",
              targets=TeacherTargets(teacher, NAMES, toy, tmp_path / "c"),
              projectors=Projectors(student.embed_dim, teacher.embed_dim, {}),
              loss={"alpha": 0.5, "temperature": 2.0, "beta": 1.0, "beta_modality": 0.0})
    train(job, toy)
    assert evaluate(student, toy.split("test"), ["audio"], toy.classes)["accuracy_without"] == {}


def test_confusion_and_per_class_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    conf = confusion(labels, preds, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    pc = per_class(conf, ["a", "b", "c"])
    assert pc["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert pc["b"]["precision"] == pytest.approx(0.6667, abs=1e-4) and pc["b"]["recall"] == 1.0
    assert pc["c"]["f1"] == 0.0


def test_resume_refuses_a_checkpoint_of_another_recipe_or_teacher(toy, tmp_path):
    ck = tmp_path / "ck.pt"
    train(Job(_student(toy), NAMES, Optim(epochs=1, batch_size=16), 0, ck, "s", fingerprint="recipe-a"), toy)
    with pytest.raises(CheckpointError, match="another recipe, dataset or teacher"):
        train(Job(_student(toy), NAMES, Optim(epochs=2, batch_size=16), 0, ck, "s", fingerprint="recipe-b"), toy,
              resume=True)


def test_a_trailing_batch_of_one_sample_does_not_break_batchnorm(tmp_path):
    from conftest import ToyData

    data = ToyData(n=49)  # 3 batches of 16 and one lonely sample
    hist = train(Job(_student(data), NAMES, Optim(epochs=1, batch_size=16), 0, tmp_path / "ck.pt", "s"), data)
    assert hist[0]["epoch"] == 1


def test_a_diverging_loss_is_a_clear_error(toy, tmp_path):
    from edgekd.errors import TrainingError

    bad = toy.split("train")
    bad.inputs["image"][:] = float("nan")
    with pytest.raises(TrainingError, match="lower the learning rate"):
        train(Job(_student(toy), NAMES, Optim(epochs=1, batch_size=16), 0, tmp_path / "ck.pt", "s"), toy)


def test_tensorboard_event_files_are_written_when_installed_and_skipped_cleanly_when_not(toy, tmp_path, monkeypatch,
                                                                                        capsys):
    from edgekd.distill import tensorboard

    seen = []
    job = Job(_student(toy), NAMES, Optim(epochs=2, batch_size=16), 0, tmp_path / "a.pt", "s",
              tensorboard=tmp_path / "tb" / "a", after_epoch=lambda epoch, row: seen.append(epoch) or {"val_accuracy": 0.5})
    history = train(job, toy)
    assert seen == [1, 2] and all(h["val_accuracy"] == 0.5 for h in history)  # the epoch hook's figures join the row
    if _has_tensorboard():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tb" / "a"))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert {"loss/loss", "accuracy/train_accuracy", "accuracy/val_accuracy", "lr", "time/seconds"} <= set(tags)
        assert [e.step for e in acc.Scalars("loss/loss")] == [1, 2]
    # without the tensorboard package: training runs the same, writes no event files, says so once
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(tensorboard, "_SAID", [])
    for k in range(2):
        train(Job(_student(toy), NAMES, Optim(epochs=1, batch_size=16), 0, tmp_path / f"b{k}.pt", "s",
                  tensorboard=tmp_path / "tb" / f"b{k}"), toy)
    assert not (tmp_path / "tb" / "b0").exists()
    assert capsys.readouterr().err.count("pip install 'edgekd[tensorboard]'") == 1


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None
