"""DPO: the loss, rewards and accuracy against TRL's DPOTrainer on the same weights and batch; log 2 at the first
step; the LoRA reference (adapters switched off) is the base model; a few steps learn the preference."""
import copy
import math

import pytest
import torch

from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.quant.lora import add_lora, lora_disabled, merge_lora
from nanoft.recipes.dpo import (PairCollate, dpo_loss, evaluate_preferences, fine_tune_dpo, pair_logps,
                                preference_metrics, sequence_logps, with_reference_logps)
from nanoft.recipes.instruction_tuning import lm_feature, response_perplexity
from nanoft.training.train import TrainConfig

VOCAB, EOS = 101, 100


def tiny_config():
    return GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS)


def random_pairs(n, seed=0):
    """n pairs of token sequences: (prompt, chosen response, rejected response), each response ending in EOS,
    of different lengths so that the batches carry padding."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda k: torch.randint(0, 100, (k,), generator=g).tolist()  # noqa: E731
    out = []
    for i in range(n):
        prompt = rand(3 + i % 4)
        out.append((prompt, rand(2 + (i * 3) % 5) + [EOS], rand(1 + (i * 2) % 6) + [EOS]))
    return out


def as_features(pairs):
    return [{"chosen": lm_feature(p + c, len(p)), "rejected": lm_feature(p + r, len(p))} for p, c, r in pairs]


def test_dpo_matches_trl(tmp_path):
    """TRL 1.16's DPOTrainer._compute_loss on a transformers GPT-2 and a separate reference GPT-2, against
    nanoft's sequence_logps + dpo_loss on the same weights loaded into nanoft's GPT2, on the same padded batch."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import GPT2Config as HFConfig, GPT2LMHeadModel, PreTrainedTokenizerFast
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    vocab = {f"t{i}": i for i in range(100)} | {"<eos>": EOS}
    backend = Tokenizer(WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    cfg = HFConfig(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    policy, reference = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    policy.save_pretrained(tmp_path / "policy")
    reference.save_pretrained(tmp_path / "reference")
    beta = 0.3
    trainer = DPOTrainer(model=policy, ref_model=reference, processing_class=tok,
                         train_dataset=Dataset.from_list([{"prompt": "t1", "chosen": " t2", "rejected": " t3"}] * 2),
                         args=DPOConfig(output_dir=str(tmp_path / "trl"), bf16=False, use_cpu=True, report_to=[],
                                        beta=beta, max_steps=1))
    pairs = random_pairs(6)
    # TRL's batch: prompt + response, unshifted, chosen rows then rejected rows, padded on the right
    rows = [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]
    masks = [[0] * len(p) + [1] * len(c) for p, c, _ in pairs] + [[0] * len(p) + [1] * len(r) for p, _, r in pairs]
    T = max(map(len, rows))
    inputs = {"input_ids": torch.tensor([x + [EOS] * (T - len(x)) for x in rows]),
              "attention_mask": torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in rows]),
              "completion_mask": torch.tensor([m + [0] * (T - len(m)) for m in masks])}
    trainer.model.eval()
    trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False).item()
    trl = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # eval(): no dropout either way

    ours_policy, ours_reference = GPT2.from_pretrained(tmp_path / "policy"), GPT2.from_pretrained(tmp_path / "reference")
    features = with_reference_logps(ours_reference, as_features(pairs))
    batch = PairCollate(pad_id=EOS)(features)
    logps = sequence_logps(ours_policy.eval(), batch["input_ids"], batch["labels"])
    ref_c, ref_r = batch["ref_logps"].float().chunk(2)
    loss, stats = dpo_loss(*logps.chunk(2), ref_c, ref_r, beta)
    assert loss.item() == pytest.approx(trl_loss, abs=1e-5)
    assert stats["chosen_reward"].item() == pytest.approx(trl["rewards/chosen"], abs=1e-5)
    assert stats["rejected_reward"].item() == pytest.approx(trl["rewards/rejected"], abs=1e-5)
    assert stats["reward_margin"].item() == pytest.approx(trl["rewards/margins"], abs=1e-5)
    assert stats["reward_accuracy"].item() == pytest.approx(trl["rewards/accuracies"], abs=1e-6)
    assert logps.chunk(2)[0].mean().item() == pytest.approx(trl["logps/chosen"], abs=1e-4)
    assert 0 < trl["rewards/accuracies"] < 1  # the batch is not a trivial one
    evaluated = evaluate_preferences(ours_policy, features, beta=beta, batch_size=4)  # other batches, same numbers
    assert evaluated["reward_accuracy"] == pytest.approx(100 * trl["rewards/accuracies"], abs=1e-4)
    assert evaluated["reward_margin"] == pytest.approx(trl["rewards/margins"], abs=1e-5)


def test_lora_disabled_is_the_base_model():
    torch.manual_seed(0)
    base = GPT2(tiny_config())
    model = add_lora(copy.deepcopy(base), r=4, alpha=8, targets="all")
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter: the model now differs from its base
    ids = torch.randint(0, 100, (2, 9))
    adapted = model(ids)[0]
    assert not torch.allclose(adapted, base(ids)[0], atol=1e-3)
    with lora_disabled(model):
        torch.testing.assert_close(model(ids)[0], base(ids)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(ids)[0], adapted, rtol=0, atol=0)  # switched back on
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        with lora_disabled(model):
            pass


@pytest.mark.parametrize("reference", ["lora_off", "initial"])
def test_first_step_loss_is_log_2(reference):
    """At step 0 the policy is the reference: both rewards are 0, the loss is log 2, the accuracy 0 (ties)."""
    torch.manual_seed(0)
    model = add_lora(GPT2(tiny_config()), r=4, alpha=8, targets="all")
    if reference == "initial":  # an adapter that continues (DPO after SFT): the reference is the model as it is
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.2)
    pairs = with_reference_logps(model, as_features(random_pairs(8)), lora_off=reference == "lora_off")
    result = fine_tune_dpo(model, pairs, TrainConfig(lr=1e-2, max_steps=2, batch_size=8, shuffle=False,
                                                     progress=False, precision="fp32"), beta=0.1, pad_id=EOS)
    first = next(r for r in result.history if r["type"] == "dpo" and r["step"] == 1)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert first["reward_accuracy"] == 0.0
    second = next(r for r in result.history if r["type"] == "dpo" and r["step"] == 2)
    assert second["loss"] < math.log(2)  # the same 8 pairs again: it learned from the first step


@pytest.mark.parametrize("average_logps, beta", [(False, 0.5), (True, 5.0)])  # a mean wants a larger beta
def test_dpo_learns_the_preference(average_logps, beta):
    torch.manual_seed(0)
    model = GPT2(tiny_config())
    reference = copy.deepcopy(model).requires_grad_(False)  # full fine-tuning: a frozen copy
    pairs = with_reference_logps(reference, as_features(random_pairs(8)))
    before = evaluate_preferences(model, pairs)
    assert before["reward_accuracy"] == 0.0 and before["reward_margin"] == pytest.approx(0.0, abs=1e-9)
    result = fine_tune_dpo(model, pairs, TrainConfig(lr=3e-3, max_steps=30, batch_size=4, progress=False,
                                                     precision="fp32"), beta=beta, pad_id=EOS, sft_weight=0.1,
                           average_logps=average_logps)
    assert result.history[-1]["type"] == "dpo" and next(r for r in result.history if r["type"] == "dpo")["loss"] == \
        pytest.approx(math.log(2), abs=1e-6)
    after = evaluate_preferences(model, pairs, beta=0.5)
    assert after["reward_accuracy"] == 100.0 and after["preference_accuracy"] > before["preference_accuracy"]
    assert after["reward_margin"] > 1.0
    steps = [r for r in result.history if r["type"] == "dpo"]
    assert len(steps) == 30 and steps[-1]["loss"] < 0.3


def test_preference_metrics_chosen_perplexity():
    """The chosen answers' perplexity from the pair log-probs equals response_perplexity on the chosen sides alone;
    log-probs handed to with_reference_logps give the same pairs as running the reference."""
    torch.manual_seed(0)
    model, reference = GPT2(tiny_config()), GPT2(tiny_config())
    features = as_features(random_pairs(7))
    pairs = with_reference_logps(reference, features)
    assert pairs == with_reference_logps(None, features, logps=pair_logps(reference, features))
    out = evaluate_preferences(model, pairs, batch_size=3)
    chosen = [p["chosen"] for p in features]
    assert out["chosen_perplexity"] == pytest.approx(response_perplexity(model, chosen)["perplexity"], rel=1e-5)
    assert out["reference_chosen_perplexity"] == pytest.approx(response_perplexity(reference, chosen)["perplexity"],
                                                               rel=1e-5)
    assert out["chosen_perplexity"] != pytest.approx(out["reference_chosen_perplexity"], rel=1e-3)
    logps = pair_logps(model, features)
    assert preference_metrics(logps, features)["preference_accuracy"] == \
        pytest.approx(100.0 * sum(c > r for c, r in logps.tolist()) / len(features))
    with pytest.raises(ValueError, match="shape"):
        with_reference_logps(None, features, logps=logps[:3])


def test_dpo_refuses_pairs_without_reference():
    with pytest.raises(ValueError, match="with_reference_logps"):
        fine_tune_dpo(GPT2(tiny_config()), as_features(random_pairs(2)), TrainConfig(max_steps=1, batch_size=2))
    with pytest.raises(ValueError, match="beta"):
        fine_tune_dpo(GPT2(tiny_config()), as_features(random_pairs(2)), TrainConfig(max_steps=1), beta=0)


def test_preference_features_label_each_response_and_its_end():
    from nanoft.data.instructions import load_preferences
    from nanoft.io.assets import smollm2_gguf
    from nanoft.io.tokenizer import load_tokenizer
    from nanoft.recipes.dpo import preference_features
    tok = load_tokenizer(smollm2_gguf())
    records = load_preferences(verbose=False)["test"][:4]
    pairs = preference_features(records, tok)
    for pair, r in zip(pairs.features, records):
        for side in ("chosen", "rejected"):
            labelled = [t for t in pair[side]["labels"] if t != -100]
            assert tok.decode(labelled) == r[side] + "<|im_end|>"
        n_prompt = pair["chosen"]["labels"].count(-100)
        assert pair["chosen"]["input_ids"][:n_prompt] == pair["rejected"]["input_ids"][:n_prompt]  # one prompt
    longest = [max(len(p["chosen"]["input_ids"]), len(p["rejected"]["input_ids"])) for p in pairs.features]
    short = preference_features(records, tok, max_len=min(longest), verbose=False)  # the shortest pair still fits
    assert len(short.dropped) >= 1 and len(short.features) + len(short.dropped) == len(records)
