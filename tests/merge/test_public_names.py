"""merge's public names: `__all__` (spelled out for linters and type checkers) and the lazy
export table agree, and every name resolves."""

import merge


def test_all_matches_the_lazy_exports():
    assert sorted(merge.__all__) == sorted(["MergeError", *merge._EXPORTS])
    for name in merge.__all__:
        assert getattr(merge, name) is not None, name
