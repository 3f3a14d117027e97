"""nanoft.recipes.causal_lm: task tokens, task blocks, freezing, perplexity, the fine-tuning curve, samples; and
nanoft.recipes.small_gpt2: where the offline GPT-2 is cached. Tiny models with GPT-2's real BPE tokenizer; nothing here is timed."""
import math
from dataclasses import replace

import pytest
import torch

from nanoft.recipes.causal_lm import (TASK_TOKENS, add_task_tokens, best_and_final, evaluate_perplexity, fine_tune_lm,
                                      first_reaching, lm_loss, sample, task_blocks, task_ids)
from nanoft.recipes.small_gpt2 import PretrainConfig, detokenize_wikitext, offline_model_dir
from nanoft.training.freeze import train_last_blocks
from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.data.lm_data import LMBlocks
from nanoft.models.lstm import LSTMConfig, LSTMLM
from nanoft.io.tokenizer import load_gpt2_tokenizer
from nanoft.training.train import TrainConfig

SPEECHES = [f"SPEAKER {i}:\nA line of verse, the {i}th, and then another." for i in range(60)]


@pytest.fixture
def tok(gpt2_bpe_dir):
    return load_gpt2_tokenizer(gpt2_bpe_dir)


def tiny_gpt2(vocab_size, n_layer=2):
    return GPT2(GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=16, n_layer=n_layer, n_head=2))


def test_task_tokens_grow_the_embeddings_and_wrap_every_example(tok):
    model = tiny_gpt2(tok.vocab_size)
    old = model.transformer.wte.weight.detach().clone()
    start_id, end_id = add_task_tokens(model, tok)
    assert (start_id, end_id) == (50257, 50258) and model.config.vocab_size == tok.vocab_size == 50259
    wte = model.transformer.wte.weight
    assert torch.equal(wte[:50257], old) and torch.allclose(wte[start_id], old.mean(0))
    assert model.lm_head.weight is wte  # still tied
    ids = task_ids(SPEECHES[:3], tok)
    assert ids[0] == start_id and ids[-1] == end_id and (ids == start_id).sum() == (ids == end_id).sum() == 3
    assert tok.decode(ids.tolist()).startswith(f"{TASK_TOKENS[0]}{SPEECHES[0]}{TASK_TOKENS[1]}")
    plain = task_ids(SPEECHES[:3], tok, task_tokens=False)
    assert tok.decode(plain.tolist()) == "".join(s + "\n\n" for s in SPEECHES[:3])


def test_task_blocks_hold_out_a_tail_of_at_least_two_blocks(tok):
    model = tiny_gpt2(tok.vocab_size)
    add_task_tokens(model, tok)
    task = task_blocks(SPEECHES, tok, block_size=16, val_fraction=0.001)
    ids = task_ids(SPEECHES, tok)
    assert torch.equal(torch.cat([task.train_ids, task.val_ids]), ids)  # a split, not a shuffle
    assert len(task.val) == 2  # val_fraction 0.001 of ~1,500 tokens would be 1 token: raised to 2 blocks
    cut = task_blocks(SPEECHES, tok, block_size=16, train_tokens=100)
    assert torch.equal(cut.train_ids, task.train_ids[:100]) and len(cut.train) == 99 // 16


def test_train_last_blocks_freezes_the_rest(tok):
    model = tiny_gpt2(100, n_layer=3)
    count = lambda *ms: sum(p.numel() for m in ms for p in m.parameters())
    assert train_last_blocks(model, 1) == count(model.transformer.h[2], model.transformer.ln_f)
    assert not model.transformer.wte.weight.requires_grad and not any(
        p.requires_grad for p in model.transformer.h[1].parameters())
    assert train_last_blocks(model, 0) == count(model.transformer.ln_f)
    assert train_last_blocks(model, 3) == model.num_parameters() - count(model.transformer.wte,
                                                                         model.transformer.wpe)
    with pytest.raises(ValueError, match="last 4 blocks: the model has 3 blocks: pass 0 to 3"):
        train_last_blocks(model, 4)


def test_perplexity_is_token_weighted_exp_nll():
    """exp(mean NLL over all validation tokens): checked against F.cross_entropy directly."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2)).eval()
    blocks = LMBlocks(torch.randint(0, 50, (16 * 5 + 1,)), 16)
    got = evaluate_perplexity(model, blocks, batch_size=2)["perplexity"]  # batches of 2, 2, 1
    x, y = torch.stack([b["input_ids"] for b in blocks]), torch.stack([b["labels"] for b in blocks])
    expected = math.exp(torch.nn.functional.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item())
    assert got == pytest.approx(expected, rel=1e-5)
    assert lm_loss(model, {"input_ids": x, "labels": y}).item() == pytest.approx(math.log(expected), rel=1e-5)


@pytest.mark.parametrize("make", [lambda: tiny_gpt2(64), lambda: LSTMLM(LSTMConfig(vocab_size=64, emb_dim=16,
                                                                                   hidden_dim=16))])
def test_fine_tune_returns_one_row_per_evaluation_and_learns(make):
    torch.manual_seed(0)
    pattern = torch.arange(64).repeat(20)  # a sequence that can be learnt: next id = id + 1
    # validation blocks start at the same phases of the pattern as the training blocks (1024 = 16 x 64): an LSTM
    # can learn "what comes at this position of a block" as well as "what comes after this id"
    train, val = LMBlocks(pattern[:1025], 16), LMBlocks(pattern[1024:], 16)
    cfg = TrainConfig(lr=1e-2, max_steps=30, eval_every=10, batch_size=4, warmup_steps=2, device="cpu",
                      precision="fp32", progress=False)
    result = fine_tune_lm(make(), train, val, cfg, verbose=False)
    curve = result.curve
    assert result.step == 30 and [r["step"] for r in result.history if r["type"] == "eval"] == [10, 20, 30]
    assert [r["step"] for r in curve] == [0, 10, 20, 30]
    assert [r["tokens"] for r in curve] == [0, 10 * 4 * 16, 20 * 4 * 16, 30 * 4 * 16]
    assert curve[0]["seconds"] == 0 and all(a["seconds"] < b["seconds"] for a, b in zip(curve, curve[1:]))
    assert curve[-1]["ppl"] < 0.95 * curve[0]["ppl"]  # it learns, from about uniform (64)
    assert best_and_final(curve)[1] == curve[-1]["ppl"] and first_reaching(curve, curve[1]["ppl"]) == curve[1]
    assert first_reaching(curve, 0.5) is None


def test_fine_tune_refuses_blocks_longer_than_the_model_reads():
    with pytest.raises(ValueError, match="block_size 40 is longer than the model's n_positions 32"):
        fine_tune_lm(tiny_gpt2(64), LMBlocks(torch.arange(100) % 64, 40), LMBlocks(torch.arange(100) % 64, 40),
                  TrainConfig(max_steps=1), verbose=False)


def test_sample_starts_with_the_prompt_and_stops_at_the_end_token(tok):
    torch.manual_seed(0)
    model = tiny_gpt2(tok.vocab_size)
    start_id, end_id = add_task_tokens(model, tok)
    with torch.no_grad():  # make [TASK_END] the certain next token
        model.lm_head.weight[end_id] = 0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[end_id, 0] = 100.0
    text = sample(model, tok, "ROMEO:\n", max_new_tokens=10, start_id=start_id, end_id=end_id)
    assert text == "[TASK_START]ROMEO:\n[TASK_END]"
    assert sample(model, tok, "x", 5, seed=3) == sample(model, tok, "x", 5, seed=3)  # seeded


def test_the_offline_model_folder_depends_on_the_weights_only(monkeypatch, tmp_path, shared_data_dir):
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path))
    monkeypatch.setenv("NANOFT_OFFLINE", "1")
    data = shared_data_dir
    default = offline_model_dir(data)
    assert default.parent == tmp_path / "models"
    assert default.name == ("gpt2-wikitext2-small" if data else "gpt2-sample-small")
    # how it runs does not change the model's folder; what it trains does
    run_only = replace(PretrainConfig().train, device="cpu", precision="bf16", progress=False, log_every=1)
    assert offline_model_dir(data, PretrainConfig(gen_tokens=5, train=run_only)) == default
    ten_steps = PretrainConfig(train=replace(PretrainConfig().train, max_steps=10))
    assert offline_model_dir(data, ten_steps) != default
    assert offline_model_dir(data, PretrainConfig(n_layer=2)) not in (default, offline_model_dir(data, ten_steps))
    assert offline_model_dir(data, PretrainConfig.tiny()) not in (default, offline_model_dir(data, ten_steps))


def test_detokenize_wikitext():
    text = ' = Homarus gammarus = \n It weighs 1 @,@ 000 kg ( 2 @.@ 2 lb ) , and is " well @-@ known " . It \'s big .\n'
    assert detokenize_wikitext(text) == (' = Homarus gammarus = \n It weighs 1,000 kg (2.2 lb), and is '
                                         '"well-known". It\'s big.\n')
