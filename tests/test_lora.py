"""LoRA against PEFT's LoraModel on the transformers model with the same weights: logits, adapter files both ways,
and merged weights. Tiny random models, so the whole file runs in seconds."""
import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from nanoft import BERT, GPT2  # noqa: E402
from nanoft.quant.lora import (LoRALinear, add_lora, load_adapter, lora_layers, lora_state_dict,  # noqa: E402
                         merge_and_unload, merge_lora, save_adapter, trainable_parameters, unmerge_lora)

TOL = 1e-5
GPT2_ALL = ["c_attn", "c_proj", "c_fc"]  # PEFT suffixes: c_proj picks attn.c_proj and mlp.c_proj
BERT_ALL = ["query", "key", "value", "output.dense", "intermediate.dense"]  # "dense" alone would pick the pooler


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    folder = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    folder = tmp_path_factory.mktemp("bert")
    transformers.BertModel(cfg).save_pretrained(folder)
    return folder


def load(kind, folder):
    if kind == "gpt2":
        return GPT2.from_pretrained(folder).eval(), transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    return BERT.from_pretrained(folder).eval(), transformers.BertModel.from_pretrained(folder).eval()


IDS = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def outputs(kind, ours, theirs):
    if kind == "gpt2":
        return ours(IDS)[0], theirs(input_ids=IDS).logits
    return ours(IDS), theirs(input_ids=IDS).last_hidden_state


def randomise_B(model, seed=2):
    """B is zero at init, which would make every comparison trivially pass: give it values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            for B in m.lora_B:
                B.copy_(torch.randn(B.shape, generator=g) * 0.1)


def copy_into_peft(ours, peft_model):
    """Our LoRA matrices into PEFT's parameters, by the names nanoft writes: every PEFT LoRA parameter must be named."""
    theirs = {n.replace(".default.", "."): p for n, p in peft_model.named_parameters() if "lora_" in n}
    sd = lora_state_dict(ours)
    assert set(sd) == set(theirs), set(sd) ^ set(theirs)
    with torch.no_grad():
        for name, t in sd.items():
            theirs[name].copy_(t)


@pytest.mark.parametrize("kind,targets,peft_targets", [
    ("gpt2", "attention", ["c_attn"]), ("gpt2", "all", GPT2_ALL),
    ("bert", "attention", ["query", "key", "value"]), ("bert", "all", BERT_ALL)])
def test_logits_equal_peft(kind, targets, peft_targets, gpt2_pair, bert_pair):
    ours, hf = load(kind, gpt2_pair if kind == "gpt2" else bert_pair)
    add_lora(ours, r=4, alpha=8, targets=targets)
    base_out, _ = outputs(kind, ours, hf)  # B = 0: the adapted model is the pretrained one
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=peft_targets)).eval()
    randomise_B(ours)
    copy_into_peft(ours, theirs)
    a, b = outputs(kind, ours, theirs)
    assert (a - b).abs().max() < TOL
    assert (a - base_out).abs().max() > 1e-2  # the adapters do change the output, so the check above means something
    trainable, _ = trainable_parameters(ours)
    assert trainable == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_adapter_saved_by_nanoft_loads_in_peft(kind, gpt2_pair, bert_pair, tmp_path):
    ours, hf = load(kind, gpt2_pair if kind == "gpt2" else bert_pair)
    add_lora(ours, r=4, alpha=16, targets="all")
    randomise_B(ours)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path).eval()
    a, b = outputs(kind, ours, theirs)
    assert (a - b).abs().max() < TOL
    n_lora = sum(1 for n, _ in theirs.named_parameters() if "lora_A" in n)
    assert n_lora == len(lora_state_dict(ours)) // 2  # PEFT adapted exactly the layers we did


@pytest.mark.parametrize("kind,peft_targets", [("gpt2", GPT2_ALL), ("bert", ["query", "value"])])
def test_adapter_saved_by_peft_loads_in_nanoft(kind, peft_targets, gpt2_pair, bert_pair, tmp_path):
    # PEFT's default for BERT adapts query and value only: two of the three parts of nanoft's fused qkv
    ours, hf = load(kind, gpt2_pair if kind == "gpt2" else bert_pair)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=5, target_modules=peft_targets)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    theirs.save_pretrained(tmp_path)
    load_adapter(ours, tmp_path)
    a, b = outputs(kind, ours, theirs)
    assert (a - b).abs().max() < TOL
    if kind == "bert":
        assert lora_layers(ours)[0][1].adapted == (0, 2)  # query and value rows of qkv


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_merge_equals_peft_merge_and_unload(kind, gpt2_pair, bert_pair):
    ours, hf = load(kind, gpt2_pair if kind == "gpt2" else bert_pair)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    add_lora(ours, r=4, alpha=8, targets="all")
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8,
                                                     target_modules=GPT2_ALL if kind == "gpt2" else BERT_ALL))
    randomise_B(ours)
    copy_into_peft(ours, theirs)
    unmerged, _ = outputs(kind, ours, theirs)
    merge_lora(ours)
    merged, _ = outputs(kind, ours, theirs)
    assert (merged - unmerged).abs().max() < TOL  # merging changes how, not what, the layer computes
    unmerge_lora(ours)
    for name, m in lora_layers(ours):
        assert torch.allclose(m.base.weight, before[name + ".weight"], atol=1e-6)
    merge_and_unload(ours)
    assert not any(isinstance(m, LoRALinear) for m in ours.modules())
    hf_merged = theirs.merge_and_unload().state_dict()
    if kind == "gpt2":
        w = ours.transformer.h[1].mlp.c_fc.weight
        ref = hf_merged["transformer.h.1.mlp.c_fc.weight"].t()  # Conv1D stores (in, out)
        qkv, ref_qkv = ours.transformer.h[0].attn.c_attn.weight, hf_merged["transformer.h.0.attn.c_attn.weight"].t()
    else:
        w, ref = ours.layers[1].mlp.fc.weight, hf_merged["encoder.layer.1.intermediate.dense.weight"]
        qkv = ours.layers[0].attn.qkv.weight
        ref_qkv = torch.cat([hf_merged[f"encoder.layer.0.attention.self.{p}.weight"]
                             for p in ("query", "key", "value")])
    assert (w - ref).abs().max() < TOL and (qkv - ref_qkv).abs().max() < TOL
    assert (w - before[[k for k in before if k.endswith(("h.1.mlp.c_fc.weight", "layers.1.mlp.fc.weight"))][0]]
            ).abs().max() > 1e-3


def test_only_lora_trains_and_B_starts_at_zero(gpt2_pair):
    ours, _ = load("gpt2", gpt2_pair)
    with torch.no_grad():
        before, _ = ours(IDS)
    add_lora(ours, r=4, alpha=8, dropout=0.1, targets="attention")
    with torch.no_grad():
        assert torch.equal(ours.eval()(IDS)[0], before)
    ours.train()
    loss = ours(IDS, targets=IDS)[1]
    loss.backward()
    grads = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in ours.named_parameters() if "lora_" in n} and grads
    A_grad = ours.transformer.h[0].attn.c_attn.lora_A[0].grad
    assert A_grad.abs().max() == 0  # B = 0, so A gets no gradient on the first step; B does (A is random)
    assert ours.transformer.h[0].attn.c_attn.lora_B[0].grad.abs().max() > 0
