"""A fixed today, and tomorrow, for tests of what a run does when it is resumed on another day."""
from datetime import date, datetime, time, timedelta

DAY = date(2026, 11, 30)  # the tests' "today", whatever the clock says (a test run may span midnight)


def set_today(monkeypatch, day: date) -> date:
    """From here on, the day a run takes as today (``prefopt.chat_template.run_chat_date``) and the
    clock a chat template reads (``strftime_now``) say ``day``; returns it."""

    class Fixed(date):
        @classmethod
        def today(cls):
            return day

    class FixedClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.combine(day, time(9))

    monkeypatch.setattr("prefopt.chat_template.date", Fixed)
    monkeypatch.setattr("prefopt.chat_template.datetime", FixedClock)
    return day


def move_to_next_day(monkeypatch) -> date:
    """:func:`set_today` with the day after :data:`DAY`."""
    return set_today(monkeypatch, DAY + timedelta(days=1))
