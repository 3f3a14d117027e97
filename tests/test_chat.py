"""nanoft.load_tokenizer and Tokenizer.apply_chat_template against transformers, on the real SmolLM2-135M-Instruct
GGUF (its byte-level BPE, special tokens and ChatML template) and on the official Qwen2.5 and Llama 3 / 3.2
templates, which transformers renders with Jinja."""
import json

import gguf
import pytest
import regex
import transformers

from nanoft import Tokenizer, load_tokenizer, smollm2_gguf
from nanoft.io.chat import chat_format, render_chat
from tests._chat_templates import LLAMA3, LLAMA32, QWEN25

TEXTS = [
    "Hello world",
    "What is the capital of France? Answer in one word.",
    "Numbers 3.14159, 1,000,000 and 2024-01-31; $5.99 / 42% #1 x2 a1b2c3 007",
    "  leading spaces, trailing spaces   ",
    "a    b     c\n\nnew paragraph\n\n\n   indented\ttab\r\nwindows line\n",
    "Café naïve résumé Ünïcödé ß œ Ångström, 東京タワー 北京 서울, emoji 😀👍🏽 👩‍👩‍👧‍👦",
    "I'll tell you: it's DON'T, they're, we've.",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>x<file_sep> <|im_end|>",
    "def f(x):\n    return x  # comment\n",
    "",
]
# llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) cuts every digit off first, then GPT-2's
# split; transformers' GGUF converter skips the first cut. The ids differ only where a run of 2+ spaces precedes a
# digit ("a  1": ["a", "ĠĠ", "1"] here, ["a", "Ġ", "Ġ", "1"] there); these texts check that case.
SPACES_BEFORE_DIGITS = ["a  1", "x   42 and\n\n  7", "table:\n    1    2    3"]

MESSAGES = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "  Hi  "}, {"role": "assistant", "content": "Hello! How can I help?\n"},
     {"role": "user", "content": "Rewrite in passive voice: The cat chased the mouse."}],
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6"}],
]


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer(smollm2_gguf())


@pytest.fixture(scope="module")
def theirs():
    path = smollm2_gguf()
    folder, name = path.rsplit("/", 1)
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_ids_equal_transformers(ours, theirs):
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
        assert ours.encode(text) == theirs(text)["input_ids"], text  # no BOS added by either (add_bos_token false)
        assert ours.decode(ours.encode(text)) == text


def test_digits_cut_off_first_as_llama_cpp_does(ours, theirs):
    """The reference: llama.cpp's first split (each digit alone, regex \\p{N}), then transformers on each piece."""
    for text in TEXTS + SPACES_BEFORE_DIGITS:
        pieces = [p for p in regex.split(r"(\p{N})", text) if p]
        expected = [i for p in pieces for i in theirs.encode(p, add_special_tokens=False)]
        assert ours.encode(text) == expected, text
    assert ours.encode("a  1") == [ours.token_to_id(t) for t in ["a", "ĠĠ", "1"]]


def test_special_tokens_equal_transformers(ours, theirs):
    assert (ours.eos_token, ours.eos_token_id) == (theirs.eos_token, theirs.eos_token_id) == ("<|im_end|>", 2)
    assert (ours.pad_token, ours.pad_token_id) == (theirs.pad_token, theirs.pad_token_id)
    assert (ours.bos_token, ours.bos_token_id) == (theirs.bos_token, theirs.bos_token_id)
    assert ours.vocab_size == len(theirs) == 49152
    assert ours.special_tokens == [t for t, _ in sorted(theirs.get_added_vocab().items(), key=lambda kv: kv[1])]
    assert ours.encode("<|im_start|>user") == [1, ours.token_to_id("user")]
    assert ours.decode(ours.encode("<|im_start|>hi<|im_end|>"), skip_special_tokens=True) == "hi"


def test_smollm2_template_equals_transformers(ours, theirs):
    assert ours.chat_template == theirs.chat_template
    assert "SmolLM" in chat_format(ours.chat_template).default_system
    for messages in MESSAGES:
        for gen in (False, True):
            expected = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == expected


@pytest.mark.parametrize("template", [QWEN25, LLAMA32, LLAMA3], ids=["qwen2.5", "llama3.2", "llama3"])
def test_official_templates_equal_transformers(ours, theirs, template):
    bos = "<|begin_of_text|>"
    tok = Tokenizer(ours.tok, bos_token=bos, chat_template=template)  # the vocabulary plays no part in rendering
    for messages in MESSAGES:
        for gen in (False, True):
            for date in ([None, "26 Jul 2024"] if template is LLAMA32 else [None]):
                extra = {} if date is None else {"date_string": date}  # None: the template reads today's date
                expected = theirs.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                      add_generation_prompt=gen, bos_token=bos, **extra)
                assert tok.apply_chat_template(messages, add_generation_prompt=gen, date_string=date) == expected


def test_folder_tokenizer_equals_gguf(ours, theirs, tmp_path):
    """load_tokenizer on a folder that transformers saved (tokenizer.json, tokenizer_config.json, chat template)."""
    theirs.save_pretrained(tmp_path)
    folder = load_tokenizer(tmp_path)
    for text in TEXTS:
        assert folder.encode(text) == ours.encode(text), text
    assert (folder.eos_token_id, folder.pad_token_id, folder.bos_token_id) == (2, 2, 1)
    assert folder.chat_template == ours.chat_template
    assert folder.apply_chat_template(MESSAGES[2], True) == ours.apply_chat_template(MESSAGES[2], True)


def test_llama3_style_gguf_tokenizer_equals_transformers(gpt2_bpe_dir, tmp_path):
    """Llama 3's GGUF settings (pre-tokenizer "llama-bpe": its own split regex, digits in threes; a BOS before every
    text) on GPT-2's real vocabulary and merges, written into a GGUF file here."""
    vocab = json.loads((gpt2_bpe_dir / "encoder.json").read_text(encoding="utf-8"))
    merges = [m for m in (gpt2_bpe_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if m]
    eot = vocab["<|endoftext|>"]
    w = gguf.GGUFWriter(tmp_path / "llama3_tok.gguf", "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(sorted(vocab, key=vocab.get))
    w.add_token_merges(merges)
    w.add_token_types([3 if i == eot else 1 for i in range(len(vocab))])
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = load_tokenizer(tmp_path / "llama3_tok.gguf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="llama3_tok.gguf")
    for text in TEXTS + SPACES_BEFORE_DIGITS:
        assert ours.encode(text) == theirs(text)["input_ids"], text
    assert ours.encode("1234567")[:4] == [eot, vocab["123"], vocab["456"], vocab["7"]]


def test_unknown_template_and_bad_messages_say_what_is_supported(ours):
    for template in ["{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}", None,
                     "{{ '<|im_start|>' }}<think>"]:
        with pytest.raises(ValueError, match="ChatML .* Llama 3") as e:
            render_chat(template, MESSAGES[0])
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="role"):
        ours.apply_chat_template([{"role": "tool", "content": "{}"}])
    with pytest.raises(ValueError, match="no messages"):
        ours.apply_chat_template([])
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(smollm2_gguf().rsplit("/", 1)[0] + "/__pycache__")
