"""nanoft.quant.targets: the Hugging Face names each model declares, checked against transformers' own modules, and
the duck typing that lets quant/ work on any model that declares them."""
import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")

from nanoft.models.bert import BERT, BertConfig  # noqa: E402
from nanoft.models.gpt2 import GPT2, GPT2Config  # noqa: E402
from nanoft.quant.lora import LoRALinear, add_lora  # noqa: E402
from nanoft.quant.targets import backbone, block_linears, is_transposed  # noqa: E402

GPT2_TINY = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=2)
BERT_TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                 max_position_embeddings=32)


def test_gpt2_names_are_transformers_modules_and_conv1d_is_what_is_transposed():
    ours = GPT2(GPT2Config(**GPT2_TINY))
    theirs = dict(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_TINY)).named_modules())
    conv1d = transformers.pytorch_utils.Conv1D
    names = ours.hf_modules()
    assert all(len(hf) == 1 and hf[0] in theirs for hf in names.values())
    assert {n for n, m in ours.named_modules() if list(m.parameters(recurse=False))} - set(names) == {"lm_head"}
    for name, (hf,) in names.items():  # transposed exactly where transformers stores (in, out)
        assert is_transposed(ours, name) == isinstance(theirs[hf], conv1d), name


def test_bert_names_are_transformers_modules_with_qkv_fused_in_that_order():
    ours = BERT(BertConfig(**BERT_TINY))
    theirs = dict(transformers.BertModel(transformers.BertConfig(**BERT_TINY)).named_modules())
    names = ours.hf_modules()
    assert set(names) == {n for n, m in ours.named_modules() if list(m.parameters(recurse=False))}
    assert all(hf in theirs for hfs in names.values() for hf in hfs)
    assert names["layers.1.attn.qkv"] == tuple(f"encoder.layer.1.attention.self.{p}" for p in ("query", "key", "value"))
    assert not any(is_transposed(ours, n) for n in names)
    # each HF module is named once, by one nanoft module
    flat = [hf for hfs in names.values() for hf in hfs]
    assert len(flat) == len(set(flat))


def test_block_linears_by_group():
    gpt2 = GPT2(GPT2Config(**GPT2_TINY))
    assert block_linears(gpt2, "attention") == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert block_linears(gpt2, "all")[:4] == [f"transformer.h.0.{m}" for m in ("attn.c_attn", "attn.c_proj",
                                                                               "mlp.c_fc", "mlp.c_proj")]
    bert = BERT(BertConfig(**BERT_TINY))
    assert block_linears(bert, "mlp") == [f"layers.{i}.{m}" for i in (0, 1) for m in ("attn.proj", "mlp.fc",
                                                                                       "mlp.proj")]
    with pytest.raises(ValueError, match="'attention', 'mlp' or 'all'"):
        block_linears(bert, "qkv")


class ToyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)


class Toy(nn.Module):
    """A fourth model: it declares its names, and quant/ needs no edit to adapt it."""
    BLOCKS = "blocks"
    BLOCK_LINEARS = {"attention": ("q",), "mlp": ("out",)}
    HF_TRANSPOSED = ()

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([ToyBlock(), ToyBlock()])

    def hf_modules(self):
        return {f"blocks.{i}.{m}": (f"model.layers.{i}.{m}",) for i in range(2) for m in ("q", "out")}

    def forward(self, x):
        for b in self.blocks:
            x = b.out(b.q(x))
        return x


def test_a_model_that_declares_its_names_gets_lora_inside_any_wrapper():
    wrapper = nn.Sequential(Toy())
    path, net = backbone(wrapper)
    assert path == "0" and isinstance(net, Toy)
    add_lora(wrapper, r=2, alpha=4, targets="attention")
    assert [n for n, m in net.named_modules() if isinstance(m, LoRALinear)] == ["blocks.0.q", "blocks.1.q"]
    assert {n for n, p in wrapper.named_parameters() if p.requires_grad} == {
        f"0.blocks.{i}.q.lora_{ab}.0" for i in range(2) for ab in "AB"}
    assert wrapper(torch.randn(3, 8)).shape == (3, 8)


def test_backbone_refuses_none_or_two():
    with pytest.raises(TypeError, match="holds 0 models"):
        backbone(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="holds 2 models"):
        backbone(nn.ModuleList([Toy(), Toy()]))
