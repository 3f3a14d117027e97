"""Which parameters train: freeze a model, or all of it but some modules.

Fine-tuning a part of a pretrained model (its head, its top blocks) trains less, needs less optimizer memory, and
on a small data set can overfit less. Frozen parameters get requires_grad=False, so autograd computes no gradient
for them and build_optimizer leaves them out.
"""
import torch.nn as nn


def train_only(model: nn.Module, modules) -> int:
    """Freeze every parameter of model but those of `modules` (inside it); returns the count that train."""
    model.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_encoder(model, unfreeze_top_k=0):
    """Freeze the BERT encoder inside `model` (a BERT, or anything with .encoder / .bert), except its top k layers.

    k=0 is the head-only baseline (embeddings, all layers and the pooler frozen); k>0 also trains the top k layers
    and the pooler above them. Heads are not touched. Returns the model."""
    encoder = getattr(model, "encoder", getattr(model, "bert", model))
    if not hasattr(encoder, "layers") or not hasattr(encoder, "embeddings"):
        raise ValueError(f"freeze_encoder needs a nanoft BERT, or a model with .encoder or .bert; "
                         f"got {type(model).__name__}")
    n = len(encoder.layers)
    if not 0 <= unfreeze_top_k <= n:
        raise ValueError(f"unfreeze_top_k={unfreeze_top_k} but the encoder has {n} layers: pick 0..{n}")
    train_only(encoder, [*encoder.layers[n - unfreeze_top_k:], encoder.pooler] if unfreeze_top_k else [])
    return model


def train_last_blocks(gpt2, k: int) -> int:
    """Freeze all of GPT-2 but its last k blocks and final LayerNorm (k=0: ln_f alone); returns the count of
    trainable parameters. The embeddings stay frozen, and with them the output layer they are tied to."""
    n = gpt2.config.n_layer
    if not 0 <= k <= n:
        raise ValueError(f"cannot train the last {k} blocks: the model has {n} blocks: pass 0 to {n}")
    return train_only(gpt2, [*gpt2.transformer.h[n - k:], gpt2.transformer.ln_f])
