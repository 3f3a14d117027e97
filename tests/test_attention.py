"""nanoft.models.attention: the written-out bf16 path computes what torch's fused kernel computes."""
import pytest
import torch
import torch.nn.functional as F

from nanoft.models.attention import attention


def qkv(B=2, nh=3, T=10, T_k=None, hs=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, nh, T, hs, generator=g)
    k, v = (torch.randn(B, nh, T_k or T, hs, generator=g) for _ in range(2))
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def padding_mask(B, T):
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, -3:] = False  # the first sequence ends in 3 [PAD]s
    return torch.zeros(B, 1, 1, T).masked_fill(~keep[:, None, None, :], -10000.0)  # additive, as BERT builds it


@pytest.mark.parametrize("case", ["causal", "additive", "bool_after_cache"])
def test_bf16_path_matches_the_fused_kernel(case):
    T, T_k = (4, 10) if case == "bool_after_cache" else (10, 10)
    kw = {"causal": dict(is_causal=True), "additive": dict(mask=padding_mask(2, 10)),
          "bool_after_cache": dict(mask=torch.ones(T, T_k, dtype=torch.bool).tril(diagonal=T_k - T))}[case]
    q, k, v = qkv(T=T, T_k=T_k, dtype=torch.bfloat16)
    y = attention(q, k, v, **kw)  # the written-out path (bf16, CPU, few keys)
    y.float().pow(2).sum().backward()
    grads = [t.grad.float() for t in (q, k, v)]
    # the reference: torch's kernel in fp32 on the same (bf16-rounded) inputs
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=kw.get("mask"), is_causal=kw.get("is_causal", False))
    ref.pow(2).sum().backward()
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=2e-2)  # bf16: 8 bits of mantissa
    for g, r in zip(grads, (q32.grad, k32.grad, v32.grad)):
        torch.testing.assert_close(g, r, atol=8e-2, rtol=5e-2)


def test_fp32_is_torchs_kernel_exactly():
    q, k, v = qkv()
    m = padding_mask(2, 10)
    assert torch.equal(attention(q, k, v, m), F.scaled_dot_product_attention(q, k, v, attn_mask=m))


def test_padding_gets_no_attention_and_dropout_applies():
    q, k, v = qkv(dtype=torch.bfloat16)
    v2 = v.detach().clone()
    v2[0, :, -3:] = 100.0  # what the [PAD] positions hold must not matter
    m = padding_mask(2, 10)
    torch.testing.assert_close(attention(q, k, v, m), attention(q, k, v2, m))
    torch.manual_seed(0)
    a = attention(q, k, v, m, dropout_p=0.5)
    assert not torch.equal(a, attention(q, k, v, m))
