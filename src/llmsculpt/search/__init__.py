"""Sample-aware search (AdaPruner): Bayesian optimisation over calibration samples and the
importance mix, scored by the pruned model's perplexity."""
