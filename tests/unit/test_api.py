import pytest
import torch

from tinylm import load
from tinylm.checkpoint import save_checkpoint
from tinylm.errors import TinylmError
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


def _bpe_lm(tmp_path, **cfg_kw):
    tok = train_tokenizer("bpe", ["héllo wörld 🙂 naïve café " * 20, "the quick brown fox"], vocab_size=300)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16, pos="rope", **cfg_kw
    )
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "bpe", model=build_model(cfg), config=cfg, tokenizer=tok, meta={})
    return load(tmp_path / "bpe")


def test_batched_prompts_of_different_lengths_equal_one_at_a_time(tmp_path):
    lm = _bpe_lm(tmp_path, n_kv_head=1)
    prompts = ["héllo", "the quick brown fox jumps", "🙂"]
    batched = lm.complete(prompts, max_new_tokens=12, logprobs=True)
    for prompt, got in zip(prompts, batched):
        alone = lm.complete([prompt], max_new_tokens=12, logprobs=True)[0]
        assert got.tokens == alone.tokens
        torch.testing.assert_close(
            torch.tensor(got.logprobs), torch.tensor(alone.logprobs), atol=1e-4, rtol=0
        )
        assert len(got.logprobs) == len(got.tokens) and all(lp <= 0 for lp in got.logprobs)
        assert got.prompt_tokens == len(lm.tokenizer.encode(prompt))


def test_stream_pieces_concatenate_to_the_final_text(tmp_path):
    lm = _bpe_lm(tmp_path)
    for seed in range(5):
        opts = dict(max_new_tokens=40, temperature=1.5, seed=seed)
        pieces = list(lm.stream("héllo", **opts))
        assert "".join(pieces) == lm.generate("héllo", **opts)
    stop_text = lm.generate("héllo", max_new_tokens=40, temperature=1.5, seed=0)
    if len(stop_text) > 3:
        cut = stop_text[2:4]
        assert (
            "".join(lm.stream("héllo", max_new_tokens=40, temperature=1.5, seed=0, stop=[cut]))
            == stop_text[: stop_text.find(cut)]
        )


def test_chat_uses_a_named_template_for_our_models(tmp_path):
    from tinylm.templates import render_chat

    lm = _lm(tmp_path)
    text, stops = render_chat(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], lm.tokenizer
    )
    assert (
        text
        == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert stops == ["<|im_end|>"]
    assert isinstance(lm.generate("hi", chat=True), str)


def test_a_model_with_only_its_own_qa_template_chats_in_it(tmp_path):
    lm = _lm(tmp_path)
    lm.prompt_template = "Q: {prompt}\nA:"  # what a Q/A run saves in tinylm.json
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": " hello"},
        {"role": "user", "content": "and you?"},
    ]
    assert lm.render_prompt(messages, chat=True, raw=False) == (
        "be brief\nQ: hi\nA: hello\nQ: and you?\nA:",
        ["Q:"],
    )
    assert lm.render_prompt("hi", chat=True, raw=False) == ("Q: hi\nA:", ["Q:"])
    lm.chat_template = "chatml"  # a chat format of its own wins
    assert lm.render_prompt("hi", chat=True, raw=False)[0].startswith("<|im_start|>user\nhi")
    lm.chat_template, lm.prompt_template = None, "{prompt}\n"  # no layout of its own: ChatML as before
    assert lm.render_prompt("hi", chat=True, raw=False)[1] == ["<|im_end|>"]


def test_beam_search_through_the_api(tmp_path):
    from tinylm.generate.beam import beam_search

    lm = _bpe_lm(tmp_path)
    ids = lm.tokenizer.encode("héllo")
    best = beam_search(lm.model, ids, num_beams=3, max_new_tokens=6, eos_ids=[lm.tokenizer.eos_id])[0][0]
    done = lm.complete(["héllo"], num_beams=3, max_new_tokens=6)[0]
    assert done.tokens == best
    assert done.text == lm.tokenizer.decode([t for t in best if t != lm.tokenizer.eos_id], skip_special=True)

    block = lm.config.block_size  # a prompt longer than the window leaves beside the new tokens: its end
    long = lm.tokenizer.encode("héllo wörld " * 40)
    assert len(long) > block
    done = lm.complete(["héllo wörld " * 40], raw=True, num_beams=2, max_new_tokens=8)[0]
    assert done.prompt_tokens == block - 7
    kept = long[-(block - 7) :]
    assert (
        done.tokens
        == beam_search(lm.model, kept, num_beams=2, max_new_tokens=8, eos_ids=[lm.tokenizer.eos_id])[0][0]
    )
    with pytest.raises(TinylmError, match=f"num_beams=2: max_new_tokens={block} leaves no room for a prompt"):
        lm.complete(["héllo"], num_beams=2, max_new_tokens=block)


def test_a_model_trained_on_the_chat_layout_is_prompted_with_it(tmp_path):
    lm = _lm(tmp_path)
    lm.prompt_template = "chat"  # what a run with data.prompt_template: chat saves in tinylm.json
    text = "<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n"
    assert lm.render_prompt("abc", chat=False, raw=False) == (text, ["<|im_end|>"])
    ids = lm.tokenizer.encode(text)[-32:]  # the engine keeps the last block_size tokens
    reply = lm.complete(["abc"], max_new_tokens=1, stop=[])[0]
    assert reply.tokens == [int(lm.model(torch.tensor([ids]))[0, -1].argmax())]
