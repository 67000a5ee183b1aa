"""The seed's mini-GPT system: a from-scratch GPT learns a Q/A file and answers its questions exactly."""

import json
import random

from tests.conftest import REPO, run_cli
from tinylm import load
from tinylm.compat.sfa import get_embeddings, text_generation
from tinylm.data.formats import read_examples


def exact_rate(predictions: dict[str, str], path) -> float:
    expected = {e.prompt: e.response for e in read_examples(path)}
    return sum(predictions[q] == a for q, a in expected.items()) / len(expected)


def test_sfa_api_learns_the_example_qa_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path))
    data = REPO / "examples" / "qa" / "data.json"
    predictions = text_generation(data)
    assert len(predictions) == 44
    assert exact_rate(predictions, data) >= 0.95
    emb = get_embeddings(data)  # reuses the cached checkpoint
    assert emb.dim() == 3 and emb.shape[0] == 44 and emb.shape[2] == 128
    assert len(list((tmp_path / "sfa").iterdir())) == 1


def _other_dataset(path):
    rng = random.Random(0)
    syll = ["ka", "lo", "mi", "ter", "zu", "ran", "pel", "do", "vi", "sho", "gar", "nu"]

    def word():
        return "".join(rng.choice(syll) for _ in range(rng.randint(2, 3)))

    templates = [
        ("who guards the {} gate", "the {} guards it at night"),
        ("what does {} sell", "{} sells lamps and maps"),
        ("where is the town of {}", "{} lies east of the river"),
        ("how old is {}", "{} is {} years old"),
    ]
    rows = []
    for i in range(44):
        q, a = templates[i % 4]
        name = word()
        answer = a.format(word(), rng.randint(3, 90)) if "{} is {}" in a else a.format(word())
        rows.append({"prompt": q.format(name) + f" number {i}", "response": answer})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_the_same_config_learns_another_qa_file(tmp_path):
    data = _other_dataset(tmp_path / "other.jsonl")
    out = tmp_path / "run"
    result = run_cli("train", "examples/qa/config.yaml", "--set", f"data.path={data}", f"out_dir={out}")
    assert result.returncode == 0, result.stderr
    lm = load(out / "checkpoints" / "last")
    predictions = {e.prompt: lm.generate(e.prompt) for e in read_examples(data)}
    assert exact_rate(predictions, data) >= 0.95
    # chat: the model knows only its own "Q: ...\nA:" layout, so a conversation is laid out in it
    first, second = read_examples(data)[:2]
    messages = [{"role": "user", "content": first.prompt}]
    assert lm.generate(messages) == first.response
    messages += [{"role": "assistant", "content": first.response}, {"role": "user", "content": second.prompt}]
    text, stops = lm.render_prompt(messages, chat=True, raw=False)
    assert text == f"Q: {first.prompt}\nA:{first.response}\nQ: {second.prompt}\nA:" and stops == ["Q:"]
