"""Event simulation of a pipeline schedule: timeline, bubble, memory over time, traces."""

from meshplan.sim.engine import SimResult, StageCosts, simulate_schedule

__all__ = ["SimResult", "StageCosts", "simulate_schedule"]
