"""Where the benchmarks say an index starts to beat exact search (benchmarks/knn.py)."""

from benchmarks.knn import crossover

SIZES = [10_000, 100_000, 1_000_000]


def test_crossover_interpolates_between_measured_sizes_in_log_log():
    # index/exact = 10 at 1e4 and 0.1 at 1e5: equal halfway in log size, at about 3.2e4.
    assert crossover(SIZES, [10.0, 1.0, 1.0], [1.0, 10.0, 100.0]).startswith("about 3.2e+04")


def test_crossover_extrapolates_a_closing_gap_and_says_so():
    answer = crossover(SIZES, [100.0, 100.0, 100.0], [1.0, 10.0, 50.0])
    assert answer.startswith("about 2.7e+06") and "extrapolated" in answer


def test_crossover_reports_a_gap_that_does_not_close():
    assert "not closing" in crossover(SIZES, [10.0, 100.0, 1000.0], [1.0, 10.0, 100.0])
    assert "smallest size" in crossover(SIZES, [0.5, 1.0, 2.0], [1.0, 10.0, 100.0])
