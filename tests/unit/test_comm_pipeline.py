"""Collective and pipeline closed forms against their textbook values."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost import comm
from meshplan.cost.train.pipeline import in_flight_microbatches, pipeline_time
from meshplan.mesh import Group, Mesh
from meshplan.specs.cluster import BusCurve
from meshplan.specs.plan import SCHEDULES
from tests.conftest import arrays


def flat(cluster, eff=0.8, latency=0.0):
    """The cluster with constant bus efficiency and no latency (to test the beta term)."""
    tiers = tuple(t.model_copy(update={"bus_efficiency": BusCurve.constant(eff), "latency": latency,
                                       "all_reduce_boost": 1.0}) for t in cluster.network)
    return cluster.model_copy(update={"network": tiers})


def test_ring_all_reduce_inside_a_node(h100):
    """Thakur et al. 2005: 2(n-1)/n * S / busbw on one tier."""
    c = flat(h100)
    members = Mesh(arrays(tp=8)).members(c, Group.TP)
    S = 1e9
    t = comm.all_reduce_time(c, members, S)
    assert float(t[0]) == pytest.approx(2 * 7 / 8 * S / (450e9 * 0.8))
    ag = comm.all_gather_time(c, members, S)
    assert float(ag[0]) == pytest.approx(7 / 8 * S / (450e9 * 0.8))


def test_data_parallel_across_nodes_runs_at_nic_rate(h100):
    """tp=8 fills the node, so each dp ring member sits on its own node behind its own NIC."""
    c = flat(h100)
    P = arrays(tp=8, dp=4)
    members = Mesh(P).members(c, Group.DP)
    assert [int(m[0]) for m in members] == [1, 4]
    t = comm.all_reduce_time(c, members, 1e9)
    assert float(t[0]) == pytest.approx(2 * 3 / 4 * 1e9 / (50e9 * 0.8))


def test_node_pooled_ring_uses_all_nics(h100):
    """A 16-rank ring over 2 nodes pools 8 NICs per node (hardware.md Sec. 2)."""
    c = flat(h100)
    members = Mesh(arrays(dp=16)).members(c, Group.DP)
    assert [int(m[0]) for m in members] == [8, 16]
    t = comm.all_reduce_time(c, members, 1e9)
    busbw = min(450e9 * 0.8, 8 * 50e9 * 0.8)
    assert float(t[0]) == pytest.approx(2 * 15 / 16 * 1e9 / busbw)


def code(name):
    return np.array([SCHEDULES.index(name)])


@pytest.mark.parametrize(("p", "m"), [(4, 8), (8, 32), (12, 96)])
def test_one_f_one_b_bubble_fraction(p, m):
    """Equal stages: bubble = (p-1)/(m+p-1) of the step (Narayanan et al. 2021)."""
    one = np.array([1.0])
    T = pipeline_time(code("1f1b"), np.array([p]), np.array([m]), np.array([1]),
                      one, one, one, one / 3, one / 3, one / 3)
    assert (T[0] - m) / T[0] == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("v", [2, 4])
def test_interleaved_bubble_fraction(v):
    p, m = 4, 16
    one = np.array([1.0])
    T = pipeline_time(code("interleaved-1f1b"), np.array([p]), np.array([m]), np.array([v]),
                      one, one, one, one / 3, one / 3, one / 3)
    assert (T[0] - m) / T[0] == pytest.approx((p - 1) / (v * m + p - 1))


def test_zb_h1_bubble_is_a_third_of_1f1b_when_f_b_w_equal():
    """Qi et al. 2024: with F = I = W the ZB-H1 bubble is (p-1)F against 3(p-1)F."""
    p, m = 8, 32
    third = np.array([1 / 3])
    args = (np.array([p]), np.array([m]), np.array([1]), 3 * third, 3 * third, 3 * third,
            third, third, third)
    bubble_1f1b = pipeline_time(code("1f1b"), *args)[0] - m
    bubble_zb = pipeline_time(code("zb-h1"), *args)[0] - m
    assert bubble_zb == pytest.approx(bubble_1f1b / 3)


def test_in_flight_microbatches_per_schedule():
    p, m = np.array([4]), np.array([16])
    one = np.array([1])
    assert in_flight_microbatches(code("1f1b"), p, m, one)[0] == 4
    assert in_flight_microbatches(code("gpipe"), p, m, one)[0] == 16
    assert in_flight_microbatches(code("interleaved-1f1b"), p, m, np.array([2]))[0] == 5.5


def test_ring_all_gather_reads_the_curve_at_its_per_step_share(h100):
    """The scale-out curve is the 4-node (32-rank) sweep: 229 GB/s busbw at 256 MiB
    (measured_efficiency.yaml nccl_ar_b200_1v4node_256MiB, 8 x 400G per node). A 96-rank ring
    of 768 MiB moves the same 8 MiB per step, so it runs at that busbw, not at the 768 MiB
    point; the all-reduce (NCCL's tree at scale) keeps reading the curve at S."""
    c = h100.model_copy(update={"network": tuple(t.model_copy(update={"latency": 0.0})
                                                 for t in h100.network)})
    ib = c.network[-1]
    assert ib.bus_efficiency.ranks == 32
    mib = 2**20

    def busbw(n, S):
        members = Mesh(arrays(dp=n)).members(c, Group.DP)
        return (n - 1) / n * S / float(comm.all_gather_time(c, members, S)[0])

    assert busbw(32, 256 * mib) == pytest.approx(229.09e9, rel=0.02)
    assert busbw(96, 768 * mib) == pytest.approx(busbw(32, 256 * mib), rel=1e-9)
    assert busbw(96, 768 * mib) < 0.7 * 8 * ib.bandwidth * float(ib.bus_efficiency(768 * mib))
    members = Mesh(arrays(dp=96)).members(c, Group.DP)
    ar = float(comm.all_reduce_time(c, members, 768 * mib)[0])
    expect = 2 * 95 / 96 * 768 * mib / (8 * ib.bandwidth * float(ib.bus_efficiency(768 * mib)))
    assert ar == pytest.approx(expect, rel=1e-9)
