"""BERT's WordPiece and GPT-2's byte-level BPE tokenizers, built from their vocabulary files with the `tokenizers`
library (the Rust code behind transformers' fast tokenizers), so the ids are the same as transformers' ids.

    tok = load_gpt2_tokenizer("gpt2")          # a hub id, or a folder with tokenizer.json / vocab.json + merges.txt
    ids = tok.encode("Hello world")            # [15496, 995]
    new = add_special_tokens(tok, ["[TASK_START]", "[TASK_END]"])   # then resize the model's embeddings
    bert = load_bert_tokenizer(folder)         # tokenizer.json or vocab.txt
    batch = bert.batch(questions, contexts, max_length=384)        # padded tensors for the model
    chat = load_tokenizer(smollm2_gguf())      # a chat model's: from a GGUF file, or a folder with tokenizer.json
    text = chat.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    ids = chat.encode(text, add_special_tokens=False)                # the template already wrote the special tokens

`Tokenizer.tok` is the `tokenizers.Tokenizer` itself, for everything this thin wrapper leaves out (offsets, overflow).
"""
import json
import os

import torch
from tokenizers import (AddedToken, Regex, Tokenizer as RustTokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors)

from nanoft.io.chat import render_chat

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT2_EOS = "<|endoftext|>"


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what a training script needs: ids in, text out, padded batches as tensors."""

    def __init__(self, tok: RustTokenizer, pad_token=None, eos_token=None, bos_token=None, chat_template=None):
        # the padding/truncation some tokenizer.json files carry (MiniLM's: pad everything to 128) would change
        # what encode() returns; batch() turns them on per call instead
        tok.no_padding()
        tok.no_truncation()
        self.tok = tok
        self.pad_token, self.eos_token, self.bos_token = pad_token, eos_token, bos_token
        self.chat_template = chat_template  # the Jinja text; apply_chat_template renders its format in Python

    @property
    def pad_token_id(self):
        return None if self.pad_token is None else self.tok.token_to_id(self.pad_token)

    @property
    def eos_token_id(self):
        return None if self.eos_token is None else self.tok.token_to_id(self.eos_token)

    @property
    def bos_token_id(self):
        return None if self.bos_token is None else self.tok.token_to_id(self.bos_token)

    @property
    def special_tokens(self) -> list:
        """The tokens that are never split (chat markup like "<|im_start|>"), in id order."""
        added = self.tok.get_added_tokens_decoder()
        return [added[i].content for i in sorted(added) if added[i].special]

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, date_string=None) -> str:
        """The chat as one string, as the model's template writes it (nanoft.io.chat: ChatML or Llama 3).
        messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]; add_generation_prompt ends
        with an assistant turn's header. Encode the result with add_special_tokens=False."""
        return render_chat(self.chat_template, messages, add_generation_prompt, bos_token=self.bos_token or "",
                           date_string=date_string)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def __len__(self):
        return self.vocab_size

    def token_to_id(self, token: str):
        return self.tok.token_to_id(token)

    def id_to_token(self, i: int):
        return self.tok.id_to_token(i)

    def encode(self, text: str, pair: str = None, add_special_tokens: bool = True) -> list:
        return self.tok.encode(text, pair, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts, pairs=None, add_special_tokens: bool = True) -> list:
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        return [e.ids for e in self.tok.encode_batch(inputs, add_special_tokens=add_special_tokens)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch(self, texts, pairs=None, max_length: int = 512, pad_to_max_length: bool = False, pad_id=None) -> dict:
        """Encode (text) or (text, pair) examples, cut to max_length (longest sequence first, like transformers'
        truncation=True) and pad on the right. Returns input_ids, attention_mask, token_type_ids, each (B, T) long."""
        if pad_id is None:
            pad_id = self.tok.token_to_id(self.pad_token) if self.pad_token else None
            if pad_id is None:
                raise ValueError("this tokenizer has no pad token (GPT-2 has none): pass pad_id, e.g. "
                                 f"pad_id=tok.token_to_id({GPT2_EOS!r}); attention_mask marks the padding anyway")
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(pad_id=pad_id, pad_token=self.tok.id_to_token(pad_id) or "",
                                length=max_length if pad_to_max_length else None)
        try:
            inputs = list(texts) if pairs is None else list(zip(texts, pairs))
            encs = self.tok.encode_batch(inputs)
        finally:
            self.tok.no_padding()
            self.tok.no_truncation()
        return {"input_ids": torch.tensor([e.ids for e in encs], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in encs], dtype=torch.long),
                "token_type_ids": torch.tensor([e.type_ids for e in encs], dtype=torch.long)}


def add_special_tokens(tokenizer, tokens) -> list:
    """Add tokens that are never split or normalized (e.g. "[TASK_START]") and return their ids; tokens already in
    the vocabulary keep their id. New ids are appended after the vocabulary: resize the model's embeddings to
    tokenizer.vocab_size afterwards."""
    tok = getattr(tokenizer, "tok", tokenizer)  # our Tokenizer or a bare tokenizers.Tokenizer
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    return [tok.token_to_id(t) for t in tokens]


def _locate(path_or_folder, filename):
    """Path of `filename` in a local folder (or beside a local file), or from the hub for a hub id; None if absent."""
    path = os.path.expanduser(str(path_or_folder))
    if os.path.isfile(path):
        path = os.path.dirname(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, filename)
        return candidate if os.path.isfile(candidate) else None
    from nanoft.io.hub import resolve  # only hub ids need the download code
    found = resolve(path_or_folder, filename, required=False)
    return None if found is None else str(found)


def _no_tokenizer(path_or_folder, files, kind):
    """Raise the error that says where the tokenizer files were looked for: a local folder, or the hub's cache."""
    from nanoft.io.hub import cache_root, is_offline
    if os.path.isdir(os.path.expanduser(str(path_or_folder))):
        raise FileNotFoundError(f"no {files} in {path_or_folder}: pass a {kind} tokenizer folder in Hugging Face "
                                "format, or a hub id")
    if is_offline():
        raise FileNotFoundError(f"{path_or_folder!r} is not a local folder, and the hub is off (HF_HUB_OFFLINE=1 or "
                                f"NANOFT_OFFLINE=1) with no {files} of it in the cache {cache_root() / 'hub'}: check "
                                "the id or path, pass a local folder, or run once with the hub on")
    raise FileNotFoundError(f"the hub repo {path_or_folder} has no {files}: pass a model repo with a tokenizer, or a "
                            "local folder")


def _given_file(path_or_folder, filename):
    """The file itself when the caller passed a file with this name (e.g. a vocab.txt outside any folder layout)."""
    path = os.path.expanduser(str(path_or_folder))
    return path if os.path.isfile(path) and os.path.basename(path) == filename else None


def load_bert_tokenizer(path_or_folder) -> Tokenizer:
    """BERT's uncased/cased WordPiece tokenizer from tokenizer.json, or built from vocab.txt exactly like
    transformers' BertTokenizerFast (lower-casing from tokenizer_config.json's do_lower_case, default True)."""
    json_file = _given_file(path_or_folder, "tokenizer.json")
    vocab_file = _given_file(path_or_folder, "vocab.txt")
    if json_file is None and vocab_file is None:
        json_file = _locate(path_or_folder, "tokenizer.json")
        vocab_file = None if json_file else _locate(path_or_folder, "vocab.txt")
    if json_file:
        return Tokenizer(RustTokenizer.from_file(json_file), pad_token="[PAD]")
    if vocab_file is None:
        _no_tokenizer(path_or_folder, "tokenizer.json or vocab.txt", "BERT")

    cfg_file = _locate(path_or_folder, "tokenizer_config.json")
    cfg = {}
    if cfg_file:
        with open(cfg_file, encoding="utf-8") as f:
            cfg = json.load(f)
    lowercase = cfg.get("do_lower_case", True)
    tok = RustTokenizer(models.WordPiece.from_file(vocab_file, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=lowercase,
                                                handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
                                                strip_accents=cfg.get("strip_accents"))  # None: strip when lowercasing
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece(prefix="##")
    # "[MASK]" typed in a text stays one token, as in transformers (these are already in vocab.txt: ids unchanged)
    add_special_tokens(tok, BERT_SPECIAL_TOKENS)
    return Tokenizer(tok, pad_token="[PAD]")


def load_gpt2_tokenizer(path_or_folder) -> Tokenizer:
    """GPT-2's byte-level BPE from tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe (the same
    two files under the names of OpenAI's original release)."""
    json_file = _given_file(path_or_folder, "tokenizer.json") or _locate(path_or_folder, "tokenizer.json")
    if json_file:
        return Tokenizer(RustTokenizer.from_file(json_file))
    for vocab_name, merges_name in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]:
        vocab_file, merges_file = _locate(path_or_folder, vocab_name), _locate(path_or_folder, merges_name)
        if vocab_file and merges_file:
            break
    else:
        _no_tokenizer(path_or_folder, "tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe", "GPT-2")
    tok = RustTokenizer(models.BPE.from_file(vocab_file, merges_file))
    # bytes, not characters, are the alphabet: any text encodes without [UNK]; no space is added in front, so
    # "Hello" at the start of a text and " Hello" after a word are different tokens, as in GPT-2
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    add_special_tokens(tok, [GPT2_EOS])  # "<|endoftext|>" in a text is the one end-of-text token, not 7 pieces
    return Tokenizer(tok)


# ---------------------------------------------------------------------------------------------------------------
# Chat models' tokenizers: from a GGUF file's metadata, or a folder's tokenizer.json (+ tokenizer_config.json)

# How text is cut into words before BPE, by the GGUF key tokenizer.ggml.pre (llama.cpp's names and regexes).
# None: GPT-2's regex (ByteLevel's own); DIGITS: every digit alone first, then GPT-2's (SmolLM2's and StarCoder's
# tokenizer.json, llama.cpp's "smollm"; transformers' GGUF converter leaves this cut out, see tests/test_chat.py)
DIGITS = "digits"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {"gpt2": None, "default": None, "smollm": DIGITS, "starcoder": DIGITS,
                  "llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}


def _pre_tokenizer(pre: str, path):
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{path}: GGUF pre-tokenizer {pre!r}; nanoft builds {', '.join(PRE_TOKENIZERS)} (load the "
                         "model's tokenizer.json folder with load_tokenizer instead)")
    split = PRE_TOKENIZERS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in (None, DIGITS))
    if split is None:
        return byte_level
    if split == DIGITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    # a regex of its own, then only the bytes -> byte-alphabet step
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])


def _gguf_tokenizer(path) -> Tokenizer:
    """The byte-level BPE that a GGUF file's metadata spells out (tokenizer.ggml.*), as `tokenizers` builds it."""
    from nanoft.io.gguf import GGUFFile
    meta = GGUFFile(path).metadata
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path}: GGUF tokenizer {meta.get('tokenizer.ggml.model')!r}; nanoft builds byte-level BPE "
                         "('gpt2': SmolLM2, Llama 3, Qwen2.5), not SentencePiece ('llama'): load the model's "
                         "tokenizer.json folder instead")
    tokens = meta["tokenizer.ggml.tokens"]  # in the byte alphabet already: " the" is "Ġthe"
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = RustTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "gpt2"), path)
    tok.decoder = decoders.ByteLevel()
    # token type 3 (control: "<|im_start|>") is special, 4 (user-defined) is matched whole but is not special
    types = meta.get("tokenizer.ggml.token_type", [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])
    name = lambda key: None if meta.get(key) is None else tokens[meta[key]]  # noqa: E731
    bos = name("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:  # Llama 3 starts every text with it
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                                           special_tokens=[(bos, meta["tokenizer.ggml.bos_token_id"])])
    return Tokenizer(tok, pad_token=name("tokenizer.ggml.padding_token_id"),
                     eos_token=name("tokenizer.ggml.eos_token_id"), bos_token=bos,
                     chat_template=meta.get("tokenizer.chat_template"))


def _token_text(value):
    """tokenizer_config.json writes a special token as "<|im_end|>" or as {"content": "<|im_end|>", ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _folder_tokenizer(path_or_folder) -> Tokenizer:
    json_file = _given_file(path_or_folder, "tokenizer.json") or _locate(path_or_folder, "tokenizer.json")
    if json_file is None:
        raise FileNotFoundError(f"no tokenizer.json in {path_or_folder}: pass a GGUF file, a model folder with "
                                "tokenizer.json (+ tokenizer_config.json), or a hub id")
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the second wins, as in transformers
        found = _locate(path_or_folder, name)
        if found:
            with open(found, encoding="utf-8") as f:
                config.update(json.load(f))
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja_file = None if template else _locate(path_or_folder, "chat_template.jinja")  # newer transformers' place
    if jinja_file:
        with open(jinja_file, encoding="utf-8") as f:
            template = f.read()
    return Tokenizer(RustTokenizer.from_file(json_file), pad_token=_token_text(config.get("pad_token")),
                     eos_token=_token_text(config.get("eos_token")), bos_token=_token_text(config.get("bos_token")),
                     chat_template=template)


def load_tokenizer(path) -> Tokenizer:
    """A chat model's tokenizer, with its special tokens, eos/pad/bos and chat template: from a GGUF file (its
    metadata holds the byte-level BPE), a folder with tokenizer.json (+ tokenizer_config.json), or a hub id."""
    p = os.path.expanduser(str(path))
    if os.path.isfile(p) and os.path.basename(p) != "tokenizer.json":
        with open(p, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"{p} is neither a GGUF file nor a tokenizer.json: pass a .gguf file, a folder with "
                                 "tokenizer.json, or a hub id")
        return _gguf_tokenizer(p)
    return _folder_tokenizer(path)
