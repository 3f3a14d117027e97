"""
BERT, the encoder, in one file (the nanoGPT model.py recipe applied to BERT).

Embeddings (word + position + token type, LayerNorm, dropout) -> N post-LayerNorm Transformer blocks
-> last hidden state (B, T, H); `pool` gives the [CLS] pooler output and `BertMLMHead` the masked-LM
logits. Parameter names are nanoft's own (fused qkv); nanoft/checkpoint.py maps them to and from
Hugging Face's names, so pretrained checkpoints (bert-base-uncased, all-MiniLM-L6-v2, ...) load as is.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class BertConfig:
    # field names are Hugging Face's config.json keys, so BertConfig(**known_keys) works
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # exact erf GELU; "gelu_new" (tanh approximation) also accepted
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self):
        get_activation(self.hidden_act)  # fails now, with the fix in the message, rather than when a layer is built
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                             f"{self.num_attention_heads}: pick num_attention_heads so that each head gets "
                             "hidden_size // num_attention_heads dimensions")


def get_activation(name):
    # BERT was trained with the exact erf GELU; the tanh form differs by ~1e-3, enough to break parity
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_new":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unsupported hidden_act {name!r}: nanoft's BERT supports 'gelu' (exact) and 'gelu_new' (tanh); "
                     "set hidden_act in config.json to one of them")


class Embeddings(nn.Module):

    def __init__(self, config):
        super().__init__()
        # padding_idx keeps the [PAD] row out of the gradient, as Hugging Face's BertEmbeddings does
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.size(1)
        pos = torch.arange(T, device=input_ids.device)
        x = self.word(input_ids) + self.position(pos) + self.token_type(token_type_ids)  # (B, T, H)
        return self.drop(self.ln(x))


class SelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.num_attention_heads
        # one matmul for query, key and value (rows stacked q, k, v); checkpoint.py concatenates HF's three Linears
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attention_probs_dropout_prob
        self.resid_drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        # bidirectional: every token sees every non-pad token (mask is additive, (B, 1, 1, T), or None)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): re-assemble the heads side by side
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = get_activation(config.hidden_act)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x):
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    # Post-LayerNorm (normalise AFTER the residual add), unlike GPT-2's pre-LN: that is how BERT was
    # trained, and pretrained weights only reproduce their outputs with the same arrangement.

    def __init__(self, config):
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, mask):
        x = self.ln_1(x + self.attn(x, mask))
        x = self.ln_2(x + self.mlp(x))
        return x


class Pooler(nn.Module):
    # trained on next-sentence prediction; classification fine-tuning (HF BertForSequenceClassification) starts from it

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H) from the [CLS] token


def init_bert_weights(module):
    # BERT's init: N(0, 0.02) for matrices and embeddings, zero biases, LayerNorm = identity
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BERT(nn.Module):

    def __init__(self, config):
        super().__init__()
        get_activation(config.hidden_act)  # fail at construction, not at the first forward
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.num_hidden_layers)])
        self.pooler = Pooler(config)
        self.gradient_checkpointing = False  # True: recompute each block in backward (less memory, more compute)
        self.apply(init_bert_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        B, T = input_ids.size()
        P = self.config.max_position_embeddings
        if T > P:
            raise ValueError(f"input has {T} tokens but this BERT has max_position_embeddings={P}: "
                             f"truncate inputs to at most {P} tokens (lower max_len in the tokenizer/features)")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        mask = None
        if attention_mask is not None:
            # (B, T) 1=keep 0=pad -> additive (B, 1, 1, T), broadcast over heads and query positions.
            # -10000 as in the original BERT, not -inf: exp() still gives exactly 0 for the pads, an all-pad row
            # stays finite instead of NaN, and the value survives a cast to fp16/bf16 under autocast.
            keep = attention_mask[:, None, None, :].bool()
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, -10000.0)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        return x

    def pool(self, hidden):
        return self.pooler(hidden)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        from nanoft.checkpoint import load_bert  # checkpoint imports this module, so import here
        return load_bert(name_or_path, **kwargs)

    def save_pretrained(self, folder):
        from nanoft.checkpoint import save_bert
        save_bert(self, folder)


class BertMLMHead(nn.Module):
    """Masked-LM head: transform (dense, act, LayerNorm), then scores against the tied word embeddings + own bias."""

    def __init__(self, config, word_embeddings):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.act = get_activation(config.hidden_act)
        self.transform.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        # A plain reference, not a submodule: the decoder weight IS the encoder's word embedding (tied), so it is
        # trained, saved and moved with the encoder and does not appear twice in state_dict() or parameters().
        self.__dict__["word_embeddings"] = word_embeddings
        self.apply(init_bert_weights)  # a fresh head (e.g. MLM on a checkpoint that shipped without one) starts like BERT's

    def forward(self, hidden):
        t = self.transform
        h = t.ln(t.act(t.dense(hidden)))  # (B, T, H)
        return F.linear(h, self.word_embeddings.weight, self.bias)  # (B, T, V)


class BertForMaskedLM(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BERT(config)
        self.mlm_head = BertMLMHead(config, self.bert.embeddings.word)

    @property
    def gradient_checkpointing(self):
        return self.bert.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value):
        self.bert.gradient_checkpointing = value

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = self.mlm_head(hidden)  # (B, T, V)
        if labels is None:
            return logits
        # only the masked positions carry a label; the rest are -100 (see nanoft/mlm.py)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100)
        return logits, loss

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        from nanoft.checkpoint import load_bert_mlm  # checkpoint imports this module, so import here
        return load_bert_mlm(name_or_path, **kwargs)

    def save_pretrained(self, folder):
        from nanoft.checkpoint import save_bert_mlm
        save_bert_mlm(self, folder)
