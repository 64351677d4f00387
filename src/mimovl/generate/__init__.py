"""What produces text from a policy: the rollout engines (vLLM in this process, transformers), the prompts they
answer, and generate-and-score with the reward router. Used by rl, eval and curate alike."""
