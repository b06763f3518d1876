"""What several compare tests share: a compare run stopped where its SFT stage would train."""
import pytest


class StopAtSFT(Exception):
    pass


@pytest.fixture
def sft_configs(monkeypatch) -> list:
    """The TrainConfig of each compare run's SFT stage, which then stops it (:class:`StopAtSFT`)."""
    import prefopt.train.run as run

    seen = []

    def run_sft(config):
        seen.append(config)
        raise StopAtSFT

    monkeypatch.setattr(run, "run_sft", run_sft)
    return seen


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random llama with a chat template, long enough for every task's prompts."""
    from tests._tiny import build_hf_model

    d = tmp_path_factory.mktemp("tiny")
    build_hf_model(d, max_position_embeddings=4096)
    return d
