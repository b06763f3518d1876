"""A run stopped part-way, as by Ctrl-C: a block's answering function that lets some blocks
through and then raises KeyboardInterrupt, for the tests of what a stopped run goes on from."""


def stop_after_blocks(real, blocks: int, calls: list | None = None):
    """``real`` (a function that answers one block) for ``blocks`` calls, each call's positional
    arguments appended to ``calls``; the next call raises KeyboardInterrupt."""
    calls = [] if calls is None else calls

    def block(*args, **kwargs):
        if len(calls) == blocks:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args, **kwargs)

    return block
