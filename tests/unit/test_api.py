import torch

from tinylm import load
from tinylm.api import cut_at_stop
from tinylm.checkpoint import save_checkpoint
from tinylm.model import GPTConfig, build_model
from tinylm.tokenizers import train_tokenizer


def _lm(tmp_path):
    tok = train_tokenizer("char", ["abcdefghij klmnop: \n"])
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
    torch.manual_seed(0)
    meta = {"prompt_template": "{prompt}:", "generation": {"max_new_tokens": 7, "stop": []}}
    save_checkpoint(tmp_path / "ck", model=build_model(cfg), config=cfg, tokenizer=tok, meta=meta)
    return load(tmp_path / "ck")


def test_generate_uses_template_defaults_and_stop_strings(tmp_path):
    lm = _lm(tmp_path)
    out = lm.generate("abc")
    assert len(out) <= 7
    ids = lm.tokenizer.encode("abc:")
    expected = []
    for _ in range(7):
        nxt = int(lm.model(torch.tensor([ids + expected]))[0, -1].argmax())
        if nxt == lm.tokenizer.eos_id:
            break
        expected.append(nxt)
    assert out == lm.tokenizer.decode(expected)
    assert lm.generate("abc:", raw=True) == out  # raw skips the template
    if out:
        assert lm.generate("abc", stop=[out[0]]) == ""
    assert lm.generate("abc", temperature=1.0, seed=3) == lm.generate("abc", temperature=1.0, seed=3)


def test_cut_at_stop():
    assert cut_at_stop("hello <end> more", ["<end>"]) == "hello "
    assert cut_at_stop("hello", ["x", ""]) == "hello"
    assert cut_at_stop("a.b!c", ["!", "."]) == "a"


def test_embeddings_pool_real_tokens_only(tmp_path):
    lm = _lm(tmp_path)
    hidden, mask = lm.token_embeddings(["abc", "abcdefgh"])
    assert hidden.shape == (2, 8, 16) and mask.sum(1).tolist() == [3, 8]
    alone, _ = lm.token_embeddings(["abc"])
    torch.testing.assert_close(hidden[0, :3], alone[0])  # right padding never changes real tokens
    mean = lm.embed(["abc", "abcdefgh"])
    torch.testing.assert_close(mean[0], alone[0].mean(0))
    last = lm.embed("abcdefgh", pooling="last")
    torch.testing.assert_close(last[0], hidden[1, 7])
