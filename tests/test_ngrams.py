"""The hashed-bigram text branch (student.text_ngrams: 2): what it computes, and that it goes through
ONNX export, the parity ladder and the CPU INT8 model like every other student."""
import numpy as np
import onnx
import torch

from edgekd.data.base import ModalitySpec
from edgekd.exporting.cpu_int8 import quantize_for_cpu
from edgekd.exporting.onnx_export import export_onnx
from edgekd.exporting.parity import Rung, run_rung
from edgekd.models import create_model
from edgekd.models.student import HASH_PRIME, TextEncoder, inference_form
from edgekd.runtime.runner import OrtRunner

SPECS = {"image": ModalitySpec("image", "image", (1, 16, 16)),
         "text": ModalitySpec("text", "text", (12,), "int64", vocab_size=60)}


def _inputs(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 60, size=(n, 12))
    for i, length in enumerate(rng.integers(1, 13, size=n)):
        ids[i, length:] = 0  # padding after each text's tokens
    return {"image": rng.standard_normal((n, 1, 16, 16)).astype(np.float32), "text": ids.astype(np.int64)}


def test_the_bag_averages_tokens_and_hashed_neighbour_pairs_over_real_tokens_only():
    torch.manual_seed(0)
    enc = TextEncoder(60, 8, ngrams=2, buckets=32)
    ids = torch.tensor([[5, 7, 9, 0, 0]])
    pairs = [(5 * HASH_PRIME + 7) % 32, (7 * HASH_PRIME + 9) % 32]  # (9, 0) touches padding: left out
    want = (enc.emb.weight[[5, 7, 9]].sum(0) + enc.pairs.weight[pairs].sum(0)) / 5
    assert torch.allclose(enc.features(ids), enc.out[0](want[None]), atol=1e-6)
    # the same text padded further gives the same features (padding never reaches the bag)
    assert torch.allclose(enc.features(ids), enc.features(torch.tensor([[5, 7, 9, 0, 0, 0, 0]])), atol=1e-6)


def test_a_bigram_student_exports_passes_parity_and_builds_a_cpu_int8_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("fusion_lean", "student", modalities=SPECS, num_classes=4, fusion="late",
                         text_ngrams=2, text_buckets=256).eval()
    assert model.encoders["text"].pairs.num_embeddings == 256
    folded = inference_form(model)
    example = {k: torch.from_numpy(v) for k, v in _inputs(2).items()}
    fp32 = export_onnx(folded, example, tmp_path / "s.onnx")
    ops = {n.op_type for n in onnx.load(str(fp32)).graph.node}
    assert {"Mod", "Gather"} <= ops and "Loop" not in ops  # hashed in the graph, no EmbeddingBag loop
    batches = {s: _inputs(s, seed=s) for s in (1, 17)}
    result = run_rung(Rung("student_fp32", "pytorch fp32", 1e-4, 1.0), model, OrtRunner(fp32), batches)
    assert result["max_abs_diff"] <= 1e-4
    calib = [_inputs(32, seed=10 + k) for k in range(3)]
    cpu = quantize_for_cpu(fp32, tmp_path / "cpu.onnx", calib)
    got = run_rung(Rung("student_int8_cpu", "pytorch fp32", float("inf"), 0.0), model, OrtRunner(cpu),
                   {64: _inputs(64, seed=99)})
    assert got["top1_agreement"] >= 0.8
