"""Distillation: layer map and initialisation, VSL batching, each loss term on hand-made tensors, CLI, resume."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from fbcompress.commands.cli import main
from fbcompress.data.batching import LengthBucketedBatches
from fbcompress.modeling.checkpoint import load_model, open_checkpoint
from fbcompress.recipes import DistillSection
from fbcompress.training.distill import (
    attention_kl,
    build_student,
    evenly_spaced_layers,
    masked_mse,
    soft_logit_loss,
)


def test_evenly_spaced_layer_map():
    assert evenly_spaced_layers(6, 2) == [2, 5]
    assert evenly_spaced_layers(12, 2) == [5, 11]
    assert evenly_spaced_layers(12, 4) == [2, 5, 8, 11]
    assert evenly_spaced_layers(2, 2) == [0, 1]


def _teacher(layers: int = 4):
    from transformers import BertConfig

    from fbcompress.modeling.model import FashionBERT, PatchSpec, build_config

    torch.manual_seed(0)
    spec = PatchSpec("pixels", 12, 64, 16, 8, 16)
    return FashionBERT(build_config(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                                               num_attention_heads=4, intermediate_size=64), spec))


def test_student_layer_k_equals_its_teacher_layer_before_training():
    teacher = _teacher(4)
    student, layer_map, projection = build_student(teacher, DistillSection(layers=2))
    assert layer_map == [1, 3] and projection is None
    for k, m in enumerate(layer_map):
        s_state = student.bert.encoder.layer[k].state_dict()
        t_state = teacher.bert.encoder.layer[m].state_dict()
        assert s_state.keys() == t_state.keys()
        for name in s_state:
            assert torch.equal(s_state[name], t_state[name]), (k, name)
    for shared in ("bert.embeddings.word_embeddings.weight", "patch_proj.weight", "patch_position.weight",
                   "ita_head.weight", "bert.pooler.dense.weight"):
        assert torch.equal(student.state_dict()[shared], teacher.state_dict()[shared]), shared
    custom, layer_map, _ = build_student(teacher, DistillSection(layers=2, layer_map=[0, 2]))
    copied = custom.bert.encoder.layer[1].output.dense.weight
    assert torch.equal(copied, teacher.bert.encoder.layer[2].output.dense.weight)


def _batches(n: int = 3, text: int = 5):
    torch.manual_seed(1)
    return [{"input_ids": torch.randint(0, 100, (4, text)), "attention_mask": torch.ones(4, text, dtype=torch.long),
             "token_type_ids": torch.zeros(4, text, dtype=torch.long), "patches": torch.rand(4, 16, 12)}
            for _ in range(n)]


def test_attention_maps_recomputed_from_a_layer_input_equal_the_encoders_own():
    """Distillation takes the last layer's attention maps from FashionBERT.attention_probs (so the encoders keep
    SDPA); they must equal what the eager kernel returns, padded text positions included."""
    model = _teacher(3).eval()
    batch = _batches(1, text=6)[0]
    batch["attention_mask"][1:, 3:] = 0
    with torch.no_grad():
        out = model.encode(**batch, output_hidden_states=True, output_attentions=True)
        mask = torch.cat([batch["attention_mask"], torch.ones(4, 16, dtype=torch.long)], 1)
        for layer in range(3):
            recomputed = model.attention_probs(layer, out.hidden_states[layer], mask)
            assert recomputed.shape == out.attentions[layer].shape == (4, 4, 22, 22)
            torch.testing.assert_close(recomputed, out.attentions[layer], rtol=0, atol=1e-6)
    assert float(recomputed[1, :, :, 3:6].max()) == 0.0  # padded keys get no weight


def test_narrow_student_is_the_kept_slice_of_its_teacher_layers():
    """Student layer k is teacher layer layer_map[k] restricted to the kept channels, heads and neurons."""
    from fbcompress.modeling.width_pruning import measure_importance, top

    teacher = _teacher(4)
    student, layer_map, projection = build_student(
        teacher, DistillSection(layers=2, hidden_size=16, intermediate_size=24), _batches())
    assert student.config.num_attention_heads == 2  # the teacher's 8-wide heads are kept whole
    importance = measure_importance(teacher, _batches())
    kept = top(importance.channels, 16)
    assert projection.in_features == 16 and projection.out_features == 32
    assert torch.equal(projection.weight[kept], torch.eye(16))  # the lift starts as the inverse of the cut
    assert torch.equal(student.bert.embeddings.word_embeddings.weight,
                       teacher.bert.embeddings.word_embeddings.weight[:, kept])
    for k, m in enumerate(layer_map):
        s_layer, t_layer = student.bert.encoder.layer[k], teacher.bert.encoder.layer[m]
        heads = top(importance.heads[m], 2)
        rows = (heads[:, None] * 8 + torch.arange(8)).reshape(-1)
        assert torch.equal(s_layer.attention.self.query.weight, t_layer.attention.self.query.weight[rows][:, kept])
        assert torch.equal(s_layer.attention.output.dense.weight,
                           t_layer.attention.output.dense.weight[kept][:, rows])
        neurons = top(importance.neurons[m], 24)
        assert torch.equal(s_layer.output.dense.weight, t_layer.output.dense.weight[kept][:, neurons])
        assert torch.equal(s_layer.output.LayerNorm.weight, t_layer.output.LayerNorm.weight[kept])
    assert torch.equal(student.ita_head.weight, teacher.ita_head.weight[:, kept])


def test_width_pruning_keeps_what_carries_the_most():
    """A channel, head and neuron made to dominate the activations are among the kept ones; a dead one is not."""
    from fbcompress.modeling.width_pruning import measure_importance, top

    teacher = _teacher(2)
    with torch.no_grad():
        teacher.bert.embeddings.LayerNorm.weight[5] = 50.0
        for norm in (m for m in teacher.bert.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight[6], norm.bias[6] = 0.0, 0.0  # channel 6 is dead everywhere
        teacher.bert.encoder.layer[1].attention.self.value.weight[16:24] *= 40  # head 2 of layer 1
        teacher.bert.encoder.layer[0].intermediate.dense.bias[7] = 30.0
    importance = measure_importance(teacher, _batches())
    assert 5 in top(importance.channels, 4).tolist() and 6 not in top(importance.channels, 28).tolist()
    assert top(importance.heads[1], 1).tolist() == [2]
    assert top(importance.neurons[0], 1).tolist() == [7]


def test_width_pruning_refuses_what_it_cannot_cut():
    from fbcompress.core.errors import FbError

    teacher = _teacher(2)
    with pytest.raises(FbError, match="num_heads to 2"):
        build_student(teacher, DistillSection(layers=2, hidden_size=16, num_heads=4), _batches())
    with pytest.raises(FbError, match="multiple of 8"):
        build_student(teacher, DistillSection(layers=2, hidden_size=12, num_heads=1), _batches())
    with pytest.raises(FbError, match="hidden_size 12 must be a multiple of the teacher's head size 8"):
        build_student(teacher, DistillSection(layers=2, hidden_size=12), _batches())
    with pytest.raises(FbError, match="at least one batch"):
        build_student(teacher, DistillSection(layers=2, hidden_size=16), [])


def test_bad_layer_map_is_a_clear_error():
    from fbcompress.core.errors import FbError

    with pytest.raises(FbError, match="teacher layer"):
        build_student(_teacher(4), DistillSection(layers=2, layer_map=[0, 9]))


def test_vsl_batches_lose_nothing_and_group_lengths():
    lengths = [5 + (i * 37) % 40 for i in range(203)]
    batches = LengthBucketedBatches(lengths, batch_size=8, bucket_batches=4, seed=3)
    for epoch in range(2):
        seen = [row for batch in batches.epoch_batches(epoch) for row in batch]
        assert sorted(seen) == list(range(203)), "every example exactly once per epoch"
    # length spread inside a batch is much smaller than across the data set
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches.epoch_batches(0)]
    assert sum(spreads) / len(spreads) < 0.4 * (max(lengths) - min(lengths))
    # batch g is a pure function of g (exact resume)
    again = LengthBucketedBatches(lengths, 8, 4, seed=3)
    assert [again.rows(g) for g in range(60)] == [batches.rows(g) for g in range(60)]


def test_vsl_collate_pads_only_to_the_batch_longest():
    from fbcompress.data.loader import pad_texts

    batch = pad_texts([[101, 5, 102], [101, 5, 6, 7, 102], [101, 102]], pad_id=0)
    assert batch.input_ids.shape == (3, 5)
    assert batch.attention_mask.sum(1).tolist() == [3, 5, 2]
    assert batch.input_ids[2, 2:].tolist() == [0, 0, 0]


def test_soft_logit_loss_hand_computed():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0 * torch.log(torch.tensor(3.0))]])  # at T=2: softmax = [1/4, 3/4]
    p = torch.tensor([0.25, 0.75])
    expected = float((p * torch.log(p / 0.5)).sum()) * 4
    assert float(soft_logit_loss(student, teacher, 2.0)) == pytest.approx(expected, rel=1e-5)
    assert float(soft_logit_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)  # float32 rounding


def test_masked_mse_ignores_padding():
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert float(masked_mse(s, t, mask)) == pytest.approx((1 + 1 + 9 + 9) / 4)


def test_attention_kl_hand_computed_and_head_mismatch():
    teacher = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # [B=1, heads=1, S=2, S=2]
    student = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]]]])
    expected = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(2 / 3))  # row 0; row 1 is 0
    assert float(attention_kl(student, teacher, torch.tensor([[1, 1]]))) == pytest.approx(float(expected) / 2, rel=1e-4)
    assert float(attention_kl(student, teacher, torch.tensor([[1, 0]]))) == pytest.approx(float(expected), rel=1e-4)
    two_heads = torch.cat([student, student], dim=1)
    assert float(attention_kl(two_heads, teacher, torch.tensor([[1, 1]]))) == pytest.approx(float(expected) / 2,
                                                                                            rel=1e-4)


def _distill(args):
    result = CliRunner().invoke(main, ["distill", "-r", "smoke", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_distill_cli_end_to_end_and_resume(trained_smoke, tiny_data, tmp_path):
    base = ["--teacher", str(trained_smoke), "--data", str(tiny_data)]
    full, split = tmp_path / "student", tmp_path / "split"
    _distill([*base, "--out", str(full)])
    ckpt = open_checkpoint(full)
    teacher = open_checkpoint(trained_smoke)
    assert ckpt.kind == "student" and ckpt.meta["teacher_sha256"] == teacher.weights_sha256
    assert ckpt.config.num_hidden_layers == 2 and ckpt.meta["layer_map"] == [0, 1]
    log = [json.loads(line) for line in (full / "train-log.jsonl").read_text().splitlines()]
    assert {"soft", "hard", "hidden", "attention", "embedding"} <= set(log[-1]["losses"])
    assert log[-1]["pad_share"] < log[-1]["pad_share_fixed_length"], "VSL pads less than fixed length"
    model, _ = load_model(full)
    assert model.config.num_hidden_layers == 2

    _distill([*base, "--out", str(split), "--stop-after", "2"])
    _distill([*base, "--out", str(split), "--resume"])
    a, b = load_file(str(full / "model.safetensors")), load_file(str(split / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_no_teacher_ablation_and_narrow_student(trained_smoke, tiny_data, tmp_path):
    base = ["--teacher", str(trained_smoke), "--data", str(tiny_data)]
    _distill([*base, "--out", str(tmp_path / "ablation"), "--no-teacher"])
    log = [json.loads(line) for line in (tmp_path / "ablation" / "train-log.jsonl").read_text().splitlines()]
    assert set(log[-1]["losses"]) == {"hard"}
    assert open_checkpoint(tmp_path / "ablation").meta["no_teacher"] is True
    _distill([*base, "--out", str(tmp_path / "narrow"), "--set", "distill.hidden_size=16"])
    narrow = open_checkpoint(tmp_path / "narrow").config
    assert narrow.hidden_size == 16 and narrow.num_attention_heads == 1  # the smoke teacher's 16-wide heads
