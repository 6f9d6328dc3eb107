"""Evaluation: perplexity, multiple-choice scoring, lm-eval adapter, speed and memory."""
