"""Recovery training: data formats, schedules (WSD, cosine), phase plans and the training loop."""
