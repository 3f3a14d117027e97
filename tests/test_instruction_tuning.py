"""Instruction tuning: the label mask against TRL's completion-only mask on the same ChatML records, the loss
normalised by the response tokens of the whole optimizer step, over-long records, the three methods, and the
chapter's double-shift bug."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nanoft.data.instructions import chat_messages, load_instructions
from nanoft.io.assets import smollm2_gguf
from nanoft.io.tokenizer import load_tokenizer
from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.quant.lora import LoRALinear
from nanoft.quant.quantize import NF4Linear
from nanoft.recipes.instruction_tuning import (SFTCollate, fine_tune_sft, generate_responses, lm_feature,
                                               prepare_for_tuning, response_perplexity, sft_features)
from nanoft.training.train import TrainConfig


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(smollm2_gguf())


@pytest.fixture(scope="module")
def records():
    data = load_instructions()
    return data["train"][:6] + data["test"][-2:]  # with and without an input


def tiny_gpt2(vocab, seed=0):
    torch.manual_seed(seed)
    return GPT2(GPT2Config(vocab_size=vocab, n_positions=256, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                           embd_pdrop=0.0, attn_pdrop=0.0))


def test_labels_match_trl_completion_only(tok, records, tmp_path):
    """TRL's SFTTrainer on prompt/completion conversations (completion-only loss), with the same tokenizer and chat
    template, labels the same tokens, shifted by one (TRL's model shifts, nanoft's features are already shifted).
    TRL also keeps the template's newline after <|im_end|> and trains on it; nanoft ends the sequence at <|im_end|>."""
    from datasets import Dataset
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=RustTokenizer.from_str(tok.tok.to_str()), eos_token="<|im_end|>",
                                     pad_token="<|im_end|>", bos_token="<|im_start|>")
    hf_tok.chat_template = tok.chat_template
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    conversations = [chat_messages(r) for r in records]
    dataset = Dataset.from_list([{"prompt": c[:1], "completion": c[1:]} for c in conversations])
    trainer = SFTTrainer(model=model, processing_class=hf_tok, train_dataset=dataset,
                         args=SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to=[], bf16=False, use_cpu=True))
    ours = sft_features(records, tok).features
    newline = tok.encode("\n", add_special_tokens=False)
    end = tok.token_to_id("<|im_end|>")
    for row, f in zip(trainer.train_dataset, ours):
        trl_ids, trl_labels = row["input_ids"], row["labels"]
        assert trl_ids[-1:] == newline and trl_labels[-1] == newline[0]  # TRL's extra token
        assert f["input_ids"] + f["labels"][-1:] == trl_ids[:-1]
        assert f["labels"] == trl_labels[1:-1]  # the same masked tokens, one position earlier
        assert f["labels"][-1] == end  # the end-of-turn token is trained on


def test_labels_are_the_response_and_its_end(tok, records):
    data = sft_features(records, tok)
    for f, r in zip(data.features, data.records):
        assert len(f["input_ids"]) == len(f["labels"])
        labelled = [t for t in f["labels"] if t != -100]
        assert tok.decode(labelled) == r["output"] + "<|im_end|>"
        n_masked = f["labels"].index(labelled[0])
        # every masked position is the prompt: the model reads it all before the first labelled token
        prompt = tok.decode(f["input_ids"][:n_masked + 1])
        assert prompt.endswith("<|im_start|>assistant\n") and r["instruction"] in prompt
        assert "You are a helpful AI assistant named SmolLM" in prompt  # no system message: the template's default


def test_training_on_the_prompt_too(tok, records):
    masked, everything = sft_features(records, tok).features, sft_features(records, tok, mask_prompt=False).features
    for m, e in zip(masked, everything):
        assert m["input_ids"] == e["input_ids"]
        assert e["labels"] == e["input_ids"][1:] + m["labels"][-1:]  # every next token, the prompt's included
        assert [t for t in m["labels"] if t != -100] == e["labels"][-len([t for t in m["labels"] if t != -100]):]


def test_over_long_records_are_cut_or_dropped(tok, records, capsys):
    full = sft_features(records, tok)
    lengths = [len(f["input_ids"]) for f in full.features]
    max_len = sorted(lengths)[len(lengths) // 2]  # half the records are longer
    n_long = sum(n > max_len for n in lengths)
    cut = sft_features(records, tok, max_len=max_len)
    assert cut.truncated == n_long and not cut.dropped and max(len(f["input_ids"]) for f in cut.features) == max_len
    assert f"{n_long} of {len(records)} conversations cut" in capsys.readouterr().out
    dropped = sft_features(records, tok, max_len=max_len, overlong="drop")
    assert len(dropped.dropped) == n_long and len(dropped.features) == len(records) - n_long
    longest_prompt = max(f["labels"].count(-100) for f in full.features) + 1  # fills this max_len by itself
    assert len(sft_features(records, tok, max_len=longest_prompt, verbose=False).dropped) >= 1
    with pytest.raises(ValueError, match="no record fits"):
        sft_features(records, tok, max_len=5, verbose=False)


def _features_of_uneven_responses():
    """Four examples whose responses are 1, 2, 20 and 30 tokens: per-micro-batch means would weigh them very
    differently from one mean over all 53 tokens."""
    g = torch.Generator().manual_seed(0)
    out = []
    for n_prompt, n_response in [(5, 1), (3, 2), (6, 20), (4, 30)]:
        ids = torch.randint(0, 50, (n_prompt + n_response,), generator=g).tolist()
        out.append(lm_feature(ids, n_prompt))
    return out


def test_token_normalised_accumulation_equals_one_batch():
    features = _features_of_uneven_responses()
    runs = {}
    for batch_size, accum in [(4, 1), (2, 2), (1, 4)]:
        model = tiny_gpt2(50)
        cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=batch_size, grad_accum_steps=accum, shuffle=False,
                          log_every=1, progress=False, precision="fp32", grad_clip=1e9)  # logs the gradient norm
        result = fine_tune_sft(model, features, cfg)
        runs[batch_size] = ([r for r in result.history if r["type"] == "train"], model.state_dict())
    one_batch, _ = runs[4]
    # the loss of the first step, by hand: the summed NLL of all 53 response tokens over 53
    batch = SFTCollate()(features)
    logits, _ = tiny_gpt2(50)(batch["input_ids"])
    by_hand = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    assert one_batch[0]["loss"] == pytest.approx(by_hand.item(), abs=1e-6)
    for accumulated in (runs[2], runs[1]):
        for a, b in zip(one_batch, accumulated[0]):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        for k, v in runs[4][1].items():
            torch.testing.assert_close(accumulated[1][k], v, rtol=0, atol=1e-5)  # lr 1e-2: a wrong weighting moves ~1e-3


def test_ddp_two_processes_equal_one_with_token_normalisation(tmp_path):
    """torchrun, 2 gloo processes x 2 examples x 2 micro-batches against 1 process x 4 x 2: the processes hold
    different numbers of response tokens, and the step still divides the summed loss by the global count."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    worker = str(repo / "tests" / "_sft_worker.py")
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            worker, str(tmp_path / "two"), "--batch-size", "2"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    one = subprocess.run([sys.executable, worker, str(tmp_path / "one"), "--batch-size", "4"], env=env,
                         capture_output=True, text=True, timeout=300)
    out, _ = two.communicate(timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + out
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and b["data"]["world_size"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-5, msg=k)
    logs = [[json.loads(line)["loss"] for line in open(tmp_path / run / "log.jsonl")] for run in ("one", "two")]
    assert logs[0] == pytest.approx(logs[1], abs=1e-6)


def test_prepare_for_tuning_methods():
    full = prepare_for_tuning(tiny_gpt2(50), "full")
    assert all(p.requires_grad for p in full.parameters())
    lora = prepare_for_tuning(tiny_gpt2(50), "lora", r=4, alpha=8)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    qlora = prepare_for_tuning(tiny_gpt2(50), "qlora", r=4, alpha=8)
    wrapped = [m for m in qlora.modules() if isinstance(m, LoRALinear)]
    assert wrapped and all(isinstance(m.base, NF4Linear) for m in wrapped)
    with pytest.raises(ValueError, match="full, lora, qlora"):
        prepare_for_tuning(tiny_gpt2(50), "adapter")


def test_sft_teaches_answers_that_end(tok, records):
    """A tiny GPT-2 over SmolLM2's vocabulary learns two answers by heart: its greedy answers are the references,
    and they end with the end-of-turn token, which only the labels on <|im_end|> teach."""
    data = sft_features(records[:2], tok)
    model = tiny_gpt2(len(tok))
    before = response_perplexity(model, data.features)
    cfg = TrainConfig(lr=3e-2, max_steps=50, warmup_steps=5, batch_size=2, progress=False, precision="fp32")
    fine_tune_sft(model, data.features, cfg, val_features=data.features)
    after = response_perplexity(model, data.features)
    assert after["tokens"] == before["tokens"] == sum(len(tok.encode(r["output"], add_special_tokens=False)) + 1
                                                      for r in records[:2])
    assert after["perplexity"] < 1.5 < before["perplexity"]
    answers = generate_responses(model, tok, records[:2], max_new_tokens=60, batch_size=1)  # GPT-2: no mask
    assert [a["text"] for a in answers] == [r["output"] for r in records[:2]]
    assert all(a["stopped"] for a in answers)


def test_batched_answers_equal_one_prompt_at_a_time(tok, records):
    """Left-padded batches of prompts of different lengths give each prompt the answer it gets alone, in order."""
    from nanoft.models.llama import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2)).eval()
    batched = generate_responses(model, tok, records[:7], max_new_tokens=12, batch_size=3)
    alone = generate_responses(model, tok, records[:7], max_new_tokens=12, batch_size=1)
    assert len({len(tok.encode(r["instruction"])) for r in records[:7]}) > 3  # the prompts' lengths differ
    assert batched == alone


def test_the_chapter_double_shift_bug(tmp_path):
    """The chapter's sketch passes labels = input_ids[:, 1:] to GPT2LMHeadModel, which shifts labels itself.
    As written it fails on a shape mismatch; padded back to length T (the usual "fix") it trains silently on the
    token two positions ahead. nanoft's contract (targets already shifted, the model never shifts) gives
    transformers' own next-token loss on the same weights."""
    from transformers import GPT2Config as HFConfig, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(HFConfig(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    hf.save_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 12))
    with pytest.raises(ValueError, match="batch_size"):
        hf(input_ids=ids, labels=ids[:, 1:])  # the chapter's line
    padded = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)  # (B, T) again
    double_shifted = hf(input_ids=ids, labels=padded).loss
    logits = hf(input_ids=ids).logits
    two_ahead = F.cross_entropy(logits[:, :-2].flatten(0, 1), ids[:, 2:].flatten())
    torch.testing.assert_close(double_shifted, two_ahead)  # it learns to predict t + 2 from t
    right = hf(input_ids=ids, labels=ids).loss  # transformers: pass the unshifted ids, it shifts once
    ours = GPT2.from_pretrained(tmp_path).eval()
    _, loss = ours(ids[:, :-1], targets=ids[:, 1:])  # nanoft: shift once, in the data
    torch.testing.assert_close(loss, right, rtol=1e-5, atol=1e-5)
    assert abs(double_shifted.item() - right.item()) > 1e-3
