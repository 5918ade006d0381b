"""Stiffness analysis of residual networks (StepNet paper, Sections 2.1-2.5, 3.1, App. A-D).

>>> from stepnet.stiffness import record_trajectories, total_neural_stiffness
>>> trajectory = record_trajectories(model, loader, max_inputs=1000)
>>> total_neural_stiffness(trajectory.nsi, trajectory.stage)
"""
from .analysis import analyze, block_spectra, summary_table, write_report
from .correlation import (nsi_attention_correlation, nsi_attention_correlation_per_block,
                          rank_correlation)
from .metrics import (EXCLUDED, delta, nsi, stage_means, staircase_area, stiff_indicator,
                      stiffness_proportion, total_neural_stiffness)
from .ode import Theorem2Demo, sai, simplified_sai, theorem2_demo
from .recorder import (EXCLUSIONS, STEP_CONVENTIONS, Trajectory, TrajectoryRecorder, find_blocks,
                       record_trajectories)
from .spectrum import block_function, stiffness_index

__all__ = [
    "EXCLUDED", "EXCLUSIONS", "STEP_CONVENTIONS", "Theorem2Demo", "Trajectory",
    "TrajectoryRecorder", "analyze", "block_function", "block_spectra", "delta", "find_blocks",
    "nsi", "nsi_attention_correlation", "nsi_attention_correlation_per_block",
    "rank_correlation", "record_trajectories", "summary_table", "write_report",
    "sai", "simplified_sai", "stage_means", "staircase_area", "stiff_indicator",
    "stiffness_index", "stiffness_proportion", "theorem2_demo", "total_neural_stiffness",
]
