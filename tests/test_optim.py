"""AdamW parameter groups (GPT-2, BERT, LSTM) and the learning-rate schedule, against transformers' schedules."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from nanoft.models.bert import BERT, BertConfig, BertForMaskedLM
from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.models.lstm import LSTMConfig, LSTMLM
from nanoft.training.optim import build_optimizer, build_scheduler, describe_groups, lr_at, param_groups


def group_names(model, wd=0.1):
    decay, no_decay = param_groups(model, wd)
    assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    for g in (decay, no_decay):
        assert len(g["params"]) == len(g["param_names"])
    return decay["param_names"], no_decay["param_names"]


def assert_partition(model, decay, no_decay):
    # every trainable tensor exactly once (a tied weight too), and nothing else
    names = decay + no_decay
    assert len(names) == len(set(names))
    assert set(names) == {n for n, _ in model.named_parameters()}
    groups = param_groups(model, 0.1)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_gpt2_groups():
    model = GPT2(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    decay, no_decay = group_names(model)
    assert set(decay) == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                          for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
            "transformer.h.0.ln_1.weight", "transformer.h.1.ln_2.bias", "transformer.h.0.attn.c_attn.bias"} \
        <= set(no_decay)
    # lm_head.weight IS wte.weight: listed once, as the embedding, so it gets no decay
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any(n.startswith("lm_head") for n in decay + no_decay)
    assert_partition(model, decay, no_decay)


def test_bert_groups():
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16)
    encoder = BERT(cfg)
    decay, no_decay = group_names(encoder)
    matrices = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    assert set(decay) == {f"layers.{i}.{m}.weight" for i in range(2) for m in matrices} | {"pooler.dense.weight"}
    assert {"embeddings.word.weight", "embeddings.position.weight", "embeddings.token_type.weight",
            "embeddings.ln.weight", "embeddings.ln.bias", "layers.1.ln_1.weight", "layers.0.ln_2.bias"} <= set(no_decay)
    assert_partition(encoder, decay, no_decay)

    mlm = BertForMaskedLM(cfg)  # the decoder is tied to the word embeddings
    decay, no_decay = group_names(mlm)
    assert "mlm_head.transform.dense.weight" in decay
    assert {"mlm_head.bias", "mlm_head.transform.ln.weight", "bert.embeddings.word.weight"} <= set(no_decay)
    assert_partition(mlm, decay, no_decay)


@pytest.mark.parametrize("tie", [False, True])
def test_lstm_groups(tie):
    model = LSTMLM(LSTMConfig(vocab_size=40, emb_dim=16, hidden_dim=16, n_layers=2, tie_weights=tie))
    decay, no_decay = group_names(model)
    lstm_mats = {f"lstm.weight_{k}_l{i}" for k in ("ih", "hh") for i in range(2)}
    assert set(decay) == lstm_mats | (set() if tie else {"head.weight"})  # tied: the head is the embedding
    assert set(no_decay) == {"embedding.weight", "head.bias"} | {f"lstm.bias_{k}_l{i}" for k in ("ih", "hh")
                                                                  for i in range(2)}
    assert_partition(model, decay, no_decay)


def test_frozen_parameters_are_left_out():
    model = GPT2(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    model.transformer.wpe.weight.requires_grad_(False)
    decay, no_decay = group_names(model)
    assert "transformer.wpe.weight" not in decay + no_decay
    model.requires_grad_(False)  # everything frozen: say so, instead of autograd's "does not require grad" later
    with pytest.raises(ValueError, match="no parameter of GPT2 requires grad.*unfreeze"):
        build_optimizer(model, lr=1e-3, weight_decay=0.1)


def test_describe_groups_prints_names():
    model = LSTMLM(LSTMConfig(vocab_size=40, emb_dim=8, hidden_dim=8, n_layers=1))
    text = describe_groups(param_groups(model, 0.01), with_names=True)
    assert "weight_decay=0.01: 3 tensors" in text and "weight_decay=0.0: 4 tensors" in text
    for name, _ in model.named_parameters():
        assert f"    {name}\n" in text + "\n"
    assert text.index("head.weight") < text.index("weight_decay=0.0:") < text.index("embedding.weight")


def test_weight_decay_only_touches_the_decay_group():
    # with zero gradients AdamW's update is pure decay: p <- p * (1 - lr * wd) for the decayed group only
    model = LSTMLM(LSTMConfig(vocab_size=40, emb_dim=8, hidden_dim=8, n_layers=1))
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    assert opt.defaults["fused"]  # CPU tensors: torch's fused AdamW (faster than foreach, see bench/README.md)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decay, _ = group_names(model)
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if n in decay else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=n)


# ----------------------------------------------------------------------------- schedule


@dataclass
class Sched:
    lr: float = 1e-3
    warmup_steps: int = 10
    max_steps: int = 110
    decay: str = "cosine"
    min_lr_ratio: float = 0.1


def test_schedule_key_points():
    cos, lin = Sched(), Sched(decay="linear")
    for c in (cos, lin):
        assert lr_at(0, c) == 0.0  # start
        assert lr_at(5, c) == pytest.approx(0.5e-3)  # half-way through warmup
        assert lr_at(10, c) == pytest.approx(1e-3)  # end of warmup: the peak
        assert lr_at(110, c) == pytest.approx(1e-4)  # end: the floor
        assert lr_at(500, c) == pytest.approx(1e-4)  # and it stays there
    # middle of the decay: half-way between peak and floor for both shapes
    assert lr_at(60, cos) == pytest.approx(0.55e-3) and lr_at(60, lin) == pytest.approx(0.55e-3)
    # a quarter in: cosine is still high (0.5 * (1 + cos(pi/4)) = 0.854), linear is at 0.75
    assert lr_at(35, cos) == pytest.approx(1e-4 + 0.9e-3 * 0.8535533905932737)
    assert lr_at(35, lin) == pytest.approx(1e-4 + 0.9e-3 * 0.75)
    with pytest.raises(ValueError, match="use 'linear' or 'cosine'"):
        lr_at(20, Sched(decay="step"))


def _hf_lrs(make, steps, **kw):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = make(opt, **kw)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("decay,floor", [("cosine", 0.0), ("cosine", 0.1), ("linear", 0.0), ("linear", 0.1)])
def test_schedule_matches_transformers(decay, floor):
    from transformers import optimization as hf
    c = Sched(decay=decay, min_lr_ratio=floor)
    n = c.max_steps + 1
    if decay == "cosine":
        ref = _hf_lrs(hf.get_cosine_with_min_lr_schedule_with_warmup, n, num_warmup_steps=10,
                      num_training_steps=110, min_lr_rate=floor)
    else:  # linear decay to a floor is transformers' polynomial decay with power 1
        ref = _hf_lrs(hf.get_polynomial_decay_schedule_with_warmup, n, num_warmup_steps=10, num_training_steps=110,
                      lr_end=floor * c.lr, power=1.0)
    assert [lr_at(s, c) for s in range(n)] == pytest.approx(ref, abs=1e-11)


def test_scheduler_wrapper_follows_lr_at():
    c = Sched(max_steps=30, warmup_steps=5)
    model = nn.Linear(3, 3)
    opt = build_optimizer(model, lr=c.lr, weight_decay=0.0)
    sched = build_scheduler(opt, c)
    for step in range(40):
        assert all(g["lr"] == pytest.approx(lr_at(step, c), abs=1e-15) for g in opt.param_groups)
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["last_epoch"] == 40  # the state that a checkpoint saves
