"""The tiny fixtures really exercise both letter-token paths ("▁A" and "ĠA")."""

from transformers import AutoTokenizer


def test_spm_tokenizer_has_standalone_and_in_context_letters(tiny_spm_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_spm_model_dir)
    for letter in "ABCD":
        assert tok.convert_ids_to_tokens(tok.encode(letter, add_special_tokens=False)) == ["▁" + letter]
    ids = tok("hello")["input_ids"]
    assert ids[0] == tok.bos_token_id


def test_bpe_tokenizer_has_space_letters(tiny_bpe_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_bpe_model_dir)
    for letter in "ABCD":
        assert tok.convert_ids_to_tokens(tok.encode(" " + letter, add_special_tokens=False)) == ["Ġ" + letter]
        assert tok.convert_ids_to_tokens(tok.encode(letter, add_special_tokens=False)) == [letter]
