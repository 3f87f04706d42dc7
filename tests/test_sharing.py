import pytest

from rrt.model.sharing import depth_to_slot, init_sources, loop_index, stepwise_indices


@pytest.mark.parametrize("layers,slots,expected", [
    (18, 9, [0, 2, 4, 6, 8, 11, 13, 15, 17]),
    (22, 11, [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21]),
    (30, 15, [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]),
])
def test_stepwise_indices_match_paper(layers, slots, expected):
    assert stepwise_indices(layers, slots) == expected


def test_cycle_and_sequence_maps():
    assert depth_to_slot(6, 2, "cycle") == [0, 1, 2, 0, 1, 2]
    assert depth_to_slot(6, 2, "sequence") == [0, 0, 1, 1, 2, 2]
    assert depth_to_slot(6, 3, "cycle") == [0, 1, 0, 1, 0, 1]
    assert depth_to_slot(4, 1, "cycle") == [0, 1, 2, 3]


def test_loop_index_counts_earlier_uses():
    m = depth_to_slot(6, 3, "sequence")  # [0,0,0,1,1,1]
    assert [loop_index(m, d) for d in range(6)] == [0, 1, 2, 0, 1, 2]


def test_init_sources():
    m = depth_to_slot(6, 2, "cycle")
    assert init_sources(m, "average") == [[0, 3], [1, 4], [2, 5]]
    assert init_sources(m, "lower") == [[0], [1], [2]]
    assert init_sources(m, "stepwise") == [[0], [2], [5]]
    assert init_sources(m, "scratch") is None
    r = init_sources(m, "random", seed=3)
    assert r == init_sources(m, "random", seed=3)  # seeded
    picked = [s[0] for s in r]
    assert picked == sorted(set(picked)) and len(picked) == 3


@pytest.mark.parametrize("args,msg", [((30, 7, "cycle"), "does not divide"), ((6, 2, "zigzag"), "sharing"),
                                      ((6, 0, "cycle"), ">= 1")])
def test_bad_maps(args, msg):
    with pytest.raises(ValueError, match=msg):
        depth_to_slot(*args)
