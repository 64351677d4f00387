"""Evaluation: greedy generation on held-out prompts, scored by the RL stage's reward functions."""
