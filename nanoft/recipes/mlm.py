"""Masked language modelling, BERT's pre-training task, used again for task-adaptive pre-training (chapter 13):
hide 15% of the real tokens of in-domain text and train the model to recover them.

    collate = MLMCollator.from_tokenizer(tok)      # a DataLoader collate_fn over lists of token ids
    batch = collate([ids_1, ids_2, ...])           # {"input_ids", "attention_mask", "labels"}, each (B, T)
    logits, loss = model(**batch)                  # BertForMaskedLM
    continue_pretraining(mlm_model, train_ids, val_ids, tok, cfg)   # the recipe: masked LM on your own text
"""
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from nanoft.training.batching import Collate
from nanoft.training.device import to_device
from nanoft.training.freeze import train_only
from nanoft.training.train import TrainConfig, train


def mask_tokens(input_ids, special_ids, vocab_size, mask_token_id, mlm_probability=0.15, generator=None,
                attention_mask=None):
    """-> (masked_input_ids, labels). Picks each real token with probability mlm_probability; labels hold the
    original id at picked positions and -100 (cross_entropy's ignore_index) everywhere else, so the loss covers
    only the picked tokens. Tokens in special_ids ([CLS], [SEP], [PAD], ...) and attention_mask == 0 are never picked.
    input_ids is left unchanged; generator makes the draw reproducible."""
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be between 0 and 1, got {mlm_probability}: BERT uses 0.15")
    device = input_ids.device

    def draw(p):  # a Bernoulli(p) mask shaped like input_ids
        return torch.rand(input_ids.shape, generator=generator, device=device) < p

    can_pick = ~torch.isin(input_ids, torch.tensor(sorted(special_ids), dtype=input_ids.dtype, device=device))
    if attention_mask is not None:
        can_pick &= attention_mask.bool()
    picked = draw(mlm_probability) & can_pick
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, -100))

    # BERT's 80/10/10. [MASK] never occurs in fine-tuning text: if every token the model must predict were [MASK],
    # it could learn to build good representations only there. Replacing 10% with a random token and leaving 10%
    # unchanged means any visible token may be one it is asked about, so it must represent every token well.
    to_mask = picked & draw(0.8)
    to_random = picked & ~to_mask & draw(0.5)  # half of the other 20%
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)  # any id, like BERT
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


@dataclass
class MLMCollator:
    """collate_fn: token-id rows (lists, 1-D tensors, or dicts with "input_ids") -> a padded, masked batch.
    Masks are drawn anew every time a batch is built (RoBERTa's dynamic masking): each epoch hides other tokens."""
    mask_token_id: int
    pad_token_id: int
    vocab_size: int
    special_ids: tuple
    mlm_probability: float = 0.15
    generator: Optional[torch.Generator] = None  # None: the global RNG (nanoft.training.train seeds and restores it; a
    # DataLoader worker has its own, seeded by the loader)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs):
        tok = getattr(tokenizer, "tok", tokenizer)  # nanoft's Tokenizer or a bare tokenizers.Tokenizer
        mask_id, pad_id = tok.token_to_id("[MASK]"), tok.token_to_id("[PAD]")
        if mask_id is None or pad_id is None:
            raise ValueError("the tokenizer has no [MASK] or [PAD] token: masked LM needs a BERT-style (WordPiece) "
                             "tokenizer, e.g. nanoft.io.tokenizer.load_bert_tokenizer(folder)")
        specials = tuple(i for i, t in tok.get_added_tokens_decoder().items() if t.special) or (pad_id, mask_id)
        return cls(mask_id, pad_id, tok.get_vocab_size(), specials, **kwargs)

    def __call__(self, examples) -> dict:
        rows = [{"input_ids": e["input_ids"] if isinstance(e, dict) else e} for e in examples]  # labels unused
        batch = Collate(self.pad_token_id)(rows)
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # (B, T) each
        masked, labels = mask_tokens(input_ids, self.special_ids, self.vocab_size, self.mask_token_id,
                                     self.mlm_probability, self.generator, attention_mask)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}


def masked_lm_loss(model, batch):
    """BertForMaskedLM's loss, computed only where it counts.

    Only the ~15% picked tokens carry a label, and the decoder (hidden -> 30,522 word scores) costs about as much as
    a small encoder: so decode the picked positions only. Same value as model(**batch)[1]."""
    hidden = model.bert(batch["input_ids"], attention_mask=batch["attention_mask"])  # (B, T, H)
    picked = batch["labels"] != -100  # (B, T)
    if not picked.any():  # a batch of very short sentences can draw no token at all
        return hidden.sum() * 0.0
    logits = model.mlm_head(hidden[picked])  # (n_picked, V)
    return F.cross_entropy(logits, batch["labels"][picked])


@torch.no_grad()
def masked_lm_eval_loss(model, batches) -> float:
    """Mean masked-LM loss per picked token over fixed batches (draw their masks once, so every call scores the
    same tokens)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for batch in batches:
        k = int((batch["labels"] != -100).sum())
        total += masked_lm_loss(model, to_device(batch, device)).item() * k
        n += k
    model.train(was_training)
    if n == 0:
        raise ValueError("no masked token in the validation batches: pass longer or more validation sentences")
    return total / n


def continue_pretraining(model, train_ids, val_ids, tokenizer, cfg: TrainConfig, head_steps=0,
                         mlm_probability=0.15, seed=0):
    """Masked-LM training of a BertForMaskedLM on in-domain text (token-id rows; labels unused): domain- or
    task-adaptive pre-training. With head_steps > 0 the MLM head first trains alone, the encoder frozen, for that
    many steps: a checkpoint shipped without an MLM head (all-MiniLM-L6-v2) gets a fresh, random one, whose first
    large, random gradients would otherwise shake the pretrained encoder. Returns the TrainResult of the run (both
    phases: step counts both, history holds the head's records then the full model's), whose curve is the masked-LM
    validation loss before and after: [{"step": 0, "val_loss": ...}, {"step": result.step, "val_loss": ...}]."""
    collate = MLMCollator.from_tokenizer(tokenizer, mlm_probability=mlm_probability)
    fixed = MLMCollator.from_tokenizer(tokenizer, mlm_probability=mlm_probability,
                                       generator=torch.Generator().manual_seed(seed))
    val_batches = [fixed(val_ids[i:i + 64]) for i in range(0, len(val_ids), 64)]
    before = masked_lm_eval_loss(model, val_batches)
    head = None
    if head_steps:
        train_only(model, [model.mlm_head])  # its decoder weight is the word embedding: frozen with the encoder
        head = train(model, train_ids, masked_lm_loss, _steps(cfg, head_steps), collate_fn=collate)
        model.requires_grad_(True)
    result = train(model, train_ids, masked_lm_loss, cfg, collate_fn=collate)
    if head is not None:
        result = replace(result, step=head.step + result.step, history=head.history + result.history)
    return replace(result, curve=[{"step": 0, "val_loss": before},
                                  {"step": result.step, "val_loss": masked_lm_eval_loss(model, val_batches)}])


def _steps(cfg, steps):
    return replace(cfg, max_steps=steps, epochs=None, warmup_steps=min(cfg.warmup_steps, steps // 10))
