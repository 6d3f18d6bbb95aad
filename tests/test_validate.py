"""regressors.validate: the yaw-balanced validation score is the benchmark's rule, by hand."""
import math

import numpy as np

from regressors.validate import balanced, yaw_bins


def test_yaw_bins_follow_the_benchmark_edges():
    assert yaw_bins(np.array([0.0, -30.0, 30.01, 60.0, -60.5, 95.0])).tolist() == [0, 0, 1, 1, 2, 2]


def test_balanced_is_the_mean_of_the_bin_means():
    v = np.array([1.0, 3.0, 10.0, 20.0, 30.0])
    b = np.array([0, 0, 1, 2, 2])
    bal, means, counts = balanced(v, b)
    assert means == [2.0, 10.0, 25.0] and counts == [2, 1, 2] and math.isclose(bal, 37.0 / 3)
    bal, means, counts = balanced(v[:3], b[:3])  # no >60 face: left out, not zero
    assert math.isnan(means[2]) and counts[2] == 0 and math.isclose(bal, 6.0)
