"""Beam search and no_repeat_ngram_size (nanoft.models.sampling) against transformers' generate on the same weights:
tiny random GPT-2 and Llama models, prompts of batch 1 to 3, an eos that fires. Then what holds without a reference:
with as many beams as sequences, beam search is exhaustive; the cache follows the beams; the n-gram ban equals
transformers' processor and holds when sampling."""
import itertools

import pytest
import torch
import torch.nn as nn

from nanoft import GPT2, LSTMLM, Llama, LSTMConfig
from nanoft.models.kv_cache import KVCache
from nanoft.models.sampling import ban_repeated_ngrams, beam_search, generate

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: a second thread only adds synchronisation (10-100x slower steps on a busy shared CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spread_out(hf):
    """Random weights at a scale where the logits differ clearly (HF's 0.02 init makes them all ~0, so that beams
    would tie and rounding would decide)."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name or "ln_" in name else 0.15 * torch.randn_like(p))
    return hf.eval()


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    torch.manual_seed(0)
    hf = spread_out(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4)))
    folder = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(folder)
    return GPT2.from_pretrained(folder).eval(), hf


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    torch.manual_seed(0)
    hf = spread_out(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)))
    folder = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(folder)
    return Llama.from_pretrained(folder).eval(), hf


def hf_generate(hf, x, n, eos=None, **kw):
    """transformers' generate with its defaults for everything but what we pass (pad = eos, as nanoft pads)."""
    return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=0, do_sample=False,
                       eos_token_id=eos, pad_token_id=eos if eos is not None else 0, **kw)


def prompts(V):
    """Batches of 1, 2 and 3 prompts of different lengths."""
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, V, (B, T), generator=g) for B, T in ((1, 3), (2, 4), (3, 5), (2, 7))]


def check_beams_equal_transformers(model, hf, V, n_new=20):
    ended_early = 0
    for x in prompts(V):
        for ngram in (0, 2):
            kw = dict(num_beams=4, no_repeat_ngram_size=ngram)
            free = model.generate(x, n_new, **kw)
            assert torch.equal(free, hf_generate(hf, x, n_new, **kw))
            # an eos that fires: the token the best beam of row 0 emits 4th, so ending there is a strong candidate
            eos = int(free[0, x.size(1) + 3])
            ours = model.generate(x, n_new, eos_token_id=eos, **kw)
            assert torch.equal(ours, hf_generate(hf, x, n_new, eos=eos, **kw))
            ended_early += int((ours[:, x.size(1):-1] == eos).any(dim=1).sum())
    assert ended_early >= 4  # eos really ended hypotheses before max_new_tokens (and rows were padded after it)


def test_gpt2_beam_search_equals_transformers(gpt2_pair):
    check_beams_equal_transformers(*gpt2_pair, V=1000)


def test_llama_beam_search_equals_transformers(llama_pair):
    check_beams_equal_transformers(*llama_pair, V=256)


@pytest.mark.parametrize("ngram", [1, 2, 3])
def test_greedy_with_no_repeat_ngram_equals_transformers(gpt2_pair, llama_pair, ngram):
    for (model, hf), V in ((gpt2_pair, 1000), (llama_pair, 256)):
        for x in prompts(V)[1:3]:
            ours = model.generate(x, 30, do_sample=False, no_repeat_ngram_size=ngram)
            assert torch.equal(ours, hf_generate(hf, x, 30, no_repeat_ngram_size=ngram))
            for row in ours.tolist():  # (the prompt included)
                grams = [tuple(row[i:i + ngram]) for i in range(len(row) - ngram + 1)]
                assert len(grams) == len(set(grams))
    # the ban changes something: plain greedy on these models repeats itself
    x = prompts(1000)[1]
    plain = gpt2_pair[0].generate(x, 30, do_sample=False)
    assert not torch.equal(plain, gpt2_pair[0].generate(x, 30, do_sample=False, no_repeat_ngram_size=2))


def test_length_penalty_equals_transformers(gpt2_pair):
    """sampling.beam_search's length_penalty (models use transformers' default, 1.0): 0 ranks endings by their sum,
    2 favours long ones."""
    model, hf = gpt2_pair

    def next_logits(ids, cache):
        cache = cache or KVCache()
        return model(ids[:, cache.length:], kv_cache=cache, last_only=True)[0][:, -1], cache
    for x in prompts(1000)[1:3]:
        eos = int(beam_search(next_logits, x, 20, 4)[0, x.size(1) + 3])
        lengths = set()
        for penalty in (0.0, 2.0):
            ours = beam_search(next_logits, x, 20, 4, eos, length_penalty=penalty)
            assert torch.equal(ours, hf_generate(hf, x, 20, eos=eos, num_beams=4, length_penalty=penalty))
            lengths.add(ours.size(1))
        assert len(lengths) == 2  # the penalty changed which hypothesis won


def test_beam_search_follows_the_beams_with_or_without_the_cache(gpt2_pair, llama_pair):
    """The cache is reordered with the beams (KVCache.reorder; the LSTM's (h, c) too): the same sequences as
    re-reading every prefix."""
    torch.manual_seed(0)
    lstm = LSTMLM(LSTMConfig(vocab_size=300, emb_dim=32, hidden_dim=32))
    for model, V in ((gpt2_pair[0], 1000), (llama_pair[0], 256), (lstm, 300)):
        x = prompts(V)[2]
        cached = model.generate(x, 15, num_beams=3, no_repeat_ngram_size=2)
        assert torch.equal(cached, model.generate(x, 15, num_beams=3, no_repeat_ngram_size=2, use_cache=False))


# ---------------------------------------------------------------- without a reference model

V_TOY = 3


def toy_logits(prefix):
    """A fixed random distribution over V_TOY tokens for every prefix (seeded by the prefix itself)."""
    seed = sum((t + 1) * 7 ** i for i, t in enumerate(prefix))  # distinct for distinct prefixes
    return torch.randn(V_TOY, generator=torch.Generator().manual_seed(seed)) * 2


class PrefixCache:
    """A stand-in for KVCache that holds each row's ids so far, so that a wrong reorder shows."""

    def __init__(self, ids):
        self.ids = ids

    def reorder(self, rows):
        self.ids = self.ids.index_select(0, rows)


def toy_next_logits(ids, cache):
    if cache is not None:  # the cache must hold exactly the rows' prefixes: the beams' histories were followed
        assert torch.equal(cache.ids, ids[:, :-1])
    return torch.stack([toy_logits(row) for row in ids.tolist()]), PrefixCache(ids)


def test_with_as_many_beams_as_sequences_beam_search_finds_the_most_likely():
    """n_new tokens from V_TOY: V_TOY ** (n_new - 1) beams keep every prefix, so the search is exhaustive."""
    x, n_new = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 0]]), 4

    def log_prob(seq):
        return sum(toy_logits(seq[:i]).log_softmax(-1)[seq[i]].item() for i in range(x.size(1), len(seq)))
    best = [max((row + list(s) for s in itertools.product(range(V_TOY), repeat=n_new)), key=log_prob)
            for row in x.tolist()]
    model = nn.Linear(1, 1)
    assert generate(model, toy_next_logits, x, n_new, num_beams=V_TOY ** (n_new - 1)).tolist() == best
    greedy = generate(model, toy_next_logits, x, n_new, do_sample=False).tolist()
    assert greedy != best  # this toy model is one where greedy misses it (row 1)


def test_ban_equals_transformers_processor():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (8, 30), generator=g)  # a small vocabulary: many repeated n-grams
    logits = torch.randn(8, 6, generator=g)
    for n in (1, 2, 3, 4):
        ours = ban_repeated_ngrams(ids, logits, n)
        assert torch.equal(ours, NoRepeatNGramLogitsProcessor(n)(ids, logits.clone()))
        assert torch.isinf(ours).any()
    assert torch.equal(ban_repeated_ngrams(ids[:, :2], logits, 3), logits)  # no complete 3-gram yet


def test_sampling_never_repeats_an_ngram():
    V = 8

    def next_logits(ids, cache):
        return torch.zeros(ids.size(0), V), None  # uniform: without the ban, bigrams repeat all the time
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (16, 2), generator=g)
    out = generate(nn.Linear(1, 1), next_logits, x, 25, generator=g, no_repeat_ngram_size=2)
    for row in out.tolist():
        assert len(set(zip(row, row[1:]))) == len(row) - 1
    free = generate(nn.Linear(1, 1), next_logits, x, 25, generator=g)
    assert any(len(set(zip(row, row[1:]))) < len(row) - 1 for row in free.tolist())


@pytest.mark.parametrize("kw, words", [
    (dict(num_beams=0), "num_beams=0"),
    (dict(num_beams=4, do_sample=True), "beam search"),
    (dict(num_beams=4, top_k=5), "top_k"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size=-1"),
])
def test_bad_arguments_are_refused_clearly(gpt2_pair, llama_pair, kw, words):
    for model in (gpt2_pair[0], llama_pair[0]):
        with pytest.raises(ValueError, match=words):
            model.generate(torch.zeros(1, 3, dtype=torch.long), 5, **kw)


@pytest.mark.slow  # about a minute of CPU time (3 min on the busy shared cores), most of it transformers' GGUF loader
def test_smollm2_beam_search_equals_transformers():
    """The real SmolLM2-135M-Instruct (GGUF), chat prompts, its eos <|im_end|>: 4 beams with and without
    no_repeat_ngram_size=2 give transformers' sequences, its model read by transformers' own GGUF loader."""
    from nanoft import load_tokenizer, smollm2_gguf
    path = smollm2_gguf()
    folder, name = path.rsplit("/", 1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    model = Llama.from_gguf(path).eval()
    tok = load_tokenizer(path)
    eos = tok.eos_token_id
    for question in ("What is the capital of France? Answer in one word.",
                     "Rewrite in passive voice: The cat chased the mouse."):
        text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        x = torch.tensor([tok.encode(text, add_special_tokens=False)])
        for ngram in (0, 2):
            ours = model.generate(x, 32, num_beams=4, no_repeat_ngram_size=ngram, eos_token_id=eos)
            assert torch.equal(ours, hf_generate(hf, x, 32, eos=eos, num_beams=4, no_repeat_ngram_size=ngram))
            if ngram == 0:  # the short answer ends with eos
                assert ours[0, -1] == eos and ours.size(1) < x.size(1) + 32
