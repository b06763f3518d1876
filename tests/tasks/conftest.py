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
