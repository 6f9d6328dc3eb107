"""Training pieces: one optimisation step and LoRA (trainer), mixed precision (mixed: fp32 master
weights for bf16/fp16 models), data formats, learning-rate schedules,
Adapt-Accel's phase targets and data shares, AdamW moments carried across a pruning, fine-tuning.
The loops of pruning-and-training runs are schedules over the run engine (llmsculpt.run)."""
