"""Training pieces: one optimisation step and LoRA (trainer), data formats, learning-rate schedules,
Adapt-Accel's phase targets and data shares, AdamW moments carried across a pruning, fine-tuning.
The loops of pruning-and-training runs are schedules over the run engine (llmsculpt.run)."""
