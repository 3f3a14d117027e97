"""Language-modelling data: corpus text -> one long row of token ids -> fixed-length blocks (input_ids, labels),
where labels is input_ids moved one token to the left, so position t of the model learns to predict token t+1.

    ids = tokenize_corpus(read_text(path), tok)          # (N,) long
    train_ids, val_ids = split_train_val(ids, 0.1)
    train = LMBlocks(train_ids, block_size=128)          # train[i] = {"input_ids": (128,), "labels": (128,)}
"""
import sys

import torch
from torch.utils.data import Dataset
from tqdm import tqdm


def _cut_is_invisible(text: str, i: int) -> bool:
    # GPT-2's pre-tokenizer regex treats whitespace differently at the end of a string ("  \n" is one piece) than
    # before a word ("  ", "\n"), and glues one space to the next word (" the"). So a cut just after "\n" leaves the
    # ids unchanged only in "x\ny" or "\n" + one whitespace + "y" (x, y not whitespace). BERT splits at any whitespace.
    if i < 2 or i >= len(text) - 1 or text[i - 1] != "\n":
        return False
    if text[i].isspace():
        return text[i] in " \t\n" and not text[i + 1].isspace()
    return not text[i - 2].isspace()


def _pieces(text: str, chars: int):
    """Cut text at line breaks roughly every `chars` characters, only where the cut does not change the ids."""
    start = 0
    while start < len(text):
        cut = text.find("\n", start + chars) + 1
        while cut and not _cut_is_invisible(text, cut):
            cut = text.find("\n", cut) + 1
        end = cut or len(text)
        yield text[start:end]
        start = end


def tokenize_corpus(text: str, tokenizer, chars_per_piece: int = 1 << 16, batch_pieces: int = 16) -> torch.Tensor:
    """All of `text` as one 1-D LongTensor of ids, without special tokens: exactly tokenizer.encode(text), but
    encoded in pieces with encode_batch, which runs on all cores and can show progress on long corpora."""
    if not text:
        raise ValueError("the corpus is empty: check the file path (read_text) or the text you passed")
    tok = getattr(tokenizer, "tok", tokenizer)  # nanoft Tokenizer or a bare tokenizers.Tokenizer
    pieces = list(_pieces(text, chars_per_piece))
    ids = []
    batches = range(0, len(pieces), batch_pieces)
    for b in tqdm(batches, desc="tokenizing", unit="batch", disable=len(batches) == 1 or not sys.stderr.isatty()):
        for enc in tok.encode_batch(pieces[b:b + batch_pieces], add_special_tokens=False):
            ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


def split_train_val(ids: torch.Tensor, val_fraction: float = 0.1):
    """The last val_fraction of the tokens for validation. A contiguous tail, not a shuffle: shuffled tokens (or
    overlapping blocks) would put the same passages on both sides and make validation loss look too good."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}: e.g. 0.1 keeps 10% for validation")
    n_val = int(len(ids) * val_fraction)
    if n_val == 0 or n_val == len(ids):
        raise ValueError(f"{len(ids)} tokens with val_fraction={val_fraction} leaves one side empty: use more text "
                         "or a different val_fraction")
    return ids[:-n_val], ids[-n_val:]


class LMBlocks(Dataset):
    """Non-overlapping blocks of block_size tokens: item i is {"input_ids": ids[i*T : i*T+T],
    "labels": ids[i*T+1 : i*T+T+1]} (the labels already shifted: model(input_ids, targets=labels)).
    The few tokens left over at the end (fewer than a block) are dropped."""

    def __init__(self, ids: torch.Tensor, block_size: int):
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        if len(ids) < block_size + 1:  # +1: the last target is the token after the block
            raise ValueError(f"the corpus has {len(ids)} tokens, fewer than one block of block_size + 1 = "
                             f"{block_size + 1}: use a smaller block_size or more text")
        self.ids, self.block_size = ids, block_size

    def __len__(self):
        return (len(self.ids) - 1) // self.block_size

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks")
        start = (i % len(self)) * self.block_size
        chunk = self.ids[start:start + self.block_size + 1]  # (T+1,)
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


def split_examples(text: str) -> list:
    """Blank-line separated blocks (paragraphs, or speeches of a play), stripped, empty ones dropped."""
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
    return [b for b in blocks if b]


def wrap_with_task_tokens(examples, tokenizer, start: str = "[TASK_START]", end: str = "[TASK_END]") -> torch.Tensor:
    """[start] example [end] for every example, all in one row of ids: the model learns where a task example
    begins and ends, and generation can be prompted with [start] and stopped at [end]."""
    start_id, end_id = tokenizer.token_to_id(start), tokenizer.token_to_id(end)
    if start_id is None or end_id is None:
        raise ValueError(f"{start!r} or {end!r} is not in the vocabulary: add them first with "
                         "nanoft.io.tokenizer.add_special_tokens(tok, [start, end]) and resize the model's embeddings")
    examples = list(examples)
    if not examples:
        raise ValueError("no task examples to wrap: check the corpus (split_examples needs blocks separated by "
                         "blank lines)")
    ids = []
    tok = getattr(tokenizer, "tok", tokenizer)
    for enc in tok.encode_batch(examples, add_special_tokens=False):
        ids += [start_id] + enc.ids + [end_id]
    return torch.tensor(ids, dtype=torch.long)
