"""Tomorrow, for tests of what a run does when it is resumed on another day."""
from datetime import date, datetime, time, timedelta


def move_to_next_day(monkeypatch, *modules: str) -> date:
    """From here on, ``date.today()`` in each of ``modules`` (they import ``date`` by name) and the
    clock a chat template reads (``strftime_now``) say tomorrow; returns tomorrow."""
    tomorrow = date.today() + timedelta(days=1)

    class NextDay(date):
        @classmethod
        def today(cls):
            return tomorrow

    class NextDayClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.combine(tomorrow, time(9))

    for module in modules:
        monkeypatch.setattr(f"{module}.date", NextDay)
    monkeypatch.setattr("prefopt.chat_template.datetime", NextDayClock)
    return tomorrow
