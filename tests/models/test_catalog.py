"""Converting a GGUF target: its tokenizer must be the one the file describes."""

from pathlib import Path

import pytest

from taps.errors import TapsError
from taps.models.catalog import align_tokenizer, gguf_special_tokens
from tests.conftest import require_default_target


class _Tokenizer:
    """Just what `align_tokenizer` reads and sets: the eos token and the encoding of a text."""

    def __init__(self, eos: int, prefix: list[int]):
        self.eos_token_id, self.prefix = eos, prefix

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.prefix + [ord(c) for c in text]}

    def convert_ids_to_tokens(self, token: int) -> str:
        return f"<{token}>"

    @property
    def eos_token(self) -> str:
        return self.convert_ids_to_tokens(self.eos_token_id)

    @eos_token.setter
    def eos_token(self, text: str) -> None:
        self.eos_token_id = int(text.strip("<>"))


def _gguf(path: Path, **special) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    if "eos" in special:
        writer.add_eos_token_id(special["eos"])
    if "bos" in special:
        writer.add_bos_token_id(special["bos"])
    if "add_bos" in special:
        writer.add_add_bos_token(special["add_bos"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_tokenizer_read_unlike_its_gguf_is_set_right_or_refused(tmp_path):
    """transformers < 5.18 gave SmolLM2's GGUF tokenizer the wrong end-of-sequence token (set to the
    file's), and 5.0 a BOS token the file leaves out (refused): setup must not cache either."""
    path = _gguf(tmp_path / "t.gguf", eos=2, bos=1, add_bos=False)
    assert gguf_special_tokens(path) == {"eos": 2, "bos": 1, "add_bos": False}
    for eos in (2, 1):
        tokenizer = _Tokenizer(eos=eos, prefix=[])
        align_tokenizer(tokenizer, path)
        assert tokenizer.eos_token_id == 2
    with pytest.raises(TapsError, match=r"a BOS token \(1\) before every text.*transformers>=5.17"):
        align_tokenizer(_Tokenizer(eos=2, prefix=[1]), path)


def test_a_tokenizer_is_left_as_read_where_its_gguf_names_no_special_tokens(tmp_path):
    path = _gguf(tmp_path / "u.gguf")
    assert gguf_special_tokens(path) == {"eos": None, "bos": None, "add_bos": None}
    tokenizer = _Tokenizer(eos=7, prefix=[1])
    align_tokenizer(tokenizer, path)
    assert tokenizer.eos_token_id == 7


def test_the_default_target_s_converted_tokenizer_is_its_gguf_s():
    require_default_target()
    from transformers import AutoTokenizer

    from taps.models.catalog import TARGETS, _registry_gguf, resolve_target

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_target("smollm2-135m")))
    before = tokenizer.eos_token_id
    align_tokenizer(tokenizer, _registry_gguf(TARGETS["smollm2-135m"]))
    assert tokenizer.eos_token_id == before  # as converted, nothing to set
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|im_end|>"
