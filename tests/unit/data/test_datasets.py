import torch

from tinylm.data.datasets import IGNORE_INDEX, BatchLoader, QARows, TokenWindows, encode_example, eval_indices
from tinylm.data.formats import Example
from tinylm.tokenizers import train_tokenizer


def test_windows_follow_the_sliding_window_sampler():
    ds = TokenWindows(torch.arange(20), max_length=4, stride=3)
    assert len(ds) == (20 - 4 - 1) // 3 + 1 == 6
    b = ds.batch([0, 2])
    assert b["input_ids"].tolist() == [[0, 1, 2, 3], [6, 7, 8, 9]]
    assert b["labels"].tolist() == [[1, 2, 3, 4], [7, 8, 9, 10]]
    assert TokenWindows(torch.arange(20), max_length=4).batch([15])["labels"].tolist() == [[16, 17, 18, 19]]


def test_qa_example_takes_loss_on_the_response_and_eos_only():
    tok = train_tokenizer("char", ["Q: ab\nA: cd"])
    enc = encode_example(Example("ab", "cd"), tok, template="Q: {prompt}\nA:", max_length=32)
    seq = tok.encode("Q: ab\nA:") + tok.encode("cd") + [tok.eos_id]  # the reader strips the response
    assert enc.input_ids == seq[:-1]
    n_prompt = len(tok.encode("Q: ab\nA:"))
    assert enc.labels == [IGNORE_INDEX] * (n_prompt - 1) + seq[n_prompt:]
    assert enc.has_eos and not enc.truncated
    everything = encode_example(
        Example("ab", "cd"), tok, template="Q: {prompt}\nA:", max_length=32, loss_on="all"
    )
    assert everything.labels == seq[1:]


def test_truncation_cuts_the_prompt_from_the_left_not_the_answer():
    tok = train_tokenizer("char", ["abcdefghij xyz"])
    enc = encode_example(Example("abcdefghij", "xyz"), tok, template="{prompt}", max_length=6)
    assert enc.truncated and enc.has_eos
    assert tok.decode(enc.input_ids) == "hijxyz"  # prompt kept its end; answer and EOS intact
    assert enc.labels[-4:] == [*tok.encode("xyz"), tok.eos_id]


def test_padded_and_packed_batches():
    ex = [([1, 2, 3], [IGNORE_INDEX, 3, 4]), ([5, 6], [6, 7]), ([8], [9])]
    from tinylm.data.datasets import EncodedExample

    enc = [EncodedExample(i, lab, False, True) for i, lab in ex]
    padded = QARows(enc, pad_id=0).batch([0, 1])
    assert padded["input_ids"].tolist() == [[1, 2, 3], [5, 6, 0]]
    assert padded["labels"].tolist() == [[IGNORE_INDEX, 3, 4], [6, 7, IGNORE_INDEX]]
    assert "segment_ids" not in padded
    packed = QARows(enc, pad_id=0, pack_length=4)
    assert len(packed) == 2  # [3 tokens + 1 token], [2 tokens]
    b = packed.batch([0, 1])
    assert b["input_ids"].tolist() == [[1, 2, 3, 8], [5, 6, 0, 0]]
    assert b["segment_ids"].tolist() == [[0, 0, 0, 1], [0, 0, 1, 1]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, 3, 4, 9], [6, 7, IGNORE_INDEX, IGNORE_INDEX]]


def test_loader_is_seeded_resumable_and_sharded():
    ds = TokenWindows(torch.arange(100), max_length=2)
    loader = BatchLoader(ds, 4, seed=3)
    first = [b["input_ids"] for b in loader.iterate(epoch=0)]
    again = [b["input_ids"] for b in loader.iterate(epoch=0)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    resumed = [b["input_ids"] for b in loader.iterate(epoch=0, start=5)]
    assert all(torch.equal(a, b) for a, b in zip(first[5:], resumed))
    other_epoch = next(loader.iterate(epoch=1))["input_ids"]
    assert not torch.equal(first[0], other_epoch)
    ranks = [BatchLoader(ds, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    b0, b1 = (next(r.iterate(0))["input_ids"][:, 0] for r in ranks)
    assert set(b0.tolist()).isdisjoint(b1.tolist())


def test_tiny_dataset_fills_a_batch_and_eval_indices_spread():
    ds = TokenWindows(torch.arange(6), max_length=2)  # 4 windows
    batch = next(BatchLoader(ds, 8, seed=0).iterate(0))
    assert batch["input_ids"].shape == (8, 2)
    assert eval_indices(101, 5) == [0, 25, 50, 75, 100]
    assert eval_indices(3, 10) == [0, 1, 2]


def test_the_chat_template_lays_out_the_prompt_as_a_user_turn():
    text = "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\ncd"
    tok = train_tokenizer("char", [text])
    enc = encode_example(Example("ab", "cd"), tok, template="chat", max_length=64)
    prompt = tok.encode("<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n")
    assert enc.input_ids == prompt + tok.encode("cd")
    assert enc.labels == [IGNORE_INDEX] * (len(prompt) - 1) + tok.encode("cd") + [tok.eos_id]
