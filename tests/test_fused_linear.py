"""The oneDNN-fused linear layers of CPU inference: same results as the plain layers, used only where safe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import internimage
from internimage.ops import fused_linear as fused_linear_module
from internimage.ops.fused_linear import fused_linear, fused_mlp, fusion_enabled, onednn_eligible, onednn_linear


@pytest.mark.parametrize(
    "gelu,with_residual,with_bias",
    [(False, False, True), (True, False, True), (False, True, True), (False, True, False)],
)
def test_fused_linear_matches_plain_layers(gelu, with_residual, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, 24, generator=gen)
    weight = torch.randn(40, 24, generator=gen) * 0.2
    bias = torch.randn(40, generator=gen) if with_bias else None
    residual = torch.randn(2, 7, 5, 40, generator=gen) if with_residual else None
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    expected = F.gelu(expected) if gelu else expected
    expected = expected if residual is None else expected + residual.double()
    with torch.inference_mode():
        assert fusion_enabled(x, weight)
        got = fused_linear(x, weight, bias, gelu=gelu, residual=residual)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_residual,with_bias", [(True, True), (False, False)])
def test_fused_mlp_in_row_chunks_matches_float64(monkeypatch, with_residual, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, 8, generator=gen)  # 105 rows: chunks of 16 leave a partial last chunk
    w1, w2 = torch.randn(32, 8, generator=gen) * 0.3, torch.randn(6, 32, generator=gen) * 0.3
    b1, b2 = (torch.randn(32, generator=gen), torch.randn(6, generator=gen)) if with_bias else (None, None)
    residual = torch.randn(3, 7, 5, 6, generator=gen) if with_residual else None
    d = [None if t is None else t.double() for t in (x, w1, b1, w2, b2, residual)]
    expected = F.linear(F.gelu(F.linear(d[0], d[1], d[2])), d[3], d[4])
    expected = expected if residual is None else expected + d[5]
    monkeypatch.setattr(fused_linear_module, "MLP_CHUNK_ROWS", 16)
    with torch.inference_mode():
        whole = fused_mlp(x, w1, b1, w2, b2, residual)
        monkeypatch.setattr(fused_linear_module, "MLP_CHUNK_ABOVE_BYTES", 0)  # every call chunked now
        chunked = fused_mlp(x, w1, b1, w2, b2, residual)
    assert chunked.shape == whole.shape == expected.shape
    torch.testing.assert_close(chunked.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_fusion_only_where_it_cannot_change_semantics(monkeypatch):
    x, weight = torch.randn(3, 8), torch.randn(4, 8)
    assert not fusion_enabled(x, weight)  # autograd is recording
    with torch.no_grad():
        assert fusion_enabled(x, weight)
        assert not fusion_enabled(x.double(), weight.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fusion_enabled(x, weight)
        monkeypatch.setenv("INTERNIMAGE_FUSED_LINEAR", "0")
        assert not fusion_enabled(x, weight)
    with pytest.raises(ValueError, match="cannot be combined"):
        fused_linear(x, weight, None, gelu=True, residual=torch.zeros(3, 4))


def test_model_inference_with_fusion_equals_plain_path(monkeypatch):
    torch.manual_seed(0)
    model = internimage.create_model("internimage_test_32").eval()
    for param in model.parameters():  # offsets/masks start at zero: give them something to do
        torch.nn.init.normal_(param, std=0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        fused = model(x)
        monkeypatch.setenv("INTERNIMAGE_FUSED_LINEAR", "0")
        plain = model(x)
        reference = model.double()(x.double())
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.double(), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_gradients_match_float64(with_bias):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 5, 20, generator=gen).transpose(1, 2)  # non-contiguous, like permuted activations
    weight = torch.randn(12, 20, generator=gen) * 0.3
    bias = torch.randn(12, generator=gen) if with_bias else None
    leaves = [t.clone().requires_grad_() for t in (x, weight) + ((bias,) if with_bias else ())]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    assert onednn_eligible(leaves[0], leaves[1])
    out = onednn_linear(leaves[0], leaves[1], leaves[2] if with_bias else None)
    out64 = F.linear(leaves64[0], leaves64[1], leaves64[2] if with_bias else None)
    grad = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(out64, leaves64, grad.double())
    torch.testing.assert_close(out.double(), out64, rtol=1e-5, atol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-4)


def test_model_training_step_with_onednn_equals_plain_path(monkeypatch):
    def step():
        torch.manual_seed(0)
        model = internimage.create_model("internimage_test_32").train()
        for param in model.parameters():
            torch.nn.init.normal_(param, std=0.1)
        out = model(torch.randn(2, 3, 32, 32))
        out.square().sum().backward()
        return out.detach(), [p.grad for p in model.parameters()]

    out_a, grads_a = step()
    monkeypatch.setenv("INTERNIMAGE_FUSED_LINEAR", "0")
    out_b, grads_b = step()
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4)


def test_model_built_under_inference_mode_runs_and_sees_weight_updates():
    torch.manual_seed(0)
    with torch.inference_mode():  # inference tensors have no version counter
        model = internimage.create_model("internimage_test_32").eval()
        x = torch.randn(1, 3, 32, 32)
        before = model(x)
        model.levels[0].blocks[0].dcn.offset.weight.normal_(std=1.0)  # in-place update of a concatenated projection
        after = model(x)
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    model = internimage.create_model("internimage_test_32").eval()
    with torch.inference_mode():
        before = model(x)
        model.levels[0].blocks[0].dcn.mask.weight.data.normal_(std=1.0)
        after = model(x)
    assert not torch.equal(before, after)  # writes through .data are seen too


def test_exported_and_traced_graphs_hold_standard_ops_only():
    model = internimage.create_model("internimage_test_32").eval()
    x = torch.randn(1, 3, 32, 32)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            program = torch.export.export(model, (x,))
        targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
        assert not [t for t in targets if "mkldnn" in t], targets
    with pytest.warns(FutureWarning):  # torch.jit.trace is deprecated but still used by deployment scripts
        traced = torch.jit.trace(model, x)
    assert "mkldnn" not in str(traced.graph)
    torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)
