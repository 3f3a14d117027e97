"""nanoft.data.lm_data: corpus -> ids (exactly the tokenizer's ids for the whole text) -> (x, y) blocks."""
import random

import pytest
import torch
from torch.utils.data import DataLoader

from nanoft.data.datasets import SAMPLE_DIR, read_text
from nanoft.data.lm_data import LMBlocks, split_examples, split_train_val, tokenize_corpus, wrap_with_task_tokens
from nanoft.io.tokenizer import add_special_tokens, load_bert_tokenizer, load_gpt2_tokenizer


@pytest.fixture(scope="module")
def gpt2_tok(gpt2_bpe_dir):
    return load_gpt2_tokenizer(gpt2_bpe_dir)


def test_tokenize_corpus_equals_encoding_the_whole_text(gpt2_tok, minilm_dir):
    bert = load_bert_tokenizer(minilm_dir)
    # pieces around line breaks are where GPT-2's whitespace rules would change the ids if cut carelessly
    alphabet = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "word", " the", "'s", ".", " 42", "é", "東", "😀", "\u00a0",
                "\x1c"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(400)]
    texts += [read_text(SAMPLE_DIR / "lm_sample_play.txt"), " = Title = \n \n A line . \n = = Part = = \n"]
    for tok in (gpt2_tok, bert):
        for text in texts:
            ids = tokenize_corpus(text, tok, chars_per_piece=1)  # a cut at every safe line break
            assert ids.dtype == torch.long and ids.dim() == 1
            assert ids.tolist() == tok.encode(text, add_special_tokens=False), repr(text[:80])


def test_tokenize_corpus_real_corpus(gpt2_tok, shared_data_dir):
    text = read_text(SAMPLE_DIR / "lm_sample.txt")
    if shared_data_dir is not None:
        text = read_text(shared_data_dir / "wikitext-2" / "wiki.valid.tokens")  # every line starts with a space
    assert tokenize_corpus(text, gpt2_tok, chars_per_piece=4096).tolist() == gpt2_tok.encode(text)


def test_tokenize_corpus_errors(gpt2_tok):
    with pytest.raises(ValueError, match="corpus is empty"):
        tokenize_corpus("", gpt2_tok)


def test_split_train_val_is_a_contiguous_tail():
    ids = torch.arange(100)
    train, val = split_train_val(ids, 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))
    for bad in [0.0, 1.0, -0.5, 1.5]:
        with pytest.raises(ValueError, match="between 0 and 1"):
            split_train_val(ids, bad)
    with pytest.raises(ValueError, match="leaves one side empty"):
        split_train_val(torch.arange(5), 0.1)


def test_lm_blocks_are_shifted_non_overlapping_windows():
    ids = torch.arange(1000, 1000 + 53)
    blocks = LMBlocks(ids, block_size=8)
    assert len(blocks) == 6  # (53 - 1) // 8: the last 4 tokens are dropped
    for i in range(len(blocks)):
        x, y = blocks[i]["input_ids"], blocks[i]["labels"]
        assert x.shape == y.shape == (8,) and x.dtype == torch.long
        assert torch.equal(x, ids[8 * i:8 * i + 8])
        assert torch.equal(y[:-1], x[1:]) and y[-1] == ids[8 * i + 8]  # y is x moved one token left
    assert torch.equal(blocks[-1]["input_ids"], blocks[5]["input_ids"])
    with pytest.raises(IndexError):
        blocks[6]
    batch = next(iter(DataLoader(blocks, batch_size=4)))
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 8)
    assert len(LMBlocks(torch.arange(9), 8)) == 1  # exactly one block + its last target


def test_lm_blocks_errors():
    with pytest.raises(ValueError, match="fewer than one block of block_size \\+ 1 = 9: use a smaller block_size"):
        LMBlocks(torch.arange(8), block_size=8)
    with pytest.raises(ValueError, match="block_size must be at least 1"):
        LMBlocks(torch.arange(8), block_size=0)


def test_wrap_with_task_tokens(gpt2_bpe_dir):
    tok = load_gpt2_tokenizer(gpt2_bpe_dir)
    with pytest.raises(ValueError, match="not in the vocabulary: add them first with nanoft.io.tokenizer.add_special"):
        wrap_with_task_tokens(["hello"], tok)
    start, end = add_special_tokens(tok, ["[TASK_START]", "[TASK_END]"])
    speeches = split_examples(read_text(SAMPLE_DIR / "lm_sample_play.txt"))
    assert len(speeches) > 100 and all(s == s.strip() and "\n\n" not in s for s in speeches)
    ids = wrap_with_task_tokens(speeches, tok)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert (ids == start).sum() == (ids == end).sum() == len(speeches)
    # same ids as writing the markers into the text: the special tokens are never split or merged
    assert ids.tolist() == tok.encode("".join(f"[TASK_START]{s}[TASK_END]" for s in speeches))
    first = ids[:(ids == end).nonzero()[0].item() + 1].tolist()
    assert first == [start] + tok.encode(speeches[0]) + [end]
    with pytest.raises(ValueError, match="no task examples"):
        wrap_with_task_tokens([], tok)


def test_split_examples():
    assert split_examples("A:\nhi\n\n\n\nB:\nyo\r\n\r\nC:\nbye\n") == ["A:\nhi", "B:\nyo", "C:\nbye"]
    assert split_examples(" \n\n ") == []
