"""BERT's WordPiece and GPT-2's byte-level BPE tokenizers, built from their vocabulary files with the `tokenizers`
library (the Rust code behind transformers' fast tokenizers), so the ids are the same as transformers' ids.

    tok = load_gpt2_tokenizer("gpt2")          # a hub id, or a folder with tokenizer.json / vocab.json + merges.txt
    ids = tok.encode("Hello world")            # [15496, 995]
    new = add_special_tokens(tok, ["[TASK_START]", "[TASK_END]"])   # then resize the model's embeddings
    bert = load_bert_tokenizer(folder)         # tokenizer.json or vocab.txt
    batch = bert.batch(questions, contexts, max_length=384)        # padded tensors for the model

`Tokenizer.tok` is the `tokenizers.Tokenizer` itself, for everything this thin wrapper leaves out (offsets, overflow).
"""
import json
import os

import torch
from tokenizers import AddedToken, Tokenizer as RustTokenizer, decoders, models, normalizers, pre_tokenizers, processors

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT2_EOS = "<|endoftext|>"


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what a training script needs: ids in, text out, padded batches as tensors."""

    def __init__(self, tok: RustTokenizer, pad_token=None):
        # the padding/truncation some tokenizer.json files carry (MiniLM's: pad everything to 128) would change
        # what encode() returns; batch() turns them on per call instead
        tok.no_padding()
        tok.no_truncation()
        self.tok = tok
        self.pad_token = pad_token

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
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path_or_folder}: pass a BERT folder in Hugging "
                                "Face format (tokenizer.json, or vocab.txt [+ tokenizer_config.json]) or a hub id")

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
        raise FileNotFoundError(f"no tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe in "
                                f"{path_or_folder}: pass a GPT-2 tokenizer folder, or a hub id like 'gpt2' (which "
                                "needs the network once, then the cache)")
    tok = RustTokenizer(models.BPE.from_file(vocab_file, merges_file))
    # bytes, not characters, are the alphabet: any text encodes without [UNK]; no space is added in front, so
    # "Hello" at the start of a text and " Hello" after a word are different tokens, as in GPT-2
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    add_special_tokens(tok, [GPT2_EOS])  # "<|endoftext|>" in a text is the one end-of-text token, not 7 pieces
    return Tokenizer(tok)
