"""Scaled dot-product attention, the one call every model makes (GPT-2 and Llama causal, BERT with a padding mask).

It is torch's fused kernel, F.scaled_dot_product_attention, except in the one case where writing the
arithmetic out is measurably faster: bf16 on a CPU (see attention's docstring and bench/README.md).
"""
import torch
import torch.nn.functional as F


def attention(q, k, v, mask=None, is_causal=False, dropout_p=0.0):
    """softmax(q k^T / sqrt(hs) [+ mask]) v for q (B, nh, T, hs), k and v (B, n_kv, T_k, hs) -> (B, nh, T, hs).
    n_kv < nh is grouped-query attention (Llama): query heads g * nh / n_kv ... (g + 1) * nh / n_kv - 1 share key and
    value head g. Both paths broadcast the shared heads instead of copying them nh / n_kv times.

    Normally torch's fused kernel (F.scaled_dot_product_attention). But on a CPU in bf16 (under autocast) and
    for up to 512 keys, the same arithmetic written out as two bf16 matmuls around an fp32 softmax is faster,
    forward + backward: torch 2.13's CPU flash kernel in bf16 is slower than in fp32 (figures: bench/README.md).
    The (B, nh, T, T_k) scores it keeps for backward are small at those lengths (9 MB a layer at 8 x 128)."""
    T_k = k.size(-2)
    nh, n_kv = q.size(1), k.size(1)
    if not (q.dtype == torch.bfloat16 and q.device.type == "cpu" and T_k <= 512):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                              enable_gqa=n_kv != nh)
    if n_kv != nh:  # each kv head against its group of query heads: q (B, n_kv, nh / n_kv, T, hs), k (B, n_kv, 1, ...)
        B, _, T, hs = q.shape
        if mask is not None and mask.dim() == 4:  # (B, 1, T, T_k) -> (B, 1, 1, T, T_k), to match the groups
            mask = mask[:, :, None]
        y = attention(q.reshape(B, n_kv, nh // n_kv, T, hs), k[:, :, None], v[:, :, None], mask, is_causal, dropout_p)
        return y.view(B, nh, T, hs)
    # the matmul in bf16, then the scale, mask and softmax in fp32: bf16 exponentials would lose small probabilities
    scores = (q @ k.transpose(-2, -1)).float() * q.size(-1) ** -0.5  # (B, nh, T, T_k)
    if is_causal:  # query i sees keys 0..i
        mask = torch.ones(q.size(-2), T_k, dtype=torch.bool, device=q.device).tril()
    if mask is not None and mask.dtype == torch.bool:  # True = may attend
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:  # additive (0 or a large negative number), as SDPA takes it
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return probs.to(v.dtype) @ v  # (B, nh, T, hs)
