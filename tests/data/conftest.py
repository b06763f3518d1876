import pytest

from prefopt import load_tokenizer
from tests._tiny import build_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A tiny byte-level tokenizer with a ChatML template (tests/_tiny.py)."""
    return load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")))
