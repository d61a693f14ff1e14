"""Training through the torch bridge (extra ``[torch]``): fine-tuning, schedules and the ``taylor`` criterion.

torch is imported inside the functions that need it, so importing this package works without it; importing it
registers the ``taylor`` criterion.
"""
from onnxprune.training import taylor  # noqa: F401 - registers the taylor criterion
