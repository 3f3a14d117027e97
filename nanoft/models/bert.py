"""
BERT, the encoder, in one file (the nanoGPT model.py recipe applied to BERT).

Embeddings (word + position + token type, LayerNorm, dropout) -> N post-LayerNorm Transformer blocks
-> last hidden state (B, T, H); `pool` gives the [CLS] pooler output and `BertMLMHead` the masked-LM
logits. Parameter names are nanoft's own (fused qkv); the end of this file maps them to and from Hugging
Face's names, so pretrained checkpoints (bert-base-uncased, all-MiniLM-L6-v2, ...) load as is: from_pretrained
reads a folder through hf_files.py, renames, and loads.
"""
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanoft.io import hf_files
from nanoft.models.attention import attention


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
        # one matmul for query, key and value (rows stacked q, k, v); bert_from_hf concatenates HF's three Linears
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
        y = attention(q, k, v, mask, dropout_p=self.attn_dropout if self.training else 0.0)
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
    # What nanoft.quant reads (LoRA, quantization; see quant/targets.py); the names themselves are at the end of
    # this file (bert_hf_modules), declared once.
    HF_MODEL_TYPE = "bert"
    CONFIG = BertConfig
    BLOCKS = "layers"
    # the linear layers of a block: the fused q/k/v projection (LoRA's original choice), then every other one
    BLOCK_LINEARS = {"attention": ("attn.qkv",), "mlp": ("attn.proj", "mlp.fc", "mlp.proj")}
    HF_TRANSPOSED = ()  # transformers' BERT uses nn.Linear too

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

    def hf_modules(self):
        """nanoft module path -> HF BertModel module paths (the fused qkv: query, key, value)."""
        return bert_hf_modules(self.config.num_hidden_layers)

    @classmethod
    def from_pretrained(cls, name_or_path, *, strict=True, **hub_kwargs):
        """The encoder of any Hugging Face BERT checkpoint (BertModel, BertForMaskedLM, BertForPreTraining,
        BertForSequenceClassification...), a local folder or a hub id: task heads are ignored.
        hub_kwargs (revision, cache_dir, offline) go to nanoft.io.hub.resolve."""
        config, enc, rest = read_bert(name_or_path, **hub_kwargs)
        unexpected = {k: v for k, v in rest.items() if not BERT_IGNORED.fullmatch(k)}
        model = hf_files.load_into(cls(config), {**enc, **unexpected}, name_or_path, strict, fresh=("pooler.",))
        if "pooler.dense.weight" not in enc:
            # BertForMaskedLM checkpoints have no pooler (transformers builds that model without one)
            print(f"nanoft: {name_or_path} has no pooler (pooler.dense): it starts freshly initialised; fine-tune "
                  "it with a head that uses it (ClassificationHead pooling='cls')")
        return model

    def save_pretrained(self, folder):
        """config.json + model.safetensors, as transformers' BertModel."""
        tensors = bert_to_hf(_detached(self), self.config.num_hidden_layers)
        hf_files.write_folder(folder, hf_config(self.config, "BertModel"), tensors)


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
        # only the masked positions carry a label; the rest are -100 (see nanoft/recipes/mlm.py)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100)
        return logits, loss

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, name_or_path, *, strict=True, notice=True, **hub_kwargs):
        """Encoder + masked-LM head (cls.predictions.*). A checkpoint without an MLM head (e.g. a sentence-embedding
        model) gets a freshly initialised one, with a notice (notice=False: for a caller that trains it next)."""
        config, enc, rest = read_bert(name_or_path, **hub_kwargs)
        model = cls(config)
        head = mlm_head_from_hf(rest, enc.get("embeddings.word.weight"))
        fresh = ("bert.pooler.",)  # unused by masked LM, and absent from transformers' BertForMaskedLM
        if not head:
            fresh += ("mlm_head.",)
        # the cls.predictions.* tensors are already in `head`; what else is left over is reported as unexpected
        unexpected = {k: v for k, v in rest.items() if not BERT_IGNORED.fullmatch(k)}
        sd = {**{"bert." + k: v for k, v in enc.items()}, **head, **unexpected}
        hf_files.load_into(model, sd, name_or_path, strict, fresh=fresh)
        if not head and notice:
            print(f"nanoft: {name_or_path} has no masked-LM head (cls.predictions.*): it starts freshly initialised; "
                  "train it (MLM) before using its predictions")
        return model

    def save_pretrained(self, folder):
        """Saved as transformers' BertForMaskedLM: "bert." prefix, no pooler (that model has none), the head as
        cls.predictions.* without the decoder weight and bias (tied to the word embeddings and to
        cls.predictions.bias)."""
        sd, n_layer = _detached(self), self.config.num_hidden_layers
        enc = {k.removeprefix("bert."): v for k, v in sd.items() if k.startswith("bert.") and ".pooler." not in k}
        out = {"bert." + k: v for k, v in bert_to_hf(enc, n_layer).items()}
        to_hf = {nano: hf for hf, nano in MLM_NAMES.items()}
        for name, t in sd.items():
            module, _, param = name.rpartition(".")
            if module in to_hf:
                out[f"{to_hf[module]}.{param}"] = t
        out["cls.predictions.bias"] = sd["mlm_head.bias"]
        hf_files.write_folder(folder, hf_config(self.config, "BertForMaskedLM"), out)


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face names. Hugging Face keeps the module names of Google's original TensorFlow BERT; nanoft uses short
# ones and one fused qkv Linear (rows: query, key, value) instead of three. Each entry maps a module; .weight and
# .bias follow.

def bert_hf_modules(n_layer):
    """nanoft module path -> HF module paths (no "bert." prefix), for every module of an n_layer encoder that holds
    parameters. The fused qkv lists its three HF layers in the order of its output rows."""
    names = {"embeddings.word": ("embeddings.word_embeddings",),
             "embeddings.position": ("embeddings.position_embeddings",),
             "embeddings.token_type": ("embeddings.token_type_embeddings",),
             "embeddings.ln": ("embeddings.LayerNorm",),
             "pooler.dense": ("pooler.dense",)}
    for i in range(n_layer):
        hf = f"encoder.layer.{i}."
        names[f"layers.{i}.attn.qkv"] = tuple(hf + "attention.self." + p for p in ("query", "key", "value"))
        names[f"layers.{i}.attn.proj"] = (hf + "attention.output.dense",)
        names[f"layers.{i}.ln_1"] = (hf + "attention.output.LayerNorm",)  # post-LN after attention + residual
        names[f"layers.{i}.mlp.fc"] = (hf + "intermediate.dense",)
        names[f"layers.{i}.mlp.proj"] = (hf + "output.dense",)
        names[f"layers.{i}.ln_2"] = (hf + "output.LayerNorm",)
    return names


MLM_NAMES = {"cls.predictions.transform.dense": "mlm_head.transform.dense",
             "cls.predictions.transform.LayerNorm": "mlm_head.transform.ln"}
# heads of other tasks, and the position-id constant: not part of the encoder
BERT_IGNORED = re.compile(r"(cls|classifier|qa_outputs)\..*|embeddings\.position_ids")


def read_bert(name_or_path, **hub_kwargs):
    """(BertConfig, encoder tensors with nanoft names, the other tensors with HF names) of a BERT checkpoint."""
    supported = dict(position_embedding_type="absolute", is_decoder=False, add_cross_attention=False)
    config, tensors = hf_files.read_folder(name_or_path, BERT.HF_MODEL_TYPE, supported, **hub_kwargs)
    config = hf_files.config_from_dict(BertConfig, config)
    enc, rest = bert_from_hf(tensors, config.num_hidden_layers)
    return config, enc, rest


def bert_from_hf(sd, n_layer):
    """HF BERT tensors (any head, with or without "bert." prefix) -> (encoder tensors with nanoft names, the rest
    with HF names). The rest holds the heads (cls.*) and whatever did not map (reported as unexpected)."""
    modules = bert_hf_modules(n_layer)
    part_of = {hf: (nano, i) for nano, hfs in modules.items() for i, hf in enumerate(hfs)}  # "...self.key" -> (qkv, 1)
    enc, rest, fused = {}, {}, {}
    for name, t in sd.items():
        # Google's TF checkpoints called LayerNorm's scale and shift gamma and beta; old .bin files kept that
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))
        name = name.removeprefix("bert.")
        module, _, param = name.rpartition(".")
        if module not in part_of:
            if name != "embeddings.position_ids":
                rest[name] = t
            continue
        nano, i = part_of[module]
        if len(modules[nano]) == 1:
            enc[f"{nano}.{param}"] = t
        else:
            fused.setdefault((nano, param), [None] * len(modules[nano]))[i] = t
    for (nano, param), parts in fused.items():
        if all(p is not None for p in parts):
            enc[f"{nano}.{param}"] = torch.cat(parts, dim=0)  # qkv: (3H, H) or (3H,)
        else:  # half a qkv: report the pieces as unexpected rather than guess
            rest.update({f"{hf}.{param}": p for hf, p in zip(modules[nano], parts) if p is not None})
    return enc, rest


def bert_to_hf(sd, n_layer):
    """nanoft BERT tensors -> HF BertModel names (no prefix); the fused qkv splits back into query, key, value."""
    modules = bert_hf_modules(n_layer)
    out = {}
    for name, t in sd.items():
        module, _, param = name.rpartition(".")
        hfs = modules[module]
        if len(hfs) == 1:
            out[f"{hfs[0]}.{param}"] = t
        else:
            for hf, chunk in zip(hfs, t.chunk(len(hfs), dim=0)):
                out[f"{hf}.{param}"] = chunk.contiguous()
    return out


def mlm_head_from_hf(rest, word_embeddings):
    """The cls.predictions.* tensors -> mlm_head.* names, or {} when the checkpoint has no MLM head."""
    head = {}
    for name, t in rest.items():
        module, _, param = name.rpartition(".")
        if module in MLM_NAMES:
            head[f"{MLM_NAMES[module]}.{param}"] = t
    # the output bias is stored twice (cls.predictions.bias and the tied cls.predictions.decoder.bias)
    bias = rest.get("cls.predictions.bias", rest.get("cls.predictions.decoder.bias"))
    if bias is not None:
        head["mlm_head.bias"] = bias
    decoder = rest.get("cls.predictions.decoder.weight")  # tied to the word embeddings when present
    if (decoder is not None and word_embeddings is not None and decoder.shape == word_embeddings.shape
            and not torch.equal(decoder, word_embeddings)):
        raise ValueError("this BERT checkpoint's cls.predictions.decoder.weight differs from its word embeddings: "
                         "nanoft's BertForMaskedLM always ties them, so load it with transformers instead")
    return head


def hf_config(config, architecture):
    # model_type and architectures tell transformers which class to build from the folder
    return {"model_type": BERT.HF_MODEL_TYPE, "architectures": [architecture], **asdict(config)}


def _detached(model):
    return {k: v.detach() for k, v in model.state_dict().items()}
