"""Bradley-Terry ratings against cases whose answer is known independently of the fitting code."""
import math

import numpy as np
import pytest

from demo.ratings import Battle, bootstrap, leaderboard, ratings


def games(a, b, a_wins, b_wins, ties=0):
    return [Battle(a, b, 1.0)] * a_wins + [Battle(a, b, 0.0)] * b_wins + [Battle(b, a, 0.5)] * ties


def test_two_players_match_the_closed_form():
    # For two players the MLE has P(A beats B) = share of A's wins, so R_A - R_B = 400 log10(wins / losses),
    # and with the mean at 1000 each sits half that gap away.
    battles = games("alpha", "beta", 3, 1)
    r = ratings(battles, ["alpha", "beta"], l2=0)
    gap = 400 * math.log10(3)
    assert r[0] == pytest.approx(1000 + gap / 2, abs=1e-6)
    assert r[1] == pytest.approx(1000 - gap / 2, abs=1e-6)


def test_ties_count_half_a_win_each_way():
    battles = games("alpha", "beta", 2, 1, ties=2)  # alpha scores 3 of 5
    r = ratings(battles, ["alpha", "beta"], l2=0)
    assert r[0] - r[1] == pytest.approx(400 * math.log10(3 / 2), abs=1e-6)


def test_three_players_satisfy_the_likelihood_equations_and_order():
    # A beats B 3-1, B beats C 3-1, A beats C 4-0... plus one C win over A so the MLE exists.
    battles = games("A", "B", 3, 1) + games("B", "C", 3, 1) + games("A", "C", 4, 1)
    models = ["A", "B", "C"]
    r = ratings(battles, models, l2=0)
    assert list(np.argsort(-r)) == [0, 1, 2]
    # At the MLE each player's expected score equals its actual score (the gradient is zero).
    b = (r - 1000) * math.log(10) / 400
    for k, m in enumerate(models):
        expected = actual = 0.0
        for bt in battles:
            if m in (bt.model_a, bt.model_b):
                me, other = (bt.model_a, bt.model_b) if m == bt.model_a else (bt.model_b, bt.model_a)
                p = 1 / (1 + math.exp(-(b[models.index(me)] - b[models.index(other)])))
                expected += p
                actual += bt.score_a if m == bt.model_a else 1 - bt.score_a
        assert expected == pytest.approx(actual, abs=1e-6)
    assert r.mean() == pytest.approx(1000)


def test_an_unbeaten_model_stays_finite_with_the_default_regularisation():
    r = ratings(games("A", "B", 5, 0), ["A", "B"])
    assert np.isfinite(r).all() and r[0] > r[1] + 300


def test_leaderboard_counts_rates_matrix_and_intervals():
    battles = games("A", "B", 3, 1) + games("B", "C", 2, 0, ties=2) + games("A", "C", 1, 1)
    board = leaderboard(battles, rounds=100, seed=1)
    assert [row.model for row in board.rows] == ["A", "B", "C"]
    rows = {row.model: row for row in board.rows}
    assert (rows["B"].votes, rows["B"].wins, rows["B"].losses, rows["B"].ties) == (8, 3, 3, 2)
    assert rows["B"].win_rate == pytest.approx(4 / 8)
    assert rows["A"].win_rate == pytest.approx(4 / 6)
    m = board.matrix
    assert m[0][1] == pytest.approx(3 / 4) and m[1][0] == pytest.approx(1 / 4)
    assert m[1][2] == pytest.approx(3 / 4) and m[0][2] == pytest.approx(1 / 2) and m[0][0] is None
    for row in board.rows:
        assert row.lower <= row.rating <= row.upper
        assert row.upper - row.lower > 1  # resampling a dozen votes moves ratings
    assert board.battles == 10


def test_bootstrap_is_reproducible_with_a_seed():
    battles = games("A", "B", 4, 2)
    first = bootstrap(battles, ["A", "B"], rounds=50, seed=3)
    assert np.array_equal(first[0], bootstrap(battles, ["A", "B"], rounds=50, seed=3)[0])


def test_no_votes_gives_an_empty_board():
    board = leaderboard([])
    assert board.rows == [] and board.battles == 0
