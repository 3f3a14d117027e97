"""nanoft.io.tokenizer against transformers (fast and slow Python tokenizers) and OpenAI's original GPT-2 BPE algorithm,
on the real BERT (all-MiniLM-L6-v2) and GPT-2 vocabularies."""
import json
import shutil

import pytest
import torch
import transformers

from nanoft.io.tokenizer import add_special_tokens, load_bert_tokenizer, load_gpt2_tokenizer

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'll tell you: it's DON'T, they're, we've, she'd, you'll, I'm.",
    "Numbers 3.14159, 1,000,000 and 2024-01-31; $5.99 / 42% (approx.) #1 @user",
    "Café naïve résumé Ünïcödé ñ ß œ Æ ﬁ Ångström",
    "東京タワー 北京 서울 漢字かな交じり文",
    "emoji 😀👍🏽 👩‍👩‍👧‍👦 🇫🇷 ☃",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\tmore tabs\n\nnew paragraphs\n\n\nthree newlines\r\nwindows line",
    "a    b     c\u00a0nbsp\u3000ideographic\u2009thin space\u200bzero width",
    "control\x00chars\x07 and \x1c separators",
    "punctuation!!! ??? ... --- \"quotes\" 'single' «guillemets» — em dash – en dash",
    "<|endoftext|>The end.<|endoftext|>",
    "[CLS] [SEP] [MASK] x[MASK]y [PAD] [UNK]",
    "supercalifragilisticexpialidocious " + "a" * 120,
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def hf_gpt2_dir(gpt2_bpe_dir, tmp_path_factory):
    """The GPT-2 files under Hugging Face's names, so that from_pretrained works in transformers 4 and 5 alike."""
    folder = tmp_path_factory.mktemp("gpt2_hf")
    shutil.copy(gpt2_bpe_dir / "encoder.json", folder / "vocab.json")
    shutil.copy(gpt2_bpe_dir / "vocab.bpe", folder / "merges.txt")
    return folder


def _hf_gpt2(folder):
    ref = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
    assert len(ref) == 50257  # a silently empty reference would make every comparison meaningless
    return ref


def _bert_refs(minilm_dir):
    fast = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    # the pure-Python WordPiece: BertTokenizerLegacy in transformers 5, BertTokenizer before
    slow_cls = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    slow = slow_cls(vocab_file=str(minilm_dir / "vocab.txt"))
    assert len(fast) == len(slow) == 30522
    return fast, slow


def _openai_bpe_reference(gpt2_bpe_dir):
    """OpenAI's gpt-2 src/encoder.py algorithm, written out: the definition GPT-2's ids come from."""
    regex = pytest.importorskip("regex")
    encoder = json.load(open(gpt2_bpe_dir / "encoder.json", encoding="utf-8"))
    lines = (gpt2_bpe_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:-1]  # after "#version: 0.2"
    merges = [tuple(line.split()) for line in lines]
    ranks = {m: i for i, m in enumerate(merges)}
    # bytes_to_unicode(): printable bytes stand for themselves, the n-th other byte for chr(256 + n)
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_encoder = dict(zip(bs, map(chr, cs)))
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def bpe(token):
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        return word

    def encode(text):
        ids = []
        for piece in regex.findall(pat, text):
            ids += [encoder[t] for t in bpe("".join(byte_encoder[b] for b in piece.encode("utf-8")))]
        return ids
    return encode


def test_gpt2_ids_equal_transformers(gpt2_bpe_dir, hf_gpt2_dir):
    tok, ref = load_gpt2_tokenizer(gpt2_bpe_dir), _hf_gpt2(hf_gpt2_dir)
    assert tok.vocab_size == 50257
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert tok.decode(ids) == ref.decode(ids) == text  # byte-level BPE loses nothing
    assert tok.encode_batch(TEXTS) == [ref(t)["input_ids"] for t in TEXTS]
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>") == [50256]  # one token, never split into "<", "|", ...


def test_gpt2_ids_equal_openai_original_bpe(gpt2_bpe_dir):
    encode = _openai_bpe_reference(gpt2_bpe_dir)
    tok = load_gpt2_tokenizer(gpt2_bpe_dir)
    for text in TEXTS:
        if "<|endoftext|>" not in text:  # the original code has no special tokens
            assert tok.encode(text) == encode(text), text


def test_gpt2_file_layouts_give_the_same_tokenizer(gpt2_bpe_dir, tmp_path):
    tok = load_gpt2_tokenizer(gpt2_bpe_dir)
    hf_names = tmp_path / "hf"
    hf_names.mkdir()
    shutil.copy(gpt2_bpe_dir / "encoder.json", hf_names / "vocab.json")
    shutil.copy(gpt2_bpe_dir / "vocab.bpe", hf_names / "merges.txt")
    as_json = tmp_path / "json"
    as_json.mkdir()
    tok.tok.save(str(as_json / "tokenizer.json"))
    for source in [hf_names, as_json, as_json / "tokenizer.json", gpt2_bpe_dir / "encoder.json"]:
        other = load_gpt2_tokenizer(source)
        assert [other.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS], source


def test_hub_ids_are_resolved_through_nanoft_hub(hf_gpt2_dir, minilm_dir, monkeypatch):
    import nanoft.io.hub
    asked = []

    def fake_resolve(name_or_path, filename, required=True):  # stands in for the network
        asked.append((name_or_path, filename))
        folder = {"gpt2": hf_gpt2_dir, "sentence-transformers/all-MiniLM-L6-v2": minilm_dir}[name_or_path]
        return folder / filename if (folder / filename).is_file() else None

    monkeypatch.setattr(nanoft.io.hub, "resolve", fake_resolve)
    assert load_gpt2_tokenizer("gpt2").encode("Hello world") == [15496, 995]
    assert asked == [("gpt2", "tokenizer.json"), ("gpt2", "vocab.json"), ("gpt2", "merges.txt")]
    assert load_bert_tokenizer("sentence-transformers/all-MiniLM-L6-v2").encode("Hello") == [101, 7592, 102]


@pytest.mark.parametrize("source", ["vocab.txt", "tokenizer.json", "folder"])
def test_bert_ids_equal_transformers_fast_and_slow(minilm_dir, source):
    tok = load_bert_tokenizer(minilm_dir if source == "folder" else minilm_dir / source)
    fast, slow = _bert_refs(minilm_dir)
    assert tok.vocab_size == 30522
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == fast(text)["input_ids"] == slow(text)["input_ids"], text
        assert tok.decode(ids, skip_special_tokens=True) == fast.decode(ids, skip_special_tokens=True), text
    # MiniLM's tokenizer.json pads and truncates to 128 by itself; encode must not
    long = "word " * 300
    assert len(tok.encode(long)) == len(fast(long)["input_ids"]) == 302


def test_bert_pairs_and_padded_batches(minilm_dir):
    tok, (fast, _) = load_bert_tokenizer(minilm_dir / "vocab.txt"), _bert_refs(minilm_dir)
    questions = ["Who wrote it?", "When did the very long war between the two old kingdoms finally end?", "Why?"]
    contexts = ["It was written by Ada.", "It ended in 1453 after more than a century of fighting.", "Because."]
    enc = fast(questions[0], contexts[0])
    assert tok.encode(questions[0], contexts[0]) == enc["input_ids"]
    for max_length, pad_to_max in [(12, False), (64, False), (20, True)]:
        got = tok.batch(questions, contexts, max_length=max_length, pad_to_max_length=pad_to_max)
        want = fast(questions, contexts, max_length=max_length, truncation=True,
                    padding="max_length" if pad_to_max else True, return_tensors="pt")
        for key in ["input_ids", "attention_mask", "token_type_ids"]:
            assert got[key].dtype == torch.long
            assert torch.equal(got[key], want[key]), (key, max_length)
    single = tok.batch(contexts, max_length=8)
    assert torch.equal(single["input_ids"], fast(contexts, max_length=8, truncation=True, padding=True,
                                                 return_tensors="pt")["input_ids"])
    assert tok.encode("x") == [101, 1060, 102]  # batch() switched padding/truncation back off


def test_bert_do_lower_case_from_tokenizer_config(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = load_bert_tokenizer(tmp_path)
    ref = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    for text in ["Hello World", "Café NAÏVE", "Paris"]:
        assert cased.encode(text) == ref(text)["input_ids"], text
    assert cased.encode("Hello") != load_bert_tokenizer(minilm_dir / "vocab.txt").encode("Hello")


def test_added_special_tokens_get_new_ids_and_are_never_split(gpt2_bpe_dir, hf_gpt2_dir, minilm_dir):
    tok, ref = load_gpt2_tokenizer(gpt2_bpe_dir), _hf_gpt2(hf_gpt2_dir)
    new = add_special_tokens(tok, ["[TASK_START]", "[TASK_END]"])
    ref.add_special_tokens({"additional_special_tokens": ["[TASK_START]", "[TASK_END]"]})
    assert new == [50257, 50258] == ref.convert_tokens_to_ids(["[TASK_START]", "[TASK_END]"])
    assert tok.vocab_size == len(ref) == 50259
    text = "[TASK_START]First Citizen: speak.[TASK_END]\n[TASK_START] x[TASK_END]"
    ids = tok.encode(text)
    assert ids == ref(text)["input_ids"]
    assert ids[0] == 50257 and ids.count(50257) == 2 and ids.count(50258) == 2
    assert tok.decode(ids) == text
    assert "[TASK" not in tok.decode(ids, skip_special_tokens=True)
    assert add_special_tokens(tok, ["[TASK_END]"]) == [50258] and tok.vocab_size == 50259  # adding twice: same id

    bert = load_bert_tokenizer(minilm_dir / "vocab.txt")
    assert add_special_tokens(bert.tok, ["[NEW]"]) == [30522]  # a bare tokenizers.Tokenizer works too
    assert bert.encode("a [NEW] b") == [101, 1037, 30522, 1038, 102]


def test_errors_name_the_problem_and_the_fix(tmp_path, gpt2_bpe_dir, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt in .*pass a BERT tokenizer folder"):
        load_bert_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="encoder.json \\+ vocab.bpe in .*pass a GPT-2 tokenizer folder"):
        load_gpt2_tokenizer(tmp_path)
    monkeypatch.setenv("NANOFT_OFFLINE", "1")  # a hub id that is not cached, with the hub off: says both
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="'a-made-up/hub-id' is not a local folder, and the hub is off .* no "
                                                "tokenizer.json or vocab.txt of it in the cache"):
        load_bert_tokenizer("a-made-up/hub-id")
    with pytest.raises(ValueError, match="no pad token.*pass pad_id"):
        load_gpt2_tokenizer(gpt2_bpe_dir).batch(["a", "b c"])
    got = load_gpt2_tokenizer(gpt2_bpe_dir).batch(["a", "b c"], pad_id=50256)
    assert got["input_ids"].tolist() == [[64, 50256], [65, 269]] and got["attention_mask"].tolist() == [[1, 0], [1, 1]]
