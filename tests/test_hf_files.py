"""from_pretrained / save_pretrained (gpt2.py, bert.py over hf_files.py) against transformers: same outputs from the
same checkpoint, and exports transformers loads."""
import json
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from nanoft.models.bert import BERT, BertConfig, BertForMaskedLM  # noqa: E402
from nanoft.models.gpt2 import GPT2, GPT2Config  # noqa: E402

TOL = 1e-4


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def hf_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_hf_bert_config(**kw):
    return transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=40, **kw)


def bert_batch(vocab=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a padded batch: rows 1 and 2 end with [PAD]
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1  # sentence pairs
    return ids, mask, types


# --- GPT-2 parity ---------------------------------------------------------------------------------------------------

def test_gpt2_parity_safetensors(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    model = GPT2.from_pretrained(tmp_path)
    x = torch.randint(0, 1000, (2, 32))
    with torch.no_grad():
        d = max_diff(model(x)[0], hf_gpt2(x).logits)
    print(f"GPT-2 safetensors logits max|diff| = {d:.2e}")
    assert d < TOL
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after loading
    assert not model.training


@pytest.mark.parametrize("layout", ["GPT2LMHeadModel", "original gpt2 repo"])
def test_gpt2_parity_pytorch_bin(hf_gpt2, tmp_path, layout):
    """transformers 5 always writes safetensors (safe_serialization=False is ignored), so write the .bin the way
    older versions did: torch.save(state_dict). The original "gpt2" repo's file was saved from GPT2Model: no
    "transformer." prefix, no lm_head, and the causal-mask buffers attn.bias / attn.masked_bias included."""
    sd = {k: v.clone() for k, v in hf_gpt2.state_dict().items()}
    if layout == "original gpt2 repo":
        sd = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
        P = hf_gpt2.config.n_positions
        for i in range(hf_gpt2.config.n_layer):
            sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P, dtype=torch.uint8)).view(1, 1, P, P)
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf_gpt2.config.to_json_file(tmp_path / "config.json")
    model = GPT2.from_pretrained(tmp_path)
    x = torch.randint(0, 1000, (2, 32))
    with torch.no_grad():
        d = max_diff(model(x)[0], hf_gpt2(x).logits)
    print(f"GPT-2 pytorch_model.bin ({layout}) logits max|diff| = {d:.2e}")
    assert d < TOL


def test_gpt2_sharded_safetensors(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model = GPT2.from_pretrained(tmp_path)
    x = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        assert max_diff(model(x)[0], hf_gpt2(x).logits) < TOL


def test_gpt2_config_fields_carry_over(tmp_path):
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16, n_inner=48,
                                  resid_pdrop=0.3, embd_pdrop=0.2, attn_pdrop=0.25, layer_norm_epsilon=1e-6,
                                  bos_token_id=1, eos_token_id=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    c = GPT2.from_pretrained(tmp_path).config
    assert (c.n_inner, c.resid_pdrop, c.embd_pdrop, c.attn_pdrop, c.layer_norm_epsilon, c.bos_token_id,
            c.eos_token_id) == (48, 0.3, 0.2, 0.25, 1e-6, 1, 2)


# --- GPT-2 export ---------------------------------------------------------------------------------------------------

def hf_load(cls, folder):
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def test_gpt2_export_loads_in_transformers(tmp_path):
    torch.manual_seed(1)
    model = GPT2(GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                            bos_token_id=0, eos_token_id=0)).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")  # one copy of the tied weight
    hf = hf_load(transformers.GPT2LMHeadModel, tmp_path)
    x = torch.randint(0, 1000, (2, 32))
    with torch.no_grad():
        d = max_diff(model(x)[0], hf(x).logits)
    print(f"GPT-2 nanoft -> transformers logits max|diff| = {d:.2e}")
    assert d < TOL


def test_gpt2_round_trip_transformers_nanoft_transformers(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path / "hf")
    GPT2.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "nano")
    ours, theirs = load_file(tmp_path / "nano" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert ours.keys() == theirs.keys()  # the same layout transformers writes, tensor for tensor
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = hf_load(transformers.GPT2LMHeadModel, tmp_path / "nano")
    x = torch.randint(0, 1000, (2, 32))
    with torch.no_grad():
        assert torch.equal(again(x).logits, hf_gpt2(x).logits)


# --- BERT parity ----------------------------------------------------------------------------------------------------

def test_bert_parity_real_minilm(minilm_dir):
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    enc = tok(["A man is playing a guitar.", "Fine-tuning BERT with task-adaptive pre-training works well."],
              ["Someone plays music.", "Yes."], padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any() and (enc["token_type_ids"] == 1).any()  # padded pairs
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    model = BERT.from_pretrained(minilm_dir)
    with torch.no_grad():
        out = ref(**enc)
        hidden = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        d_hidden = max_diff(hidden, out.last_hidden_state)
        d_pool = max_diff(model.pool(hidden), out.pooler_output)
    print(f"all-MiniLM-L6-v2 last hidden state max|diff| = {d_hidden:.2e}, pooler = {d_pool:.2e}")
    assert d_hidden < TOL and d_pool < TOL


def test_bert_mlm_parity_and_round_trip(tmp_path):
    torch.manual_seed(2)
    ref = transformers.BertForMaskedLM(tiny_hf_bert_config()).eval()
    ref.save_pretrained(tmp_path / "hf")
    model = BertForMaskedLM.from_pretrained(tmp_path / "hf")
    ids, mask, types = bert_batch()
    with torch.no_grad():
        d = max_diff(model(ids, mask, types), ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits)
    print(f"BertForMaskedLM logits max|diff| = {d:.2e}")
    assert d < TOL

    model.save_pretrained(tmp_path / "nano")
    ours, theirs = load_file(tmp_path / "nano" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = hf_load(transformers.BertForMaskedLM, tmp_path / "nano")
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                           ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits)


def test_old_bert_bin_with_gamma_beta_and_pretraining_heads(tmp_path):
    """bert-base-uncased's pytorch_model.bin: BertForPreTraining (bert. prefix, cls.predictions + NSP head
    cls.seq_relationship), LayerNorm.gamma/beta instead of weight/bias, decoder weight stored tied."""
    torch.manual_seed(3)
    ref = transformers.BertForPreTraining(tiny_hf_bert_config()).eval()
    sd = {re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k)): v.clone()
          for k, v in ref.state_dict().items()}
    assert any(k.endswith("gamma") for k in sd) and "cls.seq_relationship.weight" in sd
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ref.config.to_json_file(tmp_path / "config.json")

    ids, mask, types = bert_batch()
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        encoder, mlm = BERT.from_pretrained(tmp_path), BertForMaskedLM.from_pretrained(tmp_path)
        hidden = encoder(ids, mask, types)
        assert max_diff(hidden, out.hidden_states[-1]) < TOL
        assert max_diff(mlm(ids, mask, types), out.prediction_logits) < TOL


def test_bert_export_loads_in_transformers(tmp_path):
    torch.manual_seed(4)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=40, layer_norm_eps=1e-7, hidden_dropout_prob=0.2)
    model = BERT(cfg).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["layer_norm_eps"] == 1e-7
    hf = hf_load(transformers.BertModel, tmp_path)
    assert hf.config.hidden_dropout_prob == 0.2
    ids, mask, types = bert_batch()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = model(ids, mask, types)
        assert max_diff(hidden, out.last_hidden_state) < TOL
        assert max_diff(model.pool(hidden), out.pooler_output) < TOL

    # and back: the reloaded encoder is the same model
    again = BERT.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_bert_mlm_export_loads_in_transformers(tmp_path):
    torch.manual_seed(5)
    model = BertForMaskedLM(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=40)).eval()
    with torch.no_grad():
        model.mlm_head.bias.normal_()  # a non-zero bias, so a lost bias would show
    model.save_pretrained(tmp_path)
    hf = hf_load(transformers.BertForMaskedLM, tmp_path)
    ids, mask, types = bert_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        assert max_diff(model(ids, mask, types), ref) < TOL


def test_bert_encoder_ignores_task_heads(tmp_path):
    torch.manual_seed(6)
    ref = transformers.BertForSequenceClassification(tiny_hf_bert_config(
        num_labels=3, layer_norm_eps=1e-6, hidden_dropout_prob=0.15, attention_probs_dropout_prob=0.05)).eval()
    ref.save_pretrained(tmp_path)
    model = BERT.from_pretrained(tmp_path)  # strict: classifier.* is ignored, not "unexpected"
    c = model.config
    assert (c.layer_norm_eps, c.hidden_dropout_prob, c.attention_probs_dropout_prob) == (1e-6, 0.15, 0.05)
    assert model.layers[0].ln_1.eps == 1e-6
    ids, mask, types = bert_batch()
    with torch.no_grad():
        assert max_diff(model.pool(model(ids, mask, types)),
                        ref.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output) < TOL


def test_mlm_on_checkpoint_without_head_gets_a_fresh_one(minilm_dir, capsys):
    model = BertForMaskedLM.from_pretrained(minilm_dir)
    notice = capsys.readouterr().out.strip()
    assert "no masked-LM head" in notice and "\n" not in notice
    encoder = BERT.from_pretrained(minilm_dir)
    assert torch.equal(model.bert.layers[0].attn.qkv.weight, encoder.layers[0].attn.qkv.weight)
    assert torch.equal(model.mlm_head.transform.ln.weight, torch.ones(384))  # BERT's init: LayerNorm = identity


def test_encoder_from_mlm_checkpoint_notes_fresh_pooler(tmp_path, capsys):
    transformers.BertForMaskedLM(tiny_hf_bert_config()).save_pretrained(tmp_path)
    BERT.from_pretrained(tmp_path)
    assert "no pooler" in capsys.readouterr().out


# --- bad input: one clear line each ---------------------------------------------------------------------------------

def one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_missing_config_json(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        GPT2.from_pretrained(tmp_path)
    one_line(e, "config.json", str(tmp_path), "Hugging Face format")


def test_truncated_safetensors(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError) as e:
        GPT2.from_pretrained(tmp_path)
    one_line(e, str(path), "truncated", "re-download")


def test_corrupted_safetensors_header(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"#garbage####"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        GPT2.from_pretrained(tmp_path)
    one_line(e, str(path), "JSON header", "re-download")


def test_shape_mismatch_is_one_error_listing_everything(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:32].clone()  # 32 positions, config says 64
    del sd["transformer.h.1.ln_2.bias"]
    sd["transformer.h.0.attn.rotary.weight"] = torch.zeros(2)
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        GPT2.from_pretrained(tmp_path)
    one_line(e, "transformer.wpe.weight (32, 64) in checkpoint vs (64, 64) in model",
             "missing: transformer.h.1.ln_2.bias", "unexpected: transformer.h.0.attn.rotary.weight", "strict=False")
    # strict=False skips missing and unexpected names but never loads a wrong shape
    with pytest.raises(ValueError, match="wrong shape"):
        GPT2.from_pretrained(tmp_path, strict=False)
    sd["transformer.wpe.weight"] = torch.zeros(64, 64)
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = GPT2.from_pretrained(tmp_path, strict=False)
    assert torch.equal(model.transformer.wpe.weight, torch.zeros(64, 64))


def test_wrong_or_unknown_architecture(hf_gpt2, minilm_dir, tmp_path):
    with pytest.raises(ValueError) as e:
        GPT2.from_pretrained(minilm_dir)
    one_line(e, "'bert' checkpoint", "BERT.from_pretrained")
    hf_gpt2.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as e:
        BERT.from_pretrained(tmp_path)
    one_line(e, "'gpt2' checkpoint", "GPT2.from_pretrained")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    with pytest.raises(ValueError) as e:
        GPT2.from_pretrained(tmp_path)
    one_line(e, "'llama'", "Llama.from_pretrained")
    (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="mistral")))
    with pytest.raises(ValueError) as e:
        GPT2.from_pretrained(tmp_path)
    one_line(e, "'mistral'", "nanoft loads only gpt2, bert, llama, qwen2")


def test_unsupported_gpt2_variant_is_refused(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, scale_attn_by_inverse_layer_idx=True)))
    with pytest.raises(ValueError) as e:
        GPT2.from_pretrained(tmp_path)
    one_line(e, "scale_attn_by_inverse_layer_idx")
