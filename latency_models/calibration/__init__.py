"""End-to-end calibration of a measured latency table.

A table prices a pruned model as the sum of parts timed one at a time. Whole models cost what those
parts miss: a block's ops start colder in a model than back to back in a profile, a token reduction's
small ops pay dispatch and allocation that a hot loop hides, and the allocator and thread pool behave
differently over a whole forward pass. `calibrate` times real pruned models (the configs a search
visits) at the table's own settings, fits a few physically bounded terms of what the parts miss
(`model.fit`), then checks the calibrated table on a fresh draw of configs and records that check in
the table, so every job can say how far its budget can be trusted.

`model.py` (numpy and scipy only) holds the correction and its fit; the predictor applies it.
`run.py` times the models and needs torch and the pruning package.
"""

from latency_models.calibration.model import calibration_for, correct, fit, trust

__all__ = ["calibration_for", "correct", "fit", "trust"]
