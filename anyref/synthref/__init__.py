"""SynthRef: a procedural multi-modal referring world (numpy + PIL only). See :mod:`anyref.synthref.world`."""
from anyref.synthref.config import SynthRefConfig
from anyref.synthref.overview import render_overview
from anyref.synthref.vocabulary import NO_TARGET_ANSWER, SHAPES, COLOURS, SIZES
from anyref.synthref.world import SYNTHREF_TASKS, SynthRef, drawn_tasks

__all__ = ["SynthRef", "SynthRefConfig", "SYNTHREF_TASKS", "drawn_tasks", "NO_TARGET_ANSWER", "SHAPES", "COLOURS",
           "SIZES", "render_overview"]
